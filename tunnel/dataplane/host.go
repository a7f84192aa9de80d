package dataplane

import (
	"net/netip"
	"slices"

	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/ippkt"
)

// The endpoint host is not a destination. A client authorized for the whole private network
// would otherwise reach the host's own services through the TUN: the kernel delivers a packet
// for one of its addresses locally, whatever interface the address is on. So deliverData drops
// packets to Policy.Host (unless AllowHostAccess), and answers a ping of the client CIDR's
// gateway address (which clients get as route-gateway) itself, as a router answers for its own
// address; nothing else reaches the gateway address.

// hostSet is Policy.Host arranged for the per-packet check: single addresses sorted for a
// binary search, and the few wider prefixes (the loopback range, multicast) scanned. It is built
// once per policy snapshot and never changes. IPv4 destinations match IPv4 prefixes only (not
// IPv4-mapped IPv6 ones), as netip compares them.
type hostSet struct {
	addrs []netip.Addr
	nets  []netip.Prefix
}

func newHostSet(host []netip.Prefix) hostSet {
	var s hostSet
	for _, p := range host {
		if !p.IsValid() {
			continue
		}
		p = p.Masked()
		if p.IsSingleIP() {
			s.addrs = append(s.addrs, p.Addr())
		} else {
			s.nets = append(s.nets, p)
		}
	}
	slices.SortFunc(s.addrs, netip.Addr.Compare)
	s.addrs = slices.Compact(s.addrs)
	return s
}

// contains reports whether a is one of the host's destinations.
func (s *hostSet) contains(a netip.Addr) bool {
	for _, n := range s.nets {
		if n.Contains(a) {
			return true
		}
	}
	_, found := slices.BinarySearchFunc(s.addrs, a, netip.Addr.Compare)
	return found
}

// dropHost counts a packet to the endpoint host itself.
func (p *Plane) dropHost(id *Identity, dst netip.Addr) {
	if p.drops.Add(counters.HostAddress) {
		p.drops.Detail(counters.HostAddress, "user", id.User, "address", id.Addr, "dst", dst)
	}
}

// answerGateway answers an echo request (ICMP or ICMPv6) that a client sent to the gateway
// address gw of its family. pt is the request (from the client's own address, checked by the
// caller, parsed as info) inside pkt, the received data packet. The reply is built in place over
// the request (ippkt.EchoReply), sealed in pkt's headroom, where the request's data header was,
// and sent back over the client's link; the request is charged to the client's upload bucket
// like any packet. Anything else to the gateway (another protocol, another ICMP type, a
// fragment) is dropped as a host destination.
func (p *Plane) answerGateway(peer *Peer, id *Identity, pkt, pt []byte, info *ippkt.Info, gw netip.Addr) {
	reply, r := ippkt.EchoReply(pt, info, gw)
	switch {
	case r == ippkt.BadChecksum:
		p.dropUser(counters.Malformed, id)
		return
	case r != ippkt.OK:
		p.dropHost(id, gw)
		return
	case !peer.up.bucket.Allow(peer.lastRecv.Load(), len(pt)):
		p.dropUser(counters.RateLimit, id)
		return
	}
	now := peer.lastRecv.Load() // the time openData just took
	buf := pkt[:cap(pkt)]
	off := cap(pkt) - cap(reply) // reply lies inside pkt
	hdr := datacrypto.HeaderV1
	if id.DataV2 {
		hdr = datacrypto.HeaderV2
	}
	// seal needs room in front for the framing, the data header, the packet-id and the tag, and
	// behind for a framing byte and the tag written in place. A client that sent P_DATA_V1 but
	// gets P_DATA_V2 leaves too little in front: then the reply is copied out first.
	if off < id.Framing.headroom(reply[0])+hdr+datacrypto.Overhead || len(buf)-off-len(reply) < 1+datacrypto.Overhead {
		bp := localBufs.Get().(*[]byte)
		defer localBufs.Put(bp)
		buf, off = *bp, tunOffset
		copy(buf[off:], reply)
	}
	if sealed, ok := p.seal(peer, buf, off, len(reply), now); ok {
		peer.link.Send(sealed)
	}
}

// headroom is how many bytes add puts in front of a payload that starts with first.
func (f Framing) headroom(first byte) int {
	switch {
	case f == frameLZO:
		return 1
	case f == frameStubV2 && first == stubV2Escape:
		return 2
	}
	return 0
}
