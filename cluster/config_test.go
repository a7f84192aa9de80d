package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/internal/etcdlab"
)

// configNode is a node that watches pushes like a running endpoint: it refuses to check or
// apply a file whose data names it ("refuse:<node>"), and records what it checked and applied.
type configNode struct {
	n    *Node
	stop context.CancelFunc
	done chan struct{}

	mu      sync.Mutex // guards the fields below
	checked []int64
	applied []int64
	running string // the data of the file it runs
}

func watchConfig(t *testing.T, n *Node) *configNode {
	t.Helper()
	c := &configNode{n: n, done: make(chan struct{})}
	refuses := func(pc PushedConfig) error {
		if strings.Contains(string(pc.Data), "refuse:"+n.Name()) {
			return fmt.Errorf("%s cannot run this file", n.Name())
		}
		return nil
	}
	check := func(pc PushedConfig, rev int64) error {
		c.mu.Lock()
		c.checked = append(c.checked, rev)
		c.mu.Unlock()
		return refuses(pc)
	}
	apply := func(pc PushedConfig, rev int64) error {
		if err := refuses(pc); err != nil {
			return err
		}
		c.mu.Lock()
		c.applied = append(c.applied, rev)
		c.running = string(pc.Data)
		c.mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	n.Start()
	n.ConfigApplied(0)
	go func() {
		defer close(c.done)
		n.WatchConfig(ctx, 0, check, apply)
	}()
	t.Cleanup(c.close)
	return c
}

func (c *configNode) close() {
	c.stop()
	<-c.done
}

func (c *configNode) state() (checked, applied []int64, running string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.checked), slices.Clone(c.applied), c.running
}

func outcomeString(os []NodeOutcome) string {
	var b strings.Builder
	for _, o := range os {
		fmt.Fprintf(&b, "%s:%v:%q ", o.Node, o.Applied, o.Err)
	}
	return b.String()
}

func TestPushAcceptedRefusedAndDeadNodes(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	ctx := context.Background()
	nodes := map[string]*configNode{}
	for _, name := range []string{"c", "a", "b"} {
		nodes[name] = watchConfig(t, joinNode(t, lab, name))
	}
	// Wait until every node publishes its config state (ConfigApplied(0) at start), so that
	// the nodes' watches are running when the push comes.
	eventually(t, "the nodes run", func() bool {
		for name := range nodes {
			if _, _, ok := aliveOf(t, cli, name); !ok {
				return false
			}
		}
		return true
	})
	if _, _, ok, err := PushedFile(ctx, cli, ""); ok || err != nil {
		t.Fatalf("before any push: ok %v, err %v", ok, err)
	}

	// Every node accepts: the file is stored, and each node applies it once.
	rev, outs, err := Push(ctx, cli, "", PushedConfig{Data: []byte("file one"), File: "/etc/cvpn/endpoint.yaml", Time: "now"}, 10*time.Second)
	if err != nil || rev == 0 {
		t.Fatalf("push: revision %d, %v", rev, err)
	}
	if got := outcomeString(outs); got != `a:true:"" b:true:"" c:true:"" ` {
		t.Errorf("outcomes %s; want every node, sorted, applied", got)
	}
	pc, got, ok, err := PushedFile(ctx, cli, "")
	if err != nil || !ok || got != rev || string(pc.Data) != "file one" || pc.File != "/etc/cvpn/endpoint.yaml" {
		t.Fatalf("stored: %q from %q at %d (ok %v, %v); want file one at %d", pc.Data, pc.File, got, ok, err, rev)
	}
	for name, c := range nodes {
		checked, applied, running := c.state()
		if len(checked) != 1 || !slices.Equal(applied, []int64{rev}) || running != "file one" {
			t.Errorf("%s checked %v and applied %v (runs %q); want one check and revision %d once", name, checked, applied, running, rev)
		}
		if al, _, _ := aliveOf(t, cli, name); al.ConfigRevision != rev || al.ConfigError != "" {
			t.Errorf("%s publishes revision %d (%q); want %d", name, al.ConfigRevision, al.ConfigError, rev)
		}
	}

	// One node refuses: nothing is stored, and the refusal is reported by name.
	rev2, outs, err := Push(ctx, cli, "", PushedConfig{Data: []byte("file two refuse:b")}, 10*time.Second)
	if err != nil || rev2 != 0 {
		t.Fatalf("a refused push: revision %d, %v; want 0 and no error", rev2, err)
	}
	if got := outcomeString(outs); got != `a:true:"" b:false:"b cannot run this file" c:true:"" ` {
		t.Errorf("outcomes %s; want b's refusal in its own words", got)
	}
	if pc, got, _, _ := PushedFile(ctx, cli, ""); got != rev || string(pc.Data) != "file one" {
		t.Errorf("after a refused push the stored file is %q at %d; want file one at %d", pc.Data, got, rev)
	}
	if r, err := cli.Get(ctx, keys{DefaultPrefix}.candidate()); err != nil || len(r.Kvs) != 0 {
		t.Errorf("a refused candidate is left in etcd (%v)", err)
	}
	for name, c := range nodes {
		checked, applied, running := c.state()
		if len(checked) != 2 || len(applied) != 1 || running != "file one" {
			t.Errorf("%s checked %v, applied %v and runs %q; want a second check and nothing applied", name, checked, applied, running)
		}
	}

	// A node that crashed still holds its lease: the push waits for it and, without its
	// answer, stores nothing.
	nodes["c"].close()
	kill(nodes["c"].n)
	rev3, outs, err := Push(ctx, cli, "", PushedConfig{Data: []byte("file three")}, time.Second)
	if err != nil || rev3 != 0 {
		t.Fatalf("a push with a silent live node: revision %d, %v; want 0", rev3, err)
	}
	if got := outcomeString(outs); got != `a:true:"" b:true:"" c:false:"has not answered" ` {
		t.Errorf("outcomes %s; want c not answering", got)
	}
	if err := Forget(ctx, cli, "", "c"); !errors.Is(err, ErrNameInUse) {
		t.Errorf("forgetting c while its lease lives: %v; want ErrNameInUse", err)
	}
	// Once its lease expired it is no longer live, and not waited for.
	eventually(t, "c's lease expires", func() bool { _, _, ok := aliveOf(t, cli, "c"); return !ok })
	rev4, outs, err := Push(ctx, cli, "", PushedConfig{Data: []byte("file four")}, 10*time.Second)
	if err != nil || rev4 <= rev {
		t.Fatalf("a push without c: revision %d, %v", rev4, err)
	}
	if got := outcomeString(outs); got != `a:true:"" b:true:"" ` {
		t.Errorf("outcomes %s; want a and b only", got)
	}
	for _, name := range []string{"a", "b"} {
		if _, applied, running := nodes[name].state(); !slices.Equal(applied, []int64{rev, rev4}) || running != "file four" {
			t.Errorf("%s applied %v and runs %q; want %d then %d", name, applied, running, rev, rev4)
		}
	}

	// Members lists every node that joined, dead or alive, until it is forgotten.
	list := func() []string {
		ms, err := Members(ctx, cli, "")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range ms {
			out = append(out, m.Name+"@"+m.PublicAddress)
		}
		return out
	}
	if got := list(); !slices.Equal(got, []string{"a@a.example", "b@b.example", "c@c.example"}) {
		t.Errorf("members %v; want a, b and c sorted with their public addresses", got)
	}
	if err := Forget(ctx, cli, "", "a"); !errors.Is(err, ErrNameInUse) {
		t.Errorf("forgetting live a: %v; want ErrNameInUse", err)
	}
	if err := Forget(ctx, cli, "", "c"); err != nil {
		t.Errorf("forgetting dead c: %v", err)
	}
	if got := list(); !slices.Equal(got, []string{"a@a.example", "b@b.example"}) {
		t.Errorf("members after forgetting c: %v", got)
	}
	if err := Forget(ctx, cli, "", "c"); err == nil || errors.Is(err, ErrNameInUse) {
		t.Errorf("forgetting c twice: %v; want no such node", err)
	}
}

func TestPushRefusedWhenApplyFails(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	ctx := context.Background()
	a := watchConfig(t, joinNode(t, lab, "a"))
	eventually(t, "a runs", func() bool { _, _, ok := aliveOf(t, cli, "a"); return ok })
	// Store a file directly, as if its check passed and the node then failed to apply it: the
	// node's refusal is published under alive/ and Push's second phase reports it.
	put, err := cli.Put(ctx, keys{DefaultPrefix}.config(), `{"data":"cmVmdXNlOmE="}`) // "refuse:a"
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a publishes its refusal", func() bool {
		al, _, _ := aliveOf(t, cli, "a")
		return al.ConfigRefused == put.Header.Revision && strings.Contains(al.ConfigError, "a cannot run this file")
	})
	if _, applied, _ := a.state(); len(applied) != 0 {
		t.Errorf("a applied %v; want nothing", applied)
	}
	// A node started after a push runs from the stored revision and does not apply it again.
	b := joinNode(t, lab, "b")
	bc := &configNode{n: b, done: make(chan struct{})}
	var bApplied []int64
	var mu sync.Mutex
	wctx, cancel := context.WithCancel(ctx)
	b.Start()
	go func() {
		defer close(bc.done)
		b.WatchConfig(wctx, put.Header.Revision, func(PushedConfig, int64) error { return nil }, func(_ PushedConfig, rev int64) error {
			mu.Lock()
			bApplied = append(bApplied, rev)
			mu.Unlock()
			return nil
		})
	}()
	defer func() { cancel(); <-bc.done }()
	rev, outs, err := Push(ctx, cli, "", PushedConfig{Data: []byte("fine")}, 10*time.Second)
	if err != nil || rev == 0 || outcomeString(outs) != `a:true:"" b:true:"" ` {
		t.Fatalf("push: %d %s %v", rev, outcomeString(outs), err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(bApplied, []int64{rev}) {
		t.Errorf("b applied %v; want only the new revision %d", bApplied, rev)
	}
}

func TestPushTooLarge(t *testing.T) {
	t.Parallel()
	_, _, err := Push(context.Background(), nil, "", PushedConfig{Data: make([]byte, MaxConfigLen+1)}, time.Second)
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("an oversized file: %v; want a refusal naming the limit", err)
	}
}

// TestWatchConfigAfterCompaction starts a node's watch from a revision etcd compacted away
// (as after a long outage, or with etcd's auto-compaction): the node must still hear pushes.
func TestWatchConfigAfterCompaction(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	ctx := context.Background()
	b := watchConfig(t, joinNode(t, lab, "b"))
	eventually(t, "b runs", func() bool { _, _, ok := aliveOf(t, cli, "b"); return ok })
	first, _, err := Push(ctx, cli, "", PushedConfig{Data: []byte("file one")}, 10*time.Second)
	if err != nil || first == 0 {
		t.Fatalf("push: %d, %v", first, err)
	}
	b.close()
	if err := b.n.Close(); err != nil {
		t.Fatal(err)
	}
	var last int64
	for i := range 10 {
		put, err := cli.Put(ctx, fmt.Sprintf("other/%d", i), "x")
		if err != nil {
			t.Fatal(err)
		}
		last = put.Header.Revision
	}
	if _, err := cli.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	// a watches from revision 1, long compacted: it catches up with the stored file, and
	// must then watch from a revision etcd still has.
	a := watchConfig(t, joinNode(t, lab, "a"))
	eventually(t, "a applies the stored file", func() bool { _, applied, _ := a.state(); return slices.Equal(applied, []int64{first}) })
	rev, outs, err := Push(ctx, cli, "", PushedConfig{Data: []byte("file two")}, 10*time.Second)
	if err != nil || rev == 0 || outcomeString(outs) != `a:true:"" ` {
		t.Fatalf("push after a compaction: %d %s %v; want it checked and applied by a", rev, outcomeString(outs), err)
	}
	if _, applied, running := a.state(); !slices.Equal(applied, []int64{first, rev}) || running != "file two" {
		t.Errorf("a applied %v and runs %q; want %d then %d", applied, running, first, rev)
	}
}

func TestPushWithoutNodesLeavesNothing(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	ctx := context.Background()
	rev, _, err := Push(ctx, cli, "", PushedConfig{Data: []byte("file one")}, time.Second)
	if err == nil || !strings.Contains(err.Error(), "no live node") || rev != 0 {
		t.Fatalf("a push without nodes: %d, %v; want refused for want of a live node", rev, err)
	}
	if r, err := cli.Get(ctx, keys{DefaultPrefix}.config(), clientv3.WithPrefix()); err != nil || len(r.Kvs) != 0 {
		t.Errorf("a push without nodes left %d keys (config, candidate) in etcd (%v)", len(r.Kvs), err)
	}
}

// TestWatchConfigSkipsWithdrawnCandidates starts a node after a refused push: it must not
// check the withdrawn candidate again (replaying history), only the pushes that come.
func TestWatchConfigSkipsWithdrawnCandidates(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	ctx := context.Background()
	watchConfig(t, joinNode(t, lab, "b"))
	eventually(t, "b runs", func() bool { _, _, ok := aliveOf(t, cli, "b"); return ok })
	first, _, err := Push(ctx, cli, "", PushedConfig{Data: []byte("file one")}, 10*time.Second)
	if err != nil || first == 0 {
		t.Fatalf("push: %d, %v", first, err)
	}
	if rev, _, err := Push(ctx, cli, "", PushedConfig{Data: []byte("refuse:b")}, 10*time.Second); err != nil || rev != 0 {
		t.Fatalf("a push b refuses: %d, %v", rev, err)
	}
	// a starts as an endpoint does: running the stored file, watching from its revision.
	an := joinNode(t, lab, "a")
	ac := &configNode{n: an, done: make(chan struct{})}
	wctx, cancel := context.WithCancel(ctx)
	ac.stop = cancel
	an.Start()
	go func() {
		defer close(ac.done)
		an.WatchConfig(wctx, first, func(_ PushedConfig, rev int64) error {
			ac.mu.Lock()
			ac.checked = append(ac.checked, rev)
			ac.mu.Unlock()
			return nil
		}, func(_ PushedConfig, rev int64) error {
			ac.mu.Lock()
			ac.applied = append(ac.applied, rev)
			ac.mu.Unlock()
			return nil
		})
	}()
	defer ac.close()
	eventually(t, "a runs", func() bool { _, _, ok := aliveOf(t, cli, "a"); return ok })
	third, outs, err := Push(ctx, cli, "", PushedConfig{Data: []byte("file three")}, 10*time.Second)
	if err != nil || third == 0 || outcomeString(outs) != `a:true:"" b:true:"" ` {
		t.Fatalf("push: %d %s %v", third, outcomeString(outs), err)
	}
	checked, applied, _ := ac.state()
	if len(checked) != 1 || checked[0] >= third || !slices.Equal(applied, []int64{third}) {
		t.Errorf("a checked %v and applied %v; want only the third push checked and applied (%d)", checked, applied, third)
	}
}
