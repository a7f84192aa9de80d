package sso

import (
	"bytes"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/state"
)

// twoNodes returns two brokers sharing one store, as two nodes of a cluster do.
func twoNodes(o Options) (a, b *Broker) {
	o.Store = state.NewMemory()
	return New(o), New(o)
}

func TestClusterStartOnOneCompleteOnOther(t *testing.T) {
	a, b := twoNodes(Options{PollInterval: 5 * time.Millisecond})
	l, err := a.Start(ctx, Attempt{ConnectionID: "c1", Remote: from})
	if err != nil {
		t.Fatal(err)
	}
	got, err := b.Lookup(ctx, l.Code)
	if err != nil || got.Attempt.ConnectionID != "c1" || got.State != "" {
		t.Fatalf("lookup on the other node: %+v %v", got, err)
	}
	if code, err := b.CodeOf(ctx, l.State); err != nil || code != l.Code {
		t.Fatalf("CodeOf on the other node = %q, %v", code, err)
	}
	done := make(chan error, 1)
	var id Identity
	go func() {
		var err error
		id, err = a.Await(ctx, l.State)
		done <- err
	}()
	if err := b.Complete(ctx, l.Code, Identity{Username: "alice"}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil || id.Username != "alice" {
		t.Fatalf("await on the first node: %+v %v", id, err)
	}
	if _, err := b.Take(ctx, l.State); !errors.Is(err, ErrUnknown) {
		t.Errorf("taken again on the other node: %v", err)
	}
	for _, n := range []*Broker{a, b} {
		if c, err := n.Len(ctx); err != nil || c != 0 {
			t.Errorf("Len = %d, %v after the login was taken", c, err)
		}
	}
}

func TestClusterTakeOnce(t *testing.T) {
	a, b := twoNodes(Options{})
	l, _ := a.Start(ctx, Attempt{Remote: from})
	if err := a.Complete(ctx, l.Code, Identity{Username: "alice"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Complete(ctx, l.Code, Identity{Username: "mallory"}); !errors.Is(err, ErrDone) {
		t.Fatalf("second completion on the other node: %v", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range 16 {
		n := []*Broker{a, b}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if id, err := n.Take(ctx, l.State); err == nil && id.Username == "alice" {
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
}

func TestClusterBounds(t *testing.T) {
	a, b := twoNodes(Options{Max: 6, PerSource: 3})
	for i := range 3 {
		if _, err := []*Broker{a, b}[i%2].Start(ctx, Attempt{Remote: from}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Start(ctx, Attempt{Remote: from}); !errors.Is(err, ErrFull) {
		t.Fatalf("fourth login of one source across nodes: %v", err)
	}
	for i := range 3 {
		if _, err := a.Start(ctx, Attempt{Remote: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Start(ctx, Attempt{Remote: netip.MustParseAddr("203.0.113.1")}); !errors.Is(err, ErrFull) {
		t.Fatalf("login beyond the total across nodes: %v", err)
	}
}

func TestClusterExpiryAndSweep(t *testing.T) {
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	a, b := twoNodes(Options{Now: c.now, TTL: time.Minute, PerSource: 1})
	l, _ := a.Start(ctx, Attempt{Remote: from})
	c.add(time.Minute)
	if err := b.Complete(ctx, l.Code, Identity{Username: "late"}); !errors.Is(err, ErrUnknown) {
		t.Errorf("completing an expired login on the other node: %v", err)
	}
	// The place of the expired login is free again, and the next Start sweeps its keys.
	c.add(sweepEvery)
	l2, err := b.Start(ctx, Attempt{Remote: from})
	if err != nil {
		t.Fatalf("start after expiry: %v", err)
	}
	for _, bucket := range []string{LoginBucket, CodeBucket} {
		keys, _ := b.st.List(ctx, bucket)
		if len(keys) != 1 {
			t.Errorf("%s holds %d keys, want only the live login's", bucket, len(keys))
		}
	}
	if keys, _ := b.st.List(ctx, LoginBucket); len(keys) == 1 && keys[0] != stateKey(l2.State) {
		t.Errorf("the key left is not the live login's")
	}
}

func TestClusterStoreHoldsNoSecret(t *testing.T) {
	st := state.NewMemory()
	a := New(Options{Store: st})
	l, _ := a.Start(ctx, Attempt{Remote: from})
	for _, bucket := range []string{LoginBucket, CodeBucket, BoundBucket} {
		keys, _ := st.List(ctx, bucket)
		for _, k := range keys {
			v, _ := st.Get(ctx, bucket, k)
			for _, secret := range []string{l.State, l.Code} {
				if k == secret || bytes.Contains(v, []byte(secret)) {
					t.Errorf("%s/%s holds a secret of the login", bucket, k)
				}
			}
		}
	}
}
