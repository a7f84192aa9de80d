package dataplane

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
)

func frame(p []byte) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(p))), p...) }

func TestReadFrame(t *testing.T) {
	stream := append(frame([]byte{0x38, 1, 2}), frame(bytes.Repeat([]byte{9}, maxTCPPacket))...)
	r := bytes.NewReader(stream)
	buf := make([]byte, maxTCPPacket)
	p, err := readFrame(r, buf)
	if err != nil || !bytes.Equal(p, []byte{0x38, 1, 2}) {
		t.Fatalf("first frame = % x, %v", p, err)
	}
	if p, err = readFrame(r, buf); err != nil || len(p) != maxTCPPacket {
		t.Fatalf("second frame: %d bytes, %v", len(p), err)
	}
	if _, err = readFrame(r, buf); err != io.EOF {
		t.Fatalf("end of stream: %v, want EOF", err)
	}
	for _, bad := range [][]byte{{0, 0}, {0xff, 0xff, 1}, binary.BigEndian.AppendUint16(nil, maxTCPPacket+1)} {
		if _, err := readFrame(bytes.NewReader(bad), buf); !errors.Is(err, errFrameLength) {
			t.Errorf("length % x: %v, want errFrameLength", bad[:2], err)
		}
	}
	if _, err := readFrame(bytes.NewReader([]byte{0, 5, 1, 2}), buf); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated frame: %v, want unexpected EOF", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add(frame([]byte{0x38, 0, 0}))
	f.Add([]byte{0, 0})
	f.Add([]byte{0x10, 0x01, 1})
	f.Fuzz(func(t *testing.T, stream []byte) {
		r := bytes.NewReader(stream)
		buf := make([]byte, maxTCPPacket)
		for {
			p, err := readFrame(r, buf)
			if err != nil {
				return
			}
			if len(p) == 0 || len(p) > maxTCPPacket {
				t.Fatalf("frame of %d bytes accepted", len(p))
			}
		}
	})
}

// tcpControl records the first control packet of each stream and keeps the stream open.
type tcpControl struct {
	nopControl
	mu    sync.Mutex
	first map[netip.AddrPort][]byte
}

func (c *tcpControl) TCPControl(s *TCPStream, pkt []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.first == nil {
		c.first = make(map[netip.AddrPort][]byte)
	}
	c.first[s.Remote()] = append([]byte(nil), pkt...)
	return true
}

func (c *tcpControl) got(from netip.AddrPort) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.first[from] != nil
}

// closedSoon reports whether the server closed conn within d (a read returns EOF or an error
// other than the deadline).
func closedSoon(conn net.Conn, d time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	_, err := conn.Read(b[:])
	return err != nil && !isTimeout(err)
}

// TestTCPUnauthenticatedBounds: silent connections from one source beyond its cap are closed at
// once and the rest when the first-packet deadline passes; the total caps everyone; a client
// that sends its first packet in time is served meanwhile.
func TestTCPUnauthenticatedBounds(t *testing.T) {
	network := socktest.NewNetwork()
	ctl := &tcpControl{}
	pool, _ := ippool.New(netip.MustParsePrefix("10.2.0.0/22"))
	natTable, _ := nat.New(nat.Config{Addr: netip.MustParseAddr("10.0.1.2")})
	az, _ := authz.New(nil)
	p, err := New(Config{Pool: pool, NAT: natTable, Device: tuntest.NewChannelTUN().TUN(), Policy: &Policy{Authz: az},
		Control: ctl, TCP: TCPLimits{FirstPacket: 500 * time.Millisecond, PerSource: 4, Total: 6}})
	if err != nil {
		t.Fatal(err)
	}
	server := netip.MustParseAddrPort("192.0.2.1:443")
	if _, err := p.ListenTCP(network, server); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); p.Wait() })
	dial := func(from string) net.Conn {
		t.Helper()
		c, err := network.DialTCP(context.Background(), netip.MustParseAddrPort(from), server)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var silent []net.Conn
	for i := range 10 {
		silent = append(silent, dial(fmt.Sprintf("203.0.113.1:%d", 40000+i)))
	}
	start := time.Now()
	open := 0
	for _, c := range silent {
		if !closedSoon(c, 100*time.Millisecond) {
			open++
		}
	}
	if open != 4 {
		t.Fatalf("%d of 10 silent connections from one source kept, want its cap of 4", open)
	}
	// Two more sources: the total cap of 6 leaves room for two.
	b1, b2, c3 := dial("198.51.100.1:40000"), dial("198.51.100.2:40000"), dial("198.51.100.3:40000")
	if closedSoon(b1, 50*time.Millisecond) || closedSoon(b2, 50*time.Millisecond) || !closedSoon(c3, 100*time.Millisecond) {
		t.Fatal("the total cap of unauthenticated connections was not applied as 6")
	}
	// b1 sends its first packet in time: it reaches the control plane and stays open.
	if _, err := b1.Write([]byte{0, 3, 0x38, 1, 2}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for !ctl.got(netip.MustParseAddrPort("198.51.100.1:40000")) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !ctl.got(netip.MustParseAddrPort("198.51.100.1:40000")) {
		t.Fatal("a client's first packet did not reach the control plane")
	}
	// The silent ones are closed when the first-packet deadline passes, not the one that spoke.
	for _, c := range append(silent, b2) {
		if !closedSoon(c, time.Second) {
			t.Fatal("a silent connection outlived the first-packet deadline")
		}
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("silent connections closed after %v", waited)
	}
	if closedSoon(b1, 200*time.Millisecond) {
		t.Fatal("the connection that sent its first packet was closed")
	}
	if s := p.drops.Snapshot(); s["tcp_limit"] != 7 || s["tcp_silent"] != 5 {
		t.Fatalf("drops %v, want tcp_limit 7 and tcp_silent 5", s)
	}
	// Closed connections give their places back.
	p.mu.Lock()
	all := p.tcpUnauthAll
	p.mu.Unlock()
	if all != 1 {
		t.Fatalf("%d connections counted as unauthenticated, want 1 (the one still open)", all)
	}
}

// failingListener fails every Accept, as a process out of descriptors sees.
type failingListener struct {
	calls  atomic.Int64
	closed chan struct{}
}

func (f *failingListener) Accept() (net.Conn, error) {
	select {
	case <-f.closed:
		return nil, net.ErrClosed
	default:
	}
	f.calls.Add(1)
	return nil, errors.New("accept4: too many open files")
}
func (f *failingListener) Close() error   { close(f.closed); return nil }
func (f *failingListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 443} }

// TestAcceptErrorsBackOff: a listener that keeps failing is retried with growing waits and
// logged at a bounded rate, instead of spinning a core.
func TestAcceptErrorsBackOff(t *testing.T) {
	var logs strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(b)
	}), nil))
	pool, _ := ippool.New(netip.MustParsePrefix("10.2.0.0/22"))
	natTable, _ := nat.New(nat.Config{Addr: netip.MustParseAddr("10.0.1.2")})
	az, _ := authz.New(nil)
	p, err := New(Config{Pool: pool, NAT: natTable, Device: tuntest.NewChannelTUN().TUN(), Policy: &Policy{Authz: az}, Control: nopControl{}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ln := &failingListener{closed: make(chan struct{})}
	l := &TCPListener{p: p, ln: ln}
	done := make(chan struct{})
	go func() { defer close(done); l.acceptLoop() }()
	time.Sleep(time.Second)
	p.Close()
	ln.Close()
	<-done
	// 5+10+20+...+640 ms is about 1.3 s: at most 8 tries in a second.
	if n := ln.calls.Load(); n < 3 || n > 9 {
		t.Fatalf("%d accepts in a second of failures, want a backed-off handful", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(logs.String(), "tcp accept failed"); n != 1 {
		t.Fatalf("%d log lines for a second of failures, want 1:\n%s", n, logs.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }
