package session

import (
	"context"
	"crypto/tls"
	"fmt"
	"math"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tunnel/dataplane"
	"github.com/cvpn/cvpn/tunnel/limiter"
)

// The benchmarks of the control plane run the whole engine in memory (socktest, tuntest) with
// the Go client of bench/client on the other side: the UDP cookie handshake, tls-crypt, TLS 1.3
// with a client certificate (ECDSA P-256, as cvpn init makes them), key-method 2 and
// PUSH_REPLY, as make bench's handshake scenario does against real sockets. The client runs in
// the same process: CPU and allocation figures that are not labelled server- count both sides.
// A CPU profile separates them: the engine's goroutines carry the label side=server
// (go test -bench Handshake -cpuprofile cpu.out; go tool pprof -tagfocus side=server).

// benchEngine is an engine for benchmarks: quiet, a client CIDR for many sessions, and reset
// limits that a benchmark's thousands of handshakes from one test network do not reach.
func benchEngine(b *testing.B, kt pki.KeyType) *testEngine {
	b.Helper()
	open := limiter.Rate{PerSecond: 1e6, Burst: 1e6}
	return newTestEngine(b, engineOptions{
		keyType: kt,
		quiet:   true,
		pool:    netip.MustParsePrefix("10.64.0.0/16"),
		resets:  &limiter.Config{Addr: open, Net: open, Total: open},
	})
}

// benchClient returns the configuration of client i: its own address on the in-memory network,
// one certificate shared by all (its issue is not what is measured).
func (e *testEngine) benchClient(cert tls.Certificate, i int) client.Config {
	from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, byte(64 + i>>16), byte(i >> 8), byte(i)}), 40000)
	return client.Config{
		Server: port443, Certificate: cert, RootCAs: e.roots, TLSCrypt: e.key,
		Dial: func(context.Context) (net.PacketConn, error) { return e.net.ListenPacket(from) },
	}
}

func (e *testEngine) benchCertificate(b *testing.B) tls.Certificate {
	b.Helper()
	id, err := pki.IssueClient(e.ca, "bench", []string{"dev"}, e.keyType, 24*time.Hour, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	cert, err := id.TLSCertificate()
	if err != nil {
		b.Fatal(err)
	}
	return cert
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// handshakeWorkers is how many clients handshake at once: enough to keep both cores busy
// while some wait on the in-memory network.
const handshakeWorkers = 8

// BenchmarkHandshake: b.N full handshakes (reset, cookie, TLS 1.3 with a client certificate,
// key-method 2, PUSH_REPLY), each client leaving with EXIT, handshakeWorkers at a time, with
// the CA, server and client keys of each key type. It reports handshakes a second and the
// process's CPU per handshake (client and server).
//
// Each client has its own certificate, as in make bench's ramp, except in the reconnect case,
// where every client presents the same one: the server has verified its chain before
// (chainCache), as when a client reconnects or renegotiates.
func BenchmarkHandshake(b *testing.B) {
	for _, kt := range []pki.KeyType{pki.ECDSAP256, pki.Ed25519} {
		b.Run(kt.String(), func(b *testing.B) { benchmarkHandshake(b, kt, false) })
	}
	b.Run(pki.ECDSAP256.String()+"-reconnect", func(b *testing.B) { benchmarkHandshake(b, pki.ECDSAP256, true) })
}

func benchmarkHandshake(b *testing.B, kt pki.KeyType, reconnect bool) {
	e := benchEngine(b, kt)
	certs := make([]tls.Certificate, b.N)
	for i := range certs {
		if i == 0 || !reconnect {
			certs[i] = e.benchCertificate(b)
		} else {
			certs[i] = certs[0]
		}
	}
	var next atomic.Int64
	var failed atomic.Pointer[error]
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	var wg sync.WaitGroup
	for range min(handshakeWorkers, b.N) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				s, err := client.Connect(ctx, e.benchClient(certs[i], i))
				cancel()
				if err != nil {
					failed.Store(&err)
					return
				}
				_ = s.Close()
			}
		})
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatalf("handshake: %v", *err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "hs/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/hs")
}

// idleSessions is how many sessions BenchmarkIdleSessionMemory holds.
const idleSessions = 2000

// heapSampleRate is the heap profile's sampling rate during BenchmarkIdleSessionMemory: one
// sample per 512 bytes allocated on average, scaled back as pprof does, is within a percent of
// the exact profile (MemProfileRate 1) over 2,000 sessions, at a tenth of its cost.
const heapSampleRate = 512

// BenchmarkIdleSessionMemory establishes idleSessions sessions, lets them go idle (control
// readers parked, retransmissions done), collects garbage and reports the server's live heap per
// session: the allocations still live whose stacks do not pass through the client (an exact
// heap profile, MemProfileRate 1, taken around the handshakes). It also reports the server's
// allocations per handshake from the same profile, and the process's heap and stacks per session
// (both sides) from runtime.MemStats. With -v it logs the server's live heap by allocating
// function.
//
// In the renegotiated case every session renegotiates once and the transition window ends
// before the heap is read, as for any session older than reneg_seconds (an hour by default).
func BenchmarkIdleSessionMemory(b *testing.B) {
	old := runtime.MemProfileRate
	runtime.MemProfileRate = heapSampleRate
	defer func() { runtime.MemProfileRate = old }()
	b.Run("fresh", func(b *testing.B) {
		for range b.N {
			idleSessionMemory(b, idleSessions, false)
		}
	})
	b.Run("renegotiated", func(b *testing.B) {
		for range b.N {
			idleSessionMemory(b, idleSessions/4, true)
		}
	})
}

func idleSessionMemory(b *testing.B, idleSessions int, renegotiate bool) {
	e := benchEngine(b, pki.ECDSAP256)
	cert := e.benchCertificate(b)
	sessions := make([]*client.Session, idleSessions)
	defer func() {
		b.StopTimer()
		var wg sync.WaitGroup
		for _, s := range sessions {
			if s != nil {
				wg.Go(func() { _ = s.Close() })
			}
		}
		wg.Wait()
	}()
	settle := func() {
		// Control readers park after controlIdle; the last acks and retransmission timers
		// settle within a second.
		time.Sleep(time.Second)
		runtime.GC()
		runtime.GC()
	}
	settle()
	before := liveHeap()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	for range handshakeWorkers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= idleSessions {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				s, err := client.Connect(ctx, e.benchClient(cert, i))
				cancel()
				if err != nil {
					failed.Store(&err)
					return
				}
				sessions[i] = s
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatalf("handshake: %v", *err)
	}
	if n := len(e.m.Established()); n != idleSessions {
		b.Fatalf("%d sessions established, want %d", n, idleSessions)
	}
	if renegotiate {
		renegotiateAll(b, e)
	}
	settle()
	after := liveHeap()
	runtime.ReadMemStats(&ms1)
	n := float64(idleSessions)
	server := after.server.sub(before.server)
	b.ReportMetric(float64(server.inUseBytes)/n, "server-heap-B/session")
	b.ReportMetric(float64(server.inUseObjects)/n, "server-objects/session")
	b.ReportMetric(float64(server.allocObjects)/n, "server-allocs/hs")
	b.ReportMetric(float64(server.allocBytes)/n, "server-alloc-B/hs")
	b.ReportMetric((float64(ms1.HeapInuse+ms1.StackInuse)-float64(ms0.HeapInuse+ms0.StackInuse))/n, "process-B/session")
	if testing.Verbose() {
		b.Logf("server's live heap per idle session by allocating function:\n%s", after.top(before, 25, n))
	}
}

// renegotiateAll renegotiates every session once (key 1) and ends the transition window.
func renegotiateAll(b *testing.B, e *testEngine) {
	all := e.m.all()
	for _, s := range all {
		s.PeerEvent(dataplane.EventRekey)
	}
	deadline := time.Now().Add(time.Minute)
	for _, s := range all {
		for !renegotiated(s) {
			if time.Now().After(deadline) {
				b.Fatalf("session %d did not renegotiate within a minute", s.id)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	endTransition(all, e.clock.Now())
	time.Sleep(1500 * time.Millisecond) // a tick
}

// renegotiated reports whether key 1 is installed and the renegotiation is over.
func renegotiated(s *Session) bool {
	s.mu.Lock()
	over := s.renegSince.IsZero()
	s.mu.Unlock()
	return over && slices.Contains(s.peer.Keys(), 1)
}

// endTransition makes the transition window of the sessions' newest keys end at now (rather
// than moving the clock, which the data plane's silence timeout reads too).
func endTransition(all []*Session, now time.Time) {
	for _, s := range all {
		s.mu.Lock()
		if s.retire != nil {
			s.retireAt = now
		}
		s.mu.Unlock()
	}
}

// heapSide sums heap profile records.
type heapSide struct{ inUseBytes, inUseObjects, allocBytes, allocObjects int64 }

func (h heapSide) sub(o heapSide) heapSide {
	return heapSide{h.inUseBytes - o.inUseBytes, h.inUseObjects - o.inUseObjects, h.allocBytes - o.allocBytes, h.allocObjects - o.allocObjects}
}

// heapSnapshot is the heap profile split into the server's allocations and the rest, with the
// server's live bytes by allocating site (the first frame outside the runtime and reflection).
type heapSnapshot struct {
	server heapSide
	sites  map[string]int64
}

// liveHeap reads the heap profile as of the last garbage collection.
func liveHeap() heapSnapshot {
	var recs []runtime.MemProfileRecord
	for {
		n, ok := runtime.MemProfile(recs, true)
		if ok {
			recs = recs[:n]
			break
		}
		recs = make([]runtime.MemProfileRecord, n+256)
	}
	snap := heapSnapshot{sites: make(map[string]int64)}
	for i := range recs {
		r := &recs[i]
		frames := runtime.CallersFrames(r.Stack())
		var site string
		client, testSetup := false, false
		for {
			f, more := frames.Next()
			fn := f.Function
			switch {
			case strings.Contains(fn, "/bench/client."), strings.Contains(fn, "/socktest."), fn == "runtime.malg":
				// The client's side, the in-memory network's queues (a real server's are
				// the kernel's), and goroutines' descriptors, which the runtime keeps for
				// reuse and whose creator the profile does not show (an idle server session
				// has no goroutine; the clients have several).
				client = true
			case strings.Contains(fn, "session.benchEngine"), strings.Contains(fn, "session.newTestEngine"), strings.Contains(fn, "testing."):
				testSetup = true
			}
			if site == "" && fn != "" && !skipFrame(fn) {
				site = fmt.Sprintf("%s:%d", fn, f.Line)
			}
			if !more {
				break
			}
		}
		if site == "" {
			site = "(runtime: goroutines, timers, maps)"
		}
		if client || testSetup {
			continue
		}
		// Scale the sampled counts back to estimates (pprof's scaleHeapSample).
		scale := 1.0
		if r.AllocObjects > 0 && runtime.MemProfileRate > 1 {
			avg := float64(r.AllocBytes) / float64(r.AllocObjects)
			scale = 1 / (1 - math.Exp(-avg/float64(runtime.MemProfileRate)))
		}
		est := func(v int64) int64 { return int64(float64(v) * scale) }
		snap.server.inUseBytes += est(r.InUseBytes())
		snap.server.inUseObjects += est(r.InUseObjects())
		snap.server.allocBytes += est(r.AllocBytes)
		snap.server.allocObjects += est(r.AllocObjects)
		snap.sites[site] += est(r.InUseBytes())
	}
	return snap
}

// skipFrame says a frame does not name where an allocation comes from: the runtime's, and
// the growing of slices and buffers.
func skipFrame(fn string) bool {
	for _, p := range []string{"runtime.", "internal/", "reflect.", "bytes.", "slices.", "time.goFunc", "time.newTimer"} {
		if strings.HasPrefix(fn, p) {
			return true
		}
	}
	return false
}

// top lists the sites whose live bytes grew most since before, per session.
func (h heapSnapshot) top(before heapSnapshot, n int, per float64) string {
	type site struct {
		name  string
		bytes int64
	}
	var sites []site
	for name, v := range h.sites {
		if d := v - before.sites[name]; d > 0 {
			sites = append(sites, site{name, d})
		}
	}
	sort.Slice(sites, func(i, j int) bool { return sites[i].bytes > sites[j].bytes })
	var sb strings.Builder
	for i, s := range sites {
		if i == n {
			break
		}
		fmt.Fprintf(&sb, "%8.0f B  %s\n", float64(s.bytes)/per, s.name)
	}
	return sb.String()
}
