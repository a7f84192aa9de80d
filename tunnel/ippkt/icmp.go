package ippkt

import (
	"encoding/binary"
	"net/netip"
)

// ICMP (RFC 792) and ICMPv6 (RFC 4443 §2.1) messages start alike:
//
//	| Type (1) | Code (1) | Checksum (2) | 4 bytes: echo identifier and sequence, MTU, pointer, unused |
//
// The ICMPv6 checksum covers the IPv6 pseudo-header too (RFC 4443 §2.3); ICMP's does not.
const (
	icmpHeaderLen = 8

	icmpEchoReply   = 0
	icmpUnreachable = 3
	icmpEchoRequest = 8
	icmpTimeExceed  = 11
	icmpParamProb   = 12

	icmp6PacketTooBig = 2
	icmp6EchoRequest  = 128
	icmp6EchoReply    = 129
	icmp6Redirect     = 137 // RFC 4861 §4.5
	icmp6InfoMin      = 128 // types below are errors (RFC 4443 §2.1)

	// ReplyHopLimit is the TTL or hop limit of the messages built here, Linux's default.
	ReplyHopLimit = 64
)

// EchoReply turns the echo request in pkt, parsed as info (ICMP type 8 or ICMPv6 type 128,
// code 0, whole, with a valid checksum), into the echo reply from the address from, in place,
// and returns the reply: a slice of pkt. The echo message stays where it is with its type and
// checksum changed, and a fresh IP header with no options or extension headers goes in front of
// it (20 bytes, so options or extension headers of the request are dropped), from from to the
// request's source, with hop limit 64, keeping the TOS (and IPv4 identification) or traffic
// class. The caller decides that from is the address asked (the gateway) and that the request
// may be answered; a request that is a fragment, even the first, is refused (the answer would
// need reassembly).
func EchoReply(pkt []byte, info *Info, from netip.Addr) ([]byte, Reason) {
	if info.End > len(pkt) {
		return nil, BadLength
	}
	if info.Frag != NotFragment {
		return nil, Fragmented
	}
	msg := info.Payload(pkt)
	if len(msg) < icmpHeaderLen || msg[1] != 0 {
		return nil, NotEchoRequest
	}
	switch info.Version {
	case 4:
		if info.Proto != ProtoICMP || msg[0] != icmpEchoRequest || !from.Is4() {
			return nil, NotEchoRequest
		}
		if Checksum(msg, 0) != 0 {
			return nil, BadChecksum
		}
		// Only the type changes: update the checksum for that word (RFC 1624).
		msg[0] = icmpEchoReply
		binary.BigEndian.PutUint16(msg[2:], Update16(binary.BigEndian.Uint16(msg[2:]), icmpEchoRequest<<8, icmpEchoReply<<8))
		reply := pkt[info.Transport-IPv4HeaderLen : info.End]
		tos, id := pkt[1], binary.BigEndian.Uint16(pkt[4:6]) // read before the new header covers them
		h := reply[:IPv4HeaderLen]
		h[0], h[1] = 0x45, tos
		binary.BigEndian.PutUint16(h[2:], uint16(len(reply)))
		binary.BigEndian.PutUint16(h[4:], id)
		h[6], h[7], h[8], h[9], h[10], h[11] = 0, 0, ReplyHopLimit, ProtoICMP, 0, 0
		src, dst := from.As4(), info.Src.As4()
		copy(h[12:16], src[:])
		copy(h[16:20], dst[:])
		binary.BigEndian.PutUint16(h[10:], Checksum(h, 0))
		return reply, OK
	case 6:
		if info.Proto != ProtoICMPv6 || msg[0] != icmp6EchoRequest || !from.Is6() || from.Is4In6() {
			return nil, NotEchoRequest
		}
		if Checksum(msg, PseudoSum(info)) != 0 {
			return nil, BadChecksum
		}
		msg[0] = icmp6EchoReply
		msg[2], msg[3] = 0, 0
		binary.BigEndian.PutUint16(msg[2:], Checksum(msg, PseudoSum6(from, info.Src, ProtoICMPv6, len(msg))))
		reply := pkt[info.Transport-IPv6HeaderLen : info.End]
		tc := pkt[0]<<4 | pkt[1]>>4 // read before the new header covers it
		putIPv6Header(reply, tc, len(msg), ProtoICMPv6, from, info.Src)
		return reply, OK
	}
	return nil, BadVersion
}

// putIPv6Header writes a 40-byte IPv6 header with traffic class tc and flow label 0 (RFC 6437
// §3 lets a source leave it 0) at the start of b.
func putIPv6Header(b []byte, tc uint8, payloadLen int, nh uint8, src, dst netip.Addr) {
	b[0], b[1], b[2], b[3] = 0x60|tc>>4, tc<<4, 0, 0
	binary.BigEndian.PutUint16(b[4:], uint16(payloadLen))
	b[6], b[7] = nh, ReplyHopLimit
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
}

// PacketTooBigLen is the most a Packet Too Big message built here takes: the IPv6 minimum MTU
// (RFC 4443 §2.4 (c)). A buffer this long holds any.
const PacketTooBigLen = MinMTU6

// PacketTooBig writes into buf the ICMPv6 Packet Too Big message (RFC 4443 §3.2: type 2, code
// 0, the MTU of the next hop) from the address from about the offending IPv6 packet pkt,
// parsed as info, and returns it (a prefix of buf). It carries as much of the offending packet
// (up to info.End) as fits in 1280 bytes or buf; buf must hold the message's 48 bytes of
// headers and the offending packet's 40-byte header at least. buf may overlap pkt: the
// offending bytes are copied before anything else is written.
//
// Refused, as RFC 4443 §2.4 (e) says: a packet that is itself an ICMPv6 error or a redirect,
// and one whose source names no single node (unspecified, multicast). A multicast destination
// is no reason to refuse: §2.4 (e.3) makes Packet Too Big the exception, so that path MTU
// discovery works for multicast. The caller limits the rate (§2.4 (f)) and passes the MTU of
// the link that was too small, which for IPv6 is at least 1280 (RFC 8200 §5).
func PacketTooBig(buf, pkt []byte, info *Info, from netip.Addr, mtu uint32) ([]byte, Reason) {
	if info.Version != 6 {
		return nil, BadVersion
	}
	if info.End > len(pkt) || info.End < IPv6HeaderLen {
		return nil, BadLength
	}
	if info.Src.IsUnspecified() || info.Src.IsMulticast() {
		return nil, NoErrorToSource
	}
	if info.Proto == ProtoICMPv6 && info.Transport != 0 {
		// Linux (icmpv6_send, is_ineligible) reads the type the same way; a later fragment
		// shows none and may be answered.
		if info.Transport >= info.End || pkt[info.Transport] < icmp6InfoMin || pkt[info.Transport] == icmp6Redirect {
			return nil, ErrorAboutError
		}
	}
	const headers = IPv6HeaderLen + icmpHeaderLen
	if len(buf) < headers+IPv6HeaderLen {
		return nil, ShortBuffer
	}
	n := min(info.End, PacketTooBigLen-headers, len(buf)-headers)
	copy(buf[headers:], pkt[:n])
	msg := buf[IPv6HeaderLen : headers+n]
	msg[0], msg[1], msg[2], msg[3] = icmp6PacketTooBig, 0, 0, 0
	binary.BigEndian.PutUint32(msg[4:], mtu)
	binary.BigEndian.PutUint16(msg[2:], Checksum(msg, PseudoSum6(from, info.Src, ProtoICMPv6, len(msg))))
	putIPv6Header(buf, 0, len(msg), ProtoICMPv6, from, info.Src)
	return buf[:headers+n], OK
}

// Embedded reports whether the packet pkt, parsed as info, is an ICMP error (destination
// unreachable 3, time exceeded 11, parameter problem 12: those the NAT translates) or an
// ICMPv6 error (types 1 to 4, RFC 4443 §2.1), and if so the offset in pkt of the packet it
// carries, the offending packet, for ParseEmbedded. An error that is a fragment after the
// first shows no type and is not one.
func Embedded(pkt []byte, info *Info) (int, bool) {
	if info.Transport == 0 || info.End > len(pkt) || info.End-info.Transport < icmpHeaderLen {
		return 0, false
	}
	t := pkt[info.Transport]
	switch {
	case info.Version == 4 && info.Proto == ProtoICMP:
		if t != icmpUnreachable && t != icmpTimeExceed && t != icmpParamProb {
			return 0, false
		}
	case info.Version == 6 && info.Proto == ProtoICMPv6:
		if t < 1 || t > 4 {
			return 0, false
		}
	default:
		return 0, false
	}
	return info.Transport + icmpHeaderLen, true
}
