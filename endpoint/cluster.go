package endpoint

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cvpn/cvpn/cluster"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/state"
	"github.com/cvpn/cvpn/tls/keymethod"
	"github.com/cvpn/cvpn/tunnel/session"
)

// clusterRun is what a cluster node adds to a running endpoint: its membership, and the
// pushed endpoint file it runs (none until one was pushed: then the node's own file runs).
type clusterRun struct {
	node *cluster.Node
	// stop ends the config watch; watched is closed when it has returned.
	stop    context.CancelFunc
	watched chan struct{}

	// mu guards the fields below (taken under Running.mu, never the other way round).
	mu     sync.Mutex
	pushed *cluster.PushedConfig
	rev    int64
	// local is the node's own file as last read (its cluster section is spliced into
	// every pushed file).
	local *config.Endpoint
}

// CodeClusterUnavailable is the refusal code of a login a node turns away because it cannot
// reach etcd (or lost its lease): the connection log's and the metrics' reason.
const CodeClusterUnavailable session.RefusalCode = "cluster_unavailable"

// ClusterConfig maps the file's cluster section to a node's configuration (cvpn cluster dials
// etcd with it too); opts gives the log and clock.
func ClusterConfig(cfg *config.Endpoint, opts Options) (cluster.Config, error) {
	c := cfg.Cluster
	out := cluster.Config{
		Endpoints: c.Etcd.Endpoints, Prefix: c.Etcd.Prefix, Node: c.NodeName, PublicAddress: c.PublicAddress,
		SNAT: cfg.TargetNetwork.SNATAddress, SNAT6: cfg.TargetNetwork.SNATIPv6Address,
		TTL: c.LeaseTTL, BlockSize: c.AddressBlockSize, Log: opts.Log, Now: opts.Now,
	}
	if c.Etcd.CAFile != "" || c.Etcd.CertFile != "" {
		t := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.Etcd.CAFile != "" {
			pem, err := os.ReadFile(c.Etcd.CAFile)
			if err != nil {
				return out, cfg.KeyError("cluster.etcd.ca_file", err)
			}
			t.RootCAs = x509.NewCertPool()
			if !t.RootCAs.AppendCertsFromPEM(pem) {
				return out, cfg.KeyError("cluster.etcd.ca_file", errors.New("no PEM certificate in it"))
			}
		}
		if c.Etcd.CertFile != "" {
			pair, err := tls.LoadX509KeyPair(c.Etcd.CertFile, c.Etcd.KeyFile)
			if err != nil {
				return out, cfg.KeyError("cluster.etcd.cert_file", err)
			}
			t.Certificates = []tls.Certificate{pair}
		}
		out.TLS = t
	}
	return out, nil
}

// joinCluster joins the cluster local's file names and returns the node with the endpoint it
// runs: the pushed file with local's cluster section, or local itself when nothing was pushed.
func joinCluster(local *Endpoint, opts Options) (*clusterRun, *Endpoint, error) {
	ccfg, err := ClusterConfig(local.Config, opts)
	if err != nil {
		return nil, nil, err
	}
	// A node restarted after a crash finds its name held by its previous lease until that
	// expires (at most one TTL): it waits for it rather than fail, as a second node of the same
	// name would have to.
	ttl := ccfg.TTL
	if ttl <= 0 {
		ttl = cluster.DefaultTTL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second+2*ttl)
	defer cancel()
	var node *cluster.Node
	for {
		node, err = cluster.Join(ctx, ccfg)
		if !errors.Is(err, cluster.ErrNameInUse) || ctx.Err() != nil {
			break
		}
		opts.Log.Warn("waiting for the node's name to be free: its previous lease has not expired yet", "node", ccfg.Node, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("cluster.etcd: %w", err)
	}
	cr := &clusterRun{node: node, local: local.Config}
	pc, rev, ok, err := node.Config(ctx)
	if err != nil {
		_ = node.Close()
		return nil, nil, fmt.Errorf("cluster.etcd: %w", err)
	}
	ep := local
	if ok {
		if ep, err = loadPushed(pc, rev, local.Config, opts.Now()); err != nil {
			_ = node.Close()
			return nil, nil, fmt.Errorf("the pushed endpoint file (revision %d) cannot run on this node: %w", rev, err)
		}
		cr.pushed, cr.rev = &pc, rev
	}
	return cr, ep, nil
}

// loadPushed loads a pushed endpoint file with local's cluster section.
func loadPushed(pc cluster.PushedConfig, rev int64, local *config.Endpoint, now time.Time) (*Endpoint, error) {
	cfg, err := config.ParseWithCluster(pc.Data, fmt.Sprintf("%s (pushed, etcd revision %d)", pc.File, rev), pc.Dir, local)
	if err != nil {
		return nil, err
	}
	return loadConfig(cfg, now)
}

// loadFile loads the endpoint file at path for a reload: on a cluster node that ran a pushed
// file, the file at path gives only its cluster section (which cannot change while it runs).
func (r *Running) loadFile(path string) (*Endpoint, error) {
	if r.cl == nil {
		return Load(path, r.opts.Now())
	}
	local, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	cr := r.cl
	cr.mu.Lock()
	pushed, rev := cr.pushed, cr.rev
	cr.local = local
	cr.mu.Unlock()
	if pushed == nil {
		return loadConfig(local, r.opts.Now())
	}
	return loadPushed(*pushed, rev, local, r.opts.Now())
}

// checkPushed says whether a proposed endpoint file would apply on this node: it loads (with
// every file it names) and changes no key that cannot change on a running endpoint.
func (r *Running) checkPushed(pc cluster.PushedConfig, rev int64) error {
	cr := r.cl
	cr.mu.Lock()
	local := cr.local
	cr.mu.Unlock()
	next, err := loadPushed(pc, rev, local, r.opts.Now())
	if err != nil {
		return err
	}
	running := r.Endpoint()
	if _, refused := Diff(running, next); len(refused) > 0 {
		return &ReloadError{Reason: reasonRestart, Refused: refused, Err: config.CheckReload(running.Config, next.Config)}
	}
	return nil
}

// applyPushed puts a newly pushed endpoint file in force with the reload rules: each change
// applied, or none and the reason (which the node publishes for `cvpn cluster push`).
func (r *Running) applyPushed(pc cluster.PushedConfig, rev int64) error {
	cr := r.cl
	cr.mu.Lock()
	local := cr.local
	cr.mu.Unlock()
	r.log.Info("applying a pushed endpoint file", "revision", rev, "file", pc.File, "by", pc.By)
	next, err := loadPushed(pc, rev, local, r.opts.Now())
	if err != nil {
		err = &ReloadError{Reason: reasonInvalid, Err: err}
		r.logReload(nil, err)
		return err
	}
	if lc := r.opts.Lifecycle; lc != nil {
		lc.Reloading()
		defer lc.Reloaded()
	}
	r.mu.Lock()
	rep, err := r.apply(next)
	r.mu.Unlock()
	r.logReload(rep, err)
	if err != nil {
		return err
	}
	cr.mu.Lock()
	cr.pushed, cr.rev = &pc, rev
	cr.mu.Unlock()
	return nil
}

// startCluster starts the node's lease loop and config watch once the engine runs; from now
// on a lost lease ends every session at once.
func (r *Running) startCluster() {
	cr := r.cl
	cr.node.OnLost(func() {
		if n := r.srv.Evict("the node lost its cluster lease"); n > 0 {
			r.log.Warn("ended every session: the node's address blocks may be another node's soon", "sessions", n)
		}
	})
	cr.node.Start()
	ctx, cancel := context.WithCancel(context.Background())
	cr.stop, cr.watched = cancel, make(chan struct{})
	cr.mu.Lock()
	rev := cr.rev
	cr.mu.Unlock()
	cr.node.ConfigApplied(rev)
	go func() {
		defer close(cr.watched)
		defer r.watchClusterCRL(ctx)() // started now; waited for before watched closes
		cr.node.WatchConfig(ctx, rev, r.checkPushed, r.applyPushed)
	}()
}

// stopCluster leaves the cluster: the lease is revoked, so the node's blocks and published
// sessions are free at once. The engine has stopped.
func (cr *clusterRun) close() {
	if cr == nil {
		return
	}
	if cr.stop != nil {
		cr.stop()
		<-cr.watched
	}
	_ = cr.node.Close()
}

// clusterGate refuses new logins while the node may not admit (no lease, etcd unreachable),
// before any other hook runs: MFA codes, tokens and single sign-on all need the cluster's
// state, and the addresses need a block. Clients that understand it are told to try another
// node at once (AUTH_FAILED,TEMP with advance remote); others are told why.
type clusterGate struct {
	session.Hooks
	node *cluster.Node
}

func (g clusterGate) Authenticate(ctx context.Context, r *session.AuthRequest) (*session.User, error) {
	if err := g.node.Admit(); err != nil {
		return nil, unavailableRefusal(err, r.Peer)
	}
	return g.Hooks.Authenticate(ctx, r)
}

// unavailableRefusal is the refusal of a login a node cannot admit now.
func unavailableRefusal(err error, peer *keymethod.PeerInfo) *session.Refusal {
	why := "cluster state unavailable (" + err.Error() + "); try again shortly"
	msg := why
	if peer != nil && peer.Proto&keymethod.ProtoAuthFailTemp != 0 {
		// protocol §10.2: retry after 5 s, with the next remote of the client's list.
		msg = "TEMP[backoff 5,advance remote]:" + why
	}
	return &session.Refusal{Message: msg, Logged: why, Code: CodeClusterUnavailable}
}

// openState returns the cluster's state store and this node's sealing key, checked to be the
// cluster's (every node must hold the same state_dir/seal.key).
func (cr *clusterRun) openState(ctx context.Context, cfg *config.Endpoint) (state.Store, *state.Sealer, error) {
	_, keyFile := StatePaths(cfg)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("state_dir: %w", err)
	}
	sealer, err := state.LoadOrCreateSealer(keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("state_dir: %w", err)
	}
	if err := cr.node.CheckSealer(ctx, sealer); err != nil {
		return nil, nil, fmt.Errorf("state_dir: %w", err)
	}
	return cr.node.Store(), sealer, nil
}

// LoadForCluster loads the node file at path the way a node would run it: on a cluster node,
// the pushed endpoint file (if any) with path's cluster section; it also returns the
// cluster's members (every node that joined), which profiles list. Without a cluster section
// it is Load, with no members.
func LoadForCluster(ctx context.Context, path string, now time.Time) (*Endpoint, []cluster.Member, error) {
	local, err := Load(path, now)
	if err != nil || local.Config.Cluster == nil {
		return local, nil, err
	}
	ccfg, err := ClusterConfig(local.Config, Options{})
	if err != nil {
		return nil, nil, err
	}
	cli, err := cluster.Dial(ccfg)
	if err != nil {
		return nil, nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	members, err := cluster.Members(ctx, cli, ccfg.Prefix)
	if err != nil {
		return nil, nil, err
	}
	pc, rev, ok, err := cluster.PushedFile(ctx, cli, ccfg.Prefix)
	if err != nil || !ok {
		return local, members, err
	}
	ep, err := loadPushed(pc, rev, local.Config, now)
	return ep, members, err
}
