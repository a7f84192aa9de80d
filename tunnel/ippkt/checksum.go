package ippkt

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// The Internet checksum (RFC 1071) is the ones' complement of the ones' complement sum of the
// covered data as big-endian 16-bit words. Sums here are kept unfolded in a uint32 so pieces
// can be added up (pseudo-header, header, payload) and folded once. Every piece but the last
// must have an even length: an odd last byte is padded with a zero byte.

// Sum adds b to the partial sum sum and returns the new partial sum.
func Sum(b []byte, sum uint32) uint32 {
	// 32-bit words: 2^16 ≡ 1 (mod 0xffff), so a 32-bit word adds the same as its two halves,
	// and 2^32 ≡ 1 lets the 64-bit total fold back to 32 bits.
	s := uint64(sum)
	for len(b) >= 16 {
		s += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:])) +
			uint64(binary.BigEndian.Uint32(b[8:])) + uint64(binary.BigEndian.Uint32(b[12:]))
		b = b[16:]
	}
	for len(b) >= 4 {
		s += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	s = s&0xffffffff + s>>32
	s = s&0xffffffff + s>>32
	return uint32(s)
}

// Fold folds a partial sum to 16 bits with end-around carry.
func Fold(sum uint32) uint16 {
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	return uint16(sum)
}

// Checksum returns the checksum of b added to the partial sum sum: the value to store in a
// zeroed checksum field. Over data that holds its own valid checksum it returns 0.
func Checksum(b []byte, sum uint32) uint16 {
	return ^Fold(Sum(b, sum))
}

// PseudoSum6 is the partial sum of the IPv6 pseudo-header (RFC 8200 §8.1):
//
//	| Source (16) | Destination (16) | Upper-Layer Packet Length (4) | zero (3) | Next Header (1) |
//
// length is the upper-layer header plus data; proto is the upper-layer protocol, not the
// first Next Header.
func PseudoSum6(src, dst netip.Addr, proto uint8, length int) uint32 {
	s, d := src.As16(), dst.As16()
	sum := Sum(s[:], 0)
	sum = Sum(d[:], sum)
	return addCarry(sum, uint32(length>>16)+uint32(length&0xffff)+uint32(proto))
}

// PseudoSum4 is the partial sum of the IPv4 pseudo-header of TCP and UDP (RFC 9293 §3.1,
// RFC 768): source, destination, zero, protocol, length.
func PseudoSum4(src, dst netip.Addr, proto uint8, length int) uint32 {
	s, d := src.As4(), dst.As4()
	sum := Sum(s[:], 0)
	sum = Sum(d[:], sum)
	return addCarry(sum, uint32(length&0xffff)+uint32(proto))
}

// PseudoSum is the pseudo-header sum of the upper-layer packet of a parsed packet, of either
// family; Info.End-Info.Transport is its length.
func PseudoSum(i *Info) uint32 {
	if i.Version == 6 {
		return PseudoSum6(i.Src, i.Dst, i.Proto, i.End-i.Transport)
	}
	return PseudoSum4(i.Src, i.Dst, i.Proto, i.End-i.Transport)
}

// addCarry adds without losing a carry out of 32 bits.
func addCarry(a, b uint32) uint32 {
	s, c := bits.Add32(a, b, 0)
	return s + c
}

// Update16 returns checksum check updated for one 16-bit word of the covered data changing
// from old to new (RFC 1624 §3, eqn. 3: HC' = ~(~HC + ~m + m')). The word must start at an
// even offset of the covered data; for one at an odd offset, pass both values byte-swapped
// (bits.ReverseBytes16): its bytes fall in two words, high byte low and low byte high.
func Update16(check, old, new uint16) uint16 {
	s := uint32(^check) + uint32(^old) + uint32(new)
	return ^Fold(s)
}

// Update32 is Update16 for a 32-bit field at an even offset.
func Update32(check uint16, old, new uint32) uint16 {
	return Update16(Update16(check, uint16(old>>16), uint16(new>>16)), uint16(old), uint16(new))
}

// UpdateAddr is Update16 for an address changing from old to new, both of one family (an
// IPv6 address in a pseudo-header or a packet, an IPv4 one likewise).
func UpdateAddr(check uint16, old, new netip.Addr) uint16 {
	if old.Is4() && new.Is4() {
		o, n := old.As4(), new.As4()
		return Update32(check, binary.BigEndian.Uint32(o[:]), binary.BigEndian.Uint32(n[:]))
	}
	o, n := old.As16(), new.As16()
	for k := 0; k < 16; k += 4 {
		check = Update32(check, binary.BigEndian.Uint32(o[k:]), binary.BigEndian.Uint32(n[k:]))
	}
	return check
}
