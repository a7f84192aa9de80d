package ippkt

import (
	"encoding/binary"
	"net/netip"
)

// Test packets are built by hand here, byte by byte from the RFC layouts, so the parser is not
// checked against itself; refSum is the slow obvious checksum (RFC 1071, 16 bits at a time).

var (
	client6  = netip.MustParseAddr("fd00:10:2::2")
	server6  = netip.MustParseAddr("2001:db8::10")
	gateway6 = netip.MustParseAddr("fd00:10:2::1")
	client4  = netip.MustParseAddr("10.2.0.2")
	server4  = netip.MustParseAddr("10.0.1.10")
	gateway4 = netip.MustParseAddr("10.2.0.1")
)

// ext is one IPv6 extension header; its first byte (Next Header) is filled in by packet6.
type ext struct {
	kind uint8
	b    []byte
}

// optsHeader is a Hop-by-Hop or Destination Options header of 8*units bytes, padded with a
// PadN option (RFC 8200 §4.2) so that strict option parsers accept it.
func optsHeader(kind uint8, units int) ext {
	b := make([]byte, 8*units)
	b[1] = uint8(units - 1)
	b[2], b[3] = 1, uint8(len(b)-4) // PadN
	return ext{kind, b}
}

func hopByHop(units int) ext { return optsHeader(ProtoHopByHop, units) }
func destOpts(units int) ext { return optsHeader(ProtoDestOpts, units) }

// routing is a Routing header of type 0 with 16-byte addresses (RFC 8200 §4.4 layout).
func routing(segmentsLeft uint8, addrs int) ext {
	b := make([]byte, 8+16*addrs)
	b[1] = uint8(2 * addrs)
	b[3] = segmentsLeft
	return ext{ProtoRouting, b}
}

func fragment(offset uint16, more bool, id uint32) ext {
	b := make([]byte, 8)
	v := offset << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:], v)
	binary.BigEndian.PutUint32(b[4:], id)
	return ext{ProtoFragment, b}
}

// authHeader is an Authentication Header with icvWords 32-bit words of ICV (RFC 4302 §2).
func authHeader(icvWords int) ext {
	b := make([]byte, 12+4*icvWords)
	b[1] = uint8(len(b)/4 - 2)
	binary.BigEndian.PutUint32(b[4:], 0x1000) // SPI
	return ext{ProtoAH, b}
}

// packet6 builds an IPv6 packet from src to dst with the extension headers exts, then the
// upper-layer protocol proto with bytes l4.
func packet6(src, dst netip.Addr, exts []ext, proto uint8, l4 []byte) []byte {
	pkt := make([]byte, IPv6HeaderLen)
	pkt[0] = 0x60
	s, d := src.As16(), dst.As16()
	copy(pkt[8:], s[:])
	copy(pkt[24:], d[:])
	pkt[7] = 64
	next := 6 // where the current Next Header byte is
	for _, e := range exts {
		pkt[next] = e.kind
		next = len(pkt)
		pkt = append(pkt, e.b...)
	}
	pkt[next] = proto
	pkt = append(pkt, l4...)
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)-IPv6HeaderLen))
	return pkt
}

// packet4 builds an IPv4 packet with optWords 32-bit words of options (no-ops), the fragment
// field frag (flags and offset), and a valid header checksum.
func packet4(src, dst netip.Addr, optWords int, proto uint8, frag uint16, l4 []byte) []byte {
	hl := IPv4HeaderLen + 4*optWords
	pkt := make([]byte, hl, hl+len(l4))
	pkt[0] = 0x40 | uint8(hl/4)
	binary.BigEndian.PutUint16(pkt[4:], 0x1234)
	binary.BigEndian.PutUint16(pkt[6:], frag)
	pkt[8], pkt[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(pkt[12:], s[:])
	copy(pkt[16:], d[:])
	for i := IPv4HeaderLen; i < hl; i++ {
		pkt[i] = 1
	}
	pkt = append(pkt, l4...)
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	binary.BigEndian.PutUint16(pkt[10:], ^refSum(pkt[:hl], 0))
	return pkt
}

// synSegment is a TCP SYN header with the given options (padded to 32 bits with end-of-list) and
// a zero checksum.
func synSegment(opts ...byte) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, 0)
	}
	b := make([]byte, 20, 20+len(opts))
	binary.BigEndian.PutUint16(b[0:], 40000)
	binary.BigEndian.PutUint16(b[2:], 443)
	binary.BigEndian.PutUint32(b[4:], 1)
	b[12] = uint8((20+len(opts))/4) << 4
	b[13] = tcpSYN
	binary.BigEndian.PutUint16(b[14:], 64240)
	return append(b, opts...)
}

func mssOption(v uint16) []byte { return []byte{2, 4, byte(v >> 8), byte(v)} }

// icmp6 is an ICMPv6 message of type typ with 4 bytes of rest-of-header and body (checksum 0).
func icmp6(typ uint8, rest uint32, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	b[0] = typ
	binary.BigEndian.PutUint32(b[4:], rest)
	return append(b, body...)
}

// refSum is the slow obvious ones' complement sum: 16 bits at a time, carry folded each step.
func refSum(b []byte, sum uint16) uint16 {
	s := uint32(sum)
	for i := 0; i < len(b); i += 2 {
		w := uint32(b[i]) << 8
		if i+1 < len(b) {
			w |= uint32(b[i+1])
		}
		s += w
		if s > 0xffff {
			s -= 0xffff
		}
	}
	return uint16(s)
}

// refPseudo6 is the IPv6 pseudo-header laid out as bytes (RFC 8200 §8.1).
func refPseudo6(src, dst netip.Addr, proto uint8, length int) []byte {
	b := make([]byte, 40)
	s, d := src.As16(), dst.As16()
	copy(b, s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint32(b[32:], uint32(length))
	b[39] = proto
	return b
}

// setL4Checksum6 stores a valid checksum at pkt[transport+at:] for the upper-layer packet
// pkt[transport:] of the IPv6 packet pkt.
func setL4Checksum6(pkt []byte, transport, at int, proto uint8) {
	l4 := pkt[transport:]
	l4[at], l4[at+1] = 0, 0
	src := netip.AddrFrom16([16]byte(pkt[8:24]))
	dst := netip.AddrFrom16([16]byte(pkt[24:40]))
	s := refSum(refPseudo6(src, dst, proto, len(l4)), 0)
	binary.BigEndian.PutUint16(l4[at:], ^refSum(l4, s))
}

// l4ChecksumOK6 reports whether the upper-layer packet pkt[transport:end] verifies.
func l4ChecksumOK6(pkt []byte, transport, end int, proto uint8) bool {
	src := netip.AddrFrom16([16]byte(pkt[8:24]))
	dst := netip.AddrFrom16([16]byte(pkt[24:40]))
	s := refSum(refPseudo6(src, dst, proto, end-transport), 0)
	return refSum(pkt[transport:end], s) == 0xffff
}
