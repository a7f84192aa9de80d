package cluster

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/endpoint/admin"
	"github.com/cvpn/cvpn/internal/etcdlab"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/session"
)

// testTTL is the node lease of these tests: short, so that a dead node's keys go soon.
const testTTL = 3 * time.Second

// joinNode joins a node named name to lab's etcd and starts it; it leaves when the test ends
// (unless kill took it down first).
func joinNode(t *testing.T, lab *etcdlab.Cluster, name string) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := Join(ctx, Config{Endpoints: lab.Endpoints(), Node: name, PublicAddress: name + ".example", TTL: testTTL})
	if err != nil {
		t.Fatalf("join %s: %v", name, err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// kill stops n as a crash would: no more renewals, and its lease is not revoked.
func kill(n *Node) {
	n.cancel()
	if n.started {
		<-n.done
	}
	_ = n.store.Close()
	_ = n.cli.Close()
}

// fakeEngine is an engine's sessions: the publisher's clients, and a terminator and replacer
// that end sessions from the slice, telling the publisher as the engine would.
type fakeEngine struct {
	mu       sync.Mutex
	sessions []tunnel.Status
	// ended records each ended session's id and reason.
	ended map[string]string
	pub   *Publisher
	// silent: changes are not told to the publisher (a dropped event).
	silent bool
}

// twoNodes starts a one-member etcd with nodes a and b joined to it, each with a fake engine
// (max_connections_per_user limit), and starts both.
func twoNodes(t *testing.T, limit int) (lab *etcdlab.Cluster, a, b *Node, ea, eb *fakeEngine) {
	t.Helper()
	lab = etcdlab.Start(t, etcdlab.Options{Members: 1})
	a, b = joinNode(t, lab, "a"), joinNode(t, lab, "b")
	ea, eb = newFakeEngine(a, limit), newFakeEngine(b, limit)
	a.Start()
	b.Start()
	return lab, a, b, ea, eb
}

func newFakeEngine(n *Node, limit int) *fakeEngine {
	e := &fakeEngine{ended: make(map[string]string)}
	e.pub = n.Publisher(toConn, e.clients, func() int { return limit })
	n.SetTerminator(e.terminate)
	n.SetReplacer(e.replace)
	return e
}

func toConn(st tunnel.Status) admin.Connection {
	return admin.Connection{ConnectionID: st.ConnectionID, Username: identityOf(st.Info), CommonName: st.CommonName,
		ConnectionEstablishedTime: st.Established.UTC().Format(time.DateTime),
		Status:                    admin.Status{Code: admin.StatusActive}}
}

func (e *fakeEngine) connect(id, user, cn string, est time.Time) {
	st := tunnel.Status{Info: &tunnel.Info{ConnectionID: id, User: user, CommonName: cn, Established: est}}
	e.mu.Lock()
	e.sessions = append(e.sessions, st)
	silent := e.silent
	e.mu.Unlock()
	if !silent {
		e.pub.Connected(st)
	}
}

func (e *fakeEngine) end(match func(*tunnel.Info) bool, reason string) []tunnel.Status {
	e.mu.Lock()
	var gone []tunnel.Status
	e.sessions = slices.DeleteFunc(e.sessions, func(st tunnel.Status) bool {
		if match(st.Info) {
			gone = append(gone, st)
			e.ended[st.ConnectionID] = reason
			return true
		}
		return false
	})
	silent := e.silent
	e.mu.Unlock()
	if !silent {
		for _, st := range gone {
			e.pub.Disconnected(st, session.End{Time: time.Now(), Reason: reason})
		}
	}
	return gone
}

func (e *fakeEngine) disconnect(id string) {
	e.end(func(i *tunnel.Info) bool { return i.ConnectionID == id }, "exit")
}

func (e *fakeEngine) clients() []tunnel.Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.sessions)
}

func (e *fakeEngine) ids() []string {
	var ids []string
	for _, st := range e.clients() {
		ids = append(ids, st.ConnectionID)
	}
	slices.Sort(ids)
	return ids
}

func (e *fakeEngine) reasonOf(id string) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.ended[id]
	return r, ok
}

func (e *fakeEngine) terminate(in admin.TerminateClientVpnConnectionsInput) (admin.TerminateClientVpnConnectionsOutput, error) {
	gone := e.end(func(i *tunnel.Info) bool {
		if in.ConnectionID != "" {
			return i.ConnectionID == in.ConnectionID
		}
		return identityOf(i) == in.Username
	}, "terminated by the administrator")
	out := admin.TerminateClientVpnConnectionsOutput{Username: in.Username, ConnectionStatuses: []admin.TerminateConnectionStatus{}}
	for _, st := range gone {
		out.ConnectionStatuses = append(out.ConnectionStatuses, admin.TerminateConnectionStatus{ConnectionID: st.ConnectionID,
			PreviousStatus: admin.Status{Code: admin.StatusActive}, CurrentStatus: admin.Status{Code: admin.StatusTerminating}})
	}
	if in.ConnectionID != "" && len(gone) == 0 {
		return out, &admin.Error{Code: "InvalidClientVpnConnection.IdNotFound", Message: "no connection " + in.ConnectionID}
	}
	return out, nil
}

func (e *fakeEngine) replace(id, reason string) bool {
	return len(e.end(func(i *tunnel.Info) bool { return i.ConnectionID == id }, reason)) > 0
}

// eventually waits until cond holds, failing the test if it never does within a generous
// bound (this asserts an outcome, not a duration).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listed returns the connection ids n lists from the other nodes, as "node/id", sorted.
func listed(t *testing.T, n *Node) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := n.Connections(ctx)
	if err != nil {
		t.Fatalf("%s: connections: %v", n.Name(), err)
	}
	var out []string
	for _, c := range cs {
		out = append(out, c.Cvpn.Node+"/"+c.ConnectionID)
	}
	slices.Sort(out)
	return out
}

func nodes(t *testing.T, n *Node) map[string]admin.ClusterNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ns, err := n.Nodes(ctx)
	if err != nil {
		t.Fatalf("nodes: %v", err)
	}
	if !slices.IsSortedFunc(ns, func(a, b admin.ClusterNode) int { return cmpString(a.Name, b.Name) }) {
		t.Errorf("nodes not sorted by name: %+v", ns)
	}
	m := make(map[string]admin.ClusterNode)
	for _, cn := range ns {
		m[cn.Name] = cn
	}
	return m
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestPublishListAndLeave(t *testing.T) {
	t.Parallel()
	_, a, b, ea, eb := twoNodes(t, 0)
	now := time.Now()
	ea.connect("cvpn-connection-000000000000000a1", "alice", "alice", now)
	ea.connect("cvpn-connection-000000000000000a2", "", "device-7", now)
	ea.connect("cvpn-connection-000000000000000a3", "bob", "", now)
	eb.connect("cvpn-connection-000000000000000b1", "carol", "carol", now)

	want := []string{"a/cvpn-connection-000000000000000a1", "a/cvpn-connection-000000000000000a2", "a/cvpn-connection-000000000000000a3"}
	eventually(t, "b lists a's three sessions", func() bool { return slices.Equal(listed(t, b), want) })
	eventually(t, "a lists b's session and not its own", func() bool {
		return slices.Equal(listed(t, a), []string{"b/cvpn-connection-000000000000000b1"})
	})
	ctx := context.Background()
	cs, err := b.Connections(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.ConnectionID == "cvpn-connection-000000000000000a2" && (c.Username != "device-7" || c.Status.Code != admin.StatusActive) {
			t.Errorf("a certificate-only session is listed as %+v; want its common name as the user", c)
		}
	}

	// What cannot be decoded is skipped and counted.
	if _, err := a.cli.Put(ctx, a.keys.session("z", "cvpn-connection-0000000000000bad1"), "{not json"); err != nil {
		t.Fatal(err)
	}
	if got := listed(t, b); !slices.Equal(got, want) || b.MalformedSessions() != 1 {
		t.Errorf("with a malformed entry b lists %v and counts %d malformed; want %v and 1", got, b.MalformedSessions(), want)
	}
	if _, err := a.cli.Delete(ctx, a.keys.session("z", "cvpn-connection-0000000000000bad1")); err != nil {
		t.Fatal(err)
	}

	ea.disconnect("cvpn-connection-000000000000000a2")
	eventually(t, "a disconnected session leaves b's list", func() bool {
		return slices.Equal(listed(t, b), []string{want[0], want[2]})
	})
	ns := nodes(t, b)
	if got := ns["a"]; !got.Alive || got.Connections != 2 || got.PublicAddress != "a.example" {
		t.Errorf("node a described as %+v; want alive with 2 connections", got)
	}
	if got := ns["b"]; !got.Alive || got.Connections != 1 {
		t.Errorf("node b described as %+v; want alive with 1 connection", got)
	}
	users, err := b.cli.Get(ctx, b.keys.users(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || users.Count != 3 {
		t.Errorf("the user index holds %d entries (%v); want 3", users.Count, err)
	}

	// Leaving revokes the lease: the sessions go at once, not a TTL later.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := listed(t, b); len(got) != 0 {
		t.Errorf("after a left, b lists %v; want nothing", got)
	}
	if got := nodes(t, b)["a"]; got.Alive || got.Connections != 0 || got.Name != "a" {
		t.Errorf("after a left, it is described as %+v; want a known node that is not alive", got)
	}
}

func TestKilledNodeSessionsExpire(t *testing.T) {
	t.Parallel()
	_, a, b, ea, _ := twoNodes(t, 0)
	ea.connect("cvpn-connection-000000000000000a1", "alice", "alice", time.Now())
	eventually(t, "b lists a's session", func() bool { return len(listed(t, b)) == 1 })
	kill(a)
	// Nothing revoked the lease: the session is still listed until etcd expires it.
	if got := listed(t, b); len(got) != 1 {
		t.Fatalf("right after a died, b lists %v; want its session until the lease expires", got)
	}
	eventually(t, "a's sessions expire with its lease", func() bool { return len(listed(t, b)) == 0 })
	if got := nodes(t, b)["a"]; got.Alive {
		t.Errorf("a dead node is described as alive: %+v", got)
	}
}

func TestResyncRepairsDroppedEvents(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	a, b := joinNode(t, lab, "a"), joinNode(t, lab, "b")
	ea := newFakeEngine(a, 0)
	a.Start()
	b.Start()
	now := time.Now()
	// More sessions than one transaction carries, all queued at once.
	var want []string
	for i := range 150 {
		id := fmt.Sprintf("cvpn-connection-%017d", i)
		ea.connect(id, fmt.Sprintf("user%d", i%7), "", now)
		want = append(want, "a/"+id)
	}
	slices.Sort(want)
	eventually(t, "b lists a's 150 sessions", func() bool { return slices.Equal(listed(t, b), want) })

	// Events the publisher never heard of (as if dropped): a resync repairs both ways.
	ea.mu.Lock()
	ea.silent = true
	ea.mu.Unlock()
	ea.disconnect(fmt.Sprintf("cvpn-connection-%017d", 0))
	ea.connect("cvpn-connection-0000000000000new1", "dora", "", now)
	want = append(slices.Clone(want[1:]), "a/cvpn-connection-0000000000000new1")
	slices.Sort(want)
	ea.pub.nudge()
	eventually(t, "a resync publishes the engine's list", func() bool { return slices.Equal(listed(t, b), want) })
	users, err := b.cli.Get(context.Background(), b.keys.users(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || users.Count != 150 {
		t.Errorf("the user index holds %d entries (%v); want 150", users.Count, err)
	}
}

func TestOpBatchOneOperationPerKey(t *testing.T) {
	t.Parallel()
	var b opBatch
	b.add("k1", clientv3.OpPut("k1", "v"))
	b.add("k2", clientv3.OpPut("k2", "v"))
	b.add("k1", clientv3.OpDelete("k1"))
	if b.len() != 2 || !b.ops()[0].IsDelete() || !b.ops()[1].IsPut() {
		t.Errorf("batch holds %d ops (first delete %v); want k1's delete replacing its put, then k2's put", b.len(), b.ops()[0].IsDelete())
	}
}

func TestNodeOfSession(t *testing.T) {
	t.Parallel()
	for key, want := range map[string]string{
		"/cvpn/sessions/a/cvpn-connection-1": "a",
		"/cvpn/sessions/a/":                  "",
		"/cvpn/sessions//x":                  "",
		"/cvpn/sessions/a/b/c":               "",
		"/other/a/x":                         "",
	} {
		if got := nodeOfSession(key, "/cvpn/sessions/"); got != want {
			t.Errorf("nodeOfSession(%q) = %q; want %q", key, got, want)
		}
	}
}

// Closing the node ends the publisher's, the limit checker's and the terminate watcher's
// goroutines.
func TestCloseEndsGoroutines(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	a := joinNode(t, lab, "a")
	ea := newFakeEngine(a, 1)
	a.Start()
	ea.connect("cvpn-connection-000000000000000a1", "alice", "alice", time.Now())
	ours := func() []string {
		buf := make([]byte, 1<<20)
		for {
			// Every goroutine's stack, whole: a cut dump could miss one.
			if n := runtime.Stack(buf, true); n < len(buf) {
				buf = buf[:n]
				break
			}
			buf = make([]byte, 2*len(buf))
		}
		var found []string
		for _, fn := range []string{"cluster.(*Publisher).write", "cluster.(*Publisher).enforce", "cluster.(*Node).watchTerminate"} {
			if strings.Contains(string(buf), fn) {
				found = append(found, fn)
			}
		}
		return found
	}
	eventually(t, "the writer, the limit checker and the watcher run", func() bool { return len(ours()) == 3 })
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the node's goroutines end", func() bool { return len(ours()) == 0 })
}
