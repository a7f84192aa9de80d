package tunnel

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func openTestSocket(t *testing.T, ap string) (*udpSocket, *waker) {
	t.Helper()
	w, err := newWaker()
	if err != nil {
		t.Fatal(err)
	}
	u, err := openUDPSocket(netip.MustParseAddrPort(ap), w)
	if err != nil {
		w.close()
		t.Fatal(err)
	}
	t.Cleanup(func() { u.close(); w.close() })
	return u, w
}

func TestUDPSocketBatchRoundTrip(t *testing.T) {
	a, _ := openTestSocket(t, "127.0.0.1:0")
	b, _ := openTestSocket(t, "127.0.0.1:0")
	if a.local.Port() == 0 || a.local.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("local address %v: want 127.0.0.1 and the kernel's port", a.local)
	}
	out := newMmsgs(8)
	var sent [][]byte
	for i := range 5 {
		p := bytes.Repeat([]byte{byte(i + 1)}, 100*(i+1))
		sent = append(sent, p)
		out.set(i, p, b.local, nil)
	}
	if err := a.send(out, 5, func(i int, err error) { t.Errorf("message %d refused: %v", i, err) }); err != nil {
		t.Fatal(err)
	}
	in := newRecvMmsgs(8, 2048, 128)
	var got [][]byte
	for len(got) < 5 {
		n, err := b.recv(in)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if from := in.from(i); from != a.local {
				t.Errorf("datagram %d from %v, want %v", len(got), from, a.local)
			}
			got = append(got, append([]byte(nil), in.data(i)...))
		}
	}
	for i := range sent {
		if !bytes.Equal(got[i], sent[i]) {
			t.Errorf("datagram %d: got %d bytes of %d, want %d bytes of %d", i, len(got[i]), got[i][0], len(sent[i]), sent[i][0])
		}
	}
}

// A socket on the unspecified address learns each datagram's destination (IP_PKTINFO) and answers
// from it.
func TestUDPSocketPktinfoReply(t *testing.T) {
	srv, _ := openTestSocket(t, "0.0.0.0:0")
	if err := srv.setsockoptInt(unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
		t.Fatal(err)
	}
	peer, _ := openTestSocket(t, "127.0.0.1:0")
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), srv.local.Port())
	if err := peer.sendTo([]byte("hello"), to, nil); err != nil {
		t.Fatal(err)
	}
	in := newRecvMmsgs(4, 2048, 128)
	n, err := srv.recv(in)
	if err != nil || n != 1 {
		t.Fatalf("recv: %d, %v", n, err)
	}
	dst, seg := parseCmsgs(in.oob(0))
	if dst != to.Addr() || seg != 0 {
		t.Fatalf("control messages: dst %v seg %d, want %v and 0", dst, seg, to.Addr())
	}
	if err := srv.sendTo([]byte("world"), in.from(0), appendPktinfo(nil, dst)); err != nil {
		t.Fatal(err)
	}
	n, err = peer.recv(in)
	if err != nil || n != 1 {
		t.Fatalf("peer recv: %d, %v", n, err)
	}
	if from := in.from(0); from != to {
		t.Fatalf("reply came from %v, want %v (the address the peer sent to)", from, to)
	}
	if string(in.data(0)) != "world" {
		t.Fatalf("reply %q", in.data(0))
	}
}

// One message with UDP_SEGMENT leaves as one datagram per segment.
func TestUDPSocketGSOSend(t *testing.T) {
	a, _ := openTestSocket(t, "127.0.0.1:0")
	if _, err := a.getsockoptInt(unix.IPPROTO_UDP, unix.UDP_SEGMENT); err != nil {
		t.Fatalf("UDP_SEGMENT: %v (kernels since 4.18 have UDP GSO)", err)
	}
	b, _ := openTestSocket(t, "127.0.0.1:0")
	payload := make([]byte, 3*500+200)
	for i := range payload {
		payload[i] = byte(i / 500)
	}
	out := newMmsgs(1)
	out.set(0, payload, b.local, appendUDPSegment(nil, 500))
	if err := a.send(out, 1, func(i int, err error) { t.Fatalf("GSO send refused: %v", err) }); err != nil {
		t.Fatal(err)
	}
	in := newRecvMmsgs(8, 2048, 128)
	var sizes []int
	for len(sizes) < 4 {
		n, err := b.recv(in)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			d := in.data(i)
			sizes = append(sizes, len(d))
			if d[0] != byte(len(sizes)-1) {
				t.Errorf("segment %d starts with %d", len(sizes)-1, d[0])
			}
		}
	}
	if want := []int{500, 500, 500, 200}; !equalInts(sizes, want) {
		t.Fatalf("segments %v, want %v", sizes, want)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A receive blocked in ppoll returns when the server fires the waker, and a closed socket refuses
// further calls instead of touching a descriptor number the process may have reused.
func TestUDPSocketWakeAndClose(t *testing.T) {
	u, w := openTestSocket(t, "127.0.0.1:0")
	done := make(chan error, 1)
	go func() {
		_, err := u.recv(newRecvMmsgs(2, 2048, 64))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("recv returned before any datagram or wake: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	w.wake()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("woken recv: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("recv still blocked 5 s after the wake")
	}
	u.close()
	u.close() // idempotent
	if err := u.sendTo([]byte("x"), u.local, nil); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("sendTo after close: %v", err)
	}
	if _, err := u.recv(newRecvMmsgs(1, 64, 64)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("recv after close: %v", err)
	}
}

func TestUDPSocketRejectsIPv6(t *testing.T) {
	w, err := newWaker()
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if _, err := openUDPSocket(netip.MustParseAddrPort("[::1]:0"), w); err == nil {
		t.Fatal("IPv6 listener accepted")
	}
}

// The send and receive calls allocate nothing per batch.
func TestUDPSocketNoAllocs(t *testing.T) {
	a, _ := openTestSocket(t, "127.0.0.1:0")
	b, _ := openTestSocket(t, "127.0.0.1:0")
	out := newMmsgs(4)
	in := newRecvMmsgs(4, 2048, 128)
	pkt := make([]byte, 1000)
	allocs := testing.AllocsPerRun(200, func() {
		for i := range 4 {
			out.set(i, pkt, b.local, nil)
		}
		_ = a.send(out, 4, nil)
		for got := 0; got < 4; {
			n, err := b.recv(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
		_ = a.sendTo(pkt, b.local, nil)
		_, _ = b.recv(in)
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per round trip, want 0", allocs)
	}
}
