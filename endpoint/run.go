package endpoint

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/cvpn/cvpn/auth"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint/admin"
	"github.com/cvpn/cvpn/endpoint/connlog"
	"github.com/cvpn/cvpn/endpoint/metrics"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/portal"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/host"
	"github.com/cvpn/cvpn/tunnel/sock"
)

// Host is the host state a running endpoint stands on: the TUN device, and a way to remove all
// of it. *host.Host is one. A Host whose TUN has several queues (host.Config.Queues) also
// offers them (queuedHost), and the engine reads them all.
type Host interface {
	Device() tun.Device
	Close() error
}

// queuedHost is a Host with a multi-queue TUN: Queues are all its queues, Device first.
type queuedHost interface {
	Queues() []tun.Device
}

// HostSetup sets the host up for an endpoint; host.Setup is the real one.
type HostSetup func(host.Config, *slog.Logger) (Host, error)

// Options are what a running endpoint needs besides its file.
type Options struct {
	// Log receives the lifecycle and reload lines; nil discards them.
	Log *slog.Logger
	// Now is the clock the files are checked at on reload and the CRL is verified at; nil
	// means time.Now.
	Now func() time.Time
	// Host sets the host up (TUN, route, neighbour, sysctls); nil means host.Setup. Tests pass
	// a fake so that no root is needed.
	Host HostSetup
	// Network opens the listeners; nil means the host's sockets. Tests pass socktest's.
	Network sock.Network
	// HostAddrs finds and watches the host's own addresses, which clients are kept from; nil
	// means host.WatchOwnAddrs.
	HostAddrs HostAddrs
	// ReopenLog: each value received reopens the connection log's file (SIGUSR1, logrotate).
	ReopenLog <-chan struct{}
	// Started, when set, runs in Serve between starting the endpoint and serving it (cvpn
	// serve --user drops its privileges there). An error stops the endpoint, removing what
	// Start set up, and Serve returns it.
	Started func(*Running) error
	// PortalProfiles makes the profiles the self-service portal hands out, from the endpoint
	// in force (package endpoint/profile's ForPortal); required when the file has a portal.
	PortalProfiles func(current func() *Endpoint) portal.Profiles

	// Lifecycle, when set, hears where the endpoint is: started, reloading, stopping (systemd's
	// readiness protocol, in cmd/cvpn).
	Lifecycle Lifecycle

	// crlPoll is how often the CRL file is checked; 0 means every two seconds.
	crlPoll time.Duration
}

// Running is an endpoint that serves: its host state, its engine and its CRL watcher, built
// from an endpoint file that Reload may replace.
type Running struct {
	opts Options
	log  *slog.Logger
	host Host
	srv  *tunnel.Server
	// policy hands the engine the file's policy with the host's own addresses, which
	// stopHostAddrs stops watching.
	policy        *hostPolicy
	stopHostAddrs func()
	// connLog is the connection log, open (or disabled) from Start until Run returns.
	connLog *connlog.Log
	// mx are the metrics, kept from Start whether served or not (a reload may turn them on);
	// metrics serves them on metrics.listen_address (nil when off) until Run returns, and a
	// reload may replace it (r.mu).
	mx      *metrics.Metrics
	metrics *metrics.Server
	// admin serves the admin API on admin.socket from Start until Run returns.
	admin *admin.Server
	// adm is the admission pipeline with the state store, directory and handler it owns.
	adm *admission
	// portal serves the self-service portal from Start until Run returns (nil without one).
	portal *portalServer
	// cl is the node's cluster membership; nil on a single node.
	cl *clusterRun

	// workers is the number of shards per UDP listener and TUN queues; hostSockets says the
	// listeners are the host's (whose receive loops wait in the kernel: procsFor).
	workers     int
	hostSockets bool

	// crl is the CRL set in force: the file's at start or at the last reload, or what the
	// CRL watcher loaded since. It is what a reload compares the file's CRL with.
	crl atomic.Pointer[pki.CRLSet]

	// mu serialises Reload and Run's teardown, and guards the fields below.
	mu      sync.Mutex
	cur     *Endpoint // the running endpoint file; its CRL field is stale (crl is current)
	stopped bool      // Run has returned: nothing more to reload
	// The CRL watcher: closing crlStop stops it, crlDone is closed once it has.
	crlStop, crlDone chan struct{}
}

// Serve starts the endpoint ep, loaded from path, and serves until ctx is done. Each value
// received from reload re-reads path and applies it (Reload, which logs the outcome). It
// returns an error only when the endpoint cannot start (Start); once it has started, Serve
// always removes the host state again before it returns.
func Serve(ctx context.Context, path string, ep *Endpoint, reload <-chan struct{}, opts Options) error {
	r, err := Start(ep, opts)
	if err != nil {
		return err
	}
	if opts.Started != nil {
		if err := opts.Started(r); err != nil {
			r.Stop()
			r.Run() // returns at once, having removed what Start set up
			return err
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run()
	}()
	for {
		select {
		case <-ctx.Done():
			r.Stop()
			<-done
			return nil
		case <-done:
			return nil
		case <-reload:
			_, _ = r.Reload(path) // logged
		case <-opts.ReopenLog:
			r.ReopenConnectionLog()
		}
	}
}

// Start sets the host up for ep, starts the engine on it (listeners open, not serving yet: Run
// serves) and the CRL watcher. When anything fails, what was set up is removed again and the
// error says on one line what failed and, where it can, how to fix it.
func Start(ep *Endpoint, opts Options) (r *Running, err error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Host == nil {
		opts.Host = setupHost
	}
	if opts.HostAddrs == nil {
		opts.HostAddrs = watchHostAddrs
	}
	var cl *clusterRun
	if ep.Config.Cluster != nil {
		// A node runs the cluster's pushed file (with its own cluster section), and leaves
		// the cluster again if it cannot start.
		if cl, ep, err = joinCluster(ep, opts); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				cl.close()
			}
		}()
	}
	cfg := ep.Config
	ecfg, err := engineConfig(ep)
	if err != nil {
		return nil, err
	}
	pool, err := NewPool(cfg)
	if err != nil {
		return nil, err
	}
	if cl != nil {
		if err := cl.node.AttachPool(pool); err != nil {
			return nil, cfg.KeyError("cluster.address_block_size", err)
		}
	}
	natTable, err := nat.New(nat.Config{
		Addr:         cfg.TargetNetwork.SNATAddress,
		Addr6:        cfg.TargetNetwork.SNATIPv6Address,
		MaxEntries:   cfg.NAT.MaxMappings,
		MaxPerClient: cfg.NAT.MaxMappingsPerClient,
	})
	if err != nil {
		return nil, fmt.Errorf("target_network.snat_address, target_network.snat_ipv6_address, nat: %w", err)
	}
	// One TUN queue and one socket per listener for each core the runtime uses: operators
	// choose with GOMAXPROCS (the unit's Environment=), not with a key of the file.
	workers := tunnel.Workers(baseProcs())
	hcfg := hostConfig(cfg)
	hcfg.Queues = workers
	h, err := opts.Host(hcfg, opts.Log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = closeHost(h, err)
		}
	}()
	ecfg.Pool, ecfg.NAT, ecfg.Device, ecfg.Workers = pool, natTable, h.Device(), workers
	ecfg.NAT6 = cfg.TargetNetwork.SNATIPv6Address.IsValid()
	if q, ok := h.(queuedHost); ok {
		ecfg.Queues = q.Queues()
	}
	ecfg.Network, ecfg.Log, ecfg.Now = opts.Network, opts.Log, opts.Now
	ecfg.Revoked = revocation{ep.CRL, opts.Now}
	pol := newHostPolicy(ep.Policy, cfg.TargetNetwork.SNATAddress, opts.Log).withSNAT6(cfg.TargetNetwork.SNATIPv6Address)
	if n, ok := h.(clientNeighbours); ok {
		// Pools too large for a proxy entry per address at setup get one per connected client.
		ecfg.Events = append(ecfg.Events, neighbourEvents{host: n, log: opts.Log})
	}
	own, stopHostAddrs, err := opts.HostAddrs(pol.setOwn, opts.Log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			stopHostAddrs()
		}
	}()
	ecfg.Policy = pol.first(own)
	mx := newMetrics(&r, pool, natTable, nodeName(cfg))
	ecfg.Events = append(ecfg.Events, mx)
	connLog, err := openConnectionLog(ep, opts)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			connLog.Close()
		}
	}()
	mx.PrepareRefusals(append(auth.RefusalCodes(), CodeClusterUnavailable)...)
	adm, err := newAdmission(ep, cl, opts.Log, opts.Now, mx)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			adm.close()
		}
	}()
	ecfg.Hooks = adm.pipeline
	if cl != nil {
		ecfg.Hooks = clusterGate{Hooks: adm.pipeline, node: cl.node}
	}
	history := admin.NewHistory(opts.Now)
	ecfg.Events = append(ecfg.Events, connLog, history)
	// The admin API's source is made once the engine is; the cluster publisher, which maps
	// sessions with it, hears of sessions from the start.
	var (
		// src and r, once Start made them: the publisher's goroutines run before (no session is
		// admitted before Run, but a resync may come).
		src     atomic.Pointer[admin.Source]
		started atomic.Pointer[Running]
	)
	if cl != nil {
		ecfg.Events = append(ecfg.Events, cl.node.Publisher(
			func(st tunnel.Status) admin.Connection {
				if s := src.Load(); s != nil {
					return s.Published(st)
				}
				return admin.Connection{ConnectionID: st.ConnectionID, Username: st.User, Cvpn: admin.ConnectionExtensions{Node: cl.node.Name()}}
			},
			func() []tunnel.Status {
				if r := started.Load(); r != nil {
					return r.srv.Clients()
				}
				return nil // nothing runs yet
			},
			func() int {
				if r := started.Load(); r != nil {
					return r.Endpoint().Config.MaxConnectionsPerUser
				}
				return cfg.MaxConnectionsPerUser
			}))
	}
	srv, err := tunnel.New(ecfg)
	if err != nil {
		return nil, engineError(err, cfg)
	}
	connLog.Track(srv.Clients)
	pol.attach(srv, ecfg.Policy)
	r = &Running{opts: opts, log: opts.Log, host: h, srv: srv, policy: pol, stopHostAddrs: stopHostAddrs, cur: ep,
		connLog: connLog, adm: adm, workers: workers, hostSockets: opts.Network == nil, cl: cl}
	r.makeRoom(len(ecfg.UDP))
	r.mx = mx
	started.Store(r)
	if r.metrics, err = serveMetrics(mx, cfg.Metrics.ListenAddress, opts.Log); err != nil {
		srv.Close()
		return nil, err
	}
	defer func(m *metrics.Server) {
		if err != nil && m != nil {
			_ = m.Close()
		}
	}(r.metrics)
	s := adminSource(r, ep, pool, history)
	src.Store(s)
	if r.admin, err = admin.Listen(ep.Config.Admin.Socket, admin.NewHandler(s, r.log)); err != nil {
		srv.Close()
		return nil, err
	}
	if r.portal, err = startPortal(r, ep); err != nil {
		_ = r.admin.Close()
		srv.Close()
		return nil, err
	}
	r.crl.Store(ep.CRL)
	r.watchCRL(ep)
	if cl != nil {
		r.startCluster()
	}
	opts.Log.Info("cvpn listening", "udp", ecfg.UDP, "tcp", ecfg.TCP, "client_cidr", cfg.ClientCIDRBlock, "snat", cfg.TargetNetwork.SNATAddress,
		"interface", cfg.TargetNetwork.Interface, "tun", cfg.TUN.Name,
		"nat_max_mappings", cfg.NAT.MaxMappings, "nat_max_mappings_per_client", cfg.NAT.MaxMappingsPerClient, "admin", cfg.Admin.Socket)
	if opts.Lifecycle != nil {
		opts.Lifecycle.Started(r)
	}
	return r, nil
}

// adminSource is what the admin API of r reads; on a cluster node it lists and terminates
// across the cluster, and carries out the other nodes' terminate requests.
func adminSource(r *Running, ep *Endpoint, pool *ippool.Pool, history *admin.History) *admin.Source {
	src := &admin.Source{
		EndpointID: endpointID(ep.Config),
		Engine:     r.srv,
		Pool:       pool,
		Endpoint:   func() *config.Endpoint { return r.Endpoint().Config },
		History:    history,
		Started:    r.opts.Now(),
		Now:        r.opts.Now,
		MFA:        r.enrolments,
	}
	if r.cl != nil {
		node := r.cl.node
		src.Cluster = node
		node.SetTerminator(src.TerminateLocal)
		node.SetReplacer(func(id, reason string) bool {
			return len(r.srv.TerminateBecause(func(info *tunnel.Info) bool { return info.ConnectionID == id }, reason)) > 0
		})
	}
	return src
}

// setupHost is host.Setup as a HostSetup.
func setupHost(cfg host.Config, log *slog.Logger) (Host, error) {
	h, err := host.Setup(cfg, log)
	if err != nil {
		return nil, err // not a typed nil in an interface
	}
	return h, nil
}

// Run serves until Stop; then it stops the CRL watcher and the address watch, removes the host
// state (a failure to is logged) and logs the drop counters.
func (r *Running) Run() {
	r.srv.Run()
	r.portal.close()
	if err := r.admin.Close(); err != nil {
		r.log.Error("closing the admin API", "err", err)
	}
	if err := r.connLog.Close(); err != nil { // every session has ended: their final records are queued
		r.log.Error("connection log: close", "err", err)
	}
	r.mu.Lock()
	r.stopped = true
	r.stopCRLWatch()
	r.closeMetrics()
	r.mu.Unlock()
	r.adm.close()
	r.cl.close() // every session has ended: the lease goes, and with it the blocks
	r.stopHostAddrs()
	if err := r.host.Close(); err != nil {
		r.log.Error("removing host state", "err", err)
	}
	r.log.Info("cvpn stopped", "drops", r.srv.Drops())
}

// Stop tells every client to reconnect (RESTART) and makes Run return.
func (r *Running) Stop() {
	if r.opts.Lifecycle != nil {
		r.opts.Lifecycle.Stopping()
	}
	if r.cl != nil {
		// Clients of a cluster node go to the next node of their profile at once.
		r.srv.Evict("node shutting down")
	}
	r.srv.Close()
}

// Server is the engine, for listing and terminating sessions.
func (r *Running) Server() *tunnel.Server { return r.srv }

// Endpoint returns the endpoint file in force (the last one Reload applied).
func (r *Running) Endpoint() *Endpoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current()
}

// current is cur with the CRL in force; r.mu is held.
func (r *Running) current() *Endpoint {
	ep := *r.cur
	ep.CRL = r.crl.Load()
	return &ep
}

// engineConfig maps the endpoint file to the engine's configuration, all but what is built once
// at start (pool, NAT, TUN device) and the seams (network, log, clock). A reload takes its
// Settings and listeners from it too, so the two cannot drift apart.
func engineConfig(ep *Endpoint) (tunnel.Config, error) {
	cfg := ep.Config
	cert, err := ep.Server.TLSCertificate()
	if err != nil {
		return tunnel.Config{}, cfg.KeyError("server_certificate.cert_file", err)
	}
	wrapper, err := ep.ControlWrapper()
	if err != nil {
		return tunnel.Config{}, err
	}
	udp, tcp := Listeners(cfg)
	return tunnel.Config{
		UDP:                   udp,
		TCP:                   tcp,
		Certificate:           cert,
		ClientCAs:             ep.ClientCAs,
		ControlWrapper:        wrapper,
		TLSCryptV2:            ep.TLSCryptV2ServerKey,
		Reneg:                 cfg.Reneg,
		MaxConnectionsPerUser: cfg.MaxConnectionsPerUser,
		SessionTimeout:        cfg.SessionTimeout,
		Banner:                cfg.ClientLoginBanner,
		MSS:                   cfg.TUN.MTU - 100, // room for the tunnel's own headers on a path of the same MTU
		Ciphers:               ep.Ciphers,
		Policy:                ep.Policy,
		Ping:                  cfg.Keepalive.Ping,
		PingRestart:           cfg.Keepalive.PingRestart,
	}, nil
}

// NewPool returns the client address pool of the families the tunnel carries.
func NewPool(cfg *config.Endpoint) (*ippool.Pool, error) {
	c4, c6 := cfg.ClientCIDRBlock, cfg.ClientIPv6CIDRBlock
	var (
		pool *ippool.Pool
		err  error
	)
	switch {
	case c4.IsValid() && c6.IsValid():
		pool, err = ippool.NewDual(c4, c6)
	case c6.IsValid():
		pool, err = ippool.New6(c6)
	default:
		pool, err = ippool.New(c4)
	}
	if err != nil {
		return nil, fmt.Errorf("client_cidr_block, client_ipv6_cidr_block: %w", err)
	}
	return pool, nil
}

// Listeners returns the UDP and TCP listener addresses of the file, in its order: with
// endpoint_ip_address_type dual-stack, each transport's IPv4 listener, then its IPv6 one (each
// socket serves one family).
func Listeners(cfg *config.Endpoint) (udp, tcp []netip.AddrPort) {
	addrs := []netip.Addr{cfg.ListenAddress}
	if cfg.EndpointIPAddressType == config.DualStack {
		addrs = append(addrs, cfg.ListenIPv6Address)
	}
	for _, l := range cfg.Transport {
		for _, a := range addrs {
			ap := netip.AddrPortFrom(a, l.Port)
			if l.Protocol == config.ProtocolTCP {
				tcp = append(tcp, ap)
			} else {
				udp = append(udp, ap)
			}
		}
	}
	return udp, tcp
}

// putCRL puts set in force (nil: none) and cuts off the connected clients it revokes;
// revocation checks each handshake against it from now on.
func (r *Running) putCRL(set *pki.CRLSet) {
	r.crl.Store(set)
	r.srv.SetRevoker(revocation{set, r.opts.Now})
}

// watchCRL starts the CRL watcher on ep's CRL file, checking new lists against ep's client root
// CAs; nothing when ep has no CRL file. r.mu is held, or r is not shared yet.
func (r *Running) watchCRL(ep *Endpoint) {
	if c := ep.Config.Authentication.Certificate; c == nil || c.CRLFile == "" {
		return
	}
	poll := r.opts.crlPoll
	if poll == 0 {
		poll = crlPoll
	}
	w := newCRLWatcher(ep, r.putCRL, r.log, r.opts.Now)
	stop, done := make(chan struct{}), make(chan struct{})
	r.crlStop, r.crlDone = stop, done
	go func() {
		defer close(done)
		w.run(stop, poll)
	}()
}

// stopCRLWatch stops the CRL watcher and waits until it has, so that it hands over nothing
// more. r.mu is held.
func (r *Running) stopCRLWatch() {
	if r.crlStop == nil {
		return
	}
	close(r.crlStop)
	<-r.crlDone
	r.crlStop, r.crlDone = nil, nil
}

// baseProcs is GOMAXPROCS as the process started (the environment's, or the CPUs it may use),
// before makeRoom raised it.
var baseProcs = sync.OnceValue(func() int { return runtime.GOMAXPROCS(0) })

// makeRoom sets GOMAXPROCS for udp listeners of the host's sockets. Each shard's receive loop
// waits for datagrams (and pauses after busy reads) in the kernel, outside Go's netpoller, and
// Go counts a goroutine in a system call against GOMAXPROCS until its monitor takes the
// processor back: up to 10 ms later when the process was idle. With as many shards as
// processors, every processor could sit in a wait while the TUN readers, the control plane and
// the timers wait for one. So cvpn keeps workers processors for work and one more for each
// shard; a waiting shard costs no CPU.
func (r *Running) makeRoom(udp int) {
	if r.hostSockets && r.workers > 0 {
		runtime.GOMAXPROCS(r.workers * (1 + udp))
	}
}
