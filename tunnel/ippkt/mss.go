package ippkt

import (
	"encoding/binary"
	"math/bits"
)

// TCP header fields (RFC 9293 §3.1) and the MSS option (§3.2: kind 2, length 4, 16-bit value).
const (
	tcpMinLen   = 20
	tcpDataOff  = 12
	tcpFlags    = 13
	tcpChecksum = 16
	tcpSYN      = 0x02
)

// ClampMSS lowers the MSS option of a TCP SYN (of either family, after IPv4 options or IPv6
// extension headers) to mss, so tunnelled segments plus the tunnel's own headers fit the path
// without fragmentation; it rewrites in place, updates the TCP checksum incrementally, and
// reports whether it changed anything. Anything else (another protocol, a later fragment, no
// SYN, no MSS option or one already at most mss, malformed options) passes untouched. An IPv6
// segment carries 20 bytes more of IP header than an IPv4 one, so its mss is 20 lower.
func ClampMSS(pkt []byte, info *Info, mss uint16) bool {
	if info.Proto != ProtoTCP || info.Transport == 0 || info.End > len(pkt) || info.End-info.Transport < tcpMinLen {
		return false
	}
	tcp := pkt[info.Transport:info.End]
	if tcp[tcpFlags]&tcpSYN == 0 {
		return false
	}
	doff := int(tcp[tcpDataOff]>>4) * 4
	if doff < tcpMinLen || len(tcp) < doff {
		return false
	}
	for i := tcpMinLen; i < doff; {
		switch tcp[i] {
		case 0: // end of option list
			return false
		case 1: // no-operation
			i++
			continue
		}
		if i+1 >= doff || tcp[i+1] < 2 || i+int(tcp[i+1]) > doff {
			return false
		}
		if tcp[i] == 2 && tcp[i+1] == 4 {
			at := i + 2
			old := binary.BigEndian.Uint16(tcp[at:])
			if old <= mss {
				return false
			}
			binary.BigEndian.PutUint16(tcp[at:], mss)
			o, n := old, mss
			if at%2 == 1 { // after a single no-op, say: the value straddles two words
				o, n = bits.ReverseBytes16(o), bits.ReverseBytes16(n)
			}
			binary.BigEndian.PutUint16(tcp[tcpChecksum:], Update16(binary.BigEndian.Uint16(tcp[tcpChecksum:]), o, n))
			return true
		}
		i += int(tcp[i+1])
	}
	return false
}

// ClampMSS6 parses pkt as IPv6 and clamps the MSS of a TCP SYN in it (see ClampMSS).
func ClampMSS6(pkt []byte, mss uint16) bool {
	info, r := Parse(pkt)
	if r != OK || info.Version != 6 {
		return false
	}
	return ClampMSS(pkt, &info, mss)
}
