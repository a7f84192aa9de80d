package tunnel

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
)

const (
	// tunOffset is where packets start in TUN buffers: room for the virtio-net header the TUN
	// writes in front and, on the way out, for the data header, packet-id and tag sealed in place.
	tunOffset = 64
	// tunWriteOffset is the headroom given to the TUN on writes (>= its virtio-net header).
	tunWriteOffset = 16
	// sealHeadroom is the V2 header, packet-id and tag in front of a sealed payload.
	sealHeadroom = 4 + datacrypto.Overhead
)

// receiveData authenticates a data packet from a UDP client and queues its IP packet for the TUN.
// It runs on the listener's receive goroutine, which owns the replay windows it touches. A packet
// that authenticates from a new address moves the session there (floating, for NAT rebinding).
func (s *Server) receiveData(l *udpListener, pkt []byte, op packet.Opcode, kid uint8, from netip.AddrPort) {
	var c *client
	if op == packet.DataV2 {
		if len(pkt) < 4 {
			s.drops.add(DropMalformed, "from", from)
			return
		}
		pid := int(pkt[1])<<16 | int(pkt[2])<<8 | int(pkt[3])
		if pid < len(s.peers) {
			c = s.peers[pid].Load()
		}
	} else {
		c = s.lookupAddr(from)
	}
	if c == nil || c.tcp != nil {
		s.drops.add(DropNoSession, "from", from)
		return
	}
	if u, ok := c.link.(udpLink); !ok || u.l != l {
		// Another listener's session: its replay windows belong to that listener's goroutine.
		s.drops.add(DropWrongSource, "from", from)
		return
	}
	floating := c.remote() != from
	if floating && op != packet.DataV2 {
		s.drops.add(DropWrongSource, "from", from)
		return
	}
	pt, hdr, ok := s.openData(c, pkt, op, kid, from)
	if !ok {
		return
	}
	if floating {
		s.float(c, from)
	}
	if ip, ok := s.deliverData(c, pkt, pt, hdr); ok {
		l.tunBatch = append(l.tunBatch, ip)
	}
}

// openData authenticates and decrypts a data packet of c in place and checks its packet-id.
// The caller's goroutine must own c's replay windows (the UDP listener's, or the TCP reader's).
func (s *Server) openData(c *client, pkt []byte, op packet.Opcode, kid uint8, from netip.AddrPort) (pt []byte, hdr int, ok bool) {
	hdr = 1
	if op == packet.DataV2 {
		hdr = 4
	}
	k := c.keys[kid].Load()
	if k == nil {
		s.drops.add(DropNoKey, "from", from)
		return nil, 0, false
	}
	id, pt, err := k.keys.Open(pkt, hdr)
	if err != nil {
		s.drops.add(DropDecrypt, "from", from)
		return nil, 0, false
	}
	if !k.replay.Check(id) {
		s.drops.add(DropReplay, "from", from)
		return nil, 0, false
	}
	c.lastRecv.Store(s.clockNano())
	c.rxBytes.Add(uint64(len(pkt)))
	if k != c.sendKey.Load() && k.newerThan(c.sendKey.Load()) {
		// The client sends with a renegotiated key, so it has it: send with it too.
		c.sendKey.Store(k)
	}
	return pt, hdr, true
}

// deliverData handles a decrypted payload: keepalive and OCC messages stop here; an IP packet is
// unframed, checked against the client's address and the authorization rules, source-NATed, and
// returned as a slice of pkt that starts tunWriteOffset bytes before the IP header.
func (s *Server) deliverData(c *client, pkt, pt []byte, hdr int) ([]byte, bool) {
	pt, ok := c.framing.strip(pt)
	if !ok {
		s.drops.add(DropCompressed, "cn", c.commonName)
		s.refuseCompression(c)
		return nil, false
	}
	if len(pt) == len(packet.PingMagic) && bytes.Equal(pt, packet.PingMagic) {
		return nil, false
	}
	if len(pt) == len(packet.OCCMagic)+1 && bytes.Equal(pt[:len(packet.OCCMagic)], packet.OCCMagic) {
		if pt[len(packet.OCCMagic)] == packet.OCCExit {
			s.disconnect(c, "client sent explicit exit notification")
		}
		return nil, false
	}
	if len(pt) < 20 || pt[0]>>4 != 4 {
		s.drops.add(DropNotIPv4, "cn", c.commonName)
		return nil, false
	}
	src := netip.AddrFrom4([4]byte(pt[12:16]))
	if src != c.addr {
		s.drops.add(DropSpoofedSource, "cn", c.commonName, "src", src)
		return nil, false
	}
	dst := netip.AddrFrom4([4]byte(pt[16:20]))
	pol := s.policy.Load()
	groups := c.uplinkPolicy(pol)
	local := s.cfg.Pool.Prefix().Contains(dst)
	switch {
	case local && !pol.ClientToClient:
		s.drops.add(DropNoRoute, "cn", c.commonName, "dst", dst)
		return nil, false
	case !local && !pol.routed(dst):
		s.drops.add(DropNoRoute, "cn", c.commonName, "dst", dst)
		return nil, false
	case !pol.Authz.Allowed(dst, groups):
		s.drops.add(DropUnauthorized, "cn", c.commonName, "dst", dst)
		s.logDenial(c, dst)
		return nil, false
	case !c.up.Allow(c.lastRecv.Load(), len(pt)): // the time openData just took
		s.drops.add(DropRateLimit, "cn", c.commonName)
		return nil, false
	}
	clampMSS(pt, s.mss)
	if local {
		s.deliverLocal(c, pt)
		return nil, false
	}
	if err := s.cfg.NAT.Outbound(pt); err != nil {
		s.drops.add(DropNAT, "cn", c.commonName, "err", err)
		return nil, false
	}
	// pt lies inside pkt; hand the TUN a slice whose packet starts at tunWriteOffset, without
	// copying. The header, packet-id and tag in front of the payload give at least 21 bytes.
	start := cap(pkt) - cap(pt) - tunWriteOffset
	return pkt[start : start+tunWriteOffset+len(pt)], true
}

// localBufs carries client-to-client packets, which need more headroom than the receive buffer
// leaves in front of the payload to be sealed for the other client.
var localBufs = sync.Pool{New: func() any { b := make([]byte, tunOffset+65536+64); return &b }}

// deliverLocal sends a packet from one client straight to another (a `target: local` route),
// without NAT and without the kernel: the addresses stay the clients' own. Only the sender's
// upload limit applies.
func (s *Server) deliverLocal(from *client, pt []byte) {
	dst := netip.AddrFrom4([4]byte(pt[16:20]))
	idx, ok := s.cfg.Pool.Index(dst)
	var to *client
	if ok {
		to = s.peers[idx].Load()
	}
	if to == nil {
		s.drops.add(DropNoClient, "address", dst)
		return
	}
	bp := localBufs.Get().(*[]byte)
	defer localBufs.Put(bp)
	buf := *bp
	n := copy(buf[tunOffset:], pt)
	if p, ok := s.seal(to, buf, tunOffset, n, from.lastRecv.Load()); ok {
		to.link.send(p)
	}
}

// refuseCompression ends the session of a client that compresses although the server pushed a
// stub (it ignores pushed options, e.g. with pull-filter): cvpn never decompresses, and silently
// dropping its traffic would leave the user with a tunnel that looks up and passes nothing.
func (s *Server) refuseCompression(c *client) {
	if c.refused.Swap(true) {
		return
	}
	if conn := c.tlsConn.Load(); conn != nil {
		_, _ = conn.Write([]byte("AUTH_FAILED,this server does not support compression: remove comp-lzo/compress from the profile or accept the pushed compress stub\x00"))
	}
	go func() {
		time.Sleep(time.Second) // let the message reach the client
		s.disconnect(c, "client compresses its traffic")
	}()
}

// logDenial logs the first denial of each destination per connection (up to deniedLogMax
// destinations), through a server-wide rate limit. Called from the client's receive goroutine.
func (s *Server) logDenial(c *client, dst netip.Addr) {
	for _, d := range c.denied {
		if d == dst {
			return
		}
	}
	if len(c.denied) >= deniedLogMax {
		return
	}
	c.denied = append(c.denied, dst)
	if s.denialLog.allow() {
		s.log.Info("access denied by authorization rules", "cn", c.commonName, "groups", c.groupNames,
			"address", c.addr, "dst", dst)
	}
}

// deniedLogMax bounds the destinations whose first denial is logged for one connection.
const deniedLogMax = 16

// writeTUN writes a batch of client packets into the TUN.
func (s *Server) writeTUN(batch [][]byte) {
	if len(batch) == 0 {
		return
	}
	if _, err := s.cfg.Device.Write(batch, tunWriteOffset); err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("tun write", "err", err)
	}
}

// tunLoop reads packets from the private network, reverses their NAT, and seals and sends each
// to its client.
func (s *Server) tunLoop() {
	batch := s.cfg.Device.BatchSize()
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	for i := range bufs {
		bufs[i] = make([]byte, tunOffset+65535+32)
	}
	out := make([]outPacket, 0, batch)
	batches := make(map[*udpListener]*udpSendBatch)
	for {
		n, err := s.cfg.Device.Read(bufs, sizes, tunOffset)
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return
			}
			s.log.Debug("tun read", "err", err)
			continue
		}
		out = out[:0]
		pol := s.policy.Load()
		now := s.clockNano()
		for i := range n {
			pkt := bufs[i][tunOffset : tunOffset+sizes[i]]
			if len(pkt) < 20 || pkt[0]>>4 != 4 {
				continue // IPv6 neighbour discovery and the like
			}
			addr, err := s.cfg.NAT.Inbound(pkt)
			if err != nil {
				if errors.Is(err, nat.ErrNoMapping) {
					s.drops.add(DropNoMapping)
				} else {
					s.drops.add(DropNAT, "err", err)
				}
				continue
			}
			idx, ok := s.cfg.Pool.Index(addr)
			var c *client
			if ok {
				c = s.peers[idx].Load()
			}
			if c == nil {
				s.drops.add(DropNoClient, "address", addr)
				continue
			}
			c.downlinkPolicy(pol)
			if !c.down.Allow(now, len(pkt)) {
				s.drops.add(DropRateLimit, "cn", c.commonName)
				continue
			}
			clampMSS(pkt, s.mss)
			if p, ok := s.seal(c, bufs[i], tunOffset, len(pkt), now); ok {
				out = append(out, outPacket{c: c, pkt: p})
			}
		}
		s.sendBatch(out, batches)
	}
}

// udpSendBatch collects the sealed packets of one TUN read that leave through one UDP listener, so
// they go out with one sendmmsg. With UDP GSO, consecutive same-size packets to one client share
// one message: the kernel cuts them apart (UDP_SEGMENT), which costs far less than a send each.
type udpSendBatch struct {
	msgs *mmsgs
	gso  [][]byte // coalescing buffer per message slot, allocated on first use
	oob  [][]byte // control-message buffer per slot
	n    int
	// the group being built in msgs[n] (count > 0), for coalescing
	c     *client
	seg   int
	count int
	first []byte
}

const (
	gsoMaxSegments = 64
	gsoMaxBytes    = 65000
)

func newUDPSendBatch() *udpSendBatch {
	b := &udpSendBatch{msgs: newMmsgs(udpBatch), gso: make([][]byte, udpBatch), oob: make([][]byte, udpBatch)}
	for i := range b.oob {
		b.oob[i] = make([]byte, 0, 128)
	}
	return b
}

// sendBatch sends sealed packets: UDP ones batched per listener, TCP ones through their links.
func (s *Server) sendBatch(out []outPacket, batches map[*udpListener]*udpSendBatch) {
	for _, o := range out {
		u, ok := o.c.link.(udpLink)
		if !ok {
			o.c.link.send(o.pkt)
			continue
		}
		b := batches[u.l]
		if b == nil {
			b = newUDPSendBatch()
			batches[u.l] = b
		}
		b.add(u.l, o.c, o.pkt)
	}
	for l, b := range batches {
		b.flush(l)
	}
}

// add appends a packet for c, joining the open group when GSO allows.
func (b *udpSendBatch) add(l *udpListener, c *client, pkt []byte) {
	if b.count > 0 && l.gso.Load() && c == b.c && b.count < gsoMaxSegments && len(pkt) <= b.seg &&
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
	if b.n == len(b.msgs.hdrs) {
		b.flush(l)
	}
	b.c, b.seg, b.count, b.first = c, len(pkt), 1, pkt
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
	oob := append(b.oob[b.n][:0], *b.c.oob.Load()...)
	pkt := b.first
	if b.count > 1 {
		pkt = b.gso[b.n]
		oob = appendUDPSegment(oob, uint16(b.seg))
	}
	b.oob[b.n] = oob
	b.msgs.set(b.n, pkt, b.c.remote(), oob)
	b.n++
	b.count, b.c, b.first = 0, nil, nil
}

func (b *udpSendBatch) flush(l *udpListener) {
	b.closeGroup()
	if b.n == 0 {
		return
	}
	l.writeBatch(b.msgs, b.n)
	for i := range b.n {
		b.msgs.clear(i)
	}
	b.n = 0
}

type outPacket struct {
	c   *client
	pkt []byte
}

// seal encrypts buf[off:off+n] for c in place, using the headroom in front of it; now (unix
// nanoseconds, taken once per batch by the caller) stamps the client's last send.
func (s *Server) seal(c *client, buf []byte, off, n int, now int64) ([]byte, bool) {
	k := c.sendKey.Load()
	if k == nil {
		return nil, false
	}
	off, n = c.framing.add(buf, off, n)
	var p []byte
	if c.dataV2 {
		p = buf[off-sealHeadroom : off+n]
		p[0] = packet.Header(packet.DataV2, k.id)
		p[1], p[2], p[3] = byte(c.peerID>>16), byte(c.peerID>>8), byte(c.peerID)
		p = k.keys.Seal(p, 4, k.sendPID.Add(1))
	} else {
		p = buf[off-1-datacrypto.Overhead : off+n]
		p[0] = packet.Header(packet.DataV1, k.id)
		p = k.keys.Seal(p, 1, k.sendPID.Add(1))
	}
	c.lastSend.Store(now)
	c.txBytes.Add(uint64(len(p)))
	return p, true
}

// sendPing sends the keepalive ping to a client.
func (s *Server) sendPing(c *client) {
	buf := make([]byte, tunOffset+len(packet.PingMagic)+datacrypto.Overhead+2)
	copy(buf[tunOffset:], packet.PingMagic)
	if p, ok := s.seal(c, buf, tunOffset, len(packet.PingMagic), s.clockNano()); ok {
		c.link.send(p)
	}
}
