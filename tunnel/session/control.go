package session

import (
	"crypto/rand"
	"errors"
	"net/netip"
	"sync"

	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/dataplane"
)

// drop counts a refusal with the sender as its detail.
func (m *Manager) drop(r counters.Reason, from netip.AddrPort, attrs ...any) {
	if m.drops.Add(r) {
		m.drops.Detail(r, append([]any{"from", from}, attrs...)...)
	}
}

// senderSID reads the sender's session id, which every wrapping keeps in the clear right after
// the opcode byte (ssl_pkt.c, tls_crypt.c), so the packet can be matched to a session before it
// is unwrapped with that session's key.
func senderSID(pkt []byte) (packet.SessionID, bool) {
	var sid packet.SessionID
	if len(pkt) < 1+len(sid) {
		return sid, false
	}
	copy(sid[:], pkt[1:])
	return sid, true
}

// controlBufSize holds an unwrapped control packet: they are at most a datagram's size, and
// the control channel keeps its packets near 1250 bytes.
const controlBufSize = 2048

// controlBufs are the buffers control packets are unwrapped into. A buffer lives for one call of
// UDPControl or TCPControl: the channel copies what it keeps (channel.Input). Pooled, because an
// array on the stack escapes through the Wrapper interface: 2 KiB a control packet, a tenth of
// what a handshake allocated on the server.
var controlBufs = sync.Pool{New: func() any { return new([controlBufSize]byte) }}

// sessionOf returns the session that owns a published peer.
func sessionOf(p *dataplane.Peer) *Session {
	if p == nil {
		return nil
	}
	s, _ := p.Owner().(*Session)
	return s
}

// UDPControl authenticates a control packet and hands it to its session, or runs the
// stateless cookie handshake (OpenVPN 2.6, mudp.c) for packets of no session: nothing is kept
// until the client echoes a cookie bound to its address. It runs on the listener's receive
// goroutine.
func (m *Manager) UDPControl(l *dataplane.UDPListener, pkt []byte, from netip.AddrPort, local netip.Addr) {
	op, kid := packet.SplitHeader(pkt[0])
	switch op {
	case packet.HardResetClientV1:
		m.drop(counters.KeyMethod1, from)
		return
	case packet.HardResetServerV1, packet.HardResetServerV2:
		m.drop(counters.WrongDirection, from, "opcode", op)
		return
	}
	sid, ok := senderSID(pkt)
	if !ok {
		m.drop(counters.Malformed, from)
		return
	}
	// The packet belongs to the established session at this address or to the pending one,
	// whichever has the sender's session id; otherwise it may start a new one.
	key := pendingKey{l: l, from: from}
	s := sessionOf(l.Lookup(from))
	if s == nil || s.remoteSID != sid {
		m.mu.Lock()
		s = m.pending[key]
		m.mu.Unlock()
		if s != nil && s.remoteSID != sid {
			s = nil
		}
	}
	scratch := controlBufs.Get().(*[controlBufSize]byte)
	defer controlBufs.Put(scratch)
	plain, pid, ts, w, err := m.unwrapControl(scratch[:0], pkt, s)
	if err != nil {
		m.drop(counters.ControlAuth, from, "err", err)
		return
	}
	p, err := packet.ParseControl(plain)
	if err != nil {
		m.drop(counters.Malformed, from, "err", err)
		return
	}
	if s != nil {
		s.input(&p, pid, ts, from)
		return
	}
	reset := p.Opcode == packet.HardResetClientV2 || p.Opcode == packet.HardResetClientV3
	switch {
	case reset && kid == 0 && !p.SessionID.IsZero():
		if !m.resets.Allow(from.Addr()) {
			m.drop(counters.HandshakeRateLimited, from)
			return
		}
		if p.Opcode == packet.HardResetClientV3 && !tlscrypt.EarlyNegotiation(pid) {
			// A tls-crypt-v2 client older than 2.6 will not resend its key: keep state now.
			// Its address is unproven, so it replaces nothing: not a handshake in progress at
			// the address, and not the established session there, which only a session that
			// authenticates may replace.
			m.startStateful(l.NewLink(from, local), &key, nil, &p, pid, ts, w)
			return
		}
		m.sendCookieReset(l, &p, from, local, w)
	case (p.Opcode == packet.ControlV1 || p.Opcode == packet.AckV1 || p.Opcode == packet.ControlWKCV1) && kid == 0 && p.NumAcks > 0:
		if !m.cookies.Valid(from, p.SessionID, p.RemoteSessionID) {
			m.drop(counters.BadCookie, from)
			return
		}
		s := m.newSession(l.NewLink(from, local), p.RemoteSessionID, p.SessionID, true, w)
		replaced, refused := m.register(s, &key)
		if refused != counters.NumReasons {
			m.drop(refused, from)
			s.discard()
			return
		}
		if replaced != nil {
			// The address proved itself again with a new session id: the client restarted
			// its handshake. Only an unauthenticated session is replaced here.
			replaced.teardown("replaced by a new handshake from the same address")
		}
		s.input(&p, pid, ts, from)
		s.start()
	default:
		m.drop(counters.NoSession, from, "opcode", p.Opcode)
	}
}

// TCPControl handles one control packet of a TCP stream: the hard reset creates the stream's
// session at once (the connection proves the address); later packets go to it.
func (m *Manager) TCPControl(st *dataplane.TCPStream, pkt []byte) bool {
	from := st.Remote()
	op, kid := packet.SplitHeader(pkt[0])
	if op == packet.HardResetClientV1 {
		m.drop(counters.KeyMethod1, from)
		return false
	}
	s := sessionOf(st.Peer())
	scratch := controlBufs.Get().(*[controlBufSize]byte)
	defer controlBufs.Put(scratch)
	plain, pid, ts, w, err := m.unwrapControl(scratch[:0], pkt, s)
	if err != nil {
		m.drop(counters.ControlAuth, from, "err", err)
		return false
	}
	p, err := packet.ParseControl(plain)
	if err != nil {
		m.drop(counters.Malformed, from, "err", err)
		return false
	}
	if s != nil {
		s.input(&p, pid, ts, from)
		return s.state.Load() != stateClosed
	}
	reset := p.Opcode == packet.HardResetClientV2 || p.Opcode == packet.HardResetClientV3
	if !reset || kid != 0 || p.SessionID.IsZero() {
		m.drop(counters.NoSession, from, "opcode", p.Opcode)
		return false
	}
	return m.startStateful(st, nil, st.Attach, &p, pid, ts, w) != nil
}

// TCPClosed ends the session of a TCP stream that closed.
func (m *Manager) TCPClosed(st *dataplane.TCPStream) {
	if s := sessionOf(st.Peer()); s != nil {
		s.teardown("tcp connection closed")
	}
}

// startStateful creates a session from a client's hard reset at once, without the cookie round
// trip: for TCP (the connection proves the address) and for tls-crypt-v2 clients that cannot
// resend their key. The server's reset, acking the client's, leaves as reliable message 0.
// attach (for a TCP stream) makes the session's peer the stream's before anything is sent.
func (m *Manager) startStateful(link dataplane.Link, key *pendingKey, attach func(*dataplane.Peer), p *packet.Control, pid, ts uint32, w tlscrypt.Wrapper) *Session {
	var local packet.SessionID
	for local.IsZero() {
		if _, err := rand.Read(local[:]); err != nil {
			return nil
		}
	}
	s := m.newSession(link, local, p.SessionID, false, w)
	if key != nil {
		m.mu.Lock()
		busy := m.pending[*key] != nil
		m.mu.Unlock()
		if busy {
			// An unproven reset never replaces a handshake in progress at the address.
			m.drop(counters.HandshakeLimit, link.Remote())
			s.discard()
			return nil
		}
	}
	if _, refused := m.register(s, key); refused != counters.NumReasons {
		m.drop(refused, link.Remote())
		s.discard()
		return nil
	}
	if attach != nil {
		attach(s.peer)
	}
	if err := s.ctl.Input(p, pid, ts); err != nil {
		m.drop(counters.ControlRejected, link.Remote(), "err", err)
		s.teardown("bad hard reset")
		return nil
	}
	s.start()
	return s
}

// unwrapControl authenticates a control packet for session s (nil for an unknown sender). It
// returns the plain layout, the replay ids, and the wrapper that accepted it: the endpoint's
// (tls-crypt, tls-auth or none), or for tls-crypt-v2 the client's own key, unwrapped from the WKc
// the packet carries (or kept by its session).
func (m *Manager) unwrapControl(dst, pkt []byte, s *Session) (plain []byte, pid, ts uint32, w tlscrypt.Wrapper, err error) {
	set := m.set.Load()
	if s != nil {
		set = s.set
		w = s.wrap
	}
	op, _ := packet.SplitHeader(pkt[0])
	if op == packet.HardResetClientV3 || op == packet.ControlWKCV1 {
		if set.TLSCryptV2 == nil {
			return nil, 0, 0, nil, errNoTLSCryptV2
		}
		wrapped, wkc, err := tlscrypt.SplitWKc(pkt)
		if err != nil {
			return nil, 0, 0, nil, err
		}
		if w == nil {
			kc, _, err := set.TLSCryptV2.UnwrapClientKey(wkc)
			if err != nil {
				return nil, 0, 0, nil, err
			}
			w = tlscrypt.NewTLSCrypt(kc, true)
		}
		pkt = wrapped
	}
	if w == nil {
		if set.TLSCryptV2 != nil && !set.replay {
			return nil, 0, 0, nil, errNeedTLSCryptV2
		}
		w = set.wrapper
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
func (m *Manager) sendCookieReset(l *dataplane.UDPListener, p *packet.Control, from netip.AddrPort, local netip.Addr, w tlscrypt.Wrapper) {
	reply := packet.Control{
		Opcode:          packet.HardResetServerV2,
		SessionID:       m.cookies.Make(from, p.SessionID),
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
	wire, err := w.Wrap(nil, plain, 1, uint32(m.cfg.Now().Unix()))
	if err != nil {
		m.log.Error("wrap cookie reset", "err", err)
		return
	}
	l.Send(wire, from, local)
}

// newSession builds a session completely: its control channel and its data-plane peer over
// link. Nothing can reach it until register. established says the hard resets were already
// exchanged (UDP cookie flow).
func (m *Manager) newSession(link dataplane.Link, local, remote packet.SessionID, established bool, w tlscrypt.Wrapper) *Session {
	set := m.set.Load()
	now := m.cfg.Now()
	s := &Session{
		closed:    make(chan struct{}),
		m:         m,
		id:        m.nextID.Add(1),
		connID:    newConnectionID(),
		set:       set,
		link:      link,
		localSID:  local,
		remoteSID: remote,
		since:     now,
	}
	replay := set.replay
	if w != nil && w != set.wrapper {
		s.wrap, replay = w, true // the client's own tls-crypt-v2 key
	} else {
		w = set.wrapper
	}
	s.peer = dataplane.NewPeer(s, link, now)
	var reset packet.Opcode
	sendPID := uint32(1)
	if established {
		sendPID = 2 // the cookie reply used 1
	} else {
		reset = packet.HardResetServerV2
	}
	s.ctl = channel.New(channel.Config{
		LocalSID:  local,
		RemoteSID: remote,
		Wrapper:   w,
		Replay:    replay,
		SendPID:   sendPID,
		Send:      link.Send,
		Now:       m.cfg.Now,
		Log:       m.log,
		NewKey:    s.peerRenegotiates,
		Reset:     reset,
		// A client that stops acknowledging is dropped after the hand window, and one whose
		// unacknowledged backlog passes the channel's bound at once (stall.go).
		AckTimeout: m.cfg.HandWindow,
		Fail:       s.controlFailed,
	}, established)
	return s
}
