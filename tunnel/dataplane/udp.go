package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/sock"
)

const (
	// udpBatch is how many datagrams one read or write moves.
	udpBatch = 64
	// udpBufSize holds the largest datagram plus tail room for in-place AEAD.
	udpBufSize = 65536
	// splitGap is the room left after each datagram split off a GRO read: the in-place AEAD open
	// writes the tag just past the ciphertext.
	splitGap = 32
)

// UDPListener is one listening address: its sockets (shards), each with its receive goroutine,
// and the published sessions of its clients by address. The session layer sees only the
// listener; which shard a packet came through does not matter to it.
//
// With several shards (an SO_REUSEPORT group, sock.ShardedNetwork) the kernel steers a
// P_DATA_V2 packet to shard peer-id mod n, so one session's packets normally reach one shard,
// but nothing depends on it: a floating client, a P_DATA_V1 client, a kernel without the
// steering program or a network that hashes reach another shard, and the per-peer locks
// (Peer.up) keep the session's state consistent. Sessions never move between listeners: a data
// packet counts only through its session's own listener (any of its shards).
type UDPListener struct {
	p      *Plane
	addr   netip.AddrPort
	shut   atomic.Bool
	shards []*udpShard // fixed at open

	mu     sync.Mutex
	byAddr map[netip.AddrPort]*Peer // published sessions by client address
}

// udpShard is one socket of a listener and its receive goroutine's private state.
type udpShard struct {
	l    *UDPListener
	conn sock.Conn
	mod  sock.Moderator // conn, when it moderates receives; else nil
	// tun is the TUN queue the shard writes its clients' packets into.
	tun tun.Device
	// beat is the receive loop's heartbeat: one more each time round (heartbeat.go); loop names
	// it.
	beat atomic.Uint64
	loop string

	// Owned by the receive goroutine.
	in       []sock.Message
	tunBatch [][]byte
	split    [][]byte // per message slot: room for the datagrams of a GRO read, split apart
}

func newUDPListener(p *Plane, conns []sock.Conn) *UDPListener {
	l := &UDPListener{p: p, addr: conns[0].LocalAddr(), byAddr: make(map[netip.AddrPort]*Peer)}
	for i, c := range conns {
		s := &udpShard{l: l, conn: c, tun: p.queues[i%len(p.queues)].dev,
			loop: fmt.Sprintf("udp %s#%d", l.addr, i)}
		s.mod, _ = c.(sock.Moderator)
		s.in = make([]sock.Message, udpBatch)
		for j := range s.in {
			s.in[j].Buf = make([]byte, udpBufSize)
		}
		s.split = make([][]byte, udpBatch)
		l.shards = append(l.shards, s)
	}
	return l
}

// Addr is the bound address.
func (l *UDPListener) Addr() netip.AddrPort { return l.addr }

// Proto is "udp".
func (l *UDPListener) Proto() string { return "udp" }

func (l *UDPListener) close() {
	l.shut.Store(true)
	for _, s := range l.shards {
		s.conn.Close()
	}
}

// open reports whether the listener was not closed.
func (l *UDPListener) open() bool { return !l.shut.Load() }

// shard returns the shard that the TUN queue q sends through.
func (l *UDPListener) shard(q int) *udpShard { return l.shards[q%len(l.shards)] }

// Lookup returns the published session of the client at from, or nil.
func (l *UDPListener) Lookup(from netip.AddrPort) *Peer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byAddr[from]
}

// Peers returns the published sessions of this listener.
func (l *UDPListener) Peers() []*Peer {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*Peer, 0, len(l.byAddr))
	for _, p := range l.byAddr {
		out = append(out, p)
	}
	return out
}

// Send transmits one packet to a client from the local address the client dialled (invalid:
// any). Used for control packets; data leaves in batches.
func (l *UDPListener) Send(pkt []byte, to netip.AddrPort, local netip.Addr) {
	msg := oneMessage.Get().(*[1]sock.Message)
	msg[0] = sock.Message{Buf: pkt, Addr: to, Local: local}
	_, err := l.shards[0].conn.WriteBatch(msg[:]) // any shard: they share the address
	msg[0] = sock.Message{}
	oneMessage.Put(msg)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		l.p.log.Debug("udp send", "listener", l.addr, "to", to, "err", err)
	}
}

// oneMessage holds the batch of one that Send passes through the Conn interface, which would
// otherwise be allocated for every control packet and keepalive.
var oneMessage = sync.Pool{New: func() any { return new([1]sock.Message) }}

// NewLink returns the link of a session whose client is at remote and dialled local.
func (l *UDPListener) NewLink(remote netip.AddrPort, local netip.Addr) Link {
	u := &udpLink{l: l}
	u.dst.Store(&udpDest{remote: remote, local: local})
	return u
}

func (s *udpShard) receiveLoop() {
	l := s.l
	for {
		s.beat.Add(1)
		l.p.wedgePoint()
		n, err := s.conn.ReadBatch(s.in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || l.p.closed() {
				return
			}
			l.p.log.Warn("udp receive failed", "listener", s.loop, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.tunBatch = s.tunBatch[:0]
		datagrams := 0
		for i := range n {
			m := &s.in[i]
			data := m.Buf[:m.N]
			if len(data) == 0 || !m.Addr.IsValid() {
				continue
			}
			seg := m.Segment
			if seg <= 0 || seg >= len(data) {
				datagrams++
				s.handleDatagram(data, m.Addr, m.Local)
				continue
			}
			// A GRO read holds several datagrams back to back: give each its own room, since
			// the packets are opened and handed to the TUN in place.
			if s.split[i] == nil {
				s.split[i] = make([]byte, udpBufSize+udpBatch*splitGap*2)
			}
			buf := s.split[i]
			off := 0
			for len(data) > 0 {
				k := min(seg, len(data))
				if off+k+splitGap > len(buf) {
					break
				}
				copy(buf[off:], data[:k])
				datagrams++
				s.handleDatagram(buf[off:off+k:off+k+splitGap], m.Addr, m.Local)
				data = data[k:]
				off += k + splitGap
			}
		}
		l.p.writeTUN(s.tun, s.tunBatch)
		if datagrams >= coalesceMinBatch && n < len(s.in) {
			s.coalesce() // busy: let the next read gather a batch
		}
	}
}

// handleDatagram classifies one datagram from a client.
func (s *udpShard) handleDatagram(pkt []byte, from netip.AddrPort, local netip.Addr) {
	op, _ := packet.SplitHeader(pkt[0])
	switch {
	case op.IsData():
		s.receiveData(pkt, from, local)
	case op.IsControl():
		s.l.p.cfg.Control.UDPControl(s.l, pkt, from, local)
	default:
		if s.l.p.drops.Add(counters.Malformed) {
			s.l.p.drops.Detail(counters.Malformed, "from", from)
		}
	}
}

// receiveData authenticates a data packet from a UDP client and queues its IP packet for the
// TUN. A packet that authenticates from a new address moves the session there (floating, for
// NAT rebinding), unless another session holds that address: then it is dropped and the owner
// keeps its session. The peer's up.mu is held from before its address is read until the packet
// is queued, so packets of one session that reach two shards at once (a float, P_DATA_V1) pass
// its replay windows, its float and its buckets one at a time.
func (s *udpShard) receiveData(pkt []byte, from netip.AddrPort, local netip.Addr) {
	l := s.l
	p := l.p
	h, err := packet.ParseDataHeader(pkt)
	if err != nil {
		p.drop(counters.Malformed, from)
		return
	}
	var peer *Peer
	if h.Opcode == packet.DataV2 {
		peer = p.peerByID(int(h.PeerID))
	} else {
		peer = l.Lookup(from)
	}
	if peer == nil {
		p.drop(counters.NoSession, from)
		return
	}
	u, ok := peer.link.(*udpLink)
	if !ok || u.l != l {
		// Another listener's (or a TCP) session: it is reached only through its own.
		p.drop(counters.WrongListener, from)
		return
	}
	peer.up.mu.Lock()
	defer peer.up.mu.Unlock()
	dst := u.dst.Load()
	floating := dst.remote != from
	if floating && h.Opcode != packet.DataV2 {
		p.drop(counters.WrongSource, from)
		return
	}
	pt, ok := p.openData(peer, pkt, h, from)
	if !ok {
		return
	}
	if floating && !l.float(peer, u, from, local) {
		return
	}
	if ip, ok := p.deliverData(peer, pkt, pt); ok {
		s.tunBatch = append(s.tunBatch, ip)
	}
}

// float moves a published UDP session to a new address after a packet from there
// authenticated. The caller holds peer.up.mu. It refuses (and counts) a move onto an address another session holds, as the
// stock server does (multi.c, multi_process_float): the holder must not be disturbed by another
// client's packets, whether they come from a NAT that rebound or from an attacker.
func (l *UDPListener) float(peer *Peer, u *udpLink, to netip.AddrPort, local netip.Addr) bool {
	l.mu.Lock()
	if other := l.byAddr[to]; other != nil && other != peer {
		l.mu.Unlock()
		l.p.drop(counters.FloatConflict, to)
		return false
	}
	from := u.dst.Load().remote
	if l.byAddr[from] == peer {
		delete(l.byAddr, from)
	}
	l.byAddr[to] = peer
	u.dst.Store(&udpDest{remote: to, local: local})
	l.mu.Unlock()
	if id := peer.Identity(); id != nil {
		l.p.log.Info("client floated", "user", id.User, "from", from, "to", to)
	}
	return true
}

// udpDest is where a UDP session's packets go: the client's address and the local address it
// dialled. Replaced as a whole when the client floats.
type udpDest struct {
	remote netip.AddrPort
	local  netip.Addr
}

// udpLink sends through a shared UDP socket to the client's current address.
type udpLink struct {
	l   *UDPListener
	dst atomic.Pointer[udpDest]
}

func (u *udpLink) Send(pkt []byte) {
	d := u.dst.Load()
	u.l.Send(pkt, d.remote, d.local)
}

func (u *udpLink) Remote() netip.AddrPort                       { return u.dst.Load().remote }
func (u *udpLink) Proto() string                                { return "UDPv4" }
func (u *udpLink) Listener() Listener                           { return u.l }
func (u *udpLink) Close()                                       {}
func (u *udpLink) queue(b *sendBatches, peer *Peer, pkt []byte) { b.udp(u, peer, pkt) }

func (u *udpLink) publish(peer *Peer) *Peer {
	l := u.l
	l.mu.Lock()
	defer l.mu.Unlock()
	remote := u.dst.Load().remote
	old := l.byAddr[remote]
	l.byAddr[remote] = peer
	if old == peer {
		return nil
	}
	return old
}

func (u *udpLink) unpublish(peer *Peer) {
	l := u.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if remote := u.dst.Load().remote; l.byAddr[remote] == peer {
		delete(l.byAddr, remote)
	}
}

// drop counts a refusal with the sender as its detail.
func (p *Plane) drop(r counters.Reason, from netip.AddrPort) {
	if p.drops.Add(r) {
		p.drops.Detail(r, "from", from)
	}
}
