package nat

import "net/netip"

// An ICMP error (RFC 792) carries the IP header and at least the first 8
// bytes of the packet that caused it (RFC 1812 §4.3.2.3 asks routers for as
// much as fits in 576 bytes):
//
//	outer IPv4 header | type code checksum | unused/MTU (4) | embedded IPv4 header | embedded first 8+ bytes
//	                  '------------------------------ ICMP checksum covers ---------------------------------'
//
// The embedded packet went the other way, so for an error coming in, its
// source is the SNAT address and its source port the external one. Every
// field rewritten lies at an even offset from the start of the ICMP message,
// so each change adjusts the ICMP checksum incrementally like any other.

// embedded is the parsed packet inside an ICMP error.
type embedded struct {
	ip    []byte // from the embedded IPv4 header to the end of the message
	hlen  int
	proto uint8
	src   uint32
	dst   uint32
	// ports (or, for ICMP echo, identifier in srcPort and 0 in dstPort)
	srcPort, dstPort uint16
	icmpType         byte
}

func (e *embedded) l4() []byte { return e.ip[e.hlen:] }

// parseEmbedded parses the packet embedded in the ICMP error icmp.
func parseEmbedded(icmp []byte) (embedded, error) {
	ip := icmp[icmpHeaderLen:]
	if len(ip) < ipMinLen {
		return embedded{}, errShortEmbedded
	}
	e := embedded{ip: ip, hlen: int(ip[0]&0x0f) * 4, proto: ip[ipProto], src: be32(ip, ipSrc), dst: be32(ip, ipDst)}
	if ip[0]>>4 != 4 || e.hlen < ipMinLen {
		return embedded{}, errShortEmbedded
	}
	if len(ip) < e.hlen+8 {
		return embedded{}, errShortEmbedded
	}
	if be16(ip, ipFrag)&fragOffsetMask != 0 {
		return embedded{}, errEmbeddedFrag
	}
	l4 := e.l4()
	switch e.proto {
	case protoTCP, protoUDP:
		e.srcPort, e.dstPort = be16(l4, l4SrcPort), be16(l4, l4DstPort)
	case protoICMP:
		e.icmpType = l4[0]
		e.srcPort = be16(l4, icmpEchoID)
	default:
		return embedded{}, errEmbeddedProto
	}
	return e, nil
}

// rewriteEmbedded changes, in the packet embedded in the ICMP error icmp, the
// address at e.ip[addrOff:] from→to and the port (or echo identifier) from
// fromPort→toPort, adjusting the embedded IPv4 header checksum, the embedded
// transport checksum when it is there, and the ICMP checksum.
func rewriteEmbedded(icmp []byte, e *embedded, addrOff int, from, to uint32, portOff int, fromPort, toPort uint16) {
	sum := be16(icmp, icmpChecksum)

	oldIPSum := be16(e.ip, ipChecksum)
	setAddr(e.ip, addrOff, from, to)
	sum = adjust32(sum, from, to)
	sum = adjust16(sum, oldIPSum, be16(e.ip, ipChecksum))

	oldL4Sum, newL4Sum, ok := fixTransport(e.l4(), e.proto, portOff, from, to, fromPort, toPort)
	sum = adjust16(sum, fromPort, toPort)
	if ok {
		sum = adjust16(sum, oldL4Sum, newL4Sum)
	}
	put16(icmp, icmpChecksum, sum)
}

// inboundICMPError translates an ICMP error from the private network about a
// packet that left through the NAT.
func (t *Table) inboundICMPError(pkt []byte, h header, now int64) (netip.Addr, error) {
	icmp := pkt[h.hlen:h.end]
	e, err := parseEmbedded(icmp)
	if err != nil {
		return netip.Addr{}, err
	}
	if e.src != t.addr {
		return netip.Addr{}, errNoEmbedded
	}
	m, portOff, err := t.embeddedMapping(inKey{remote: addr4(e.dst), remotePort: e.dstPort, extPort: e.srcPort, proto: e.proto},
		e.proto == protoICMP, e.icmpType == icmpEchoReq, now)
	if err != nil {
		return netip.Addr{}, err
	}
	client := m.out.client.v4()
	setAddr(pkt, ipDst, t.addr, client)
	rewriteEmbedded(icmp, &e, ipSrc, t.addr, client, portOff, m.extPort, m.out.clientPort)
	if h.moreFrags {
		t.frags.record(fragKey{remote: addr4(h.src), id: uint32(be16(pkt, ipID)), proto: h.proto}, m.out.client, now)
	}
	return addrFromUint(client), nil
}

// embeddedMapping finds the mapping of the flow an inbound ICMP or ICMPv6 error
// is about, from the key of its embedded packet (which left through the NAT:
// its source is ours); isEcho says the embedded packet is an ICMP or ICMPv6
// message, which must then be an echo request (echoReq). It returns where the
// embedded packet's port or echo identifier lies. An error does not refresh
// the mapping: it is no sign the flow lives.
func (t *Table) embeddedMapping(k inKey, isEcho, echoReq bool, now int64) (*mapping, int, error) {
	portOff := l4SrcPort
	if isEcho {
		if !echoReq {
			return nil, 0, errEmbeddedProto
		}
		k.remotePort = 0
		portOff = icmpEchoID
	}
	t.inMu.RLock()
	defer t.inMu.RUnlock()
	m := t.in[k]
	if m == nil || t.expired(m, now) {
		return nil, 0, errNoEmbedded
	}
	return m, portOff, nil
}

// quotedOutMapping finds the mapping of the flow an outbound ICMP or ICMPv6
// error is about, from the key of its embedded packet (which the client
// received through the NAT); isEcho says the embedded packet is an ICMP or
// ICMPv6 message, which must then be an echo reply (echoReply) whose
// identifier srcPort is the client's. It completes k and returns where the
// embedded packet's port or echo identifier lies.
func (t *Table) quotedOutMapping(k *outKey, isEcho, echoReply bool, srcPort uint16) (*mapping, int, error) {
	portOff := l4DstPort
	if isEcho {
		if !echoReply {
			return nil, 0, errEmbeddedProto
		}
		k.clientPort, k.remotePort = srcPort, 0
		portOff = icmpEchoID
	}
	now := t.clock()
	t.outMu.RLock()
	defer t.outMu.RUnlock()
	m := t.out[*k]
	if m == nil || t.expired(m, now) {
		return nil, 0, errNoEmbedded
	}
	return m, portOff, nil
}

// outboundICMPError translates an ICMP error a client sends about a packet
// it received through the NAT (say, port unreachable for a late UDP reply).
// Only the client the embedded packet was for may send it.
func (t *Table) outboundICMPError(pkt []byte, h header) error {
	icmp := pkt[h.hlen:h.end]
	e, err := parseEmbedded(icmp)
	if err != nil {
		return err
	}
	if e.dst != h.src {
		return errNoEmbedded
	}
	k := outKey{client: addr4(e.dst), remote: addr4(e.src), clientPort: e.dstPort, remotePort: e.srcPort, proto: e.proto}
	m, portOff, err := t.quotedOutMapping(&k, e.proto == protoICMP, e.icmpType == icmpEchoReply, e.srcPort)
	if err != nil {
		return err
	}
	setAddr(pkt, ipSrc, h.src, t.addr)
	rewriteEmbedded(icmp, &e, ipDst, e.dst, t.addr, portOff, k.clientPort, m.extPort)
	return nil
}
