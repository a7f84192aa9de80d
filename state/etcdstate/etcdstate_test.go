package etcdstate_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/etcdlab"
	"github.com/cvpn/cvpn/state"
	"github.com/cvpn/cvpn/state/etcdstate"
	"github.com/cvpn/cvpn/state/statetest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestEtcdConformance runs the conformance tests on one single-member
// cluster, each subtest under a prefix of its own.
func TestEtcdConformance(t *testing.T) {
	c := etcdlab.Start(t, etcdlab.Options{})
	cli := c.Client(t)
	var n atomic.Int64
	statetest.Run(t, func(t *testing.T) state.Store {
		return etcdstate.New(cli, fmt.Sprintf("/conformance/%d/", n.Add(1)))
	})
}

// TestEtcdLayout checks the keys the store writes: <prefix>/<bucket>/<key>,
// with '/' and '%' in bucket names escaped, keys as they are.
func TestEtcdLayout(t *testing.T) {
	c := etcdlab.Start(t, etcdlab.Options{})
	cli := c.Client(t)
	s := etcdstate.New(cli, "/cvpn/state/")
	ctx := context.Background()
	for _, e := range []struct{ bucket, key string }{{"mfa", "alice"}, {"a/b", "c"}, {"a", "b/c"}, {"50%", "x"}} {
		if err := s.Put(ctx, e.bucket, e.key, []byte(e.bucket+" "+e.key)); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := cli.Get(ctx, "/cvpn/state/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	want := map[string]string{
		"/cvpn/state/mfa/alice": "mfa alice",
		"/cvpn/state/a%2Fb/c":   "a/b c",
		"/cvpn/state/a/b/c":     "a b/c",
		"/cvpn/state/50%25/x":   "50% x",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("etcd holds %q, want %q", got, want)
	}
}

// TestEtcdUpdateConflict writes the key from another client while fn runs:
// the compare-and-swap fails, and fn runs again on the value the other writer
// left, for a present key (ModRevision changed) and an absent one (created
// meanwhile) alike.
func TestEtcdUpdateConflict(t *testing.T) {
	c := etcdlab.Start(t, etcdlab.Options{})
	s := etcdstate.New(c.Client(t), "conflict")
	other := etcdstate.New(c.Client(t), "conflict")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, present := range []bool{true, false} {
		key := fmt.Sprint("present-", present)
		if present {
			if err := s.Put(ctx, "b", key, []byte("first")); err != nil {
				t.Fatal(err)
			}
		}
		var seen []string
		err := s.Update(ctx, "b", key, func(old []byte, ok bool) ([]byte, error) {
			seen = append(seen, fmt.Sprintf("%s/%v", old, ok))
			if len(seen) == 1 {
				if err := other.Put(ctx, "b", key, []byte("other")); err != nil {
					return nil, err
				}
			}
			return append(old, '!'), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"first/true", "other/true"}
		if !present {
			want[0] = "/false"
		}
		if fmt.Sprint(seen) != fmt.Sprint(want) {
			t.Errorf("present=%v: fn saw %q, want %q", present, seen, want)
		}
		if got, err := s.Get(ctx, "b", key); err != nil || string(got) != "other!" {
			t.Errorf("present=%v: Get = %q, %v; want other! (the other write kept)", present, got, err)
		}
	}
}

// TestEtcdUpdateThroughTwoMembers increments one counter from two clients,
// each talking to a different member of a three-member cluster: no increment
// is lost, whichever member leads.
func TestEtcdUpdateThroughTwoMembers(t *testing.T) {
	c := etcdlab.Start(t, etcdlab.Options{Members: 3})
	stores := []state.Store{
		etcdstate.New(c.Client(t, c.Member(0).Endpoint()), "ctr"),
		etcdstate.New(c.Client(t, c.Member(1).Endpoint()), "ctr"),
	}
	const each = 100
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	incr := func(old []byte, ok bool) ([]byte, error) {
		var n uint64
		if ok {
			n = binary.BigEndian.Uint64(old)
		}
		return binary.BigEndian.AppendUint64(nil, n+1), nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(stores))
	for _, s := range stores {
		for range 2 {
			wg.Go(func() {
				for range each {
					if err := s.Update(ctx, "b", "n", incr); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, s := range stores {
		got, err := s.Get(ctx, "b", "n")
		if err != nil {
			t.Fatal(err)
		}
		if n := binary.BigEndian.Uint64(got); n != uint64(2*len(stores)*each) {
			t.Fatalf("through member %d: counter = %d after %d increments", i, n, 2*len(stores)*each)
		}
	}
}

// TestEtcdMembersDown: with every member down, each call returns an error
// wrapping the context's when its deadline passes, instead of waiting for
// etcd to come back.
func TestEtcdMembersDown(t *testing.T) {
	c := etcdlab.Start(t, etcdlab.Options{})
	s := etcdstate.New(c.Client(t), "down")
	if err := s.Put(context.Background(), "b", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	c.Member(0).Kill()
	calls := map[string]func(ctx context.Context) error{
		"get": func(ctx context.Context) error { _, err := s.Get(ctx, "b", "k"); return err },
		"put": func(ctx context.Context) error { return s.Put(ctx, "b", "k", nil) },
		"update": func(ctx context.Context) error {
			return s.Update(ctx, "b", "k", func(o []byte, _ bool) ([]byte, error) { return o, nil })
		},
		"list": func(ctx context.Context) error { _, err := s.List(ctx, "b"); return err },
	}
	for name, call := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := call(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s with every member down: err = %v, want one wrapping context.DeadlineExceeded", name, err)
		}
		t.Logf("%s: %v", name, err)
	}

	// Back on its data, the member serves what was written.
	c.Member(0).Start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, "b", "k"); err != nil || string(got) != "v" {
		t.Fatalf("after restart Get = %q, %v; want v", got, err)
	}
}
