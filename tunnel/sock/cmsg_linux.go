package sock

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmsgRoom is the control-message room of one message: on receive IP_PKTINFO (32 bytes) and
// UDP_GRO (24), on send IP_PKTINFO and UDP_SEGMENT (24), each a cmsghdr padded to the word size.
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

// putSendCmsgs writes the control messages of one send into b and returns their length: an
// IP_PKTINFO naming the source address (when src is valid) and a UDP_SEGMENT with the GSO
// segment size (when seg > 0). b must hold cmsgRoom bytes.
func putSendCmsgs(b []byte, src netip.Addr, seg int) int {
	n := 0
	if src.IsValid() {
		// struct in_pktinfo { ifindex; spec_dst; addr }: on send, spec_dst is the source address
		// and ifindex 0 lets routing pick the device (ip(7)).
		info := unix.Inet4Pktinfo{Spec_dst: src.As4()}
		n += putCmsg(b[n:], unix.IPPROTO_IP, unix.IP_PKTINFO,
			unsafe.Slice((*byte)(unsafe.Pointer(&info)), unix.SizeofInet4Pktinfo))
	}
	if seg > 0 {
		var size [2]byte // UDP_SEGMENT carries a __u16 (udp(7))
		binary.NativeEndian.PutUint16(size[:], uint16(seg))
		n += putCmsg(b[n:], unix.SOL_UDP, unix.UDP_SEGMENT, size[:])
	}
	return n
}

// parseCmsgs reads, without allocating, the two control messages a receive asks for: the
// destination address of the datagram (IP_PKTINFO: struct in_pktinfo's addr, the address in the
// IP header, which is the one the client dialled) and the segment size of a GRO-coalesced read
// (UDP_GRO: an int). Anything else, and anything malformed, is skipped.
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
