package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/packet"
)

const (
	// udpBatch is how many datagrams one recvmmsg/sendmmsg moves.
	udpBatch = 64
	// udpBufSize holds the largest datagram plus tail room for in-place AEAD.
	udpBufSize = 65536
)

// udpListener is one UDP socket and its receive goroutine's private state.
type udpListener struct {
	srv  *Server
	addr netip.AddrPort
	conn *net.UDPConn
	pc   *ipv4.PacketConn

	// Owned by the receive goroutine.
	msgs     []ipv4.Message
	scratch  []byte
	tunBatch [][]byte
}

func listenUDP(s *Server, ap netip.AddrPort) (*udpListener, error) {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return nil, fmt.Errorf("tunnel: listen udp %s: %w", ap, err)
	}
	_ = conn.SetReadBuffer(4 << 20)
	_ = conn.SetWriteBuffer(4 << 20)
	l := &udpListener{
		srv:     s,
		addr:    conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		conn:    conn,
		pc:      ipv4.NewPacketConn(conn),
		scratch: make([]byte, 0, udpBufSize),
	}
	l.msgs = make([]ipv4.Message, udpBatch)
	for i := range l.msgs {
		l.msgs[i].Buffers = [][]byte{make([]byte, udpBufSize)}
	}
	return l, nil
}

func (l *udpListener) close() { l.conn.Close() }

// send transmits one packet to a client; it never blocks for long (UDP).
func (l *udpListener) send(pkt []byte, to *net.UDPAddr) {
	_, _ = l.conn.WriteToUDP(pkt, to)
}

func (l *udpListener) receiveLoop() {
	for {
		n, err := l.pc.ReadBatch(l.msgs, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.srv.log.Warn("udp receive failed", "listener", l.addr, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		l.tunBatch = l.tunBatch[:0]
		for i := range n {
			m := &l.msgs[i]
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok || m.N == 0 {
				continue
			}
			from := ua.AddrPort()
			from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			l.srv.handleDatagram(l, m.Buffers[0][:m.N], from)
		}
		l.srv.writeTUN(l.tunBatch)
	}
}

// handleDatagram classifies one datagram from a client.
func (s *Server) handleDatagram(l *udpListener, pkt []byte, from netip.AddrPort) {
	op, kid := packet.SplitHeader(pkt[0])
	switch {
	case op.IsData():
		s.receiveData(l, pkt, op, kid, from)
	case op.IsControl():
		s.receiveControl(l, pkt, op, kid, from)
	default:
		s.drops.add(DropMalformed, "from", from)
	}
}

func (s *Server) lookupAddr(ap netip.AddrPort) *client {
	s.mu.Lock()
	c := s.byAddr[ap]
	s.mu.Unlock()
	return c
}

// receiveControl authenticates a control packet and hands it to its session, or runs the
// stateless cookie handshake (OpenVPN 2.6, mudp.c) for packets from unknown senders: no state is
// kept until the client echoes a cookie bound to its address.
func (s *Server) receiveControl(l *udpListener, pkt []byte, op packet.Opcode, kid uint8, from netip.AddrPort) {
	switch op {
	case packet.HardResetClientV1:
		s.drops.add(DropKeyMethod1, "from", from)
		return
	case packet.HardResetServerV1, packet.HardResetServerV2:
		s.drops.add(DropWrongDirection, "from", from, "opcode", op)
		return
	}
	plain, pid, ts, err := s.wrapper.Unwrap(l.scratch[:0], pkt)
	if err != nil {
		s.drops.add(DropControlAuth, "from", from, "err", err)
		return
	}
	p, err := packet.ParseControl(plain)
	if err != nil {
		s.drops.add(DropMalformed, "from", from, "err", err)
		return
	}
	if c := s.lookupAddr(from); c != nil && p.SessionID == c.remoteSID {
		if err := c.ctl.Input(&p, pid, ts); err != nil {
			s.drops.add(DropControlRejected, "from", from, "err", err)
			return
		}
		c.lastRecv.Store(s.cfg.Now().UnixNano())
		return
	}
	switch {
	case p.Opcode == packet.HardResetClientV2 && kid == 0 && !p.SessionID.IsZero():
		if !s.limiter.allow() {
			s.drops.add(DropHandshakeRateLimited, "from", from)
			return
		}
		s.sendCookieReset(l, &p, from)
	case (p.Opcode == packet.ControlV1 || p.Opcode == packet.AckV1) && kid == 0 && p.NumAcks > 0:
		if !s.cookies.Valid(from, p.SessionID, p.RemoteSessionID) {
			s.drops.add(DropBadCookie, "from", from)
			return
		}
		c := s.newClient(l, from, p.RemoteSessionID, p.SessionID)
		if c == nil {
			return
		}
		if err := c.ctl.Input(&p, pid, ts); err != nil {
			s.drops.add(DropControlRejected, "from", from, "err", err)
		}
	default:
		s.drops.add(DropNoSession, "from", from, "opcode", p.Opcode)
	}
}

// sendCookieReset answers a client's hard reset with P_CONTROL_HARD_RESET_SERVER_V2 whose session
// id is the cookie: it acks the client's message 0 and is itself message 0.
func (s *Server) sendCookieReset(l *udpListener, p *packet.Control, from netip.AddrPort) {
	reply := packet.Control{
		Opcode:          packet.HardResetServerV2,
		SessionID:       s.cookies.Make(from, p.SessionID),
		NumAcks:         1,
		RemoteSessionID: p.SessionID,
		PacketID:        0,
	}
	reply.Acks[0] = p.PacketID
	plain := reply.Append(nil)
	wire, err := s.wrapper.Wrap(nil, plain, 1, uint32(s.cfg.Now().Unix()))
	if err != nil {
		s.log.Error("wrap cookie reset", "err", err)
		return
	}
	l.send(wire, net.UDPAddrFromAddrPort(from))
}

// newClient creates the session of a UDP client that proved its address, replacing any session
// the same address had, and starts its handshake goroutine.
func (s *Server) newClient(l *udpListener, from netip.AddrPort, local, remote packet.SessionID) *client {
	c := s.newSession(nil, from, local, remote, true)
	if c == nil {
		return nil
	}
	c.link = udpLink{l: l, c: c}
	go s.runKey(c, c.ctl.Key(0))
	return c
}

// newSession creates and registers a session. l is its link (nil for UDP, set by the caller before
// any packet is sent); established says the hard resets were already exchanged (UDP cookie flow).
func (s *Server) newSession(l link, from netip.AddrPort, local, remote packet.SessionID, established bool) *client {
	var reset packet.Opcode
	if !established {
		reset = packet.HardResetServerV2
	}
	c := &client{
		id:        s.nextID.Add(1),
		srv:       s,
		link:      l,
		localSID:  local,
		remoteSID: remote,
		since:     s.cfg.Now(),
	}
	c.setRemote(from)
	c.lastRecv.Store(s.cfg.Now().UnixNano())
	sendPID := uint32(1)
	if established {
		sendPID = 2 // the cookie reply used 1
	}
	c.ctl = channel.New(channel.Config{
		LocalSID:  local,
		RemoteSID: remote,
		Wrapper:   s.wrapper,
		Replay:    s.replay,
		SendPID:   sendPID,
		Send:      func(wire []byte) { c.link.send(wire) },
		Now:       s.cfg.Now,
		Log:       s.log,
		NewKey:    func(k *channel.Key) { go s.runKey(c, k) },
		Reset:     reset,
	}, established)

	s.mu.Lock()
	if s.handshakes >= s.cfg.MaxHandshakes {
		s.mu.Unlock()
		s.drops.add(DropHandshakeLimit, "from", from)
		return nil
	}
	var old *client
	if l == nil { // UDP: one session per address
		old = s.byAddr[from]
		s.byAddr[from] = c
	}
	s.all[c.id] = c
	s.handshakes++
	s.mu.Unlock()
	if old != nil {
		s.disconnect(old, "replaced by a new session from the same address")
	}
	return c
}

// float moves a UDP session to a new address after a packet from there authenticated.
func (s *Server) float(c *client, to netip.AddrPort) {
	from := c.remote()
	s.mu.Lock()
	if other := s.byAddr[to]; other != nil && other != c {
		s.mu.Unlock()
		s.disconnect(other, "another session floated to its address")
		s.mu.Lock()
	}
	if s.byAddr[from] == c {
		delete(s.byAddr, from)
	}
	s.byAddr[to] = c
	c.setRemote(to)
	s.mu.Unlock()
	s.log.Info("client floated", "cn", c.commonName, "from", from, "to", to)
}

// disconnect tears a client down once: tables, control channel, address and NAT state.
func (s *Server) disconnect(c *client, reason string) {
	if !c.closed.CompareAndSwap(false, true) {
		return
	}
	s.mu.Lock()
	if s.byAddr[c.remote()] == c {
		delete(s.byAddr, c.remote())
	}
	delete(s.all, c.id)
	if !c.authenticated.Load() {
		s.handshakes--
	}
	s.mu.Unlock()
	c.ctl.Close()
	if c.link != nil {
		c.link.close()
	}
	if c.addr.IsValid() {
		if idx, ok := s.cfg.Pool.Index(c.addr); ok {
			s.peers[idx].CompareAndSwap(c, nil)
		}
		s.cfg.NAT.ForgetClient(c.addr)
		if err := s.cfg.Pool.Release(c.addr); err != nil {
			s.log.Error("release client address", "addr", c.addr, "err", err)
		}
		s.log.Info("client disconnected", "cn", c.commonName, "remote", c.remote(), "address", c.addr,
			"reason", reason, "duration", s.cfg.Now().Sub(c.since).Round(time.Second),
			"rx_bytes", c.rxBytes.Load(), "tx_bytes", c.txBytes.Load())
	} else {
		s.log.Debug("session closed before authentication", "remote", c.remote(), "reason", reason)
	}
}
