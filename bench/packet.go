package bench

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// The bench wire format is the UDP payload the load generator sends through the tunnel to the
// sink, and the sink's answers. Every message starts with the same header:
//
//	0        4      5       6        8                12               20               28
//	+--------+------+-------+--------+----------------+----------------+----------------+
//	| "CVB1" | type | flags | epoch  | session index  | sequence       | sent (unix ns) |
//	+--------+------+-------+--------+----------------+----------------+----------------+
//
// Data messages are padded to the packet size with zeros. A statsReply carries, after the
// header, the sink's totals for the epoch (span is the time from the epoch's first data message
// to its last, in ns) and a page of per-session counters:
//
//	28 packets(8) 36 bytes(8) 44 other(8) 52 span(8) 60 first(4) 64 count(4) 68 count x (packets(8) bytes(8))
//
// All integers are big-endian.
const (
	headerLen = 28
	// ipUDPHeaders is the IPv4 and UDP header in front of every payload; throughput counts IP
	// packet bytes, so the sink adds it to the payload lengths it sees.
	ipUDPHeaders = 28
	// statsPage is how many per-session counters fit one statsReply.
	statsPage = 64
	// statsReplyLen is the length of a full statsReply.
	statsReplyLen = headerLen + 40 + statsPage*16
	// MinPacketSize is the smallest IP packet the load generator sends: headers and the bench
	// header.
	MinPacketSize = ipUDPHeaders + headerLen
)

var magic = [4]byte{'C', 'V', 'B', '1'}

// Message types.
const (
	msgData       = 1 // counted by the sink, not answered
	msgProbe      = 2 // echoed by the sink as is, not counted
	msgStatsReq   = 3 // sink answers msgStatsReply for the page starting at the session index
	msgStatsReply = 4
	msgReset      = 5 // sink zeroes its counters and counts only data of this epoch from now on,
	// after a warm-up (in the sent field, ns) from the epoch's first data message
	msgResetAck = 6
)

var errNotBench = errors.New("bench: not a bench message")

// header is the decoded common header.
type header struct {
	typ     uint8
	epoch   uint16
	session uint32
	seq     uint64
	sent    int64
}

func (h *header) put(b []byte) {
	copy(b[0:4], magic[:])
	b[4] = h.typ
	b[5] = 0
	binary.BigEndian.PutUint16(b[6:], h.epoch)
	binary.BigEndian.PutUint32(b[8:], h.session)
	binary.BigEndian.PutUint64(b[12:], h.seq)
	binary.BigEndian.PutUint64(b[20:], uint64(h.sent))
}

func parseHeader(b []byte) (header, error) {
	if len(b) < headerLen || [4]byte(b[0:4]) != magic {
		return header{}, errNotBench
	}
	return header{
		typ:     b[4],
		epoch:   binary.BigEndian.Uint16(b[6:]),
		session: binary.BigEndian.Uint32(b[8:]),
		seq:     binary.BigEndian.Uint64(b[12:]),
		sent:    int64(binary.BigEndian.Uint64(b[20:])),
	}, nil
}

// counter is one session's delivered traffic at the sink.
type counter struct{ packets, bytes uint64 }

// statsReply is a decoded msgStatsReply.
type statsReply struct {
	hdr                   header
	packets, bytes, other uint64
	span                  int64 // ns from the first data message of the epoch to the last
	first                 uint32
	sessions              []counter
}

func (r *statsReply) append(b []byte) []byte {
	b = b[:headerLen]
	r.hdr.put(b)
	b = binary.BigEndian.AppendUint64(b, r.packets)
	b = binary.BigEndian.AppendUint64(b, r.bytes)
	b = binary.BigEndian.AppendUint64(b, r.other)
	b = binary.BigEndian.AppendUint64(b, uint64(r.span))
	b = binary.BigEndian.AppendUint32(b, r.first)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.sessions)))
	for _, c := range r.sessions {
		b = binary.BigEndian.AppendUint64(b, c.packets)
		b = binary.BigEndian.AppendUint64(b, c.bytes)
	}
	return b
}

func parseStatsReply(b []byte) (statsReply, error) {
	h, err := parseHeader(b)
	if err != nil || h.typ != msgStatsReply || len(b) < headerLen+40 {
		return statsReply{}, errNotBench
	}
	p := b[headerLen:]
	r := statsReply{
		hdr:     h,
		packets: binary.BigEndian.Uint64(p[0:]),
		bytes:   binary.BigEndian.Uint64(p[8:]),
		other:   binary.BigEndian.Uint64(p[16:]),
		span:    int64(binary.BigEndian.Uint64(p[24:])),
		first:   binary.BigEndian.Uint32(p[32:]),
	}
	n := int(binary.BigEndian.Uint32(p[36:]))
	p = p[40:]
	if n > statsPage || len(p) < 16*n {
		return statsReply{}, errNotBench
	}
	r.sessions = make([]counter, n)
	for i := range r.sessions {
		r.sessions[i] = counter{binary.BigEndian.Uint64(p[16*i:]), binary.BigEndian.Uint64(p[16*i+8:])}
	}
	return r, nil
}

// udpTemplate builds IPv4/UDP packets of one size between two fixed endpoints. The IPv4 header
// never changes (DF set, id 0), and only the first headerLen bytes of the payload do, so the UDP
// checksum is the precomputed sum of everything else plus those bytes.
type udpTemplate struct {
	src, dst netip.AddrPort
	size     int
	ipHdr    [20]byte
	partial  uint32 // unfolded one's-complement sum of the pseudo-header and the UDP header
}

func newUDPTemplate(src, dst netip.AddrPort, size int) *udpTemplate {
	t := &udpTemplate{src: src, dst: dst, size: size}
	h := t.ipHdr[:]
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(size))
	h[6] = 0x40 // DF
	h[8] = 64   // TTL
	h[9] = 17   // UDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(h[12:16], s4[:])
	copy(h[16:20], d4[:])
	binary.BigEndian.PutUint16(h[10:], ^fold(sum16(h)))
	udpLen := uint32(size - 20)
	t.partial = sum16(s4[:]) + sum16(d4[:]) + 17 + udpLen + // pseudo-header
		uint32(src.Port()) + uint32(dst.Port()) + udpLen // UDP header without the checksum
	return t
}

// build writes a full packet into b (at least t.size bytes, zero beyond the header) and returns
// it.
func (t *udpTemplate) build(b []byte, h *header) []byte {
	p := b[:t.size]
	copy(p, t.ipHdr[:])
	binary.BigEndian.PutUint16(p[20:], t.src.Port())
	binary.BigEndian.PutUint16(p[22:], t.dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(t.size-20))
	h.put(p[28 : 28+headerLen])
	c := ^fold(t.partial + sum16(p[28:28+headerLen]))
	if c == 0 {
		c = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	binary.BigEndian.PutUint16(p[26:], c)
	return p
}

// sum16 is the unfolded one's-complement sum of b's 16-bit words (b has even length).
func sum16(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// udpPayload returns the UDP payload of an IPv4/UDP packet with its source and destination, or
// false for anything else.
func udpPayload(ip []byte) (payload []byte, src, dst netip.AddrPort, ok bool) {
	if len(ip) < 28 || ip[0]>>4 != 4 || ip[9] != 17 {
		return nil, src, dst, false
	}
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || total > len(ip) || ihl+8 > total {
		return nil, src, dst, false
	}
	src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(ip[ihl:]))
	dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(ip[ihl+2:]))
	return ip[ihl+8 : total], src, dst, true
}
