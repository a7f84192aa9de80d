package nat

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

var (
	snatAddr = netip.MustParseAddr("10.0.1.2")
	clientA  = netip.MustParseAddr("10.2.0.5")
	clientB  = netip.MustParseAddr("10.2.0.6")
	server   = netip.MustParseAddr("10.0.5.10")
	router   = netip.MustParseAddr("10.0.0.1")
)

// fakeClock is an injected clock the tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Unix(1700000000, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func newTable(t testing.TB, cfg Config) (*Table, *fakeClock) {
	t.Helper()
	clk := &fakeClock{}
	if !cfg.Addr.IsValid() {
		cfg.Addr = snatAddr
	}
	cfg.Now = clk.Now
	tab, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tab, clk
}

func ip(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func ipv4Layer(src, dst netip.Addr, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: 0x1234, Protocol: proto, SrcIP: ip(src), DstIP: ip(dst)}
}

func tcpPacket(t testing.TB, src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags string) []byte {
	t.Helper()
	ipl := ipv4Layer(src, dst, layers.IPProtocolTCP)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1000, Ack: 2000, Window: 65535}
	for _, f := range flags {
		switch f {
		case 'S':
			tcp.SYN = true
		case 'A':
			tcp.ACK = true
		case 'F':
			tcp.FIN = true
		case 'R':
			tcp.RST = true
		case 'P':
			tcp.PSH = true
		}
	}
	tcp.SetNetworkLayerForChecksum(ipl)
	return serialize(t, ipl, tcp, gopacket.Payload("hello tcp payload"))
}

func udpPacket(t testing.TB, src netip.Addr, sport uint16, dst netip.Addr, dport uint16, payload string) []byte {
	t.Helper()
	ipl := ipv4Layer(src, dst, layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ipl)
	return serialize(t, ipl, udp, gopacket.Payload(payload))
}

func icmpEcho(t testing.TB, src, dst netip.Addr, typ uint8, id, seq uint16) []byte {
	t.Helper()
	return serialize(t, ipv4Layer(src, dst, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: id, Seq: seq},
		gopacket.Payload("ping payload 0123456789"))
}

// icmpError builds an ICMP error from src to dst quoting the packet quoted.
func icmpError(t testing.TB, src, dst netip.Addr, typ, code uint8, quoted []byte) []byte {
	t.Helper()
	return serialize(t, ipv4Layer(src, dst, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code), Seq: 1400},
		gopacket.Payload(quoted))
}

func onesSum(b []byte, sum uint32) uint32 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

func folded(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// ipHeaderOK verifies the IPv4 header checksum of the header at p.
func ipHeaderOK(p []byte) bool {
	hl := int(p[0]&0x0f) * 4
	return folded(onesSum(p[:hl], 0)) == 0xffff
}

// transportOK verifies the TCP, UDP or ICMP checksum of a complete,
// unfragmented packet p; a UDP checksum of zero passes.
func transportOK(p []byte) bool {
	hl := int(p[0]&0x0f) * 4
	end := int(binary.BigEndian.Uint16(p[2:]))
	l4 := p[hl:end]
	switch p[9] {
	case protoICMP:
		return folded(onesSum(l4, 0)) == 0xffff
	case protoUDP:
		if binary.BigEndian.Uint16(l4[6:]) == 0 {
			return true
		}
	}
	sum := onesSum(p[12:20], uint32(p[9])+uint32(len(l4)))
	return folded(onesSum(l4, sum)) == 0xffff
}

// checkSums fails t unless p's IPv4 and transport checksums verify.
func checkSums(t testing.TB, what string, p []byte) {
	t.Helper()
	if !ipHeaderOK(p) {
		t.Errorf("%s: IPv4 header checksum invalid", what)
	}
	if !transportOK(p) {
		t.Errorf("%s: transport checksum invalid", what)
	}
}

// decode parses p with gopacket, failing t on any decoding error.
func decode(t testing.TB, p []byte) gopacket.Packet {
	t.Helper()
	pkt := gopacket.NewPacket(p, layers.LayerTypeIPv4, gopacket.Default)
	// An error decoding the application payload (gopacket guesses DNS on
	// port 53) does not matter; one in IPv4, TCP, UDP or ICMP does.
	if el := pkt.ErrorLayer(); el != nil && pkt.TransportLayer() == nil && pkt.Layer(layers.LayerTypeICMPv4) == nil {
		t.Fatalf("gopacket cannot decode: %v", el.Error())
	}
	return pkt
}

func ipAddr(b net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap()
}

// TestHelpersAgreeWithGopacket checks the test's checksum verifier accepts
// what gopacket computes and rejects a flipped bit.
func TestHelpersAgreeWithGopacket(t *testing.T) {
	for _, p := range [][]byte{
		tcpPacket(t, clientA, 40000, server, 443, "SA"),
		udpPacket(t, clientA, 40000, server, 53, "odd"),
		icmpEcho(t, clientA, server, 8, 7, 1),
	} {
		checkSums(t, "fresh packet", p)
		p[len(p)-1] ^= 1
		if transportOK(p) {
			t.Error("verifier accepts a corrupted payload")
		}
	}
}
