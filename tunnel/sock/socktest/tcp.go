package socktest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cvpn/cvpn/tunnel/sock"
)

// backlogLen bounds the connections waiting for Accept; DialTCP waits while the backlog is full.
const backlogLen = 128

// pipeCap is how many bytes one direction of a connection buffers, as a socket's send and receive
// buffers together would; a writer waits while it is full.
const pipeCap = 256 << 10

// ListenTCP binds a TCP listener: port 0 picks a free port; on the unspecified address it takes
// connections to every address on its port. Accepted connections report the address the client
// dialled as their LocalAddr; all addresses are *net.TCPAddr.
func (n *Network) ListenTCP(ap netip.AddrPort) (net.Listener, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	bound, err := n.bind(ap, true, n.tcpTaken)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err}
	}
	l := &listener{
		net:   n,
		local: bound,
		ready: make(chan struct{}, 1),
		room:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	n.tcp[bound] = l
	return l, nil
}

// tcpTaken says whether a listener or a client connection holds ap. The caller holds n.mu.
func (n *Network) tcpTaken(ap netip.AddrPort) bool { return n.tcp[ap] != nil || n.tcpConns[ap] }

// DialTCP connects to the listener on to, from the address from (its port 0: a free port; its
// address invalid or unspecified: loopback). The connection is ready when DialTCP returns; it
// waits in the listener's backlog until accepted. With nobody listening it fails with
// ECONNREFUSED.
func (n *Network) DialTCP(ctx context.Context, from, to netip.AddrPort) (net.Conn, error) {
	to = unmap(to)
	fail := func(err error) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Source: tcpAddr(from), Addr: tcpAddr(to), Err: err}
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if !to.IsValid() || to.Port() == 0 {
		return fail(errors.New("no destination address"))
	}
	if !from.Addr().IsValid() {
		from = netip.AddrPortFrom(unspecified(to.Addr()), from.Port())
	}
	from = netip.AddrPortFrom(source(from.Addr().Unmap()), from.Port())
	if from.Addr().Is6() != to.Addr().Is6() {
		return fail(sock.ErrFamily)
	}
	n.mu.Lock()
	l := n.tcp[to]
	if l == nil {
		l = n.tcp[netip.AddrPortFrom(unspecified(to.Addr()), to.Port())]
	}
	if l == nil {
		n.mu.Unlock()
		return fail(syscall.ECONNREFUSED)
	}
	from, err := n.bind(from, true, n.tcpTaken)
	if err != nil {
		n.mu.Unlock()
		return fail(err)
	}
	n.tcpConns[from] = true
	n.mu.Unlock()

	client, server := newStreamPair(from, to)
	client.release = func() {
		n.mu.Lock()
		delete(n.tcpConns, from)
		n.unbind(from, true)
		n.mu.Unlock()
	}
	if err := l.enqueue(ctx, server); err != nil {
		client.Close()
		return fail(err)
	}
	return client, nil
}

func tcpAddr(ap netip.AddrPort) net.Addr {
	if !ap.IsValid() {
		return nil
	}
	return net.TCPAddrFromAddrPort(ap)
}

// listener is a bound TCP port and its backlog.
type listener struct {
	net   *Network
	local netip.AddrPort

	mu      sync.Mutex
	backlog []*stream // guarded by mu
	closed  bool      // guarded by mu

	ready     chan struct{} // holds a token while the backlog may be non-empty
	room      chan struct{} // holds a token while the backlog may have room
	done      chan struct{} // closed by Close
	closeOnce sync.Once
}

func (l *listener) enqueue(ctx context.Context, s *stream) error {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return syscall.ECONNREFUSED
		}
		if len(l.backlog) < backlogLen {
			l.backlog = append(l.backlog, s)
			signal(l.ready)
			if len(l.backlog) < backlogLen {
				signal(l.room) // for the next dialler
			}
			l.mu.Unlock()
			return nil
		}
		l.mu.Unlock()
		select {
		case <-l.room:
		case <-l.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
		}
		if len(l.backlog) > 0 {
			s := l.backlog[0]
			l.backlog[0] = nil
			l.backlog = l.backlog[1:]
			if len(l.backlog) > 0 {
				signal(l.ready) // for the next Accept
			}
			signal(l.room)
			l.mu.Unlock()
			return s, nil
		}
		l.mu.Unlock()
		select {
		case <-l.ready:
		case <-l.done:
		}
	}
}

// Close stops the listener; connections in its backlog are closed, so their clients read EOF.
func (l *listener) Close() error {
	first := false
	l.closeOnce.Do(func() {
		first = true
		l.mu.Lock()
		l.closed = true
		pending := l.backlog
		l.backlog = nil
		l.mu.Unlock()
		close(l.done)
		for _, s := range pending {
			s.Close()
		}
		n := l.net
		n.mu.Lock()
		delete(n.tcp, l.local)
		n.unbind(l.local, true)
		n.mu.Unlock()
	})
	if !first {
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
	return nil
}

func (l *listener) Addr() net.Addr { return net.TCPAddrFromAddrPort(l.local) }

// pipe is one direction of a connection: the bytes written and not yet read.
type pipe struct {
	mu  sync.Mutex
	buf []byte // guarded by mu

	readable   chan struct{} // holds a token while buf may be non-empty
	writable   chan struct{} // holds a token while buf may have room
	readerGone chan struct{} // closed when the reading end closes: writes fail
	writerGone chan struct{} // closed when the writing end closes: reads drain buf, then EOF
}

func newPipe() *pipe {
	return &pipe{
		readable:   make(chan struct{}, 1),
		writable:   make(chan struct{}, 1),
		readerGone: make(chan struct{}),
		writerGone: make(chan struct{}),
	}
}

// stream is one end of a connection.
type stream struct {
	local, remote netip.AddrPort
	rx, tx        *pipe
	rd, wd        deadline
	done          chan struct{} // closed by Close
	closeOnce     sync.Once
	release       func() // run once by Close: frees the client's port
}

func newStreamPair(client, server netip.AddrPort) (*stream, *stream) {
	up, down := newPipe(), newPipe()
	c := &stream{local: client, remote: server, rx: down, tx: up, done: make(chan struct{})}
	s := &stream{local: server, remote: client, rx: up, tx: down, done: make(chan struct{})}
	return c, s
}

func (s *stream) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: s.LocalAddr(), Addr: s.RemoteAddr(), Err: err}
}

func (s *stream) Read(b []byte) (int, error) {
	expired := s.rd.expired()
	p := s.rx
	for {
		select {
		case <-s.done:
			return 0, s.opError("read", net.ErrClosed)
		case <-expired:
			return 0, s.opError("read", os.ErrDeadlineExceeded)
		default:
		}
		if len(b) == 0 {
			return 0, nil
		}
		p.mu.Lock()
		if len(p.buf) > 0 {
			n := copy(b, p.buf)
			p.buf = p.buf[:copy(p.buf, p.buf[n:])]
			if len(p.buf) > 0 {
				signal(p.readable) // for the next reader
			}
			signal(p.writable)
			p.mu.Unlock()
			return n, nil
		}
		gone := isClosed(p.writerGone)
		p.mu.Unlock()
		if gone {
			return 0, io.EOF // the peer closed and everything it wrote has been read
		}
		select {
		case <-p.readable:
		case <-p.writerGone:
		case <-s.done:
		case <-expired:
		}
	}
}

func (s *stream) Write(b []byte) (int, error) {
	expired := s.wd.expired()
	p := s.tx
	written := 0
	for {
		select {
		case <-s.done:
			return written, s.opError("write", net.ErrClosed)
		case <-expired:
			return written, s.opError("write", os.ErrDeadlineExceeded)
		case <-p.readerGone:
			return written, s.opError("write", syscall.EPIPE)
		default:
		}
		if written == len(b) {
			return written, nil
		}
		p.mu.Lock()
		if room := pipeCap - len(p.buf); room > 0 {
			k := min(room, len(b)-written)
			p.buf = append(p.buf, b[written:written+k]...)
			written += k
			signal(p.readable)
			p.mu.Unlock()
			continue
		}
		p.mu.Unlock()
		select {
		case <-p.writable:
		case <-p.readerGone:
		case <-s.done:
		case <-expired:
		}
	}
}

// Close ends the connection: the peer reads what was written, then EOF, and its writes fail.
func (s *stream) Close() error {
	first := false
	s.closeOnce.Do(func() {
		first = true
		close(s.done)
		close(s.rx.readerGone)
		close(s.tx.writerGone)
		s.rx.mu.Lock()
		s.rx.buf = nil
		s.rx.mu.Unlock()
		if s.release != nil {
			s.release()
		}
	})
	if !first {
		return s.opError("close", net.ErrClosed)
	}
	return nil
}

func (s *stream) LocalAddr() net.Addr  { return net.TCPAddrFromAddrPort(s.local) }
func (s *stream) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(s.remote) }

func (s *stream) SetDeadline(t time.Time) error {
	s.rd.set(t)
	s.wd.set(t)
	return nil
}

func (s *stream) SetReadDeadline(t time.Time) error {
	s.rd.set(t)
	return nil
}

func (s *stream) SetWriteDeadline(t time.Time) error {
	s.wd.set(t)
	return nil
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
