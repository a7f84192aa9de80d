// Package dataplane is the packet path of the cvpn engine: the peer table, the receive paths
// (UDP listeners in batches, TCP streams), the path from the TUN device back to clients, and
// the data-plane timers (keepalive pings, silence, lame-duck key switch, key retirement, NAT
// expiry). Every refusal costs one atomic add on a typed counter (package counters).
//
// It does not run the control channel: control packets go to the Control the session layer
// provides, and what the data path notices that needs the control plane (an explicit exit, a
// compressing client, silence, packet ids running out) is reported to the peer's Owner, never
// acted on here. Sessions are built completely by the session layer, then published: nothing
// here can reach a half-built session.
//
// Files by stage: plane.go (lifecycle, peer table), udp.go and tcp.go (listeners and links),
// receive.go (client to private network), send.go (private network to client), timers.go.
package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/sock"
)

// Control receives the control packets that the receive paths read. The session layer
// implements it; its methods run on the receive goroutine of the listener or stream.
type Control interface {
	// UDPControl handles one control packet from a UDP listener; local is the address the
	// client sent it to.
	UDPControl(l *UDPListener, pkt []byte, from netip.AddrPort, local netip.Addr)
	// TCPControl handles one control packet of a TCP stream; false ends the stream.
	TCPControl(s *TCPStream, pkt []byte) bool
	// TCPClosed says a TCP stream ended (its peer, if any, must be torn down).
	TCPClosed(s *TCPStream)
}

// Config is what the data plane needs.
type Config struct {
	Pool *ippool.Pool
	NAT  *nat.Table
	// NAT6 says IPv6 goes through NAT too (snat_ipv6_address); otherwise IPv6 keeps the
	// clients' own addresses both ways, and only what a client's groups may reach may reach it.
	NAT6 bool
	// Device is the TUN device (its first queue); Queues are all its queues, Device first (nil:
	// Device alone). Each queue has its reader; UDP shard i writes into queue i mod len(Queues),
	// TCP streams into Device.
	Device tun.Device
	Queues []tun.Device
	// Workers is how many sockets (shards, each with its receive goroutine) a UDP listener
	// opens when its network is a sock.ShardedNetwork; 0 means runtime.GOMAXPROCS(0). At most
	// MaxWorkers.
	Workers int
	Policy  *Policy
	Control Control
	Drops   *counters.Drops
	// MSS is the largest TCP MSS announced through the tunnel (SYNs are clamped); 0 means 1400.
	MSS int
	// TCP bounds connections that have not authenticated: FirstPacket is how long one may take
	// to send its first complete packet (0: 5 s); PerSource and Total cap them per client
	// address and in all (0: 16 and 4096). From the first packet on, the session's hand window
	// applies.
	TCP TCPLimits
	Log *slog.Logger
	Now func() time.Time
}

// Plane is the running data plane.
type Plane struct {
	cfg   Config
	log   *slog.Logger
	drops *counters.Drops
	mss   uint16
	// policy is the per-packet configuration, swapped by SetPolicy.
	policy atomic.Pointer[Policy]
	// peers is indexed by peer-id (the pool index of the client's address); the data path reads
	// it without a lock. A peer is stored only after its identity and first key.
	peers []atomic.Pointer[Peer]
	// denialLog limits the "access denied" lines all connections together may log.
	denialLog *RateLimiter
	// queues are the TUN's queues, each with its reader (send.go) and heartbeat (heartbeat.go).
	queues []*tunQueue
	// tunWake is how often an idle TUN reader wakes: sock.ReadWake (tests shorten it).
	tunWake time.Duration
	// workers is how many shards a UDP listener opens.
	workers int
	// steerWarned says the log has said once that the kernel does not steer by peer-id.
	steerWarned atomic.Bool

	mu  sync.Mutex // guards udp, tcp and the unauthenticated TCP counts
	udp []*UDPListener
	tcp []*TCPListener
	// tcpUnauth counts unauthenticated TCP connections by client address; tcpUnauthAll in all.
	tcpUnauth    map[netip.Addr]int
	tcpUnauthAll int

	wg   sync.WaitGroup
	done chan struct{}
	once sync.Once
}

// New returns a data plane; Run starts its TUN readers.
func New(cfg Config) (*Plane, error) {
	if cfg.Device == nil && len(cfg.Queues) > 0 {
		cfg.Device = cfg.Queues[0]
	}
	if cfg.Pool == nil || cfg.NAT == nil || cfg.Device == nil || cfg.Policy == nil || cfg.Policy.Authz == nil || cfg.Control == nil {
		return nil, errors.New("dataplane: config needs Pool, NAT, Device, Policy and Control")
	}
	if len(cfg.Queues) == 0 {
		cfg.Queues = []tun.Device{cfg.Device}
	}
	if cfg.Queues[0] != cfg.Device || slices.Contains(cfg.Queues, nil) {
		return nil, errors.New("dataplane: Queues must start with Device and hold no nil")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Drops == nil {
		cfg.Drops = new(counters.Drops)
	}
	p := &Plane{
		cfg:       cfg,
		log:       cfg.Log,
		drops:     cfg.Drops,
		mss:       1400,
		peers:     make([]atomic.Pointer[Peer], cfg.Pool.Size()),
		denialLog: NewRateLimiter(5, 50, cfg.Now),
		done:      make(chan struct{}),
		tcpUnauth: make(map[netip.Addr]int),
	}
	if p.cfg.TCP.FirstPacket <= 0 {
		p.cfg.TCP.FirstPacket = 5 * time.Second
	}
	if p.cfg.TCP.PerSource <= 0 {
		p.cfg.TCP.PerSource = 16
	}
	if p.cfg.TCP.Total <= 0 {
		p.cfg.TCP.Total = 4096
	}
	if cfg.MSS > 0 {
		p.mss = uint16(cfg.MSS)
	}
	p.workers = Workers(cfg.Workers)
	for i, dev := range cfg.Queues {
		p.queues = append(p.queues, &tunQueue{index: i, dev: dev, loop: fmt.Sprintf("tun#%d", i)})
	}
	p.policy.Store(cfg.Policy)
	p.watchTUN()
	return p, nil
}

// Policy returns the current per-packet policy.
func (p *Plane) Policy() *Policy { return p.policy.Load() }

// SetPolicy swaps the per-packet policy; peers pick it up on their next packet.
func (p *Plane) SetPolicy(pol *Policy) { p.policy.Store(pol) }

// Drops returns the drop counters.
func (p *Plane) Drops() *counters.Drops { return p.drops }

// MaxWorkers bounds Config.Workers: beyond it a listener's sockets and goroutines cost more
// than the cores they could use.
const MaxWorkers = 64

// Workers is the number of shards a UDP listener opens for Config.Workers n: n, or
// runtime.GOMAXPROCS(0) for 0, at most MaxWorkers.
func Workers(n int) int {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	return min(n, MaxWorkers)
}

// Run reads the TUN until Close: one reader per queue, the first on the calling goroutine.
func (p *Plane) Run() {
	p.wg.Add(len(p.queues))
	for _, q := range p.queues[1:] {
		go func() { defer p.wg.Done(); p.tunLoop(q) }()
	}
	defer p.wg.Done()
	p.tunLoop(p.queues[0])
}

// Close stops the listeners and waits for every receive goroutine. The caller closes the TUN
// device's queues (a blocked TUN read returns only then, or at its next read deadline).
func (p *Plane) Close() {
	p.once.Do(func() { close(p.done) })
	p.mu.Lock()
	udp, tcp := p.udp, p.tcp
	p.udp, p.tcp = nil, nil
	p.mu.Unlock()
	for _, l := range udp {
		l.close()
	}
	for _, l := range tcp {
		l.close()
	}
}

// Wait waits until every goroutine of the plane has ended.
func (p *Plane) Wait() { p.wg.Wait() }

// closed reports whether Close was called.
func (p *Plane) closed() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Publish makes an authenticated peer reachable by the data path: by its peer-id and, on UDP,
// by its address on its listener. A session already at that address (an earlier session of the
// same client) is returned for the caller to tear down; the data path no longer reaches it.
func (p *Plane) Publish(peer *Peer) (replaced *Peer) {
	id := peer.Identity()
	if id == nil || peer.sendKey.Load() == nil {
		panic("dataplane: Publish before identity and first key") // a programming error, not input
	}
	replaced = peer.link.publish(peer)
	p.peers[id.PeerID].Store(peer)
	return replaced
}

// Remove makes a peer unreachable by the data path. It is idempotent.
func (p *Plane) Remove(peer *Peer) {
	peer.link.unpublish(peer)
	if id := peer.Identity(); id != nil {
		p.peers[id.PeerID].CompareAndSwap(peer, nil)
	}
}

// peerByID returns the published peer with this peer-id, or nil.
func (p *Plane) peerByID(id int) *Peer {
	if id < 0 || id >= len(p.peers) {
		return nil
	}
	return p.peers[id].Load()
}

// peerByAddr returns the published peer whose tunnel address is addr, or nil.
func (p *Plane) peerByAddr(addr netip.Addr) *Peer {
	idx, ok := p.cfg.Pool.Index(addr)
	if !ok {
		return nil
	}
	return p.peers[idx].Load()
}

// ListenUDP opens a UDP listener on ap through network and starts its receive goroutines: one
// per shard, Config.Workers of them when network is a sock.ShardedNetwork, else one.
func (p *Plane) ListenUDP(network sock.Network, ap netip.AddrPort) (*UDPListener, error) {
	var conns []sock.Conn
	if sn, ok := network.(sock.ShardedNetwork); ok && p.workers > 1 {
		var err error
		if conns, err = sn.ListenUDPShards(ap, p.workers); err != nil {
			return nil, err
		}
		if len(conns) == 0 {
			return nil, fmt.Errorf("dataplane: listen udp %s: the network opened no socket", ap)
		}
		p.checkSteering(conns)
	} else {
		conn, err := network.ListenUDP(ap)
		if err != nil {
			return nil, err
		}
		conns = []sock.Conn{conn}
	}
	l := newUDPListener(p, conns)
	loops := make([]func(), len(l.shards))
	for i, s := range l.shards {
		loops[i] = s.receiveLoop
	}
	if err := p.start(l, func() { p.udp = append(p.udp, l) }, loops...); err != nil {
		return nil, err
	}
	return l, nil
}

// steering is what a sharded Conn of the host's network says about its group: whether the
// kernel took the program that steers data packets by peer-id.
type steering interface{ Steered() bool }

// checkSteering logs, once per plane, that the kernel spreads a listener's datagrams by its
// address hash only: the engine stays correct (per-peer locks), but a client's packets may
// reach another core than its peer-id's after a float.
func (p *Plane) checkSteering(conns []sock.Conn) {
	if s, ok := conns[0].(steering); ok && !s.Steered() && !p.steerWarned.Swap(true) {
		p.log.Warn("the kernel did not take the reuseport steering program; UDP shards are chosen by address hash",
			"listener", conns[0].LocalAddr(), "shards", len(conns))
	}
}

// ListenTCP opens a TCP listener on ap through network and starts accepting.
func (p *Plane) ListenTCP(network sock.Network, ap netip.AddrPort) (*TCPListener, error) {
	ln, err := network.ListenTCP(ap)
	if err != nil {
		return nil, err
	}
	l := &TCPListener{p: p, ln: ln, addr: addrPortOf(ln.Addr())}
	if err := p.start(l, func() { p.tcp = append(p.tcp, l) }, l.acceptLoop); err != nil {
		return nil, err
	}
	return l, nil
}

// start adds an opened listener to the plane (add runs under p.mu) and runs its loops, unless
// the plane was closed meanwhile: then the listener is closed again.
func (p *Plane) start(l Listener, add func(), loops ...func()) error {
	p.mu.Lock()
	if p.closed() {
		p.mu.Unlock()
		l.close()
		return net.ErrClosed
	}
	add()
	p.wg.Add(len(loops))
	p.mu.Unlock()
	for _, loop := range loops {
		go func() { defer p.wg.Done(); loop() }()
	}
	return nil
}

// CloseListener stops one listener (UDP or TCP); its sessions are the caller's to end.
func (p *Plane) CloseListener(l Listener) {
	p.mu.Lock()
	switch l := l.(type) {
	case *UDPListener:
		p.udp = slices.DeleteFunc(p.udp, func(x *UDPListener) bool { return x == l })
	case *TCPListener:
		p.tcp = slices.DeleteFunc(p.tcp, func(x *TCPListener) bool { return x == l })
	}
	p.mu.Unlock()
	l.close()
}

// Listeners returns the open listeners.
func (p *Plane) Listeners() []Listener {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Listener, 0, len(p.udp)+len(p.tcp))
	for _, l := range p.udp {
		out = append(out, l)
	}
	for _, l := range p.tcp {
		out = append(out, l)
	}
	return out
}

// Listener is a UDP or TCP listener.
type Listener interface {
	Addr() netip.AddrPort
	Proto() string // "udp" or "tcp"
	close()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// RateLimiter is a small clock-injected token bucket for log lines and handshake replies.
type RateLimiter struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
	now    func() time.Time
}

// NewRateLimiter returns a full bucket of burst tokens refilled at rate per second.
func NewRateLimiter(rate, burst float64, now func() time.Time) *RateLimiter {
	return &RateLimiter{rate: rate, burst: burst, tokens: burst, now: now}
}

// Refund returns a token.
func (b *RateLimiter) Refund() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = min(b.burst, b.tokens+1)
}

// Allow takes a token if there is one.
func (b *RateLimiter) Allow() bool {
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
