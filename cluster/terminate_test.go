package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/endpoint/admin"
	"github.com/cvpn/cvpn/internal/etcdlab"
)

func TestTerminateOnAnotherNode(t *testing.T) {
	t.Parallel()
	_, a, b, ea, _ := twoNodes(t, 0)
	now := time.Now()
	ea.connect("cvpn-connection-000000000000000a1", "alice", "alice", now)
	ea.connect("cvpn-connection-000000000000000a2", "bob", "bob", now)
	ea.connect("cvpn-connection-000000000000000a3", "bob", "bob", now)
	ctx := context.Background()

	out, err := b.Terminate(ctx, "a", admin.TerminateClientVpnConnectionsInput{ConnectionID: "cvpn-connection-000000000000000a1"})
	if err != nil {
		t.Fatalf("terminate by id: %v", err)
	}
	if len(out.ConnectionStatuses) != 1 || out.ConnectionStatuses[0].ConnectionID != "cvpn-connection-000000000000000a1" ||
		out.ConnectionStatuses[0].CurrentStatus.Code != admin.StatusTerminating {
		t.Errorf("terminate by id answered %+v", out)
	}
	if r, ok := ea.reasonOf("cvpn-connection-000000000000000a1"); !ok || r != "terminated by the administrator" {
		t.Errorf("the session on a ended: %v, reason %q", ok, r)
	}

	out, err = b.Terminate(ctx, "a", admin.TerminateClientVpnConnectionsInput{Username: "bob"})
	if err != nil || len(out.ConnectionStatuses) != 2 || out.Username != "bob" {
		t.Fatalf("terminate by username answered %+v, %v; want bob's two sessions", out, err)
	}
	if got := ea.ids(); len(got) != 0 {
		t.Errorf("a still holds %v", got)
	}

	// The owner's refusal comes back as the admin API's error.
	_, err = b.Terminate(ctx, "a", admin.TerminateClientVpnConnectionsInput{ConnectionID: "cvpn-connection-00000000000000none"})
	var ae *admin.Error
	if !errors.As(err, &ae) || ae.Code != "InvalidClientVpnConnection.IdNotFound" {
		t.Errorf("terminate of an unknown id: %v; want the owner's IdNotFound", err)
	}
	// Answers are read and freed; requests are deleted once answered.
	for _, prefix := range []string{a.keys.terminateFor("a"), path0(a.keys.terminated("x"))} {
		eventually(t, "no request or answer left under "+prefix, func() bool {
			r, err := b.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			return err == nil && r.Count == 0
		})
	}
}

// path0 is the directory of key, with its slash.
func path0(key string) string { return key[:strings.LastIndex(key, "/")+1] }

func TestTerminateUnansweredStaysQueued(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	b := joinNode(t, lab, "b")
	b.Start()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := b.Terminate(ctx, "c", admin.TerminateClientVpnConnectionsInput{Username: "alice"})
	if err == nil || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("terminate on a node that never answers: %v; want an error saying so", err)
	}
	r, err := b.cli.Get(context.Background(), b.keys.terminateFor("c"), clientv3.WithPrefix())
	if err != nil || len(r.Kvs) != 1 || r.Kvs[0].Lease == 0 {
		t.Fatalf("requests queued for c: %v (%v); want one, under a lease", r.Kvs, err)
	}
	var req TerminateRequest
	if err := json.Unmarshal(r.Kvs[0].Value, &req); err != nil || req.Input.Username != "alice" || req.Requester != "b" {
		t.Errorf("queued request %s (%v)", r.Kvs[0].Value, err)
	}
}

func TestTerminatePendingBeforeTheWatcher(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	a, b := joinNode(t, lab, "a"), joinNode(t, lab, "b")
	a.Start()
	b.Start()
	ea := &fakeEngine{ended: make(map[string]string)}
	ea.pub = a.Publisher(toConn, ea.clients, nil)
	ea.connect("cvpn-connection-000000000000000a1", "alice", "alice", time.Now())

	type result struct {
		out admin.TerminateClientVpnConnectionsOutput
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := b.Terminate(ctx, "a", admin.TerminateClientVpnConnectionsInput{ConnectionID: "cvpn-connection-000000000000000a1"})
		done <- result{out, err}
	}()
	eventually(t, "the request is queued for a", func() bool {
		r, err := b.cli.Get(context.Background(), b.keys.terminateFor("a"), clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && r.Count == 1
	})
	// a starts carrying out requests only now: it finds the one queued.
	a.SetTerminator(ea.terminate)
	r := <-done
	if r.err != nil || len(r.out.ConnectionStatuses) != 1 {
		t.Fatalf("answer %+v, %v; want the session terminated", r.out, r.err)
	}
}

func TestTerminateRunsOnceAndNotLate(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	a := joinNode(t, lab, "a")
	a.Start()
	var runs atomic.Int32
	a.ext().terminator.Store(ptr(TerminateFunc(func(in admin.TerminateClientVpnConnectionsInput) (admin.TerminateClientVpnConnectionsOutput, error) {
		runs.Add(1)
		return admin.TerminateClientVpnConnectionsOutput{ConnectionStatuses: []admin.TerminateConnectionStatus{}}, nil
	})))
	ctx := context.Background()
	g, err := a.cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	put := func(id string, deadline time.Time) *mvccpb.KeyValue {
		b, _ := json.Marshal(TerminateRequest{Input: admin.TerminateClientVpnConnectionsInput{Username: "alice"}, Requester: "b",
			Deadline: deadline.UTC().Format(time.RFC3339Nano)})
		key := a.keys.terminateFor("a") + id
		if _, err := a.cli.Put(ctx, key, string(b), clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
		r, err := a.cli.Get(ctx, key)
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("get %s: %v", key, err)
		}
		return r.Kvs[0]
	}
	seen := make(map[string]time.Time)
	kv := put("r1", time.Now().Add(time.Minute))
	a.handleTerminate(kv, seen)
	a.handleTerminate(kv, seen)
	if runs.Load() != 1 {
		t.Errorf("a request seen twice ran %d times; want once", runs.Load())
	}
	if r, err := a.cli.Get(ctx, a.keys.terminated("r1")); err != nil || len(r.Kvs) != 1 || r.Kvs[0].Lease != int64(g.ID) {
		t.Errorf("answer of r1: %v (%v); want one under the request's lease", r, err)
	}

	a.handleTerminate(put("r2", time.Now().Add(-time.Second)), seen)
	if runs.Load() != 1 {
		t.Errorf("a request past its deadline ran")
	}
	r, err := a.cli.Get(ctx, a.keys.terminateFor("a"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || r.Count != 0 {
		t.Errorf("%d requests left (%v); want the answered and the late one deleted", r.Count, err)
	}
	if r, err := a.cli.Get(ctx, a.keys.terminated("r2")); err != nil || len(r.Kvs) != 0 {
		t.Errorf("a late request was answered: %v (%v)", r.Kvs, err)
	}

	// A request without a lease is refused: its answer would never go.
	key := a.keys.terminateFor("a") + "r3"
	if _, err := a.cli.Put(ctx, key, `{"input":{"Username":"x"},"deadline":"2999-01-01T00:00:00Z"}`); err != nil {
		t.Fatal(err)
	}
	gr, _ := a.cli.Get(ctx, key)
	a.handleTerminate(gr.Kvs[0], seen)
	if runs.Load() != 1 || a.BadTerminateRequests() != 1 {
		t.Errorf("a request without a lease: %d runs, %d bad; want it refused", runs.Load(), a.BadTerminateRequests())
	}
}

func ptr[T any](v T) *T { return &v }

func TestUserLimitAcrossNodes(t *testing.T) {
	t.Parallel()
	_, _, b, ea, eb := twoNodes(t, 2)
	t0 := time.Now().Add(-time.Hour)
	ea.connect("cvpn-connection-000000000000000a1", "alice", "alice", t0)
	ea.connect("cvpn-connection-000000000000000a2", "alice", "alice", t0.Add(time.Minute))
	ea.connect("cvpn-connection-000000000000000a3", "carol", "carol", t0)
	eventually(t, "b lists a's sessions", func() bool { return len(listed(t, b)) == 3 })
	// A third session of alice's, on b: her oldest, on a, goes.
	eb.connect("cvpn-connection-000000000000000b1", "alice", "alice", t0.Add(2*time.Minute))
	eventually(t, "alice's oldest session on a ends", func() bool {
		_, ok := ea.reasonOf("cvpn-connection-000000000000000a1")
		return ok
	})
	if r, _ := ea.reasonOf("cvpn-connection-000000000000000a1"); r != LimitReason {
		t.Errorf("ended with reason %q; want %q", r, LimitReason)
	}
	if got, want := ea.ids(), []string{"cvpn-connection-000000000000000a2", "cvpn-connection-000000000000000a3"}; !slices.Equal(got, want) {
		t.Errorf("a holds %v; want %v", got, want)
	}
	if got := eb.ids(); !slices.Equal(got, []string{"cvpn-connection-000000000000000b1"}) {
		t.Errorf("b holds %v; want its new session kept", got)
	}
	eventually(t, "a's list has alice's two sessions and carol's", func() bool {
		return slices.Equal(listed(t, b), []string{"a/cvpn-connection-000000000000000a2", "a/cvpn-connection-000000000000000a3"})
	})

	// A session on b that is older than a's (by its establishment time) is the one that goes,
	// whichever node checks.
	eb.connect("cvpn-connection-000000000000000b0", "alice", "alice", t0.Add(30*time.Second))
	eventually(t, "the oldest of alice's three ends, on b itself", func() bool {
		r, ok := eb.reasonOf("cvpn-connection-000000000000000b0")
		return ok && r == LimitReason
	})
	if got := ea.ids(); len(got) != 2 {
		t.Errorf("a holds %v; want alice's newer session and carol's kept", got)
	}
}

// After etcd went away and came back, the nodes hold new leases: the publisher republishes
// what the engine still holds, and the terminate watcher, re-established, answers again.
func TestAfterEtcdRestart(t *testing.T) {
	t.Parallel()
	lab, a, b, ea, _ := twoNodes(t, 0)
	ea.connect("cvpn-connection-000000000000000a1", "alice", "alice", time.Now())
	eventually(t, "b lists a's session", func() bool { return len(listed(t, b)) == 1 })
	lease := a.leaseID()
	lab.Member(0).Stop()
	eventually(t, "a loses its lease", func() bool { return a.leaseID() != lease })
	lab.Member(0).Start()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := lab.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a holds a new lease", func() bool { id := a.leaseID(); return id != 0 && id != lease })
	eventually(t, "b lists a's session again, under a's new lease", func() bool {
		r, err := b.cli.Get(ctx, b.keys.session("a", "cvpn-connection-000000000000000a1"))
		return err == nil && len(r.Kvs) == 1 && r.Kvs[0].Lease == int64(a.leaseID())
	})
	out, err := b.Terminate(ctx, "a", admin.TerminateClientVpnConnectionsInput{Username: "alice"})
	if err != nil || len(out.ConnectionStatuses) != 1 {
		t.Fatalf("terminate after the restart: %+v, %v", out, err)
	}
	eventually(t, "the terminated session leaves the list", func() bool { return len(listed(t, b)) == 0 })
}
