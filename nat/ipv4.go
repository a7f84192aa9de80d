package nat

import "encoding/binary"

// IPv4 header (RFC 791 §3.1); offsets used below are marked.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Version|  IHL  |Type of Service|   Total Length (2)            |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|         Identification (4)    |Flags|  Fragment Offset (6)    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Time to Live |Protocol (9)   |   Header Checksum (10)        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                  Source Address (12)                          |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|               Destination Address (16)                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
const (
	ipTotalLen = 2
	ipID       = 4
	ipFrag     = 6
	ipProto    = 9
	ipChecksum = 10
	ipSrc      = 12
	ipDst      = 16
	ipMinLen   = 20

	flagMoreFragments = 0x2000
	fragOffsetMask    = 0x1fff
)

// Transport protocol numbers and the offsets of the fields the NAT rewrites:
// TCP (RFC 9293 §3.1) and UDP (RFC 768) start with source and destination
// ports; ICMP echo (RFC 792) is type, code, checksum, identifier, sequence.
const (
	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17

	l4SrcPort      = 0
	l4DstPort      = 2
	tcpFlags       = 13
	tcpChecksum    = 16
	tcpMinLen      = 20
	udpChecksum    = 6
	udpLen         = 8
	icmpChecksum   = 2
	icmpEchoID     = 4
	icmpHeaderLen  = 8
	icmpEchoReply  = 0
	icmpUnreach    = 3
	icmpEchoReq    = 8
	icmpTimeExceed = 11
	icmpParamProb  = 12

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// header is the parsed part of an IPv4 header the NAT needs. It is a value;
// parsing does not allocate.
type header struct {
	hlen      int // header length in bytes, options included
	end       int // total length: pkt[hlen:end] is the payload
	proto     uint8
	src, dst  uint32
	fragOff   uint16 // in 8-byte units; non-zero means no transport header
	moreFrags bool
}

// parseIPv4 checks that pkt starts with a well-formed IPv4 header whose
// total length fits in pkt. Bytes after the total length are ignored.
func parseIPv4(pkt []byte) (header, error) {
	if len(pkt) < ipMinLen {
		return header{}, errShortIPv4
	}
	if pkt[0]>>4 != 4 {
		return header{}, errNotIPv4
	}
	h := header{hlen: int(pkt[0]&0x0f) * 4, end: int(be16(pkt, ipTotalLen))}
	if h.hlen < ipMinLen {
		return header{}, errBadIHL
	}
	if h.end < h.hlen || h.end > len(pkt) {
		return header{}, errBadTotalLength
	}
	frag := be16(pkt, ipFrag)
	h.fragOff = frag & fragOffsetMask
	h.moreFrags = frag&flagMoreFragments != 0
	h.proto = pkt[ipProto]
	h.src = be32(pkt, ipSrc)
	h.dst = be32(pkt, ipDst)
	return h, nil
}

func be16(b []byte, off int) uint16     { return binary.BigEndian.Uint16(b[off:]) }
func be32(b []byte, off int) uint32     { return binary.BigEndian.Uint32(b[off:]) }
func put16(b []byte, off int, v uint16) { binary.BigEndian.PutUint16(b[off:], v) }
func put32(b []byte, off int, v uint32) { binary.BigEndian.PutUint32(b[off:], v) }

// adjust16 returns the Internet checksum sum updated for one 16-bit word of
// the covered data changing from→to (RFC 1624 §3, eqn. 3:
// HC' = ~(~HC + ~m + m')). The word must sit at an even offset from the start
// of the covered data, which holds for every field the NAT rewrites.
func adjust16(sum, from, to uint16) uint16 {
	s := uint32(^sum) + uint32(^from) + uint32(to)
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return ^uint16(s)
}

// adjust32 is adjust16 for a 32-bit field such as an address.
func adjust32(sum uint16, from, to uint32) uint16 {
	return adjust16(adjust16(sum, uint16(from>>16), uint16(to>>16)), uint16(from), uint16(to))
}

// setAddr stores addr at pkt[off:] (the source or destination field of the
// IPv4 header at pkt[0:]) and adjusts that header's checksum.
func setAddr(pkt []byte, off int, old, addr uint32) {
	put32(pkt, off, addr)
	put16(pkt, ipChecksum, adjust32(be16(pkt, ipChecksum), old, addr))
}

// checksumOffset is where the checksum of an upper-layer header of proto (TCP,
// UDP, or ICMP and ICMPv6 alike) lies.
func checksumOffset(proto uint8) int {
	switch proto {
	case protoTCP:
		return tcpChecksum
	case protoUDP:
		return udpChecksum
	}
	return icmpChecksum
}

// fixTransport adjusts the transport checksum at l4[sumOff:] for an address
// in the pseudo-header changing oldAddr→newAddr and the port or identifier
// at l4[portOff:] changing oldPort→newPort, and stores the new port. withAddr
// is false for ICMP, whose checksum has no pseudo-header. It returns the old
// and new checksum so a caller nesting this inside an ICMP error can adjust
// the outer checksum. A UDP checksum of zero means none and is left alone.
func fixTransport(l4 []byte, proto uint8, portOff int, oldAddr, newAddr uint32, oldPort, newPort uint16) (oldSum, newSum uint16, hasSum bool) {
	put16(l4, portOff, newPort)
	sumOff := checksumOffset(proto)
	if len(l4) < sumOff+2 {
		// Only possible for a truncated TCP header embedded in an ICMP
		// error, which need carry just 8 bytes of it (RFC 792).
		return 0, 0, false
	}
	oldSum = be16(l4, sumOff)
	if proto == protoUDP && oldSum == 0 {
		return 0, 0, false
	}
	newSum = adjust16(oldSum, oldPort, newPort)
	if proto != protoICMP {
		newSum = adjust32(newSum, oldAddr, newAddr)
	}
	if proto == protoUDP && newSum == 0 {
		newSum = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	put16(l4, sumOff, newSum)
	return oldSum, newSum, true
}
