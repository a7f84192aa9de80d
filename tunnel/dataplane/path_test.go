package dataplane

import (
	"crypto/rand"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/sock"
)

// pathFixture is a data plane with one authenticated peer wired by hand, to measure and check
// the per-packet path without a handshake.
type pathFixture struct {
	p      *Plane
	l      *UDPListener
	s      *udpShard // the shard the tests hand packets to
	peer   *Peer
	owner  *eventRecorder
	client *datacrypto.Keys // the client's side of the data keys
	vpc    netip.Addr
}

// nopControl drops control packets: these tests drive the data path only.
type nopControl struct{}

func (nopControl) UDPControl(*UDPListener, []byte, netip.AddrPort, netip.Addr) {}
func (nopControl) TCPControl(*TCPStream, []byte) bool                          { return false }
func (nopControl) TCPClosed(*TCPStream)                                        {}

// eventRecorder is a peer's owner that records the events the data path reports.
type eventRecorder struct{ got atomic.Uint32 }

func (e *eventRecorder) PeerEvent(ev Event) { e.got.Or(uint32(ev)) }

func newPathFixture(tb testing.TB, mbps float64) *pathFixture {
	tb.Helper()
	pool, err := ippool.New(netip.MustParsePrefix("10.2.0.0/22"))
	if err != nil {
		tb.Fatal(err)
	}
	natTable, err := nat.New(nat.Config{Addr: netip.MustParseAddr("10.0.1.2")})
	if err != nil {
		tb.Fatal(err)
	}
	az, err := authz.New([]authz.Rule{{Network: netip.MustParsePrefix("10.0.0.0/16"), Group: "dev"}})
	if err != nil {
		tb.Fatal(err)
	}
	pol, err := NewPolicy(Policy{Authz: az, SplitTunnel: true, Routes: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24")}, Bandwidth: mbps * 1e6})
	if err != nil {
		tb.Fatal(err)
	}
	// Two shards whatever the cores: tests hand packets to either.
	p, err := New(Config{Pool: pool, NAT: natTable, Device: tuntest.NewChannelTUN().TUN(), Policy: pol, Control: nopControl{}, Workers: 2})
	if err != nil {
		tb.Fatal(err)
	}
	l, err := p.ListenUDP(sock.Host, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close(); p.Wait() })
	var k2 datacrypto.Key2
	_, _ = rand.Read(k2[:])
	server, _ := datacrypto.NewKeys(datacrypto.AES256GCM, &k2, datacrypto.Server)
	clientKeys, _ := datacrypto.NewKeys(datacrypto.AES256GCM, &k2, datacrypto.Client)
	addr, _ := pool.Allocate()
	idx, _ := pool.Index(addr)
	owner := &eventRecorder{}
	peer := NewPeer(owner, l.NewLink(netip.MustParseAddrPort("127.0.0.1:9"), netip.Addr{}), time.Now())
	peer.SetIdentity(&Identity{Addr: addr, PeerID: uint32(idx), User: "alice", Groups: []string{"dev"}, DataV2: true, Cipher: datacrypto.AES256GCM})
	peer.InstallKey(&DataKey{Keys: server}, true)
	p.Publish(peer)
	return &pathFixture{p: p, l: l, s: l.shards[0], peer: peer, owner: owner, client: clientKeys, vpc: netip.MustParseAddr("10.0.1.10")}
}

// udpPacket builds an IPv4/UDP packet from the client to dst at buf[off:].
func udpPacket(buf []byte, off int, src, dst netip.Addr, payload int) []byte {
	p := buf[off : off+28+payload]
	clear(p)
	p[0], p[2], p[3], p[8], p[9] = 0x45, byte((28+payload)>>8), byte(28+payload), 64, 17
	copy(p[12:16], src.AsSlice())
	copy(p[16:20], dst.AsSlice())
	p[20], p[21], p[22], p[23] = 0x9c, 0x40, 0, 53 // ports 40000 -> 53
	p[24], p[25] = byte((8+payload)>>8), byte(8+payload)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(p[i])<<8 | uint32(p[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	p[10], p[11] = byte(^sum>>8), byte(^sum)
	return p
}

// sealFromClient builds a P_DATA_V2 packet the client would send, in buf.
func (f *pathFixture) sealFromClient(buf []byte, pid uint32, dst netip.Addr) []byte {
	const hdr = 4
	udpPacket(buf, hdr+datacrypto.Overhead, f.peer.Identity().Addr, dst, 1372)
	pkt := buf[:hdr+datacrypto.Overhead+1400]
	pkt[0] = packet.Header(packet.DataV2, 0)
	pkt[1], pkt[2], pkt[3] = byte(f.peer.Identity().PeerID>>16), byte(f.peer.Identity().PeerID>>8), byte(f.peer.Identity().PeerID)
	return f.client.Seal(pkt, hdr, pid)
}

// TestReceivePathNoAllocs: decrypt, replay, authz, routes, bucket, MSS and NAT allocate nothing.
func TestReceivePathNoAllocs(t *testing.T) {
	f := newPathFixture(t, 0)
	l := f.s
	buf := make([]byte, 2048)
	pid := uint32(0)
	from := f.peer.link.Remote()
	allocs := testing.AllocsPerRun(1000, func() {
		pid++
		pkt := f.sealFromClient(buf, pid, f.vpc)
		l.tunBatch = l.tunBatch[:0]
		l.receiveData(pkt, from, netip.Addr{})
		if len(l.tunBatch) != 1 {
			t.Fatalf("packet %d not delivered; drops %v", pid, f.p.drops.Snapshot())
		}
	})
	if allocs != 0 {
		t.Fatalf("receive path allocates %v times per packet", allocs)
	}
	got := l.tunBatch[0][tunWriteOffset:]
	if src := netip.AddrFrom4([4]byte(got[12:16])); src != netip.MustParseAddr("10.0.1.2") {
		t.Fatalf("source after NAT = %s, want the SNAT address", src)
	}
}

// TestReceivePathPolicy checks the drops on the path: unauthorized, unrouted, spoofed, replayed.
func TestReceivePathPolicy(t *testing.T) {
	f := newPathFixture(t, 0)
	l := f.s
	buf := make([]byte, 2048)
	from := f.peer.link.Remote()
	send := func(pid uint32, dst netip.Addr) int {
		l.tunBatch = l.tunBatch[:0]
		l.receiveData(f.sealFromClient(buf, pid, dst), from, netip.Addr{})
		return len(l.tunBatch)
	}
	if send(1, f.vpc) != 1 {
		t.Fatal("authorized packet dropped")
	}
	if send(1, f.vpc) != 0 || f.p.drops.Snapshot()["replay"] != 1 {
		t.Fatalf("replayed packet not dropped: %v", f.p.drops.Snapshot())
	}
	if send(2, netip.MustParseAddr("10.0.2.10")) != 0 || f.p.drops.Snapshot()["no_route"] != 1 {
		t.Fatalf("unrouted destination not dropped: %v", f.p.drops.Snapshot())
	}
	id := *f.peer.Identity()
	id.Groups = []string{"guest"}
	f.peer.SetIdentity(&id)
	f.p.SetPolicy(f.p.Policy().clone())
	if send(3, f.vpc) != 0 || f.p.drops.Snapshot()["unauthorized"] != 1 {
		t.Fatalf("destination without a rule for the user's groups not dropped: %v", f.p.drops.Snapshot())
	}
}

// clone returns a copy of the policy, as a reload would install.
func (p *Policy) clone() *Policy { q := *p; return &q }

// TestBandwidthLimitDrops: a 1 Mbit/s client can send its burst, then is limited.
func TestBandwidthLimitDrops(t *testing.T) {
	f := newPathFixture(t, 1)
	l := f.s
	buf := make([]byte, 2048)
	passed := 0
	for pid := uint32(1); pid <= 100; pid++ {
		l.tunBatch = l.tunBatch[:0]
		l.receiveData(f.sealFromClient(buf, pid, f.vpc), f.peer.link.Remote(), netip.Addr{})
		passed += len(l.tunBatch)
	}
	// Burst: max(16 KiB, 1 Mbit/s * 300 ms) = 37500 bytes, i.e. 26 packets of 1400 bytes.
	if passed < 25 || passed > 28 || f.p.drops.Snapshot()["bandwidth_limit"] == 0 {
		t.Fatalf("%d of 100 back-to-back packets passed a 1 Mbit/s limit; drops %v", passed, f.p.drops.Snapshot())
	}
}

func BenchmarkReceivePath(b *testing.B) {
	f := newPathFixture(b, 0)
	l := f.s
	buf := make([]byte, 2048)
	pid := uint32(0)
	from := f.peer.link.Remote()
	b.SetBytes(1400)
	for b.Loop() {
		pid++
		pkt := f.sealFromClient(buf, pid, f.vpc)
		l.tunBatch = l.tunBatch[:0]
		l.receiveData(pkt, from, netip.Addr{})
	}
}

func BenchmarkSeal(b *testing.B) {
	f := newPathFixture(b, 0)
	buf := make([]byte, tunOffset+1500+64)
	b.SetBytes(1400)
	for b.Loop() {
		udpPacket(buf, tunOffset, f.vpc, f.peer.Identity().Addr, 1372)
		f.p.seal(f.peer, buf, tunOffset, 1400, 1)
	}
}

// TestHandshakeLimiterRefund: completed handshakes give their token back, so only resets that
// never complete are limited.
func TestHandshakeLimiterRefund(t *testing.T) {
	now := time.Unix(1000, 0)
	b := NewRateLimiter(10, 3, func() time.Time { return now })
	for i := range 3 {
		if !b.Allow() {
			t.Fatalf("reply %d refused within the burst", i)
		}
	}
	if b.Allow() {
		t.Fatal("reply beyond the burst allowed")
	}
	b.Refund()
	if !b.Allow() {
		t.Fatal("refunded token not usable")
	}
	now = now.Add(100 * time.Millisecond)
	if !b.Allow() {
		t.Fatal("no token after 100 ms at 10/s")
	}
}
