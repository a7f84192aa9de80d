package sock

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// family is what a test needs of one address family.
type family struct {
	name     string     // the subtest's name
	lo, any  netip.Addr // the loopback and the unspecified address
	udp, tcp string     // package net's network names
}

var (
	ipv4 = family{"IPv4", netip.MustParseAddr("127.0.0.1"), netip.IPv4Unspecified(), "udp4", "tcp4"}
	ipv6 = family{"IPv6", netip.IPv6Loopback(), netip.IPv6Unspecified(), "udp6", "tcp6"}
)

// lo0 and any0 are the loopback and the unspecified address with port 0.
func (f family) lo0() string  { return netip.AddrPortFrom(f.lo, 0).String() }
func (f family) any0() string { return netip.AddrPortFrom(f.any, 0).String() }

// forFamilies runs test once over IPv4 and once over IPv6 sockets: every behaviour of a listener
// is the same in both families.
func forFamilies(t *testing.T, test func(t *testing.T, f family)) {
	for _, f := range []family{ipv4, ipv6} {
		t.Run(f.name, func(t *testing.T) { test(t, f) })
	}
}

func listen(t *testing.T, ap string) *udpConn {
	t.Helper()
	c, err := Host.ListenUDP(netip.MustParseAddrPort(ap))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*udpConn)
}

// setGRO turns UDP GRO on a test socket on or off, so that a test sees either the datagrams the
// sender cut or the kernel's coalesced reads.
func setGRO(t *testing.T, c *udpConn, on bool) {
	t.Helper()
	v := 0
	if on {
		v = 1
	}
	if err := unix.SetsockoptInt(c.fd, unix.IPPROTO_UDP, unix.UDP_GRO, v); err != nil {
		t.Fatal(err)
	}
}

// datagram is what a test reads: one datagram, split out of a GRO read if need be.
type datagram struct {
	data  []byte
	from  netip.AddrPort
	local netip.Addr
}

// readN reads until want datagrams arrived, splitting GRO reads, and fails after 5 s.
func readN(t *testing.T, c Conn, want int) []datagram {
	t.Helper()
	msgs := make([]Message, 8)
	for i := range msgs {
		msgs[i].Buf = make([]byte, 65536)
	}
	var got []datagram
	timer := time.AfterFunc(5*time.Second, func() { c.Close() })
	defer timer.Stop()
	for len(got) < want {
		n, err := c.ReadBatch(msgs)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), want, err)
		}
		for _, m := range msgs[:n] {
			for _, d := range split(m) {
				got = append(got, datagram{bytes.Clone(d), m.Addr, m.Local})
			}
		}
	}
	return got
}

// split returns the datagrams of a read.
func split(m Message) [][]byte {
	data := m.Buf[:m.N]
	if m.Segment == 0 {
		return [][]byte{data}
	}
	var out [][]byte
	for len(data) > 0 {
		k := min(m.Segment, len(data))
		out = append(out, data[:k])
		data = data[k:]
	}
	return out
}

func sizes(ds []datagram) []int {
	var out []int
	for _, d := range ds {
		out = append(out, len(d.data))
	}
	return out
}

func TestBatchRoundTrip(t *testing.T) { forFamilies(t, testBatchRoundTrip) }

func testBatchRoundTrip(t *testing.T, f family) {
	a := listen(t, f.lo0())
	b := listen(t, f.lo0())
	if a.LocalAddr().Port() == 0 || a.LocalAddr().Addr() != f.lo {
		t.Fatalf("local address %v: want %v and the kernel's port", a.LocalAddr(), f.lo)
	}
	var out []Message
	for i := range 5 {
		out = append(out, Message{Buf: bytes.Repeat([]byte{byte(i + 1)}, 100*(i+1)), Addr: b.LocalAddr()})
	}
	if n, err := a.WriteBatch(out); n != 5 || err != nil {
		t.Fatalf("WriteBatch: %d, %v; want 5, nil", n, err)
	}
	got := readN(t, b, 5)
	for i, d := range got {
		if d.from != a.LocalAddr() || d.local != b.LocalAddr().Addr() {
			t.Errorf("datagram %d from %v to %v, want from %v to %v", i, d.from, d.local, a.LocalAddr(), b.LocalAddr().Addr())
		}
		if !bytes.Equal(d.data, out[i].Buf) {
			t.Errorf("datagram %d: %d bytes of %d, want %d bytes of %d", i, len(d.data), d.data[0], len(out[i].Buf), out[i].Buf[0])
		}
	}
}

// More messages than a batch holds go out in several sendmmsg calls, in order.
func TestWriteBatchLongerThanMaxBatch(t *testing.T) { forFamilies(t, testWriteBatchLongerThanMaxBatch) }

func testWriteBatchLongerThanMaxBatch(t *testing.T, f family) {
	a := listen(t, f.lo0())
	b := listen(t, f.lo0())
	out := make([]Message, 3*MaxBatch+5)
	for i := range out {
		out[i] = Message{Buf: []byte{byte(i), byte(i >> 8)}, Addr: b.LocalAddr()}
	}
	if n, err := a.WriteBatch(out); n != len(out) || err != nil {
		t.Fatalf("WriteBatch: %d, %v; want %d, nil", n, err, len(out))
	}
	for i, d := range readN(t, b, len(out)) {
		if !bytes.Equal(d.data, out[i].Buf) {
			t.Fatalf("datagram %d is %x, want %x", i, d.data, out[i].Buf)
		}
	}
}

// A socket on the unspecified address learns each datagram's destination (IP_PKTINFO) and answers
// from it, on both send paths (one message, and a batch).
func TestPktinfoReply(t *testing.T) {
	srv := listen(t, "0.0.0.0:0")
	peer := listen(t, "127.0.0.1:0")
	testPktinfoReply(t, srv, peer, netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1"))
}

// TestPktinfoReplyIPv6 is TestPktinfoReply over IPv6 (IPV6_RECVPKTINFO and IPV6_PKTINFO), in a
// network namespace of its own whose loopback has two more addresses, since the host's has ::1
// alone: the client at fd00::1 dials fd00::2, and the replies must come from fd00::2 although the
// kernel would choose fd00::1 (the same address as the destination's, RFC 6724 rule 1).
func TestPktinfoReplyIPv6(t *testing.T) {
	one, two := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	inNetnsWith(t, one, two)
	srv := listen(t, "[::]:0")
	peer := listen(t, netip.AddrPortFrom(one, 0).String())
	testPktinfoReply(t, srv, peer, two, one)
}

// testPktinfoReply: peer sends to the address to on srv's port; srv must report to as the
// datagram's local address and reply from it when asked to, and from chosen (the kernel's
// choice) when not.
func testPktinfoReply(t *testing.T, srv, peer *udpConn, to, chosen netip.Addr) {
	t.Helper()
	if !srv.pktinfo {
		t.Fatal("a socket on the unspecified address without packet info")
	}
	dst := netip.AddrPortFrom(to, srv.LocalAddr().Port())
	if _, err := peer.WriteBatch([]Message{{Buf: []byte("hello"), Addr: dst}}); err != nil {
		t.Fatal(err)
	}
	req := readN(t, srv, 1)[0]
	if req.local != to || req.from != peer.LocalAddr() || string(req.data) != "hello" {
		t.Fatalf("read %q from %v to %v, want %q from %v to %v", req.data, req.from, req.local, "hello", peer.LocalAddr(), to)
	}
	if _, err := srv.WriteBatch([]Message{{Buf: []byte("one"), Addr: req.from, Local: req.local}}); err != nil {
		t.Fatal(err)
	}
	batch := []Message{
		{Buf: []byte("two"), Addr: req.from, Local: req.local},
		{Buf: []byte("three"), Addr: req.from, Local: req.local},
		{Buf: []byte("chosen"), Addr: req.from}, // no Local: the kernel picks
	}
	if n, err := srv.WriteBatch(batch); n != 3 || err != nil {
		t.Fatalf("WriteBatch: %d, %v", n, err)
	}
	want := map[string]netip.AddrPort{
		"one": dst, "two": dst, "three": dst,
		"chosen": netip.AddrPortFrom(chosen, dst.Port()),
	}
	for _, d := range readN(t, peer, 4) {
		if w, ok := want[string(d.data)]; !ok || d.from != w {
			t.Errorf("reply %q came from %v, want %v", d.data, d.from, w)
		}
	}
}

// TestPktinfoSourceIPv6 shows, on the host's own loopback (no root needed), that an IPv6 socket
// on :: reports ::1 as the destination and that its IPV6_PKTINFO reaches the kernel: a source
// the host does not have is refused (EINVAL, ipv6(7)) on both send paths, while ::1 is sent from.
func TestPktinfoSourceIPv6(t *testing.T) {
	srv := listen(t, "[::]:0")
	peer := listen(t, "[::1]:0")
	dst := netip.AddrPortFrom(netip.IPv6Loopback(), srv.LocalAddr().Port())
	if _, err := peer.WriteBatch([]Message{{Buf: []byte("hello"), Addr: dst}}); err != nil {
		t.Fatal(err)
	}
	req := readN(t, srv, 1)[0]
	if req.local != netip.IPv6Loopback() || req.from != peer.LocalAddr() {
		t.Fatalf("read from %v to %v, want from %v to ::1", req.from, req.local, peer.LocalAddr())
	}
	foreign := netip.MustParseAddr("2001:db8::99")
	if _, err := srv.WriteBatch([]Message{{Buf: []byte("x"), Addr: req.from, Local: foreign}}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("one message from %v: %v, want EINVAL", foreign, err)
	}
	batch := []Message{{Buf: []byte("x"), Addr: req.from, Local: foreign}, {Buf: []byte("ok"), Addr: req.from, Local: req.local}}
	if n, err := srv.WriteBatch(batch); n != 1 || !errors.Is(err, unix.EINVAL) {
		t.Fatalf("a batch from %v then ::1: %d, %v; want 1 and EINVAL", foreign, n, err)
	}
	if d := readN(t, peer, 1)[0]; string(d.data) != "ok" || d.from != dst {
		t.Fatalf("read %q from %v, want ok from %v", d.data, d.from, dst)
	}
}

// One message with Segment leaves as one datagram per segment (UDP GSO).
func TestGSOSend(t *testing.T) { forFamilies(t, testGSOSend) }

func testGSOSend(t *testing.T, f family) {
	a := listen(t, f.lo0())
	if !a.GSO() {
		t.Fatal("no UDP GSO (kernels since 4.18 have it)")
	}
	b := listen(t, f.lo0())
	setGRO(t, b, false)
	payload := segments(500, 3, 200)
	if n, err := a.WriteBatch([]Message{{Buf: payload, Addr: b.LocalAddr(), Segment: 500}}); n != 1 || err != nil {
		t.Fatalf("WriteBatch: %d, %v", n, err)
	}
	checkSegments(t, readN(t, b, 4), []int{500, 500, 500, 200})
}

// segments returns count segments of size bytes and a last one of tail bytes; each starts with
// its index.
func segments(size, count, tail int) []byte {
	p := make([]byte, size*count+tail)
	for i := range p {
		p[i] = byte(i / size)
	}
	return p
}

func checkSegments(t *testing.T, got []datagram, want []int) {
	t.Helper()
	if s := sizes(got); !slices.Equal(s, want) {
		t.Fatalf("datagrams of %v bytes, want %v", s, want)
	}
	for i, d := range got {
		if d.data[0] != byte(i) {
			t.Errorf("datagram %d starts with %d", i, d.data[0])
		}
	}
}

// A receiver with UDP GRO gets the segments of a GSO send as one read that reports the segment
// size.
func TestGROReadReportsSegment(t *testing.T) { forFamilies(t, testGROReadReportsSegment) }

func testGROReadReportsSegment(t *testing.T, f family) {
	a := listen(t, f.lo0())
	b := listen(t, f.lo0()) // GRO is on for Host listeners
	payload := segments(500, 3, 200)
	if _, err := a.WriteBatch([]Message{{Buf: payload, Addr: b.LocalAddr(), Segment: 500}}); err != nil {
		t.Fatal(err)
	}
	msgs := []Message{{Buf: make([]byte, 65536)}}
	n, err := b.ReadBatch(msgs)
	if err != nil || n != 1 {
		t.Fatalf("ReadBatch: %d, %v", n, err)
	}
	if m := msgs[0]; m.N != len(payload) || m.Segment != 500 || !bytes.Equal(m.Buf[:m.N], payload) {
		t.Fatalf("read %d bytes with segment %d, want %d bytes with segment 500", m.N, m.Segment, len(payload))
	}
}

// Without kernel GSO the Conn cuts segments itself, across sendmmsg calls when a message has more
// segments than a batch has slots, and keeps the order of the messages around it.
func TestUserspaceSegmentation(t *testing.T) { forFamilies(t, testUserspaceSegmentation) }

func testUserspaceSegmentation(t *testing.T, f family) {
	a := listen(t, f.lo0())
	b := listen(t, f.lo0())
	setGRO(t, b, false)
	a.gso.Store(false)
	big := segments(10, 2*MaxBatch+3, 5)
	out := []Message{
		{Buf: []byte{0xaa}, Addr: b.LocalAddr()},
		{Buf: big, Addr: b.LocalAddr(), Segment: 10},
		{Buf: []byte{0xbb, 0xbb}, Addr: b.LocalAddr(), Segment: 10}, // shorter than a segment: one datagram
	}
	if n, err := a.WriteBatch(out); n != 3 || err != nil {
		t.Fatalf("WriteBatch: %d, %v", n, err)
	}
	got := readN(t, b, 1+2*MaxBatch+4+1)
	if !bytes.Equal(got[0].data, out[0].Buf) || !bytes.Equal(got[len(got)-1].data, out[2].Buf) {
		t.Fatalf("first %x and last %x, want %x and %x", got[0].data, got[len(got)-1].data, out[0].Buf, out[2].Buf)
	}
	want := slices.Repeat([]int{10}, 2*MaxBatch+3)
	checkSegments(t, got[1:len(got)-1], append(want, 5))
}

// When the kernel refuses GSO (EIO), the message goes out segment by segment, the Conn stops
// asking for GSO, and the call says so once.
func TestGSORefused(t *testing.T) { forFamilies(t, testGSORefused) }

func testGSORefused(t *testing.T, f family) {
	a := listen(t, f.lo0())
	b := listen(t, f.lo0())
	setGRO(t, b, false)
	var refused int
	a.refuse = func(hdrs []unix.Mmsghdr) (int, unix.Errno) {
		for i := range hdrs {
			if hdrs[i].Hdr.Controllen > 0 { // the only control message here is UDP_SEGMENT
				if i == 0 {
					refused++
					return 0, unix.EIO
				}
				return i, 0
			}
		}
		return len(hdrs), 0
	}
	payload := segments(300, 2, 100)
	out := []Message{
		{Buf: []byte("before"), Addr: b.LocalAddr()},
		{Buf: payload, Addr: b.LocalAddr(), Segment: 300},
		{Buf: payload, Addr: b.LocalAddr(), Segment: 300},
	}
	n, err := a.WriteBatch(out)
	if n != 3 || !errors.Is(err, ErrGSO) || !errors.Is(err, unix.EIO) {
		t.Fatalf("WriteBatch: %d, %v; want 3 and ErrGSO", n, err)
	}
	if a.GSO() || refused != 1 {
		t.Fatalf("GSO() %v after %d refusals, want false after 1", a.GSO(), refused)
	}
	got := readN(t, b, 7)
	if string(got[0].data) != "before" {
		t.Fatalf("first datagram %q", got[0].data)
	}
	checkSegments(t, got[1:4], []int{300, 300, 100})
	checkSegments(t, got[4:7], []int{300, 300, 100})
	if n, err := a.WriteBatch(out[1:2]); n != 1 || err != nil {
		t.Fatalf("WriteBatch after the fallback: %d, %v; want 1, nil (ErrGSO is reported once)", n, err)
	}
	checkSegments(t, readN(t, b, 3), []int{300, 300, 100})
}

// A message the kernel or the checks refuse is skipped; the rest go, and the first error is
// returned. An address of the other family is refused by the checks, with an error naming it and
// the socket.
func TestWriteBatchSkipsRefused(t *testing.T) { forFamilies(t, testWriteBatchSkipsRefused) }

func testWriteBatchSkipsRefused(t *testing.T, f family) {
	a := listen(t, f.lo0())
	b := listen(t, f.lo0())
	var calls int
	a.refuse = func(hdrs []unix.Mmsghdr) (int, unix.Errno) {
		calls++
		if calls == 2 { // the second call starts at the message after the other family's one
			return 0, unix.ENOBUFS
		}
		return len(hdrs), 0
	}
	other, otherSrc := netip.MustParseAddrPort("[2001:db8::1]:1194"), netip.MustParseAddr("2001:db8::2")
	if f == ipv6 {
		other, otherSrc = netip.MustParseAddrPort("192.0.2.1:1194"), netip.MustParseAddr("192.0.2.2")
	}
	out := []Message{
		{Buf: []byte("0"), Addr: b.LocalAddr()},
		{Buf: []byte("other"), Addr: other},
		{Buf: []byte("2"), Addr: b.LocalAddr()},
		{Buf: []byte("3"), Addr: b.LocalAddr()},
		{Buf: []byte("4"), Addr: b.LocalAddr(), Local: otherSrc},
	}
	n, err := a.WriteBatch(out)
	if n != 2 || !errors.Is(err, ErrFamily) {
		t.Fatalf("WriteBatch: %d, %v; want 2 and the family refusal first", n, err)
	}
	if msg := err.Error(); !strings.Contains(msg, other.String()) || !strings.Contains(msg, a.LocalAddr().String()) {
		t.Fatalf("refusal %q names neither the destination %v nor the socket %v", msg, other, a.LocalAddr())
	}
	got := readN(t, b, 2)
	if string(got[0].data) != "0" || string(got[1].data) != "3" {
		t.Fatalf("got %q and %q, want 0 and 3 (2 was refused with ENOBUFS)", got[0].data, got[1].data)
	}
	if _, err := a.WriteBatch(out[1:2]); !errors.Is(err, ErrFamily) {
		t.Fatalf("one message to the other family: %v", err)
	}
	_, err = a.WriteBatch(out[4:5])
	if !errors.Is(err, ErrFamily) || !strings.Contains(err.Error(), otherSrc.String()) {
		t.Fatalf("one message from the other family: %v", err)
	}
	// An IPv4-mapped destination is IPv4.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(netip.MustParseAddr("127.0.0.1").As16()), b.LocalAddr().Port())
	if _, err := a.WriteBatch([]Message{{Buf: []byte("m"), Addr: mapped}}); (err == nil) != (f == ipv4) {
		t.Fatalf("to the mapped %v: %v", mapped, err)
	}
}

// A read blocked in ppoll returns when the Conn closes, and a closed Conn refuses further calls
// instead of touching a descriptor number the process may have reused.
func TestWakeAndClose(t *testing.T) { forFamilies(t, testWakeAndClose) }

func testWakeAndClose(t *testing.T, f family) {
	u := listen(t, f.lo0())
	done := make(chan error, 1)
	go func() {
		_, err := u.ReadBatch([]Message{{Buf: make([]byte, 2048)}})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("ReadBatch returned before any datagram or Close: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReadBatch during Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadBatch still blocked 5 s after Close")
	}
	if err := u.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	one := []Message{{Buf: []byte("x"), Addr: u.LocalAddr()}}
	if _, err := u.WriteBatch(one); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteBatch of one after Close: %v", err)
	}
	if _, err := u.WriteBatch(append(one, one...)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteBatch of two after Close: %v", err)
	}
	if _, err := u.ReadBatch([]Message{{Buf: make([]byte, 64)}}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadBatch after Close: %v", err)
	}
}

// Readers and writers racing Close all end with net.ErrClosed (run with -race).
func TestCloseUnderLoad(t *testing.T) {
	a := listen(t, "127.0.0.1:0")
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for w := range 4 {
		wg.Go(func() {
			out := []Message{{Buf: make([]byte, 100), Addr: a.LocalAddr()}}
			if w%2 == 1 {
				out = append(out, out[0], out[0])
			}
			for {
				if _, err := a.WriteBatch(out); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() {
		msgs := []Message{{Buf: make([]byte, 2048)}, {Buf: make([]byte, 2048)}}
		for {
			if _, err := a.ReadBatch(msgs); err != nil {
				errs <- err
				return
			}
		}
	})
	time.Sleep(20 * time.Millisecond)
	a.Close()
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("call ended with %v, want net.ErrClosed", err)
		}
	}
}

// TestListenFamilies: an IPv6 address opens an IPv6-only socket, an IPv4-mapped one an IPv4
// socket; scoped (link-local) addresses are refused.
func TestListenFamilies(t *testing.T) {
	c := listen(t, "[::1]:0")
	if !c.v6 || c.LocalAddr().Addr() != netip.IPv6Loopback() {
		t.Fatalf("[::1]:0: v6 %v, bound to %v", c.v6, c.LocalAddr())
	}
	if v, err := unix.GetsockoptInt(c.fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err != nil || v != 1 {
		t.Fatalf("IPV6_V6ONLY %d, %v; want 1", v, err)
	}
	// The same buffers as an IPv4 socket's.
	v4 := listen(t, "127.0.0.1:0")
	for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF} {
		b6, err6 := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, opt)
		b4, err4 := unix.GetsockoptInt(v4.fd, unix.SOL_SOCKET, opt)
		if err6 != nil || err4 != nil || b6 != b4 {
			t.Fatalf("buffer option %d: IPv6 %d (%v), IPv4 %d (%v)", opt, b6, err6, b4, err4)
		}
	}
	m := listen(t, "[::ffff:127.0.0.1]:0")
	if m.v6 || m.LocalAddr().Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("mapped listener: v6 %v, bound to %v", m.v6, m.LocalAddr())
	}
	for _, ap := range []string{"[fe80::1%lo]:0", "[fe80::1]:0"} {
		if c, err := Host.ListenUDP(netip.MustParseAddrPort(ap)); err == nil || !strings.Contains(err.Error(), "link-local") {
			if c != nil {
				c.Close()
			}
			t.Errorf("UDP on %s: %v, want the link-local refusal", ap, err)
		}
		if ln, err := Host.ListenTCP(netip.MustParseAddrPort(ap)); err == nil || !strings.Contains(err.Error(), "link-local") {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("TCP on %s: %v, want the link-local refusal", ap, err)
		}
	}
	// 169.254/16 is IPv4: no scope to lose, and not refused.
	if _, err := listenAddr(netip.MustParseAddrPort("169.254.1.1:0")); err != nil {
		t.Errorf("169.254.1.1: %v", err)
	}
}

// TestFamiliesShareAPort: an IPv4 and an IPv6 listener on the unspecified addresses hold the
// same port side by side (IPV6_V6ONLY), UDP and TCP, single sockets and shard groups, and each
// receives its own family's datagrams.
func TestFamiliesShareAPort(t *testing.T) {
	var v4, v6 *udpConn
	port := onSamePort(t, func(ap netip.AddrPort) (uint16, func(), error) {
		c, err := Host.ListenUDP(ap)
		if err != nil {
			return 0, nil, err
		}
		if ap.Addr().Is4() {
			v4 = c.(*udpConn)
		} else {
			v6 = c.(*udpConn)
		}
		return c.LocalAddr().Port(), func() { c.Close() }, nil
	})
	peer4, peer6 := listen(t, ipv4.lo0()), listen(t, ipv6.lo0())
	if _, err := peer4.WriteBatch([]Message{{Buf: []byte("four"), Addr: netip.AddrPortFrom(ipv4.lo, port)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := peer6.WriteBatch([]Message{{Buf: []byte("six"), Addr: netip.AddrPortFrom(ipv6.lo, port)}}); err != nil {
		t.Fatal(err)
	}
	if d := readN(t, v4, 1)[0]; string(d.data) != "four" || d.from != peer4.LocalAddr() || d.local != ipv4.lo {
		t.Fatalf("IPv4 listener read %q from %v to %v", d.data, d.from, d.local)
	}
	if d := readN(t, v6, 1)[0]; string(d.data) != "six" || d.from != peer6.LocalAddr() || d.local != ipv6.lo {
		t.Fatalf("IPv6 listener read %q from %v to %v", d.data, d.from, d.local)
	}

	onSamePort(t, func(ap netip.AddrPort) (uint16, func(), error) {
		cs, err := Host.(ShardedNetwork).ListenUDPShards(ap, 2)
		if err != nil {
			return 0, nil, err
		}
		if v6 := cs[0].(*udpConn).v6; v6 != ap.Addr().Is6() {
			t.Fatalf("a group on %v: v6 %v", ap, v6)
		}
		return cs[0].LocalAddr().Port(), func() {
			for _, c := range cs {
				c.Close()
			}
		}, nil
	})
	onSamePort(t, func(ap netip.AddrPort) (uint16, func(), error) {
		ln, err := Host.ListenTCP(ap)
		if err != nil {
			return 0, nil, err
		}
		return ln.Addr().(*net.TCPAddr).AddrPort().Port(), func() { ln.Close() }, nil
	})
}

// onSamePort opens a listener on [::] with a port the kernel picks, then one on 0.0.0.0 with the
// same port, and returns the port; the test closes both. open returns the port it bound and how
// to close. The kernel picks the port among those free for IPv6 alone, so one that another IPv4
// socket of the host holds is given back and another tried.
func onSamePort(t *testing.T, open func(netip.AddrPort) (uint16, func(), error)) uint16 {
	t.Helper()
	for range 20 {
		port, close6, err := open(netip.AddrPortFrom(netip.IPv6Unspecified(), 0))
		if err != nil {
			t.Fatal(err)
		}
		_, close4, err := open(netip.AddrPortFrom(netip.IPv4Unspecified(), port))
		if errors.Is(err, unix.EADDRINUSE) {
			close6()
			continue
		}
		if err != nil {
			close6()
			t.Fatalf("IPv4 beside IPv6 on port %d: %v", port, err)
		}
		t.Cleanup(close6)
		t.Cleanup(close4)
		return port
	}
	t.Fatal("20 ports the kernel picked for IPv6 were all held by IPv4 sockets")
	return 0
}

func TestListenUDPBusyPort(t *testing.T) {
	a := listen(t, "127.0.0.1:0")
	if c, err := Host.ListenUDP(a.LocalAddr()); !errors.Is(err, unix.EADDRINUSE) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("second listener on %v: %v, want EADDRINUSE", a.LocalAddr(), err)
	}
}

func TestHostTCPEcho(t *testing.T) { forFamilies(t, testHostTCPEcho) }

func testHostTCPEcho(t *testing.T, f family) {
	ln, err := Host.ListenTCP(netip.AddrPortFrom(f.lo, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if a := ln.Addr().(*net.TCPAddr).AddrPort().Addr(); a != f.lo {
		t.Fatalf("listening on %v, want %v", a, f.lo)
	}
	accepted := make(chan netip.AddrPort, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		defer c.Close()
		accepted <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
		_, _ = io.Copy(c, c)
	}()
	c, err := net.Dial(f.tcp, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	if from := <-accepted; from.Addr().Unmap() != f.lo || from.Addr().Is4In6() && f == ipv6 {
		t.Fatalf("accepted a connection from %v", from)
	}
}

// Reads and writes allocate nothing per batch, on every send path: one message, a batch with
// IP_PKTINFO (IPV6_PKTINFO), and UDP GSO.
func TestNoAllocs(t *testing.T) { forFamilies(t, testNoAllocs) }

func testNoAllocs(t *testing.T, f family) {
	srv := listen(t, f.any0())
	peer := listen(t, f.lo0())
	setGRO(t, peer, false)
	var a, b Conn = srv, peer
	src := f.lo
	pkt := make([]byte, 1000)
	batch := make([]Message, 4)
	for i := range batch {
		batch[i] = Message{Buf: pkt, Addr: b.LocalAddr(), Local: src}
	}
	one := []Message{{Buf: pkt, Addr: b.LocalAddr(), Local: src}}
	gso := []Message{{Buf: make([]byte, 4*500), Addr: b.LocalAddr(), Local: src, Segment: 500}}
	in := make([]Message, 8)
	for i := range in {
		in[i].Buf = make([]byte, 2048)
	}
	read := func(want int) {
		for got := 0; got < want; {
			n, err := b.ReadBatch(in)
			if err != nil {
				panic(err)
			}
			got += n
		}
	}
	allocs := testing.AllocsPerRun(200, func() {
		if n, err := a.WriteBatch(batch); n != 4 || err != nil {
			panic(fmt.Sprint(n, err))
		}
		read(4)
		if n, err := a.WriteBatch(one); n != 1 || err != nil {
			panic(fmt.Sprint(n, err))
		}
		read(1)
		if n, err := a.WriteBatch(gso); n != 1 || err != nil {
			panic(fmt.Sprint(n, err))
		}
		read(4)
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per round trip, want 0", allocs)
	}
}

// TestReadBatchWakesWhenIdle: a ReadBatch on an idle socket returns 0 and no error after the
// read wake, so that the receive loop goes round; the socket still delivers afterwards, and a
// closed one still says so.
func TestReadBatchWakesWhenIdle(t *testing.T) { forFamilies(t, testReadBatchWakesWhenIdle) }

func testReadBatchWakesWhenIdle(t *testing.T, f family) {
	a := listen(t, f.lo0())
	b := listen(t, f.lo0())
	b.readWake = 20 * time.Millisecond
	msgs := []Message{{Buf: make([]byte, 2048)}}
	for range 3 {
		if n, err := b.ReadBatch(msgs); n != 0 || err != nil {
			t.Fatalf("idle ReadBatch = %d, %v; want 0, nil", n, err)
		}
	}
	if _, err := a.WriteBatch([]Message{{Buf: []byte("after the wake"), Addr: b.LocalAddr()}}); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, b, 1); string(got[0].data) != "after the wake" {
		t.Fatalf("read %q after idle wakes", got[0].data)
	}
	b.Close()
	if _, err := b.ReadBatch(msgs); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadBatch after Close: %v, want net.ErrClosed", err)
	}
}

// inNetnsWith moves the calling goroutine's thread into a network namespace of its own, with its
// loopback up and holding addrs too, so that a test can use more local addresses than the host's
// loopback has without touching the host. Sockets opened by the test belong to the namespace
// wherever they are used from; the thread is never unlocked, so the runtime ends it with the
// test's goroutine. It needs root (unshare, netlink).
func inNetnsWith(t *testing.T, addrs ...netip.Addr) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace; TestPktinfoSourceIPv6 covers IPv6 packet info without it")
	}
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		bits := a.BitLen()
		// IFA_F_NODAD: usable at once (the loopback does no duplicate address detection anyway).
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(lo, addr); err != nil {
			t.Fatalf("add %v to lo: %v", a, err)
		}
	}
	// The kernel installs an address's local route after AddrAdd returns: until then a datagram
	// to it leaves by the prefix route and is lost. Wait until each address hears itself.
	for _, a := range addrs {
		waitLocal(t, a)
	}
}

// waitLocal waits until a datagram sent to a reaches a, for at most 5 s.
func waitLocal(t *testing.T, a netip.Addr) {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 16)
	for range 100 {
		if _, err := c.WriteToUDPAddrPort([]byte("probe"), c.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err == nil {
			return
		}
	}
	t.Fatalf("%v does not reach itself", a)
}

// BenchmarkBatchRoundTrip sends batches of 64 datagrams of 1300 bytes over loopback and reads
// them back (from a socket on the unspecified address, so with packet info), in each family, so
// that the two can be compared in one run: ns/op is one batch there and back, datagrams/s the
// datagrams that made the trip.
func BenchmarkBatchRoundTrip(b *testing.B) {
	for _, f := range []family{ipv4, ipv6} {
		b.Run(f.name, func(b *testing.B) {
			a, err := Host.ListenUDP(netip.AddrPortFrom(f.any, 0))
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			c, err := Host.ListenUDP(netip.AddrPortFrom(f.lo, 0))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			out := make([]Message, MaxBatch)
			for i := range out {
				out[i] = Message{Buf: make([]byte, 1300), Addr: c.LocalAddr(), Local: f.lo}
			}
			in := make([]Message, MaxBatch)
			for i := range in {
				in[i].Buf = make([]byte, 65536)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := a.WriteBatch(out); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < len(out); {
					n, err := c.ReadBatch(in)
					if err != nil {
						b.Fatal(err)
					}
					for _, m := range in[:n] {
						got += len(split(m))
					}
				}
			}
			b.ReportMetric(float64(b.N*len(out))/b.Elapsed().Seconds(), "datagrams/s")
		})
	}
}
