// Package tunnel is the cvpn engine: it terminates OpenVPN sessions on UDP listeners, runs each
// session's control channel (TLS, key-method 2, push) and data channel (AEAD, replay, keepalive),
// enforces authorization on every client packet, source-NATs client traffic into the TUN device
// facing the private network and sends replies back to the right client.
//
// Files by stage: server.go (lifecycle, tables), udp.go (link receive and dispatch, the stateless
// cookie handshake), handshake.go (TLS, key-method 2, authentication, push), data.go (the packet
// path both ways), timers.go (keepalive, reaping, expiry), host_linux.go (TUN and netlink setup).
// ARCHITECTURE.md at the repository root draws the goroutines and who owns which state.
package tunnel

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/tls/cookie"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
)

// Config is everything the engine needs; cmd/cvpn builds it from the endpoint file.
type Config struct {
	// UDP and TCP list the addresses to listen on.
	UDP []netip.AddrPort
	TCP []netip.AddrPort
	// Certificate is the server's TLS identity; ClientCAs verifies client certificates.
	Certificate tls.Certificate
	ClientCAs   *x509.CertPool
	// Revoked, when set, refuses client certificates it reports revoked (the CRL). SetRevoker
	// replaces it at run time and cuts off connected clients it revokes.
	Revoked Revoker
	// SessionTimeout ends a session this long after it started (AWS session_timeout_hours); the
	// client is told RESTART and reconnects, authenticating again. 0 means never.
	SessionTimeout time.Duration
	// Banner is sent to each client after its configuration (as INFO); empty sends nothing.
	Banner string
	// ControlWrapper protects the control channel (tls-crypt, tls-auth); nil means none.
	ControlWrapper tlscrypt.Wrapper
	// TLSCryptV2 accepts tls-crypt-v2 clients (each with its own key, wrapped by this one). With it
	// and no ControlWrapper, unprotected control packets are refused.
	TLSCryptV2 *tlscrypt.V2ServerKey
	// Ciphers are the data ciphers in the server's order of preference.
	Ciphers []datacrypto.Cipher
	Pool    *ippool.Pool
	NAT     *nat.Table
	Device  tun.Device
	// Policy holds the per-packet configuration; Reload swaps it.
	Policy *Policy
	// Ping and PingRestart are pushed to clients and drive the server's own keepalive and reaping.
	Ping, PingRestart time.Duration
	// Reneg is how often the server renegotiates a session's data keys (OpenVPN reneg-sec); 0 never.
	Reneg time.Duration
	// MSS is the largest TCP MSS clients and private hosts may announce through the tunnel (SYNs
	// are clamped); 0 means 1400, which keeps a 1500-byte path free of fragments.
	MSS int
	// HandWindow bounds a TLS handshake and key exchange (OpenVPN --hand-window, 60 s).
	HandWindow time.Duration
	// MaxHandshakes bounds sessions that have proved their address but not finished authenticating.
	MaxHandshakes int
	Log           *slog.Logger
	Now           func() time.Time
}

// Revoker reports whether a client certificate was revoked.
type Revoker interface {
	IsRevoked(cert *x509.Certificate) bool
}

// Policy is the per-packet configuration: an immutable snapshot swapped atomically on reload.
// Build it with NewPolicy.
type Policy struct {
	Authz *authz.Policy
	// Routes are pushed to clients; in split-tunnel mode only destinations they cover are
	// forwarded. ClientToClient (a `target: local` route to the client CIDR) lets clients reach
	// each other, still subject to Authz.
	Routes         []netip.Prefix
	ClientToClient bool
	SplitTunnel    bool
	DNS            []netip.Addr
	// Bandwidth is each connection's limit in bits per second, per direction (0 = unlimited);
	// GroupBandwidth overrides it for members of a group (the largest override of a user's groups
	// applies).
	Bandwidth      float64
	GroupBandwidth map[string]float64

	routeTable *authz.Policy // Routes as a longest-prefix table; nil in full-tunnel mode
}

// NewPolicy validates and completes a policy snapshot.
func NewPolicy(p Policy) (*Policy, error) {
	if p.Authz == nil {
		return nil, errors.New("tunnel: policy without authorization rules")
	}
	if p.SplitTunnel {
		rules := make([]authz.Rule, 0, len(p.Routes))
		for _, r := range p.Routes {
			rules = append(rules, authz.Rule{Network: r, AllGroups: true})
		}
		t, err := authz.New(rules)
		if err != nil {
			return nil, fmt.Errorf("tunnel: routes: %w", err)
		}
		p.routeTable = t
	}
	return &p, nil
}

// routed reports whether dst is covered by a route (always, in full-tunnel mode).
func (p *Policy) routed(dst netip.Addr) bool {
	return p.routeTable == nil || p.routeTable.Allowed(dst, authz.Groups{})
}

// limitFor returns the bandwidth limit of a user with these groups.
func (p *Policy) limitFor(groups []string) float64 {
	limit, found := p.Bandwidth, false
	for _, g := range groups {
		if l, ok := p.GroupBandwidth[g]; ok {
			if l == 0 {
				return 0 // an unlimited group wins
			}
			if !found || l > limit {
				limit, found = l, true
			}
		}
	}
	return limit
}

// Server is one running endpoint.
type Server struct {
	cfg     Config
	log     *slog.Logger
	drops   dropCounters
	tlsConf *tls.Config
	wrapper tlscrypt.Wrapper
	replay  bool
	v2      *tlscrypt.V2ServerKey
	cookies *cookie.Jar
	limiter *tokenBucket
	// denialLog limits the "access denied" lines all connections together may log.
	denialLog *tokenBucket
	policy    atomic.Pointer[Policy]
	revoker   atomic.Pointer[Revoker]
	mss       uint16

	// mu guards all, byAddr and handshakes. peers is indexed by peer-id, which is the pool index of the
	// client's address: the data path reads it without a lock.
	mu         sync.Mutex
	all        map[uint64]*client
	byAddr     map[netip.AddrPort]*client // UDP sessions by address
	handshakes int
	peers      []atomic.Pointer[client]

	listeners []*udpListener
	tcp       []*tcpListener
	wg        sync.WaitGroup
	done      chan struct{}
	waker     *waker // fired by Close: data-plane socket waits return
	closeOnce sync.Once
	nextID    atomic.Uint64
}

// New validates cfg and opens the listeners; Run starts serving.
func New(cfg Config) (*Server, error) {
	if cfg.Pool == nil || cfg.NAT == nil || cfg.Device == nil || cfg.Policy == nil || cfg.Policy.Authz == nil {
		return nil, errors.New("tunnel: config needs Pool, NAT, Device and Policy")
	}
	if len(cfg.Ciphers) == 0 {
		return nil, errors.New("tunnel: config names no data cipher")
	}
	if len(cfg.UDP) == 0 && len(cfg.TCP) == 0 {
		return nil, errors.New("tunnel: config has no listener")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Ping <= 0 {
		cfg.Ping = 10 * time.Second
	}
	if cfg.PingRestart <= cfg.Ping {
		cfg.PingRestart = 6 * cfg.Ping
	}
	if cfg.HandWindow <= 0 {
		cfg.HandWindow = 60 * time.Second
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = 1024
	}
	s := &Server{
		cfg:    cfg,
		log:    cfg.Log,
		all:    make(map[uint64]*client),
		byAddr: make(map[netip.AddrPort]*client),
		peers:  make([]atomic.Pointer[client], cfg.Pool.Size()),
		done:   make(chan struct{}),
	}
	w, err := newWaker()
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	s.waker = w
	s.mss = 1400
	if cfg.MSS > 0 {
		s.mss = uint16(cfg.MSS)
	}
	s.drops = dropCounters{log: cfg.Log, now: cfg.Now, every: 10 * time.Second}
	s.policy.Store(cfg.Policy)
	if cfg.Revoked != nil {
		s.revoker.Store(&cfg.Revoked)
	}
	s.tlsConf = &tls.Config{
		Certificates:           []tls.Certificate{cfg.Certificate},
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              cfg.ClientCAs,
		MinVersion:             tls.VersionTLS12,
		SessionTicketsDisabled: true,
		VerifyConnection:       s.verifyConnection,
	}
	s.v2 = cfg.TLSCryptV2
	s.wrapper, s.replay = cfg.ControlWrapper, true
	if s.wrapper == nil {
		s.wrapper, s.replay = tlscrypt.NewPlain(), false
	}
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return nil, fmt.Errorf("tunnel: cookie secret: %w", err)
	}
	s.cookies = cookie.NewJar(secret, cfg.Now)
	// OpenVPN's --connect-freq-initial default: 100 stateless replies per 10 s.
	s.limiter = newTokenBucket(10, 100, cfg.Now)
	s.denialLog = newTokenBucket(5, 50, cfg.Now)
	for _, ap := range cfg.UDP {
		l, err := listenUDP(s, ap)
		if err != nil {
			s.closeListeners()
			s.waker.close()
			return nil, err
		}
		s.listeners = append(s.listeners, l)
	}
	for _, ap := range cfg.TCP {
		l, err := listenTCP(s, ap)
		if err != nil {
			s.closeListeners()
			s.waker.close()
			return nil, err
		}
		s.tcp = append(s.tcp, l)
	}
	return s, nil
}

// Addrs returns the bound listener addresses (useful with port 0).
func (s *Server) Addrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, l := range s.listeners {
		out = append(out, l.addr)
	}
	return out
}

// TCPAddrs returns the bound TCP listener addresses.
func (s *Server) TCPAddrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, l := range s.tcp {
		out = append(out, l.addr)
	}
	return out
}

// Run serves until Close. It starts one receive goroutine per listener, the TUN reader and the
// timer loop, and returns when they have all stopped.
func (s *Server) Run() {
	for _, l := range s.listeners {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); l.receiveLoop() }()
	}
	for _, l := range s.tcp {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); l.acceptLoop() }()
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.tunLoop() }()
	go func() { defer s.wg.Done(); s.timerLoop() }()
	<-s.done
	s.wg.Wait()
}

// Close tells every client to reconnect (RESTART, so it comes back as soon as the endpoint is up
// again), disconnects them and stops the goroutines. It closes the Device too, since a blocked TUN
// read only returns then.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		clients := s.clients()
		for _, c := range clients {
			if conn := c.tlsConn.Load(); conn != nil {
				_, _ = conn.Write([]byte("RESTART\x00"))
			}
		}
		deadline := time.Now().Add(time.Second)
		for _, c := range clients {
			for time.Now().Before(deadline) && !c.ctl.Idle(c.ctl.Current()) {
				time.Sleep(10 * time.Millisecond)
			}
		}
		for _, c := range clients {
			s.disconnect(c, "server shutting down")
		}
		close(s.done)
		s.waker.wake()
		s.closeListeners()
		// Only waits on a UDP socket use the waker, under the socket's read lock; the sockets
		// are closed now, so nothing waits on it any more.
		s.waker.close()
		s.cfg.Device.Close()
	})
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.close()
	}
	for _, l := range s.tcp {
		l.close()
	}
}

// Reload swaps the per-packet policy; connected clients get it on their next packet.
func (s *Server) Reload(p *Policy) { s.policy.Store(p) }

// verifyConnection refuses revoked client certificates during the TLS handshake.
func (s *Server) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) > 0 && s.isRevoked(cs.PeerCertificates[0]) {
		return fmt.Errorf("client certificate %q (serial %s) is revoked", cs.PeerCertificates[0].Subject.CommonName, cs.PeerCertificates[0].SerialNumber)
	}
	return nil
}

func (s *Server) isRevoked(cert *x509.Certificate) bool {
	r := s.revoker.Load()
	return r != nil && *r != nil && (*r).IsRevoked(cert)
}

// SetRevoker replaces the revocation list and disconnects connected clients it revokes; other
// clients are not disturbed.
func (s *Server) SetRevoker(r Revoker) {
	s.revoker.Store(&r)
	for _, c := range s.clients() {
		if c.cert != nil && s.isRevoked(c.cert) {
			// Tell the client why, so the stock client stops rather than retrying forever.
			if conn := c.tlsConn.Load(); conn != nil {
				_, _ = conn.Write([]byte("AUTH_FAILED,client certificate revoked\x00"))
			}
			go func() {
				time.Sleep(500 * time.Millisecond) // let the message leave first
				s.disconnect(c, "certificate revoked")
			}()
		}
	}
}

// Drops returns the drop counters by reason.
func (s *Server) Drops() map[string]uint64 { return s.drops.snapshot() }

// ClientInfo describes one connected client.
type ClientInfo struct {
	CommonName string
	Remote     netip.AddrPort
	Address    netip.Addr
	Cipher     string
	Since      time.Time
}

// Clients lists the connected (authenticated) clients.
func (s *Server) Clients() []ClientInfo {
	var out []ClientInfo
	for _, c := range s.clients() {
		if !c.addr.IsValid() {
			continue
		}
		out = append(out, ClientInfo{CommonName: c.commonName, Remote: c.remote(), Address: c.addr, Cipher: c.cipher.String(), Since: c.since})
	}
	return out
}

func (s *Server) clients() []*client {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*client, 0, len(s.all))
	for _, c := range s.all {
		out = append(out, c)
	}
	return out
}

// tokenBucket is a small clock-injected limiter for handshake replies.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
	now    func() time.Time
}

func newTokenBucket(rate, burst float64, now func() time.Time) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst, now: now}
}

// refund returns a token: OpenVPN's connect-freq-initial limits only resets that never complete
// the 3-way handshake, so a completed one gives its token back (mudp.c).
func (b *tokenBucket) refund() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = min(b.burst, b.tokens+1)
}

func (b *tokenBucket) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
