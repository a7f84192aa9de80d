package ippkt

import (
	"encoding/binary"
	"net/netip"
)

// IPv4 header (RFC 791 §3.1) and IPv6 fixed header (RFC 8200 §3); the offsets used are marked.
//
//	IPv4: |Ver|IHL (0)|TOS|Total Length (2)|Identification (4)|Flags+Fragment Offset (6)|
//	      |TTL|Protocol (9)|Checksum (10)|Source (12)|Destination (16)|options...
//	IPv6: |Ver|Traffic Class|Flow Label|Payload Length (4)|Next Header (6)|Hop Limit (7)|
//	      |Source (8, 16 bytes)|Destination (24, 16 bytes)|
const (
	IPv4HeaderLen = 20
	IPv6HeaderLen = 40

	// MinMTU6 is the smallest MTU an IPv6 link has (RFC 8200 §5), the bound of an ICMPv6
	// error's length (RFC 4443 §2.4 (c)).
	MinMTU6 = 1280
)

// Protocol numbers (IANA "Assigned Internet Protocol Numbers") of the headers this package
// knows.
const (
	ProtoHopByHop = 0
	ProtoICMP     = 1
	ProtoTCP      = 6
	ProtoUDP      = 17
	ProtoRouting  = 43
	ProtoFragment = 44
	ProtoESP      = 50
	ProtoAH       = 51
	ProtoICMPv6   = 58
	ProtoNoNext   = 59
	ProtoDestOpts = 60
)

// Bounds of the extension-header walk. RFC 8200 §4.1 expects each header at most once
// (Destination Options twice), so a legitimate chain has at most six; two more leave room.
// The bytes cap is far above what any real chain needs (a Segment Routing header with dozens
// of segments) and well inside the 1280 bytes a first fragment may be limited to.
const (
	MaxExtensionHeaders = 8
	MaxExtensionBytes   = 1024
)

// Fragment says whether a packet is a fragment, and which.
type Fragment uint8

const (
	// NotFragment: a whole packet. An IPv6 atomic fragment (a Fragment header with offset 0 and
	// M clear) is one too: RFC 8200 §4.5 and RFC 6946 have it processed on its own.
	NotFragment Fragment = iota
	// FirstFragment: offset 0, more to come; it holds the upper-layer header.
	FirstFragment
	// LaterFragment: a non-zero offset; it holds no upper-layer header.
	LaterFragment
)

// Info is what Parse reads from a packet's headers. It is a value; nothing in it points into
// the packet.
type Info struct {
	Src, Dst netip.Addr
	// End is where the packet ends as its header says: the IPv4 total length, or 40 plus the
	// IPv6 payload length. Bytes after it (padding) are not part of the packet.
	End int
	// Transport is the offset of the upper-layer header (after IPv4 options or the IPv6
	// extension headers), or 0 when the packet holds none: a fragment after the first. For ESP
	// it is the ESP header, after which all is encrypted (IPv4 reports it so too); for No Next
	// Header (59), where bytes that follow mean nothing (RFC 8200 §4.7).
	Transport int
	// Proto is the upper-layer protocol: IPv4's Protocol, or the Next Header that ends the IPv6
	// chain. For an IPv6 fragment after the first it is the Fragment header's Next Header,
	// which may name an extension header.
	Proto   uint8
	Version uint8 // 4 or 6
	Frag    Fragment
	// FragOffset is the fragment offset in 8-byte units, FragID the identification (16 bits in
	// IPv4, 32 in IPv6): with the addresses and (IPv4) the protocol, what names the datagram
	// at reassembly. Set for fragments and IPv6 atomic fragments.
	FragOffset uint16
	FragID     uint32
	// Extensions is the number of IPv6 extension headers before Transport (or before the
	// fragment data).
	Extensions uint8
}

// Payload returns the upper-layer part of pkt (pkt[Transport:End]), or nil when there is none.
func (i *Info) Payload(pkt []byte) []byte {
	if i.Transport == 0 {
		return nil
	}
	return pkt[i.Transport:i.End]
}

// Parse checks the IP header at the start of pkt, of either family, and reports what it
// found, or why it refuses the packet. It reads nothing outside pkt and allocates nothing.
//
// Bytes after the length the header gives are accepted and ignored (Info.End says where the
// packet ends), in both families, as Linux does (ip_rcv, ipv6_rcv). The IPv4 header checksum
// is not verified: the kernel verifies it when the packet is written to the TUN.
func Parse(pkt []byte) (Info, Reason) {
	var i Info
	r := parse(&i, pkt, false)
	return i, r
}

// ParseEmbedded parses the packet an ICMP or ICMPv6 error carries (from Embedded's offset).
// The error holds only as much of it as fitted (RFC 792, RFC 4443 §3), so its lengths may run
// past the bytes present: End is then len(b). Everything else is checked as by Parse, and the
// header chain and the first 8 bytes of the upper-layer header (the ports, or the echo
// identifier) must be present unless the embedded packet is a later fragment.
func ParseEmbedded(b []byte) (Info, Reason) {
	var i Info
	r := parse(&i, b, true)
	return i, r
}

// parse fills i, which is zero, and leaves it zero on a refusal. The walk writes through a
// pointer so the hot path copies Info once, not at each return.
func parse(i *Info, pkt []byte, embedded bool) Reason {
	if len(pkt) < 1 {
		return Truncated
	}
	var r Reason
	switch pkt[0] >> 4 {
	case 4:
		r = parse4(i, pkt, embedded)
	case 6:
		r = parse6(i, pkt, embedded)
	default:
		return BadVersion
	}
	if r != OK {
		*i = Info{}
	}
	return r
}

func parse4(i *Info, pkt []byte, embedded bool) Reason {
	if len(pkt) < IPv4HeaderLen {
		return Truncated
	}
	ihl := int(pkt[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	if ihl < IPv4HeaderLen || ihl > total {
		return BadHeaderLength
	}
	if total > len(pkt) {
		if !embedded {
			return BadLength
		}
		total = len(pkt)
		if ihl > total {
			return Truncated
		}
	}
	frag := binary.BigEndian.Uint16(pkt[6:8])
	*i = Info{
		Src:        netip.AddrFrom4([4]byte(pkt[12:16])),
		Dst:        netip.AddrFrom4([4]byte(pkt[16:20])),
		End:        total,
		Transport:  ihl,
		Proto:      pkt[9],
		Version:    4,
		FragOffset: frag & 0x1fff,
		FragID:     uint32(binary.BigEndian.Uint16(pkt[4:6])),
	}
	switch {
	case i.FragOffset != 0:
		i.Frag, i.Transport = LaterFragment, 0
	case frag&0x2000 != 0: // More Fragments
		i.Frag = FirstFragment
	}
	if embedded && i.Transport != 0 && i.End-i.Transport < 8 {
		return Truncated
	}
	return OK
}

// parse6 reads the fixed header, then walks the extension headers (RFC 8200 §4):
//
//	Hop-by-Hop (0), Routing (43), Destination Options (60):  |Next Header|Hdr Ext Len| ... | (Hdr Ext Len+1)*8 bytes
//	Authentication Header (51, RFC 4302 §2.2):               |Next Header|Payload Len| ... | (Payload Len+2)*4 bytes
//	Fragment (44, §4.5):  |Next Header|Reserved|Fragment Offset (13 bits)|Res|M|Identification (32)|  8 bytes
//
// Routing adds |Routing Type|Segments Left| after its first two bytes (§4.4). ESP (50) and No
// Next Header (59) end the walk, as does any other value, which is the upper-layer protocol:
// like Linux (ipv6_ext_hdr), only the six headers above are walked. Options inside headers are
// not read: they are the destination's business, and skipping by length bounds the work.
func parse6(i *Info, pkt []byte, embedded bool) Reason {
	if len(pkt) < IPv6HeaderLen {
		return Truncated
	}
	plen := int(binary.BigEndian.Uint16(pkt[4:6]))
	nh := pkt[6]
	if plen == 0 && nh == ProtoHopByHop {
		return Jumbogram
	}
	end := IPv6HeaderLen + plen // the end the header declares
	limit := end                // the end of the bytes present
	if end > len(pkt) {
		if !embedded {
			return BadLength
		}
		limit = len(pkt)
	}
	*i = Info{
		Src:     netip.AddrFrom16([16]byte(pkt[8:24])),
		Dst:     netip.AddrFrom16([16]byte(pkt[24:40])),
		End:     limit,
		Version: 6,
	}
	// cut is the refusal for a header that runs past the bytes present: within a first
	// fragment it means the chain was split across fragments.
	cut := TruncatedExtension
	if embedded {
		cut = Truncated
	}
	off := IPv6HeaderLen
	sawFragment := false
	for {
		var hlen int
		switch nh {
		case ProtoHopByHop, ProtoRouting, ProtoDestOpts, ProtoAH, ProtoFragment:
		default:
			// The upper-layer header: in a first fragment (or an embedded packet) it must be
			// there whole enough to be read, or filters further on see no ports (RFC 7112 §5).
			if (i.Frag == FirstFragment || embedded) && limit-off < minUpperLayer(nh, embedded) {
				if embedded {
					return Truncated
				}
				return ChainNotInFirstFragment
			}
			i.Proto, i.Transport = nh, off
			return OK
		}
		if i.Extensions == MaxExtensionHeaders {
			return TooManyExtensions
		}
		if limit-off < 8 { // every extension header is at least 8 bytes
			return cut
		}
		switch nh {
		case ProtoHopByHop:
			if off != IPv6HeaderLen {
				return HopByHopNotFirst
			}
			hlen = (int(pkt[off+1]) + 1) * 8
		case ProtoRouting:
			hlen = (int(pkt[off+1]) + 1) * 8
			if pkt[off+3] != 0 { // Segments Left
				return RoutingHeader
			}
		case ProtoDestOpts:
			hlen = (int(pkt[off+1]) + 1) * 8
		case ProtoAH:
			hlen = (int(pkt[off+1]) + 2) * 4
			if hlen < 12 {
				return BadExtension
			}
		case ProtoFragment:
			hlen = 8
			if sawFragment { // RFC 8200 §4.1: each header at most once; Info holds one fragment
				return BadFragment
			}
		}
		if off+hlen-IPv6HeaderLen > MaxExtensionBytes {
			return ExtensionsTooLong
		}
		if limit-off < hlen {
			return cut
		}
		i.Extensions++
		if nh == ProtoFragment {
			fo := binary.BigEndian.Uint16(pkt[off+2 : off+4])
			more := fo&1 != 0
			i.FragOffset = fo >> 3
			i.FragID = binary.BigEndian.Uint32(pkt[off+4 : off+8])
			sawFragment = true
			// data is this fragment's share of the fragmentable part; the reassembled payload
			// is the per-fragment headers before this one, the offset, and data (§4.5).
			data := end - (off + hlen)
			if more && data%8 != 0 || off-IPv6HeaderLen+int(i.FragOffset)*8+data > 65535 {
				return BadFragment
			}
			switch {
			case i.FragOffset != 0:
				i.Frag, i.Proto = LaterFragment, pkt[off]
				return OK
			case more:
				i.Frag = FirstFragment
				cut = ChainNotInFirstFragment
				if embedded {
					cut = Truncated
				}
			}
		}
		nh = pkt[off]
		off += hlen
	}
}

// minUpperLayer is how many bytes of an upper-layer header a first fragment must hold: the
// fixed header of the protocols the packet path reads (TCP 20, RFC 9293 §3.1; UDP 8; ICMPv6 8,
// its type, code, checksum and the 4 bytes every message has, RFC 4443 §2.1; ESP's SPI and
// sequence number, RFC 4303 §2). An embedded packet needs 8 whatever it is: the ports.
func minUpperLayer(proto uint8, embedded bool) int {
	if embedded {
		if proto == ProtoNoNext {
			return 0
		}
		return 8
	}
	switch proto {
	case ProtoTCP:
		return 20
	case ProtoUDP, ProtoICMPv6, ProtoESP:
		return 8
	}
	return 0
}
