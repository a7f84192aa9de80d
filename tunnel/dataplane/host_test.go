package dataplane

import (
	"bytes"
	"crypto/rand"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/ippkt"
)

// The endpoint host in these tests: its address in the private network (inside the fixture's
// route and rule), the loopback range, multicast, and the SNAT address.
var (
	hostVPC  = netip.MustParseAddr("10.0.1.1")
	testHost = []netip.Prefix{
		netip.MustParsePrefix("10.0.1.1/32"),
		netip.MustParsePrefix("10.0.1.255/32"),
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("224.0.0.0/4"),
		netip.MustParsePrefix("10.0.1.2/32"),
	}
	gateway = netip.MustParseAddr("10.2.0.1") // the fixture pool's first usable address
)

// withHostAccess returns pol with allow_host_access set to allow.
func withHostAccess(pol *Policy, allow bool) *Policy {
	q := *pol
	q.AllowHostAccess = allow
	return &q
}

// TestHostAddressDropped: packets from a client authorized for the whole private network to
// the endpoint host's own addresses are dropped and counted as host_address although the rules
// allow them; those no route covers stay no_route (a split-tunnel client's multicast is not an
// attack on the host); in full-tunnel mode all are the host's. The private network's hosts are
// reached as before; allow_host_access lets the host's addresses through; a new host address
// counts from the snapshot that has it.
func TestHostAddressDropped(t *testing.T) {
	f := newPathFixture(t, 0)
	l := f.s
	buf := make([]byte, 2048)
	from := f.peer.link.Remote()
	pid := uint32(0)
	send := func(dst netip.Addr) int {
		pid++
		l.tunBatch = l.tunBatch[:0]
		l.receiveData(f.sealFromClient(buf, pid, dst), from, netip.Addr{})
		return len(l.tunBatch)
	}
	if send(hostVPC) != 1 {
		t.Fatal("before the host's addresses are known, its VPC address is forwarded like any (the hole this closes)")
	}
	split := f.p.Policy().WithHost(testHost)
	full := *split
	full.routeTable = nil // split_tunnel: false
	for _, tc := range []struct {
		pol    *Policy
		dst    []string
		reason counters.Reason
	}{
		{split, []string{"10.0.1.1", "10.0.1.255", "10.0.1.2"}, counters.HostAddress},
		{split, []string{"127.0.0.1", "224.0.0.1", "239.255.255.250"}, counters.NoRoute},
		{&full, []string{"10.0.1.1", "127.0.0.1", "127.1.2.3", "224.0.0.1", "239.255.255.250", "10.0.1.255"}, counters.HostAddress},
	} {
		f.p.SetPolicy(tc.pol)
		for _, dst := range tc.dst {
			before := f.p.drops.Snapshot()
			if send(netip.MustParseAddr(dst)) != 0 {
				t.Errorf("packet to the host's %s forwarded", dst)
			}
			after := f.p.drops.Snapshot()
			if after[tc.reason.String()] != before[tc.reason.String()]+1 || len(after) > len(before)+1 {
				t.Errorf("to %s (split tunnel %v): drops went from %v to %v, want one more %v", dst, tc.pol.routeTable != nil, before, after, tc.reason)
			}
		}
		if send(f.vpc) != 1 {
			t.Fatalf("packet to the VPC host %s dropped: %v", f.vpc, f.p.drops.Snapshot())
		}
	}
	if s := f.p.drops.Snapshot(); s["unauthorized"] != 0 {
		t.Errorf("host destinations counted as unauthorized: %v", s)
	}
	f.p.SetPolicy(split)

	// allow_host_access: the host's address goes through the routes, the rules and NAT.
	f.p.SetPolicy(withHostAccess(f.p.Policy(), true))
	if send(hostVPC) != 1 {
		t.Fatalf("allow_host_access: packet to %s not forwarded: %v", hostVPC, f.p.drops.Snapshot())
	}
	got := l.tunBatch[0][tunWriteOffset:]
	if dst, src := netip.AddrFrom4([4]byte(got[16:20])), netip.AddrFrom4([4]byte(got[12:16])); dst != hostVPC || src != netip.MustParseAddr("10.0.1.2") {
		t.Errorf("allow_host_access: forwarded %s -> %s, want 10.0.1.2 -> %s", src, dst, hostVPC)
	}
	// ... but no further than the rules allow: 127/8 has no route.
	before := f.p.drops.Count(counters.NoRoute)
	if send(netip.MustParseAddr("127.0.0.1")) != 0 || f.p.drops.Count(counters.NoRoute) != before+1 {
		t.Errorf("allow_host_access: 127.0.0.1 not refused by the routes: %v", f.p.drops.Snapshot())
	}

	// The host gains an address: the snapshot with it refuses it.
	f.p.SetPolicy(withHostAccess(f.p.Policy(), false))
	extra := netip.MustParseAddr("10.0.1.3")
	if send(extra) != 1 {
		t.Fatal("10.0.1.3 refused before it is a host address")
	}
	f.p.SetPolicy(f.p.Policy().WithHost(append(testHost[:len(testHost):len(testHost)], netip.PrefixFrom(extra, 32))))
	before = f.p.drops.Count(counters.HostAddress)
	if send(extra) != 0 || f.p.drops.Count(counters.HostAddress) != before+1 {
		t.Errorf("new host address 10.0.1.3 not refused: %v", f.p.drops.Snapshot())
	}
}

// TestHostSet checks the lookup against a linear scan of the prefixes.
func TestHostSet(t *testing.T) {
	prefixes := append([]netip.Prefix{
		netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("192.0.2.7/32"),    // twice
		netip.MustParsePrefix("198.51.100.9/24"), // not masked
		{},                                       // invalid: left out
		netip.MustParsePrefix("2001:db8::1/128"),
	}, testHost...)
	s := newHostSet(prefixes)
	var b [4]byte
	for range 20000 {
		_, _ = rand.Read(b[:])
		b[0] = []byte{10, 127, 192, 198, 224, 239, 240, 8}[b[0]%8]
		a := netip.AddrFrom4(b)
		want := false
		for _, p := range prefixes {
			want = want || p.IsValid() && p.Contains(a)
		}
		if got := s.contains(a); got != want {
			t.Fatalf("contains(%s) = %v, want %v", a, got, want)
		}
	}
	for _, a := range []string{"10.0.1.1", "192.0.2.7", "198.51.100.200", "2001:db8::1"} {
		if !s.contains(netip.MustParseAddr(a)) {
			t.Errorf("contains(%s) = false", a)
		}
	}
	for _, a := range []string{"10.0.1.10", "::ffff:10.0.1.1", "2001:db8::2"} {
		if s.contains(netip.MustParseAddr(a)) {
			t.Errorf("contains(%s) = true", a)
		}
	}
}

// echoClient is a second session of the fixture's plane whose client is a UDP socket of the
// test, so that what the plane sends to it can be read and opened.
type echoClient struct {
	f    *pathFixture
	peer *Peer
	keys *datacrypto.Keys
	conn *net.UDPConn
	v1   bool // the client sends P_DATA_V1
	pid  uint32
	buf  []byte
}

func newEchoClient(t testing.TB, f *pathFixture, dataV2, sendV1 bool, framing Framing) *echoClient {
	t.Helper()
	addr, err := f.p.cfg.Pool.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := f.p.cfg.Pool.Index(addr)
	return newClientWith(t, f, Identity{Addr: addr, PeerID: uint32(idx), User: "erin", Groups: []string{"dev"}, DataV2: dataV2,
		Cipher: datacrypto.AES256GCM, Framing: framing}, sendV1)
}

// newClientWith publishes a peer of identity id whose link is a UDP socket of the test's own,
// with fresh keys.
func newClientWith(t testing.TB, f *pathFixture, id Identity, sendV1 bool) *echoClient {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var k2 datacrypto.Key2
	_, _ = rand.Read(k2[:])
	server, _ := datacrypto.NewKeys(datacrypto.AES256GCM, &k2, datacrypto.Server)
	client, _ := datacrypto.NewKeys(datacrypto.AES256GCM, &k2, datacrypto.Client)
	peer := NewPeer(&eventRecorder{}, f.l.NewLink(conn.LocalAddr().(*net.UDPAddr).AddrPort(), netip.Addr{}), time.Now())
	peer.SetIdentity(&id)
	peer.InstallKey(&DataKey{Keys: server}, true)
	f.p.Publish(peer)
	return &echoClient{f: f, peer: peer, keys: client, conn: conn, v1: sendV1, buf: make([]byte, 4096)}
}

// echoRequest builds an ICMP echo request from the client to dst with IP options of optLen
// bytes (NOPs) and a payload of n bytes.
func (c *echoClient) echoRequest(t testing.TB, dst netip.Addr, optLen, n int) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, TOS: 0x10, Id: 0x1234, Flags: layers.IPv4DontFragment, Protocol: layers.IPProtocolICMPv4,
		SrcIP: c.peer.Identity().Addr.AsSlice(), DstIP: dst.AsSlice()}
	for range optLen {
		ip.Options = append(ip.Options, layers.IPv4Option{OptionType: 1}) // NOP
	}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 0x4242, Seq: 7}
	payload := make([]byte, n)
	for i := range payload {
		payload[i] = byte(i*7 + 1)
	}
	return serialize(t, ip, icmp, gopacket.Payload(payload))
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// send frames, seals and feeds one IP packet from the client into the plane, as its UDP
// listener would.
func (c *echoClient) send(ip []byte) {
	c.pid++
	op, hdr := packet.DataV2, datacrypto.HeaderV2
	if c.v1 {
		op, hdr = packet.DataV1, datacrypto.HeaderV1
	}
	id := c.peer.Identity()
	off := 64
	copy(c.buf[off:], ip)
	off, n := id.Framing.add(c.buf, off, len(ip))
	pkt := c.buf[off-hdr-datacrypto.Overhead : off+n]
	packet.PutDataHeader(pkt, op, 0, id.PeerID)
	pkt = c.keys.Seal(pkt, hdr, c.pid)
	c.f.s.tunBatch = c.f.s.tunBatch[:0]
	c.f.s.receiveData(pkt, c.peer.link.Remote(), netip.Addr{})
}

// receive reads what the plane sent the client within wait and opens it: the IP packet, or
// nil when nothing came.
func (c *echoClient) receive(t testing.TB, wait time.Duration) []byte {
	t.Helper()
	b := make([]byte, 4096)
	_ = c.conn.SetReadDeadline(time.Now().Add(wait))
	n, err := c.conn.Read(b)
	if err != nil {
		return nil
	}
	op, _ := packet.SplitHeader(b[0])
	hdr := datacrypto.HeaderV1
	if op == packet.DataV2 {
		hdr = datacrypto.HeaderV2
	}
	if want := c.peer.Identity().DataV2; (op == packet.DataV2) != want {
		t.Errorf("reply sent as %v to a client with DataV2 %v", op, want)
	}
	_, pt, err := c.keys.Open(b[:n], hdr)
	if err != nil {
		t.Fatalf("reply does not open: %v", err)
	}
	pt, ok := c.peer.Identity().Framing.strip(pt)
	if !ok {
		t.Fatalf("reply framing is not %v", c.peer.Identity().Framing)
	}
	return bytes.Clone(pt)
}

// checkEchoReply checks reply answers request, with checksums that gopacket computes the same.
func checkEchoReply(t *testing.T, reply, request []byte, client netip.Addr) {
	t.Helper()
	rp := gopacket.NewPacket(reply, layers.LayerTypeIPv4, gopacket.Default)
	ip, _ := rp.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	icmp, _ := rp.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ip == nil || icmp == nil || rp.ErrorLayer() != nil {
		t.Fatalf("reply does not decode as IPv4/ICMPv4: %v\n%x", rp.ErrorLayer(), reply)
	}
	qp := gopacket.NewPacket(request, layers.LayerTypeIPv4, gopacket.Default)
	qicmp := qp.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if src, _ := netip.AddrFromSlice(ip.SrcIP); src != gateway {
		t.Errorf("reply from %s, want the gateway %s", ip.SrcIP, gateway)
	}
	if dst, _ := netip.AddrFromSlice(ip.DstIP); dst != client {
		t.Errorf("reply to %s, want the client %s", ip.DstIP, client)
	}
	if ip.IHL != 5 || len(ip.Options) != 0 || ip.TTL != 64 || ip.Protocol != layers.IPProtocolICMPv4 || int(ip.Length) != len(reply) || ip.Flags&layers.IPv4MoreFragments != 0 || ip.FragOffset != 0 {
		t.Errorf("reply IP header: IHL %d options %d TTL %d protocol %v length %d (of %d) flags %v offset %d",
			ip.IHL, len(ip.Options), ip.TTL, ip.Protocol, ip.Length, len(reply), ip.Flags, ip.FragOffset)
	}
	if icmp.TypeCode != layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoReply, 0) || icmp.Id != qicmp.Id || icmp.Seq != qicmp.Seq {
		t.Errorf("reply ICMP %v id %#x seq %d, want an echo reply with id %#x seq %d", icmp.TypeCode, icmp.Id, icmp.Seq, qicmp.Id, qicmp.Seq)
	}
	if !bytes.Equal(icmp.Payload, qicmp.Payload) {
		t.Errorf("reply payload differs from the request's (%d bytes, want %d)", len(icmp.Payload), len(qicmp.Payload))
	}
	// gopacket recomputes both checksums from the decoded fields; they must be the ones sent.
	wantIP, wantICMP := ip.Checksum, icmp.Checksum
	again := gopacket.NewPacket(serialize(t, ip, icmp, gopacket.Payload(icmp.Payload)), layers.LayerTypeIPv4, gopacket.Default)
	if got := again.Layer(layers.LayerTypeIPv4).(*layers.IPv4).Checksum; got != wantIP {
		t.Errorf("IP header checksum %#04x, gopacket computes %#04x", wantIP, got)
	}
	if got := again.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4).Checksum; got != wantICMP {
		t.Errorf("ICMP checksum %#04x, gopacket computes %#04x", wantICMP, got)
	}
}

// TestGatewayAnswersPing: an echo request to the gateway address is answered by the plane
// itself, sealed back to the client that sent it, over P_DATA_V1 or V2, with any framing, with
// or without IP options in the request, in place or (a V1 sender answered with V2) copied.
func TestGatewayAnswersPing(t *testing.T) {
	for _, tc := range []struct {
		name           string
		dataV2, sendV1 bool
		framing        Framing
		opts, size     int
	}{
		{name: "v2", dataV2: true, size: 56},
		{name: "v2 large", dataV2: true, size: 1372},
		{name: "v2 odd size", dataV2: true, size: 57},
		{name: "v2 empty", dataV2: true, size: 0},
		{name: "v2 IP options", dataV2: true, opts: 4, size: 56},
		{name: "v1", sendV1: true, size: 56},
		{name: "v1 sender answered with v2", dataV2: true, sendV1: true, size: 56},
		{name: "comp-lzo", dataV2: true, framing: frameLZO, size: 56},
		{name: "compress stub", dataV2: true, framing: frameStub, size: 100},
		{name: "compress stub-v2", dataV2: true, framing: frameStubV2, size: 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newPathFixture(t, 0)
			f.p.SetPolicy(f.p.Policy().WithHost(testHost))
			c := newEchoClient(t, f, tc.dataV2, tc.sendV1, tc.framing)
			req := c.echoRequest(t, gateway, tc.opts, tc.size)
			c.send(bytes.Clone(req))
			if len(f.s.tunBatch) != 0 {
				t.Fatal("the ping of the gateway went to the TUN")
			}
			reply := c.receive(t, 2*time.Second)
			if reply == nil {
				t.Fatalf("no reply; drops %v", f.p.drops.Snapshot())
			}
			checkEchoReply(t, reply, req, c.peer.Identity().Addr)
			if s := c.peer.Traffic.Snapshot(); s.TxPackets != 1 {
				t.Errorf("sent %d packets to the client, want 1", s.TxPackets)
			}
			if s := f.p.drops.Snapshot(); len(s) != 0 {
				t.Errorf("drops %v", s)
			}
		})
	}
}

// TestGatewayAnswersOnlyPing: everything else to the gateway address is dropped as a host
// destination, a corrupt request as malformed; none is answered or forwarded.
func TestGatewayAnswersOnlyPing(t *testing.T) {
	f := newPathFixture(t, 0)
	f.p.SetPolicy(withHostAccess(f.p.Policy(), true)) // not even allow_host_access opens it
	c := newEchoClient(t, f, true, false, frameNone)
	udp := make([]byte, 64)
	udpPacket(udp, 0, c.peer.Identity().Addr, gateway, 8)
	reply := c.echoRequest(t, gateway, 0, 8)
	reply[20] = 0 // an echo reply, not a request
	reply[22], reply[23] = 0, 0
	sum := ^ippkt.Fold(ippkt.Sum(reply[20:], 0))
	reply[22], reply[23] = byte(sum>>8), byte(sum)
	fragment := c.echoRequest(t, gateway, 0, 8)
	fragment[6] |= 0x20 // more fragments
	fragment[10], fragment[11] = 0, 0
	sum = ^ippkt.Fold(ippkt.Sum(fragment[:20], 0))
	fragment[10], fragment[11] = byte(sum>>8), byte(sum)
	corrupt := c.echoRequest(t, gateway, 0, 8)
	corrupt[len(corrupt)-1] ^= 0xff
	for _, tc := range []struct {
		name   string
		pkt    []byte
		reason counters.Reason
	}{
		{"UDP", udp[:36], counters.HostAddress},
		{"echo reply", reply, counters.HostAddress},
		{"fragment", fragment, counters.HostAddress},
		{"bad ICMP checksum", corrupt, counters.Malformed},
	} {
		before := f.p.drops.Count(tc.reason)
		c.send(tc.pkt)
		if len(f.s.tunBatch) != 0 {
			t.Errorf("%s to the gateway went to the TUN", tc.name)
		}
		if got := c.receive(t, 50*time.Millisecond); got != nil {
			t.Errorf("%s to the gateway answered: %x", tc.name, got)
		}
		if f.p.drops.Count(tc.reason) != before+1 {
			t.Errorf("%s to the gateway not counted as %v: %v", tc.name, tc.reason, f.p.drops.Snapshot())
		}
	}
}

// TestGatewayPingBandwidthLimit: pings of the gateway are charged to the client's upload
// bucket; beyond its burst they are dropped, not answered.
func TestGatewayPingBandwidthLimit(t *testing.T) {
	f := newPathFixture(t, 1)
	c := newEchoClient(t, f, true, false, frameNone)
	req := c.echoRequest(t, gateway, 0, 1372)
	for range 100 {
		c.send(bytes.Clone(req))
	}
	answered := 0
	for c.receive(t, 200*time.Millisecond) != nil {
		answered++
	}
	// Burst: max(16 KiB, 1 Mbit/s * 300 ms) = 37500 bytes, i.e. 26 requests of 1400 bytes; the
	// bucket refills on the real clock (about 9 requests per 100 ms) while a loaded machine
	// sends the hundred, so allow some more.
	if answered < 25 || answered > 45 || f.p.drops.Count(counters.RateLimit) < 55 {
		t.Fatalf("%d of 100 back-to-back pings answered under a 1 Mbit/s limit; drops %v", answered, f.p.drops.Snapshot())
	}
}

// TestHostPathNoAllocs: with the host's addresses known, a forwarded packet, a packet to the
// host and an answered ping of the gateway allocate nothing.
func TestHostPathNoAllocs(t *testing.T) {
	f := newPathFixture(t, 0)
	f.p.SetPolicy(f.p.Policy().WithHost(testHost))
	l := f.s
	buf := make([]byte, 2048)
	from := f.peer.link.Remote()
	pid := uint32(0)
	for _, tc := range []struct {
		dst     netip.Addr
		tun     int
		counter counters.Reason
	}{
		{f.vpc, 1, counters.NumReasons},
		{hostVPC, 0, counters.HostAddress},
	} {
		before := f.p.drops.Snapshot()
		allocs := testing.AllocsPerRun(1000, func() {
			pid++
			pkt := f.sealFromClient(buf, pid, tc.dst)
			l.tunBatch = l.tunBatch[:0]
			l.receiveData(pkt, from, netip.Addr{})
			if len(l.tunBatch) != tc.tun {
				t.Fatalf("to %s: %d packets for the TUN, want %d; drops %v", tc.dst, len(l.tunBatch), tc.tun, f.p.drops.Snapshot())
			}
		})
		if allocs != 0 {
			t.Errorf("to %s: %v allocations per packet", tc.dst, allocs)
		}
		if tc.counter != counters.NumReasons && f.p.drops.Count(tc.counter) < before[tc.counter.String()]+1000 {
			t.Errorf("to %s: %v not counted: %v", tc.dst, tc.counter, f.p.drops.Snapshot())
		}
	}

	c := newEchoClient(t, f, true, false, frameNone)
	req := c.echoRequest(t, gateway, 0, 56)
	ip := make([]byte, len(req))
	allocs := testing.AllocsPerRun(200, func() {
		copy(ip, req)
		c.send(ip)
	})
	if allocs != 0 {
		t.Errorf("answering a ping of the gateway: %v allocations per packet", allocs)
	}
	if s := c.peer.Traffic.Snapshot(); s.TxPackets != 201 { // AllocsPerRun runs once more to warm up
		t.Errorf("%d replies sealed for 201 pings; drops %v", s.TxPackets, f.p.drops.Snapshot())
	}
	if reply := c.receive(t, 2*time.Second); reply == nil {
		t.Error("no reply arrived")
	} else {
		checkEchoReply(t, reply, req, c.peer.Identity().Addr)
	}
}
