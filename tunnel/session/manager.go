// Package session is the control plane of the cvpn engine: it creates sessions from client
// resets (the stateless UDP cookie handshake of OpenVPN 2.6, or at once on TCP), runs each
// session's TLS handshake and key-method 2 exchange, admits the client through the Hooks
// (authentication, a client-connect handler), assigns its address and cipher, pushes its
// configuration, renegotiates its data keys, and ends it through one goodbye path
// (AUTH_FAILED, RESTART or HALT, then teardown).
//
// A session is completely built (link, control channel, data-plane peer) before any table can
// reach it, and reaches the data plane's tables (dataplane.Plane.Publish) only once it
// authenticated: until then it is pending, kept apart from established sessions, so nothing
// unauthenticated can displace an authenticated session. What other goroutines read about a
// session is the immutable Info published at admission, or atomics.
//
// It does not move data packets (package dataplane) and it does not know where users come from
// (Hooks).
//
// Lock order: Manager.mu, then Session.mu; neither is held while calling into the control
// channel, the data plane or the hooks.
package session

import (
	"cmp"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/tls/cookie"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/dataplane"
	"github.com/cvpn/cvpn/tunnel/limiter"
)

// Settings are what a running endpoint may change without disconnecting anyone: new handshakes
// see a new snapshot; established sessions keep what they negotiated.
type Settings struct {
	// Certificate is the server's TLS identity; ClientCAs verifies client certificates. With
	// ClientCAs nil no client certificate is asked for: the hooks authenticate by other means
	// (a directory login).
	Certificate tls.Certificate
	ClientCAs   *x509.CertPool
	// Wrapper protects the control channel (tls-crypt, tls-auth); nil means none.
	Wrapper tlscrypt.Wrapper
	// TLSCryptV2 accepts tls-crypt-v2 clients (each with its own key, wrapped by this one). With
	// it and no Wrapper, unprotected control packets are refused.
	TLSCryptV2 *tlscrypt.V2ServerKey
	// Ciphers are the data ciphers in the server's order of preference.
	Ciphers []datacrypto.Cipher
	// Ping and PingRestart are pushed to clients and drive the server's keepalive and reaping.
	Ping, PingRestart time.Duration
	// Reneg is how often the server renegotiates a session's data keys (OpenVPN reneg-sec); 0
	// never (renegotiation still happens before packet ids run out).
	Reneg time.Duration
	// SessionTimeout ends a session this long after it started (AWS session_timeout_hours); the
	// client is told RESTART and reconnects, authenticating again. 0 means never.
	SessionTimeout time.Duration
	// Banner is sent to each client after its configuration (as INFO); empty sends nothing.
	Banner string
	// MaxConnectionsPerUser is how many established sessions one user may hold, over every
	// listener; a new session beyond it replaces the user's oldest (HALT, with the reason).
	// 0 means unlimited.
	MaxConnectionsPerUser int
}

// settings is a Settings snapshot with what is derived from it.
type settings struct {
	Settings
	tls     *tls.Config
	wrapper tlscrypt.Wrapper // never nil: plain when none
	replay  bool             // the wrapper carries replay ids
	chains  *chainCache      // verifies client certificates; nil without ClientCAs
}

// Revoker reports whether a client certificate was revoked.
type Revoker interface {
	IsRevoked(cert *x509.Certificate) bool
}

// RevocationChecker is a Revoker that decides each TLS handshake (renegotiations too) itself
// and says why it refuses: besides a listed certificate, a CRL past its next update or missing
// for an issuer refuses, as OpenVPN checks the CRL at every handshake (key_state_init in
// src/openvpn/ssl.c). SetRevoker still ends only the sessions IsRevoked reports.
type RevocationChecker interface {
	Revoker
	// CheckRevocation returns nil when cert may be admitted, or why not.
	CheckRevocation(cert *x509.Certificate) error
}

// Config is what the session layer needs.
type Config struct {
	Pool     *ippool.Pool
	NAT      *nat.Table
	Hooks    Hooks // nil: CertificateHooks
	Settings Settings
	Revoked  Revoker
	// HandWindow bounds a TLS handshake and key exchange, and a renegotiation with its retries
	// (OpenVPN --hand-window, 60 s).
	HandWindow time.Duration
	// MaxHandshakes bounds sessions that have not finished authenticating; MaxPerSource bounds
	// them per client address, MaxPerNetwork per client network (/24, or /48 for IPv6). They
	// count only sessions whose address is proven (cookie echoed, or TCP).
	MaxHandshakes int
	MaxPerSource  int
	MaxPerNetwork int
	// Resets limits the stateless replies to client resets (and stateful tls-crypt-v2 resets)
	// per source address, per source network and in total; zero means DefaultResets.
	Resets limiter.Config
	Drops  *counters.Drops
	// Events hear about sessions connecting, refused and disconnecting.
	Events []Events
	Log    *slog.Logger
	Now    func() time.Time
}

// Manager owns every session of the endpoint.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	drops   *counters.Drops
	hooks   Hooks
	plane   *dataplane.Plane
	set     atomic.Pointer[settings]
	revoker atomic.Pointer[Revoker]
	cookies *cookie.Jar
	resets  *limiter.Sources
	work    chan *Session
	nextID  atomic.Uint64
	// tickMu guards ticked, Tick's reused list of sessions.
	tickMu sync.Mutex
	ticked []*Session

	// mu guards the fields below.
	mu       sync.Mutex
	sessions map[uint64]*Session
	byClient map[clientKey]*Session // by listener and the client's session id
	// byUser holds each user's established sessions (and those of them that are closing, until
	// torn down), so that admitting one looks at that user's few sessions, not at everyone's:
	// a scan of all sessions under mu made a ramp to 100,000 sessions quadratic.
	byUser    map[string][]*Session
	pending   map[pendingKey]*Session // UDP sessions not yet authenticated
	perSource map[netip.Prefix]int    // sessions not yet authenticated, by client address and network (limiter.Prefixes)
	unauth    int                     // sessions not yet authenticated
	closing   bool
	gone      sync.WaitGroup // sessions not yet torn down
}

// DefaultResets limits replies to resets. OpenVPN's --connect-freq-initial allows 100 per 10 s
// for everyone together (mudp.c), so one host can keep the others out; here each address gets
// 10 a second (a burst of 20), each /24 50 (a burst of 100), and the total is high enough
// (20,000 a second: a stateless reply costs a few microseconds) that a spoofed flood from many
// addresses meets the per-network limits long before it could crowd out real clients.
var DefaultResets = limiter.Config{
	Addr:  limiter.Rate{PerSecond: 10, Burst: 20},
	Net:   limiter.Rate{PerSecond: 50, Burst: 100},
	Total: limiter.Rate{PerSecond: 20000, Burst: 40000},
}

// clientKey finds a live session by the listener it came through and the client's session id:
// a client proves its cookie once per session, so a second proof on the same listener is a late
// or replayed packet (the client may have floated since).
type clientKey struct {
	l   dataplane.Listener
	sid packet.SessionID
}

func (s *Session) clientKey() clientKey { return clientKey{s.link.Listener(), s.remoteSID} }

// pendingKey finds a pending UDP session: its listener and client address.
type pendingKey struct {
	l    *dataplane.UDPListener
	from netip.AddrPort
}

// New returns a session manager; Bind gives it its data plane before any listener opens.
func New(cfg Config) (*Manager, error) {
	if cfg.Pool == nil || cfg.NAT == nil {
		return nil, errors.New("session: config needs Pool and NAT")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HandWindow <= 0 {
		cfg.HandWindow = 60 * time.Second
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = 1024
	}
	if cfg.MaxPerSource <= 0 {
		cfg.MaxPerSource = 32
	}
	if cfg.MaxPerNetwork <= 0 {
		cfg.MaxPerNetwork = 2 * cfg.MaxPerSource
	}
	if cfg.Resets.Total.Burst == 0 {
		cfg.Resets = DefaultResets
	}
	if cfg.Resets.Now == nil {
		cfg.Resets.Now = cfg.Now
	}
	if cfg.Drops == nil {
		cfg.Drops = new(counters.Drops)
	}
	if cfg.Hooks == nil {
		cfg.Hooks = CertificateHooks{}
	}
	m := &Manager{
		cfg:       cfg,
		log:       cfg.Log,
		drops:     cfg.Drops,
		hooks:     cfg.Hooks,
		work:      make(chan *Session, 1024),
		sessions:  make(map[uint64]*Session),
		byClient:  make(map[clientKey]*Session),
		byUser:    make(map[string][]*Session),
		pending:   make(map[pendingKey]*Session),
		perSource: make(map[netip.Prefix]int),
	}
	if err := m.Reconfigure(cfg.Settings); err != nil {
		return nil, err
	}
	if cfg.Revoked != nil {
		m.revoker.Store(&cfg.Revoked)
	}
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return nil, fmt.Errorf("session: cookie secret: %w", err)
	}
	m.cookies = cookie.NewJar(secret, cfg.Now)
	m.resets = limiter.New(cfg.Resets)
	return m, nil
}

// Bind gives the manager its data plane. Call it once, before any listener opens.
func (m *Manager) Bind(p *dataplane.Plane) { m.plane = p }

// Reconfigure validates and swaps the settings; new handshakes use them.
func (m *Manager) Reconfigure(s Settings) error {
	if len(s.Ciphers) == 0 {
		return errors.New("session: settings name no data cipher")
	}
	if s.Ping <= 0 {
		s.Ping = 10 * time.Second
	}
	if s.PingRestart <= s.Ping {
		s.PingRestart = 6 * s.Ping
	}
	st := &settings{Settings: s, wrapper: s.Wrapper, replay: true}
	if st.wrapper == nil {
		st.wrapper, st.replay = tlscrypt.NewPlain(), false
	}
	// Client certificates are verified by verifyConnection through the snapshot's chainCache,
	// not by crypto/tls (RequireAnyClientCert only asks for one), so a chain that verified once
	// is not verified again while it is valid. ClientCAs still names the CAs in the request.
	clientAuth := tls.RequireAnyClientCert
	if s.ClientCAs == nil {
		clientAuth = tls.NoClientCert
	} else {
		st.chains = newChainCache(s.ClientCAs)
	}
	st.tls = &tls.Config{
		Certificates:           []tls.Certificate{s.Certificate},
		ClientAuth:             clientAuth,
		ClientCAs:              s.ClientCAs,
		MinVersion:             tls.VersionTLS12,
		SessionTicketsDisabled: true,
		VerifyConnection:       func(cs tls.ConnectionState) error { return m.verifyConnection(st, cs) },
	}
	m.set.Store(st)
	return nil
}

// Settings returns the current settings.
func (m *Manager) Settings() Settings { return m.set.Load().Settings }

// verifyConnection checks the client's certificate chain against the client CAs and refuses
// revoked client certificates during the TLS handshake. crypto/tls answers a refusal with a
// bad_certificate alert.
func (m *Manager) verifyConnection(st *settings, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	cert := cs.PeerCertificates[0]
	if st.chains != nil {
		if err := st.chains.verify(cs.PeerCertificates, time.Now()); err != nil {
			// The form crypto/tls's own verification returns, which certificateRefusal reads.
			return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
		}
	}
	if r := m.revoker.Load(); r != nil {
		if c, ok := (*r).(RevocationChecker); ok {
			if err := c.CheckRevocation(cert); err != nil {
				return &revokedError{cert: cert, reason: err}
			}
			return nil
		}
	}
	if m.isRevoked(cert) {
		return &revokedError{cert: cert}
	}
	return nil
}

// revokedError refuses a revoked client certificate; reason is the RevocationChecker's, if any.
type revokedError struct {
	cert   *x509.Certificate
	reason error
}

func (e *revokedError) Error() string {
	// Serials are hex, as cvpn client list and openssl x509 -serial print them.
	if e.reason != nil {
		return fmt.Sprintf("client certificate %q (serial %X) refused: %v", e.cert.Subject.CommonName, e.cert.SerialNumber, e.reason)
	}
	return fmt.Sprintf("client certificate %q (serial %X) is revoked", e.cert.Subject.CommonName, e.cert.SerialNumber)
}

func (e *revokedError) Unwrap() error { return e.reason }

func (m *Manager) isRevoked(cert *x509.Certificate) bool {
	r := m.revoker.Load()
	return r != nil && *r != nil && (*r).IsRevoked(cert)
}

// SetRevoker replaces the revocation list and ends the sessions it revokes (AUTH_FAILED);
// other sessions are not disturbed.
func (m *Manager) SetRevoker(r Revoker) {
	m.revoker.Store(&r)
	for _, s := range m.all() {
		if info := s.info.Load(); info != nil && info.Certificate != nil && m.isRevoked(info.Certificate) {
			s.goodbye(authFailed("client certificate revoked"), "certificate revoked")
		}
	}
}

// all returns every session, pending or established.
func (m *Manager) all() []*Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Session, 0, len(m.sessions))
	for _, s := range m.sessions {
		out = append(out, s)
	}
	return out
}

// Established returns the established sessions' Info, with their current remote address and
// traffic.
func (m *Manager) Established() []Status {
	var out []Status
	for _, s := range m.all() {
		info := s.info.Load()
		if info == nil || s.state.Load() != stateEstablished {
			continue
		}
		out = append(out, Status{Info: info, Remote: s.link.Remote(), Traffic: s.peer.Traffic.Snapshot()})
	}
	return out
}

// Status is an established session as listed: its Info and what changes.
type Status struct {
	*Info
	Remote  netip.AddrPort
	Traffic counters.TrafficSnapshot
}

// Terminate ends the established sessions matching match with HALT (the client does not
// reconnect by itself); it returns them as they were.
func (m *Manager) Terminate(match func(*Info) bool, reason string) []Status {
	var out []Status
	for _, s := range m.all() {
		if info := s.info.Load(); info != nil && s.state.Load() == stateEstablished && match(info) {
			out = append(out, s.status())
			s.goodbye(halt(reason), reason)
		}
	}
	return out
}

// Evict ends every session, pending ones too, at once: each established client is told
// RESTART,[N] (reconnect, to the next server of its list) and its session is torn down without
// waiting for the acknowledgement, so that its address is free when Evict returns. A cluster
// node evicts when it lost its lease: another node may get its addresses moments later.
func (m *Manager) Evict(reason string) int {
	n := 0
	for _, s := range m.all() {
		s.evict(reason)
		n++
	}
	return n
}

// EndListener ends the sessions of a listener that is going away (RESTART: clients reconnect
// to a listener that remains).
func (m *Manager) EndListener(l dataplane.Listener) {
	for _, s := range m.all() {
		if s.link.Listener() == l {
			s.goodbye(restart(), "listener removed")
		}
	}
}

// Close tells every client to reconnect (RESTART, so it comes back as soon as the endpoint is
// up again) and waits, at most wait, until every session was torn down.
func (m *Manager) Close(wait time.Duration) {
	m.mu.Lock()
	m.closing = true
	m.mu.Unlock()
	for _, s := range m.all() {
		s.goodbye(restart(), "server shutting down")
	}
	done := make(chan struct{})
	go func() { m.gone.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		for _, s := range m.all() {
			s.teardown("server shutting down")
		}
		<-done
	}
}

// Run handles the events the data plane reports until stop is closed.
func (m *Manager) Run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case s := <-m.work:
			s.handleEvents()
		}
	}
}

// Tick does one round of session timer work at now: hand windows, session timeouts,
// renegotiation schedules and retries, and events the work queue could not take.
func (m *Manager) Tick(now time.Time) {
	// One timer goroutine ticks; it reuses its list of sessions, so a second's tick over
	// 100,000 idle sessions allocates nothing.
	m.tickMu.Lock()
	defer m.tickMu.Unlock()
	m.mu.Lock()
	list := m.ticked[:0]
	for _, s := range m.sessions {
		list = append(list, s)
	}
	m.mu.Unlock()
	for _, s := range list {
		s.tick(now)
	}
	clear(list) // keep no ended session alive until the next tick
	m.ticked = list[:0]
}

// register adds a fully built session to the tables, if the bounds allow and no live session
// has the client's session id. A pending UDP session at the same listener and address that the
// new one replaces is returned; refused is the reason of a refusal, or NumReasons.
func (m *Manager) register(s *Session, key *pendingKey) (replaced *Session, refused counters.Reason) {
	addr, network := limiter.Prefixes(s.link.Remote().Addr())
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return nil, counters.HandshakeLimit
	}
	if key != nil {
		replaced = m.pending[*key]
	}
	if o := m.byClient[s.clientKey()]; o != nil && o != replaced {
		// The client's session id is taken by a live session (a late or replayed packet of a
		// handshake that completed, the client since floated): not a new session.
		return nil, counters.NoSession
	}
	unauth, perAddr, perNet := m.unauth, m.perSource[addr], m.perSource[network]
	if replaced != nil {
		unauth, perAddr, perNet = unauth-1, perAddr-1, perNet-1
	}
	if unauth >= m.cfg.MaxHandshakes || perAddr >= m.cfg.MaxPerSource || perNet >= m.cfg.MaxPerNetwork {
		return nil, counters.HandshakeLimit
	}
	if replaced != nil {
		m.leavePendingLocked(replaced) // the caller tears it down
	}
	m.sessions[s.id] = s
	m.byClient[s.clientKey()] = s
	s.registered = true
	if key != nil {
		m.pending[*key] = s
		s.pendingKey = key
	}
	m.unauth++
	m.perSource[addr]++
	m.perSource[network]++
	m.gone.Add(1)
	return replaced, counters.NumReasons
}

// established moves s out of the pending tables once it authenticated. It reports false when
// s was torn down meanwhile. Otherwise it returns the sessions s displaces because its user
// holds more than MaxConnectionsPerUser: that user's oldest, for the caller to end.
func (m *Manager) established(s *Session) (displaced []*Session, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.sessions[s.id]; !ok {
		return nil, false
	}
	m.leavePendingLocked(s)
	if !s.state.CompareAndSwap(statePending, stateEstablished) {
		return nil, false
	}
	user := s.info.Load().User
	s.listedAs = user
	m.byUser[user] = append(m.byUser[user], s)
	limit := s.m.set.Load().MaxConnectionsPerUser
	if limit <= 0 {
		return nil, true
	}
	var same []*Session
	for _, o := range m.byUser[user] {
		if o != s && o.state.Load() == stateEstablished {
			same = append(same, o)
		}
	}
	if len(same) < limit {
		return nil, true
	}
	// Oldest first: by start, then by id (ids grow with time).
	slices.SortFunc(same, func(a, b *Session) int {
		if c := a.since.Compare(b.since); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	return same[:len(same)-limit+1], true
}

// leavePendingLocked removes s from the bounds on unauthenticated sessions.
func (m *Manager) leavePendingLocked(s *Session) {
	if s.pendingKey != nil && m.pending[*s.pendingKey] == s {
		delete(m.pending, *s.pendingKey)
	}
	if s.registered && !s.countedOut {
		s.countedOut = true
		m.unauth--
		addr, network := limiter.Prefixes(s.link.Remote().Addr())
		if m.perSource[addr]--; m.perSource[addr] <= 0 {
			delete(m.perSource, addr)
		}
		if m.perSource[network]--; m.perSource[network] <= 0 {
			delete(m.perSource, network)
		}
	}
}

// forgetLocked removes s from every table of the manager.
func (m *Manager) forgetLocked(s *Session) {
	m.leavePendingLocked(s)
	if m.byClient[s.clientKey()] == s {
		delete(m.byClient, s.clientKey())
	}
	delete(m.sessions, s.id)
	if list, ok := m.byUser[s.listedAs]; ok {
		list = slices.DeleteFunc(list, func(o *Session) bool { return o == s })
		if len(list) == 0 {
			delete(m.byUser, s.listedAs)
		} else {
			m.byUser[s.listedAs] = list
		}
	}
}
