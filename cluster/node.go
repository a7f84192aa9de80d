package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/connectivity"

	"github.com/cvpn/cvpn/state"
	"github.com/cvpn/cvpn/state/etcdstate"
)

// Defaults of Config.
const (
	DefaultPrefix    = "/cvpn"
	DefaultTTL       = 10 * time.Second
	DefaultBlockSize = 64
	// requestTimeout bounds one etcd request the node makes on its own behalf.
	requestTimeout = 5 * time.Second
	// unreachableAfter is how long the client's connection to etcd may be down (a member
	// failing over to another takes a moment) before the node stops admitting.
	unreachableAfter = time.Second
)

// Errors a node reports.
var (
	// ErrUnavailable: the node cannot reach etcd or has no lease now, so it admits no one.
	ErrUnavailable = errors.New("cluster: state unavailable")
	// ErrNameInUse: another live node holds this node's name.
	ErrNameInUse = errors.New("cluster: node name in use by a live node")
	// ErrClosed: the node left the cluster.
	ErrClosed = errors.New("cluster: node closed")
)

// Member is what a node records of itself under members/<node>: every node that ever joined,
// alive or not, so that profiles list them all.
type Member struct {
	Name          string `json:"name"`
	PublicAddress string `json:"public_address"`
	SNAT          string `json:"snat,omitempty"`
	SNAT6         string `json:"snat6,omitempty"`
	Joined        string `json:"joined"`
}

// Alive is what a node keeps under alive/<node>, under its lease.
type Alive struct {
	Started string `json:"started"`
	Lease   int64  `json:"lease"`
	// ConfigRevision is the pushed file's revision the node runs (0: its own file);
	// ConfigRefused the newest one it refused, and ConfigError why.
	ConfigRevision int64  `json:"config_revision"`
	ConfigRefused  int64  `json:"config_refused,omitempty"`
	ConfigError    string `json:"config_error,omitempty"`
	// CheckRevision is the newest proposed file the node checked, CheckError why it would
	// refuse it ("" when it accepts it).
	CheckRevision int64  `json:"check_revision,omitempty"`
	CheckError    string `json:"check_error,omitempty"`
	Blocks        int    `json:"blocks"`
}

// Health is where a node stands with its lease.
type Health int

const (
	// Healthy: the lease was renewed recently; the node admits.
	Healthy Health = iota
	// Degraded: renewals are failing but the lease may still be alive in etcd; the node
	// admits no one and keeps its sessions.
	Degraded
	// Lost: the lease may have expired in etcd; the node gave up its blocks and ended the
	// sessions in them, and waits to join again.
	Lost
)

func (h Health) String() string {
	switch h {
	case Healthy:
		return "healthy"
	case Degraded:
		return "degraded"
	}
	return "lost"
}

// Node is this process's membership of the cluster.
type Node struct {
	cfg  Config
	cli  *clientv3.Client
	keys keys
	log  *slog.Logger
	// store is the cluster-wide state store (etcdstate.New under keys.state()).
	store state.Store

	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	done   chan struct{} // closed when the lease loop returned
	// started is set by Start (before the loop runs), read by Close.
	started bool

	// mu guards the fields below.
	mu sync.Mutex
	// lease is the lease held now; 0 while the node has none (before joining, after losing it).
	lease clientv3.LeaseID
	// renewed is when the last renewal that etcd confirmed was sent (monotonic): etcd's
	// deadline for the lease is at least renewed+TTL.
	renewed time.Time
	health  Health
	alive   Alive
	// onLease run, in order, each time the node holds a new lease (first join and rejoins),
	// before it admits anyone; onLost run when it lost one. Neither runs with mu held.
	onLease []func(ctx context.Context, id clientv3.LeaseID)
	onLost  []func()
	// prevLease is the lease the node lost, until it is known to be revoked: rejoin revokes it
	// first, since etcd may have kept it alive through an outage.
	prevLease clientv3.LeaseID
	// lostReason says why the node admits no one, for refusals and logs.
	lostReason string
}

// Join connects to etcd, takes a lease and registers the node. It fails when etcd cannot be
// reached within a few seconds or another live node has the same name.
func Join(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.BlockSize <= 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Node == "" || len(cfg.Endpoints) == 0 {
		return nil, errors.New("cluster: a node needs a name and etcd endpoints")
	}
	cli, err := Dial(cfg)
	if err != nil {
		return nil, err
	}
	nctx, cancel := context.WithCancel(context.Background())
	k := keys{cfg.Prefix}
	n := &Node{cfg: cfg, cli: cli, keys: k, log: cfg.Log.With("component", "cluster", "node", cfg.Node),
		store: etcdstate.New(cli, k.state()[:len(k.state())-1]), ctx: nctx, cancel: cancel,
		done: make(chan struct{}), health: Lost, lostReason: "not joined yet"}
	n.alive.Started = cfg.Now().UTC().Format(time.RFC3339)
	if err := n.join(ctx); err != nil {
		cancel()
		_ = cli.Close()
		return nil, err
	}
	return n, nil
}

// Dial returns an etcd client for cfg's endpoints (what `cvpn cluster` commands use too).
func Dial(cfg Config) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		TLS:                  cfg.TLS,
		DialTimeout:          requestTimeout,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		PermitWithoutStream:  true,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: etcd %v: %w", cfg.Endpoints, err)
	}
	return cli, nil
}

// Start runs the lease loop; callbacks registered before it see the first lease.
func (n *Node) Start() {
	n.leaseTaken(n.leaseID())
	n.started = true
	go n.run()
}

// leaseTaken runs the OnLease callbacks for lease id, then admits if id is still held and was
// renewed recently; it reports whether it admits. The callbacks' context ends at the moment
// the node must give the lease up (renewed+TTL-margin): they run on the loop that checks that
// deadline (or before it starts), and a callback stuck on an unreachable etcd must not keep
// the blocks it leased granted past it.
func (n *Node) leaseTaken(id clientv3.LeaseID) bool {
	if id == 0 {
		return false
	}
	n.mu.Lock()
	deadline := n.renewed.Add(n.cfg.TTL - n.margin())
	cbs := append([]func(context.Context, clientv3.LeaseID){}, n.onLease...)
	n.mu.Unlock()
	ctx, cancel := context.WithDeadline(n.ctx, deadline)
	defer cancel()
	for _, f := range cbs {
		f(ctx, id)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lease != id {
		return false
	}
	// As run would: a lease whose last confirmed renewal is half a TTL old admits no one;
	// run moves the node on (back to Healthy on a renewal, or to Lost at the deadline).
	if since := time.Since(n.renewed); since >= n.cfg.TTL/2 {
		n.health, n.lostReason = Degraded, fmt.Sprintf("etcd has not confirmed a lease renewal for %v", since.Round(time.Millisecond))
		return false
	}
	n.health, n.lostReason = Healthy, ""
	return true
}

// join takes a new lease and registers the node under it.
func (n *Node) join(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	sent := time.Now()
	g, err := n.cli.Grant(ctx, int64((n.cfg.TTL+time.Second-1)/time.Second))
	if err != nil {
		return fmt.Errorf("cluster: etcd %v: grant lease: %w", n.cfg.Endpoints, err)
	}
	m := Member{Name: n.cfg.Node, PublicAddress: n.cfg.PublicAddress, Joined: n.cfg.Now().UTC().Format(time.RFC3339)}
	if n.cfg.SNAT.IsValid() {
		m.SNAT = n.cfg.SNAT.String()
	}
	if n.cfg.SNAT6.IsValid() {
		m.SNAT6 = n.cfg.SNAT6.String()
	}
	mb, _ := json.Marshal(m)
	n.mu.Lock()
	a := n.alive
	n.mu.Unlock()
	a.Lease = int64(g.ID)
	ab, _ := json.Marshal(a)
	// The name is ours when no live node holds it: alive/<node> exists only under a live lease.
	resp, err := n.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(n.keys.alive(n.cfg.Node)), "=", 0)).
		Then(clientv3.OpPut(n.keys.alive(n.cfg.Node), string(ab), clientv3.WithLease(g.ID)),
			clientv3.OpPut(n.keys.member(n.cfg.Node), string(mb))).
		Commit()
	if err != nil {
		_, _ = n.cli.Revoke(context.Background(), g.ID)
		return fmt.Errorf("cluster: etcd %v: register node %s: %w", n.cfg.Endpoints, n.cfg.Node, err)
	}
	if !resp.Succeeded {
		_, _ = n.cli.Revoke(context.Background(), g.ID)
		return fmt.Errorf("%w: %s (a node of that name holds a lease; it expires at most %v after that node stopped)", ErrNameInUse, n.cfg.Node, n.cfg.TTL)
	}
	n.mu.Lock()
	n.lease, n.renewed = g.ID, sent
	n.mu.Unlock()
	n.log.Info("joined the cluster", "lease", fmt.Sprintf("%x", int64(g.ID)), "ttl", n.cfg.TTL)
	return nil
}

// run moves the node between Healthy, Degraded and Lost until Close, and rejoins after a
// loss. The renewals run on their own goroutine (renew), so that a renewal stuck on an
// unreachable etcd never delays the checks here: the node must give its blocks up before etcd
// could hand them to another node, whatever the network does.
func (n *Node) run() {
	defer close(n.done)
	go n.renew()
	check := time.NewTicker(max(n.cfg.TTL/20, 50*time.Millisecond))
	defer check.Stop()
	var unreachable time.Time // since when the connection to etcd is not ready; zero while it is
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-check.C:
		}
		n.mu.Lock()
		id, renewed, health := n.lease, n.renewed, n.health
		n.mu.Unlock()
		if id == 0 {
			n.rejoin()
			continue
		}
		since := time.Since(renewed)
		conn := n.cli.ActiveConnection().GetState()
		if conn == connectivity.Ready || conn == connectivity.Idle {
			unreachable = time.Time{}
		} else if unreachable.IsZero() {
			unreachable = time.Now()
		}
		switch {
		case since >= n.cfg.TTL-n.margin():
			n.lose(id, fmt.Sprintf("etcd confirmed no lease renewal for %v", since.Round(time.Millisecond)))
		case since >= n.cfg.TTL/2 && health == Healthy:
			n.setHealth(id, Degraded, fmt.Sprintf("etcd has not confirmed a lease renewal for %v", since.Round(time.Millisecond)))
		case !unreachable.IsZero() && time.Since(unreachable) >= unreachableAfter && health == Healthy:
			// Every logon needs etcd (state, address blocks, the user limit): turn them away
			// at once rather than when the lease is half gone.
			n.setHealth(id, Degraded, fmt.Sprintf("cannot reach etcd (connection %s)", strings.ToLower(conn.String())))
		case since < n.cfg.TTL/2 && unreachable.IsZero() && health == Degraded:
			n.setHealth(id, Healthy, "")
		}
	}
}

// renew renews the lease held every third of the TTL (sooner after a failure) until Close.
// renewed only moves forward, to the send time of a renewal etcd confirmed.
func (n *Node) renew() {
	every := n.cfg.TTL / 3
	for {
		id := n.leaseID()
		wait := every / 4
		if id != 0 {
			ctx, cancel := context.WithTimeout(n.ctx, every)
			sent := time.Now()
			_, err := n.cli.KeepAliveOnce(ctx, id)
			cancel()
			switch {
			case err == nil:
				n.mu.Lock()
				if n.lease == id && sent.After(n.renewed) {
					n.renewed = sent
				}
				n.mu.Unlock()
				wait = time.Until(sent.Add(every))
			case n.ctx.Err() != nil:
				return
			case isLeaseNotFound(err):
				n.lose(id, "etcd says the node's lease expired")
			default:
				n.log.Warn("lease renewal failed", "err", err)
			}
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(max(wait, 10*time.Millisecond)):
		}
	}
}

// margin is how long before the lease's earliest possible expiry in etcd the node gives up
// its blocks: the sessions it then ends need a moment to be torn down.
func (n *Node) margin() time.Duration { return min(max(time.Second, n.cfg.TTL/4), n.cfg.TTL/2) }

// setHealth moves the node to h if it still holds lease id: renew may have given it up since
// run read it, and a lost node must not be reported (or admit) as healthy.
func (n *Node) setHealth(id clientv3.LeaseID, h Health, reason string) {
	n.mu.Lock()
	if n.lease != id {
		n.mu.Unlock()
		return
	}
	old := n.health
	n.health, n.lostReason = h, reason
	n.mu.Unlock()
	if old != h {
		if h == Healthy {
			n.log.Info("etcd reachable again: admitting")
		} else {
			n.log.Warn("not admitting new sessions", "health", h, "reason", reason)
		}
	}
}

// lose gives lease id up, if the node still holds it: from now on the node admits no one; its
// blocks and published sessions may be etcd's to hand out again, so the onLost callbacks end
// its sessions. run and renew may both find the lease gone at once; the check of id under mu
// makes one of them act, and keeps a late one from giving up a lease taken since.
func (n *Node) lose(id clientv3.LeaseID, reason string) {
	n.mu.Lock()
	if id == 0 || n.lease != id {
		n.mu.Unlock()
		return
	}
	n.lease, n.health, n.lostReason = 0, Lost, reason
	n.prevLease = id
	cbs := append([]func(){}, n.onLost...)
	n.mu.Unlock()
	n.log.Error("lost the cluster lease: ending every session and giving up every address block", "reason", reason)
	for _, f := range cbs {
		f()
	}
	// Best effort: if etcd is reachable after all, free the lease's keys at once.
	go func() {
		ctx, cancel := context.WithTimeout(n.ctx, requestTimeout)
		defer cancel()
		_, _ = n.cli.Revoke(ctx, id)
	}()
}

// rejoin tries to take a new lease after losing one; the callbacks of onLease run before the
// node admits again.
func (n *Node) rejoin() {
	n.mu.Lock()
	prev := n.prevLease
	n.mu.Unlock()
	if prev != 0 {
		// After an etcd outage, etcd's new leader extended every lease, ours too, and our
		// liveness key under it holds our name for a TTL more. The node gave up everything
		// under it when it lost it: revoke it, so that the name is free at once.
		ctx, cancel := context.WithTimeout(n.ctx, requestTimeout)
		_, err := n.cli.Revoke(ctx, prev)
		cancel()
		if err == nil || isLeaseNotFound(err) {
			n.mu.Lock()
			n.prevLease = 0
			n.mu.Unlock()
		}
	}
	if err := n.join(n.ctx); err != nil {
		n.mu.Lock()
		n.lostReason = "cannot rejoin: " + err.Error()
		n.mu.Unlock()
		return
	}
	n.log.Info("rejoined the cluster after losing its lease")
	if n.leaseTaken(n.leaseID()) {
		n.log.Info("etcd reachable again: admitting")
	}
}

func isLeaseNotFound(err error) bool {
	return errors.Is(err, rpctypes.ErrLeaseNotFound) || err != nil && strings.Contains(err.Error(), rpctypes.ErrLeaseNotFound.Error())
}

// Admit says whether the node may admit a new session now: nil, or an error wrapping
// ErrUnavailable that says why in words a client may be shown.
func (n *Node) Admit() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ctx.Err() != nil {
		return ErrClosed
	}
	if n.health != Healthy || n.lease == 0 {
		return fmt.Errorf("%w: %s", ErrUnavailable, n.lostReason)
	}
	return nil
}

// Health returns where the node stands and why.
func (n *Node) Health() (Health, string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.health, n.lostReason
}

// OnLease registers f to run each time the node holds a new lease, before it admits; f runs
// with a context that ends with the node or at the lease's deadline (when the node must give
// the lease up unless etcd confirmed a renewal), and must return within a few seconds.
func (n *Node) OnLease(f func(ctx context.Context, id clientv3.LeaseID)) {
	n.mu.Lock()
	n.onLease = append(n.onLease, f)
	n.mu.Unlock()
}

// OnLost registers f to run when the node loses its lease; it must not block long.
func (n *Node) OnLost(f func()) {
	n.mu.Lock()
	n.onLost = append(n.onLost, f)
	n.mu.Unlock()
}

// leaseID is the lease held now, 0 when none.
func (n *Node) leaseID() clientv3.LeaseID {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lease
}

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.Node }

// Store is the cluster-wide state store.
func (n *Node) Store() state.Store { return n.store }

// Client is the node's etcd client.
func (n *Node) Client() *clientv3.Client { return n.cli }

// updateAlive changes what the node publishes under alive/<node> and writes it under the
// current lease (best effort: the next change or rejoin writes it again).
func (n *Node) updateAlive(f func(*Alive)) {
	n.mu.Lock()
	f(&n.alive)
	a, id := n.alive, n.lease
	n.mu.Unlock()
	if id == 0 {
		return
	}
	a.Lease = int64(id)
	b, _ := json.Marshal(a)
	ctx, cancel := context.WithTimeout(n.ctx, requestTimeout)
	defer cancel()
	if _, err := n.cli.Put(ctx, n.keys.alive(n.cfg.Node), string(b), clientv3.WithLease(id)); err != nil {
		n.log.Warn("cannot publish the node's state", "err", err)
	}
}

// Close leaves the cluster: the lease is revoked (so the node's blocks and sessions are free
// at once, not a TTL later) and the client closed. The engine must have stopped first.
func (n *Node) Close() error {
	n.cancel()
	if n.started {
		<-n.done
	}
	// Read after the loop returned: a rejoin it was making may have taken a new lease.
	n.mu.Lock()
	id := n.lease
	n.lease = 0
	n.mu.Unlock()
	if id != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		_, _ = n.cli.Revoke(ctx, id)
		cancel()
	}
	_ = n.store.Close()
	return n.cli.Close()
}

// sealCheck is sealed with the cluster's sealing key under seal-check: secrets one node seals
// (MFA secrets, the auth-token key) must open on every other, so every node must hold the
// same state_dir/seal.key.
const sealCheck = "cvpn cluster sealing key check"

// CheckSealer makes sure s holds the cluster's sealing key: the first node to join records a
// value sealed with its key; every later node must open it. A node with another key is
// refused with the fix.
func (n *Node) CheckSealer(ctx context.Context, s *state.Sealer) error {
	key := path.Join(n.keys.prefix, "seal-check")
	sealed := s.Seal([]byte(sealCheck), []byte(key))
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := n.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(sealed))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return fmt.Errorf("cluster: check the sealing key: %w", err)
	}
	if resp.Succeeded {
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 1 {
		if got, err := s.Open(kvs[0].Value, []byte(key)); err == nil && string(got) == sealCheck {
			return nil
		}
	}
	return errors.New("cluster: this node's sealing key (state_dir/seal.key) is not the cluster's: copy seal.key from a running node (mode 0600, owned by the service user) and start again")
}
