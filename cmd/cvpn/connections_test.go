package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint/admin"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/counters"
)

// cliEngine is an admin.Engine of two sessions; Terminate removes the matching ones.
type cliEngine struct {
	mu       sync.Mutex
	sessions []tunnel.Status
	// listings counts the calls of Clients: one per page of DescribeClientVpnConnections.
	listings int
}

func (e *cliEngine) Clients() []tunnel.Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.listings++
	return slices.Clone(e.sessions)
}

func (e *cliEngine) Terminate(match func(*tunnel.Info) bool) []tunnel.Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []tunnel.Status
	e.sessions = slices.DeleteFunc(e.sessions, func(s tunnel.Status) bool {
		if match(s.Info) {
			out = append(out, s)
			return true
		}
		return false
	})
	return out
}

func (e *cliEngine) Addrs() []netip.AddrPort {
	return []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:443")}
}
func (e *cliEngine) TCPAddrs() []netip.AddrPort { return nil }
func (e *cliEngine) Drops() map[string]uint64   { return map[string]uint64{"no_route": 7} }

type cliPool struct{}

func (cliPool) Capacity() int { return 1021 }
func (cliPool) InUse() int    { return 2 }

// adminEndpoint writes an endpoint file with its own admin.socket and serves the API there over
// a fake engine of alice's and bob's sessions.
func adminEndpoint(t *testing.T) (path string, engine *cliEngine) {
	t.Helper()
	return adminEndpointOf(t, nil)
}

// adminEndpointOf is adminEndpoint for a node of cluster (nil: a single node).
func adminEndpointOf(t *testing.T, cluster admin.Cluster) (path string, engine *cliEngine) {
	t.Helper()
	path = newEndpoint(t)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("admin: {socket: admin.sock}\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	since := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	session := func(id, user, addr string, rx uint64) tunnel.Status {
		return tunnel.Status{Info: &tunnel.Info{ConnectionID: id, User: user, CommonName: user, Address: netip.MustParseAddr(addr),
			Transport: "udp", Cipher: "AES-256-GCM", Established: since},
			Remote: netip.MustParseAddrPort("192.0.2.7:40000"), Traffic: counters.TrafficSnapshot{RxBytes: rx, TxBytes: 3 * rx, RxPackets: 4, TxPackets: 5}}
	}
	engine = &cliEngine{sessions: []tunnel.Status{
		session("cvpn-connection-aaaaaaaaaaaaaaaaa", "alice", "10.2.0.2", 2048),
		session("cvpn-connection-bbbbbbbbbbbbbbbbb", "bob", "10.2.0.3", 100),
	}}
	src := &admin.Source{EndpointID: "cvpn-endpoint-00000000000000000", Engine: engine, Pool: cliPool{},
		Endpoint: func() *config.Endpoint { return cfg }, History: admin.NewHistory(nil), Started: since, Cluster: cluster}
	srv, err := admin.Listen(cfg.Admin.Socket, admin.NewHandler(src, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return path, engine
}

// TestConnectionsList: --json prints the API's {"Connections": [...]} with AWS's names; the
// table shows one row per connection; the filters reach the API.
func TestConnectionsList(t *testing.T) {
	path, _ := adminEndpoint(t)
	code, stdout, stderr := runCmd(t, "connections", "list", "--config", path, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var out struct {
		Connections []map[string]any
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("%v in %s", err, stdout)
	}
	if len(out.Connections) != 2 || out.Connections[0]["ConnectionId"] != "cvpn-connection-aaaaaaaaaaaaaaaaa" ||
		out.Connections[0]["IngressBytes"] != "2048" || out.Connections[1]["Username"] != "bob" {
		t.Errorf("connections %v", out.Connections)
	}
	code, stdout, _ = runCmd(t, "connections", "list", "--config", path)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "CONNECTION ID") ||
		!strings.Contains(lines[1], "alice") || !strings.Contains(lines[1], "2.0 KiB") || !strings.Contains(lines[1], "192.0.2.7:40000") ||
		!strings.Contains(lines[2], "bob") || !strings.Contains(lines[2], "active") {
		t.Errorf("table (exit %d):\n%s", code, stdout)
	}
	code, stdout, _ = runCmd(t, "connections", "list", "--config", path, "--username", "bob", "--json")
	if code != 0 || !strings.Contains(stdout, "cvpn-connection-bbbbbbbbbbbbbbbbb") || strings.Contains(stdout, "alice") {
		t.Errorf("--username bob (exit %d):\n%s", code, stdout)
	}
	code, stdout, _ = runCmd(t, "connections", "list", "--config", path, "--connection-id", "cvpn-connection-aaaaaaaaaaaaaaaaa")
	if code != 0 || !strings.Contains(stdout, "alice") || strings.Contains(stdout, "bob") {
		t.Errorf("--connection-id (exit %d):\n%s", code, stdout)
	}
}

// TestConnectionsListAllPages: with more connections than the API's largest page (1000), list
// follows NextToken and prints them all, each once, in one {"Connections": [...]} without a
// NextToken.
func TestConnectionsListAllPages(t *testing.T) {
	path, engine := adminEndpoint(t)
	const n = 2345
	since := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	var sessions []tunnel.Status
	for i := range n {
		sessions = append(sessions, tunnel.Status{Info: &tunnel.Info{ConnectionID: fmt.Sprintf("cvpn-connection-%017x", i), User: "u",
			Address: netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), Transport: "udp", Established: since.Add(time.Duration(n-i) * time.Second)}})
	}
	engine.mu.Lock()
	engine.sessions, engine.listings = sessions, 0
	engine.mu.Unlock()
	code, stdout, stderr := runCmd(t, "connections", "list", "--config", path, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var out map[string]json.RawMessage
	var conns []admin.Connection
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || len(out) != 1 || json.Unmarshal(out["Connections"], &conns) != nil {
		t.Fatalf("not {\"Connections\": [...]}: %v\n%.500s", err, stdout)
	}
	seen := map[string]bool{}
	for i, c := range conns {
		if want := fmt.Sprintf("cvpn-connection-%017x", n-1-i); c.ConnectionID != want { // oldest established first
			t.Fatalf("connection %d is %s, want %s", i, c.ConnectionID, want)
		}
		seen[c.ConnectionID] = true
	}
	if len(conns) != n || len(seen) != n {
		t.Errorf("%d connections (%d distinct), want %d", len(conns), len(seen), n)
	}
	engine.mu.Lock()
	defer engine.mu.Unlock()
	if engine.listings != 3 {
		t.Errorf("%d pages asked for, want 3 of at most 1000", engine.listings)
	}
}

// TestConnectionsTerminate: --username halts the user's connections and says how each went;
// a missing or doubled selector is a usage error; no match is a failure.
func TestConnectionsTerminate(t *testing.T) {
	path, engine := adminEndpoint(t)
	code, stdout, stderr := runCmd(t, "connections", "terminate", "--config", path, "--username", "bob")
	if code != 0 || strings.TrimSpace(stdout) != "cvpn-connection-bbbbbbbbbbbbbbbbb: active -> terminating" {
		t.Errorf("exit %d\n%s%s", code, stdout, stderr)
	}
	if got := engine.Clients(); len(got) != 1 || got[0].User != "alice" {
		t.Errorf("left %v", got)
	}
	code, stdout, _ = runCmd(t, "connections", "terminate", "--config", path, "--connection-id", "cvpn-connection-aaaaaaaaaaaaaaaaa", "--json")
	var out admin.TerminateClientVpnConnectionsOutput
	if code != 0 || json.Unmarshal([]byte(stdout), &out) != nil || len(out.ConnectionStatuses) != 1 || out.ConnectionStatuses[0].CurrentStatus.Code != "terminating" {
		t.Errorf("--json (exit %d):\n%s", code, stdout)
	}
	if code, _, stderr = runCmd(t, "connections", "terminate", "--config", path); code != exitInvalid || !strings.Contains(stderr, "one of --connection-id and --username") {
		t.Errorf("no selector: exit %d %s", code, stderr)
	}
	if code, _, stderr = runCmd(t, "connections", "terminate", "--config", path, "--username", "carol"); code != exitRuntime || !strings.Contains(stderr, "carol has no active connection") {
		t.Errorf("nobody: exit %d %s", code, stderr)
	}
	if code, _, stderr = runCmd(t, "connections", "terminate", "--config", path, "--connection-id", "cvpn-connection-00000000000000000"); code != exitRuntime || !strings.Contains(stderr, "IdNotFound") {
		t.Errorf("unknown id: exit %d %s", code, stderr)
	}
}

// TestStatus: one screen with the endpoint, listeners, sessions, pool, traffic and drops.
func TestStatus(t *testing.T) {
	path, _ := adminEndpoint(t)
	code, stdout, stderr := runCmd(t, "status", "--config", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"cvpn-endpoint-00000000000000000", "available", "udp 0.0.0.0:443", "2 active (2 users)",
		"2 of 1021 addresses in use", "ingress 2.1 KiB (8 packets)", "no_route 7"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, stdout)
		}
	}
}

// TestAdminCommandsWithoutServer: with nothing serving admin.socket the commands fail with
// status 1 and say where they looked; -h exits 0.
func TestAdminCommandsWithoutServer(t *testing.T) {
	path := newEndpoint(t)
	sock := filepath.Join(filepath.Dir(path), "none.sock")
	if err := os.WriteFile(path, append(mustRead(os.ReadFile(path)), "admin: {socket: none.sock}\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"status"}, {"connections", "list"}, {"connections", "terminate", "--username", "bob"}} {
		code, _, stderr := runCmd(t, append(args, "--config", path)...)
		if code != exitRuntime || !strings.Contains(stderr, sock) {
			t.Errorf("%v: exit %d %s", args, code, stderr)
		}
	}
	for _, args := range [][]string{{"status", "-h"}, {"connections", "list", "-h"}, {"connections", "terminate", "-h"}} {
		if code, _, _ := runCmd(t, args...); code != 0 {
			t.Errorf("%v: exit %d", args, code)
		}
	}
}

func mustRead(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// cliCluster is an admin.Cluster seen from node a: node b published carol's session and
// answers terminate requests; node c published carol's other session and never answers.
type cliCluster struct {
	mu        sync.Mutex
	published []admin.Connection
	// listErr fails Connections, nodesErr Nodes (etcd unreachable).
	listErr, nodesErr error
}

func newCLICluster() *cliCluster {
	conn := func(node, id string, rx string) admin.Connection {
		return admin.Connection{ConnectionID: id, Username: "carol", CommonName: "carol", ConnectionEstablishedTime: "2026-11-29 12:00:05",
			Timestamp: "2026-11-29 12:01:00", ClientIP: "10.2.4.2", IngressBytes: rx, EgressBytes: rx, IngressPackets: "1", EgressPackets: "1",
			Status: admin.Status{Code: admin.StatusActive}, ConnectionEndTime: "-", PostureComplianceStatuses: []string{},
			Cvpn: admin.ConnectionExtensions{DeviceIP: "192.0.2.9", DevicePort: 1194, TransportProtocol: "udp", Node: node}}
	}
	return &cliCluster{published: []admin.Connection{
		conn("b", "cvpn-connection-ccccccccccccccccb", "4096"),
		conn("c", "cvpn-connection-cccccccccccccccc0", "1024"),
	}}
}

func (c *cliCluster) Node() string { return "a" }

func (c *cliCluster) Connections(context.Context) ([]admin.Connection, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.published), c.listErr
}

func (c *cliCluster) Terminate(_ context.Context, node string, in admin.TerminateClientVpnConnectionsInput) (admin.TerminateClientVpnConnectionsOutput, error) {
	if node == "c" {
		return admin.TerminateClientVpnConnectionsOutput{}, fmt.Errorf("node c did not answer: %w", context.DeadlineExceeded)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := admin.TerminateClientVpnConnectionsOutput{Username: in.Username}
	c.published = slices.DeleteFunc(c.published, func(x admin.Connection) bool {
		if x.Cvpn.Node == node && (x.ConnectionID == in.ConnectionID || x.Username == in.Username) {
			out.ConnectionStatuses = append(out.ConnectionStatuses, admin.TerminateConnectionStatus{ConnectionID: x.ConnectionID,
				PreviousStatus: admin.Status{Code: admin.StatusActive}, CurrentStatus: admin.Status{Code: admin.StatusTerminating}})
			return true
		}
		return false
	})
	return out, nil
}

func (c *cliCluster) Nodes(context.Context) ([]admin.ClusterNode, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nodesErr != nil {
		return nil, c.nodesErr
	}
	return []admin.ClusterNode{
		{Name: "a", PublicAddress: "vpn-a.example.com", Alive: true, ConfigRevision: 42, Connections: 2, Blocks: 1},
		{Name: "b", PublicAddress: "vpn-b.example.com", Alive: true, ConfigRevision: 42, Connections: 1, Blocks: 1},
		{Name: "c", PublicAddress: "vpn-c.example.com", Alive: false, ConfigRevision: 41, ConfigError: "nat.max_mappings: out of range", Connections: 1, Blocks: 2},
	}, nil
}

// TestConnectionsListCluster: on a cluster the table has a NODE column with each connection's
// node, the other nodes' connections among this node's; a list that lacks some nodes' says so
// on stderr.
func TestConnectionsListCluster(t *testing.T) {
	cl := newCLICluster()
	path, _ := adminEndpointOf(t, cl)
	code, stdout, stderr := runCmd(t, "connections", "list", "--config", path)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || stderr != "" || len(lines) != 5 || !strings.HasPrefix(lines[0], "NODE") || !strings.Contains(lines[0], "CONNECTION ID") {
		t.Fatalf("exit %d:\n%s%s", code, stdout, stderr)
	}
	for i, want := range []string{"a alice", "a bob", "c carol", "b carol"} {
		node, user, _ := strings.Cut(want, " ")
		if f := strings.Fields(lines[i+1]); f[0] != node || f[2] != user {
			t.Errorf("row %d: %q, want node %s and %s", i+1, lines[i+1], node, user)
		}
	}
	cl.mu.Lock()
	cl.listErr = fmt.Errorf("etcd: no leader")
	cl.mu.Unlock()
	code, stdout, stderr = runCmd(t, "connections", "list", "--config", path)
	if code != 0 || !strings.Contains(stderr, "partial list") || !strings.Contains(stderr, "etcd: no leader") || strings.Contains(stdout, "carol") {
		t.Errorf("partial (exit %d):\n%s%s", code, stdout, stderr)
	}
}

// TestConnectionsTerminateCluster: a user's sessions on other nodes are terminated there; one
// on a node that does not answer is printed as queued for that node.
func TestConnectionsTerminateCluster(t *testing.T) {
	path, _ := adminEndpointOf(t, newCLICluster())
	code, stdout, stderr := runCmd(t, "connections", "terminate", "--config", path, "--username", "carol")
	want := "cvpn-connection-ccccccccccccccccb: active -> terminating\n" +
		"cvpn-connection-cccccccccccccccc0: active -> terminating (the request is queued for node c, which carries it out when it sees it)\n"
	if code != 0 || stdout != want {
		t.Errorf("exit %d\n%s%s\nwant\n%s", code, stdout, stderr, want)
	}
}

// TestStatusCluster: on a cluster status names the answering node, counts the cluster's
// sessions, and shows the nodes with their address, liveness, config revision (and refusal),
// connections and blocks.
func TestStatusCluster(t *testing.T) {
	cl := newCLICluster()
	path, _ := adminEndpointOf(t, cl)
	code, stdout, stderr := runCmd(t, "status", "--config", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"a, one of a cluster", "4 active (3 users)", "2 of 1021 addresses in use"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, stdout)
		}
	}
	_, table, ok := strings.Cut(stdout, "\n\n")
	rows := strings.Split(strings.TrimSpace(table), "\n")
	if !ok || len(rows) != 4 || strings.Join(strings.Fields(rows[0]), " ") != "NODE PUBLIC ADDRESS ALIVE CONFIG REVISION CONNECTIONS BLOCKS" {
		t.Fatalf("nodes table:\n%s", table)
	}
	for i, want := range []string{
		"a * vpn-a.example.com yes 42 2 1",
		"b vpn-b.example.com yes 42 1 1",
		"c vpn-c.example.com no 41 (refused a newer one: nat.max_mappings: out of range) 1 2",
	} {
		if got := strings.Join(strings.Fields(rows[i+1]), " "); got != want {
			t.Errorf("row %d: %q, want %q", i+1, got, want)
		}
	}
	// Without etcd: the sessions this node's alone, and no table, each said.
	cl.mu.Lock()
	cl.listErr, cl.nodesErr = fmt.Errorf("etcd: no leader"), fmt.Errorf("etcd: no leader")
	cl.mu.Unlock()
	code, stdout, _ = runCmd(t, "status", "--config", path)
	if code != 0 || !strings.Contains(stdout, "2 active (2 users)") || !strings.Contains(stdout, "partial: only node a's connections") ||
		!strings.Contains(stdout, "nodes: admin: ServiceUnavailable: the cluster's nodes could not be read: etcd: no leader") {
		t.Errorf("without etcd (exit %d):\n%s", code, stdout)
	}
	// A single node has no nodes table.
	single, _ := adminEndpoint(t)
	if _, stdout, _ := runCmd(t, "status", "--config", single); strings.Contains(stdout, "NODE") || strings.Contains(stdout, "node ") {
		t.Errorf("single node:\n%s", stdout)
	}
}
