//go:build soak

// The soak test runs only with the soak build tag: `make soak` (SOAK=10m by default), never in
// `make test`.

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/bench"
	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// Margins of the soak: what may differ between the start and the end of the churn.
const (
	// soakWarmup is churn before the start is measured: thread counts and the heap grow to their
	// working size in it.
	soakWarmup = 90 * time.Second
	// soakRSSMarginPercent is how far the RSS at the end (under load, and idle once every
	// client is gone) may exceed the largest RSS seen during the warm-up, in percent of it. The
	// RSS is a coarse measure: the allocator keeps pages, the race detector keeps shadow memory
	// for the heap, and the admin history keeps each ended connection (at most 4096, for an
	// hour), which a 10-minute soak never sees pruned. The live heap below is the fine one.
	soakRSSMarginPercent = 50
	// soakHistoryPerSession and soakHeapMargin bound the live heap of the server, idle at the
	// end, against a fresh server's: each connection that ended may hold soakHistoryPerSession
	// (the admin history keeps its status with the client certificate, about 4 KiB), and
	// soakHeapMargin more in all. A leak of 6 KiB per session over the hundreds the soak churns
	// exceeds it.
	soakHistoryPerSession = 6 << 10 // bytes
	soakHeapMargin        = 4 << 20 // bytes
	// soakThreadMargin is how many more OS threads the end may have than the warm-up's peak.
	soakThreadMargin = 4
	// soakFDMargin is how many more descriptors an idle server may hold at the end than an
	// idle one at the start: none, but for the kernel's lazily opened ones.
	soakFDMargin = 2
	// soakGoroutineMargin is how many more goroutines the server, idle at the end, may have
	// than idle at the start.
	soakGoroutineMargin = 2
)

// soakMetricsAddr is where the soaked server serves its metrics, inside its namespace.
var soakMetricsAddr = netip.MustParseAddrPort("127.0.0.1:9464")

// soakEndpoint is the endpoint configuration of the soak: both transports, server-initiated
// renegotiation every 30 s, fast keepalives so that clients killed without a goodbye are reaped
// within the run, and metrics (the goroutine count among them).
var soakEndpoint = netlab.EndpointOptions{
	TLSCrypt:  true,
	Transport: "[{protocol: udp, port: 443}, {protocol: tcp, port: 443}]",
	Keepalive: "{ping_seconds: 5, ping_restart_seconds: 15}",
	Extra:     "reneg_seconds: 30\nmetrics: {listen_address: \"" + soakMetricsAddr.String() + "\"}\n",
}

// TestSoak runs SOAK (default 10m) of mixed churn against a race-detector build of cvpn (make
// soak sets CVPN_E2E_RACE): stock openvpn clients over UDP and TCP connecting, pinging, leaving
// cleanly or killed, some renegotiating every 10 s; Go clients (bench/client) in one process
// connecting and leaving, renegotiating when the server asks (every 30 s), floating to a new
// source port; and floods from another host in turns: valid resets, garbage, resets from
// spoofed sources, silent TCP connections. It prints the server's goroutines (its metrics),
// RSS, threads and descriptors (/proc) at the start and the end, and fails if any grew beyond
// the margins above, if the race detector reported anything, if clients failed to connect,
// renegotiate or pass traffic, or if a handshake of a client that connected was left to time
// out.
func TestSoak(t *testing.T) {
	soak := 10 * time.Minute
	if v := os.Getenv("SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 2*soakWarmup {
			t.Fatalf("SOAK=%q: want a duration of at least %v", v, 2*soakWarmup)
		}
		soak = d
	}
	// make soak runs go test without a timeout: the soak bounds itself.
	watchdog := time.AfterFunc(soak+15*time.Minute, func() {
		panic(fmt.Sprintf("soak: still running %v after a soak of %v", soak+15*time.Minute, soak))
	})
	defer watchdog.Stop()
	if os.Getenv("CVPN_E2E_RACE") == "" {
		t.Fatal("the soak runs against a race-detector build: set CVPN_E2E_RACE=1 (make soak does)")
	}

	freshHeap := freshServerHeap(t)

	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	ep, err := netlab.WriteEndpoint(t.TempDir(), soakEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	// The server's output goes to a file, kept after the test: the log of a long run may
	// outgrow a Proc's buffer, a race report must never be cut off, and a failed soak is
	// studied in it.
	logDir, err := os.MkdirTemp("", "cvpn-soak-")
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(logDir, "cvpn.log")
	defer t.Logf("the server's log: %s", logPath)
	// At SIGTERM, before it ends its sessions, cvpn writes the live heap (after a GC) to a
	// profile: what an idle server holds after the churn.
	heapPath := filepath.Join(logDir, "heap.pprof")
	srv, err := lab.Start("cvpn", lab.Server, "sh", "-c", fmt.Sprintf(`exec %s serve --config %s --memprofile %s >%s 2>&1`, cvpnBin, ep.Config, heapPath, logPath))
	if err != nil {
		t.Fatal(err)
	}
	srvLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	if err := waitText(srvLog, "cvpn listening", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := srv.PID()
	metrics := newMetricsScraper(lab.Server)
	sample := func() (soakSample, error) {
		st, err := netlab.ReadProcStat(pid)
		if err != nil {
			return soakSample{}, err
		}
		m, err := metrics.scrape()
		if err != nil {
			return soakSample{}, err
		}
		lastGC := time.Unix(0, int64(m["go_memstats_last_gc_time_seconds"]*1e9))
		return soakSample{st: st, goroutines: int(m["go_goroutines"]), heapGoalKiB: int64(m["go_memstats_next_gc_bytes"]) >> 10, lastGC: lastGC,
			sessions: int(m["cvpn_active_connections"]), unfinished: int(m[`cvpn_packets_dropped_total{reason="tls_handshake_failed"}`])}, nil
	}
	time.Sleep(5 * time.Second)
	idleStart, err := sample()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("idle at start: %v", idleStart)

	ctx, stop := context.WithTimeout(context.Background(), soak)
	defer stop()
	start := time.Now()
	var wg sync.WaitGroup
	var tally soakTally

	// The server, sampled all along.
	samples := make(chan []soakSample, 1)
	go func() {
		var ss []soakSample
		for {
			if s, err := sample(); err == nil {
				s.at = time.Since(start)
				ss = append(ss, s)
			}
			select {
			case <-ctx.Done():
				samples <- ss
				return
			case <-time.After(5 * time.Second):
			}
		}
	}()

	// Stock clients: two over UDP, two over TCP; one of each renegotiates every 10 s.
	for i := range 4 {
		ns, server, err := lab.AddClient()
		if err != nil {
			t.Fatal(err)
		}
		o := netlab.ProfileOptions{Proto: "udp"}
		if i%2 == 1 {
			o.Proto = "tcp"
		} else {
			o.Extra += "explicit-exit-notify 1\n"
		}
		if i < 2 {
			o.Extra += "reneg-sec 10\n" // after the profile's reneg-sec 0: the last one counts
		}
		name := fmt.Sprintf("stock%d-%s", i, o.Proto)
		profile, err := ep.ClientProfile(name, server, o)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { stockChurn(ctx, lab, name, ns, profile, &tally) })
	}

	// Go clients: one namespace, many sessions.
	goNS, goServer, err := lab.AddClient()
	if err != nil {
		t.Fatal(err)
	}
	certs, err := bench.Identities(ep.CA, 64)
	if err != nil {
		t.Fatal(err)
	}
	key, err := tlscrypt.ParseStaticKey(ep.TLSKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ep.CA.CertPEM)
	const goWorkers = 32
	for w := range goWorkers {
		wg.Go(func() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(w) * 700 * time.Millisecond): // stagger the first connects
			}
			g := goChurner{ns: goNS, server: netip.AddrPortFrom(goServer, 443), tcp: w%4 == 3, tally: &tally}
			for n := 0; ctx.Err() == nil; n++ {
				cfg := client.Config{Certificate: certs[(w+n*goWorkers)%len(certs)], RootCAs: roots, TLSCrypt: key}
				g.session(ctx, cfg)
			}
		})
	}

	// Floods from another host, in turns.
	attackNS, attackServer, err := lab.AddClient()
	if err != nil {
		t.Fatal(err)
	}
	fl := newFlooder(t, lab, attackNS, attackServer, ep.TLSKey)
	wg.Go(func() { fl.run(ctx, &tally) })

	// The start is measured after the warm-up (its peaks), the end just before the churn stops.
	select {
	case <-ctx.Done():
	case <-time.After(soakWarmup):
	}
	<-ctx.Done()
	churnEnd := time.Now()
	loadedEnd, err := sample()
	if err != nil {
		t.Fatalf("the server is gone: %v", err)
	}
	series := <-samples
	var warm []soakSample
	for _, s := range series {
		if s.at <= soakWarmup {
			warm = append(warm, s)
		}
	}
	wg.Wait()
	fl.close()

	// Every client has left (cleanly or killed): wait until the server ended every session (a
	// killed client's after ping_restart_seconds) and a handshake that a client abandoned when
	// the churn stopped timed out (the hand window, 60 s), then measure it idle.
	var connected, disconnected int
	idleBy := time.Now().Add(60 * time.Second)
	for {
		out := srvLog()
		connected = strings.Count(out, `msg="client connected"`)
		disconnected = strings.Count(out, `msg="client disconnected"`)
		if connected == disconnected || time.Now().After(idleBy) {
			break
		}
		time.Sleep(time.Second)
	}
	if connected != disconnected {
		t.Errorf("%d sessions connected but only %d ended, 60 s after every client left", connected, disconnected)
	}
	time.Sleep(time.Until(churnEnd.Add(65 * time.Second)))
	// The heap goal says what the live heap is only after a garbage collection: wait for the one
	// the Go runtime forces when two minutes pass without one, so that the idle server's goal
	// reflects an idle heap.
	idle := time.Now()
	var idleEnd soakSample
	for {
		idleEnd, err = sample()
		if err != nil {
			t.Fatalf("the server is gone: %v", err)
		}
		if idleEnd.lastGC.After(idle) || time.Since(idle) > 3*time.Minute {
			break
		}
		time.Sleep(5 * time.Second)
	}
	if !idleEnd.lastGC.After(idle) {
		t.Errorf("no garbage collection in the idle server within 3 minutes (the last at %v)", idleEnd.lastGC)
	}

	// Stop the server: SIGTERM for a clean shutdown (the race detector's exit status says
	// whether it found anything); SIGQUIT instead when goroutines are left over, so that the
	// Go runtime prints each (make soak sets GOTRACEBACK=all).
	leftover := idleEnd.goroutines > idleStart.goroutines+soakGoroutineMargin
	sig := syscall.SIGTERM
	if leftover {
		sig = syscall.SIGQUIT
	}
	if err := srv.Signal(sig); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	exitErr := srv.Wait(wctx)
	cancel()
	out := srvLog()

	// Report.
	peakWarm := peakOf(warm)
	t.Logf("soak %v: %s", soak, tally.String())
	t.Logf("sessions: %d connected, %d ended; %d floats, %d renegotiations logged by the server",
		connected, disconnected, strings.Count(out, `msg="client floated"`), strings.Count(out, `msg="client renegotiated"`))
	for _, s := range series {
		if s.at%time.Minute < 5*time.Second {
			t.Logf("  %6v  %v", s.at.Round(time.Second), s)
		}
	}
	t.Logf("idle at start:       %v", idleStart)
	t.Logf("warm-up peak:        %v", peakWarm)
	t.Logf("end, under churn:    %v", loadedEnd)
	t.Logf("end, idle:           %v", idleEnd)
	var endHeap int64
	if !leftover {
		top, total, err := heapProfile(heapPath)
		if err != nil {
			t.Errorf("the heap profile at the end: %v", err)
		}
		endHeap = total
		t.Logf("live heap: fresh server %.2f MiB; this one, idle at the end, %.2f MiB (%s), the largest holders:\n%s",
			float64(freshHeap)/(1<<20), float64(total)/(1<<20), heapPath, top)
	}

	// Verdict.
	if n := strings.Count(out, "WARNING: DATA RACE"); n > 0 {
		t.Errorf("the race detector reported %d data races:\n%s", n, raceReports(out))
	}
	if i := strings.Index(out, "panic:"); i >= 0 {
		t.Errorf("cvpn panicked:\n%s", netlab.Tail(out[:min(len(out), i+4000)], 6000))
	}
	if !leftover && exitErr != nil {
		t.Errorf("cvpn exited with %v on SIGTERM (66: the race detector found races):\n%s", exitErr, netlab.Tail(out, 3000))
	}
	if allowed := freshHeap + int64(disconnected)*soakHistoryPerSession + soakHeapMargin; endHeap > allowed {
		t.Errorf("the idle server's live heap at the end is %d bytes; a fresh server's is %d, and %d ended connections allow at most %d",
			endHeap, freshHeap, disconnected, allowed)
	}
	for _, end := range []struct {
		name string
		s    soakSample
	}{{"under churn", loadedEnd}, {"idle", idleEnd}} {
		if limit := peakWarm.st.RSSKiB * (100 + soakRSSMarginPercent) / 100; end.s.st.RSSKiB > limit {
			t.Errorf("RSS at the end (%s) is %d KiB, more than the warm-up's peak %d KiB + %d%%", end.name, end.s.st.RSSKiB, peakWarm.st.RSSKiB, soakRSSMarginPercent)
		}
		if end.s.st.Threads > peakWarm.st.Threads+soakThreadMargin {
			t.Errorf("threads at the end (%s): %d, more than the warm-up's peak %d + %d", end.name, end.s.st.Threads, peakWarm.st.Threads, soakThreadMargin)
		}
	}
	if idleEnd.st.FDs > idleStart.st.FDs+soakFDMargin {
		t.Errorf("descriptors of the idle server: %d at the end, %d at the start", idleEnd.st.FDs, idleStart.st.FDs)
	}
	if idleEnd.sessions != 0 {
		t.Errorf("the idle server still counts %d active connections", idleEnd.sessions)
	}
	if leftover {
		t.Errorf("the server, idle, has %d goroutines at the end and had %d at the start; by creator:\n%s",
			idleEnd.goroutines, idleStart.goroutines, parseGoroutineDump(out))
	}
	// Every client in the churn finished each handshake it began, or counts as a failure
	// above; so no handshake may have timed out before the churn ended.
	if loadedEnd.unfinished > 0 {
		t.Errorf("%d handshakes timed out (tls_handshake_failed) during the churn, though every client's connects succeeded: the server left sessions pending that no client continued; the first:\n%s",
			loadedEnd.unfinished, strings.Join(grepLines(out, "reason=tls_handshake_failed", 5), "\n"))
	}
	tally.check(t)
}

// freshServerHeap starts a fresh server of the soak's configuration in a lab of its own, stops
// it once it settled and returns its live heap from the profile it writes when stopping.
func freshServerHeap(t *testing.T) int64 {
	t.Helper()
	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	dir := t.TempDir()
	ep, err := netlab.WriteEndpoint(dir, soakEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	heapPath := filepath.Join(dir, "heap.pprof")
	srv, err := lab.Start("cvpn (fresh)", lab.Server, cvpnBin, "serve", "--config", ep.Config, "--memprofile", heapPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitFor("cvpn listening", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	if err := srv.Stop(); err != nil {
		t.Fatalf("a fresh server: %v\n%s", err, srv.Output())
	}
	_, total, err := heapProfile(heapPath)
	if err != nil {
		t.Fatalf("a fresh server's heap profile: %v", err)
	}
	return total
}

// pprofTotalRE is the line of `go tool pprof -top` that gives the profile's total.
var pprofTotalRE = regexp.MustCompile(`of ([0-9.]+)([kMG]?B) total`)

// heapProfile returns the largest holders of the live heap in profile and its total in bytes.
func heapProfile(profile string) (top string, total int64, err error) {
	out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=12", "-sample_index=inuse_space", cvpnBin, profile).CombinedOutput()
	if err != nil {
		return string(out), 0, fmt.Errorf("go tool pprof: %w: %s", err, out)
	}
	m := pprofTotalRE.FindStringSubmatch(string(out))
	if m == nil {
		return string(out), 0, fmt.Errorf("no total in go tool pprof's output:\n%s", out)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	unit := map[string]float64{"B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[m[2]]
	return string(out), int64(v * unit), nil
}

// soakSample is the server at one instant: its process (/proc) and its metrics.
type soakSample struct {
	at         time.Duration // since the churn began
	st         netlab.ProcStat
	goroutines int // go_goroutines
	// heapGoalKiB is the heap size at which the next GC starts: the live heap after the last
	// one times 1 + GOGC/100 (cvpn runs with GOGC 50). It tells a growing live heap from RSS
	// that the allocator keeps.
	heapGoalKiB int64
	lastGC      time.Time // when the last garbage collection ended
	sessions    int       // cvpn_active_connections
	unfinished  int       // handshakes dropped as tls_handshake_failed so far
}

func (s soakSample) String() string {
	return fmt.Sprintf("%d goroutines, %v, heap goal %.1f MiB; %d sessions, %d tls_handshake_failed",
		s.goroutines, s.st, float64(s.heapGoalKiB)/1024, s.sessions, s.unfinished)
}

// peakOf is the largest of each measure among ss, each on its own.
func peakOf(ss []soakSample) soakSample {
	var p soakSample
	for _, s := range ss {
		p.st.RSSKiB = max(p.st.RSSKiB, s.st.RSSKiB)
		p.st.Threads = max(p.st.Threads, s.st.Threads)
		p.st.FDs = max(p.st.FDs, s.st.FDs)
		p.goroutines = max(p.goroutines, s.goroutines)
		p.heapGoalKiB = max(p.heapGoalKiB, s.heapGoalKiB)
		p.sessions = max(p.sessions, s.sessions)
		p.unfinished = max(p.unfinished, s.unfinished)
	}
	return p
}

// metricsScraper reads the server's Prometheus metrics from inside its namespace.
type metricsScraper struct{ c *http.Client }

func newMetricsScraper(ns string) *metricsScraper {
	return &metricsScraper{c: &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true, // no connection (and serving goroutine) held between scrapes
			DialContext: func(context.Context, string, string) (net.Conn, error) {
				return netlab.DialTCPIn(ns, soakMetricsAddr)
			},
		},
	}}
}

// scrape returns every sample of the text exposition by its name and labels as written, e.g.
// `cvpn_packets_dropped_total{reason="replay"}`.
func (m *metricsScraper) scrape() (map[string]float64, error) {
	resp, err := m.c.Get("http://" + soakMetricsAddr.String() + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// grepLines returns up to n lines of out that contain s.
func grepLines(out, s string, n int) []string {
	var lines []string
	for line := range strings.SplitSeq(out, "\n") {
		if strings.Contains(line, s) {
			lines = append(lines, line)
			if len(lines) == n {
				break
			}
		}
	}
	return lines
}

// waitText waits until read() contains s.
func waitText(read func() string, s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(read(), s) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no %q within %v:\n%s", s, timeout, netlab.Tail(read(), 3000))
}

// goroutineHeaderRE is a goroutine's first line: "goroutine 7 [select]:", or with GOTRACEBACK
// at system level and above "goroutine 7 gp=0xc000007c00 m=nil [select]:".
var goroutineHeaderRE = regexp.MustCompile(`(?m)^goroutine \d+ [^\n\[]*\[`)

// parseGoroutineDump counts the goroutines of a traceback by the function that created them
// (for those without one, their first frame), most first.
func parseGoroutineDump(out string) string {
	by := map[string]int{}
	idx := goroutineHeaderRE.FindAllStringIndex(out, -1)
	for i, m := range idx {
		end := len(out)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		block := out[m[0]:end]
		if strings.HasPrefix(block, "goroutine 0 ") {
			continue // an OS thread's scheduler stack (g0), not a goroutine: threads are counted apart
		}
		creator := "(no creator)"
		if j := strings.Index(block, "\ncreated by "); j >= 0 {
			creator, _, _ = strings.Cut(block[j+len("\ncreated by "):], "\n")
			creator, _, _ = strings.Cut(creator, " in goroutine")
		} else if lines := strings.Split(block, "\n"); len(lines) > 1 {
			creator = lines[1]
		}
		by[creator]++
	}
	var lines []string
	for c, n := range by {
		lines = append(lines, fmt.Sprintf("%5d %s", n, c))
	}
	sort.Sort(sort.Reverse(sort.StringSlice(lines)))
	return strings.Join(lines, "\n")
}

// raceReports returns the race detector's reports in out, up to a few.
func raceReports(out string) string {
	var reports []string
	for _, part := range strings.Split(out, "WARNING: DATA RACE")[1:] {
		r, _, _ := strings.Cut(part, "==================")
		reports = append(reports, "WARNING: DATA RACE"+r)
		if len(reports) == 3 {
			break
		}
	}
	return strings.Join(reports, "\n")
}

// soakTally counts what the churn did and what went wrong.
type soakTally struct {
	stockConnects, stockFailures   atomic.Int64
	stockPingsSent, stockPingsRecv atomic.Int64
	goConnects, goFailures         atomic.Int64
	goEchoSent, goEchoRecv         atomic.Int64
	goFloats, goKilled, goClosed   atomic.Int64
	goRenegotiated, goRenegFailed  atomic.Int64
	floods                         atomic.Int64
	floodPackets, floodConns       atomic.Int64

	mu       sync.Mutex
	failures []string // the first few, for the report
}

func (t *soakTally) fail(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.failures) < 10 {
		t.failures = append(t.failures, fmt.Sprintf(format, args...))
	}
}

func (t *soakTally) String() string {
	return fmt.Sprintf("stock clients: %d connects (%d failed), pings %d/%d answered; Go clients: %d connects (%d failed), %d closed, %d killed, %d floats, %d renegotiations (%d failed), echoes %d/%d answered; %d floods: %d packets, %d silent TCP connections",
		t.stockConnects.Load(), t.stockFailures.Load(), t.stockPingsRecv.Load(), t.stockPingsSent.Load(),
		t.goConnects.Load(), t.goFailures.Load(), t.goClosed.Load(), t.goKilled.Load(), t.goFloats.Load(), t.goRenegotiated.Load(), t.goRenegFailed.Load(),
		t.goEchoRecv.Load(), t.goEchoSent.Load(), t.floods.Load(), t.floodPackets.Load(), t.floodConns.Load())
}

// check fails the test if clients could not connect or pass traffic through the churn. A ping
// or echo lost now and then (a renegotiation's switch, a float, a flood filling a queue) is
// tolerated; a connect that fails is not.
func (t *soakTally) check(tb testing.TB) {
	tb.Helper()
	if n := t.stockFailures.Load() + t.goFailures.Load() + t.goRenegFailed.Load(); n > 0 {
		tb.Errorf("%d connects or renegotiations failed; the first:\n%s", n, strings.Join(t.failures, "\n"))
	}
	if t.stockConnects.Load() < 8 || t.goConnects.Load() < 100 {
		tb.Errorf("too little churn: %d stock and %d Go connects", t.stockConnects.Load(), t.goConnects.Load())
	}
	if s, r := t.stockPingsSent.Load(), t.stockPingsRecv.Load(); r < s*95/100 {
		tb.Errorf("stock clients: %d of %d pings answered", r, s)
	}
	if s, r := t.goEchoSent.Load(), t.goEchoRecv.Load(); r < s*95/100 {
		tb.Errorf("Go clients: %d of %d echoes answered", r, s)
	}
	if t.goFloats.Load() < 10 || t.goRenegotiated.Load() < 10 || t.floods.Load() < 4 {
		tb.Errorf("the soak floated %d sessions, renegotiated %d Go sessions and ran %d floods; want at least 10, 10 and 4",
			t.goFloats.Load(), t.goRenegotiated.Load(), t.floods.Load())
	}
}

// stockChurn runs the stock client of profile in ns over and over: connect, ping for 5-30 s,
// leave with SIGTERM or die with SIGKILL (the server then reaps the session).
func stockChurn(ctx context.Context, lab *netlab.Lab, name, ns, profile string, tally *soakTally) {
	for n := 0; ctx.Err() == nil; n++ {
		p, err := lab.Start(name, ns, "openvpn", "--config", profile)
		if err != nil {
			tally.stockFailures.Add(1)
			tally.fail("%s: %v", name, err)
			return
		}
		if err := p.WaitForContext(ctx, "Initialization Sequence Completed", 40*time.Second); err != nil {
			if ctx.Err() == nil {
				tally.stockFailures.Add(1)
				tally.fail("%s, connect %d: %v", name, n+1, err)
			}
			p.Kill()
			continue
		}
		tally.stockConnects.Add(1)
		count := 10 + randN(50) // 5-30 s at 2 a second
		pctx, cancel := context.WithTimeout(ctx, time.Duration(count)*time.Second)
		out, _ := lab.Output(pctx, ns, "ping", "-c", fmt.Sprint(count), "-i", "0.5", "-W", "2", netlab.VPCHost.String())
		cancel()
		if sent, received, ok := pingTally(out); ok && ctx.Err() == nil {
			tally.stockPingsSent.Add(int64(sent))
			tally.stockPingsRecv.Add(int64(received))
		}
		if n%3 == 2 {
			p.Kill()
		} else {
			_ = p.Stop()
		}
	}
}

// goChurner runs Go client sessions one after another from one namespace.
type goChurner struct {
	ns     string
	server netip.AddrPort
	tcp    bool
	tally  *soakTally
}

// session connects one session, keeps it 5-70 s sending an ICMP echo through it every second,
// floating it now and then (UDP), and ends it: Close (EXIT) mostly, or its socket closed under
// it as a crash would.
func (g *goChurner) session(ctx context.Context, cfg client.Config) {
	var echoRecv atomic.Int64
	cfg.OnPacket = func(_ *client.Session, ip []byte) {
		if len(ip) >= 28 && ip[9] == syscall.IPPROTO_ICMP && ip[20] == 0 { // echo reply
			echoRecv.Add(1)
		}
	}
	cfg.Server = g.server
	cfg.Log = slog.New(&renegCounter{g.tally})
	var fc *floatConn
	if g.tcp {
		cfg.TCP = true
		cfg.DialTCP = func(context.Context) (net.Conn, error) { return netlab.DialTCPIn(g.ns, g.server) }
	} else {
		cfg.Dial = func(context.Context) (net.PacketConn, error) {
			c, err := newFloatConn(g.ns)
			fc = c
			return c, err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 40*time.Second)
	s, err := client.Connect(cctx, cfg)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			g.tally.goFailures.Add(1)
			g.tally.fail("Go client (tcp %v): %v", g.tcp, err)
			sleepCtx(ctx, time.Second)
		}
		return
	}
	g.tally.goConnects.Add(1)
	src := s.Address().Addr()
	id := uint16(randN(1 << 16))
	life := 5 + randN(66)
	floatAt := -1
	if !g.tcp && randN(2) == 0 {
		floatAt = randN(life)
	}
	var sent int64
	for sec := 0; sec < life && ctx.Err() == nil; sec++ {
		if sec == floatAt {
			if err := fc.float(); err == nil {
				g.tally.goFloats.Add(1)
			}
		}
		if err := s.WritePacket(icmpEcho(src, netlab.VPCHost, id, uint16(sec))); err == nil {
			sent++
		}
		select {
		case <-s.Done():
			if ctx.Err() == nil {
				g.tally.fail("Go client %v ended: %v", src, s.Err())
				g.tally.goFailures.Add(1)
			}
			sec = life
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	time.Sleep(500 * time.Millisecond) // the last reply
	g.tally.goEchoSent.Add(sent)
	g.tally.goEchoRecv.Add(min(echoRecv.Load(), sent))
	if randN(4) == 0 && fc != nil {
		fc.Close() // the client vanishes: no EXIT; the server reaps the session
		g.tally.goKilled.Add(1)
	} else {
		g.tally.goClosed.Add(1)
	}
	_ = s.Close()
}

// icmpEcho builds an IPv4 ICMP echo request from src to dst.
func icmpEcho(src, dst netip.Addr, id, seq uint16) []byte {
	b := make([]byte, 20+8+32)
	b[0], b[8], b[9] = 0x45, 64, syscall.IPPROTO_ICMP
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	s4, d4 := src.As4(), dst.As4()
	copy(b[12:], s4[:])
	copy(b[16:], d4[:])
	binary.BigEndian.PutUint16(b[10:], checksum(b[:20]))
	icmp := b[20:]
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	copy(icmp[8:], "cvpn soak cvpn soak cvpn soak!!!")
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	return b
}

func checksum(b []byte) uint16 {
	var s uint32
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// floatConn is a client's UDP socket that can move to a new source port mid-session, as a NAT
// rebinding does: float opens a new socket in the namespace and closes the old one; reads and
// writes go to whichever is current.
type floatConn struct {
	ns string

	mu       sync.Mutex
	cur      *net.UDPConn
	deadline time.Time
	closed   bool
}

func newFloatConn(ns string) (*floatConn, error) {
	c, err := netlab.ListenUDPIn(ns)
	if err != nil {
		return nil, err
	}
	return &floatConn{ns: ns, cur: c}, nil
}

func (f *floatConn) current() (*net.UDPConn, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur, f.closed
}

func (f *floatConn) float() error {
	c, err := netlab.ListenUDPIn(f.ns)
	if err != nil {
		return err
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		c.Close()
		return net.ErrClosed
	}
	_ = c.SetReadDeadline(f.deadline)
	old := f.cur
	f.cur = c
	f.mu.Unlock()
	return old.Close()
}

func (f *floatConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		c, closed := f.current()
		if closed {
			return 0, nil, net.ErrClosed
		}
		n, a, err := c.ReadFrom(b)
		if err != nil && errors.Is(err, net.ErrClosed) {
			if now, closed := f.current(); now != c && !closed {
				continue // floated: read from the new socket
			}
		}
		return n, a, err
	}
}

func (f *floatConn) WriteTo(b []byte, a net.Addr) (int, error) {
	c, closed := f.current()
	if closed {
		return 0, net.ErrClosed
	}
	return c.WriteTo(b, a)
}

func (f *floatConn) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	return f.cur.Close()
}

func (f *floatConn) LocalAddr() net.Addr {
	c, _ := f.current()
	return c.LocalAddr()
}

func (f *floatConn) SetDeadline(t time.Time) error {
	if err := f.SetReadDeadline(t); err != nil {
		return err
	}
	return f.SetWriteDeadline(t)
}

func (f *floatConn) SetReadDeadline(t time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deadline = t
	return f.cur.SetReadDeadline(t)
}

func (f *floatConn) SetWriteDeadline(t time.Time) error {
	c, _ := f.current()
	return c.SetWriteDeadline(t)
}

// flooder attacks from one host in turns: every 40 s one flood of 10 s.
type flooder struct {
	lab    *netlab.Lab
	ns     string
	server netip.Addr
	udp    *net.UDPConn
	raw    *netlab.RawIPv4
	resets *resetMaker
}

func newFlooder(t *testing.T, lab *netlab.Lab, ns string, server netip.Addr, tlsKey []byte) *flooder {
	t.Helper()
	f := &flooder{lab: lab, ns: ns, server: server, resets: newResetMaker(t, tlsKey)}
	attacker := netip.AddrFrom4([4]byte{172, 31, server.As4()[2], 2})
	ctx := context.Background()
	for _, cmd := range [][]string{
		{"ip", "route", "add", spoofedPrefix.String(), "via", attacker.String()},
		{"sh", "-c", "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done"},
	} {
		if _, err := lab.Output(ctx, lab.Server, cmd...); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if f.udp, err = netlab.ListenUDPIn(ns); err != nil {
		t.Fatal(err)
	}
	if f.raw, err = netlab.OpenRawIPv4In(ns); err != nil {
		t.Fatal(err)
	}
	go func() { // replies are read and thrown away
		buf := make([]byte, 2048)
		for {
			if _, _, err := f.udp.ReadFrom(buf); errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}()
	return f
}

func (f *flooder) close() {
	f.udp.Close()
	f.raw.Close()
}

func (f *flooder) run(ctx context.Context, tally *soakTally) {
	to := &net.UDPAddr{IP: f.server.AsSlice(), Port: 443}
	dst := netip.AddrPortFrom(f.server, 443)
	garbage := badDatagrams()
	for round := 0; ; round++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(30 * time.Second):
		}
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var sent int
		switch round % 4 {
		case 0: // valid resets from this host
			var buf []byte
			sent, _ = pace(fctx, 1000, func() bool {
				buf = f.resets.next(buf)
				_, err := f.udp.WriteTo(buf, to)
				return err == nil
			})
		case 1: // garbage
			sent, _ = pace(fctx, 1000, func() bool {
				_, err := f.udp.WriteTo(garbage[randN(len(garbage))](), to)
				return err == nil
			})
		case 2: // valid resets from spoofed sources
			var wire, pkt []byte
			base := spoofedPrefix.Addr().As4()
			sent, _ = pace(fctx, 500, func() bool {
				var r [4]byte
				_, _ = rand.Read(r[:])
				src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{base[0], base[1], r[0], r[1]}), 1024+binary.BigEndian.Uint16(r[2:])%64000)
				wire = f.resets.next(wire)
				pkt = netlab.AppendUDP4(pkt[:0], src, dst, wire)
				return f.raw.Send(pkt) == nil
			})
		case 3: // silent TCP connections, held until the server closes them
			conns, err := netlab.DialTCPManyIn(f.ns, dst, 300)
			if err == nil {
				tally.floodConns.Add(int64(len(conns)))
				for _, c := range conns {
					_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
					var b [1]byte
					_, _ = c.Read(b[:])
					c.Close()
				}
			}
		}
		cancel()
		tally.floods.Add(1)
		tally.floodPackets.Add(int64(sent))
	}
}

// randN is a uniform random int in [0, n).
func randN(n int) int {
	v, err := rand.Int(rand.Reader, big.NewInt(int64(n)))
	if err != nil {
		panic(err)
	}
	return int(v.Int64())
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// renegCounter is a Go client's log: it counts the renegotiations the client reports, done
// and failed, and drops everything else.
type renegCounter struct{ tally *soakTally }

func (h *renegCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *renegCounter) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *renegCounter) WithGroup(string) slog.Handler            { return h }
func (h *renegCounter) Handle(_ context.Context, r slog.Record) error {
	switch r.Message {
	case "renegotiated":
		h.tally.goRenegotiated.Add(1)
	case "renegotiation failed":
		h.tally.goRenegFailed.Add(1)
		var err string
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" {
				err = a.Value.String()
			}
			return true
		})
		h.tally.fail("Go client renegotiation failed: %s", err)
	}
	return nil
}
