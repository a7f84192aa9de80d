package nat

import (
	"net/netip"

	"github.com/cvpn/cvpn/tunnel/ippkt"
)

// IPv6 fixed header (RFC 8200 §3): the addresses are all the NAT rewrites.
// There is no header checksum; the upper-layer checksums (TCP, UDP, ICMPv6)
// cover a pseudo-header holding both addresses (RFC 8200 §8.1), so every
// address change is carried into them. Headers are parsed, extension headers
// walked, by package ippkt.
//
//	| Version | Traffic Class | Flow Label | Payload Length | Next Header | Hop Limit |
//	| Source Address (8, 16 bytes) | Destination Address (24, 16 bytes) | extension headers... |
const (
	ip6Src = 8
	ip6Dst = 24

	protoICMPv6 = ippkt.ProtoICMPv6

	// ICMPv6 types (RFC 4443 §2.1): the errors that embed a packet, and echo.
	icmp6Unreach       = 1
	icmp6PacketTooBig  = 2
	icmp6TimeExceeded  = 3
	icmp6ParamProblem  = 4
	icmp6EchoRequest   = 128
	icmp6EchoReply     = 129
	icmp6ErrorTypeLast = icmp6ParamProblem
)

// putAddr6 stores a at pkt[off:off+16].
func putAddr6(pkt []byte, off int, a netip.Addr) {
	b := a.As16()
	copy(pkt[off:off+16], b[:])
}

// fixTransport6 is fixTransport for IPv6: the pseudo-header's address
// changes oldAddr→newAddr for every protocol, ICMPv6 included (RFC 4443
// §2.3), and the UDP checksum is never "none" (RFC 8200 §8.1): an embedded
// UDP checksum of zero, which only an ICMPv6 error can carry here (Outbound
// and Inbound refuse such datagrams), is left alone as there is nothing
// right to make of it.
func fixTransport6(l4 []byte, proto uint8, portOff int, oldAddr, newAddr netip.Addr, oldPort, newPort uint16) (oldSum, newSum uint16, hasSum bool) {
	put16(l4, portOff, newPort)
	sumOff := checksumOffset(proto)
	if len(l4) < sumOff+2 {
		// Only possible for a TCP header embedded in an ICMPv6 error cut
		// short (ippkt.ParseEmbedded guarantees 8 bytes of it).
		return 0, 0, false
	}
	oldSum = be16(l4, sumOff)
	if proto == protoUDP && oldSum == 0 {
		return 0, 0, false
	}
	newSum = ippkt.UpdateAddr(ippkt.Update16(oldSum, oldPort, newPort), oldAddr, newAddr)
	if proto == protoUDP && newSum == 0 {
		newSum = 0xffff // RFC 8200 §8.1: a computed zero is sent as all ones
	}
	put16(l4, sumOff, newSum)
	return oldSum, newSum, true
}

// ports reads the flow's ports from the upper-layer header l4 of a packet
// (not embedded) for Outbound and Inbound, checking it is whole enough. For
// ICMPv6 it reports the type in icmpType and reads nothing else.
func ports6(l4 []byte, proto uint8) (src, dst uint16, icmpType byte, err error) {
	switch proto {
	case protoTCP:
		if len(l4) < tcpMinLen {
			return 0, 0, 0, errShortTCP
		}
	case protoUDP:
		if len(l4) < udpLen {
			return 0, 0, 0, errShortUDP
		}
		if be16(l4, udpChecksum) == 0 {
			return 0, 0, 0, errUDPNoChecksum6
		}
	case protoICMPv6:
		if len(l4) < icmpHeaderLen {
			return 0, 0, 0, errShortICMP
		}
		return 0, 0, l4[0], nil
	default:
		return 0, 0, 0, errProto
	}
	return be16(l4, l4SrcPort), be16(l4, l4DstPort), 0, nil
}
