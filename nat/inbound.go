package nat

import "net/netip"

// Inbound translates, in place, an IPv4 packet from the private network
// addressed to the SNAT address: its destination becomes the client's address
// and its destination port (TCP, UDP) or echo identifier (ICMP echo reply)
// the client's own; checksums are adjusted. It returns the client the packet
// is for.
//
// It also translates ICMP errors (destination unreachable, fragmentation
// needed among them, time exceeded, parameter problem) about a packet that
// went out through the NAT: the outer destination, the embedded source
// address and port, and every checksum involved. Fragments after the first
// follow the client their first fragment went to.
//
// The error says why a packet was dropped: it wraps ErrNoMapping,
// ErrMalformed or ErrUnsupported. On error pkt is unchanged. Inbound never
// creates a mapping, refreshes one only when it is an established TCP
// connection, and does not allocate.
func (t *Table) Inbound(pkt []byte) (netip.Addr, error) {
	h, err := parseIPv4(pkt)
	if err != nil {
		return netip.Addr{}, err
	}
	if h.dst != t.addr {
		return netip.Addr{}, errNotSNATAddr
	}
	now := t.clock()
	if h.fragOff != 0 {
		client, ok := t.frags.lookup(fragKey{remote: h.src, id: be16(pkt, ipID), proto: h.proto}, now)
		if !ok {
			return netip.Addr{}, errNoFragment
		}
		setAddr(pkt, ipDst, t.addr, client)
		return addrFromUint(client), nil
	}

	l4 := pkt[h.hlen:h.end]
	k := inKey{remote: h.src, proto: h.proto}
	portOff := l4DstPort
	switch h.proto {
	case protoTCP:
		if len(l4) < tcpMinLen {
			return netip.Addr{}, errShortTCP
		}
		k.remotePort, k.extPort = be16(l4, l4SrcPort), be16(l4, l4DstPort)
	case protoUDP:
		if len(l4) < udpLen {
			return netip.Addr{}, errShortUDP
		}
		k.remotePort, k.extPort = be16(l4, l4SrcPort), be16(l4, l4DstPort)
	case protoICMP:
		if len(l4) < icmpHeaderLen {
			return netip.Addr{}, errShortICMP
		}
		switch l4[0] {
		case icmpEchoReply:
			k.extPort = be16(l4, icmpEchoID)
			portOff = icmpEchoID
		case icmpUnreach, icmpTimeExceed, icmpParamProb:
			return t.inboundICMPError(pkt, h, now)
		default:
			return netip.Addr{}, errICMPType
		}
	default:
		return netip.Addr{}, errProto
	}

	t.inMu.RLock()
	m := t.in[k]
	if m == nil || t.expired(m, now) {
		t.inMu.RUnlock()
		return netip.Addr{}, errNoInbound
	}
	t.inMu.RUnlock()
	// Only an established TCP connection's replies refresh its mapping; see
	// the package comment.
	if h.proto == protoTCP && established(trackTCP(m, l4[tcpFlags], true)) {
		touch(m, now)
	}
	client := m.out.client
	setAddr(pkt, ipDst, t.addr, client)
	fixTransport(l4, h.proto, portOff, t.addr, client, m.extPort, m.out.clientPort)
	if h.moreFrags {
		t.frags.record(fragKey{remote: h.src, id: be16(pkt, ipID), proto: h.proto}, client, now)
	}
	return addrFromUint(client), nil
}
