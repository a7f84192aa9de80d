// Package tunnel is the cvpn engine as one value: it wires the session layer (package
// tunnel/session: handshakes, admission, push, goodbye), the data plane (package
// tunnel/dataplane: peer table, packet paths, timers) and the listeners (package tunnel/sock),
// and is what cmd/cvpn and the tests start, reconfigure, list and stop. It holds no protocol
// logic of its own.
//
// The packages below it, by job: tunnel/sock (batched sockets and the seam tests fake),
// tunnel/host (TUN, routes, neighbours, sysctls), tunnel/counters (drop and traffic counters),
// tunnel/datacrypto, tunnel/replay and tunnel/bucket (leaf concepts). ARCHITECTURE.md draws the
// goroutines and who owns which state.
package tunnel

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/dataplane"
	"github.com/cvpn/cvpn/tunnel/session"
	"github.com/cvpn/cvpn/tunnel/sock"
)

// Policy is the per-packet configuration (authorization, routes, limits, DNS).
type Policy = dataplane.Policy

// NewPolicy validates and completes a policy snapshot.
func NewPolicy(p Policy) (*Policy, error) { return dataplane.NewPolicy(p) }

// Revoker reports whether a client certificate was revoked.
type Revoker = session.Revoker

// RevocationChecker is a Revoker that decides each TLS handshake itself and says why it
// refuses (an expired CRL refuses everyone its CA issued).
type RevocationChecker = session.RevocationChecker

// Hooks are the admission steps (authentication, on-connect, on-disconnect).
type Hooks = session.Hooks

// Settings are what Reconfigure may change on a running server.
type Settings = session.Settings

// Config is everything the engine needs; cmd/cvpn builds it from the endpoint file.
type Config struct {
	// UDP and TCP list the addresses to listen on.
	UDP []netip.AddrPort
	TCP []netip.AddrPort
	// Network opens the listeners; nil means the host's sockets (sock.Host). Tests pass an
	// in-memory socktest.Network.
	Network sock.Network
	// Certificate is the server's TLS identity; ClientCAs verifies client certificates.
	Certificate tls.Certificate
	ClientCAs   *x509.CertPool
	// Revoked, when set, refuses client certificates it reports revoked (the CRL). SetRevoker
	// replaces it at run time and cuts off connected clients it revokes.
	Revoked Revoker
	// Hooks admit clients; nil authenticates by certificate alone.
	Hooks Hooks
	// Events hear about sessions connecting, refused and disconnecting (connection log,
	// metrics, the admin API).
	Events []Events
	// SessionTimeout ends a session this long after it started; 0 means never.
	SessionTimeout time.Duration
	// Banner is sent to each client after its configuration (as INFO); empty sends nothing.
	Banner string
	// ControlWrapper protects the control channel (tls-crypt, tls-auth); nil means none.
	ControlWrapper tlscrypt.Wrapper
	// TLSCryptV2 accepts tls-crypt-v2 clients.
	TLSCryptV2 *tlscrypt.V2ServerKey
	// Ciphers are the data ciphers in the server's order of preference.
	Ciphers []datacrypto.Cipher
	Pool    *ippool.Pool
	NAT     *nat.Table
	// NAT6 sends IPv6 through NAT too (snat_ipv6_address); otherwise IPv6 keeps the clients'
	// own addresses.
	NAT6   bool
	Device tun.Device
	// Queues are all the TUN device's queues, Device first (nil: Device alone); each gets a
	// reader. Close closes them all.
	Queues []tun.Device
	// Workers is how many sockets, each with its receive goroutine, a UDP listener opens (an
	// SO_REUSEPORT group); 0 means runtime.GOMAXPROCS(0), at most 64.
	Workers int
	// Policy holds the per-packet configuration; Reload swaps it.
	Policy *Policy
	// Ping and PingRestart are pushed to clients and drive the server's keepalive and reaping.
	Ping, PingRestart time.Duration
	// Reneg is how often the server renegotiates a session's data keys; 0 never (it still does
	// before packet ids run out).
	Reneg time.Duration
	// MaxConnectionsPerUser bounds the sessions of one user; 0 means unlimited.
	MaxConnectionsPerUser int
	// MSS clamps TCP SYNs through the tunnel; 0 means 1400.
	MSS int
	// HandWindow bounds a TLS handshake and key exchange (OpenVPN --hand-window, 60 s).
	HandWindow time.Duration
	// MaxHandshakes bounds sessions that have not finished authenticating.
	MaxHandshakes int
	Log           *slog.Logger
	Now           func() time.Time
}

// Workers is the number of sockets per UDP listener and TUN queues that Config.Workers n means:
// n, or runtime.GOMAXPROCS(0) for 0, at most 64.
func Workers(n int) int { return dataplane.Workers(n) }

// Settings returns the part of cfg that a running server may change (Reconfigure).
func (cfg *Config) Settings() Settings {
	return Settings{
		Certificate:           cfg.Certificate,
		ClientCAs:             cfg.ClientCAs,
		Wrapper:               cfg.ControlWrapper,
		TLSCryptV2:            cfg.TLSCryptV2,
		Ciphers:               cfg.Ciphers,
		Ping:                  cfg.Ping,
		PingRestart:           cfg.PingRestart,
		Reneg:                 cfg.Reneg,
		SessionTimeout:        cfg.SessionTimeout,
		MaxConnectionsPerUser: cfg.MaxConnectionsPerUser,
		Banner:                cfg.Banner,
	}
}

// Server is one running endpoint.
type Server struct {
	cfg      Config
	log      *slog.Logger
	drops    *counters.Drops
	sessions *session.Manager
	plane    *dataplane.Plane
	network  sock.Network

	mu       sync.Mutex // guards the listener sets
	udp, tcp map[netip.AddrPort]dataplane.Listener

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New validates cfg and opens the listeners; Run starts serving. On error nothing stays open.
func New(cfg Config) (*Server, error) {
	if cfg.Pool == nil || cfg.NAT == nil || cfg.Device == nil || cfg.Policy == nil || cfg.Policy.Authz == nil {
		return nil, errors.New("tunnel: config needs Pool, NAT, Device and Policy")
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
	if cfg.Network == nil {
		cfg.Network = sock.Host
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Log,
		drops:   new(counters.Drops),
		network: cfg.Network,
		udp:     make(map[netip.AddrPort]dataplane.Listener),
		tcp:     make(map[netip.AddrPort]dataplane.Listener),
		stop:    make(chan struct{}),
	}
	var err error
	s.sessions, err = session.New(session.Config{
		Pool:          cfg.Pool,
		NAT:           cfg.NAT,
		Hooks:         cfg.Hooks,
		Settings:      cfg.Settings(),
		Revoked:       cfg.Revoked,
		HandWindow:    cfg.HandWindow,
		MaxHandshakes: cfg.MaxHandshakes,
		Events:        cfg.Events,
		Drops:         s.drops,
		Log:           cfg.Log,
		Now:           cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	s.plane, err = dataplane.New(dataplane.Config{
		Pool:    cfg.Pool,
		NAT:     cfg.NAT,
		NAT6:    cfg.NAT6,
		Device:  cfg.Device,
		Queues:  cfg.Queues,
		Workers: cfg.Workers,
		Policy:  cfg.Policy,
		Control: s.sessions,
		Drops:   s.drops,
		MSS:     cfg.MSS,
		Log:     cfg.Log,
		Now:     cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	s.sessions.Bind(s.plane)
	if err := s.SetListeners(cfg.UDP, cfg.TCP); err != nil {
		s.plane.Close()
		return nil, err
	}
	return s, nil
}

// SetListeners opens the listeners that are new and closes those no longer listed, whose
// clients are told to reconnect (RESTART). Listeners in both stay, with their sessions. When a
// new listener cannot open, nothing changes and the error names it.
func (s *Server) SetListeners(udp, tcp []netip.AddrPort) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var opened []dataplane.Listener
	open := func(proto string, want []netip.AddrPort, have map[netip.AddrPort]dataplane.Listener,
		listen func(netip.AddrPort) (dataplane.Listener, error)) (map[netip.AddrPort]dataplane.Listener, error) {
		next := make(map[netip.AddrPort]dataplane.Listener)
		for _, ap := range want {
			if l, ok := have[ap]; ok {
				next[ap] = l
				continue
			}
			l, err := listen(ap)
			if err != nil {
				return nil, fmt.Errorf("listen %s %s: %w", proto, ap, err)
			}
			opened = append(opened, l)
			next[ap] = l
		}
		return next, nil
	}
	newUDP, err := open("udp", udp, s.udp, func(ap netip.AddrPort) (dataplane.Listener, error) { return s.plane.ListenUDP(s.network, ap) })
	var newTCP map[netip.AddrPort]dataplane.Listener
	if err == nil {
		newTCP, err = open("tcp", tcp, s.tcp, func(ap netip.AddrPort) (dataplane.Listener, error) { return s.plane.ListenTCP(s.network, ap) })
	}
	if err != nil {
		for _, l := range opened {
			s.plane.CloseListener(l)
		}
		return err
	}
	for _, old := range []struct {
		have, next map[netip.AddrPort]dataplane.Listener
	}{{s.udp, newUDP}, {s.tcp, newTCP}} {
		for ap, l := range old.have {
			if _, keep := old.next[ap]; !keep {
				s.closeListener(l)
			}
		}
	}
	s.udp, s.tcp = newUDP, newTCP
	return nil
}

// closeListener tells the listener's clients to reconnect, then closes it once they were told.
func (s *Server) closeListener(l dataplane.Listener) {
	s.sessions.EndListener(l)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		time.Sleep(2 * time.Second) // the RESTARTs leave through the listener
		s.plane.CloseListener(l)
	}()
}

// Addrs returns the bound UDP listener addresses (useful with port 0), in the order given.
func (s *Server) Addrs() []netip.AddrPort { return s.bound(s.cfg.UDP, s.udp) }

// TCPAddrs returns the bound TCP listener addresses.
func (s *Server) TCPAddrs() []netip.AddrPort { return s.bound(s.cfg.TCP, s.tcp) }

func (s *Server) bound(order []netip.AddrPort, m map[netip.AddrPort]dataplane.Listener) []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.AddrPort
	seen := make(map[netip.AddrPort]bool)
	for _, ap := range order {
		if l, ok := m[ap]; ok {
			out = append(out, l.Addr())
			seen[ap] = true
		}
	}
	var rest []netip.AddrPort
	for ap, l := range m {
		if !seen[ap] {
			rest = append(rest, l.Addr())
		}
	}
	slices.SortFunc(rest, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return append(out, rest...)
}

// Run serves until Close: the TUN reader, the timers and the session layer's event loop.
func (s *Server) Run() {
	logger := &counters.Logger{Drops: s.drops, Log: s.log, Every: 10 * time.Second}
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.plane.Run() }()
	go func() {
		defer s.wg.Done()
		s.plane.RunTimers(func(now time.Time) {
			s.sessions.Tick(now)
			logger.Flush(now)
		})
	}()
	go func() { defer s.wg.Done(); s.sessions.Run(s.stop) }()
	<-s.stop
	s.wg.Wait()
	s.plane.Wait()
	logger.Flush(s.cfg.Now().Add(time.Hour))
}

// Close tells every client to reconnect (RESTART, so it comes back as soon as the endpoint is
// up again), ends every session and stops the goroutines. It closes the Device and its Queues
// too, since a blocked TUN read only returns then.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.sessions.Close(time.Second)
		s.plane.Close()
		s.cfg.Device.Close()
		for _, q := range s.cfg.Queues {
			if q != s.cfg.Device {
				q.Close()
			}
		}
		close(s.stop)
	})
}

// Reload swaps the per-packet policy; connected clients get it on their next packet.
func (s *Server) Reload(p *Policy) { s.plane.SetPolicy(p) }

// Reconfigure swaps what new handshakes use (certificate, CA, control-channel keys, ciphers,
// keepalive, banner); established sessions keep what they negotiated, except the session
// timeout and the renegotiation interval, which apply to them too.
func (s *Server) Reconfigure(set Settings) error { return s.sessions.Reconfigure(set) }

// SetRevoker replaces the revocation list and disconnects connected clients it revokes; other
// clients are not disturbed.
func (s *Server) SetRevoker(r Revoker) { s.sessions.SetRevoker(r) }

// Heartbeat is one receive loop's count of times round (dataplane.Heartbeat).
type Heartbeat = dataplane.Heartbeat

// Heartbeats returns the data plane's receive loops' heartbeats, for a watchdog: a loop whose
// count stands still for longer than sock.ReadWake is stuck.
func (s *Server) Heartbeats() []Heartbeat { return s.plane.Heartbeats() }

// Drops returns the drop counters by reason.
func (s *Server) Drops() map[string]uint64 { return s.drops.Snapshot() }

// Status is an established session as listed: its immutable Info, its current remote address
// and its traffic.
type Status = session.Status

// Info is what is known of a session once admitted.
type Info = session.Info

// Events hear about sessions connecting, refused and disconnecting.
type Events = session.Events

// Clients lists the established sessions, oldest first.
func (s *Server) Clients() []Status {
	out := s.sessions.Established()
	slices.SortFunc(out, func(a, b Status) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Terminate ends the established sessions that match (HALT: the client does not reconnect by
// itself; its address and NAT state are freed) and returns them as they were.
func (s *Server) Terminate(match func(*Info) bool) []Status {
	return s.TerminateBecause(match, "terminated by the administrator")
}

// Evict ends every session at once, telling established clients to reconnect to their next
// server (session.Manager.Evict); it returns how many there were.
func (s *Server) Evict(reason string) int { return s.sessions.Evict(reason) }

// TerminateBecause is Terminate telling the clients reason (HALT,<reason>).
func (s *Server) TerminateBecause(match func(*Info) bool, reason string) []Status {
	return s.sessions.Terminate(match, reason)
}
