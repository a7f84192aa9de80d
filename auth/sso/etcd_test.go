package sso

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/etcdlab"
	"github.com/cvpn/cvpn/state/etcdstate"
)

// TestEtcdTwoNodes: two brokers, each with its own etcd client, as two nodes of a cluster:
// a login started on A is completed on B while a client awaits it on A; it is taken once
// when both nodes race for it; the per-source bound counts both nodes.
func TestEtcdTwoNodes(t *testing.T) {
	c := etcdlab.Start(t, etcdlab.Options{})
	o := Options{PerSource: 3, PollInterval: 20 * time.Millisecond}
	o.Store = etcdstate.New(c.Client(t), "/cvpn/state/")
	a := New(o)
	o.Store = etcdstate.New(c.Client(t), "/cvpn/state/")
	b := New(o)

	l, err := a.Start(ctx, Attempt{ConnectionID: "c1", Remote: from})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var id Identity
	go func() {
		var err error
		id, err = a.Await(ctx, l.State)
		done <- err
	}()
	if got, err := b.Lookup(ctx, l.Code); err != nil || got.Attempt.ConnectionID != "c1" {
		t.Fatalf("lookup on B: %+v %v", got, err)
	}
	if err := b.Complete(ctx, l.Code, Identity{Username: "alice"}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil || id.Username != "alice" {
		t.Fatalf("await on A: %+v %v", id, err)
	}

	l2, _ := b.Start(ctx, Attempt{Remote: from})
	if err := b.Complete(ctx, l2.Code, Identity{Username: "bob"}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range 8 {
		n := []*Broker{a, b}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := n.Take(ctx, l2.State); err == nil {
				mu.Lock()
				won++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if won != 1 {
		t.Fatalf("the login was taken %d times", won)
	}

	for i := range 3 {
		if _, err := []*Broker{a, b}[i%2].Start(ctx, Attempt{Remote: netip.MustParseAddr("192.0.2.1")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Start(ctx, Attempt{Remote: netip.MustParseAddr("192.0.2.1")}); !errors.Is(err, ErrFull) {
		t.Fatalf("a fourth login of one source across nodes: %v", err)
	}
}
