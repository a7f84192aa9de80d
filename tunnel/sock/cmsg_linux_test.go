package sock

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// recvCmsgs builds what the kernel writes for a receive: an IP_PKTINFO whose addr is dst (the
// header's destination) and, when gro > 0, a UDP_GRO with the segment size.
func recvCmsgs(dst netip.Addr, gro int) []byte {
	b := make([]byte, cmsgRoom)
	info := unix.Inet4Pktinfo{Ifindex: 7, Spec_dst: [4]byte{192, 0, 2, 99}, Addr: dst.As4()}
	n := putCmsg(b, unix.IPPROTO_IP, unix.IP_PKTINFO, unsafe.Slice((*byte)(unsafe.Pointer(&info)), unix.SizeofInet4Pktinfo))
	if gro > 0 {
		var size [4]byte
		binary.NativeEndian.PutUint32(size[:], uint32(gro))
		n += putCmsg(b[n:], unix.SOL_UDP, unix.UDP_GRO, size[:])
	}
	return b[:n]
}

func TestParseCmsgs(t *testing.T) {
	dst := netip.MustParseAddr("10.1.2.3")
	oob := recvCmsgs(dst, 1400)
	if len(oob) != 56 {
		t.Fatalf("%d bytes of control messages, want 32 + 24", len(oob))
	}
	if d, seg := parseCmsgs(oob); d != dst || seg != 1400 {
		t.Fatalf("parsed %v and %d, want %v and 1400 (addr, not spec_dst)", d, seg, dst)
	}
	// A message cut short is ignored, and so is everything after it.
	for cut := range len(oob) {
		d, seg := parseCmsgs(oob[:cut])
		if (d.IsValid() && (cut < 28 || d != dst)) || (seg != 0 && (cut < 52 || seg != 1400)) {
			t.Fatalf("cut at %d: parsed %v and %d", cut, d, seg)
		}
	}
	if d, seg := parseCmsgs(nil); d.IsValid() || seg != 0 {
		t.Fatalf("no control messages: %v %d", d, seg)
	}
}

// The send side writes the layout the kernel reads: cmsghdr {len, level, type} then the data.
func TestPutSendCmsgs(t *testing.T) {
	b := make([]byte, cmsgRoom)
	for i := range b {
		b[i] = 0xff // putCmsg must clear what it does not set
	}
	n := putSendCmsgs(b, netip.MustParseAddr("10.1.2.3"), 1300)
	if n != 32+24 {
		t.Fatalf("%d bytes, want 56", n)
	}
	var h unix.Cmsghdr
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&h)), unix.SizeofCmsghdr), b)
	if h.Level != unix.IPPROTO_IP || h.Type != unix.IP_PKTINFO || int(h.Len) != unix.CmsgLen(12) {
		t.Fatalf("first header %+v", h)
	}
	var info unix.Inet4Pktinfo
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&info)), 12), b[16:])
	if info.Spec_dst != [4]byte{10, 1, 2, 3} || info.Ifindex != 0 || info.Addr != [4]byte{} {
		t.Fatalf("in_pktinfo %+v: want spec_dst 10.1.2.3, the rest zero", info)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&h)), unix.SizeofCmsghdr), b[32:])
	if h.Level != unix.SOL_UDP || h.Type != unix.UDP_SEGMENT || int(h.Len) != unix.CmsgLen(2) {
		t.Fatalf("second header %+v", h)
	}
	if seg := binary.NativeEndian.Uint16(b[48:]); seg != 1300 || b[50] != 0 {
		t.Fatalf("segment %d, padding %x", seg, b[50:56])
	}
	if n := putSendCmsgs(b, netip.Addr{}, 0); n != 0 {
		t.Fatalf("no source and no segment: %d bytes", n)
	}
}

// parseCmsgs reads bytes the kernel wrote, but it must not trust them: any input returns, and a
// well-formed prefix is read the same whatever follows it.
func FuzzParseCmsgs(f *testing.F) {
	f.Add([]byte{}, uint32(0x0a000001), int32(1400))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 8, 0, 0, 0}, uint32(0), int32(0))
	f.Fuzz(func(t *testing.T, junk []byte, dst uint32, gro int32) {
		parseCmsgs(junk)
		addr := netip.AddrFrom4([4]byte{byte(dst >> 24), byte(dst >> 16), byte(dst >> 8), byte(dst)})
		oob := append(recvCmsgs(addr, int(max(gro, 0))), junk...)
		d, seg := parseCmsgs(oob)
		jd, jseg := parseCmsgs(junk)
		if d != addr && d != jd {
			t.Fatalf("destination %v, want %v or what the junk says (%v)", d, addr, jd)
		}
		if gro > 0 && seg != int(gro) && seg != jseg {
			t.Fatalf("segment %d, want %d or what the junk says (%d)", seg, gro, jseg)
		}
	})
}
