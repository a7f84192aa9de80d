package nat

import "github.com/cvpn/cvpn/tunnel/ippkt"

// Outbound translates, in place, an IPv4 or IPv6 packet a client sent: its
// source address becomes the SNAT address of its family and its source port
// (TCP, UDP) or echo identifier (ICMP or ICMPv6 echo request) becomes the
// mapping's external one, which is the client's own unless another client
// already uses it toward the same destination. The IPv4 header checksum and
// the TCP, UDP, ICMP and ICMPv6 checksums are adjusted. It creates the
// mapping if none is live (within the client's quota) and refreshes it.
//
// It also translates an ICMP or ICMPv6 error the client sends about a packet
// it got through the NAT, and fragments after the first (only their source
// address). The error says why a packet was dropped: it wraps ErrMalformed,
// ErrUnsupported, ErrClientQuota, ErrTableFull or ErrNoFreePort (or
// ErrNoMapping for an ICMP error about no known flow), or is ErrNoIPv4 or
// ErrNoIPv6 for a family the table does not translate. On error pkt is
// unchanged. Outbound does not allocate when the mapping exists or when it
// drops the packet.
func (t *Table) Outbound(pkt []byte) error {
	if len(pkt) > 0 {
		switch {
		case pkt[0]>>4 == 6:
			return t.outbound6(pkt)
		case pkt[0]>>4 == 4 && !t.has4:
			return ErrNoIPv4
		}
	}
	h, err := parseIPv4(pkt)
	if err != nil {
		return err
	}
	if h.fragOff != 0 {
		setAddr(pkt, ipSrc, h.src, t.addr)
		return nil
	}
	l4 := pkt[h.hlen:h.end]
	k := outKey{client: addr4(h.src), remote: addr4(h.dst), proto: h.proto}
	portOff := l4SrcPort
	switch h.proto {
	case protoTCP:
		if len(l4) < tcpMinLen {
			return errShortTCP
		}
		k.clientPort, k.remotePort = be16(l4, l4SrcPort), be16(l4, l4DstPort)
	case protoUDP:
		if len(l4) < udpLen {
			return errShortUDP
		}
		k.clientPort, k.remotePort = be16(l4, l4SrcPort), be16(l4, l4DstPort)
	case protoICMP:
		if len(l4) < icmpHeaderLen {
			return errShortICMP
		}
		switch l4[0] {
		case icmpEchoReq:
			k.clientPort = be16(l4, icmpEchoID)
			portOff = icmpEchoID
		case icmpUnreach, icmpTimeExceed, icmpParamProb:
			return t.outboundICMPError(pkt, h)
		default:
			return errICMPType
		}
	default:
		return errProto
	}

	m, err := t.lookupOut(k, t.clock())
	if err != nil {
		return err
	}
	if h.proto == protoTCP {
		trackTCP(m, l4[tcpFlags], false)
	}
	setAddr(pkt, ipSrc, h.src, t.addr)
	fixTransport(l4, h.proto, portOff, h.src, t.addr, k.clientPort, m.extPort)
	return nil
}

func (t *Table) outbound6(pkt []byte) error {
	if !t.has6 {
		return ErrNoIPv6
	}
	info, r := ippkt.Parse(pkt)
	if r != ippkt.OK {
		return parseError6(r)
	}
	if info.Src.Is4In6() || info.Dst.Is4In6() {
		return errV4Mapped
	}
	if info.Frag == ippkt.LaterFragment {
		putAddr6(pkt, ip6Src, t.addr6)
		return nil
	}
	l4 := pkt[info.Transport:info.End]
	sport, dport, icmpType, err := ports6(l4, info.Proto)
	if err != nil {
		return err
	}
	k := outKey{client: addrOf(info.Src), remote: addrOf(info.Dst), clientPort: sport, remotePort: dport, proto: info.Proto}
	portOff := l4SrcPort
	if info.Proto == protoICMPv6 {
		switch {
		case icmpType == icmp6EchoRequest:
			k.clientPort = be16(l4, icmpEchoID)
			portOff = icmpEchoID
		case icmpType >= icmp6Unreach && icmpType <= icmp6ErrorTypeLast:
			return t.outboundICMPv6Error(pkt, &info)
		default:
			return errICMPType
		}
	}
	m, err := t.lookupOut(k, t.clock())
	if err != nil {
		return err
	}
	if info.Proto == protoTCP {
		trackTCP(m, l4[tcpFlags], false)
	}
	putAddr6(pkt, ip6Src, t.addr6)
	fixTransport6(l4, info.Proto, portOff, info.Src, t.addr6, k.clientPort, m.extPort)
	return nil
}
