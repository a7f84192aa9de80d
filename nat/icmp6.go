package nat

import (
	"net/netip"

	"github.com/cvpn/cvpn/tunnel/ippkt"
)

// An ICMPv6 error (RFC 4443 §3: destination unreachable 1, packet too big 2,
// time exceeded 3, parameter problem 4) carries as much of the packet that
// caused it as fits in 1280 bytes:
//
//	outer IPv6 header | type code checksum | unused/MTU/pointer (4) | embedded IPv6 header, extension headers | embedded upper-layer header...
//	                  '------------------ ICMPv6 checksum covers, with the outer pseudo-header ---------------------------------'
//
// Unlike ICMP's, the ICMPv6 checksum covers the outer addresses through the
// pseudo-header (RFC 4443 §2.3), so the outer address the NAT rewrites is
// carried into it as well as the embedded address, port and checksum. Every
// extension header is a multiple of 4 bytes long, so every field rewritten
// lies at an even offset from the start of the message, and each change
// adjusts the checksum incrementally. The embedded packet keeps its length,
// so the parameter problem pointer and the packet too big MTU stay true.

// embedded6 is the flow of the packet inside an ICMPv6 error.
type embedded6 struct {
	ip   []byte // from the embedded IPv6 header to the end of the message
	info ippkt.Info
	// ports (or, for ICMPv6 echo, identifier in srcPort and 0 in dstPort)
	srcPort, dstPort uint16
	icmpType         byte
}

func (e *embedded6) l4() []byte { return e.ip[e.info.Transport:e.info.End] }

// parseEmbedded6 parses the packet embedded in the ICMPv6 error in pkt.
func parseEmbedded6(pkt []byte, info *ippkt.Info) (embedded6, error) {
	off, ok := ippkt.Embedded(pkt, info)
	if !ok {
		return embedded6{}, errICMPType
	}
	e := embedded6{ip: pkt[off:info.End]}
	var r ippkt.Reason
	e.info, r = ippkt.ParseEmbedded(e.ip)
	switch {
	case r != ippkt.OK:
		return embedded6{}, embeddedError6(r)
	case e.info.Version != 6:
		return embedded6{}, errEmbeddedFamily
	case e.info.Frag == ippkt.LaterFragment:
		return embedded6{}, errEmbeddedFrag
	case e.info.Src.Is4In6() || e.info.Dst.Is4In6():
		return embedded6{}, errV4Mapped
	}
	// ParseEmbedded guarantees 8 bytes of the upper-layer header.
	l4 := e.l4()
	switch e.info.Proto {
	case protoTCP, protoUDP:
		e.srcPort, e.dstPort = be16(l4, l4SrcPort), be16(l4, l4DstPort)
	case protoICMPv6:
		e.icmpType = l4[0]
		e.srcPort = be16(l4, icmpEchoID)
	default:
		return embedded6{}, errEmbeddedProto
	}
	return e, nil
}

// rewriteEmbedded6 changes, in the ICMPv6 error icmp whose outer address at
// pkt[outerOff:] goes from→to, the embedded packet's address at
// e.ip[addrOff:] from→to and its port (or echo identifier) at portOff
// fromPort→toPort, adjusting the embedded transport checksum when it is there
// and the ICMPv6 checksum. The outer and the embedded address change alike:
// both are the client's address on one side of the NAT and the SNAT address
// on the other.
func rewriteEmbedded6(pkt []byte, outerOff int, icmp []byte, e *embedded6, addrOff int, from, to netip.Addr, portOff int, fromPort, toPort uint16) {
	sum := be16(icmp, icmpChecksum)
	sum = ippkt.UpdateAddr(sum, from, to) // the outer address, in the pseudo-header
	sum = ippkt.UpdateAddr(sum, from, to) // the embedded address, in the message
	oldL4Sum, newL4Sum, ok := fixTransport6(e.l4(), e.info.Proto, portOff, from, to, fromPort, toPort)
	sum = ippkt.Update16(sum, fromPort, toPort)
	if ok {
		sum = ippkt.Update16(sum, oldL4Sum, newL4Sum)
	}
	put16(icmp, icmpChecksum, sum)
	putAddr6(e.ip, addrOff, to)
	putAddr6(pkt, outerOff, to)
}

// inboundICMPv6Error translates an ICMPv6 error from the private network
// about a packet that left through the NAT.
func (t *Table) inboundICMPv6Error(pkt []byte, info *ippkt.Info, now int64) (netip.Addr, error) {
	e, err := parseEmbedded6(pkt, info)
	if err != nil {
		return netip.Addr{}, err
	}
	if e.info.Src != t.addr6 {
		return netip.Addr{}, errNoEmbedded
	}
	m, portOff, err := t.embeddedMapping(inKey{remote: addrOf(e.info.Dst), remotePort: e.dstPort, extPort: e.srcPort, proto: e.info.Proto},
		e.info.Proto == protoICMPv6, e.icmpType == icmp6EchoRequest, now)
	if err != nil {
		return netip.Addr{}, err
	}
	client := m.out.client.netip()
	rewriteEmbedded6(pkt, ip6Dst, pkt[info.Transport:info.End], &e, ip6Src, t.addr6, client, portOff, m.extPort, m.out.clientPort)
	if info.Frag == ippkt.FirstFragment {
		t.frags.record(fragKey{remote: addrOf(info.Src), id: info.FragID}, m.out.client, now)
	}
	return client, nil
}

// outboundICMPv6Error translates an ICMPv6 error a client sends about a
// packet it received through the NAT (say, port unreachable for a late UDP
// reply). Only the client the embedded packet was for may send it.
func (t *Table) outboundICMPv6Error(pkt []byte, info *ippkt.Info) error {
	e, err := parseEmbedded6(pkt, info)
	if err != nil {
		return err
	}
	if e.info.Dst != info.Src {
		return errNoEmbedded
	}
	k := outKey{client: addrOf(e.info.Dst), remote: addrOf(e.info.Src), clientPort: e.dstPort, remotePort: e.srcPort, proto: e.info.Proto}
	m, portOff, err := t.quotedOutMapping(&k, e.info.Proto == protoICMPv6, e.icmpType == icmp6EchoReply, e.srcPort)
	if err != nil {
		return err
	}
	rewriteEmbedded6(pkt, ip6Src, pkt[info.Transport:info.End], &e, ip6Dst, info.Src, t.addr6, portOff, k.clientPort, m.extPort)
	return nil
}
