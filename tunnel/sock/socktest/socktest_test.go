package socktest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/sock"
)

var ap = netip.MustParseAddrPort

func listenUDP(t *testing.T, n *Network, addr string) sock.Conn {
	t.Helper()
	c, err := n.ListenUDP(ap(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func listenPacket(t *testing.T, n *Network, addr string) net.PacketConn {
	t.Helper()
	pc, err := n.ListenPacket(ap(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

func udpAddr(pc net.PacketConn) netip.AddrPort { return pc.LocalAddr().(*net.UDPAddr).AddrPort() }

// readBatch reads one batch, failing the test if none arrives within 5 s.
func readBatch(t *testing.T, c sock.Conn, msgs []sock.Message) int {
	t.Helper()
	timer := time.AfterFunc(5*time.Second, func() { c.Close() })
	defer timer.Stop()
	n, err := c.ReadBatch(msgs)
	if err != nil {
		t.Fatalf("ReadBatch: %v", err)
	}
	return n
}

// readFrom reads one datagram within 5 s.
func readFrom(t *testing.T, pc net.PacketConn) (string, netip.AddrPort) {
	t.Helper()
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("ReadFrom: %v", err)
	}
	return string(buf[:n]), from.(*net.UDPAddr).AddrPort()
}

func newMsgs(n, size int) []sock.Message {
	msgs := make([]sock.Message, n)
	for i := range msgs {
		msgs[i].Buf = make([]byte, size)
	}
	return msgs
}

// A client's PacketConn and an engine's Conn talk both ways, with the addresses a socket would
// report.
func TestUDPRoundTrip(t *testing.T) {
	n := NewNetwork()
	srv := listenUDP(t, n, "10.0.0.1:1194")
	cl := listenPacket(t, n, "192.0.2.10:0")
	if p := udpAddr(cl); p.Port() == 0 || p.Addr() != ap("192.0.2.10:1").Addr() {
		t.Fatalf("client bound to %v", p)
	}
	if _, err := cl.WriteTo([]byte("hello"), net.UDPAddrFromAddrPort(srv.LocalAddr())); err != nil {
		t.Fatal(err)
	}
	msgs := newMsgs(4, 2048)
	if k := readBatch(t, srv, msgs); k != 1 {
		t.Fatalf("read %d datagrams, want 1", k)
	}
	m := msgs[0]
	if string(m.Buf[:m.N]) != "hello" || m.Addr != udpAddr(cl) || m.Local != srv.LocalAddr().Addr() || m.Segment != 0 {
		t.Fatalf("read %q from %v to %v (segment %d)", m.Buf[:m.N], m.Addr, m.Local, m.Segment)
	}
	reply := []sock.Message{{Buf: []byte("world"), Addr: m.Addr, Local: m.Local}, {Buf: []byte("again"), Addr: m.Addr}}
	if k, err := srv.WriteBatch(reply); k != 2 || err != nil {
		t.Fatalf("WriteBatch: %d, %v", k, err)
	}
	for _, want := range []string{"world", "again"} {
		if got, from := readFrom(t, cl); got != want || from != srv.LocalAddr() {
			t.Fatalf("client read %q from %v, want %q from %v", got, from, want, srv.LocalAddr())
		}
	}
	if srv.GSO() {
		t.Fatal("GSO() true")
	}
}

// A Conn on the unspecified address hears every address on its port and reports which one each
// datagram was sent to; a reply leaves from the Local it names.
func TestUnspecifiedReportsDestination(t *testing.T) {
	n := NewNetwork()
	srv := listenUDP(t, n, "0.0.0.0:1194")
	cl := listenPacket(t, n, "192.0.2.10:5000")
	for _, to := range []string{"10.0.0.1:1194", "10.0.0.2:1194"} {
		if _, err := cl.WriteTo([]byte(to), net.UDPAddrFromAddrPort(ap(to))); err != nil {
			t.Fatal(err)
		}
	}
	msgs := newMsgs(4, 2048)
	got := 0
	for got < 2 {
		k := readBatch(t, srv, msgs[got:])
		got += k
	}
	for _, m := range msgs[:2] {
		if to := ap(string(m.Buf[:m.N])); m.Local != to.Addr() || m.Addr != ap("192.0.2.10:5000") {
			t.Fatalf("datagram sent to %v reported Local %v from %v", to, m.Local, m.Addr)
		}
	}
	srv.WriteBatch([]sock.Message{{Buf: []byte("x"), Addr: msgs[1].Addr, Local: msgs[1].Local}})
	if _, from := readFrom(t, cl); from != ap("10.0.0.2:1194") {
		t.Fatalf("reply from %v, want 10.0.0.2:1194", from)
	}
	srv.WriteBatch([]sock.Message{{Buf: []byte("y"), Addr: msgs[1].Addr}})
	if _, from := readFrom(t, cl); from != ap("127.0.0.1:1194") {
		t.Fatalf("reply without Local from %v, want loopback", from)
	}
}

func TestBindConflicts(t *testing.T) {
	n := NewNetwork()
	a := listenUDP(t, n, "0.0.0.0:0")
	b := listenUDP(t, n, "0.0.0.0:0")
	if a.LocalAddr().Port() == 0 || a.LocalAddr().Port() == b.LocalAddr().Port() {
		t.Fatalf("ports %d and %d", a.LocalAddr().Port(), b.LocalAddr().Port())
	}
	c := listenUDP(t, n, "10.0.0.1:1194")
	for _, addr := range []string{"10.0.0.1:1194", "0.0.0.0:1194", "[::ffff:10.0.0.1]:1194"} {
		if _, err := n.ListenUDP(ap(addr)); !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("second UDP bind to %s: %v, want EADDRINUSE", addr, err)
		}
	}
	if _, err := n.ListenPacket(ap("10.0.0.1:1194")); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("PacketConn on a bound port: %v, want EADDRINUSE", err)
	}
	d := listenUDP(t, n, "10.0.0.2:1194")      // another address, same port
	ln, err := n.ListenTCP(ap("0.0.0.0:1194")) // TCP ports are their own
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	c.Close()
	d.Close()
	listenUDP(t, n, "0.0.0.0:1194") // free again
}

// WriteBatch honours Segment by sending one datagram per segment.
func TestWriteBatchSegments(t *testing.T) {
	n := NewNetwork()
	srv := listenUDP(t, n, "10.0.0.1:1194")
	cl := listenPacket(t, n, "192.0.2.10:0")
	to := udpAddr(cl)
	out := []sock.Message{
		{Buf: []byte("abcdefgh"), Addr: to, Segment: 3},
		{Buf: []byte("ij"), Addr: to, Segment: 3},
	}
	if k, err := srv.WriteBatch(out); k != 2 || err != nil {
		t.Fatalf("WriteBatch: %d, %v", k, err)
	}
	for _, want := range []string{"abc", "def", "gh", "ij"} {
		if got, _ := readFrom(t, cl); got != want {
			t.Fatalf("read %q, want %q", got, want)
		}
	}
	if k, err := srv.WriteBatch([]sock.Message{{Buf: []byte("x")}, {Buf: []byte("y"), Addr: to}}); k != 1 || err == nil {
		t.Fatalf("WriteBatch with no destination: %d, %v; want 1 and an error", k, err)
	}
	if got, _ := readFrom(t, cl); got != "y" {
		t.Fatalf("read %q after the refused message, want y", got)
	}
}

// ReadBatch takes what fits its messages and leaves the rest queued; a short buffer truncates.
func TestReadBatchPartial(t *testing.T) {
	n := NewNetwork()
	srv := listenUDP(t, n, "10.0.0.1:1194")
	for i := range 5 {
		n.Inject(ap("192.0.2.1:1"), srv.LocalAddr(), []byte(fmt.Sprint("datagram", i)))
	}
	msgs := newMsgs(2, 5)
	var got []string
	for _, want := range []int{2, 2, 1} {
		k := readBatch(t, srv, msgs)
		if k != want {
			t.Fatalf("read %d, want %d", k, want)
		}
		for _, m := range msgs[:k] {
			got = append(got, string(m.Buf[:m.N]))
		}
	}
	if fmt.Sprint(got) != "[datag datag datag datag datag]" {
		t.Fatalf("read %q, want five datagrams cut to 5 bytes", got)
	}
}

func TestPacketConnDeadlines(t *testing.T) {
	n := NewNetwork()
	cl := listenPacket(t, n, "192.0.2.10:0")
	buf := make([]byte, 100)

	start := time.Now()
	cl.SetReadDeadline(start.Add(50 * time.Millisecond))
	_, _, err := cl.ReadFrom(buf)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("ReadFrom past the deadline: %v, want a timeout", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Fatalf("timed out after %v, before the deadline", d)
	}
	// A passed deadline wins over a queued datagram, as in package net.
	n.Inject(ap("192.0.2.1:1"), udpAddr(cl), []byte("queued"))
	if _, _, err := cl.ReadFrom(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadFrom with a passed deadline: %v", err)
	}
	cl.SetReadDeadline(time.Time{})
	if k, _, err := cl.ReadFrom(buf); err != nil || string(buf[:k]) != "queued" {
		t.Fatalf("ReadFrom after clearing the deadline: %q, %v", buf[:k], err)
	}

	// Moving the deadline later while a read waits keeps it waiting.
	cl.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	done := make(chan error, 1)
	go func() {
		k, _, err := cl.ReadFrom(buf)
		if err == nil && string(buf[:k]) != "late" {
			err = fmt.Errorf("read %q", buf[:k])
		}
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	cl.SetReadDeadline(time.Now().Add(10 * time.Second))
	time.Sleep(100 * time.Millisecond)
	n.Inject(ap("192.0.2.1:1"), udpAddr(cl), []byte("late"))
	if err := <-done; err != nil {
		t.Fatalf("read with the extended deadline: %v", err)
	}

	// Moving it earlier cuts a waiting read short.
	cl.SetReadDeadline(time.Time{})
	go func() {
		_, _, err := cl.ReadFrom(buf)
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	cl.SetDeadline(time.Now())
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read after the deadline moved to now: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read still waiting 5 s after the deadline moved to now")
	}

	to := net.UDPAddrFromAddrPort(ap("10.0.0.1:1194"))
	if _, err := cl.WriteTo([]byte("x"), to); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteTo past the write deadline: %v", err)
	}
	cl.SetWriteDeadline(time.Time{})
	if k, err := cl.WriteTo([]byte("x"), to); k != 1 || err != nil {
		t.Fatalf("WriteTo with no deadline: %d, %v", k, err)
	}
}

func TestCloseUnblocksReaders(t *testing.T) {
	n := NewNetwork()
	srv, err := n.ListenUDP(ap("10.0.0.1:1194"))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := n.ListenPacket(ap("192.0.2.10:0"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() {
		_, err := srv.ReadBatch(newMsgs(2, 100))
		done <- err
	}()
	go func() {
		_, _, err := cl.ReadFrom(make([]byte, 100))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("a read returned before Close: %v", err)
	default:
	}
	srv.Close()
	cl.Close()
	for range 2 {
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("read during Close: %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a read still blocked 5 s after Close")
		}
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close of a Conn: %v", err)
	}
	if _, err := srv.WriteBatch([]sock.Message{{Buf: []byte("x"), Addr: udpAddr(cl)}}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteBatch after Close: %v", err)
	}
	if _, err := srv.ReadBatch(newMsgs(1, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadBatch after Close: %v", err)
	}
	if _, err := cl.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(srv.LocalAddr())); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteTo after Close: %v", err)
	}
	// The closed Conn's port is free and a new endpoint there hears nothing old.
	again := listenUDP(t, n, "10.0.0.1:1194")
	n.Inject(ap("192.0.2.1:1"), again.LocalAddr(), []byte("new"))
	msgs := newMsgs(1, 10)
	if k := readBatch(t, again, msgs); k != 1 || string(msgs[0].Buf[:msgs[0].N]) != "new" {
		t.Fatalf("new endpoint read %q", msgs[0].Buf[:msgs[0].N])
	}
}

// The filter rewrites sources (a NAT rebinding), changes bytes and drops datagrams; Inject
// bypasses it; nil removes it.
func TestFilter(t *testing.T) {
	n := NewNetwork()
	srv := listenUDP(t, n, "10.0.0.1:1194")
	cl := listenPacket(t, n, "192.0.2.10:5000")
	nat := ap("203.0.113.5:40000")
	n.SetFilter(func(from, to netip.AddrPort, pkt []byte) (netip.AddrPort, bool) {
		if to != srv.LocalAddr() && to != udpAddr(cl) {
			t.Errorf("filter saw a datagram to %v", to)
		}
		switch pkt[0] {
		case 'd':
			return from, false
		case 'r':
			return nat, true
		case 'c':
			pkt[0] = 'C'
		}
		return from, true
	})
	to := net.UDPAddrFromAddrPort(srv.LocalAddr())
	for _, p := range []string{"drop", "rewrite", "change"} {
		cl.WriteTo([]byte(p), to)
	}
	n.Inject(ap("198.51.100.1:666"), srv.LocalAddr(), []byte("dropped by the filter if it applied"))
	msgs := newMsgs(8, 100)
	var got []string
	for len(got) < 3 {
		k := readBatch(t, srv, msgs)
		for _, m := range msgs[:k] {
			got = append(got, fmt.Sprintf("%s from %v", m.Buf[:m.N], m.Addr))
		}
	}
	want := []string{
		"rewrite from 203.0.113.5:40000",
		"Change from 192.0.2.10:5000",
		"dropped by the filter if it applied from 198.51.100.1:666",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("server read\n%q\nwant\n%q", got, want)
	}
	// Replies pass the filter too.
	srv.WriteBatch([]sock.Message{{Buf: []byte("drop me"), Addr: udpAddr(cl)}, {Buf: []byte("ok"), Addr: udpAddr(cl)}})
	if p, _ := readFrom(t, cl); p != "ok" {
		t.Fatalf("client read %q, want ok", p)
	}
	n.SetFilter(nil)
	cl.WriteTo([]byte("drop"), to)
	if k := readBatch(t, srv, msgs); k != 1 || string(msgs[0].Buf[:msgs[0].N]) != "drop" || msgs[0].Addr != udpAddr(cl) {
		t.Fatalf("without the filter read %q from %v", msgs[0].Buf[:msgs[0].N], msgs[0].Addr)
	}
}

// A receiver that does not read keeps QueueLen datagrams and drops the rest, as a full socket
// buffer does.
func TestQueueBound(t *testing.T) {
	n := NewNetwork()
	srv := listenUDP(t, n, "10.0.0.1:1194")
	cl := listenPacket(t, n, "192.0.2.10:0")
	out := make([]sock.Message, QueueLen+100)
	for i := range out {
		out[i] = sock.Message{Buf: []byte{byte(i), byte(i >> 8)}, Addr: udpAddr(cl)}
	}
	if k, err := srv.WriteBatch(out); k != len(out) || err != nil {
		t.Fatalf("WriteBatch: %d, %v (a dropped datagram still counts as sent, as UDP does)", k, err)
	}
	buf := make([]byte, 10)
	count := 0
	for {
		cl.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		k, _, err := cl.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
		if k != 2 || int(buf[0])|int(buf[1])<<8 != count {
			t.Fatalf("datagram %d is %x", count, buf[:k])
		}
		count++
	}
	if count != QueueLen {
		t.Fatalf("read %d datagrams, want the first %d", count, QueueLen)
	}

	for i := range QueueLen + 1 {
		n.Inject(ap("192.0.2.1:1"), srv.LocalAddr(), []byte{byte(i)})
	}
	msgs := newMsgs(sock.MaxBatch*2, 10)
	got := 0
	for got < QueueLen {
		k := readBatch(t, srv, msgs)
		if k > sock.MaxBatch {
			t.Fatalf("ReadBatch returned %d, more than MaxBatch", k)
		}
		got += k
	}
	done := make(chan int, 1)
	go func() {
		k, _ := srv.ReadBatch(msgs)
		done <- k
	}()
	select {
	case k := <-done:
		t.Fatalf("ReadBatch found %d more datagrams past the bound", k)
	case <-time.After(50 * time.Millisecond):
	}
	srv.Close()
	<-done
}

// Many writers and readers and a changing filter, for the race detector; no datagram is lost
// below the queue bound.
func TestConcurrentUse(t *testing.T) {
	n := NewNetwork()
	srv := listenUDP(t, n, "0.0.0.0:1194")
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			pc, err := n.ListenPacket(netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(w + 1)}), 0))
			if err != nil {
				t.Error(err)
				return
			}
			defer pc.Close()
			to := net.UDPAddrFromAddrPort(ap("10.0.0.1:1194"))
			for range each {
				if _, err := pc.WriteTo([]byte("x"), to); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 100 {
			n.SetFilter(func(from, to netip.AddrPort, pkt []byte) (netip.AddrPort, bool) { return from, true })
			n.SetFilter(nil)
		}
	})
	msgs := newMsgs(sock.MaxBatch, 10)
	got := 0
	for got < writers*each {
		got += readBatch(t, srv, msgs)
	}
	wg.Wait()
}

func dial(t *testing.T, n *Network, from, to string) net.Conn {
	t.Helper()
	var fromAP netip.AddrPort
	if from != "" {
		fromAP = ap(from)
	}
	c, err := n.DialTCP(context.Background(), fromAP, ap(to))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func accept(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection to accept within 5 s")
	}
	return nil
}

func TestTCPDialAcceptEcho(t *testing.T) {
	n := NewNetwork()
	ln, err := n.ListenTCP(ap("0.0.0.0:443"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if a, ok := ln.Addr().(*net.TCPAddr); !ok || a.AddrPort() != ap("0.0.0.0:443") {
		t.Fatalf("listener address %#v", ln.Addr())
	}
	c := dial(t, n, "192.0.2.7:0", "10.0.0.1:443")
	s := accept(t, ln)
	cl, sl := c.LocalAddr().(*net.TCPAddr), s.LocalAddr().(*net.TCPAddr)
	cr, sr := c.RemoteAddr().(*net.TCPAddr), s.RemoteAddr().(*net.TCPAddr)
	if cl.AddrPort() != sr.AddrPort() || cl.AddrPort().Port() == 0 || cl.AddrPort().Addr() != ap("192.0.2.7:1").Addr() {
		t.Fatalf("client %v, server sees %v", cl, sr)
	}
	if sl.AddrPort() != ap("10.0.0.1:443") || cr.AddrPort() != sl.AddrPort() {
		t.Fatalf("server %v (want the dialled 10.0.0.1:443), client sees %v", sl, cr)
	}
	go io.Copy(s, s)
	// More than the connection buffers, so that both directions fill and drain.
	payload := bytes.Repeat([]byte("0123456789abcdef"), 3*pipeCap/16+5)
	go c.Write(payload)
	got := make([]byte, len(payload))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo: %v (equal %v)", err, bytes.Equal(got, payload))
	}
}

// Both ends may write before either reads, as TCP's buffers allow (a net.Pipe would deadlock).
func TestTCPBuffered(t *testing.T) {
	n := NewNetwork()
	ln, err := n.ListenTCP(ap("10.0.0.1:443"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := dial(t, n, "", "10.0.0.1:443")
	if a := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); a != ap("127.0.0.1:1").Addr() {
		t.Fatalf("dial without a source left from %v, want loopback", a)
	}
	s := accept(t, ln)
	for _, w := range []net.Conn{c, s} {
		if k, err := w.Write(make([]byte, 4096)); k != 4096 || err != nil {
			t.Fatalf("write: %d, %v", k, err)
		}
	}
	for _, r := range []net.Conn{c, s} {
		r.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(r, make([]byte, 4096)); err != nil {
			t.Fatal(err)
		}
	}
}

// Closing one end: the other reads what was written, then EOF, and its writes fail.
func TestTCPClose(t *testing.T) {
	n := NewNetwork()
	ln, err := n.ListenTCP(ap("10.0.0.1:443"))
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, n, "192.0.2.7:5555", "10.0.0.1:443")
	s := accept(t, ln)
	c.Write([]byte("last words"))
	c.Close()
	s.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(s)
	if err != nil || string(b) != "last words" {
		t.Fatalf("after the peer closed: read %q, %v; want the data then EOF", b, err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write to a closed peer: %v, want EPIPE", err)
	}
	// The client's port is free again.
	again := dial(t, n, "192.0.2.7:5555", "10.0.0.1:443")
	againServer := accept(t, ln)
	if _, err := n.DialTCP(context.Background(), ap("192.0.2.7:5555"), ap("10.0.0.1:443")); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second dial from a port in use: %v", err)
	}
	// Closing the listener ends Accept and the connections still in its backlog.
	pending := dial(t, n, "", "10.0.0.1:443")
	ln.Close()
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	pending.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := pending.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read on a connection the listener dropped: %v, want EOF", err)
	}
	if _, err := n.DialTCP(context.Background(), netip.AddrPort{}, ap("10.0.0.1:443")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial with nobody listening: %v, want ECONNREFUSED", err)
	}
	// An accepted connection outlives its listener.
	againServer.Write([]byte("still here"))
	againServer.Close()
	again.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(again); err != nil || string(b) != "still here" {
		t.Fatalf("read on a connection accepted before the listener closed: %q, %v", b, err)
	}
}

// A full backlog makes DialTCP wait, until Accept makes room or the context ends.
func TestTCPBacklog(t *testing.T) {
	n := NewNetwork()
	ln, err := n.ListenTCP(ap("10.0.0.1:443"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for range backlogLen {
		dial(t, n, "", "10.0.0.1:443")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := n.DialTCP(ctx, netip.AddrPort{}, ap("10.0.0.1:443")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial into a full backlog: %v, want the context's deadline", err)
	}
	done := make(chan error, 1)
	go func() {
		c, err := n.DialTCP(context.Background(), netip.AddrPort{}, ap("10.0.0.1:443"))
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	accept(t, ln)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("dial still waiting 5 s after Accept made room")
	}
}

// The connections pass x/net's conformance tests for net.Conn: deadlines, concurrent use, Close
// unblocking reads and writes.
func TestTCPConnConformance(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		n := NewNetwork()
		ln, err := n.ListenTCP(ap("10.0.0.1:443"))
		if err != nil {
			return nil, nil, nil, err
		}
		c1, err = n.DialTCP(context.Background(), ap("192.0.2.7:0"), ap("10.0.0.1:443"))
		if err != nil {
			return nil, nil, nil, err
		}
		c2, err = ln.Accept()
		if err != nil {
			return nil, nil, nil, err
		}
		return c1, c2, func() { c1.Close(); c2.Close(); ln.Close() }, nil
	})
}

// TestReadBatchWakesWhenIdle: as the host's sockets do, an idle ReadBatch returns 0 and no error
// after the network's read wake.
func TestReadBatchWakesWhenIdle(t *testing.T) {
	n := NewNetwork()
	n.SetReadWake(20 * time.Millisecond)
	srv := listenUDP(t, n, "10.0.0.1:1194")
	msgs := newMsgs(2, 100)
	if k, err := srv.ReadBatch(msgs); k != 0 || err != nil {
		t.Fatalf("idle ReadBatch = %d, %v; want 0, nil", k, err)
	}
	n.Inject(ap("192.0.2.1:1"), srv.LocalAddr(), []byte("later"))
	if k := readBatch(t, srv, msgs); k != 1 || string(msgs[0].Buf[:msgs[0].N]) != "later" {
		t.Fatalf("read %d datagrams after an idle wake, want the one sent", k)
	}
}

// dataV2 is a P_DATA_V2 packet header for peerID with a byte of payload.
func dataV2(peerID uint32, b byte) []byte {
	p := make([]byte, 5)
	packet.PutDataHeader(p, packet.DataV2, 0, peerID)
	p[4] = b
	return p
}

// Shards of one listener share its address: data packets reach shard peer-id mod n, whoever
// sends them; other datagrams stay on one shard per pair of addresses and spread over the shards.
func TestListenUDPShards(t *testing.T) {
	n := NewNetwork()
	const shards = 4
	conns, err := n.ListenUDPShards(ap("0.0.0.0:1194"), shards)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		t.Cleanup(func() { c.Close() })
		if c.LocalAddr() != ap("0.0.0.0:1194") {
			t.Fatalf("shard bound to %v", c.LocalAddr())
		}
	}
	if _, err := n.ListenUDP(ap("10.0.0.1:1194")); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("bind over a shard group: %v, want EADDRINUSE", err)
	}
	to := ap("10.0.0.1:1194")
	// Data packets by peer-id, from many sources (a client that floats keeps its shard).
	for id := range uint32(20) {
		n.Inject(netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(id)}), 4000), to, dataV2(id, byte(id)))
	}
	// Control packets from 64 sources, two each.
	ctl := func(i int) []byte { return []byte{byte(packet.ControlV1) << 3, byte(i)} }
	for i := range 64 {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 5000)
		n.Inject(from, to, ctl(i))
		n.Inject(from, to, ctl(i))
	}
	msgs := newMsgs(sock.MaxBatch, 100)
	shardOf := make(map[netip.AddrPort]int)
	controlPerShard := make([]int, shards)
	for s, c := range conns {
		got := 0
		for got < 5+32 {
			k := readBatch(t, c, msgs)
			for _, m := range msgs[:k] {
				p := m.Buf[:m.N]
				if p[0] == byte(packet.DataV2)<<3 {
					if id := int(p[3]); id%shards != s || m.Local != to.Addr() {
						t.Fatalf("data packet of peer %d on shard %d (Local %v)", id, s, m.Local)
					}
					got++
					continue
				}
				if prev, seen := shardOf[m.Addr]; seen && prev != s {
					t.Fatalf("control packets from %v on shards %d and %d", m.Addr, prev, s)
				}
				shardOf[m.Addr] = s
				controlPerShard[s]++
				got++
			}
			if got >= 5 && sum(controlPerShard) == 128 {
				break
			}
		}
	}
	if sum(controlPerShard) != 128 {
		t.Fatalf("control packets per shard %v, want 128 in all", controlPerShard)
	}
	for s, k := range controlPerShard {
		if k == 0 {
			t.Fatalf("no control packet on shard %d of %v: the hash does not spread", s, controlPerShard)
		}
	}

	// A shard that closes leaves the group to the others; the port stays bound until the last.
	conns[0].Close()
	n.Inject(ap("192.0.2.1:1"), to, dataV2(0, 9))
	found := false
	for _, c := range conns[1:] {
		n.SetReadWake(10 * time.Millisecond)
		if k, err := c.ReadBatch(msgs); err != nil {
			t.Fatal(err)
		} else if k == 1 {
			found = true
		}
	}
	if !found {
		t.Fatal("a datagram for the closed shard reached no other shard")
	}
	for _, c := range conns[1:] {
		if _, err := n.ListenUDP(to); !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("bind while shards remain: %v", err)
		}
		c.Close()
	}
	listenUDP(t, n, "10.0.0.1:1194")

	for _, k := range []int{0, -1, sock.MaxShards + 1} {
		if _, err := n.ListenUDPShards(ap("10.0.0.2:1"), k); err == nil {
			t.Fatalf("ListenUDPShards with %d shards succeeded", k)
		}
	}
	if cs, err := n.ListenUDPShards(ap("10.0.0.3:0"), 2); err != nil || cs[0].LocalAddr().Port() == 0 || cs[0].LocalAddr() != cs[1].LocalAddr() {
		t.Fatalf("shards on port 0: %v", err)
	}
}

func sum(xs []int) (s int) {
	for _, x := range xs {
		s += x
	}
	return s
}

// In steady state a datagram costs no allocation on either side: buffers are pooled.
func TestUDPNoAllocs(t *testing.T) {
	n := NewNetwork()
	srv := listenUDP(t, n, "10.0.0.1:1194")
	cl := listenUDP(t, n, "192.0.2.1:4000")
	out := make([]sock.Message, 16)
	for i := range out {
		out[i] = sock.Message{Buf: make([]byte, 1300), Addr: srv.LocalAddr()}
	}
	in := newMsgs(sock.MaxBatch, 2048)
	allocs := testing.AllocsPerRun(100, func() {
		if k, err := cl.WriteBatch(out); k != len(out) || err != nil {
			t.Fatalf("WriteBatch: %d, %v", k, err)
		}
		for got := 0; got < len(out); {
			k, err := srv.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			got += k
		}
	})
	if allocs != 0 && !raceEnabled {
		t.Fatalf("%v allocations per batch of %d datagrams", allocs, len(out))
	}
}

// InjectBatch delivers many senders' datagrams to many endpoints, in order per endpoint, even
// when the batch names more endpoints than it gathers for at once.
func TestInjectBatch(t *testing.T) {
	n := NewNetwork()
	var eps []net.PacketConn
	for i := range 12 {
		eps = append(eps, listenPacket(t, n, fmt.Sprintf("192.0.2.%d:1000", i+1)))
	}
	var ds []Datagram
	for k := range 3 * sock.MaxBatch {
		for i := range eps {
			ds = append(ds, Datagram{
				From: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(k)}), 7),
				To:   udpAddr(eps[i]),
				Data: []byte{byte(i), byte(k), byte(k >> 8)},
			})
		}
	}
	ds = append(ds, Datagram{From: ap("198.51.100.1:7"), To: ap("203.0.113.1:1"), Data: []byte("nobody there")})
	n.InjectBatch(ds)
	for i, pc := range eps {
		for k := range 3 * sock.MaxBatch {
			got, from := readFrom(t, pc)
			if got != string([]byte{byte(i), byte(k), byte(k >> 8)}) || from.Addr() != netip.AddrFrom4([4]byte{198, 51, 100, byte(k)}) {
				t.Fatalf("endpoint %d read %x from %v, want datagram %d", i, got, from, k)
			}
		}
	}
}

// A client reading a stream of datagrams allocates nothing per datagram, and each read reports
// its own sender.
func TestReadFromNoAllocs(t *testing.T) {
	n := NewNetwork()
	cl := listenPacket(t, n, "192.0.2.10:5000")
	buf := make([]byte, 2048)
	pkt := make([]byte, 1300)
	srv, to := ap("10.0.0.1:1194"), udpAddr(cl)
	allocs := testing.AllocsPerRun(100, func() {
		n.Inject(srv, to, pkt)
		if k, from, err := cl.ReadFrom(buf); err != nil || k != len(pkt) || from.(*net.UDPAddr).AddrPort() != srv {
			t.Fatalf("ReadFrom: %d from %v, %v", k, from, err)
		}
	})
	if allocs != 0 && !raceEnabled {
		t.Fatalf("%v allocations per datagram", allocs)
	}
	other := ap("10.0.0.2:1194")
	n.Inject(other, udpAddr(cl), pkt)
	n.Inject(srv, udpAddr(cl), pkt)
	for _, want := range []netip.AddrPort{other, srv} {
		if _, from := readFrom(t, cl); from != want {
			t.Fatalf("read from %v, want %v", from, want)
		}
	}
}

// TestIPv6UDP: IPv6 endpoints talk as IPv4 ones do, with the addresses a socket would report; an
// endpoint on :: hears every IPv6 address on its port and reports which one each datagram was
// sent to, and a reply leaves from it.
func TestIPv6UDP(t *testing.T) {
	n := NewNetwork()
	srv := listenUDP(t, n, "[fd00::1]:1194")
	cl := listenPacket(t, n, "[2001:db8::10]:0")
	if _, err := cl.WriteTo([]byte("hello"), net.UDPAddrFromAddrPort(srv.LocalAddr())); err != nil {
		t.Fatal(err)
	}
	msgs := newMsgs(4, 2048)
	if k := readBatch(t, srv, msgs); k != 1 {
		t.Fatalf("read %d datagrams, want 1", k)
	}
	if m := msgs[0]; string(m.Buf[:m.N]) != "hello" || m.Addr != udpAddr(cl) || m.Local != ap("[fd00::1]:1").Addr() {
		t.Fatalf("read %q from %v to %v", m.Buf[:m.N], m.Addr, m.Local)
	}
	if k, err := srv.WriteBatch([]sock.Message{{Buf: []byte("world"), Addr: msgs[0].Addr}}); k != 1 || err != nil {
		t.Fatalf("WriteBatch: %d, %v", k, err)
	}
	if got, from := readFrom(t, cl); got != "world" || from != srv.LocalAddr() {
		t.Fatalf("client read %q from %v", got, from)
	}

	any6 := listenUDP(t, n, "[::]:443")
	for _, to := range []string{"[::1]:443", "[fd00::2]:443"} {
		if _, err := cl.WriteTo([]byte(to), net.UDPAddrFromAddrPort(ap(to))); err != nil {
			t.Fatal(err)
		}
		if k := readBatch(t, any6, msgs); k != 1 || msgs[0].Local != ap(to).Addr() || msgs[0].Addr != udpAddr(cl) {
			t.Fatalf("datagram to %s: Local %v from %v", to, msgs[0].Local, msgs[0].Addr)
		}
		reply := []sock.Message{{Buf: []byte("r"), Addr: msgs[0].Addr, Local: msgs[0].Local}}
		if _, err := any6.WriteBatch(reply); err != nil {
			t.Fatal(err)
		}
		if _, from := readFrom(t, cl); from != ap(to) {
			t.Fatalf("reply from %v, want %s", from, to)
		}
	}
	// Without Local, an endpoint on :: sends from ::1.
	if _, err := any6.WriteBatch([]sock.Message{{Buf: []byte("r"), Addr: udpAddr(cl)}}); err != nil {
		t.Fatal(err)
	}
	if _, from := readFrom(t, cl); from != ap("[::1]:443") {
		t.Fatalf("reply without Local from %v, want [::1]:443", from)
	}
}

// TestFamiliesShareAPort: an IPv4 and an IPv6 endpoint hold one port side by side (unspecified
// or not, UDP and TCP), and each hears its own family only.
func TestFamiliesShareAPort(t *testing.T) {
	n := NewNetwork()
	v4 := listenUDP(t, n, "0.0.0.0:1194")
	v6 := listenUDP(t, n, "[::]:1194")
	listenUDP(t, n, "[::1]:1195")
	listenUDP(t, n, "127.0.0.1:1195")
	if _, err := n.ListenUDP(ap("[::1]:1194")); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("[::1]:1194 under [::]:1194: %v, want EADDRINUSE", err)
	}
	for _, a := range []string{"0.0.0.0:443", "[::]:443"} {
		ln, err := n.ListenTCP(ap(a))
		if err != nil {
			t.Fatalf("TCP %s: %v", a, err)
		}
		t.Cleanup(func() { ln.Close() })
	}
	n.Inject(ap("192.0.2.1:5000"), ap("10.0.0.1:1194"), []byte("four"))
	n.Inject(ap("[2001:db8::1]:5000"), ap("[fd00::1]:1194"), []byte("six"))
	msgs := newMsgs(4, 100)
	if k := readBatch(t, v4, msgs); k != 1 || string(msgs[0].Buf[:msgs[0].N]) != "four" {
		t.Fatalf("the IPv4 endpoint read %d: %q", k, msgs[0].Buf[:msgs[0].N])
	}
	if k := readBatch(t, v6, msgs); k != 1 || string(msgs[0].Buf[:msgs[0].N]) != "six" || msgs[0].Local != ap("[fd00::1]:1").Addr() {
		t.Fatalf("the IPv6 endpoint read %d: %q to %v", k, msgs[0].Buf[:msgs[0].N], msgs[0].Local)
	}
}

// TestFamilyMismatch: an endpoint refuses to send to or from the other family, naming both
// addresses (sock.ErrFamily, as the host's sockets); no datagram crosses families, even injected
// or rewritten by a filter; a TCP dial cannot either.
func TestFamilyMismatch(t *testing.T) {
	n := NewNetwork()
	v4 := listenUDP(t, n, "10.0.0.1:1194")
	v6 := listenUDP(t, n, "[fd00::1]:1194")
	for _, tc := range []struct {
		c    sock.Conn
		m    sock.Message
		name string // the address the error names
	}{
		{v4, sock.Message{Buf: []byte("x"), Addr: v6.LocalAddr()}, "[fd00::1]:1194"},
		{v6, sock.Message{Buf: []byte("x"), Addr: v4.LocalAddr()}, "10.0.0.1:1194"},
		{v6, sock.Message{Buf: []byte("x"), Addr: ap("[::ffff:10.0.0.1]:1194")}, "10.0.0.1:1194"},
		{v4, sock.Message{Buf: []byte("x"), Addr: ap("10.0.0.2:1"), Local: ap("[fd00::1]:1").Addr()}, "fd00::1"},
		{v6, sock.Message{Buf: []byte("x"), Addr: ap("[fd00::2]:1"), Local: ap("10.0.0.1:1").Addr()}, "10.0.0.1"},
	} {
		_, err := tc.c.WriteBatch([]sock.Message{tc.m})
		if !errors.Is(err, sock.ErrFamily) || !strings.Contains(err.Error(), tc.name) || !strings.Contains(err.Error(), tc.c.LocalAddr().String()) {
			t.Errorf("%v sending %v from %v: %v, want sock.ErrFamily naming %s and the endpoint", tc.c.LocalAddr(), tc.m.Addr, tc.m.Local, err, tc.name)
		}
	}
	pc := listenPacket(t, n, "192.0.2.1:0")
	if _, err := pc.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(v6.LocalAddr())); !errors.Is(err, sock.ErrFamily) {
		t.Errorf("an IPv4 PacketConn to %v: %v", v6.LocalAddr(), err)
	}
	n.Inject(ap("192.0.2.1:5000"), v6.LocalAddr(), []byte("crossed"))
	n.SetFilter(func(from, to netip.AddrPort, pkt []byte) (netip.AddrPort, bool) {
		return ap("192.0.2.9:9"), true // claims an IPv4 source for whatever passes
	})
	pc6 := listenPacket(t, n, "[2001:db8::9]:0")
	if _, err := pc6.WriteTo([]byte("rewritten"), net.UDPAddrFromAddrPort(v6.LocalAddr())); err != nil {
		t.Fatal(err)
	}
	n.SetFilter(nil)
	n.Inject(ap("[2001:db8::1]:5000"), v6.LocalAddr(), []byte("native"))
	msgs := newMsgs(4, 100)
	if k := readBatch(t, v6, msgs); k != 1 || string(msgs[0].Buf[:msgs[0].N]) != "native" {
		t.Fatalf("the IPv6 endpoint read %d datagrams, the first %q: want only the native one", k, msgs[0].Buf[:msgs[0].N])
	}
	ln, err := n.ListenTCP(ap("[::]:443"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := n.DialTCP(context.Background(), ap("192.0.2.7:0"), ap("[fd00::1]:443")); !errors.Is(err, sock.ErrFamily) {
		t.Errorf("an IPv4 dial to an IPv6 listener: %v", err)
	}
}

// TestTCPIPv6: a TCP listener on :: takes connections to any IPv6 address on its port and reports
// the dialled one; a dial without a source comes from ::1.
func TestTCPIPv6(t *testing.T) {
	n := NewNetwork()
	ln, err := n.ListenTCP(ap("[::]:443"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := dial(t, n, "[2001:db8::7]:0", "[fd00::1]:443")
	s := accept(t, ln)
	if sl, sr := s.LocalAddr().(*net.TCPAddr).AddrPort(), s.RemoteAddr().(*net.TCPAddr).AddrPort(); sl != ap("[fd00::1]:443") || sr != c.LocalAddr().(*net.TCPAddr).AddrPort() {
		t.Fatalf("server side %v <- %v", sl, sr)
	}
	go io.Copy(s, s)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	c2 := dial(t, n, "", "[fd00::1]:443")
	if a := c2.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); a != netip.IPv6Loopback() {
		t.Fatalf("a dial without a source from %v, want ::1", a)
	}
}

// TestListenUDPShardsIPv6: the shards of an IPv6 listener are steered as an IPv4 listener's: a
// data packet to shard peer-id mod n, whoever sends it; other datagrams by the pair of addresses.
func TestListenUDPShardsIPv6(t *testing.T) {
	n := NewNetwork()
	const shards = 3
	conns, err := n.ListenUDPShards(ap("[::1]:1194"), shards)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		t.Cleanup(func() { c.Close() })
	}
	to := conns[0].LocalAddr()
	for id := range uint32(12) {
		from := netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(id)}), 4000)
		n.Inject(from, to, dataV2(id, byte(id)))
	}
	ctlFrom := ap("[2001:db8::99]:5000")
	for range 6 {
		n.Inject(ctlFrom, to, []byte{byte(packet.ControlV1) << 3, 1})
	}
	n.SetReadWake(10 * time.Millisecond)
	msgs := newMsgs(sock.MaxBatch, 100)
	data, control, controlShard := 0, 0, -1
	for s, c := range conns {
		for {
			k, err := c.ReadBatch(msgs)
			if err != nil {
				t.Fatal(err)
			}
			if k == 0 {
				break
			}
			for _, m := range msgs[:k] {
				p := m.Buf[:m.N]
				if p[0] == byte(packet.DataV2)<<3 {
					if id := int(p[3]); id%shards != s {
						t.Fatalf("data packet of peer %d on shard %d", id, s)
					}
					data++
					continue
				}
				if controlShard >= 0 && controlShard != s {
					t.Fatalf("control packets of %v on shards %d and %d", ctlFrom, controlShard, s)
				}
				controlShard = s
				control++
			}
		}
	}
	if data != 12 || control != 6 {
		t.Fatalf("%d data and %d control datagrams, want 12 and 6", data, control)
	}
}

// An IPv6 datagram costs no allocation either.
func TestUDPNoAllocsIPv6(t *testing.T) {
	n := NewNetwork()
	srv := listenUDP(t, n, "[fd00::1]:1194")
	cl := listenUDP(t, n, "[2001:db8::1]:4000")
	out := make([]sock.Message, 16)
	for i := range out {
		out[i] = sock.Message{Buf: make([]byte, 1300), Addr: srv.LocalAddr()}
	}
	in := newMsgs(sock.MaxBatch, 2048)
	allocs := testing.AllocsPerRun(100, func() {
		if k, err := cl.WriteBatch(out); k != len(out) || err != nil {
			t.Fatalf("WriteBatch: %d, %v", k, err)
		}
		for got := 0; got < len(out); {
			k, err := srv.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			got += k
		}
	})
	if allocs != 0 && !raceEnabled {
		t.Fatalf("%v allocations per batch of %d datagrams", allocs, len(out))
	}
}
