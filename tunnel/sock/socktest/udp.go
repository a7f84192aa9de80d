package socktest

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cvpn/cvpn/tunnel/sock"
)

// datagram is one queued datagram: who sent it, the address it was sent to, and the network's
// copy of its bytes.
type datagram struct {
	from, to netip.AddrPort
	data     []byte
}

// endpoint is a bound UDP port: the receive queue that both kinds of socket read.
type endpoint struct {
	net   *Network
	local netip.AddrPort // as bound: the address may be unspecified

	mu     sync.Mutex
	queue  []datagram // guarded by mu
	closed bool       // guarded by mu

	ready     chan struct{} // holds a token while the queue may be non-empty
	done      chan struct{} // closed by close
	closeOnce sync.Once
}

func (n *Network) listenUDP(ap netip.AddrPort) (*endpoint, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ap, err := n.bind(ap, false, func(a netip.AddrPort) bool { return n.udp[a] != nil })
	if err != nil {
		return nil, err
	}
	e := &endpoint{net: n, local: ap, ready: make(chan struct{}, 1), done: make(chan struct{})}
	n.udp[ap] = e
	return e, nil
}

func (e *endpoint) enqueue(d datagram) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || len(e.queue) >= QueueLen {
		return
	}
	e.queue = append(e.queue, d)
	signal(e.ready)
}

// receive waits until datagrams are queued, the endpoint closes or expired is closed, then lets
// take consume a prefix of the queue (take returns how many it consumed).
func (e *endpoint) receive(expired <-chan struct{}, take func([]datagram) int) error {
	for {
		select {
		case <-expired:
			return os.ErrDeadlineExceeded
		default:
		}
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			return net.ErrClosed
		}
		if len(e.queue) > 0 {
			k := take(e.queue)
			clear(e.queue[:k])
			e.queue = e.queue[k:]
			if len(e.queue) > 0 {
				signal(e.ready) // for the next reader
			} else {
				e.queue = nil
			}
			e.mu.Unlock()
			return nil
		}
		e.mu.Unlock()
		select {
		case <-e.ready:
		case <-e.done:
		case <-expired:
		}
	}
}

// sendFrom sends pkt to the destination, from src when valid, else from the bound address.
func (e *endpoint) sendFrom(src netip.Addr, to netip.AddrPort, pkt []byte) error {
	to = unmap(to)
	if !to.IsValid() {
		return errors.New("socktest: no destination address")
	}
	if len(pkt) > 65535-8 {
		return syscall.EMSGSIZE
	}
	if !src.IsValid() {
		src = source(e.local.Addr())
	}
	e.net.send(netip.AddrPortFrom(src.Unmap(), e.local.Port()), to, pkt)
	return nil
}

func (e *endpoint) isClosed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closed
}

func (e *endpoint) close() {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		e.queue = nil
		e.mu.Unlock()
		close(e.done)
		n := e.net
		n.mu.Lock()
		delete(n.udp, e.local)
		n.unbind(e.local, false)
		n.mu.Unlock()
	})
}

// ListenUDP binds a UDP endpoint for the engine: port 0 picks a free port; on the unspecified
// address it receives datagrams to every address on its port and reports each one's destination
// as Local.
func (n *Network) ListenUDP(ap netip.AddrPort) (sock.Conn, error) {
	e, err := n.listenUDP(ap)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(ap), Err: err}
	}
	return &conn{e}, nil
}

// conn is the engine's side: a sock.Conn.
type conn struct{ e *endpoint }

func (c *conn) ReadBatch(msgs []sock.Message) (int, error) {
	msgs = msgs[:min(len(msgs), sock.MaxBatch)]
	if len(msgs) == 0 {
		if c.e.isClosed() {
			return 0, net.ErrClosed
		}
		return 0, nil
	}
	// As the host's sockets do, give up after the network's read wake (sock.ReadWake).
	woken := make(chan struct{})
	wake := time.AfterFunc(c.e.net.readWake(), func() { close(woken) })
	defer wake.Stop()
	var n int
	err := c.e.receive(woken, func(q []datagram) int {
		n = min(len(q), len(msgs))
		for i, d := range q[:n] {
			m := &msgs[i]
			m.N = copy(m.Buf, d.data)
			m.Addr, m.Local, m.Segment = d.from, d.to.Addr(), 0
		}
		return n
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, nil // nothing came: the reader's loop goes round
	}
	return n, err
}

// WriteBatch delivers every message at once: the network never runs out of buffer. Messages with
// Segment leave as one datagram per segment.
func (c *conn) WriteBatch(msgs []sock.Message) (int, error) {
	sent := 0
	var first error
	for i := range msgs {
		if c.e.isClosed() {
			return sent, net.ErrClosed
		}
		m := &msgs[i]
		var err error
		if m.Segment > 0 && len(m.Buf) > m.Segment {
			for p := m.Buf; len(p) > 0 && err == nil; p = p[min(m.Segment, len(p)):] {
				err = c.e.sendFrom(m.Local, m.Addr, p[:min(m.Segment, len(p))])
			}
		} else {
			err = c.e.sendFrom(m.Local, m.Addr, m.Buf)
		}
		if err == nil {
			sent++
		} else if first == nil {
			first = err
		}
	}
	return sent, first
}

func (c *conn) LocalAddr() netip.AddrPort { return c.e.local }

// GSO is false: nothing here segments cheaper than WriteBatch's loop.
func (c *conn) GSO() bool { return false }

func (c *conn) Close() error {
	c.e.close()
	return nil
}

// ListenPacket binds a UDP endpoint for a client (bench/client takes a net.PacketConn). Addresses
// it reports are *net.UDPAddr; WriteTo takes them (or any net.Addr whose String is an address and
// port).
func (n *Network) ListenPacket(ap netip.AddrPort) (net.PacketConn, error) {
	e, err := n.listenUDP(ap)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(ap), Err: err}
	}
	return &packetConn{e: e}, nil
}

// packetConn is a client's side: a net.PacketConn with deadlines.
type packetConn struct {
	e      *endpoint
	rd, wd deadline
}

func (p *packetConn) opError(op string, addr net.Addr, err error) error {
	return &net.OpError{Op: op, Net: "udp", Source: p.LocalAddr(), Addr: addr, Err: err}
}

func (p *packetConn) ReadFrom(b []byte) (int, net.Addr, error) {
	var n int
	var from netip.AddrPort
	err := p.e.receive(p.rd.expired(), func(q []datagram) int {
		n, from = copy(b, q[0].data), q[0].from
		return 1
	})
	if err != nil {
		return 0, nil, p.opError("read", nil, err)
	}
	return n, net.UDPAddrFromAddrPort(from), nil
}

func (p *packetConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	var to netip.AddrPort
	switch a := addr.(type) {
	case *net.UDPAddr:
		to = a.AddrPort()
	case nil:
		return 0, p.opError("write", addr, errors.New("no destination address"))
	default:
		var err error
		if to, err = netip.ParseAddrPort(a.String()); err != nil {
			return 0, p.opError("write", addr, err)
		}
	}
	if p.e.isClosed() {
		return 0, p.opError("write", addr, net.ErrClosed)
	}
	select {
	case <-p.wd.expired():
		return 0, p.opError("write", addr, os.ErrDeadlineExceeded)
	default:
	}
	if err := p.e.sendFrom(netip.Addr{}, to, b); err != nil {
		return 0, p.opError("write", addr, err)
	}
	return len(b), nil
}

func (p *packetConn) Close() error {
	if p.e.isClosed() {
		return p.opError("close", nil, net.ErrClosed)
	}
	p.e.close()
	return nil
}

func (p *packetConn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(p.e.local) }

func (p *packetConn) SetDeadline(t time.Time) error {
	p.rd.set(t)
	p.wd.set(t)
	return nil
}

func (p *packetConn) SetReadDeadline(t time.Time) error {
	p.rd.set(t)
	return nil
}

func (p *packetConn) SetWriteDeadline(t time.Time) error {
	p.wd.set(t)
	return nil
}
