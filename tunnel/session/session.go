package session

import (
	"crypto/tls"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/dataplane"
)

// Session states.
const (
	statePending     int32 = iota // built and registered, not authenticated
	stateEstablished              // authenticated and published to the data plane
	stateClosing                  // saying goodbye
	stateClosed                   // torn down
)

// Session is one client session: its control channel, its data-plane peer and its lifecycle.
//
// Ownership: the fields up to ctl are set by newSession and never change. info is stored once
// at admission. mu guards the fields below it. Everything else is atomic.
type Session struct {
	m         *Manager
	id        uint64
	connID    string           // the AWS-style connection id
	set       *settings        // the settings the session started with
	link      dataplane.Link   // built before the session is registered
	wrap      tlscrypt.Wrapper // the client's own tls-crypt-v2 key; nil: the endpoint's wrapping
	localSID  packet.SessionID
	remoteSID packet.SessionID
	since     time.Time
	peer      *dataplane.Peer
	ctl       *channel.Channel
	// Guarded by Manager.mu: the pending table's key, whether the session left the bounds on
	// unauthenticated sessions, whether it holds a count in Manager.gone, the user it is listed
	// under in Manager.byUser once established.
	pendingKey *pendingKey
	countedOut bool
	registered bool
	listedAs   string

	info     atomic.Pointer[Info]
	userPush atomic.Pointer[[]string] // options the hooks push to this user (an auth-token)
	state    atomic.Int32
	tlsConn  atomic.Pointer[tls.Conn] // TLS of the newest established key state, for control messages
	events   atomic.Uint32            // dataplane events not yet handled
	pushed   atomic.Bool
	ekmFlag  atomic.Bool   // data keys come from the TLS exporter
	proto    atomic.Uint32 // IV_PROTO bits the client announced
	tornDown sync.Once
	closed   chan struct{} // closed by teardown
	// authUntil (unix nanoseconds) extends the hand window of a session whose login the hooks
	// deferred (awaitLogin); zero otherwise.
	authUntil atomic.Int64

	mu sync.Mutex
	// lease is the client's addresses once allocated (released at teardown).
	lease ippool.Lease
	// renegAt is when the next scheduled renegotiation starts (zero: none scheduled).
	renegAt time.Time
	// renegSince is when the renegotiation in progress started (zero: none); renegKey is its
	// key id and renegTry when its latest attempt started.
	renegSince, renegTry time.Time
	renegKey             uint8
	// retire is the newest renegotiated key state while its lame duck (the key it took over
	// from) is kept; retireAt is when the transition window ends and the lame duck's control
	// state (its TLS connection above all) goes.
	retire   *channel.Key
	retireAt time.Time
}

// start runs the handshake of key 0. Call it once the session is registered.
func (s *Session) start() { go s.runKey(s.ctl.Key(0)) }

// discard releases a session that was built but never registered.
func (s *Session) discard() {
	s.state.Store(stateClosed)
	s.ctl.Close()
}

// input hands an authenticated control packet to the session's channel.
func (s *Session) input(p *packet.Control, pid, ts uint32, from netip.AddrPort) {
	if err := s.ctl.Input(p, pid, ts); err != nil {
		r := counters.ControlRejected
		if errors.Is(err, channel.ErrRateLimited) {
			r = counters.ControlRateLimited
		}
		s.m.drop(r, from, "user", s.user(), "err", err)
		return
	}
	s.peer.Touch(s.m.cfg.Now())
}

// PeerEvent records what the data plane noticed and wakes the manager, without blocking.
func (s *Session) PeerEvent(e dataplane.Event) {
	s.events.Or(uint32(e))
	select {
	case s.m.work <- s:
	default: // the queue is full: the next tick handles it
	}
}

// handleEvents acts on the data plane's events.
func (s *Session) handleEvents() {
	ev := dataplane.Event(s.events.Swap(0))
	switch {
	case ev == 0:
	case ev&dataplane.EventExit != 0:
		s.teardown("client sent explicit exit notification")
	case ev&dataplane.EventSilent != 0:
		id := s.peer.Identity()
		s.teardown("ping-restart: no packet from the client for " + id.PingRestart.String())
	case ev&dataplane.EventCompressed != 0:
		s.goodbye(authFailed("this server does not support compression: remove comp-lzo/compress from the profile or accept the pushed compress stub"), "client compresses its traffic")
	case ev&dataplane.EventRekey != 0:
		s.renegotiate(s.m.cfg.Now(), "packet ids near their end")
	}
}

// tick does the session's timer work at now.
func (s *Session) tick(now time.Time) {
	if s.events.Load() != 0 {
		s.handleEvents()
	}
	switch s.state.Load() {
	case statePending:
		if now.Sub(s.since) > s.m.cfg.HandWindow && now.UnixNano() > s.authUntil.Load() {
			s.teardown("handshake did not finish within the hand window")
		}
		return
	case stateEstablished:
	default:
		return
	}
	// The session timeout and the renegotiation interval are read from the current settings,
	// so a reload applies them to established sessions too.
	if t := s.m.set.Load().SessionTimeout; t > 0 && now.Sub(s.since) > t {
		s.goodbye(restart(), "session timeout")
		return
	}
	s.mu.Lock()
	due := !s.renegAt.IsZero() && !now.Before(s.renegAt)
	since, try := s.renegSince, s.renegTry
	var retire *channel.Key
	if s.retire != nil && !now.Before(s.retireAt) {
		retire, s.retire = s.retire, nil
	}
	s.mu.Unlock()
	if retire != nil {
		s.ctl.RetirePrevious(retire)
	}
	switch {
	case !since.IsZero() && now.Sub(since) > s.m.cfg.HandWindow:
		s.goodbye(restart(), "renegotiation did not finish within the hand window")
	case !since.IsZero() && try.IsZero():
		s.renegotiate(now, "retrying a failed renegotiation")
	case due && since.IsZero():
		s.renegotiate(now, "scheduled")
	}
}

// renegotiate starts a server-initiated renegotiation (a soft reset for the next key id),
// unless one is already running.
func (s *Session) renegotiate(now time.Time, why string) {
	if s.state.Load() != stateEstablished {
		return
	}
	s.mu.Lock()
	if !s.renegSince.IsZero() && !s.renegTry.IsZero() {
		s.mu.Unlock()
		return // an attempt is in progress
	}
	if s.renegSince.IsZero() {
		s.renegSince = now
	}
	s.renegTry = now
	s.renegAt = time.Time{}
	s.mu.Unlock()
	k := s.ctl.StartRenegotiation()
	s.mu.Lock()
	s.renegKey = k.ID
	s.mu.Unlock()
	s.m.log.Debug("renegotiating", "user", s.user(), "key_id", k.ID, "why", why)
	go s.runKey(k)
}

// peerRenegotiates is called by the channel (with its lock held) when the client starts a
// renegotiation: the key's handshake runs on its own goroutine.
func (s *Session) peerRenegotiates(k *channel.Key) {
	now := s.m.cfg.Now()
	s.mu.Lock()
	if s.renegSince.IsZero() {
		s.renegSince = now
	}
	s.renegTry, s.renegKey, s.renegAt = now, k.ID, time.Time{}
	s.mu.Unlock()
	go s.runKey(k)
}

// renegotiated records that key k was installed: the renegotiation is over and the next one
// is scheduled; k's lame duck is retired after the transition window. k is nil for key 0.
func (s *Session) renegotiated(now time.Time, k *channel.Key) {
	s.mu.Lock()
	if k != nil {
		// A key still waiting here from an earlier renegotiation lost its lame duck when k's
		// renegotiation started (channel.installKeyLocked): k replaces it.
		s.retire, s.retireAt = k, now.Add(dataplane.TransitionWindow)
	}
	s.renegSince, s.renegTry = time.Time{}, time.Time{}
	if r := s.m.set.Load().Reneg; r > 0 {
		s.renegAt = now.Add(r)
	}
	s.mu.Unlock()
}

// renegotiationFailed records that the attempt on key id failed: the next tick retries, until
// the hand window since the first attempt has passed.
func (s *Session) renegotiationFailed(id uint8) {
	s.mu.Lock()
	current := s.renegKey == id
	if current {
		s.renegTry = time.Time{}
	}
	s.mu.Unlock()
	if current {
		s.ctl.Abandon(id)
	}
}

// user names the session in logs.
func (s *Session) user() string {
	if info := s.info.Load(); info != nil {
		return info.User
	}
	return ""
}

// farewell is what a client is told before its session ends.
type farewell struct {
	msg string // the control message; "" tells nothing
	// logged replaces msg in the log when msg holds a secret (a challenge's state).
	logged string
}

func authFailed(reason string) farewell { return farewell{msg: "AUTH_FAILED," + printable(reason)} }
func restart() farewell                 { return farewell{msg: "RESTART"} }
func halt(reason string) farewell       { return farewell{msg: "HALT," + printable(reason)} }

// loggable is the farewell as the log shows it.
func (f farewell) loggable() string {
	if f.logged != "" {
		return f.logged
	}
	return f.msg
}

// Goodbye timings: the message is resent by the reliable layer until acked; the session is
// torn down once it was acked, or after goodbyeWait, plus goodbyeGrace for the client to read
// it before its session goes.
const (
	goodbyeWait  = 3 * time.Second
	goodbyeGrace = 200 * time.Millisecond
	goodbyePoll  = 50 * time.Millisecond
)

// goodbye is the one path that ends a session with a message: it tells the client (when TLS is
// up), waits until the message was acknowledged or goodbyeWait passed, then tears down. It
// returns at once; only the first call does anything.
func (s *Session) goodbye(f farewell, reason string) {
	for {
		st := s.state.Load()
		if st >= stateClosing {
			return
		}
		if s.state.CompareAndSwap(st, stateClosing) {
			break
		}
	}
	conn := s.tlsConn.Load()
	if conn == nil || f.msg == "" {
		s.teardown(reason)
		return
	}
	s.m.log.Info("ending session", "user", s.user(), "remote", s.link.Remote(), "message", f.loggable(), "reason", reason)
	_, _ = conn.Write([]byte(f.msg + "\x00"))
	key := s.ctl.Current()
	go func() {
		deadline := time.Now().Add(goodbyeWait)
		for time.Now().Before(deadline) && !s.ctl.Idle(key) && s.state.Load() != stateClosed {
			time.Sleep(goodbyePoll)
		}
		time.Sleep(goodbyeGrace)
		s.teardown(reason)
	}()
}

// evict tells the client to reconnect to its next server (RESTART,[N]) when it can be told,
// and tears the session down at once (Manager.Evict).
func (s *Session) evict(reason string) {
	for {
		st := s.state.Load()
		if st >= stateClosing {
			break
		}
		if s.state.CompareAndSwap(st, stateClosing) {
			if conn := s.tlsConn.Load(); conn != nil && st == stateEstablished {
				_, _ = conn.Write([]byte("RESTART,[N]\x00"))
			}
			break
		}
	}
	s.teardown(reason)
}

// teardown ends the session once: out of every table, control channel and link closed,
// address and NAT state released, the disconnect hook told.
func (s *Session) teardown(reason string) {
	s.tornDown.Do(func() {
		m := s.m
		prev := s.state.Swap(stateClosed)
		close(s.closed)
		m.mu.Lock()
		registered := s.registered
		m.forgetLocked(s)
		s.registered = false
		m.mu.Unlock()
		if m.plane != nil {
			m.plane.Remove(s.peer)
		}
		s.ctl.Close()
		s.link.Close()
		s.mu.Lock()
		lease := s.lease
		s.lease = ippool.Lease{}
		s.mu.Unlock()
		if addr := lease.Key(); addr.IsValid() {
			for _, a := range []netip.Addr{lease.Addr, lease.Addr6} {
				if a.IsValid() {
					m.cfg.NAT.ForgetClient(a)
				}
			}
			if err := m.cfg.Pool.Release(addr); err != nil {
				m.log.Error("release client address", "addr", addr, "err", err)
			}
		}
		if info := s.info.Load(); info != nil && prev != statePending {
			m.hooks.OnDisconnect(info, reason)
			st := Status{Info: info, Remote: s.link.Remote(), Traffic: s.peer.Traffic.Snapshot()}
			for _, e := range m.cfg.Events {
				e.Disconnected(st, End{Time: m.cfg.Now(), Reason: reason})
			}
			t := s.peer.Traffic.Snapshot()
			m.log.Info("client disconnected", "user", info.User, "remote", s.link.Remote(), addressAttr(info),
				"reason", reason, "duration", m.cfg.Now().Sub(info.Since).Round(time.Second),
				"rx_bytes", t.RxBytes, "tx_bytes", t.TxBytes, "connection_id", info.ConnectionID)
		} else {
			m.log.Debug("session closed before authentication", "remote", s.link.Remote(), "reason", reason)
		}
		if registered {
			m.gone.Done()
		}
	})
}
