package nat

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// The IPv6 twins of the addresses in helpers_test.go.
var (
	snat6    = netip.MustParseAddr("2001:db8:ff::2")
	client6A = netip.MustParseAddr("2001:db8:2::5")
	client6B = netip.MustParseAddr("2001:db8:2::6")
	server6  = netip.MustParseAddr("2001:db8:5::10")
	router6  = netip.MustParseAddr("2001:db8::1")
)

// newTable6 returns a table translating both families.
func newTable6(t testing.TB, cfg Config) (*Table, *fakeClock) {
	t.Helper()
	if !cfg.Addr6.IsValid() {
		cfg.Addr6 = snat6
	}
	return newTable(t, cfg)
}

func ipv6Layer(src, dst netip.Addr, proto layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, TrafficClass: 0x20, FlowLabel: 0x12345, HopLimit: 64, NextHeader: proto, SrcIP: ip(src), DstIP: ip(dst)}
}

func tcp6Packet(t testing.TB, src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags string) []byte {
	t.Helper()
	ipl := ipv6Layer(src, dst, layers.IPProtocolTCP)
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

func udp6Packet(t testing.TB, src netip.Addr, sport uint16, dst netip.Addr, dport uint16, payload string) []byte {
	t.Helper()
	ipl := ipv6Layer(src, dst, layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ipl)
	return fixUDPZero6(serialize(t, ipl, udp, gopacket.Payload(payload)))
}

// fixUDPZero6 writes a UDP checksum of p that gopacket computed as zero as
// all ones, as RFC 8200 §8.1 requires and gopacket does not.
func fixUDPZero6(p []byte) []byte {
	if proto, off, frag := upper6(p); proto == protoUDP && !frag && off+8 <= len(p) && be16(p, off+udpChecksum) == 0 {
		put16(p, off+udpChecksum, 0xffff)
	}
	return p
}

// icmp6Echo builds an ICMPv6 echo request (typ 128) or reply (129).
func icmp6Echo(t testing.TB, src, dst netip.Addr, typ uint8, id, seq uint16) []byte {
	t.Helper()
	ipl := ipv6Layer(src, dst, layers.IPProtocolICMPv6)
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	ic.SetNetworkLayerForChecksum(ipl)
	return serialize(t, ipl, ic, &layers.ICMPv6Echo{Identifier: id, SeqNumber: seq}, gopacket.Payload("ping payload 0123456789"))
}

// icmp6Error builds an ICMPv6 error from src to dst with the 4 bytes after
// the checksum set to word (the MTU of packet too big, the pointer of
// parameter problem), quoting the packet quoted.
func icmp6Error(t testing.TB, src, dst netip.Addr, typ, code uint8, word uint32, quoted []byte) []byte {
	t.Helper()
	ipl := ipv6Layer(src, dst, layers.IPProtocolICMPv6)
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, code)}
	ic.SetNetworkLayerForChecksum(ipl)
	body := binary.BigEndian.AppendUint32(nil, word)
	return serialize(t, ipl, ic, gopacket.Payload(append(body, quoted...)))
}

// upper6 walks p's extension headers on its own (Hop-by-Hop, Routing,
// Destination Options, Fragment), independently of ippkt, and returns the
// upper-layer protocol and offset, and whether p is a fragment.
func upper6(p []byte) (proto uint8, off int, frag bool) {
	proto, off = p[6], 40
	for off+8 <= len(p) {
		switch proto {
		case 0, 43, 60:
			proto, off = p[off], off+(int(p[off+1])+1)*8
		case 44:
			if binary.BigEndian.Uint16(p[off+2:])&0xfff9 != 0 {
				frag = true
			}
			proto, off = p[off], off+8
		default:
			return proto, off, frag
		}
	}
	return proto, off, frag
}

// transport6OK verifies the TCP, UDP or ICMPv6 checksum of a complete,
// unfragmented IPv6 packet p over its pseudo-header (RFC 8200 §8.1), summed
// here with the test's own arithmetic. A UDP checksum of zero fails.
func transport6OK(p []byte) bool {
	if len(p) < 40 || int(binary.BigEndian.Uint16(p[4:]))+40 != len(p) {
		return false
	}
	proto, off, frag := upper6(p)
	if frag || off > len(p) {
		return false
	}
	l4 := p[off:]
	switch proto {
	case protoUDP:
		if len(l4) < 8 || binary.BigEndian.Uint16(l4[6:]) == 0 {
			return false
		}
	case protoTCP, protoICMPv6:
	default:
		return false
	}
	sum := onesSum(p[8:40], uint32(len(l4))+uint32(proto))
	return folded(onesSum(l4, sum)) == 0xffff
}

func checkSums6(t testing.TB, what string, p []byte) {
	t.Helper()
	if !transport6OK(p) {
		t.Errorf("%s: transport checksum invalid\n%x", what, p)
	}
}

// gopacketAgrees reports whether gopacket, decoding p and serializing it
// again with checksums computed, writes the same bytes: a second reference
// for the checksums of a packet without extension headers. An ICMPv6 error's
// embedded packet is only payload to it: check that separately.
func gopacketAgrees(t testing.TB, p []byte) bool {
	t.Helper()
	// A parser of these layers alone: what follows the transport header is
	// payload, and gopacket's guesses at it (DNS, NTP, ...) are not run.
	var (
		ip6     layers.IPv6
		tcp     layers.TCP
		udp     layers.UDP
		icmp    layers.ICMPv6
		decoded []gopacket.LayerType
	)
	parser := gopacket.NewDecodingLayerParser(layers.LayerTypeIPv6, &ip6, &tcp, &udp, &icmp)
	parser.IgnoreUnsupported = true
	if err := parser.DecodeLayers(p, &decoded); err != nil || len(decoded) != 2 {
		t.Fatalf("gopacketAgrees: decoded %v: %v", decoded, err)
	}
	var l4 interface {
		gopacket.SerializableLayer
		SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
		LayerPayload() []byte
	}
	switch decoded[1] {
	case layers.LayerTypeTCP:
		l4 = &tcp
	case layers.LayerTypeUDP:
		l4 = &udp
	default:
		// gopacket's ICMPv6Echo keeps no payload: serialize the message
		// body whole.
		l4 = &icmp
	}
	if err := l4.SetNetworkLayerForChecksum(&ip6); err != nil {
		t.Fatal(err)
	}
	ls := []gopacket.SerializableLayer{&ip6, l4, gopacket.Payload(l4.LayerPayload())}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(fixUDPZero6(buf.Bytes()), p)
}

// fields6 returns source, source port (or echo id), destination, destination
// port (0 for echo) of an IPv6 packet without extension headers as gopacket
// decodes them.
func fields6(t testing.TB, p []byte) (src netip.Addr, sport uint16, dst netip.Addr, dport uint16) {
	t.Helper()
	pkt := gopacket.NewPacket(p, layers.LayerTypeIPv6, gopacket.Default)
	ipl, ok := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	if !ok {
		t.Fatalf("gopacket finds no IPv6 header in %x", p)
	}
	src, dst = ipAddr(ipl.SrcIP), ipAddr(ipl.DstIP)
	switch l := pkt.TransportLayer().(type) {
	case *layers.TCP:
		return src, uint16(l.SrcPort), dst, uint16(l.DstPort)
	case *layers.UDP:
		return src, uint16(l.SrcPort), dst, uint16(l.DstPort)
	}
	if e, ok := pkt.Layer(layers.LayerTypeICMPv6Echo).(*layers.ICMPv6Echo); ok {
		return src, e.Identifier, dst, 0
	}
	t.Fatalf("no transport layer in %v", pkt)
	return
}

// withExtensions inserts after p's fixed header the extension headers hdrs,
// each given with its Next Header byte to be filled in, and fixes the chain
// and the payload length. Checksums do not change: the pseudo-header holds
// the upper-layer length and protocol, which stay the same.
func withExtensions(p []byte, hdrs ...[]byte) []byte {
	q := append([]byte(nil), p[:40]...)
	nh := p[6]
	types := make([]byte, len(hdrs))
	for i, h := range hdrs {
		types[i] = h[0] // the caller's type, kept in the first byte until the chain is set
	}
	q[6] = types[0]
	for i, h := range hdrs {
		h = append([]byte(nil), h...)
		if i+1 < len(hdrs) {
			h[0] = types[i+1]
		} else {
			h[0] = nh
		}
		q = append(q, h...)
	}
	q = append(q, p[40:]...)
	binary.BigEndian.PutUint16(q[4:], uint16(len(q)-40))
	return q
}

// destOpts is an 8-byte Destination Options header (type 60) of padding.
func destOpts() []byte { return []byte{60, 0, 1, 4, 0, 0, 0, 0} }

// hopByHop is an 8-byte Hop-by-Hop Options header (type 0) of padding.
func hopByHop() []byte { return []byte{0, 0, 1, 4, 0, 0, 0, 0} }

// fragment6 splits an IPv6 packet without extension headers after n bytes
// of its payload (n a multiple of 8) with a Fragment header of
// identification id.
func fragment6(p []byte, n int, id uint32) (first, second []byte) {
	mk := func(off int, more bool, data []byte) []byte {
		f := append([]byte(nil), p[:40]...)
		f[6] = 44
		fo := uint16(off/8) << 3
		if more {
			fo |= 1
		}
		h := []byte{p[6], 0, byte(fo >> 8), byte(fo), 0, 0, 0, 0}
		binary.BigEndian.PutUint32(h[4:], id)
		f = append(append(f, h...), data...)
		binary.BigEndian.PutUint16(f[4:], uint16(len(f)-40))
		return f
	}
	return mk(0, true, p[40:40+n]), mk(n, false, p[40+n:])
}

// reassemble6 joins two fragments fragment6 made, checking they carry the
// same addresses.
func reassemble6(t testing.TB, first, second []byte) []byte {
	t.Helper()
	if !bytes.Equal(first[8:40], second[8:40]) {
		t.Errorf("fragments' addresses differ: %x, %x", first[8:40], second[8:40])
	}
	p := append(append([]byte(nil), first[:40]...), first[48:]...)
	p = append(p, second[48:]...)
	p[6] = first[40]
	binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
	return p
}

// TestHelpers6AgreeWithGopacket checks the test's own IPv6 checksum verifier
// against gopacket's and that it rejects a flipped bit.
func TestHelpers6AgreeWithGopacket(t *testing.T) {
	for _, p := range [][]byte{
		tcp6Packet(t, client6A, 40000, server6, 443, "SA"),
		udp6Packet(t, client6A, 40000, server6, 53, "odd"),
		icmp6Echo(t, client6A, server6, icmp6EchoRequest, 7, 1),
		icmp6Error(t, router6, snat6, icmp6PacketTooBig, 0, 1280, udp6Packet(t, snat6, 4000, server6, 53, "q")),
	} {
		checkSums6(t, "fresh packet", p)
		if !gopacketAgrees(t, p) {
			t.Error("gopacket disagrees with a packet it built")
		}
		checkSums6(t, "with extension headers", withExtensions(p, hopByHop(), destOpts()))
		p[len(p)-1] ^= 1
		if transport6OK(p) || gopacketAgrees(t, p) {
			t.Error("a verifier accepts a corrupted payload")
		}
	}
}
