package socktest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cvpn/cvpn/tunnel/sock"
)

// datagram is one datagram in flight or queued: who sent it, the address it was sent to, and the
// network's copy of its bytes, (*buf)[:n], in a pooled buffer that its receiver gives back.
type datagram struct {
	from, to netip.AddrPort
	buf      *[]byte
	n        int
}

func (d *datagram) data() []byte { return (*d.buf)[:d.n] }

// Datagram buffers come in two sizes: most datagrams (a 1500-byte tunnel's) fit the small one.
const smallBuf, largeBuf = 2048, 65536

var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
var largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}

// copyDatagram returns the network's copy of pkt, in a pooled buffer.
func copyDatagram(from, to netip.AddrPort, pkt []byte) datagram {
	pool := &smallBufs
	if len(pkt) > smallBuf {
		pool = &largeBufs
	}
	buf := pool.Get().(*[]byte)
	return datagram{from: from, to: to, buf: buf, n: copy(*buf, pkt)}
}

// release gives d's buffer back to its pool.
func (d *datagram) release() {
	if d.buf == nil {
		return
	}
	if cap(*d.buf) == smallBuf {
		smallBufs.Put(d.buf)
	} else {
		largeBufs.Put(d.buf)
	}
	d.buf = nil
}

// group is the endpoints bound to one address: one, or the shards of ListenUDPShards. It is
// immutable: a shard that closes leaves a new group in the network's map.
type group struct {
	eps []*endpoint
}

// pick returns the endpoint that receives a datagram: the one endpoint, or the shard that
// sock.Steer names (a data packet's peer-id), else the shard a hash of the addresses names, as a
// reuseport group with the steering program does.
func (g *group) pick(from, to netip.AddrPort, data []byte) *endpoint {
	n := len(g.eps)
	if n == 1 {
		return g.eps[0]
	}
	i := sock.Steer(data, n)
	if i < 0 {
		i = int(flowHash(from, to) % uint32(n))
	}
	return g.eps[i]
}

// flowHash is FNV-1a over both addresses and ports: any fixed function of the pair serves, as
// the kernel's reuseport hash does, so one client's datagrams stay on one shard.
func flowHash(from, to netip.AddrPort) uint32 {
	h := uint32(2166136261)
	mix := func(ap netip.AddrPort) {
		a := ap.Addr().As16()
		for _, c := range a {
			h = (h ^ uint32(c)) * 16777619
		}
		h = (h ^ uint32(ap.Port()>>8)) * 16777619
		h = (h ^ uint32(ap.Port()&0xff)) * 16777619
	}
	mix(from)
	mix(to)
	return h
}

// ring is a queue of datagrams that grows by doubling up to QueueLen (a power of two), so that
// idle endpoints stay small and busy ones stop allocating.
type ring struct {
	slots []datagram
	head  int
	n     int
}

func (r *ring) push(d datagram) bool {
	if r.n == len(r.slots) {
		if len(r.slots) >= QueueLen {
			return false
		}
		grown := make([]datagram, max(16, 2*len(r.slots)))
		for i := range r.n {
			grown[i] = r.slots[(r.head+i)&(len(r.slots)-1)]
		}
		r.slots, r.head = grown, 0
	}
	r.slots[(r.head+r.n)&(len(r.slots)-1)] = d
	r.n++
	return true
}

func (r *ring) pop() datagram {
	i := r.head
	d := r.slots[i]
	r.slots[i] = datagram{}
	r.head = (i + 1) & (len(r.slots) - 1)
	r.n--
	return d
}

// endpoint is a bound UDP socket: the receive queue that both kinds of socket read.
type endpoint struct {
	net   *Network
	local netip.AddrPort // as bound: the address may be unspecified

	// closedFlag mirrors closed for the lock-free checks of the send path.
	closedFlag atomic.Bool

	mu     sync.Mutex
	queue  ring // guarded by mu
	closed bool // guarded by mu

	ready     chan struct{} // holds a token while the queue may be non-empty
	done      chan struct{} // closed by close
	closeOnce sync.Once
}

// listenUDP binds count endpoints to ap (count > 1: a reuseport group).
func (n *Network) listenUDP(ap netip.AddrPort, count int) ([]*endpoint, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	udp := *n.udp.Load()
	ap, err := n.bind(ap, false, func(a netip.AddrPort) bool { return udp[a] != nil })
	if err != nil {
		return nil, err
	}
	g := &group{eps: make([]*endpoint, count)}
	for i := range g.eps {
		g.eps[i] = &endpoint{net: n, local: ap, ready: make(chan struct{}, 1), done: make(chan struct{})}
	}
	n.setGroup(ap, g)
	return g.eps, nil
}

// setGroup publishes a new map of endpoints in which ap maps to g (nil: nothing). The caller
// holds n.mu.
func (n *Network) setGroup(ap netip.AddrPort, g *group) {
	old := *n.udp.Load()
	next := make(map[netip.AddrPort]*group, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	if g == nil {
		delete(next, ap)
	} else {
		next[ap] = g
	}
	n.udp.Store(&next)
}

// lookup returns the endpoint that receives a datagram to to, or nil.
func (n *Network) lookup(from, to netip.AddrPort, data []byte) *endpoint {
	udp := *n.udp.Load()
	g := udp[to]
	if g == nil {
		g = udp[netip.AddrPortFrom(unspecified(to.Addr()), to.Port())]
		if g == nil {
			return nil
		}
	}
	return g.pick(from, to, data)
}

// route takes the network's copy of a datagram, passes it through the filter when filtered, and
// returns it with the endpoint that receives it; ok is false when nothing does (the copy is then
// released).
func (n *Network) route(from, to netip.AddrPort, pkt []byte, filtered bool) (d datagram, ep *endpoint, ok bool) {
	d = copyDatagram(from, to, pkt)
	if f := n.filter.Load(); filtered && f != nil {
		var deliver bool
		if d.from, deliver = (*f)(from, to, d.data()); !deliver {
			d.release()
			return d, nil, false
		}
		d.from = unmap(d.from)
	}
	// No network carries a datagram between families (an injected or rewritten one that claims
	// to is lost).
	if d.from.Addr().Is6() != to.Addr().Is6() {
		d.release()
		return d, nil, false
	}
	if ep = n.lookup(d.from, to, d.data()); ep == nil {
		d.release()
		return d, nil, false
	}
	return d, ep, true
}

// Inject delivers a datagram to whatever listens on to, claiming to come from from, as an
// attacker on the path could. It bypasses the filter.
func (n *Network) Inject(from, to netip.AddrPort, pkt []byte) {
	if d, ep, ok := n.route(unmap(from), unmap(to), pkt, false); ok {
		ep.enqueue(d)
	}
}

// enqueue queues datagrams (all for e), dropping those beyond QueueLen as a full socket buffer
// does. The queue's lock is taken once for the whole run.
func (e *endpoint) enqueue(ds ...datagram) {
	e.mu.Lock()
	wasEmpty := e.queue.n == 0
	for i := range ds {
		if e.closed || !e.queue.push(ds[i]) {
			ds[i].release()
		}
	}
	// A token is there from the first datagram on until a reader finds the queue empty, so
	// only the change from empty needs one.
	if wasEmpty && e.queue.n > 0 {
		signal(e.ready)
	}
	e.mu.Unlock()
}

// take moves up to len(out) queued datagrams into out, waiting until there are some, the
// endpoint closes, expired is closed, or (wake > 0) wake passes. Expiry wins over queued
// datagrams, as a passed deadline does in package net; it returns os.ErrDeadlineExceeded for
// either. The wake timer is *timer, made on first need and stopped before take returns, so that
// a caller that keeps it arms no new timer per call, and a busy reader none at all.
func (e *endpoint) take(out []datagram, expired <-chan struct{}, wake time.Duration, timer **time.Timer) (int, error) {
	var woken <-chan time.Time
	defer func() {
		if woken != nil {
			(*timer).Stop()
		}
	}()
	for {
		select {
		case <-expired:
			// The token this call may have taken belongs to the next reader.
			signal(e.ready)
			return 0, os.ErrDeadlineExceeded
		default:
		}
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			return 0, net.ErrClosed
		}
		if e.queue.n > 0 {
			k := min(e.queue.n, len(out))
			for i := range k {
				out[i] = e.queue.pop()
			}
			if e.queue.n > 0 {
				signal(e.ready) // for the next reader
			}
			e.mu.Unlock()
			return k, nil
		}
		e.mu.Unlock()
		if wake > 0 && woken == nil {
			if *timer == nil {
				*timer = time.NewTimer(wake)
			} else {
				(*timer).Reset(wake)
			}
			woken = (*timer).C
		}
		select {
		case <-e.ready:
		case <-e.done:
		case <-expired:
		case <-woken:
			woken = nil // fired: nothing to stop
			signal(e.ready)
			return 0, os.ErrDeadlineExceeded
		}
	}
}

// batch gathers the datagrams of one WriteBatch or InjectBatch by receiving endpoint, so that
// each endpoint's lock is taken once per batch rather than once per datagram (a batch for the
// shards of a listener, or for many clients, alternates between endpoints).
type batch struct {
	runs [batchRuns]struct {
		dest *endpoint
		ds   [sock.MaxBatch]datagram
		k    int
	}
	used int // runs[:used] hold datagrams
}

// batchRuns is how many receivers one batch gathers for before it delivers what it has.
const batchRuns = 8

func (b *batch) add(ep *endpoint, d datagram) {
	r := 0
	for r < b.used && b.runs[r].dest != ep {
		r++
	}
	if r == b.used {
		if b.used == batchRuns {
			b.flush()
			r = 0
		}
		b.runs[r].dest = ep
		b.used = r + 1
	}
	run := &b.runs[r]
	run.ds[run.k] = d
	if run.k++; run.k == len(run.ds) {
		run.dest.enqueue(run.ds[:run.k]...)
		clear(run.ds[:run.k])
		run.k = 0
	}
}

func (b *batch) flush() {
	for r := range b.runs[:b.used] {
		run := &b.runs[r]
		if run.k > 0 {
			run.dest.enqueue(run.ds[:run.k]...)
			clear(run.ds[:run.k])
			run.k = 0
		}
		run.dest = nil
	}
	b.used = 0
}

var batches = sync.Pool{New: func() any { return new(batch) }}

// sendFrom sends one datagram from e, through the filter, into b: from src when valid, else from
// the bound address. Datagrams with an invalid destination or too large are refused, and so are
// addresses of the other family than e's, as the host's sockets refuse them (sock.ErrFamily).
func (e *endpoint) sendFrom(b *batch, src netip.Addr, to netip.AddrPort, pkt []byte) error {
	to = unmap(to)
	if err := e.checkDest(to, pkt); err != nil {
		return err
	}
	src = src.Unmap()
	switch {
	case !src.IsValid():
		src = source(e.local.Addr())
	case src.Is6() != e.local.Addr().Is6():
		return fmt.Errorf("socktest: send from %v on the endpoint bound to %v: %w", src, e.local, sock.ErrFamily)
	}
	if d, ep, ok := e.net.route(netip.AddrPortFrom(src, e.local.Port()), to, pkt, true); ok {
		b.add(ep, d)
	} // else lost on the way, as UDP may be
	return nil
}

// Datagram is one datagram of InjectBatch.
type Datagram struct {
	From, To netip.AddrPort
	Data     []byte
}

// InjectBatch injects datagrams as Inject does, each endpoint's in one go: the way for a test
// or benchmark playing many clients to send cheaply. It bypasses the filter.
func (n *Network) InjectBatch(ds []Datagram) {
	b := batches.Get().(*batch)
	for _, x := range ds {
		if d, ep, ok := n.route(unmap(x.From), unmap(x.To), x.Data, false); ok {
			b.add(ep, d)
		}
	}
	b.flush()
	batches.Put(b)
}

func (e *endpoint) isClosed() bool { return e.closedFlag.Load() }

func (e *endpoint) close() {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		e.closedFlag.Store(true)
		for e.queue.n > 0 {
			d := e.queue.pop()
			d.release()
		}
		e.queue = ring{}
		e.mu.Unlock()
		close(e.done)
		n := e.net
		n.mu.Lock()
		defer n.mu.Unlock()
		g := (*n.udp.Load())[e.local]
		if g == nil {
			return
		}
		rest := make([]*endpoint, 0, len(g.eps))
		for _, x := range g.eps {
			if x != e {
				rest = append(rest, x)
			}
		}
		// The shards left share the group's datagrams, as the kernel's group shrinks when a
		// socket leaves it; the port is free when the last one closes.
		if len(rest) > 0 {
			n.setGroup(e.local, &group{eps: rest})
			return
		}
		n.setGroup(e.local, nil)
		n.unbind(e.local, false)
	})
}

// ListenUDP binds a UDP endpoint for the engine: port 0 picks a free port; on the unspecified
// address it receives datagrams to every address on its port and reports each one's destination
// as Local.
func (n *Network) ListenUDP(ap netip.AddrPort) (sock.Conn, error) {
	conns, err := n.ListenUDPShards(ap, 1)
	if err != nil {
		return nil, err
	}
	return conns[0], nil
}

// ListenUDPShards binds count endpoints to one address, as a reuseport group with sock's
// steering program does on the host: a P_DATA_V2 packet reaches shard sock.Steer (its peer-id
// mod count), any other datagram the shard a hash of its source and destination names. A shard
// that closes leaves the group to the others; the port is free once all are closed.
func (n *Network) ListenUDPShards(ap netip.AddrPort, count int) ([]sock.Conn, error) {
	if count < 1 || count > sock.MaxShards {
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(ap), Err: errors.New("socktest: shard count out of range")}
	}
	eps, err := n.listenUDP(ap, count)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(ap), Err: err}
	}
	conns := make([]sock.Conn, len(eps))
	for i, e := range eps {
		conns[i] = &conn{e: e}
	}
	return conns, nil
}

// conn is the engine's side: a sock.Conn.
type conn struct{ e *endpoint }

// readScratch holds the datagrams one ReadBatch takes off the queue, so that they are copied
// out after the queue's lock is released.
type readScratch struct {
	ds    [sock.MaxBatch]datagram
	timer *time.Timer
}

var readScratches = sync.Pool{New: func() any { return new(readScratch) }}

func (c *conn) ReadBatch(msgs []sock.Message) (int, error) {
	msgs = msgs[:min(len(msgs), sock.MaxBatch)]
	if len(msgs) == 0 {
		if c.e.isClosed() {
			return 0, net.ErrClosed
		}
		return 0, nil
	}
	s := readScratches.Get().(*readScratch)
	defer readScratches.Put(s)
	// As the host's sockets do, give up after the network's read wake (sock.ReadWake).
	k, err := c.e.take(s.ds[:len(msgs)], nil, c.e.net.readWake(), &s.timer)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, nil // nothing came: the reader's loop goes round
	}
	for i := range k {
		d := &s.ds[i]
		m := &msgs[i]
		m.N = copy(m.Buf, d.data())
		m.Addr, m.Local, m.Segment = d.from, d.to.Addr(), 0
		d.release()
		*d = datagram{}
	}
	return k, err
}

// WriteBatch delivers every message at once: the network never runs out of buffer. Messages with
// Segment leave as one datagram per segment.
func (c *conn) WriteBatch(msgs []sock.Message) (int, error) {
	b := batches.Get().(*batch)
	defer func() {
		b.flush()
		batches.Put(b)
	}()
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
				err = c.e.sendFrom(b, m.Local, m.Addr, p[:min(m.Segment, len(p))])
			}
		} else {
			err = c.e.sendFrom(b, m.Local, m.Addr, m.Buf)
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
	eps, err := n.listenUDP(ap, 1)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(ap), Err: err}
	}
	return &packetConn{e: eps[0]}, nil
}

// packetConn is a client's side: a net.PacketConn with deadlines.
type packetConn struct {
	e      *endpoint
	rd, wd deadline
	// last is the sender ReadFrom reported last, so that a stream of datagrams from one sender
	// (a client's server) costs no allocation per datagram.
	last atomic.Pointer[net.UDPAddr]
}

func (p *packetConn) opError(op string, addr net.Addr, err error) error {
	return &net.OpError{Op: op, Net: "udp", Source: p.LocalAddr(), Addr: addr, Err: err}
}

func (p *packetConn) ReadFrom(b []byte) (int, net.Addr, error) {
	var one [1]datagram
	if _, err := p.e.take(one[:], p.rd.expired(), 0, nil); err != nil {
		return 0, nil, p.opError("read", nil, err)
	}
	n, from := copy(b, one[0].data()), one[0].from
	one[0].release()
	return n, p.addr(from), nil
}

// addr returns from as a *net.UDPAddr: the one returned last when it is the same sender. Callers
// must not modify it (package net's readers leave theirs alone too).
func (p *packetConn) addr(from netip.AddrPort) *net.UDPAddr {
	if a := p.last.Load(); a != nil && a.AddrPort() == from {
		return a
	}
	a := net.UDPAddrFromAddrPort(from)
	p.last.Store(a)
	return a
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
	if err := p.e.sendOne(to, b); err != nil {
		return 0, p.opError("write", addr, err)
	}
	return len(b), nil
}

// checkDest refuses a datagram of pkt to the (unmapped) address to: none, of the other family
// than e's, or too large.
func (e *endpoint) checkDest(to netip.AddrPort, pkt []byte) error {
	switch {
	case !to.IsValid():
		return errors.New("socktest: no destination address")
	case to.Addr().Is6() != e.local.Addr().Is6():
		return fmt.Errorf("socktest: send to %v on the endpoint bound to %v: %w", to, e.local, sock.ErrFamily)
	case len(pkt) > 65535-8:
		return syscall.EMSGSIZE
	}
	return nil
}

// sendOne sends one datagram from the bound address.
func (e *endpoint) sendOne(to netip.AddrPort, pkt []byte) error {
	to = unmap(to)
	if err := e.checkDest(to, pkt); err != nil {
		return err
	}
	if d, ep, ok := e.net.route(netip.AddrPortFrom(source(e.local.Addr()), e.local.Port()), to, pkt, true); ok {
		ep.enqueue(d)
	}
	return nil
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
