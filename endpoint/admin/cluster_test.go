package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/tunnel"
)

// fakeNode is another node of a fakeCluster: its own Source over its own engine, so that what
// it publishes is Published and what it does for a terminate request is TerminateLocal, as
// package cluster wires them.
type fakeNode struct {
	name    string
	engine  *fakeEngine
	history *History
	src     *Source
	// silent never answers a terminate request (it stays queued); lost cannot be asked (the
	// request is never stored); refuse answers with an error of its own.
	silent, lost bool
	refuse       *Error
}

// fakeCluster is an in-memory Cluster: the other nodes are fakeNodes.
type fakeCluster struct {
	name string

	mu     sync.Mutex
	others []*fakeNode
	// extra is published besides the nodes' sessions (by hand: malformed ones).
	extra []Connection
	// listErr fails Connections, nodesErr Nodes (etcd unreachable).
	listErr, nodesErr error
	// queued are the requests left for silent nodes; asked every node asked.
	queued []string
	asked  []string
	nodes  []ClusterNode
}

func (f *fakeCluster) Node() string { return f.name }

func (f *fakeCluster) Connections(context.Context) ([]Connection, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.listErr != nil {
		return nil, f.listErr
	}
	var out []Connection
	for _, n := range f.others {
		for _, st := range n.engine.Clients() {
			out = append(out, n.src.Published(st))
		}
	}
	return append(out, f.extra...), nil
}

func (f *fakeCluster) Terminate(_ context.Context, node string, in TerminateClientVpnConnectionsInput) (TerminateClientVpnConnectionsOutput, error) {
	f.mu.Lock()
	f.asked = append(f.asked, node)
	var n *fakeNode
	for _, x := range f.others {
		if x.name == node {
			n = x
		}
	}
	f.mu.Unlock()
	switch {
	case n == nil:
		return TerminateClientVpnConnectionsOutput{}, fmt.Errorf("no node %s", node)
	case n.silent:
		f.mu.Lock()
		f.queued = append(f.queued, node+":"+in.ConnectionID+in.Username)
		f.mu.Unlock()
		return TerminateClientVpnConnectionsOutput{}, fmt.Errorf("node %s did not answer: %w", node, context.DeadlineExceeded)
	case n.lost:
		return TerminateClientVpnConnectionsOutput{}, fmt.Errorf("etcd: no leader: %w", ErrNotQueued)
	case n.refuse != nil:
		return TerminateClientVpnConnectionsOutput{}, n.refuse
	}
	return n.src.TerminateLocal(in)
}

func (f *fakeCluster) Nodes(context.Context) ([]ClusterNode, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.nodes), f.nodesErr
}

// Connection ids of the cluster lab: carol on b, dave on each of a, b and c.
const (
	idCarolB = "cvpn-connection-0000000000000b001"
	idDaveB  = "cvpn-connection-0000000000000b002"
	idDaveC  = "cvpn-connection-0000000000000c001"
	idDaveA  = "cvpn-connection-0000000000000a003"
)

// clusterOrder is the lab's connections in the listing's order: established to the second,
// then by id (dave on c, at 12:00:01.7, comes before alice at 12:00:01, by id).
var clusterOrder = []string{idCarolB, idDaveC, idAlice, idBob, idDaveB, idDaveA}

// clusterLab is an API lab on node a (alice, bob, dave) of a cluster whose nodes b (carol,
// dave) and c (dave) are fakeNodes.
func clusterLab(t *testing.T) (l *apiLab, fc *fakeCluster, b, c *fakeNode) {
	t.Helper()
	l = newAPILab(t)
	at := func(st tunnel.Status, d time.Duration) tunnel.Status { st.Info.Established = t0.Add(d); return st }
	l.engine.sessions = append(l.engine.sessions, at(status(idDaveA, "dave", "dave", "10.2.0.4", "192.0.2.12:50003", 7), 3*time.Second))
	fc = &fakeCluster{name: "a"}
	node := func(name string, sessions ...tunnel.Status) *fakeNode {
		clock := func() time.Time { return l.now }
		h := NewHistory(clock)
		n := &fakeNode{name: name, history: h, engine: &fakeEngine{history: h, now: clock, sessions: sessions}}
		n.src = &Source{EndpointID: "cvpn-endpoint-0000000000000000" + name, Engine: n.engine, Pool: fakePool{}, History: h,
			Started: t0, Now: clock, Cluster: &fakeCluster{name: name}}
		fc.others = append(fc.others, n)
		return n
	}
	b = node("b", at(status(idCarolB, "carol", "carol", "10.2.4.2", "192.0.2.20:40000", 100), 900*time.Millisecond),
		at(status(idDaveB, "dave", "dave", "10.2.4.3", "192.0.2.21:40000", 200), 2*time.Second))
	c = node("c", at(status(idDaveC, "dave", "dave", "10.2.8.2", "192.0.2.30:40000", 300), 1700*time.Millisecond))
	l.handler.src.Cluster = fc
	return l, fc, b, c
}

func nodesOf(cs []Connection) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Cvpn.Node)
	}
	return out
}

// TestClusterDescribeMerge: the other nodes' published connections are listed with this
// node's, each with its node, in one order (established to the second, then id), as this
// endpoint's; a page of any size walks them all once; the filters apply to all.
func TestClusterDescribeMerge(t *testing.T) {
	l, _, _, _ := clusterLab(t)
	ctx := context.Background()
	out, err := l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{})
	if err != nil || out.Cvpn != nil || !slices.Equal(ids(out.Connections), clusterOrder) {
		t.Fatalf("list: %q %+v %v; want %q", ids(out.Connections), out.Cvpn, err, clusterOrder)
	}
	if got, want := nodesOf(out.Connections), []string{"b", "c", "a", "a", "b", "a"}; !slices.Equal(got, want) {
		t.Errorf("nodes %q, want %q", got, want)
	}
	for _, c := range out.Connections {
		if c.ClientVpnEndpointID != "cvpn-endpoint-0123456789abcdef0" || c.Status.Code != StatusActive {
			t.Errorf("%s: endpoint %s, status %v", c.ConnectionID, c.ClientVpnEndpointID, c.Status)
		}
	}
	carol := out.Connections[0]
	if carol.Username != "carol" || carol.ClientIP != "10.2.4.2" || carol.IngressBytes != "100" || carol.ConnectionEstablishedTime != "2026-11-29 12:00:00" ||
		carol.Cvpn.DeviceIP != "192.0.2.20" || carol.Cvpn.Cipher != "AES-256-GCM" {
		t.Errorf("carol as published: %+v", carol)
	}
	// Published is exactly what this node's own Describe lists for a session.
	alice := l.engine.Clients()[0]
	if got := l.handler.src.Published(alice); got.ConnectionID != idAlice || !equalConnection(got, out.Connections[2]) {
		t.Errorf("Published(alice) = %+v\nDescribe lists %+v", got, out.Connections[2])
	}
	for _, max := range []int{5, 6} {
		var got []string
		in := DescribeClientVpnConnectionsInput{MaxResults: intp(max)}
		for range len(clusterOrder) {
			page, err := l.client.DescribeClientVpnConnections(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, ids(page.Connections)...)
			if in.NextToken = page.NextToken; in.NextToken == "" {
				break
			}
		}
		if !slices.Equal(got, clusterOrder) {
			t.Errorf("MaxResults %d: pages give %q, want %q", max, got, clusterOrder)
		}
	}
	for _, tc := range []struct {
		name    string
		filters []Filter
		want    []string
	}{
		{"username", []Filter{{Name: "username", Values: []string{"dave"}}}, []string{idDaveC, idDaveB, idDaveA}},
		{"remote id", []Filter{{Name: "connection-id", Values: []string{idCarolB, idBob}}}, []string{idCarolB, idBob}},
		{"and", []Filter{{Name: "username", Values: []string{"carol"}}, {Name: "connection-id", Values: []string{idDaveB}}}, nil},
	} {
		out, err := l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{Filters: tc.filters})
		if err != nil || !slices.Equal(ids(out.Connections), tc.want) {
			t.Errorf("%s: %q %v, want %q", tc.name, ids(out.Connections), err, tc.want)
		}
	}
}

func equalConnection(a, b Connection) bool { return reflect.DeepEqual(a, b) }

// TestClusterDescribePartial: when the other nodes' connections cannot be read, the answer is
// this node's, flagged Partial with the reason, on the wire under CvpnExtensions; the endpoint's
// count says so too.
func TestClusterDescribePartial(t *testing.T) {
	l, fc, _, _ := clusterLab(t)
	fc.listErr = errors.New("etcd: context deadline exceeded")
	code, m := l.raw("DescribeClientVpnConnections", "")
	ext, _ := m["CvpnExtensions"].(map[string]any)
	if code != http.StatusOK || !slices.Equal(keys(m), []string{"Connections", "CvpnExtensions"}) || ext["Partial"] != true ||
		!strings.Contains(ext["Reason"].(string), "etcd: context deadline exceeded") || len(m["Connections"].([]any)) != 3 {
		t.Fatalf("%d %v", code, m)
	}
	out, err := l.client.DescribeAllClientVpnConnections(context.Background(), DescribeClientVpnConnectionsInput{MaxResults: intp(5)})
	if err != nil || out.Cvpn == nil || !out.Cvpn.Partial || !slices.Equal(ids(out.Connections), []string{idAlice, idBob, idDaveA}) {
		t.Errorf("all pages: %q %+v %v", ids(out.Connections), out.Cvpn, err)
	}
	eps, err := l.client.DescribeClientVpnEndpoints(context.Background(), DescribeClientVpnEndpointsInput{})
	if err != nil || eps.ClientVpnEndpoints[0].Cvpn.ActiveConnections != 3 || !strings.Contains(eps.ClientVpnEndpoints[0].Cvpn.PartialReason, "etcd") {
		t.Errorf("endpoint: %+v %v", eps, err)
	}
}

// TestClusterDescribeBounds: what another node published is listed only when well formed
// (id, node, status, counters, addresses, no control characters), never when it claims this
// node or a connection this node holds, and at most the bound of them; what is left out is
// flagged.
func TestClusterDescribeBounds(t *testing.T) {
	l, fc, b, _ := clusterLab(t)
	good := b.src.Published(b.engine.Clients()[0])
	bad := func(edit func(c *Connection)) Connection {
		c := good
		c.ConnectionID = "cvpn-connection-00000000000000bad"
		edit(&c)
		return c
	}
	fc.extra = []Connection{
		bad(func(c *Connection) { c.ConnectionID = "cvpn-connection-XYZ" }),
		bad(func(c *Connection) { c.Username = "mallory\x1b[2J" }),
		bad(func(c *Connection) { c.Cvpn.Node = "" }),
		bad(func(c *Connection) { c.IngressBytes = "-1" }),
		bad(func(c *Connection) { c.Status.Code = "owned" }),
		bad(func(c *Connection) { c.ClientIP = "not an address" }),
		bad(func(c *Connection) { c.ConnectionEstablishedTime = "yesterday" }),
		bad(func(c *Connection) { c.PostureComplianceStatuses = make([]string, maxRemotePosture+1) }),
		bad(func(c *Connection) { c.CommonName = strings.Repeat("x", maxRemoteField+1) }),
		// Stale, not malformed: this node's own connection published by another, a connection
		// this node published before a restart, and a second copy of carol's.
		bad(func(c *Connection) { c.ConnectionID, c.Cvpn.Node = idAlice, "c" }),
		bad(func(c *Connection) { c.ConnectionID, c.Cvpn.Node = "cvpn-connection-00000000000000a0a", "a" }),
		good,
	}
	out, err := l.client.DescribeClientVpnConnections(context.Background(), DescribeClientVpnConnectionsInput{})
	if err != nil || !slices.Equal(ids(out.Connections), clusterOrder) || out.Cvpn == nil || !out.Cvpn.Partial ||
		!strings.Contains(out.Cvpn.Reason, "9 malformed") {
		t.Fatalf("%q %+v %v", ids(out.Connections), out.Cvpn, err)
	}
	if out.Connections[2].Cvpn.Node != "a" {
		t.Errorf("alice listed as %q's", out.Connections[2].Cvpn.Node)
	}
	fc.extra = nil
	l.handler.src.maxRemote = 2
	out, err = l.client.DescribeClientVpnConnections(context.Background(), DescribeClientVpnConnectionsInput{})
	if err != nil || len(out.Connections) != 3+2 || out.Cvpn == nil || !strings.Contains(out.Cvpn.Reason, "1 connections over the bound of 2") {
		t.Errorf("over the bound: %q %+v %v", ids(out.Connections), out.Cvpn, err)
	}
}

// TestClusterTerminateByID: a connection of another node is terminated by its owner (its
// TerminateLocal), and listed as terminating; this node's own never goes out; an id no node
// knows is not found; the owner's refusal is the answer.
func TestClusterTerminateByID(t *testing.T) {
	l, fc, b, _ := clusterLab(t)
	b.engine.keep = true // carol's session tears down after the answer
	ctx := context.Background()
	out, err := l.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{ConnectionID: idCarolB})
	if err != nil || len(out.ConnectionStatuses) != 1 || out.ConnectionStatuses[0].ConnectionID != idCarolB ||
		out.ConnectionStatuses[0].CurrentStatus.Code != StatusTerminating || out.Cvpn != nil {
		t.Fatalf("terminate carol: %+v %v", out, err)
	}
	if !b.history.isTerminating(idCarolB) || !slices.Equal(fc.asked, []string{"b"}) {
		t.Errorf("b did not terminate carol (asked %q)", fc.asked)
	}
	list, err := l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{Filters: []Filter{{Name: "connection-id", Values: []string{idCarolB}}}})
	if err != nil || len(list.Connections) != 1 || list.Connections[0].Status.Code != StatusTerminating {
		t.Errorf("carol listed %+v %v", list, err)
	}
	out, err = l.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{ConnectionID: idAlice})
	if err != nil || len(out.ConnectionStatuses) != 1 || len(fc.asked) != 1 {
		t.Errorf("terminate alice: %+v %v, asked %q", out, err, fc.asked)
	}
	if _, err := l.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{ConnectionID: "cvpn-connection-00000000000000000"}); !isCode(err, codeConnectionNotFound) {
		t.Errorf("unknown id: %v", err)
	}
	b.refuse = &Error{Code: "IncorrectState", Message: "node b is stopping"}
	if _, err := l.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{ConnectionID: idDaveB}); !isCode(err, "IncorrectState") {
		t.Errorf("refused by b: %v", err)
	}
	fc.listErr = errors.New("etcd down")
	code, m := l.raw("TerminateClientVpnConnections", `{"ConnectionId": "`+idDaveB+`"}`)
	if e, _ := m["Error"].(map[string]any); code != http.StatusServiceUnavailable || e["Code"] != codeUnavailable || !strings.Contains(e["Message"].(string), "etcd down") {
		t.Errorf("without the cluster's list: %d %v", code, m)
	}
}

// TestClusterTerminateByUsername: a user's sessions go on this node and on every other node
// that published one, the statuses merged; a node that does not answer has its sessions
// reported (and listed) terminating, queued for it; one that cannot be asked, or refuses, has
// them failed-to-terminate; without the cluster's list only this node's go, flagged.
func TestClusterTerminateByUsername(t *testing.T) {
	l, fc, b, c := clusterLab(t)
	ctx := context.Background()
	out, err := l.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{Username: "dave"})
	var got []string
	for _, s := range out.ConnectionStatuses {
		got = append(got, s.ConnectionID+" "+s.CurrentStatus.Code)
	}
	want := []string{idDaveA + " terminating", idDaveB + " terminating", idDaveC + " terminating"}
	if err != nil || !slices.Equal(got, want) || out.Username != "dave" {
		t.Fatalf("dave: %q %v, want %q", got, err, want)
	}
	if slices.Sort(fc.asked); !slices.Equal(fc.asked, []string{"b", "c"}) {
		t.Errorf("asked %q, want b and c (not b for carol)", fc.asked)
	}
	for _, n := range []*fakeNode{b, c} {
		for _, st := range n.engine.Clients() {
			if st.User == "dave" {
				t.Errorf("node %s kept dave's %s", n.name, st.ConnectionID)
			}
		}
	}

	// carol again, on b, with c silent and b unreachable in turn.
	l2, fc2, b2, c2 := clusterLab(t)
	c2.silent = true
	out, err = l2.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{Username: "dave"})
	if err != nil || len(out.ConnectionStatuses) != 3 {
		t.Fatalf("with c silent: %+v %v", out, err)
	}
	q := out.ConnectionStatuses[2]
	if q.ConnectionID != idDaveC || q.PreviousStatus.Code != StatusActive || q.CurrentStatus.Code != StatusTerminating ||
		q.CurrentStatus.Message != queuedMessage("c") || !slices.Equal(fc2.queued, []string{"c:dave"}) {
		t.Errorf("queued for c: %+v (queued %q)", q, fc2.queued)
	}
	list, err := l2.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{Filters: []Filter{{Name: "connection-id", Values: []string{idDaveC}}}})
	if err != nil || len(list.Connections) != 1 || list.Connections[0].Status.Code != StatusTerminating || !strings.Contains(list.Connections[0].Status.Message, "queued for node c") {
		t.Errorf("dave on c listed %+v %v", list, err)
	}
	b2.lost = true
	out, err = l2.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{Username: "carol"})
	if err != nil || len(out.ConnectionStatuses) != 1 || out.ConnectionStatuses[0].CurrentStatus.Code != StatusFailedToTerminate ||
		!strings.Contains(out.ConnectionStatuses[0].CurrentStatus.Message, "node b was not asked") {
		t.Errorf("b unreachable: %+v %v", out, err)
	}
	b2.lost, b2.refuse = false, &Error{Code: "IncorrectState", Message: "stopping"}
	out, err = l2.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{Username: "carol"})
	if err != nil || len(out.ConnectionStatuses) != 1 || out.ConnectionStatuses[0].CurrentStatus.Code != StatusFailedToTerminate ||
		out.ConnectionStatuses[0].CurrentStatus.Message != "node b refused: IncorrectState: stopping" {
		t.Errorf("b refuses: %+v %v", out, err)
	}

	l3, fc3, _, _ := clusterLab(t)
	fc3.listErr = errors.New("etcd down")
	out, err = l3.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{Username: "dave"})
	if err != nil || len(out.ConnectionStatuses) != 1 || out.ConnectionStatuses[0].ConnectionID != idDaveA || out.Cvpn == nil ||
		!out.Cvpn.Partial || !strings.Contains(out.Cvpn.Reason, "etcd down") || len(fc3.asked) != 0 {
		t.Errorf("without the cluster's list: %+v %v", out, err)
	}
}

// TestClusterTerminateAnswerChecked: statuses in a node's answer that are not well formed are
// dropped.
func TestClusterTerminateAnswerChecked(t *testing.T) {
	l, fc, _, _ := clusterLab(t)
	l.handler.src.Cluster = &bogusCluster{fakeCluster: fc}
	out, err := l.client.TerminateClientVpnConnections(context.Background(), TerminateClientVpnConnectionsInput{Username: "carol"})
	if err != nil || len(out.ConnectionStatuses) != 1 || out.ConnectionStatuses[0].ConnectionID != idCarolB {
		t.Errorf("%+v %v", out, err)
	}
}

// bogusCluster answers every terminate request with carol's status and malformed ones.
type bogusCluster struct{ *fakeCluster }

func (f *bogusCluster) Terminate(context.Context, string, TerminateClientVpnConnectionsInput) (TerminateClientVpnConnectionsOutput, error) {
	ok := TerminateConnectionStatus{ConnectionID: idCarolB, PreviousStatus: Status{Code: StatusActive}, CurrentStatus: Status{Code: StatusTerminating}}
	badID, badCode, badMsg := ok, ok, ok
	badID.ConnectionID = "../../etc"
	badCode.CurrentStatus.Code = "gone"
	badMsg.CurrentStatus.Message = "\x1b]0;owned\x07"
	return TerminateClientVpnConnectionsOutput{ConnectionStatuses: []TerminateConnectionStatus{ok, badID, badCode, badMsg}}, nil
}

// TestDescribeCvpnCluster: a single node says it is not clustered; a node of a cluster names
// itself and every node, by name, leaving out one without a proper name; etcd down is 503.
func TestDescribeCvpnCluster(t *testing.T) {
	l := newAPILab(t)
	ctx := context.Background()
	code, m := l.raw("DescribeCvpnCluster", "")
	if e, _ := m["Error"].(map[string]any); code != http.StatusBadRequest || e["Code"] != codeNotClustered || !strings.Contains(e["Message"].(string), "not clustered") {
		t.Errorf("single node: %d %v", code, m)
	}
	l, fc, _, _ := clusterLab(t)
	fc.nodes = []ClusterNode{
		{Name: "c", PublicAddress: "vpn-c.example.com", Alive: false, ConfigRevision: 7, ConfigError: "refused: nat.max_mappings: \x1b[31m", Blocks: 1},
		{Name: "a", PublicAddress: "vpn-a.example.com", Alive: true, ConfigRevision: 9, Connections: 3, Blocks: 2},
		{Name: "bad/name"},
		{Name: "b", PublicAddress: "vpn-b.example.com", Alive: true, ConfigRevision: 9, Connections: 2, Blocks: 1},
	}
	out, err := l.client.DescribeCvpnCluster(ctx, DescribeCvpnClusterInput{})
	var names []string
	for _, n := range out.Nodes {
		names = append(names, n.Name)
	}
	if err != nil || out.Node != "a" || !slices.Equal(names, []string{"a", "b", "c"}) || out.Nodes[0].Connections != 3 ||
		out.Nodes[2].ConfigError != "(malformed)" || out.Nodes[2].ConfigRevision != 7 {
		t.Errorf("%+v %v", out, err)
	}
	if _, err := l.client.DescribeCvpnCluster(ctx, DescribeCvpnClusterInput{ClientVpnEndpointID: "cvpn-endpoint-other"}); !isCode(err, "InvalidClientVpnEndpointId.NotFound") {
		t.Errorf("other endpoint: %v", err)
	}
	fc.nodesErr = errors.New("etcd down")
	code, m = l.raw("DescribeCvpnCluster", "{}")
	if code != http.StatusServiceUnavailable || m["Error"].(map[string]any)["Code"] != codeUnavailable {
		t.Errorf("etcd down: %d %v", code, m)
	}
}

// TestClusterDescribeEndpoint: on a cluster the endpoint counts every node's sessions and
// their traffic, and names this node.
func TestClusterDescribeEndpoint(t *testing.T) {
	l, _, _, _ := clusterLab(t)
	out, err := l.client.DescribeClientVpnEndpoints(context.Background(), DescribeClientVpnEndpointsInput{})
	if err != nil {
		t.Fatal(err)
	}
	e := out.ClientVpnEndpoints[0].Cvpn
	// Ingress: alice 1000, bob 5000, dave 7 here; carol 100, dave 200 on b; dave 300 on c.
	if e.ActiveConnections != 6 || e.Node != "a" || e.PartialReason != "" || e.Traffic.IngressBytes != "6607" || e.Pool.InUse != 2 {
		t.Errorf("%+v", e)
	}
}
