package dataplane

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/ippkt"
	"github.com/cvpn/cvpn/tunnel/sock"
)

const (
	// tunOffset is where packets start in TUN buffers: room for the virtio-net header the TUN
	// writes in front and, on the way out, for the data header, packet-id and tag sealed in place.
	tunOffset = 64
	// tunWriteOffset is the headroom given to the TUN on writes (>= its virtio-net header).
	tunWriteOffset = 16
)

// tunLoop reads packets from the private network through TUN queue q, reverses their NAT, and
// seals and sends each to its client, through shard q mod n of each listener. The kernel puts
// one flow's packets on one queue, so a flow keeps its order; a client's several flows may be
// sealed on several queues at once (packet ids are atomic; the download bucket has its lock).
func (p *Plane) tunLoop(q *tunQueue) {
	dev := q.dev
	batch := dev.BatchSize()
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	for i := range bufs {
		bufs[i] = make([]byte, tunOffset+65535+32)
	}
	out := &sendBatches{queue: q.index, byListener: make(map[*UDPListener]*udpSendBatch)}
	deadline := p.tunDeadline(q)
	for {
		q.beat.Add(1)
		p.wedgePoint()
		n, err := dev.Read(bufs, sizes, tunOffset)
		if err != nil {
			if p.closed() || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return
			}
			if deadline.woke(err) {
				continue // idle: go round, so the heartbeat shows the reader alive
			}
			p.log.Debug("tun read", "queue", q.index, "err", err)
			continue
		}
		pol := p.policy.Load()
		now := p.clockNano()
		for i := range n {
			pkt := bufs[i][tunOffset : tunOffset+sizes[i]]
			info, r := ippkt.Parse(pkt)
			if r != ippkt.OK {
				p.drops.Add(counters.IP(r))
				continue
			}
			pkt = pkt[:info.End]
			var addr netip.Addr
			routed6 := info.Version == 6 && !p.cfg.NAT6
			if routed6 {
				// IPv6 leaves with the clients' own addresses: the destination is the client.
				// The host's own link-scope traffic out of the TUN (router solicitations, MLD)
				// is for no client.
				if addr = info.Dst; addr.IsMulticast() || addr.IsLinkLocalUnicast() {
					p.drops.Add(counters.LocalScope)
					continue
				}
			} else {
				var err error
				if addr, err = p.cfg.NAT.Inbound(pkt); err != nil {
					r := counters.NAT
					if errors.Is(err, nat.ErrNoMapping) {
						r = counters.NoMapping
					}
					p.drops.Add(r)
					continue
				}
			}
			peer := p.peerByAddr(addr)
			if peer == nil {
				if p.drops.Add(counters.NoClient) {
					p.drops.Detail(counters.NoClient, "address", addr)
				}
				continue
			}
			id := peer.ident.Load()
			if routed6 && !peer.fromAllowed(pol, id, pkt, &info) {
				if p.drops.Add(counters.Unauthorized) {
					p.drops.Detail(counters.Unauthorized, "user", id.User, "src", info.Src)
				}
				continue
			}
			if !peer.allowDown(pol, id, now, len(pkt)) {
				p.dropUser(counters.RateLimit, id)
				continue
			}
			p.clampMSS(pkt, &info)
			if sealed, ok := p.seal(peer, bufs[i], tunOffset, len(pkt), now); ok {
				peer.link.queue(out, peer, sealed)
			}
		}
		out.flush()
	}
}

// seal encrypts buf[off:off+n] for peer in place, using the headroom in front of it; now (unix
// nanoseconds, taken once per batch by the caller) stamps the peer's last send. It refuses to
// seal with a key whose packet ids ran out: a nonce is never used twice.
func (p *Plane) seal(peer *Peer, buf []byte, off, n int, now int64) ([]byte, bool) {
	k := peer.sendKey.Load()
	id := peer.ident.Load()
	if k == nil || id == nil {
		return nil, false
	}
	pid, ok := k.nextPacketID()
	if !ok {
		peer.rekeyDue(k)
		p.dropUser(counters.PacketIDExhausted, id)
		return nil, false
	}
	if pid >= RekeyPacketID {
		peer.rekeyDue(k)
	}
	off, n = id.Framing.add(buf, off, n)
	op := packet.DataV1
	if id.DataV2 {
		op = packet.DataV2
	}
	hdr := packet.DataHeaderLen(op)
	pkt := buf[off-hdr-datacrypto.Overhead : off+n]
	packet.PutDataHeader(pkt, op, k.ID, id.PeerID)
	pkt = k.Keys.Seal(pkt, hdr, pid)
	peer.lastSend.Store(now)
	peer.Traffic.Sent(len(pkt))
	return pkt, true
}

// Ping sends the keepalive ping to a peer.
func (p *Plane) Ping(peer *Peer) {
	bp := pingBufs.Get().(*[]byte)
	defer pingBufs.Put(bp)
	buf := *bp
	copy(buf[tunOffset:], packet.PingMagic)
	if pkt, ok := p.seal(peer, buf, tunOffset, len(packet.PingMagic), p.clockNano()); ok {
		peer.link.Send(pkt)
	}
}

// pingBufs hold a ping while it is sealed and sent (a TCP link copies it into its frame).
var pingBufs = sync.Pool{New: func() any {
	b := make([]byte, tunOffset+len(packet.PingMagic)+datacrypto.Overhead+2)
	return &b
}}

// sendBatches collects the sealed packets of one TUN read: UDP ones per listener, so each
// listener sends them with one batched write, through its shard for this TUN queue. Owned by
// the queue's reader.
type sendBatches struct {
	queue      int
	byListener map[*UDPListener]*udpSendBatch
}

func (b *sendBatches) udp(u *udpLink, peer *Peer, pkt []byte) {
	sb := b.byListener[u.l]
	if sb == nil {
		sb = newUDPSendBatch(u.l.shard(b.queue).conn)
		b.byListener[u.l] = sb
	}
	sb.add(u, peer, pkt)
}

func (b *sendBatches) flush() {
	for l, sb := range b.byListener {
		sb.flush(l)
		if l.p.closed() || !l.open() {
			delete(b.byListener, l) // a listener closed by a reload
		}
	}
}

// udpSendBatch collects the sealed packets that leave through one UDP listener. With UDP GSO,
// consecutive same-size packets to one client share one message: the kernel cuts them apart
// (UDP_SEGMENT), which costs far less than a send each.
type udpSendBatch struct {
	conn sock.Conn // the listener's shard it sends through
	msgs []sock.Message
	gso  [][]byte // coalescing buffer per message slot, allocated on first use
	n    int
	// the group being built in msgs[n] (count > 0), for coalescing
	peer  *Peer
	dst   *udpDest
	seg   int
	count int
	first []byte
}

const (
	gsoMaxSegments = 64
	gsoMaxBytes    = 65000
)

func newUDPSendBatch(conn sock.Conn) *udpSendBatch {
	return &udpSendBatch{conn: conn, msgs: make([]sock.Message, udpBatch), gso: make([][]byte, udpBatch)}
}

// add appends a packet for peer, joining the open group when GSO allows.
func (b *udpSendBatch) add(u *udpLink, peer *Peer, pkt []byte) {
	if b.count > 0 && b.conn.GSO() && peer == b.peer && b.count < gsoMaxSegments && len(pkt) <= b.seg &&
		len(b.first) == b.seg && b.total()+len(pkt) <= gsoMaxBytes {
		if b.count == 1 {
			// Start coalescing: copy the first packet into this slot's buffer.
			if b.gso[b.n] == nil {
				b.gso[b.n] = make([]byte, 0, 65536)
			}
			b.gso[b.n] = append(b.gso[b.n][:0], b.first...)
		}
		b.gso[b.n] = append(b.gso[b.n], pkt...)
		b.count++
		if len(pkt) < b.seg {
			b.closeGroup() // a shorter segment can only be the last
		}
		return
	}
	b.closeGroup()
	if b.n == len(b.msgs) {
		b.flush(u.l)
	}
	b.peer, b.dst, b.seg, b.count, b.first = peer, u.dst.Load(), len(pkt), 1, pkt
}

func (b *udpSendBatch) total() int {
	if b.count == 1 {
		return len(b.first)
	}
	return len(b.gso[b.n])
}

// closeGroup turns the open group into message n.
func (b *udpSendBatch) closeGroup() {
	if b.count == 0 {
		return
	}
	m := &b.msgs[b.n]
	m.Buf, m.Addr, m.Local, m.Segment = b.first, b.dst.remote, b.dst.local, 0
	if b.count > 1 {
		m.Buf, m.Segment = b.gso[b.n], b.seg
	}
	b.n++
	b.count, b.peer, b.dst, b.first = 0, nil, nil, nil
}

func (b *udpSendBatch) flush(l *UDPListener) {
	b.closeGroup()
	if b.n == 0 {
		return
	}
	if _, err := b.conn.WriteBatch(b.msgs[:b.n]); err != nil {
		if errors.Is(err, sock.ErrGSO) {
			l.p.log.Warn("UDP GSO refused by the kernel; sending datagrams one by one", "listener", l.addr)
		} else if !errors.Is(err, net.ErrClosed) {
			l.p.log.Debug("udp send", "listener", l.addr, "err", err)
		}
	}
	for i := range b.n {
		b.msgs[i] = sock.Message{}
	}
	b.n = 0
}
