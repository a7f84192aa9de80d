package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/dataplane"
	"github.com/cvpn/cvpn/tunnel/limiter"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
)

// The in-memory engine: the session layer and the data plane wired as tunnel.Server wires
// them, over socktest's network and tuntest's TUN, with two UDP listeners as the design's
// 443 and 1194. Nothing here opens a socket or needs a namespace.
var (
	port443  = netip.MustParseAddrPort("198.51.100.1:443")
	port1194 = netip.MustParseAddrPort("198.51.100.1:1194")
	snatAddr = netip.MustParseAddr("10.0.1.2")
	vpcHost  = netip.MustParseAddr("10.0.1.10")
)

type testEngine struct {
	net   *socktest.Network
	m     *Manager
	plane *dataplane.Plane
	tun   *tuntest.ChannelTUN
	ca    *pki.Identity
	roots *x509.CertPool
	key   *tlscrypt.StaticKey
	v2    *tlscrypt.V2ServerKey
	clock *testClock
	// keyType is the key type of the CA, the server and the clients it issues.
	keyType pki.KeyType
}

// testClock is the real clock plus an offset a test can move forward.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

type engineOptions struct {
	reneg      time.Duration
	handWindow time.Duration
	perUser    int       // MaxConnectionsPerUser
	serverLog  io.Writer // when set, the server logs here instead of to the test
	resets     *limiter.Config
	events     Events
	hooks      Hooks        // nil: certificates alone
	rules      []authz.Rule // nil: every group reaches 10.0.0.0/16
	pool       netip.Prefix // zero: 10.2.0.0/22
	quiet      bool         // the server logs nothing (benchmarks)
	keyType    pki.KeyType  // of the CA and the server; zero: ECDSA P-256
}

func newTestEngine(t testing.TB, o engineOptions) *testEngine {
	t.Helper()
	e := &testEngine{net: socktest.NewNetwork(), tun: tuntest.NewChannelTUN(), clock: &testClock{}, keyType: o.keyType}
	var err error
	if e.ca, err = pki.NewCA("session test CA", o.keyType, 48*time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	e.roots = x509.NewCertPool()
	e.roots.AddCert(e.ca.Cert)
	srvID, err := pki.IssueServer(e.ca, "cvpn-test", nil, o.keyType, 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := srvID.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if e.key, err = tlscrypt.GenerateStaticKey(rand.Reader); err != nil {
		t.Fatal(err)
	}
	if e.v2, err = tlscrypt.GenerateV2ServerKey(rand.Reader); err != nil {
		t.Fatal(err)
	}
	poolPrefix := o.pool
	if !poolPrefix.IsValid() {
		poolPrefix = netip.MustParsePrefix("10.2.0.0/22")
	}
	pool, err := ippool.New(poolPrefix)
	if err != nil {
		t.Fatal(err)
	}
	natTable, err := nat.New(nat.Config{Addr: snatAddr})
	if err != nil {
		t.Fatal(err)
	}
	rules := o.rules
	if rules == nil {
		rules = []authz.Rule{{Network: netip.MustParsePrefix("10.0.0.0/16"), AllGroups: true}}
	}
	az, err := authz.New(rules)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := dataplane.NewPolicy(dataplane.Policy{Authz: az, SplitTunnel: true, Routes: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	var resets limiter.Config
	if o.resets != nil {
		resets = *o.resets
	}
	log := testlog.New(t)
	if o.serverLog != nil {
		log = slog.New(slog.NewTextHandler(o.serverLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if o.quiet {
		log = slog.New(slog.DiscardHandler)
	}
	e.m, err = New(Config{
		Pool: pool, NAT: natTable, Log: log.With("side", "server"), Now: e.clock.Now, HandWindow: o.handWindow, Resets: resets, Events: eventsOf(o.events),
		Hooks: o.hooks,
		Settings: Settings{
			Certificate: cert, ClientCAs: e.roots, Wrapper: tlscrypt.NewTLSCrypt(e.key, true), TLSCryptV2: e.v2,
			Ciphers: []datacrypto.Cipher{datacrypto.AES256GCM, datacrypto.ChaCha20Poly1305}, Reneg: o.reneg,
			MaxConnectionsPerUser: o.perUser,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.plane, err = dataplane.New(dataplane.Config{Pool: pool, NAT: natTable, Device: e.tun.TUN(), Policy: pol, Control: e.m, Drops: e.m.drops, Log: log.With("side", "server"), Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e.m.Bind(e.plane)
	// The engine's goroutines carry the label side=server, so a CPU profile of a test or
	// benchmark tells the server's share from the in-process clients' (pprof -tagfocus).
	pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("side", "server")))
	defer pprof.SetGoroutineLabels(context.Background())
	for _, ap := range []netip.AddrPort{port443, port1194} {
		if _, err := e.plane.ListenUDP(e.net, ap); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.plane.ListenTCP(e.net, port443); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); e.plane.Run() }()
	go func() { defer wg.Done(); e.plane.RunTimers(e.m.Tick) }()
	go func() { defer wg.Done(); e.m.Run(stop) }()
	t.Cleanup(func() {
		e.m.Close(time.Second)
		e.plane.Close()
		e.tun.TUN().Close()
		close(stop)
		wg.Wait()
		e.plane.Wait()
	})
	return e
}

func eventsOf(e Events) []Events {
	if e == nil {
		return nil
	}
	return []Events{e}
}

// clientConfig returns the configuration of a Go OpenVPN client with a new certificate, whose
// socket is at from on the in-memory network, dialling server.
func (e *testEngine) clientConfig(t testing.TB, cn string, from, server netip.AddrPort) client.Config {
	t.Helper()
	id, err := pki.IssueClient(e.ca, cn, []string{"dev"}, e.keyType, 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := id.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return client.Config{
		Server: server, Certificate: cert, RootCAs: e.roots, TLSCrypt: e.key,
		Log:  testlog.New(t).With("side", "client", "cn", cn),
		Dial: func(context.Context) (net.PacketConn, error) { return e.net.ListenPacket(from) },
	}
}

func connect(t testing.TB, cfg client.Config) *client.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := client.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// ping sends an IPv4 packet from the session to the VPC host, checks it leaves the TUN with the
// SNAT address, answers it and checks the session receives the answer.
func (e *testEngine) ping(t *testing.T, s *client.Session, seq byte) {
	t.Helper()
	self := s.Address().Addr()
	if err := s.WritePacket(ipv4UDP(self, vpcHost, seq)); err != nil {
		t.Fatalf("WritePacket: %v", err)
	}
	var out []byte
	select {
	case out = <-e.tun.Inbound:
	case <-time.After(5 * time.Second):
		t.Fatalf("packet %d from %v never left the TUN", seq, self)
	}
	if src := netip.AddrFrom4([4]byte(out[12:16])); src != snatAddr {
		t.Fatalf("packet left the TUN from %v, want the SNAT address", src)
	}
	// The VPC host answers: swap addresses and ports; NAT maps it back to the client.
	reply := ipv4UDP(vpcHost, snatAddr, seq)
	copy(reply[20:22], out[22:24])
	copy(reply[22:24], out[20:22])
	fixChecksum(reply)
	select {
	case e.tun.Outbound <- reply:
	case <-time.After(5 * time.Second):
		t.Fatal("the engine did not read the TUN")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	buf := make([]byte, 2048)
	n, err := s.ReadPacketContext(ctx, buf)
	if err != nil {
		t.Fatalf("no reply reached %v: %v", self, err)
	}
	if dst := netip.AddrFrom4([4]byte(buf[16:20])); dst != self || buf[n-1] != seq {
		t.Fatalf("reply to %v with payload %d, want %v and %d", dst, buf[n-1], self, seq)
	}
}

// ipv4UDP builds an IPv4/UDP packet src:40000 -> dst:53 whose one-byte payload is seq.
func ipv4UDP(src, dst netip.Addr, seq byte) []byte {
	p := make([]byte, 29)
	p[0], p[3], p[8], p[9] = 0x45, 29, 64, 17
	copy(p[12:16], src.AsSlice())
	copy(p[16:20], dst.AsSlice())
	p[20], p[21], p[23], p[25] = 0x9c, 0x40, 53, 9
	p[28] = seq
	fixChecksum(p)
	return p
}

// fixChecksum sets the IPv4 header checksum (UDP's is left zero: none).
func fixChecksum(p []byte) {
	p[10], p[11] = 0, 0
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(p[i])<<8 | uint32(p[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	p[10], p[11] = byte(^sum>>8), byte(^sum)
}

// established returns the established sessions by user.
func (e *testEngine) established() map[string]Status {
	out := make(map[string]Status)
	for _, s := range e.m.Established() {
		out[s.User] = s
	}
	return out
}

// sessionOfUser returns the established session of user.
func (e *testEngine) sessionOfUser(t *testing.T, user string) *Session {
	t.Helper()
	for _, s := range e.m.all() {
		if info := s.info.Load(); info != nil && info.User == user && s.state.Load() == stateEstablished {
			return s
		}
	}
	t.Fatalf("no established session of %s", user)
	return nil
}

// waitFor polls cond until it holds or five seconds passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestInMemoryEngine: a client connects through the socket fake, its traffic crosses the data
// plane both ways, and EXIT frees its session and address.
func TestInMemoryEngine(t *testing.T) {
	e := newTestEngine(t, engineOptions{})
	s := connect(t, e.clientConfig(t, "alice", netip.MustParseAddrPort("203.0.113.5:40001"), port443))
	for seq := range byte(3) {
		e.ping(t, s, seq)
	}
	st, ok := e.established()["alice"]
	if !ok || st.Address != s.Address().Addr() || st.Remote != netip.MustParseAddrPort("203.0.113.5:40001") || st.Transport != "UDPv4" {
		t.Fatalf("listing %+v does not show alice's session", e.m.Established())
	}
	if st.Traffic.RxPackets < 3 || st.Traffic.TxPackets < 3 {
		t.Fatalf("traffic %+v: the pings were not counted", st.Traffic)
	}
	s.Close()
	waitFor(t, "alice's session ends after EXIT", func() bool { return len(e.m.Established()) == 0 && e.m.cfg.Pool.InUse() == 0 })
}

// TestInMemoryEngineTCP: the same over a TCP stream; the stream's end ends the session.
func TestInMemoryEngineTCP(t *testing.T) {
	e := newTestEngine(t, engineOptions{})
	from := netip.MustParseAddrPort("203.0.113.6:40001")
	cfg := e.clientConfig(t, "dave", from, port443)
	cfg.TCP = true
	var conn net.Conn
	cfg.DialTCP = func(ctx context.Context) (net.Conn, error) {
		c, err := e.net.DialTCP(ctx, from, port443)
		conn = c
		return c, err
	}
	s := connect(t, cfg)
	for seq := range byte(3) {
		e.ping(t, s, seq)
	}
	if st := e.established()["dave"]; st.Transport != "TCPv4_SERVER" || st.Remote != from {
		t.Fatalf("listing %+v does not show dave's TCP session", st)
	}
	conn.Close() // no EXIT: the connection just ends
	waitFor(t, "dave's session ends with its stream", func() bool { return len(e.m.Established()) == 0 && e.m.cfg.Pool.InUse() == 0 })
}

// TestTwoListenersNoHalfBuiltSession: a client that finishes the cookie exchange on 443 while
// every one of its packets also reaches 1194 from the same source (the crash of a session
// reachable before its link was set). Run under -race: no panic, no race, one session.
func TestTwoListenersNoHalfBuiltSession(t *testing.T) {
	e := newTestEngine(t, engineOptions{reneg: 0})
	from := netip.MustParseAddrPort("203.0.113.7:40002")
	e.net.SetFilter(func(src, dst netip.AddrPort, pkt []byte) (netip.AddrPort, bool) {
		if src == from && dst == port443 {
			dup := bytes.Clone(pkt)
			go e.net.Inject(src, port1194, dup)
		}
		return src, true
	})
	s := connect(t, e.clientConfig(t, "carol", from, port443))
	for seq := range byte(5) {
		e.ping(t, s, seq)
	}
	if n := len(e.m.Established()); n != 1 {
		t.Fatalf("%d established sessions, want 1", n)
	}
}

// TestFloatOntoAnotherClientRefused: bob's packets re-sourced to alice's address do not move
// bob there, and alice keeps her session and her traffic.
func TestFloatOntoAnotherClientRefused(t *testing.T) {
	e := newTestEngine(t, engineOptions{})
	aliceAt := netip.MustParseAddrPort("203.0.113.10:40000")
	bobAt := netip.MustParseAddrPort("203.0.113.11:40000")
	alice := connect(t, e.clientConfig(t, "alice", aliceAt, port443))
	bob := connect(t, e.clientConfig(t, "bob", bobAt, port443))
	e.ping(t, alice, 1)
	e.ping(t, bob, 1)
	aliceID := e.established()["alice"].ID
	var rewrite atomic.Bool
	rewrite.Store(true)
	e.net.SetFilter(func(src, dst netip.AddrPort, pkt []byte) (netip.AddrPort, bool) {
		if src == bobAt && rewrite.Load() {
			return aliceAt, true
		}
		return src, true
	})
	for i := range 20 {
		_ = bob.WritePacket(ipv4UDP(bob.Address().Addr(), vpcHost, byte(i)))
	}
	waitFor(t, "the float is refused and counted", func() bool { return e.m.drops.Count(counters.FloatConflict) >= 20 })
	for seq := range byte(3) {
		e.ping(t, alice, 10+seq)
	}
	st := e.established()
	if st["alice"].ID != aliceID || st["alice"].Remote != aliceAt {
		t.Fatalf("alice's session changed: %+v", st["alice"])
	}
	if st["bob"].Remote != bobAt {
		t.Fatalf("bob floated onto %v", st["bob"].Remote)
	}
	rewrite.Store(false)
	e.ping(t, bob, 9)
}
