package tunnel_test

import (
	"context"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
	"github.com/cvpn/cvpn/tunnel/tuntest"
)

// The whole engine in memory, as a benchmark of the packet path: a tunnel.Server with as many
// workers (UDP shards, TUN queues) as GOMAXPROCS, over socktest's network and tuntest's TUN,
// with engineSessions clients of bench/client connected. Run it with -cpu 1,2 to see how the
// packet rate grows with cores (issue 16); -cpuprofile tells the server's share from the
// clients' by the goroutine label side=server (pprof -tagfocus side=server).
//
// The clients seal (upload) and open (download) every packet as a real client would, so the
// process does about twice the server's cryptographic work: the rates are of the whole loop,
// and the server's share of the CPU is in the profile.
//
// Beside pkts/s it reports the process's CPU per packet (cpu-µs/pkt), the share of the
// GOMAXPROCS cores it used (busy), and the time per packet its Ps were taken but ran on no CPU
// (held-µs/pkt: blocked in a system call such as a sleep, or not run by a busy host). On a
// shared machine the rate is noisy; these say why it did not grow: CPU per packet that grows
// with cores is contention, a large held share is sleeps or a host that is not giving the
// cores.

const (
	engineSessions = 64
	// enginePacket is the IP packet size: a full 1400-byte tunnel MTU's worth of UDP.
	enginePacket = 1300
	// engineWindow bounds the packets in flight in the whole loop, well below what a socket or
	// TUN queue holds (socktest.QueueLen, tuntest.SlotCount), so nothing is dropped for want of
	// room and a producer never runs ahead of the engine.
	engineWindow = 1024
	// engineChunk is how many packets a producer sends between looks at the window.
	engineChunk = 32
)

var (
	benchServer = netip.MustParseAddrPort("10.0.0.1:1194")
	benchSNAT   = netip.MustParseAddr("10.0.1.2")
	benchVPC    = netip.MustParseAddr("10.0.1.10")
)

// engineBench is a running server with its clients.
type engineBench struct {
	srv      *tunnel.Server
	net      *socktest.Network
	dev      *tuntest.Device
	sessions []*client.Session
	senders  []*sender // the sessions' sockets
	// arrived counts the packets that made it through: at the TUN (upload), at the clients
	// (download).
	arrived *progress
}

// sender is a client's socket that, once a batch is set, queues what the client sends into
// the batch instead of sending it: the producer that drives the client sends the batch when its
// chunk is sealed, as one InjectBatch. Many clients' datagrams then reach the server's shards
// the way a kernel's socket queues fill, a batch at a time, and the benchmark measures the
// server rather than the fake network's locks.
type sender struct {
	net.PacketConn // the client's socktest socket: reads, deadlines, Close
	from           netip.AddrPort
	batch          atomic.Pointer[sendBatch]
}

func (s *sender) WriteTo(p []byte, addr net.Addr) (int, error) {
	b := s.batch.Load()
	ua, ok := addr.(*net.UDPAddr)
	if b == nil || !ok {
		return s.PacketConn.WriteTo(p, addr)
	}
	b.add(s.from, ua.AddrPort(), p)
	return len(p), nil
}

// sendBatch is one producer's datagrams waiting to be sent. A client's keepalive may add to it
// from the client's own goroutine, hence the lock.
type sendBatch struct {
	net  *socktest.Network
	mu   sync.Mutex
	ds   []socktest.Datagram
	bufs [][]byte // reused: ds[i].Data is bufs[i][:len]
}

func (b *sendBatch) add(from, to netip.AddrPort, p []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := len(b.ds)
	if i == len(b.bufs) {
		b.bufs = append(b.bufs, make([]byte, 0, 2048))
	}
	b.bufs[i] = append(b.bufs[i][:0], p...)
	b.ds = append(b.ds, socktest.Datagram{From: from, To: to, Data: b.bufs[i]})
}

func (b *sendBatch) send() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.net.InjectBatch(b.ds)
	clear(b.ds)
	b.ds = b.ds[:0]
}

// progress counts arrived packets and wakes producers waiting for room in the window. A
// producer that spun instead would take a core from the engine it waits for, and one woken at
// every arrival would cost a cross-core wake-up per packet: an arrival wakes the waiters only
// once the count reaches the lowest they wait for.
type progress struct {
	n    atomic.Uint64
	want atomic.Uint64 // the lowest count a waiter waits for; MaxUint64 when none
	mu   sync.Mutex    // guards want's lowering and the waits on cond
	cond *sync.Cond
}

func newProgress() *progress {
	p := &progress{}
	p.want.Store(math.MaxUint64)
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *progress) add(k uint64) {
	if p.n.Add(k) >= p.want.Load() {
		p.mu.Lock()
		p.want.Store(math.MaxUint64)
		p.cond.Broadcast()
		p.mu.Unlock()
	}
}

// wait returns once n reaches until, or after a second (the caller looks again).
func (p *progress) wait(until uint64) {
	timeout := time.AfterFunc(time.Second, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer timeout.Stop()
	deadline := time.Now().Add(time.Second)
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.n.Load() < until && time.Now().Before(deadline) {
		if until < p.want.Load() {
			p.want.Store(until)
		}
		// Look again after publishing what we want: an arrival before that saw the old want
		// and woke nobody, but its count is here now.
		if p.n.Load() >= until {
			break
		}
		p.cond.Wait()
	}
}

func newEngineBench(b *testing.B) *engineBench {
	b.Helper()
	now := time.Now()
	ca, err := pki.NewCA("engine bench CA", pki.ECDSAP256, 2*time.Hour, now)
	if err != nil {
		b.Fatal(err)
	}
	srvID, err := pki.IssueServer(ca, "server", nil, pki.ECDSAP256, time.Hour, now)
	if err != nil {
		b.Fatal(err)
	}
	srvCert, err := srvID.TLSCertificate()
	if err != nil {
		b.Fatal(err)
	}
	// One certificate for every client: the server allows any number of sessions per user.
	cliID, err := pki.IssueClient(ca, "bench", nil, pki.ECDSAP256, time.Hour, now)
	if err != nil {
		b.Fatal(err)
	}
	cliCert, err := cliID.TLSCertificate()
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	pool, err := ippool.New(netip.MustParsePrefix("10.2.0.0/22"))
	if err != nil {
		b.Fatal(err)
	}
	natTable, err := nat.New(nat.Config{Addr: benchSNAT})
	if err != nil {
		b.Fatal(err)
	}
	az, err := authz.New([]authz.Rule{{Network: netip.MustParsePrefix("10.0.1.0/24"), AllGroups: true}})
	if err != nil {
		b.Fatal(err)
	}
	pol, err := tunnel.NewPolicy(tunnel.Policy{Authz: az, SplitTunnel: true, Routes: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24")}})
	if err != nil {
		b.Fatal(err)
	}
	network := socktest.NewNetwork()
	e := &engineBench{net: network, dev: tuntest.New(tunnel.Workers(0)), arrived: newProgress()}

	// The server's goroutines carry side=server, the clients' side=client, for the profile.
	pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("side", "server")))
	e.srv, err = tunnel.New(tunnel.Config{
		UDP: []netip.AddrPort{benchServer}, Network: network, Workers: 0,
		Certificate: srvCert, ClientCAs: roots, Ciphers: []datacrypto.Cipher{datacrypto.AES256GCM},
		Pool: pool, NAT: natTable, Device: e.dev.Queue(0), Queues: e.dev.Queues(), Policy: pol,
		Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		pprof.SetGoroutineLabels(context.Background())
		b.Fatal(err)
	}
	ran := make(chan struct{})
	go func() { defer close(ran); e.srv.Run() }()
	pprof.SetGoroutineLabels(context.Background())
	b.Cleanup(func() {
		for _, s := range e.sessions {
			s.Close()
		}
		e.srv.Close()
		<-ran
	})

	// Connect the clients, several at a time, each from its own /24 (the server bounds
	// handshakes per source network).
	e.sessions = make([]*client.Session, engineSessions)
	e.senders = make([]*sender, engineSessions)
	errs := make(chan error, engineSessions)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	ctx := pprof.WithLabels(context.Background(), pprof.Labels("side", "client"))
	for i := range engineSessions {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			pprof.SetGoroutineLabels(ctx)
			from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 1}), 40000)
			cfg := client.Config{
				Server: benchServer, Certificate: cliCert, RootCAs: roots,
				Ciphers: []datacrypto.Cipher{datacrypto.AES256GCM},
				Dial: func(context.Context) (net.PacketConn, error) {
					pc, err := network.ListenPacket(from)
					if err != nil {
						return nil, err
					}
					e.senders[i] = &sender{PacketConn: pc, from: from}
					return e.senders[i], nil
				},
				OnPacket: func(*client.Session, []byte) { e.arrived.add(1) },
			}
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			s, err := client.Connect(cctx, cfg)
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			e.sessions[i] = s
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return e
}

// uploadPacket returns an IPv4/UDP packet of size bytes from src:40000 to the VPC host's port 9.
func uploadPacket(src, dst netip.Addr, srcPort, dstPort uint16, size int) []byte {
	p := make([]byte, size)
	p[0], p[8], p[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(p[2:], uint16(size))
	copy(p[12:16], src.AsSlice())
	copy(p[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(p[20:], srcPort)
	binary.BigEndian.PutUint16(p[22:], dstPort)
	binary.BigEndian.PutUint16(p[24:], uint16(size-20))
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	return p
}

// run splits b.N packets over producers, each sending its share in chunks with send (given the
// producer's number, the sequence number of the chunk's first packet within the producer's
// share, and the chunk's size), holding the packets in flight (sent less arrived) under
// engineWindow. It returns when b.N more have arrived, and reports the rate.
func (e *engineBench) run(b *testing.B, producers int, send func(g, k, n int)) {
	b.Helper()
	base := e.arrived.n.Load()
	var sent atomic.Uint64
	b.ReportAllocs()
	cpu0, idle0 := cpuTime(), idleTime()
	b.ResetTimer()
	var wg sync.WaitGroup
	for g := range producers {
		share := b.N / producers
		if g == 0 {
			share += b.N % producers
		}
		wg.Go(func() {
			for k := 0; k < share; {
				chunk := min(engineChunk, share-k)
				if s := sent.Add(uint64(chunk)); s > engineWindow {
					e.arrived.wait(base + s - engineWindow)
				}
				send(g, k, chunk)
				k += chunk
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for e.arrived.n.Load()-base < uint64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d packets arrived in 30 s; drops %v", e.arrived.n.Load()-base, b.N, e.srv.Drops())
		}
		e.arrived.wait(base + uint64(b.N))
	}
	b.StopTimer()
	cpu := cpuTime() - cpu0
	held := time.Duration(runtime.GOMAXPROCS(0))*b.Elapsed() - (idleTime() - idle0) - cpu
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N), "cpu-µs/pkt")
	b.ReportMetric(cpu.Seconds()/b.Elapsed().Seconds()/float64(runtime.GOMAXPROCS(0)), "busy")
	b.ReportMetric(max(0, float64(held.Nanoseconds())/1e3/float64(b.N)), "held-µs/pkt")
}

// idleTime is the runtime's estimate of the time its Ps were idle so far.
func idleTime() time.Duration {
	s := []metrics.Sample{{Name: "/cpu/classes/idle:cpu-seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return time.Duration(s[0].Value.Float64() * 1e9)
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkEngineUpload: clients to the private network. GOMAXPROCS producers each seal packets
// for their share of the sessions (session i belongs to producer i mod GOMAXPROCS), round robin,
// through bench/client, and send each chunk as one batch; the server opens, checks, NATs them and
// writes them to the TUN, where they are counted.
func BenchmarkEngineUpload(b *testing.B) {
	e := newEngineBench(b)
	producers := runtime.GOMAXPROCS(0)
	pkts := make([][]byte, engineSessions)
	for i, s := range e.sessions {
		pkts[i] = uploadPacket(s.Address().Addr(), benchVPC, 40000, 9, enginePacket)
	}
	perProducer := (engineSessions + producers - 1) / producers
	batches := make([]*sendBatch, producers)
	for g := range batches {
		batches[g] = &sendBatch{net: e.net}
	}
	for i, s := range e.senders {
		s.batch.Store(batches[i%producers])
	}
	defer func() {
		// Back to sending at once, for the goodbyes.
		for _, s := range e.senders {
			s.batch.Store(nil)
		}
		for _, b := range batches {
			b.send()
		}
	}()
	e.dev.SetCounter(func(_, n int) { e.arrived.add(uint64(n)) })
	e.run(b, producers, func(g, k, n int) {
		defer batches[g].send()
		for ; n > 0; n, k = n-1, k+1 {
			i := g + producers*(k%perProducer)
			if i >= engineSessions {
				i = g
			}
			if err := e.sessions[i].WritePacket(pkts[i]); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkEngineDownload: the private network to clients. Each TUN queue's producer injects
// replies to its share of the sessions (session i on queue i mod queues), in batches; the server
// reverses the NAT, seals and sends them; the clients open and count them.
func BenchmarkEngineDownload(b *testing.B) {
	e := newEngineBench(b)
	// One packet per session sets up its NAT mapping; the TUN shows the port it got.
	var port atomic.Uint32
	e.dev.SetSink(func(_ int, pkt []byte) { port.Store(uint32(binary.BigEndian.Uint16(pkt[20:]))) })
	replies := make([][]byte, engineSessions)
	for i, s := range e.sessions {
		before := e.dev.Written()
		if err := s.WritePacket(uploadPacket(s.Address().Addr(), benchVPC, 40000, 9, 64)); err != nil {
			b.Fatal(err)
		}
		for e.dev.Written() == before {
			time.Sleep(50 * time.Microsecond)
		}
		replies[i] = uploadPacket(benchVPC, benchSNAT, 9, uint16(port.Load()), enginePacket)
	}
	e.dev.SetSink(nil)

	queues := tunnel.Workers(0)
	// Queue q's producer injects replies to sessions q, q+queues, ... round robin, a chunk at
	// a time.
	batches := make([][][]byte, queues)
	mine := make([][]int, queues)
	for q := range queues {
		batches[q] = make([][]byte, engineChunk)
		for i := q; i < engineSessions; i += queues {
			mine[q] = append(mine[q], i)
		}
	}
	e.run(b, queues, func(q, k, n int) {
		batch, ids := batches[q][:n], mine[q]
		for j := range batch {
			batch[j] = replies[ids[(k+j)%len(ids)]]
		}
		e.dev.Queue(q).Inject(batch...)
	})
}
