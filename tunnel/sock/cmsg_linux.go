package sock

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmsgRoom is the control-message room of one message, each control message a cmsghdr (16
// bytes) and its data padded to the word size: on receive a packet-info message (IP_PKTINFO, 32
// bytes; IPV6_PKTINFO, 40: struct in6_pktinfo is 20 bytes) and UDP_GRO (24); on send the same
// packet-info message and UDP_SEGMENT (24). The IPv6 pair fills it exactly; a test holds it to
// that (TestCmsgRoom). A kernel with more to say than the room holds cuts the rest off
// (MSG_CTRUNC), which parseCmsgs reads as absent.
const cmsgRoom = 64

// Control messages are read and written by copying through local, properly aligned structs: the
// byte slices they live in promise no alignment, and the race detector's pointer checks would
// (rightly) refuse a cast.

// putCmsg writes one control message (struct cmsghdr, then data, padded) at the start of b and
// returns how many bytes it used.
//
//	cmsg_len (size_t) | cmsg_level (int) | cmsg_type (int) | data ... | padding to the word size
func putCmsg(b []byte, level, typ int32, data []byte) int {
	n := unix.CmsgSpace(len(data))
	clear(b[:n])
	h := unix.Cmsghdr{Level: level, Type: typ}
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(&h)), unix.SizeofCmsghdr))
	copy(b[unix.CmsgLen(0):], data)
	return n
}

// putSendCmsgs writes the control messages of one send into b and returns their length: a
// packet-info message naming the source address (when src is valid: IP_PKTINFO for an IPv4
// src, IPV6_PKTINFO for an IPv6 one; the caller has checked that it is the socket's family) and
// a UDP_SEGMENT with the GSO segment size (when seg > 0). b must hold cmsgRoom bytes.
func putSendCmsgs(b []byte, src netip.Addr, seg int) int {
	n := 0
	switch {
	case src.Is4():
		// struct in_pktinfo { ifindex; spec_dst; addr }: on send, spec_dst is the source address
		// and ifindex 0 lets routing pick the device (ip(7)).
		info := unix.Inet4Pktinfo{Spec_dst: src.As4()}
		n += putCmsg(b[n:], unix.IPPROTO_IP, unix.IP_PKTINFO,
			unsafe.Slice((*byte)(unsafe.Pointer(&info)), unix.SizeofInet4Pktinfo))
	case src.Is6():
		// struct in6_pktinfo { addr; ifindex }: on send, addr is the source address and ifindex
		// 0 lets routing pick the device (ipv6(7), RFC 3542 §6.1).
		info := unix.Inet6Pktinfo{Addr: src.As16()}
		n += putCmsg(b[n:], unix.IPPROTO_IPV6, unix.IPV6_PKTINFO,
			unsafe.Slice((*byte)(unsafe.Pointer(&info)), unix.SizeofInet6Pktinfo))
	}
	if seg > 0 {
		var size [2]byte // UDP_SEGMENT carries a __u16 (udp(7))
		binary.NativeEndian.PutUint16(size[:], uint16(seg))
		n += putCmsg(b[n:], unix.SOL_UDP, unix.UDP_SEGMENT, size[:])
	}
	return n
}

// parseCmsgs reads, without allocating, the control messages a receive asks for: the
// destination address of the datagram (IP_PKTINFO: struct in_pktinfo's addr, the address in the
// IP header, which is the one the client dialled; IPV6_PKTINFO: struct in6_pktinfo's addr,
// unmapped) and the segment size of a GRO-coalesced read (UDP_GRO: an int). Anything else, and
// anything malformed, is skipped; a message that claims more bytes than there are ends the walk,
// so the walk is bounded by len(oob) whatever the bytes say.
func parseCmsgs(oob []byte) (dst netip.Addr, groSize int) {
	hdrLen := unix.CmsgLen(0)
	for len(oob) >= unix.SizeofCmsghdr {
		var h unix.Cmsghdr
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&h)), unix.SizeofCmsghdr), oob)
		n := int(h.Len)
		if n < hdrLen || n > len(oob) {
			break
		}
		data := oob[hdrLen:n]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			var info unix.Inet4Pktinfo
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&info)), unix.SizeofInet4Pktinfo), data)
			dst = netip.AddrFrom4(info.Addr)
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			var info unix.Inet6Pktinfo
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&info)), unix.SizeofInet6Pktinfo), data)
			dst = netip.AddrFrom16(info.Addr).Unmap()
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 4:
			groSize = int(int32(binary.NativeEndian.Uint32(data)))
		}
		next := unix.CmsgSpace(n - hdrLen)
		if next >= len(oob) {
			break
		}
		oob = oob[next:]
	}
	return dst, groSize
}
