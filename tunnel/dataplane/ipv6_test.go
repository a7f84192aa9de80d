package dataplane

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/ippkt"
	"github.com/cvpn/cvpn/tunnel/sock"
)

// The dual-stack fixture: clients get 10.2.0.x and fd00:10:1::1:x (the IPv6 block inside the
// VPC's /64, routed), group dev reaches the VPC in both families, group ops only fd00:10:2::/64
// (an IPv6-only rule), nobody else anything.
var (
	vpc6      = netip.MustParseAddr("fd00:10:1::10")
	ops6      = netip.MustParseAddr("fd00:10:2::10")
	snat6     = netip.MustParseAddr("fd00:10:1::2")
	gateway6  = netip.MustParseAddr("fd00:10:1::1:1")
	hostVPC6  = netip.MustParseAddr("fd00:10:1::1")
	client6re = netip.MustParsePrefix("fd00:10:1::1:0/112")
)

// dualFixture is a data plane serving both families, with a TUN the test reads and writes.
type dualFixture struct {
	*pathFixture
	tun *tuntest.ChannelTUN
}

func newDualFixture(t testing.TB, nat6 bool, mbps float64) *dualFixture {
	t.Helper()
	pool, err := ippool.NewDual(netip.MustParsePrefix("10.2.0.0/22"), client6re)
	if err != nil {
		t.Fatal(err)
	}
	nc := nat.Config{Addr: netip.MustParseAddr("10.0.1.2")}
	if nat6 {
		nc.Addr6 = snat6
	}
	natTable, err := nat.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	az, err := authz.New([]authz.Rule{
		{Network: netip.MustParsePrefix("10.0.0.0/16"), Group: "dev"},
		{Network: netip.MustParsePrefix("fd00:10:1::/64"), Group: "dev"},
		{Network: netip.MustParsePrefix("fd00:10:2::/64"), Group: "ops"},
	})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := NewPolicy(Policy{Authz: az, SplitTunnel: true, Bandwidth: mbps * 1e6,
		Routes: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("fd00:10:1::/64"), netip.MustParsePrefix("fd00:10:2::/64")},
		Host:   []netip.Prefix{netip.PrefixFrom(hostVPC6, 128), netip.MustParsePrefix("ff00::/8")}})
	if err != nil {
		t.Fatal(err)
	}
	tun := tuntest.NewChannelTUN()
	p, err := New(Config{Pool: pool, NAT: natTable, NAT6: nat6, Device: tun.TUN(), Policy: pol, Control: nopControl{}, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	l, err := p.ListenUDP(sock.Host, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan struct{})
	go func() { defer close(ran); p.Run() }()
	t.Cleanup(func() { p.Close(); _ = tun.TUN().Close(); <-ran; p.Wait() })
	return &dualFixture{pathFixture: &pathFixture{p: p, l: l, s: l.shards[0], vpc: vpc6}, tun: tun}
}

// client adds a client of group with a lease of both families, reachable over a UDP socket of
// its own.
func (f *dualFixture) client(t testing.TB, user, group string) *echoClient {
	t.Helper()
	lease, err := f.p.cfg.Pool.AllocateLease()
	if err != nil {
		t.Fatal(err)
	}
	return newClientWith(t, f.pathFixture, Identity{Addr: lease.Addr, Addr6: lease.Addr6, PeerID: uint32(lease.Index),
		User: user, Groups: []string{group}, DataV2: true, Cipher: datacrypto.AES256GCM}, false)
}

// udp6 is an IPv6/UDP packet with a payload of n bytes.
func udp6(t testing.TB, src, dst netip.Addr, n int) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	u := &layers.UDP{SrcPort: 40000, DstPort: 53}
	_ = u.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, u, gopacket.Payload(make([]byte, n)))
}

// sent is what the client's packet became on the TUN (nil: dropped).
func (c *echoClient) sent(ip []byte) []byte {
	c.send(ip)
	if len(c.f.s.tunBatch) != 1 {
		return nil
	}
	return c.f.s.tunBatch[0][tunWriteOffset:]
}

// TestIPv6Uplink: a client's IPv6 goes out with its own address (routed), through the same
// checks as IPv4, each refusal counted under its reason.
func TestIPv6Uplink(t *testing.T) {
	f := newDualFixture(t, false, 0)
	dev, ops := f.client(t, "dave", "dev"), f.client(t, "olga", "ops")
	me := dev.peer.Identity().Addr6
	if !client6re.Contains(me) {
		t.Fatalf("client address %s not from the block", me)
	}
	pkt := udp6(t, me, vpc6, 100)
	got := dev.sent(pkt)
	if !bytes.Equal(got, pkt) {
		t.Fatalf("routed IPv6 changed or dropped: %x, drops %v", got, f.p.drops.Snapshot())
	}
	for _, tc := range []struct {
		name   string
		c      *echoClient
		pkt    []byte
		reason string
	}{
		{"another client's source", dev, udp6(t, ops.peer.Identity().Addr6, vpc6, 10), "spoofed_source"},
		{"router solicitation", dev, udp6(t, netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::2"), 8), "local_scope"},
		{"link-local destination", dev, udp6(t, me, netip.MustParseAddr("fe80::99"), 8), "local_scope"},
		{"dev to the ops network", dev, udp6(t, me, ops6, 10), "unauthorized"},
		{"ops to the VPC", ops, udp6(t, ops.peer.Identity().Addr6, vpc6, 10), "unauthorized"},
		{"no route", dev, udp6(t, me, netip.MustParseAddr("fd99::1"), 10), "no_route"},
		{"the endpoint host", dev, udp6(t, me, hostVPC6, 10), "host_address"},
		{"client to client (no local route)", dev, udp6(t, me, ops.peer.Identity().Addr6, 10), "no_route"},
		{"truncated", dev, udp6(t, me, vpc6, 10)[:39], "ip_truncated"},
		{"routing header", dev, routingHeader(t, me, vpc6), "ip_routing_header"},
	} {
		before := f.p.drops.Snapshot()[tc.reason]
		if tc.c.sent(tc.pkt) != nil {
			t.Errorf("%s: forwarded", tc.name)
		}
		if after := f.p.drops.Snapshot()[tc.reason]; after != before+1 {
			t.Errorf("%s: %s counted %d -> %d; drops %v", tc.name, tc.reason, before, after, f.p.drops.Snapshot())
		}
	}
	// The IPv6-only rule grants its group alone.
	if ops.sent(udp6(t, ops.peer.Identity().Addr6, ops6, 10)) == nil {
		t.Errorf("ops to its IPv6-only network dropped: %v", f.p.drops.Snapshot())
	}
}

// routingHeader is an IPv6 packet with a Routing header (type 4) that still has segments left.
func routingHeader(t testing.TB, src, dst netip.Addr) []byte {
	pkt := udp6(t, src, dst, 8)
	rh := []byte{17, 2, 4, 1, 0, 0, 0, 0} // next UDP, 2*8 more bytes, SRH, segments left 1
	rh = append(rh, make([]byte, 16)...)
	out := append(append(bytes.Clone(pkt[:40]), rh...), pkt[40:]...)
	out[6] = 43 // Routing
	pl := len(out) - 40
	out[4], out[5] = byte(pl>>8), byte(pl)
	return out
}

// TestIPv6OnAnIPv4Session: a session without an IPv6 address (an IPv4-only tunnel) has its IPv6
// counted as family_off, router solicitations included.
func TestIPv6OnAnIPv4Session(t *testing.T) {
	f := newPathFixture(t, 0)
	c := newEchoClient(t, f, true, false, frameNone)
	for _, pkt := range [][]byte{
		udp6(t, netip.MustParseAddr("fd00::2"), vpc6, 10),
		udp6(t, netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::2"), 8),
	} {
		before := f.p.drops.Snapshot()["family_off"]
		if c.sent(pkt) != nil || f.p.drops.Snapshot()["family_off"] != before+1 {
			t.Errorf("IPv6 on an IPv4 tunnel: drops %v", f.p.drops.Snapshot())
		}
	}
}

// TestIPv6NAT: with snat_ipv6_address, the client's IPv6 leaves from the SNAT address, and
// the reply finds the client.
func TestIPv6NAT(t *testing.T) {
	f := newDualFixture(t, true, 0)
	c := f.client(t, "dave", "dev")
	got := c.sent(udp6(t, c.peer.Identity().Addr6, vpc6, 100))
	if got == nil {
		t.Fatalf("dropped: %v", f.p.drops.Snapshot())
	}
	if src := netip.AddrFrom16([16]byte(got[8:24])); src != snat6 {
		t.Fatalf("source %s, want the SNAT address %s", src, snat6)
	}
	checkUDP6(t, got)
	// The VPC host answers the translated flow.
	reply := bytes.Clone(got)
	copy(reply[8:24], got[24:40])
	copy(reply[24:40], got[8:24])
	reply[40], reply[41], reply[42], reply[43] = got[42], got[43], got[40], got[41]
	fixUDP6(t, reply)
	f.tun.Outbound <- reply
	back := c.receive(t, 2*time.Second)
	if back == nil {
		t.Fatalf("reply not delivered: %v", f.p.drops.Snapshot())
	}
	if dst := netip.AddrFrom16([16]byte(back[24:40])); dst != c.peer.Identity().Addr6 {
		t.Fatalf("reply to %s, want the client %s", dst, c.peer.Identity().Addr6)
	}
	checkUDP6(t, back)
}

// checkUDP6 verifies an IPv6/UDP packet's checksum as gopacket computes it.
func checkUDP6(t *testing.T, pkt []byte) {
	t.Helper()
	p := gopacket.NewPacket(pkt, layers.LayerTypeIPv6, gopacket.Default)
	u, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if u == nil {
		t.Fatalf("not IPv6/UDP: %x", pkt)
	}
	want := u.Checksum
	fixUDP6(t, pkt)
	if got := gopacket.NewPacket(pkt, layers.LayerTypeIPv6, gopacket.Default).Layer(layers.LayerTypeUDP).(*layers.UDP).Checksum; got != want {
		t.Errorf("UDP checksum %#04x, want %#04x", want, got)
	}
}

// fixUDP6 recomputes an IPv6/UDP packet's checksum in place.
func fixUDP6(t *testing.T, pkt []byte) {
	info, r := ippkt.Parse(pkt)
	if r != ippkt.OK {
		t.Fatalf("parse: %v", r)
	}
	u := pkt[info.Transport:info.End]
	u[6], u[7] = 0, 0
	sum := ippkt.Checksum(u, ippkt.PseudoSum(&info))
	if sum == 0 {
		sum = 0xffff
	}
	u[6], u[7] = byte(sum>>8), byte(sum)
}

// TestIPv6Downlink: routed IPv6 from the private network reaches the client only from where
// its groups may go; an ICMPv6 error about the client's own packet (a router's Packet Too Big)
// reaches it whatever the router's address; link-scope traffic out of the TUN reaches no one.
func TestIPv6Downlink(t *testing.T) {
	f := newDualFixture(t, false, 0)
	c := f.client(t, "dave", "dev")
	me := c.peer.Identity().Addr6
	deliver := func(pkt []byte) []byte {
		f.tun.Outbound <- pkt
		return c.receive(t, 300*time.Millisecond)
	}
	in := udp6(t, vpc6, me, 200)
	if got := deliver(in); !bytes.Equal(got, in) {
		t.Fatalf("from the VPC: got %x; drops %v", got, f.p.drops.Snapshot())
	}
	if got := deliver(udp6(t, ops6, me, 20)); got != nil || f.p.drops.Snapshot()["unauthorized"] != 1 {
		t.Fatalf("from a network the client may not reach: got %x; drops %v", got, f.p.drops.Snapshot())
	}
	if got := deliver(udp6(t, hostVPC6, me, 20)); got != nil || f.p.drops.Snapshot()["unauthorized"] != 2 {
		t.Fatalf("from the endpoint host: got %x; drops %v", got, f.p.drops.Snapshot())
	}
	// Packet Too Big from a router outside every rule, about the client's packet to the VPC.
	big := udp6(t, me, vpc6, 1400)
	ptb, r := ippkt.PacketTooBig(make([]byte, ippkt.PacketTooBigLen), big, ptrInfo(t, big), netip.MustParseAddr("fd00:99::1"), 1280)
	if r != ippkt.OK {
		t.Fatal(r)
	}
	if got := deliver(bytes.Clone(ptb)); got == nil || got[40] != 2 {
		t.Fatalf("Packet Too Big not delivered: %x; drops %v", got, f.p.drops.Snapshot())
	}
	// The same about a packet the client did not send is refused.
	other := udp6(t, netip.MustParseAddr("fd00:10:1::1:99"), vpc6, 1400)
	ptb, _ = ippkt.PacketTooBig(make([]byte, ippkt.PacketTooBigLen), other, ptrInfo(t, other), netip.MustParseAddr("fd00:99::1"), 1280)
	if got := deliver(bytes.Clone(ptb)); got != nil {
		t.Fatalf("an error about another host's packet delivered")
	}
	before := f.p.drops.Snapshot()["local_scope"]
	if got := deliver(udp6(t, netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::16"), 20)); got != nil ||
		f.p.drops.Snapshot()["local_scope"] != before+1 {
		t.Fatalf("MLD out of the TUN: drops %v", f.p.drops.Snapshot())
	}
}

func ptrInfo(t *testing.T, pkt []byte) *ippkt.Info {
	info, r := ippkt.Parse(pkt)
	if r != ippkt.OK {
		t.Fatal(r)
	}
	return &info
}

// TestIPv6GatewayPing: the IPv6 gateway answers ping as the IPv4 one does.
func TestIPv6GatewayPing(t *testing.T) {
	f := newDualFixture(t, false, 0)
	c := f.client(t, "dave", "dev")
	me := c.peer.Identity().Addr6
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: me.AsSlice(), DstIP: gateway6.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeEchoRequest, 0)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	echo := &layers.ICMPv6Echo{Identifier: 0x4242, SeqNumber: 7}
	c.send(serialize(t, ip, icmp, echo, gopacket.Payload([]byte("ping"))))
	reply := c.receive(t, 2*time.Second)
	if reply == nil {
		t.Fatalf("no reply; drops %v", f.p.drops.Snapshot())
	}
	p := gopacket.NewPacket(reply, layers.LayerTypeIPv6, gopacket.Default)
	rip, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	ricmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	if rip == nil || ricmp == nil || !net.IP(rip.SrcIP).Equal(gateway6.AsSlice()) || !net.IP(rip.DstIP).Equal(me.AsSlice()) ||
		ricmp.TypeCode.Type() != layers.ICMPv6TypeEchoReply {
		t.Fatalf("reply %v", p)
	}
}

// TestIPv6SharesTheBucket: both families of a connection drain one bandwidth bucket.
func TestIPv6SharesTheBucket(t *testing.T) {
	f := newDualFixture(t, false, 1)
	c := f.client(t, "dave", "dev")
	passed := 0
	for i := range 100 {
		var pkt []byte
		if i%2 == 0 {
			pkt = udp6(t, c.peer.Identity().Addr6, vpc6, 1352)
		} else {
			pkt = make([]byte, 1400)
			udpPacket(pkt, 0, c.peer.Identity().Addr, netip.MustParseAddr("10.0.1.10"), 1372)
		}
		if c.sent(pkt) != nil {
			passed++
		}
	}
	// The 1 Mbit/s burst (37500 bytes) holds 26 packets of 1400 bytes, whatever their family.
	if passed < 25 || passed > 28 {
		t.Fatalf("%d of 100 mixed packets passed a 1 Mbit/s limit; drops %v", passed, f.p.drops.Snapshot())
	}
}

// TestIPv6MSS: a client's IPv6 SYN is clamped 20 bytes lower than an IPv4 one.
func TestIPv6MSS(t *testing.T) {
	f := newDualFixture(t, false, 0)
	f.p.mss = 1400
	c := f.client(t, "dave", "dev")
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: c.peer.Identity().Addr6.AsSlice(), DstIP: vpc6.AsSlice()}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true, Window: 64240, Options: []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xa0}}}} // 1440
	_ = tcp.SetNetworkLayerForChecksum(ip)
	got := c.sent(serialize(t, ip, tcp))
	if got == nil {
		t.Fatalf("dropped: %v", f.p.drops.Snapshot())
	}
	p := gopacket.NewPacket(got, layers.LayerTypeIPv6, gopacket.Default)
	out := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if mss := int(out.Options[0].OptionData[0])<<8 | int(out.Options[0].OptionData[1]); mss != 1380 {
		t.Fatalf("MSS %d, want 1380", mss)
	}
	want := out.Checksum
	_ = out.SetNetworkLayerForChecksum(p.Layer(layers.LayerTypeIPv6).(*layers.IPv6))
	again := gopacket.NewPacket(serialize(t, p.Layer(layers.LayerTypeIPv6).(*layers.IPv6), out), layers.LayerTypeIPv6, gopacket.Default)
	if got := again.Layer(layers.LayerTypeTCP).(*layers.TCP).Checksum; got != want {
		t.Errorf("TCP checksum %#04x, gopacket computes %#04x", want, got)
	}
}

// TestIPv6PathNoAllocs: the IPv6 receive path allocates nothing, routed or NATed.
func TestIPv6PathNoAllocs(t *testing.T) {
	for _, nat6 := range []bool{false, true} {
		f := newDualFixture(t, nat6, 0)
		c := f.client(t, "dave", "dev")
		pkt := udp6(t, c.peer.Identity().Addr6, vpc6, 1000)
		allocs := testing.AllocsPerRun(1000, func() {
			if c.sent(pkt) == nil {
				t.Fatalf("dropped: %v", f.p.drops.Snapshot())
			}
		})
		if allocs != 0 {
			t.Errorf("NAT66 %v: %v allocations per packet", nat6, allocs)
		}
	}
}

// FuzzClientPacket feeds whatever a client could put in the tunnel, of either family, through
// the receive path of a dual-stack plane (IPv6 routed): what comes out on the TUN parses, is
// from the client's own address (IPv4 after NAT: the SNAT address), and goes where its group
// may go; what does not is counted under some reason, unless it was for the gateway (answered
// or counted) or a keepalive.
func FuzzClientPacket(f *testing.F) {
	d := newDualFixture(f, false, 0)
	c := d.client(f, "dave", "dev")
	me4, me6 := c.peer.Identity().Addr, c.peer.Identity().Addr6
	v4 := make([]byte, 128)
	f.Add(udpPacket(v4, 0, me4, netip.MustParseAddr("10.0.1.10"), 100))
	f.Add(udp6(f, me6, vpc6, 20))
	f.Add(udp6(f, me6, ops6, 20))
	f.Add(routingHeader(f, me6, vpc6))
	f.Add(udp6(f, netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::2"), 8))
	hbh := udp6(f, me6, vpc6, 8)
	hbh = append(append(bytes.Clone(hbh[:40]), 17, 0, 1, 4, 0, 0, 0, 0), hbh[40:]...) // Hop-by-Hop, PadN
	hbh[6], hbh[5] = 0, hbh[5]+8
	f.Add(hbh)
	f.Fuzz(func(t *testing.T, ip []byte) {
		if len(ip) > 1500 {
			return
		}
		before := total(d.p.drops.Snapshot())
		out := c.sent(bytes.Clone(ip))
		if out == nil {
			info, r := ippkt.Parse(ip)
			toGateway := r == ippkt.OK && (info.Dst == gateway || info.Dst == gateway6)
			magic := bytes.Equal(ip, packet.PingMagic) || bytes.HasPrefix(ip, packet.OCCMagic)
			if total(d.p.drops.Snapshot()) == before && !toGateway && !magic {
				t.Fatalf("dropped without a count: %x", ip)
			}
			return
		}
		info, r := ippkt.Parse(out)
		if r != ippkt.OK {
			t.Fatalf("forwarded what does not parse (%v): %x", r, out)
		}
		switch info.Version {
		case 4:
			if info.Src != netip.MustParseAddr("10.0.1.2") || !netip.MustParsePrefix("10.0.1.0/24").Contains(info.Dst) {
				t.Fatalf("forwarded IPv4 %s -> %s", info.Src, info.Dst)
			}
		case 6:
			if info.Src != me6 || !netip.MustParsePrefix("fd00:10:1::/64").Contains(info.Dst) || info.Dst == hostVPC6 || client6re.Contains(info.Dst) {
				t.Fatalf("forwarded IPv6 %s -> %s", info.Src, info.Dst)
			}
		}
	})
}

func total(m map[string]uint64) (n uint64) {
	for _, v := range m {
		n += v
	}
	return n
}
