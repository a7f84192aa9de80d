package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/tlscrypt"
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
	sock *udpSocket

	// pktinfo is set when the socket is bound to the unspecified address: replies must then leave
	// from the address each client sent to, which IP_PKTINFO reports and sets (a multihomed host
	// would otherwise answer from whatever address routing picks, and clients drop that).
	pktinfo bool
	// gso is set while the kernel takes UDP_SEGMENT (UDP GSO) sends on this socket.
	gso atomic.Bool

	// Owned by the receive goroutine.
	in       *mmsgs
	scratch  []byte // unwrapped control packets
	tunBatch [][]byte
	curDst   netip.Addr // the local address the current datagram was sent to
	split    [][]byte   // per message slot: room for the datagrams of a GRO read, split apart
}

func listenUDP(s *Server, ap netip.AddrPort) (*udpListener, error) {
	sock, err := openUDPSocket(ap, s.waker)
	if err != nil {
		return nil, fmt.Errorf("tunnel: listen udp %s: %w", ap, err)
	}
	l := &udpListener{
		srv:  s,
		addr: sock.local,
		sock: sock,
		in:   newRecvMmsgs(udpBatch, udpBufSize, 128),

		scratch: make([]byte, 0, udpBufSize),
	}
	if ap.Addr().IsUnspecified() {
		if err := sock.setsockoptInt(unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
			sock.close()
			return nil, fmt.Errorf("tunnel: udp %s: IP_PKTINFO: %w", ap, err)
		}
		l.pktinfo = true
	}
	_, err = sock.getsockoptInt(unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	l.gso.Store(err == nil)
	// Ask the kernel to coalesce consecutive datagrams of a flow into one read (UDP GRO); an old
	// kernel without it just delivers them one by one.
	_ = sock.setsockoptInt(unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	l.split = make([][]byte, udpBatch)
	return l, nil
}

func (l *udpListener) close() { l.sock.close() }

// send transmits one packet to a client from the local address oob names (nil: any).
func (l *udpListener) send(pkt []byte, to netip.AddrPort, oob []byte) {
	if err := l.sock.sendTo(pkt, to, oob); err != nil && !errors.Is(err, net.ErrClosed) {
		l.srv.log.Debug("udp send", "listener", l.addr, "to", to, "err", err)
	}
}

// writeBatch sends the first n messages of m with sendmmsg.
func (l *udpListener) writeBatch(m *mmsgs, n int) {
	_ = l.sock.send(m, n, func(_ int, err error) {
		if errors.Is(err, unix.EIO) && l.gso.CompareAndSwap(true, false) {
			// The route's device cannot take UDP GSO: stop coalescing. The segments of this
			// message are lost; TCP inside the tunnel resends them.
			l.srv.log.Warn("UDP GSO refused by the kernel; sending datagrams one by one", "listener", l.addr)
		}
	})
}

// appendCmsg appends a control message of the given level and type with n bytes of data to oob
// and returns oob and the data to fill in.
func appendCmsg(oob []byte, level, typ int32, n int) ([]byte, []byte) {
	start := len(oob)
	oob = append(oob, make([]byte, unix.CmsgSpace(n))...)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[start]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(n))
	data := start + unix.SizeofCmsghdr
	return oob, oob[data : data+n]
}

// appendUDPSegment appends a UDP_SEGMENT control message (the GSO segment size) to oob.
func appendUDPSegment(oob []byte, size uint16) []byte {
	oob, data := appendCmsg(oob, unix.SOL_UDP, unix.UDP_SEGMENT, 2)
	*(*uint16)(unsafe.Pointer(&data[0])) = size
	return oob
}

// appendPktinfo appends an IP_PKTINFO control message that makes a datagram leave from src.
func appendPktinfo(oob []byte, src netip.Addr) []byte {
	oob, data := appendCmsg(oob, unix.IPPROTO_IP, unix.IP_PKTINFO, unix.SizeofInet4Pktinfo)
	(*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0])).Spec_dst = src.As4()
	return oob
}

// replyOOB is the control message that makes replies leave from the address the current datagram
// was sent to; nil when the socket is bound to one address anyway.
func (l *udpListener) replyOOB() []byte {
	if !l.pktinfo || !l.curDst.IsValid() {
		return nil
	}
	return appendPktinfo(nil, l.curDst)
}

// parseCmsgs reads, without allocating, the two control messages the receive path asks for: the
// destination address (IP_PKTINFO: cmsghdr then struct in_pktinfo {ifindex, spec_dst, addr}) and
// the segment size of a GRO-coalesced read (UDP_GRO: an int).
func parseCmsgs(oob []byte) (dst netip.Addr, groSize int) {
	const hdr = unix.SizeofCmsghdr
	for len(oob) >= hdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		n := int(h.Len)
		if n < hdr || n > len(oob) {
			break
		}
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && n >= hdr+unix.SizeofInet4Pktinfo:
			info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&oob[hdr]))
			dst = netip.AddrFrom4(info.Addr)
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && n >= hdr+4:
			groSize = int(*(*int32)(unsafe.Pointer(&oob[hdr])))
		}
		oob = oob[(n+7)&^7:]
	}
	return dst, groSize
}

// splitGap is the room left after each datagram split off a GRO read: the in-place AEAD open
// writes the tag just past the ciphertext.
const splitGap = 32

func (l *udpListener) receiveLoop() {
	for {
		n, err := l.sock.recv(l.in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.srv.log.Warn("udp receive failed", "listener", l.addr, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		l.tunBatch = l.tunBatch[:0]
		datagrams := 0
		for i := range n {
			data := l.in.data(i)
			from := l.in.from(i)
			if len(data) == 0 || !from.IsValid() {
				continue
			}
			dst, seg := parseCmsgs(l.in.oob(i))
			if l.pktinfo {
				l.curDst = dst
			}
			if seg <= 0 || seg >= len(data) {
				datagrams++
				l.srv.handleDatagram(l, data, from)
				continue
			}
			// A GRO read holds several datagrams back to back: give each its own room, since
			// the packets are opened and handed to the TUN in place.
			if l.split[i] == nil {
				l.split[i] = make([]byte, udpBufSize+udpBatch*splitGap*2)
			}
			buf := l.split[i]
			off := 0
			for len(data) > 0 {
				k := min(seg, len(data))
				if off+k+splitGap > len(buf) {
					break
				}
				copy(buf[off:], data[:k])
				datagrams++
				l.srv.handleDatagram(l, buf[off:off+k:off+k+splitGap], from)
				data = data[k:]
				off += k + splitGap
			}
		}
		l.srv.writeTUN(l.tunBatch)
		if datagrams >= coalesceMinBatch && n < len(l.in.hdrs) {
			coalesce() // busy: let the next read gather a batch
		}
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
	c := s.lookupAddr(from)
	plain, pid, ts, w, err := s.unwrapControl(l.scratch[:0], pkt, c)
	if err != nil {
		s.drops.add(DropControlAuth, "from", from, "err", err)
		return
	}
	p, err := packet.ParseControl(plain)
	if err != nil {
		s.drops.add(DropMalformed, "from", from, "err", err)
		return
	}
	if c != nil && p.SessionID == c.remoteSID {
		if err := c.ctl.Input(&p, pid, ts); err != nil {
			s.drops.add(DropControlRejected, "from", from, "err", err)
			return
		}
		c.lastRecv.Store(s.cfg.Now().UnixNano())
		return
	}
	reset := p.Opcode == packet.HardResetClientV2 || p.Opcode == packet.HardResetClientV3
	switch {
	case reset && kid == 0 && !p.SessionID.IsZero():
		if !s.limiter.allow() {
			s.drops.add(DropHandshakeRateLimited, "from", from)
			return
		}
		if p.Opcode == packet.HardResetClientV3 && !tlscrypt.EarlyNegotiation(pid) {
			// A tls-crypt-v2 client older than 2.6 will not resend its key: keep state now.
			s.newStatefulClient(udpLink{l: l}, from, &p, pid, ts, w)
			return
		}
		s.sendCookieReset(l, &p, from, w)
	case (p.Opcode == packet.ControlV1 || p.Opcode == packet.AckV1 || p.Opcode == packet.ControlWKCV1) && kid == 0 && p.NumAcks > 0:
		if !s.cookies.Valid(from, p.SessionID, p.RemoteSessionID) {
			s.drops.add(DropBadCookie, "from", from)
			return
		}
		c := s.newClient(l, from, p.RemoteSessionID, p.SessionID, w)
		if c == nil {
			return
		}
		s.limiter.refund()
		if err := c.ctl.Input(&p, pid, ts); err != nil {
			s.drops.add(DropControlRejected, "from", from, "err", err)
		}
	default:
		s.drops.add(DropNoSession, "from", from, "opcode", p.Opcode)
	}
}

// unwrapControl authenticates a control packet for session c (nil for an unknown sender). It
// returns the plain layout, the replay ids, and the wrapper that accepted it: the endpoint's
// (tls-crypt, tls-auth or none), or for tls-crypt-v2 the client's own key, unwrapped from the WKc
// the packet carries (or kept by its session).
func (s *Server) unwrapControl(dst, pkt []byte, c *client) (plain []byte, pid, ts uint32, w tlscrypt.Wrapper, err error) {
	op, _ := packet.SplitHeader(pkt[0])
	if c != nil && c.wrap != nil {
		w = c.wrap
	}
	if op == packet.HardResetClientV3 || op == packet.ControlWKCV1 {
		if s.v2 == nil {
			return nil, 0, 0, nil, errNoTLSCryptV2
		}
		wrapped, wkc, err := tlscrypt.SplitWKc(pkt)
		if err != nil {
			return nil, 0, 0, nil, err
		}
		if w == nil {
			kc, _, err := s.v2.UnwrapClientKey(wkc)
			if err != nil {
				return nil, 0, 0, nil, err
			}
			w = tlscrypt.NewTLSCrypt(kc, true)
		}
		pkt = wrapped
	}
	if w == nil {
		if s.v2 != nil && !s.replay {
			return nil, 0, 0, nil, errNeedTLSCryptV2
		}
		w = s.wrapper
	}
	plain, pid, ts, err = w.Unwrap(dst, pkt)
	return plain, pid, ts, w, err
}

var (
	errNoTLSCryptV2   = errors.New("tls-crypt-v2 packet but no tls_crypt_v2_server_key_file configured")
	errNeedTLSCryptV2 = errors.New("unwrapped control packet; this endpoint requires tls-crypt-v2")
)

// sendCookieReset answers a client's hard reset with P_CONTROL_HARD_RESET_SERVER_V2 whose session
// id is the cookie: it acks the client's message 0 and is itself message 0.
func (s *Server) sendCookieReset(l *udpListener, p *packet.Control, from netip.AddrPort, w tlscrypt.Wrapper) {
	reply := packet.Control{
		Opcode:          packet.HardResetServerV2,
		SessionID:       s.cookies.Make(from, p.SessionID),
		NumAcks:         1,
		RemoteSessionID: p.SessionID,
		PacketID:        0,
	}
	reply.Acks[0] = p.PacketID
	if p.Opcode == packet.HardResetClientV3 {
		// Ask the client to resend its key with its next packet (P_CONTROL_WKC_V1), since the
		// server keeps nothing until then.
		reply.Payload = tlscrypt.EarlyNegTLV
	}
	plain := reply.Append(nil)
	wire, err := w.Wrap(nil, plain, 1, uint32(s.cfg.Now().Unix()))
	if err != nil {
		s.log.Error("wrap cookie reset", "err", err)
		return
	}
	l.send(wire, from, l.replyOOB())
}

// newClient creates the session of a UDP client that proved its address, replacing any session
// the same address had, and starts its handshake goroutine.
func (s *Server) newClient(l *udpListener, from netip.AddrPort, local, remote packet.SessionID, w tlscrypt.Wrapper) *client {
	c := s.newSession(nil, from, local, remote, true, w)
	if c == nil {
		return nil
	}
	c.link = udpLink{l: l, c: c}
	c.setOOB(l.replyOOB())
	go s.runKey(c, c.ctl.Key(0))
	return c
}

// newSession creates and registers a session. l is its link (nil for UDP, set by the caller before
// any packet is sent); established says the hard resets were already exchanged (UDP cookie flow).
func (s *Server) newSession(l link, from netip.AddrPort, local, remote packet.SessionID, established bool, w tlscrypt.Wrapper) *client {
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
	replay := s.replay
	if w != s.wrapper {
		c.wrap, replay = w, true // the client's own tls-crypt-v2 key
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
		Wrapper:   w,
		Replay:    replay,
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
	if _, tcp := l.(*tcpLink); !tcp { // UDP: one session per address
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
	c.setOOB(c.link.(udpLink).l.replyOOB())
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
