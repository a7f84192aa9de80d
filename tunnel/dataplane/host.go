package dataplane

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
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

// IPv4 and ICMP values of an echo exchange (RFC 791, RFC 792).
const (
	ipv4HeaderLen   = 20
	protoICMP       = 1
	icmpEchoReply   = 0
	icmpEchoRequest = 8
	icmpHeaderLen   = 8
	replyTTL        = 64
)

// answerGateway answers an ICMP echo request that a client sent to the gateway address gw. pt
// is the request (an IPv4 packet from the client's own address, checked by the caller) inside
// pkt, the received data packet. The reply is built in place over the request: the echo
// message stays where it is with its type and checksum changed, and a fresh 20-byte IP header
// (no options) goes in front of it. It is sealed in pkt's headroom, where the request's data
// header was, and sent back over the client's link; the request is charged to the client's
// upload bucket like any packet. Anything else to the gateway (another protocol, another ICMP
// type, a fragment) is dropped as a host destination.
func (p *Plane) answerGateway(peer *Peer, id *Identity, pkt, pt []byte, gw netip.Addr) {
	ihl := int(pt[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(pt[2:4]))
	if ihl < ipv4HeaderLen || total < ihl+icmpHeaderLen || total > len(pt) ||
		pt[9] != protoICMP || binary.BigEndian.Uint16(pt[6:8])&0x3fff != 0 || // MF or an offset: a fragment
		pt[ihl] != icmpEchoRequest || pt[ihl+1] != 0 {
		p.dropHost(id, gw)
		return
	}
	icmp := pt[ihl:total]
	if foldSum(checksum(icmp, 0)) != 0xffff {
		p.dropUser(counters.Malformed, id)
		return
	}
	if !peer.up.bucket.Allow(peer.lastRecv.Load(), total) {
		p.dropUser(counters.RateLimit, id)
		return
	}
	// Echo request to echo reply: only the type changes, so the checksum changes by the
	// difference of that 16-bit word (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
	sum := ^binary.BigEndian.Uint16(icmp[2:4])
	icmp[0] = icmpEchoReply
	binary.BigEndian.PutUint16(icmp[2:4], ^foldSum(uint32(sum)+uint32(^uint16(icmpEchoRequest<<8))+uint32(icmpEchoReply<<8)))

	reply := pt[ihl-ipv4HeaderLen : total]
	tos, ipID := pt[1], binary.BigEndian.Uint16(pt[4:6]) // read before the new header covers them
	h := reply[:ipv4HeaderLen]
	h[0], h[1] = 0x45, tos
	binary.BigEndian.PutUint16(h[2:4], uint16(len(reply)))
	binary.BigEndian.PutUint16(h[4:6], ipID)
	h[6], h[7], h[8], h[9] = 0, 0, replyTTL, protoICMP
	h[10], h[11] = 0, 0
	gw4, client4 := gw.As4(), id.Addr.As4()
	copy(h[12:16], gw4[:])
	copy(h[16:20], client4[:])
	binary.BigEndian.PutUint16(h[10:12], ^foldSum(checksum(h, 0)))

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

// checksum adds b to the one's complement sum sum as big-endian 16-bit words (RFC 1071),
// unfolded: foldSum folds it. An odd last byte is padded with zero.
func checksum(b []byte, sum uint32) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

// foldSum folds a one's complement sum to 16 bits.
func foldSum(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
