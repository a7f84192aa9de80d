package cluster

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/internal/etcdlab"
	"github.com/cvpn/cvpn/ippool"
)

const testBlockSize = 16

// poolNode joins a node with a 10.2.0.0/24 pool in blocks of 16 (16 blocks) attached, through
// endpoint ep (a proxy, or the lab's endpoints when ""); it is not started.
func poolNode(t *testing.T, lab *etcdlab.Cluster, name, ep string) (*Node, *ippool.Pool) {
	t.Helper()
	eps := lab.Endpoints()
	if ep != "" {
		eps = []string{ep}
	}
	n := joinConfig(t, Config{Endpoints: eps, Node: name, BlockSize: testBlockSize})
	pool, err := ippool.New(netip.MustParsePrefix("10.2.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.AttachPool(pool); err != nil {
		t.Fatal(err)
	}
	return n, pool
}

// blockOwners returns etcd's blocks/ keys: block number to owner's name.
func blockOwners(t *testing.T, cli *clientv3.Client) map[int]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	k := keys{DefaultPrefix}
	resp, err := cli.Get(ctx, k.blocks(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[int]string)
	for _, kv := range resp.Kvs {
		i, err := strconv.Atoi(strings.TrimPrefix(string(kv.Key), k.blocks()))
		if err != nil {
			t.Fatalf("block key %q", kv.Key)
		}
		out[i] = string(kv.Value)
	}
	return out
}

// checkBlocks checks that the pools' granted blocks are disjoint and are exactly the blocks
// etcd says each node holds.
func checkBlocks(t *testing.T, cli *clientv3.Client, pools map[string]*ippool.Pool) {
	t.Helper()
	owners := blockOwners(t, cli)
	holder := make(map[int]string)
	for name, p := range pools {
		for _, b := range p.Granted() {
			if other, ok := holder[b]; ok {
				t.Errorf("block %d is granted in both %s's and %s's pools", b, other, name)
			}
			holder[b] = name
			if owners[b] != name {
				t.Errorf("block %d is granted in %s's pool but etcd says %q holds it", b, name, owners[b])
			}
		}
	}
	for b, name := range owners {
		if _, ours := pools[name]; ours && holder[b] != name {
			t.Errorf("etcd says %s holds block %d, which its pool has not granted", name, b)
		}
	}
}

// allocate takes n addresses from p.
func allocate(t *testing.T, p *ippool.Pool, n int) []ippool.Lease {
	t.Helper()
	var out []ippool.Lease
	for range n {
		l, err := p.AllocateLease()
		if err != nil {
			t.Fatalf("allocation %d of %d: %v", len(out)+1, n, err)
		}
		out = append(out, l)
	}
	return out
}

func TestBlocksGrowOneAtATime(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	a, pool := poolNode(t, lab, "a", "")
	a.Start()
	// One block is leased at join, before the node admits.
	g := pool.Granted()
	if len(g) != 1 || pool.GrantedFree() != pool.BlockCapacity(g[0]) {
		t.Fatalf("after Start: granted %v with %d free; want one block, all free", g, pool.GrantedFree())
	}
	allocate(t, pool, pool.BlockCapacity(g[0]))
	if got := pool.Granted(); len(got) != 1 || pool.GrantedFree() != 0 {
		t.Fatalf("with the first block full: granted %v with %d free; want the one block", got, pool.GrantedFree())
	}
	// Eight handshakes find the pool full at once: together they lease one block, not eight.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := pool.AllocateLease()
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("allocation past the first block: %v", err)
		}
	}
	got := pool.Granted()
	if len(got) != 2 {
		t.Fatalf("eight concurrent allocations past a full block leased %d blocks; want one", len(got)-1)
	}
	if used := pool.BlockCapacity(got[0]) + pool.BlockCapacity(got[1]) - pool.GrantedFree(); used != pool.BlockCapacity(g[0])+8 {
		t.Errorf("%d addresses in use; want %d", used, pool.BlockCapacity(g[0])+8)
	}
	checkBlocks(t, cli, map[string]*ippool.Pool{"a": pool})
	eventually(t, "alive/a says two blocks", func() bool { al, _, _ := aliveOf(t, cli, "a"); return al.Blocks == 2 })
}

func TestBlocksNeverSharedAndFreedAtClose(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	a, poolA := poolNode(t, lab, "a", "")
	b, poolB := poolNode(t, lab, "b", "")
	a.Start()
	b.Start()
	pools := map[string]*ippool.Pool{"a": poolA, "b": poolB}

	// Both nodes allocate at once from four goroutines each, until the whole /24 is taken.
	var wg sync.WaitGroup
	var got [2]atomic.Int64
	for k, p := range []*ippool.Pool{poolA, poolB} {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					_, err := p.AllocateLease()
					if errors.Is(err, ippool.ErrExhausted) {
						return
					}
					if err != nil {
						t.Errorf("allocation: %v", err)
						return
					}
					got[k].Add(1)
				}
			}()
		}
	}
	wg.Wait()
	checkBlocks(t, cli, pools)
	if n := len(blockOwners(t, cli)); n != poolA.NumBlocks() {
		t.Errorf("etcd holds %d blocks after both nodes filled the pool; want all %d", n, poolA.NumBlocks())
	}
	total := 0
	for b := range poolA.NumBlocks() {
		total += poolA.BlockCapacity(b)
	}
	if n := got[0].Load() + got[1].Load(); n != int64(total) {
		t.Errorf("the nodes allocated %d addresses between them; want the pool's %d", n, total)
	}
	// With every block leased by a live node, allocation fails at once, as on a full pool.
	if _, err := poolB.AllocateLease(); !errors.Is(err, ippool.ErrExhausted) {
		t.Errorf("allocation with every block leased: %v; want ErrExhausted", err)
	}

	held := poolA.Granted()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	// Close revoked a's lease: its blocks are b's to lease now, not a TTL later.
	l, err := poolB.AllocateLease()
	if err != nil {
		t.Fatalf("allocation right after a left: %v", err)
	}
	if blk := poolB.BlockOf(l.Index); !slices.Contains(held, blk) {
		t.Errorf("b got block %d; want one of a's former %v", blk, held)
	}
	checkBlocks(t, cli, map[string]*ippool.Pool{"b": poolB})
}

// TestPartitionNeverSharesABlock cuts node a off etcd while b still reaches it, and has b
// take a's blocks once etcd lets it: a must have revoked every block before etcd could expire
// its lease, so no block is ever granted in both pools.
func TestPartitionNeverSharesABlock(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	proxy := startProxy(t, lab.Member(0).Endpoint())
	a, poolA := poolNode(t, lab, "a", proxy.endpoint())
	b, poolB := poolNode(t, lab, "b", "")
	// Registered after AttachPool: runs after the blocks are revoked.
	var grantedAtLoss atomic.Int64
	grantedAtLoss.Store(-1)
	a.OnLost(func() { grantedAtLoss.Store(int64(len(poolA.Granted()))) })
	losses := recordLosses(a)
	a.Start()
	b.Start()

	allocate(t, poolA, 40) // three blocks
	heldA := poolA.Granted()
	for {
		if _, err := poolB.AllocateLease(); errors.Is(err, ippool.ErrExhausted) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	checkBlocks(t, cli, map[string]*ippool.Pool{"a": poolA, "b": poolB})
	if len(heldA) != 3 || len(poolB.Granted()) != poolB.NumBlocks()-3 {
		t.Fatalf("a holds %v and b %v; want a three blocks and b the rest", heldA, poolB.Granted())
	}

	// Watch etcd free a's blocks: each deletion is heard after it happened.
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	var freedMu sync.Mutex
	freed := make(map[int]time.Time)
	watch := cli.Watch(wctx, keys{DefaultPrefix}.blocks(), clientv3.WithPrefix())
	go func() {
		for resp := range watch {
			at := time.Now()
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypeDelete {
					continue
				}
				i, _ := strconv.Atoi(strings.TrimPrefix(string(ev.Kv.Key), keys{DefaultPrefix}.blocks()))
				freedMu.Lock()
				if _, ok := freed[i]; !ok {
					freed[i] = at
				}
				freedMu.Unlock()
			}
		}
	}()
	// Sample both pools all along: a block granted in both at once is the failure.
	var overlaps atomic.Int64
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-done:
				return
			default:
			}
			ga := poolA.Granted()
			for _, blk := range poolB.Granted() {
				if slices.Contains(ga, blk) {
					overlaps.Add(1)
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()

	proxy.partition()
	// b retries until etcd expired a's lease and b leased one of a's blocks.
	var got int
	eventually(t, "b leases one of a's blocks", func() bool {
		l, err := poolB.AllocateLease()
		if err != nil {
			return false
		}
		got = poolB.BlockOf(l.Index)
		return true
	})
	close(done)
	<-sampled
	if !slices.Contains(heldA, got) {
		t.Errorf("b was granted block %d; want one a held (%v)", got, heldA)
	}
	if n := overlaps.Load(); n != 0 {
		t.Errorf("%d samples saw a block granted in both pools", n)
	}
	ls := losses()
	if len(ls) != 1 {
		t.Fatalf("a lost its lease %d times; want once", len(ls))
	}
	if !ls[0].at.Before(ls[0].renewed.Add(testTTL)) {
		t.Errorf("a gave up its blocks %v after its last confirmed renewal; etcd may expire the lease after %v", ls[0].at.Sub(ls[0].renewed), testTTL)
	}
	if n := grantedAtLoss.Load(); n != 0 {
		t.Errorf("when a's OnLost callbacks ran its pool still had %d blocks granted", n)
	}
	// The watch may hear the deletions after b was granted the block.
	eventually(t, "the watch hears etcd free a's blocks", func() bool {
		freedMu.Lock()
		defer freedMu.Unlock()
		for _, blk := range heldA {
			if _, ok := freed[blk]; !ok {
				return false
			}
		}
		return true
	})
	freedMu.Lock()
	for _, blk := range heldA {
		if at := freed[blk]; !ls[0].at.Before(at) {
			t.Errorf("etcd freed a's block %d %v before a gave it up", blk, ls[0].at.Sub(at))
		}
	}
	freedMu.Unlock()
	if got := poolA.Granted(); len(got) != 0 {
		t.Errorf("cut off etcd, a still has blocks %v granted", got)
	}
	if err := a.Admit(); !errors.Is(err, ErrUnavailable) {
		t.Errorf("cut off etcd, a admits: %v", err)
	}
	if _, err := poolA.AllocateLease(); !errors.Is(err, ippool.ErrExhausted) {
		t.Errorf("cut off etcd, a allocates: %v; want ErrExhausted", err)
	}

	// The partition heals: a joins again with a new lease and leases only a free block.
	proxy.heal()
	eventually(t, "a admits again", func() bool { return a.Admit() == nil })
	checkBlocks(t, cli, map[string]*ippool.Pool{"a": poolA, "b": poolB})
	if len(poolA.Granted()) != 1 {
		t.Errorf("after rejoining a holds blocks %v; want one", poolA.Granted())
	}
}

// TestRejoinStuckOnEtcdStillGivesUp cuts a node off etcd while it runs its OnLease callbacks
// after a rejoin, once the block for the new lease is granted: the callbacks run on the loop
// that watches the lease's deadline, so they must not hold the block granted past it.
func TestRejoinStuckOnEtcdStillGivesUp(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	proxy := startProxy(t, lab.Member(0).Endpoint())
	a, pool := poolNode(t, lab, "a", proxy.endpoint())
	var calls atomic.Int64
	// Registered after AttachPool: runs once the new lease's block is granted.
	a.OnLease(func(ctx context.Context, _ clientv3.LeaseID) {
		if calls.Add(1) == 2 {
			proxy.partition()
			<-ctx.Done() // as an etcd request without its own timeout would
		}
	})
	losses := recordLosses(a)
	a.Start()
	first := a.leaseID()
	// etcd ends the first lease: the node finds out at its next renewal and rejoins.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Revoke(ctx, first); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a rejoins and is cut off in its callbacks", func() bool { return calls.Load() == 2 })
	second := a.leaseID()
	if second == 0 || second == first || len(pool.Granted()) != 1 {
		t.Fatalf("in the rejoin's callbacks a holds lease %x and blocks %v; want a new lease and one block", second, pool.Granted())
	}
	if err := a.Admit(); err == nil {
		t.Error("a admits before its OnLease callbacks returned")
	}
	eventually(t, "a gives up its second lease", func() bool { return len(losses()) == 2 })
	ls := losses()[1]
	if !ls.at.Before(ls.renewed.Add(testTTL)) {
		t.Errorf("a gave up its second lease %v after its last confirmed renewal; etcd may expire it after %v", ls.at.Sub(ls.renewed), testTTL)
	}
	if got := pool.Granted(); len(got) != 0 {
		t.Errorf("after losing its second lease a still has blocks %v granted", got)
	}
}
