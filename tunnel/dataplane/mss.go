package dataplane

import (
	"encoding/binary"
	"math/bits"
)

// clampMSS lowers the MSS option of an IPv4 TCP SYN to mss, so tunnelled TCP segments plus the
// tunnel's own headers still fit the path without fragmentation. It rewrites in place and fixes
// the TCP checksum incrementally; anything else passes untouched.
func clampMSS(pkt []byte, mss uint16) {
	if len(pkt) < 20 || pkt[9] != 6 { // protocol TCP
		return
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < 20 || len(pkt) < ihl+20 || binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
		return // not a first fragment
	}
	tcp := pkt[ihl:]
	if tcp[13]&0x02 == 0 { // SYN
		return
	}
	doff := int(tcp[12]>>4) * 4
	if doff < 20 || len(tcp) < doff {
		return
	}
	opts := tcp[20:doff]
	for i := 0; i < len(opts); {
		switch kind := opts[i]; kind {
		case 0: // end of options
			return
		case 1: // no-op
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return
		}
		if opts[i] == 2 && opts[i+1] == 4 {
			old := binary.BigEndian.Uint16(opts[i+2:])
			if old <= mss {
				return
			}
			binary.BigEndian.PutUint16(opts[i+2:], mss)
			// RFC 1624 incremental update: HC' = ~(~HC + ~m + m'). The checksum sums 16-bit
			// words from the TCP header's start; a value at an odd offset (a single no-op or
			// a window scale option before it) straddles two words, so its bytes count
			// swapped.
			o, m := old, mss
			if (20+i+2)%2 == 1 {
				o, m = bits.ReverseBytes16(o), bits.ReverseBytes16(m)
			}
			sum := uint32(^binary.BigEndian.Uint16(tcp[16:18])) + uint32(^o) + uint32(m)
			sum = (sum & 0xffff) + (sum >> 16)
			sum = (sum & 0xffff) + (sum >> 16)
			binary.BigEndian.PutUint16(tcp[16:18], ^uint16(sum))
			return
		}
		i += int(opts[i+1])
	}
}
