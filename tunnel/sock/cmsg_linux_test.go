package sock

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// recvCmsgs builds what the kernel writes for a receive: an IP_PKTINFO (IPV6_PKTINFO for an
// IPv6 dst) whose addr is dst (the header's destination) and, when gro > 0, a UDP_GRO with the
// segment size.
func recvCmsgs(dst netip.Addr, gro int) []byte {
	b := make([]byte, cmsgRoom)
	var n int
	if dst.Is4() {
		info := unix.Inet4Pktinfo{Ifindex: 7, Spec_dst: [4]byte{192, 0, 2, 99}, Addr: dst.As4()}
		n = putCmsg(b, unix.IPPROTO_IP, unix.IP_PKTINFO, unsafe.Slice((*byte)(unsafe.Pointer(&info)), unix.SizeofInet4Pktinfo))
	} else {
		info := unix.Inet6Pktinfo{Addr: dst.As16(), Ifindex: 7}
		n = putCmsg(b, unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, unsafe.Slice((*byte)(unsafe.Pointer(&info)), unix.SizeofInet6Pktinfo))
	}
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

// TestParseCmsgsIPv6: IPV6_PKTINFO's addr is the destination (an IPv4-mapped one unmapped), and
// a cut-short message is ignored as in IPv4.
func TestParseCmsgsIPv6(t *testing.T) {
	dst := netip.MustParseAddr("2001:db8::7")
	oob := recvCmsgs(dst, 1280)
	if len(oob) != cmsgRoom {
		t.Fatalf("%d bytes of control messages, want 40 + 24", len(oob))
	}
	if d, seg := parseCmsgs(oob); d != dst || seg != 1280 {
		t.Fatalf("parsed %v and %d, want %v and 1280", d, seg, dst)
	}
	for cut := range len(oob) {
		d, seg := parseCmsgs(oob[:cut])
		if (d.IsValid() && (cut < 36 || d != dst)) || (seg != 0 && (cut < 60 || seg != 1280)) {
			t.Fatalf("cut at %d: parsed %v and %d", cut, d, seg)
		}
	}
	mapped := netip.AddrFrom16(netip.MustParseAddr("192.0.2.1").As16())
	if d, _ := parseCmsgs(recvCmsgs(mapped, 0)); d != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("mapped destination parsed as %v", d)
	}
	// An IPV6_PKTINFO too short for struct in6_pktinfo is skipped, not read past its end.
	short := make([]byte, cmsgRoom)
	n := putCmsg(short, unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, make([]byte, unix.SizeofInet6Pktinfo-1))
	if d, _ := parseCmsgs(short[:n]); d.IsValid() {
		t.Fatalf("a short IPV6_PKTINFO parsed as %v", d)
	}
}

// TestCmsgRoom: the room of a message holds the largest set of control messages either family
// sends or asks the kernel for.
func TestCmsgRoom(t *testing.T) {
	recv6 := unix.CmsgSpace(unix.SizeofInet6Pktinfo) + unix.CmsgSpace(4)
	send6 := unix.CmsgSpace(unix.SizeofInet6Pktinfo) + unix.CmsgSpace(2)
	recv4 := unix.CmsgSpace(unix.SizeofInet4Pktinfo) + unix.CmsgSpace(4)
	if m := max(recv6, send6, recv4); m > cmsgRoom {
		t.Fatalf("control messages of %d bytes, room for %d", m, cmsgRoom)
	}
	b := make([]byte, cmsgRoom)
	if n := putSendCmsgs(b, netip.MustParseAddr("2001:db8::1"), 1280); n != send6 {
		t.Fatalf("IPv6 send control messages of %d bytes, want %d", n, send6)
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

// TestPutSendCmsgsIPv6: the source goes in struct in6_pktinfo's addr, the ifindex 0.
func TestPutSendCmsgsIPv6(t *testing.T) {
	b := make([]byte, cmsgRoom)
	for i := range b {
		b[i] = 0xff
	}
	src := netip.MustParseAddr("2001:db8::2")
	n := putSendCmsgs(b, src, 1300)
	if n != 40+24 {
		t.Fatalf("%d bytes, want 64", n)
	}
	var h unix.Cmsghdr
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&h)), unix.SizeofCmsghdr), b)
	if h.Level != unix.IPPROTO_IPV6 || h.Type != unix.IPV6_PKTINFO || int(h.Len) != unix.CmsgLen(unix.SizeofInet6Pktinfo) {
		t.Fatalf("first header %+v", h)
	}
	var info unix.Inet6Pktinfo
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&info)), unix.SizeofInet6Pktinfo), b[16:])
	if info.Addr != src.As16() || info.Ifindex != 0 {
		t.Fatalf("in6_pktinfo %+v: want addr %v, ifindex 0", info, src)
	}
	if b[36] != 0 || b[39] != 0 {
		t.Fatalf("padding %x", b[36:40])
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&h)), unix.SizeofCmsghdr), b[40:])
	if h.Level != unix.SOL_UDP || h.Type != unix.UDP_SEGMENT || binary.NativeEndian.Uint16(b[56:]) != 1300 {
		t.Fatalf("second header %+v, segment %d", h, binary.NativeEndian.Uint16(b[56:]))
	}
	// The parser reads what the builder wrote (the send layout is the receive layout).
	if d, _ := parseCmsgs(b[:n]); d != src {
		t.Fatalf("round trip: %v", d)
	}
}

// parseCmsgs reads bytes the kernel wrote, but it must not trust them: any input returns, and a
// well-formed prefix is read the same whatever follows it.
func FuzzParseCmsgs(f *testing.F) {
	f.Add([]byte{}, []byte{10, 0, 0, 1}, int32(1400))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 8, 0, 0, 0}, []byte{}, int32(0))
	f.Add([]byte{}, []byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}, int32(1280))
	f.Add([]byte{0x24, 0, 0, 0, 0, 0, 0, 0, 41, 0, 0, 0, 50, 0, 0, 0}, []byte{0, 0, 0, 0}, int32(0))
	f.Fuzz(func(t *testing.T, junk, dst []byte, gro int32) {
		parseCmsgs(junk)
		// A 16-byte dst is an IPv6 destination (IPV6_PKTINFO; a mapped one reads back unmapped),
		// anything else an IPv4 one from its first 4 bytes.
		var addr netip.Addr
		if len(dst) == 16 {
			addr = netip.AddrFrom16([16]byte(dst))
		} else {
			var a4 [4]byte
			copy(a4[:], dst)
			addr = netip.AddrFrom4(a4)
		}
		oob := append(recvCmsgs(addr, int(max(gro, 0))), junk...)
		d, seg := parseCmsgs(oob)
		jd, jseg := parseCmsgs(junk)
		if d != addr.Unmap() && d != jd {
			t.Fatalf("destination %v, want %v or what the junk says (%v)", d, addr, jd)
		}
		if gro > 0 && seg != int(gro) && seg != jseg {
			t.Fatalf("segment %d, want %d or what the junk says (%d)", seg, gro, jseg)
		}
	})
}

// TestNames: a slot's sockaddr round-trips in both families, reads back unmapped, and a name
// shorter than its family's sockaddr (or of another family) reads as no address.
func TestNames(t *testing.T) {
	for _, tc := range []struct {
		ap      string
		v6      bool
		wantLen uint32
	}{
		{"192.0.2.1:1194", false, unix.SizeofSockaddrInet4},
		{"[2001:db8::1]:443", true, unix.SizeofSockaddrInet6},
		{"[::1]:65535", true, unix.SizeofSockaddrInet6},
	} {
		ap := netip.MustParseAddrPort(tc.ap)
		var sa unix.RawSockaddrInet6
		sa.Scope_id = 99 // putName must clear what it does not set
		n := putName(&sa, ap, tc.v6)
		if n != tc.wantLen || readName(&sa, n) != ap {
			t.Errorf("%v: length %d, read back %v", ap, n, readName(&sa, n))
		}
		if got := readName(&sa, n-1); got.IsValid() {
			t.Errorf("%v cut short read as %v", ap, got)
		}
	}
	var sa unix.RawSockaddrInet6
	putName(&sa, netip.MustParseAddrPort("[::ffff:192.0.2.1]:53"), true)
	if got := readName(&sa, unix.SizeofSockaddrInet6); got != netip.MustParseAddrPort("192.0.2.1:53") {
		t.Errorf("a mapped sender read as %v, want it unmapped", got)
	}
	sa.Family = unix.AF_UNIX
	if got := readName(&sa, unix.SizeofSockaddrInet6); got.IsValid() {
		t.Errorf("an AF_UNIX name read as %v", got)
	}
}
