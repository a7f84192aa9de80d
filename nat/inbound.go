package nat

import (
	"net/netip"

	"github.com/cvpn/cvpn/tunnel/ippkt"
)

// Inbound translates, in place, an IPv4 or IPv6 packet from the private
// network addressed to the SNAT address of its family: its destination
// becomes the client's address and its destination port (TCP, UDP) or echo
// identifier (ICMP or ICMPv6 echo reply) the client's own; checksums are
// adjusted. It returns the client address the packet is for, of the
// packet's family.
//
// It also translates ICMP errors (destination unreachable, fragmentation
// needed among them, time exceeded, parameter problem) and ICMPv6 errors
// (destination unreachable, packet too big, time exceeded, parameter
// problem) about a packet that went out through the NAT: the outer
// destination, the embedded source address and port, and every checksum
// involved. Packet Too Big so reaches the client, whose path MTU discovery
// depends on it (RFC 8201). Fragments after the first follow the client their
// first fragment went to.
//
// The error says why a packet was dropped: it wraps ErrNoMapping,
// ErrMalformed or ErrUnsupported, or is ErrNoIPv4 or ErrNoIPv6 for a family
// the table does not translate. On error pkt is unchanged. Inbound never
// creates a mapping, refreshes one only when it is an established TCP
// connection, and does not allocate.
func (t *Table) Inbound(pkt []byte) (netip.Addr, error) {
	if len(pkt) > 0 {
		switch {
		case pkt[0]>>4 == 6:
			return t.inbound6(pkt)
		case pkt[0]>>4 == 4 && !t.has4:
			return netip.Addr{}, ErrNoIPv4
		}
	}
	h, err := parseIPv4(pkt)
	if err != nil {
		return netip.Addr{}, err
	}
	if h.dst != t.addr {
		return netip.Addr{}, errNotSNATAddr
	}
	now := t.clock()
	if h.fragOff != 0 {
		client, ok := t.frags.lookup(fragKey{remote: addr4(h.src), id: uint32(be16(pkt, ipID)), proto: h.proto}, now)
		if !ok {
			return netip.Addr{}, errNoFragment
		}
		setAddr(pkt, ipDst, t.addr, client.v4())
		return addrFromUint(client.v4()), nil
	}

	l4 := pkt[h.hlen:h.end]
	k := inKey{remote: addr4(h.src), proto: h.proto}
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

	m, err := t.inboundMapping(k, l4, now)
	if err != nil {
		return netip.Addr{}, err
	}
	client := m.out.client.v4()
	setAddr(pkt, ipDst, t.addr, client)
	fixTransport(l4, h.proto, portOff, t.addr, client, m.extPort, m.out.clientPort)
	if h.moreFrags {
		t.frags.record(fragKey{remote: addr4(h.src), id: uint32(be16(pkt, ipID)), proto: h.proto}, m.out.client, now)
	}
	return addrFromUint(client), nil
}

func (t *Table) inbound6(pkt []byte) (netip.Addr, error) {
	if !t.has6 {
		return netip.Addr{}, ErrNoIPv6
	}
	info, r := ippkt.Parse(pkt)
	if r != ippkt.OK {
		return netip.Addr{}, parseError6(r)
	}
	if info.Dst != t.addr6 {
		return netip.Addr{}, errNotSNATAddr
	}
	if info.Src.Is4In6() {
		return netip.Addr{}, errV4Mapped
	}
	now := t.clock()
	remote := addrOf(info.Src)
	if info.Frag == ippkt.LaterFragment {
		c, ok := t.frags.lookup(fragKey{remote: remote, id: info.FragID}, now)
		if !ok {
			return netip.Addr{}, errNoFragment
		}
		client := c.netip()
		putAddr6(pkt, ip6Dst, client)
		return client, nil
	}

	l4 := pkt[info.Transport:info.End]
	sport, dport, icmpType, err := ports6(l4, info.Proto)
	if err != nil {
		return netip.Addr{}, err
	}
	k := inKey{remote: remote, remotePort: sport, extPort: dport, proto: info.Proto}
	portOff := l4DstPort
	if info.Proto == protoICMPv6 {
		switch {
		case icmpType == icmp6EchoReply:
			k.extPort = be16(l4, icmpEchoID)
			portOff = icmpEchoID
		case icmpType >= icmp6Unreach && icmpType <= icmp6ErrorTypeLast:
			return t.inboundICMPv6Error(pkt, &info, now)
		default:
			return netip.Addr{}, errICMPType
		}
	}

	m, err := t.inboundMapping(k, l4, now)
	if err != nil {
		return netip.Addr{}, err
	}
	client := m.out.client.netip()
	putAddr6(pkt, ip6Dst, client)
	fixTransport6(l4, info.Proto, portOff, t.addr6, client, m.extPort, m.out.clientPort)
	if info.Frag == ippkt.FirstFragment {
		t.frags.record(fragKey{remote: remote, id: info.FragID}, m.out.client, now)
	}
	return client, nil
}

// inboundMapping finds the live mapping of an inbound packet's flow (k), whose
// upper-layer header is l4, and tracks its TCP state. Only an established TCP
// connection's replies refresh the mapping; see the package comment.
func (t *Table) inboundMapping(k inKey, l4 []byte, now int64) (*mapping, error) {
	t.inMu.RLock()
	m := t.in[k]
	if m == nil || t.expired(m, now) {
		t.inMu.RUnlock()
		return nil, errNoInbound
	}
	t.inMu.RUnlock()
	if k.proto == protoTCP && established(trackTCP(m, l4[tcpFlags], true)) {
		touch(m, now)
	}
	return m, nil
}
