package dataplane

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/counters"
)

// Link is how packets reach one session's client: a UDP listener and the client's address, or
// the client's own TCP stream. Send never blocks on the network; a TCP stream that cannot keep
// up drops.
type Link interface {
	Send(pkt []byte)
	Remote() netip.AddrPort
	// Proto is the transport as OpenVPN's options string names it.
	Proto() string
	// Listener is the listener the client connected through.
	Listener() Listener
	Close()

	// queue adds a sealed data packet from the TUN reader to the outgoing batch.
	queue(b *sendBatches, peer *Peer, pkt []byte)
	publish(peer *Peer) (replaced *Peer)
	unpublish(peer *Peer)
}

// maxTCPPacket bounds one framed packet; OpenVPN calls anything larger a bad encapsulated length.
const maxTCPPacket = 4096

// tcpQueueLen bounds the packets waiting for one TCP client; beyond it packets are dropped, so a
// stalled client never holds memory or other clients back.
const tcpQueueLen = 1024

// tcpWriteTimeout ends a TCP session whose peer stops reading.
const tcpWriteTimeout = 30 * time.Second

// TCPLimits bound TCP connections that have not authenticated (Config.TCP).
type TCPLimits struct {
	FirstPacket time.Duration
	PerSource   int
	Total       int
}

// TCPListener accepts OpenVPN-over-TCP connections. Each connection is one session.
type TCPListener struct {
	p    *Plane
	ln   net.Listener
	addr netip.AddrPort
}

// Addr is the bound address.
func (t *TCPListener) Addr() netip.AddrPort { return t.addr }

// Proto is "tcp".
func (t *TCPListener) Proto() string { return "tcp" }

func (t *TCPListener) close() { t.ln.Close() }

// Accept backoff: after a failed accept (out of descriptors, say) the loop waits, doubling from
// acceptBackoffMin to acceptBackoffMax while accepts keep failing, and logs at most one line per
// acceptLogEvery with the failures since.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
	acceptLogEvery   = 10 * time.Second
)

func (t *TCPListener) acceptLoop() {
	var backoff time.Duration
	var failed int
	var logged time.Time
	for {
		conn, err := t.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || t.p.closed() {
				return
			}
			failed++
			if now := time.Now(); now.Sub(logged) >= acceptLogEvery {
				t.p.log.Warn("tcp accept failed", "listener", t.addr, "err", err, "failures", failed)
				logged, failed = now, 0
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			select {
			case <-time.After(backoff):
			case <-t.p.done:
				return
			}
			continue
		}
		backoff = 0
		remote := addrPortOf(conn.RemoteAddr())
		if !t.p.admitTCP(remote.Addr()) {
			t.p.drop(counters.TCPLimit, remote)
			conn.Close()
			continue
		}
		s := newTCPStream(t, conn, remote)
		t.p.wg.Add(1)
		go func() {
			defer t.p.wg.Done()
			s.readLoop()
		}()
	}
}

// admitTCP counts a new unauthenticated connection from addr, if the caps allow it.
func (p *Plane) admitTCP(addr netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tcpUnauthAll >= p.cfg.TCP.Total || p.tcpUnauth[addr] >= p.cfg.TCP.PerSource {
		return false
	}
	p.tcpUnauthAll++
	p.tcpUnauth[addr]++
	return true
}

// releaseTCP uncounts an unauthenticated connection from addr.
func (p *Plane) releaseTCP(addr netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tcpUnauthAll--
	if p.tcpUnauth[addr]--; p.tcpUnauth[addr] <= 0 {
		delete(p.tcpUnauth, addr)
	}
}

// TCPStream is one OpenVPN-over-TCP connection: the link of its session. Its reader goroutine
// is the only one that receives the session's packets; a writer goroutine, started with the first packet to send,
// drains a bounded queue. A connection that never sends costs its reader goroutine only: no
// buffers, no writer.
type TCPStream struct {
	l      *TCPListener
	conn   net.Conn
	remote netip.AddrPort
	peer   atomic.Pointer[Peer]
	out    chan []byte
	done   chan struct{}
	once   sync.Once
	writer sync.Once
	// counted says the stream still counts as unauthenticated (Plane.admitTCP); cleared once,
	// when its session is published or the stream ends.
	counted atomic.Bool
}

var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func newTCPStream(l *TCPListener, conn net.Conn, remote netip.AddrPort) *TCPStream {
	s := &TCPStream{l: l, conn: conn, remote: remote, done: make(chan struct{})}
	s.counted.Store(true)
	return s
}

// authenticated takes the stream out of the unauthenticated counts, once.
func (s *TCPStream) authenticated() {
	if s.counted.Swap(false) {
		s.l.p.releaseTCP(s.remote.Addr())
	}
}

// Attach makes peer the stream's session: its data packets go to it from now on.
func (s *TCPStream) Attach(peer *Peer) { s.peer.Store(peer) }

// Peer is the stream's session, or nil before its hard reset.
func (s *TCPStream) Peer() *Peer { return s.peer.Load() }

func (s *TCPStream) Remote() netip.AddrPort { return s.remote }
func (s *TCPStream) Proto() string          { return "TCPv4_SERVER" }
func (s *TCPStream) Listener() Listener     { return s.l }

func (s *TCPStream) queue(_ *sendBatches, _ *Peer, pkt []byte) { s.Send(pkt) }

// publish: the stream's session authenticated, so the stream no longer counts against the caps
// on unauthenticated connections.
func (s *TCPStream) publish(*Peer) *Peer {
	s.authenticated()
	return nil
}

func (s *TCPStream) unpublish(*Peer) {}

// Send frames pkt with its 2-byte length and queues it for the writer.
func (s *TCPStream) Send(pkt []byte) {
	s.writer.Do(func() {
		s.out = make(chan []byte, tcpQueueLen)
		go s.writeLoop()
	})
	bp := framePool.Get().(*[]byte)
	b := binary.BigEndian.AppendUint16((*bp)[:0], uint16(len(pkt)))
	b = append(b, pkt...)
	select {
	case s.out <- b:
	case <-s.done:
		framePool.Put(bp)
	default:
		framePool.Put(bp)
		s.l.p.drop(counters.TCPBackpressure, s.remote)
	}
}

// writeLoop writes queued frames, flushing whenever the queue runs dry.
func (s *TCPStream) writeLoop() {
	w := bufio.NewWriterSize(s.conn, 64<<10)
	for {
		var b []byte
		select {
		case b = <-s.out:
		case <-s.done:
			return
		}
		_ = s.conn.SetWriteDeadline(time.Now().Add(tcpWriteTimeout))
		_, err := w.Write(b)
		b = b[:0]
		framePool.Put(&b)
		if err == nil && len(s.out) == 0 {
			err = w.Flush()
		}
		if err != nil {
			s.Close()
			return
		}
	}
}

// Close ends the connection; the reader then ends and reports it to the session layer.
func (s *TCPStream) Close() {
	s.once.Do(func() {
		close(s.done)
		s.conn.Close()
	})
}

// readLoop reads length-framed packets: control packets go to the session layer (which creates
// the session on the client's hard reset: the connection itself proves the address), data
// packets to the stream's session. The first packet must arrive whole within
// TCPLimits.FirstPacket; its buffers are allocated only once its length arrived.
func (s *TCPStream) readLoop() {
	p := s.l.p
	defer func() {
		s.Close()
		s.authenticated() // uncount, if still counted
		p.cfg.Control.TCPClosed(s)
	}()
	_ = s.conn.SetReadDeadline(time.Now().Add(p.cfg.TCP.FirstPacket))
	var lenb [2]byte
	if _, err := io.ReadFull(s.conn, lenb[:]); err != nil {
		if isTimeout(err) {
			p.drop(counters.TCPSilent, s.remote)
		}
		return
	}
	r := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(lenb[:]), s.conn), 64<<10)
	buf := make([]byte, maxTCPPacket+64)
	var batch [][]byte
	for first := true; ; first = false {
		pkt, err := readFrame(r, buf)
		if err != nil {
			switch {
			case errors.Is(err, errFrameLength):
				p.drop(counters.Malformed, s.remote)
			case first && isTimeout(err):
				p.drop(counters.TCPSilent, s.remote)
			}
			return
		}
		if first {
			_ = s.conn.SetReadDeadline(time.Time{})
		}
		op, _ := packet.SplitHeader(pkt[0])
		switch {
		case op.IsData():
			peer := s.peer.Load()
			if peer == nil {
				p.drop(counters.NoSession, s.remote)
				return
			}
			h, err := packet.ParseDataHeader(pkt)
			if err != nil {
				p.drop(counters.Malformed, s.remote)
				continue
			}
			if peer.Identity() == nil { // data before the session authenticated
				p.drop(counters.NoKey, s.remote)
				continue
			}
			if ip, ok := p.receiveStream(peer, pkt, h, s.remote); ok {
				batch = append(batch[:0], ip)
				p.writeTUN(p.queues[0].dev, batch)
			}
		case op.IsControl():
			if !p.cfg.Control.TCPControl(s, pkt) {
				return
			}
		default:
			p.drop(counters.Malformed, s.remote)
			return
		}
	}
}

// receiveStream opens and delivers a data packet of a TCP stream's session. The stream's reader
// is the only goroutine that sees the session's packets, so its lock is never contended.
func (p *Plane) receiveStream(peer *Peer, pkt []byte, h packet.DataHeader, from netip.AddrPort) ([]byte, bool) {
	peer.up.mu.Lock()
	defer peer.up.mu.Unlock()
	pt, ok := p.openData(peer, pkt, h, from)
	if !ok {
		return nil, false
	}
	return p.deliverData(peer, pkt, pt)
}

// isTimeout reports whether err is a deadline that passed.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// errFrameLength is a TCP frame whose length is 0 or larger than any OpenVPN packet.
var errFrameLength = errors.New("dataplane: bad encapsulated packet length")

// readFrame reads one length-prefixed packet (2-byte big-endian length, then the packet) into buf,
// which must hold maxTCPPacket bytes. A bad length ends the stream: framing cannot resync.
func readFrame(r io.Reader, buf []byte) ([]byte, error) {
	var lenb [2]byte
	if _, err := io.ReadFull(r, lenb[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(lenb[:]))
	if n == 0 || n > maxTCPPacket || n > len(buf) {
		return nil, errFrameLength
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return nil, err
	}
	return buf[:n], nil
}
