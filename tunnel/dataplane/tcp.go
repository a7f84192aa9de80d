package dataplane

import (
	"bufio"
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

func (t *TCPListener) acceptLoop() {
	for {
		conn, err := t.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || t.p.closed() {
				return
			}
			t.p.log.Warn("tcp accept failed", "listener", t.addr, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		s := newTCPStream(t, conn)
		t.p.wg.Add(1)
		go func() {
			defer t.p.wg.Done()
			s.readLoop()
		}()
	}
}

// TCPStream is one OpenVPN-over-TCP connection: the link of its session. Its reader goroutine
// owns the session's replay windows; a writer goroutine drains a bounded queue.
type TCPStream struct {
	l      *TCPListener
	conn   net.Conn
	remote netip.AddrPort
	peer   atomic.Pointer[Peer]
	out    chan []byte
	done   chan struct{}
	once   sync.Once
}

var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func newTCPStream(l *TCPListener, conn net.Conn) *TCPStream {
	s := &TCPStream{l: l, conn: conn, remote: addrPortOf(conn.RemoteAddr()), out: make(chan []byte, tcpQueueLen), done: make(chan struct{})}
	go s.writeLoop()
	return s
}

// Attach makes peer the stream's session: its data packets go to it from now on.
func (s *TCPStream) Attach(peer *Peer) { s.peer.Store(peer) }

// Peer is the stream's session, or nil before its hard reset.
func (s *TCPStream) Peer() *Peer { return s.peer.Load() }

func (s *TCPStream) Remote() netip.AddrPort { return s.remote }
func (s *TCPStream) Proto() string          { return "TCPv4_SERVER" }
func (s *TCPStream) Listener() Listener     { return s.l }

func (s *TCPStream) queue(_ *sendBatches, _ *Peer, pkt []byte) { s.Send(pkt) }
func (s *TCPStream) publish(*Peer) *Peer                       { return nil }
func (s *TCPStream) unpublish(*Peer)                           {}

// Send frames pkt with its 2-byte length and queues it for the writer.
func (s *TCPStream) Send(pkt []byte) {
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
// packets to the stream's session.
func (s *TCPStream) readLoop() {
	p := s.l.p
	defer func() {
		s.Close()
		p.cfg.Control.TCPClosed(s)
	}()
	r := bufio.NewReaderSize(s.conn, 64<<10)
	buf := make([]byte, maxTCPPacket+64)
	var batch [][]byte
	for {
		pkt, err := readFrame(r, buf)
		if err != nil {
			if errors.Is(err, errFrameLength) {
				p.drop(counters.Malformed, s.remote)
			}
			return
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
			pt, ok := p.openData(peer, pkt, h, s.remote)
			if !ok {
				continue
			}
			if ip, ok := p.deliverData(peer, pkt, pt); ok {
				batch = append(batch[:0], ip)
				p.writeTUN(batch)
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
