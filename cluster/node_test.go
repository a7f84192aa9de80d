package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/internal/etcdlab"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/state"
)

// joinConfig joins a node with cfg (TTL testTTL unless set) and closes it when the test ends.
func joinConfig(t *testing.T, cfg Config) *Node {
	t.Helper()
	if cfg.TTL == 0 {
		cfg.TTL = testTTL
	}
	if cfg.PublicAddress == "" {
		cfg.PublicAddress = cfg.Node + ".example"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := Join(ctx, cfg)
	if err != nil {
		t.Fatalf("join %s: %v", cfg.Node, err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// aliveOf reads what node publishes under alive/<node>; ok is false when the key is absent.
func aliveOf(t *testing.T, cli *clientv3.Client, node string) (a Alive, lease int64, ok bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, keys{DefaultPrefix}.alive(node))
	if err != nil {
		t.Fatalf("get alive/%s: %v", node, err)
	}
	if len(resp.Kvs) == 0 {
		return a, 0, false
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &a); err != nil {
		t.Fatalf("alive/%s: %v", node, err)
	}
	return a, resp.Kvs[0].Lease, true
}

// goroutinesRunning returns which of fns appear in the stack of any goroutine.
func goroutinesRunning(fns ...string) []string {
	buf := make([]byte, 1<<20)
	for {
		if n := runtime.Stack(buf, true); n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for _, fn := range fns {
		if strings.Contains(string(buf), fn) {
			found = append(found, fn)
		}
	}
	return found
}

func TestJoinNameAndClose(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	a := joinNode(t, lab, "a")
	if err := a.Admit(); err == nil || !errors.Is(err, ErrUnavailable) {
		t.Errorf("before Start a node admits (%v); want ErrUnavailable", err)
	}
	var leases []clientv3.LeaseID
	a.OnLease(func(_ context.Context, id clientv3.LeaseID) { leases = append(leases, id) })
	a.Start()
	if err := a.Admit(); err != nil {
		t.Fatalf("a joined and started node refuses: %v", err)
	}
	if h, why := a.Health(); h != Healthy || why != "" {
		t.Errorf("health %v (%q); want healthy", h, why)
	}
	if len(leases) != 1 || leases[0] == 0 || leases[0] != a.leaseID() {
		t.Errorf("OnLease saw %v before Start returned; want the node's lease %x once", leases, a.leaseID())
	}
	if _, lease, ok := aliveOf(t, cli, "a"); !ok || lease != int64(a.leaseID()) {
		t.Errorf("alive/a under lease %x (present %v); want the node's lease %x", lease, ok, a.leaseID())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := Join(ctx, Config{Endpoints: lab.Endpoints(), Node: "a", TTL: testTTL})
	if !errors.Is(err, ErrNameInUse) {
		t.Fatalf("a second node named a joined while the first lives: %v; want ErrNameInUse", err)
	}
	// The refused join took a lease of its own: it must not be left behind in etcd.
	ls, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls.Leases) != 1 {
		t.Errorf("after a refused join etcd holds %d leases; want the first node's only", len(ls.Leases))
	}

	if err := a.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := a.Admit(); !errors.Is(err, ErrClosed) {
		t.Errorf("a closed node's Admit: %v; want ErrClosed", err)
	}
	// Close revokes the lease: the name is free now, not a TTL later.
	if _, _, ok := aliveOf(t, cli, "a"); ok {
		t.Fatal("alive/a is still there right after Close")
	}
	a2, err := Join(ctx, Config{Endpoints: lab.Endpoints(), Node: "a", TTL: testTTL})
	if err != nil {
		t.Fatalf("joining as a right after the first a closed: %v", err)
	}
	defer a2.Close()
	if a2.leaseID() == 0 || a2.leaseID() == leases[0] {
		t.Errorf("the new a holds lease %x; want a new one", a2.leaseID())
	}
	// a2 is not started: a lease loop or renewal still running is a's.
	eventually(t, "a's lease loop and renewals end after Close", func() bool {
		return len(goroutinesRunning("cluster.(*Node).run(", "cluster.(*Node).renew(")) == 0
	})
}

func TestJoinNeedsNameAndEndpoints(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if _, err := Join(ctx, Config{Endpoints: []string{"http://127.0.0.1:1"}}); err == nil {
		t.Error("a node without a name joined")
	}
	if _, err := Join(ctx, Config{Node: "a"}); err == nil {
		t.Error("a node without etcd endpoints joined")
	}
}

// lossRecord is what an OnLost callback saw.
type lossRecord struct {
	at      time.Time // when the callback ran (monotonic)
	renewed time.Time // the send time of the last renewal etcd confirmed, then
	health  Health
}

// recordLosses registers an OnLost callback on n that records each loss.
func recordLosses(n *Node) func() []lossRecord {
	var mu sync.Mutex
	var out []lossRecord
	n.OnLost(func() {
		at := time.Now()
		n.mu.Lock()
		r := lossRecord{at: at, renewed: n.renewed, health: n.health}
		n.mu.Unlock()
		mu.Lock()
		out = append(out, r)
		mu.Unlock()
	})
	return func() []lossRecord {
		mu.Lock()
		defer mu.Unlock()
		return append([]lossRecord(nil), out...)
	}
}

func TestLeaseLostAndRejoined(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	a := joinNode(t, lab, "a")
	var mu sync.Mutex
	var leases []clientv3.LeaseID
	a.OnLease(func(_ context.Context, id clientv3.LeaseID) {
		mu.Lock()
		leases = append(leases, id)
		mu.Unlock()
	})
	losses := recordLosses(a)
	a.Start()
	first := a.leaseID()

	lab.Member(0).Kill()
	// The node first stops admitting and keeps its lease (Degraded), then gives the lease up
	// (Lost): never straight from Healthy to Lost while it still had time.
	var seen []Health
	eventually(t, "a loses its lease", func() bool {
		h, _ := a.Health()
		if len(seen) == 0 || seen[len(seen)-1] != h {
			seen = append(seen, h)
		}
		if h == Degraded {
			err := a.Admit()
			if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "etcd") {
				t.Errorf("a degraded node's Admit: %v; want ErrUnavailable saying etcd is the trouble", err)
			}
		}
		return h == Lost
	})
	if len(seen) != 3 || seen[0] != Healthy || seen[1] != Degraded || seen[2] != Lost {
		t.Errorf("health went %v; want healthy, degraded, lost", seen)
	}
	err := a.Admit()
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "renewal") {
		t.Errorf("a node that lost its lease admits with %v; want ErrUnavailable saying no renewal was confirmed", err)
	}
	ls := losses()
	if len(ls) != 1 {
		t.Fatalf("OnLost ran %d times; want once", len(ls))
	}
	// The safety bound: etcd keeps the lease at least TTL after the last renewal it confirmed
	// was sent; the node must have given everything up before then.
	if deadline := ls[0].renewed.Add(testTTL); !ls[0].at.Before(deadline) {
		t.Errorf("lost the lease %v after its last confirmed renewal; etcd may expire it after %v", ls[0].at.Sub(ls[0].renewed), testTTL)
	}
	if ls[0].health != Lost || a.leaseID() != 0 {
		t.Errorf("during OnLost health is %v and lease %x; want lost and none", ls[0].health, a.leaseID())
	}

	lab.Member(0).Start()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := lab.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a admits again", func() bool { return a.Admit() == nil })
	mu.Lock()
	got := append([]clientv3.LeaseID(nil), leases...)
	mu.Unlock()
	if len(got) != 2 || got[0] != first || got[1] == 0 || got[1] == first || got[1] != a.leaseID() {
		t.Errorf("OnLease saw %v; want the first lease %x then the node's new one %x", got, first, a.leaseID())
	}
	if _, lease, ok := aliveOf(t, lab.Client(t), "a"); !ok || lease != int64(a.leaseID()) {
		t.Errorf("after rejoining alive/a is under lease %x (present %v); want %x", lease, ok, a.leaseID())
	}
	if n := len(losses()); n != 1 {
		t.Errorf("OnLost ran %d times; want once", n)
	}
}

func TestCheckSealer(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	a, b, c := joinNode(t, lab, "a"), joinNode(t, lab, "b"), joinNode(t, lab, "c")
	sealer := func(fill byte) *state.Sealer {
		key := make([]byte, state.SealKeySize)
		for i := range key {
			key[i] = fill
		}
		s, err := state.NewSealer(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	ctx := context.Background()
	if err := a.CheckSealer(ctx, sealer(1)); err != nil {
		t.Fatalf("the first node's key: %v", err)
	}
	if err := b.CheckSealer(ctx, sealer(1)); err != nil {
		t.Errorf("a node with the cluster's key: %v", err)
	}
	err := c.CheckSealer(ctx, sealer(2))
	if err == nil || !strings.Contains(err.Error(), "state_dir/seal.key") {
		t.Errorf("a node with another key: %v; want a refusal naming state_dir/seal.key", err)
	}
	// The first key stays the cluster's: the refused node did not overwrite it.
	if err := a.CheckSealer(ctx, sealer(1)); err != nil {
		t.Errorf("the cluster's key after a refusal: %v", err)
	}
}

// tcpProxy forwards connections to an etcd member until cut, after which it blackholes them:
// what it accepts or had accepted is held open and never answered, as a partition between one
// node and etcd looks to that node (its requests hang; the other nodes are not affected).
type tcpProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex // guards the fields below
	cut   bool
	conns []net.Conn // every connection, both sides, closed at the end
	ups   []net.Conn // upstream sides, closed by cut
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: strings.TrimPrefix(target, "http://")}
	go p.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			_ = c.Close()
		}
	})
	return p
}

func (p *tcpProxy) endpoint() string { return "http://" + p.ln.Addr().String() }

func (p *tcpProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, c)
		cut := p.cut
		p.mu.Unlock()
		if cut {
			go func() { _, _ = io.Copy(io.Discard, c) }()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, up)
		p.ups = append(p.ups, up)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c) }()
		go func() { _, _ = io.Copy(c, up) }()
	}
}

// partition cuts every connection from etcd's side and blackholes new ones.
func (p *tcpProxy) partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, up := range p.ups {
		_ = up.Close()
	}
	p.ups = nil
}

// heal forwards new connections again, and closes those held during the cut so that the
// client dials again at once rather than when its handshake on them times out.
func (p *tcpProxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns, p.ups = nil, nil
}

// TestOneEtcdMemberDownKeepsTheLease kills the leader of a three-member etcd: the quorum
// stays, so the node must keep its lease (losing it ends every session) and go on leasing
// blocks through the other members.
func TestOneEtcdMemberDownKeepsTheLease(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 3})
	cli := lab.Client(t)
	a, pool := poolNode(t, lab, "a", "")
	losses := recordLosses(a)
	a.Start()
	lease := a.leaseID()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader := -1
	for i := range lab.Len() {
		st, err := cli.Status(ctx, lab.Member(i).Endpoint())
		if err != nil {
			t.Fatal(err)
		}
		if st.Leader == st.Header.MemberId {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no leader")
	}
	lab.Member(leader).Kill()
	killed := time.Now()
	eventually(t, "etcd confirms a renewal sent after the leader died, and a admits", func() bool {
		a.mu.Lock()
		renewed := a.renewed
		a.mu.Unlock()
		return renewed.After(killed) && a.Admit() == nil
	})
	if n := len(losses()); n != 0 || a.leaseID() != lease {
		t.Fatalf("with one member of three down a lost its lease %d times (lease %x, was %x)", n, a.leaseID(), lease)
	}
	// Leasing goes on through the other members.
	allocate(t, pool, pool.GrantedFree()+1)
	if got := pool.Granted(); len(got) != 2 {
		t.Errorf("a holds blocks %v; want a second one leased with a member down", got)
	}
	checkBlocks(t, cli, map[string]*ippool.Pool{"a": pool})
}
