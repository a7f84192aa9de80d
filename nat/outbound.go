package nat

// Outbound translates, in place, an IPv4 packet a client sent: its source
// address becomes the SNAT address and its source port (TCP, UDP) or echo
// identifier (ICMP echo request) becomes the mapping's external one, which is
// the client's own unless another client already uses it toward the same
// destination. The IPv4, TCP, UDP and ICMP checksums are adjusted. It creates
// the mapping if none is live (within the client's quota) and refreshes it.
//
// It also translates an ICMP error the client sends about a packet it got
// through the NAT, and non-first fragments (only their source address).
// The error says why a packet was dropped: it wraps ErrMalformed,
// ErrUnsupported, ErrClientQuota, ErrTableFull or ErrNoFreePort (or
// ErrNoMapping for an ICMP error about no known flow). On error pkt is
// unchanged. Outbound does not allocate when the mapping exists or when it
// drops the packet.
func (t *Table) Outbound(pkt []byte) error {
	h, err := parseIPv4(pkt)
	if err != nil {
		return err
	}
	if h.fragOff != 0 {
		setAddr(pkt, ipSrc, h.src, t.addr)
		return nil
	}
	l4 := pkt[h.hlen:h.end]
	k := outKey{client: h.src, remote: h.dst, proto: h.proto}
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
