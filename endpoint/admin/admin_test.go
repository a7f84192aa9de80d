package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/session"
)

// fakeEngine is an Engine of fixed sessions; Terminate ends them at once through the History,
// as the engine's teardown does.
type fakeEngine struct {
	mu       sync.Mutex
	sessions []tunnel.Status
	history  *History
	now      func() time.Time
	// keep leaves terminated sessions listed (still tearing down).
	keep bool
}

func (f *fakeEngine) Clients() []tunnel.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sessions)
}

func (f *fakeEngine) Terminate(match func(*tunnel.Info) bool) []tunnel.Status {
	f.mu.Lock()
	var out, rest []tunnel.Status
	for _, s := range f.sessions {
		if match(s.Info) {
			out = append(out, s)
		} else {
			rest = append(rest, s)
		}
	}
	if !f.keep {
		f.sessions = rest
	}
	f.mu.Unlock()
	return out
}

// end tears the terminated sessions down, as the engine does once the clients acked.
func (f *fakeEngine) end(ss []tunnel.Status, reason string) {
	f.mu.Lock()
	f.sessions = slices.DeleteFunc(f.sessions, func(s tunnel.Status) bool {
		return slices.ContainsFunc(ss, func(x tunnel.Status) bool { return x.ConnectionID == s.ConnectionID })
	})
	f.mu.Unlock()
	for _, s := range ss {
		f.history.Disconnected(s, session.End{Time: f.now(), Reason: reason})
	}
}

func (f *fakeEngine) Addrs() []netip.AddrPort {
	return []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:443")}
}
func (f *fakeEngine) TCPAddrs() []netip.AddrPort {
	return []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:1194")}
}
func (f *fakeEngine) Drops() map[string]uint64 { return map[string]uint64{"decrypt_failed": 3} }

type fakePool struct{ inUse int }

func (p fakePool) Capacity() int { return 1021 }
func (p fakePool) InUse() int    { return p.inUse }

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func status(id, user, cn, addr, remote string, rx uint64) tunnel.Status {
	return tunnel.Status{
		Info: &tunnel.Info{ConnectionID: id, User: user, CommonName: cn, Address: netip.MustParseAddr(addr),
			Cipher: "AES-256-GCM", Transport: "UDPv4", Version: "2.6.14", Platform: "linux", Since: t0, Established: t0.Add(time.Second)},
		Remote:  netip.MustParseAddrPort(remote),
		Traffic: counters.TrafficSnapshot{RxBytes: rx, RxPackets: 10, TxBytes: 2 * rx, TxPackets: 20},
	}
}

func sorted(s []string) []string { slices.Sort(s); return s }

// dualStatus is status for a session with an IPv6 address too.
func dualStatus(id, user, cn, addr, addr6, remote string, rx uint64) tunnel.Status {
	st := status(id, user, cn, addr, remote, rx)
	st.Info.Address6 = netip.MustParseAddr(addr6)
	return st
}

const (
	idAlice = "cvpn-connection-0123456789abcdef0"
	idBob   = "cvpn-connection-0123456789abcdef1"
)

// apiLab is an API on a real unix socket over a fake engine.
type apiLab struct {
	t       *testing.T
	now     time.Time
	engine  *fakeEngine
	history *History
	handler *Handler
	server  *Server
	client  *Client
	path    string
}

func newAPILab(t *testing.T) *apiLab {
	t.Helper()
	l := &apiLab{t: t, now: t0.Add(10 * time.Minute)}
	clock := func() time.Time { return l.now }
	l.history = NewHistory(clock)
	l.engine = &fakeEngine{history: l.history, now: clock, sessions: []tunnel.Status{
		status(idAlice, "alice", "alice", "10.2.0.2", "[::ffff:192.0.2.10]:50001", 1000),
		dualStatus(idBob, "bob", "bob", "10.2.0.3", "fd00:10:1::1:3", "192.0.2.11:50002", 5000),
	}}
	cfg := &config.Endpoint{
		Description: "lab", RemoteHostname: "vpn.example.com", ClientCIDRBlock: netip.MustParsePrefix("10.2.0.0/22"),
		DNSServers: []netip.Addr{netip.MustParseAddr("10.0.0.2")}, SplitTunnel: true, SessionTimeout: 24 * time.Hour,
		Transport:     []config.Listener{{Protocol: config.ProtocolUDP, Port: 443}, {Protocol: config.ProtocolTCP, Port: 1194}},
		TargetNetwork: config.TargetNetwork{Interface: "eth0"},
		Routes: []config.Route{{DestinationCIDRBlock: netip.MustParsePrefix("10.0.1.0/24"), Description: "app"},
			{DestinationCIDRBlock: netip.MustParsePrefix("10.2.0.0/22"), Local: true}},
		AuthorizationRules: []config.AuthorizationRule{{TargetNetworkCIDR: netip.MustParsePrefix("10.0.0.0/16"), AccessGroupID: "dev", Description: "devs"}},
	}
	src := &Source{EndpointID: "cvpn-endpoint-0123456789abcdef0", Engine: l.engine, Pool: fakePool{inUse: 2},
		Endpoint: func() *config.Endpoint { return cfg }, History: l.history, Started: t0, Now: clock}
	l.handler = NewHandler(src, nil)
	l.path = filepath.Join(t.TempDir(), "admin.sock")
	var err error
	if l.server, err = Listen(l.path, l.handler); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.server.Close() })
	l.client = NewClient(l.path)
	return l
}

// raw posts body to the action and returns the status and the decoded JSON.
func (l *apiLab) raw(action, body string) (int, map[string]any) {
	l.t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", l.path)
	}}}
	resp, err := c.Post("http://cvpn/"+action, "application/json", strings.NewReader(body))
	if err != nil {
		l.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		l.t.Fatalf("%s: %v in %q", action, err, data)
	}
	return resp.StatusCode, m
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// awsConnectionFields are ClientVpnConnection's members in the EC2 API reference (less
// ClientIpv6Address, which only a connection with an IPv6 address has), plus the cvpn
// extensions object.
var awsConnectionFields = []string{"ClientIp", "ClientVpnEndpointId", "CommonName", "ConnectionEndTime",
	"ConnectionEstablishedTime", "ConnectionId", "CvpnExtensions", "EgressBytes", "EgressPackets", "IngressBytes",
	"IngressPackets", "PostureComplianceStatuses", "Status", "Timestamp", "Username"}

// TestDescribeConnectionsWire: the response carries exactly AWS's field names, counters as
// strings, times in AWS's format, the extensions apart.
func TestDescribeConnectionsWire(t *testing.T) {
	l := newAPILab(t)
	code, m := l.raw("DescribeClientVpnConnections", "")
	if code != http.StatusOK || !slices.Equal(keys(m), []string{"Connections"}) {
		t.Fatalf("status %d, keys %q", code, keys(m))
	}
	conns := m["Connections"].([]any)
	if len(conns) != 2 {
		t.Fatalf("%d connections, want 2", len(conns))
	}
	c := conns[0].(map[string]any)
	if !slices.Equal(keys(c), awsConnectionFields) {
		t.Errorf("fields %q, want %q", keys(c), awsConnectionFields)
	}
	want := map[string]any{"ConnectionId": idAlice, "ClientVpnEndpointId": "cvpn-endpoint-0123456789abcdef0", "Username": "alice",
		"CommonName": "alice", "ClientIp": "10.2.0.2", "IngressBytes": "1000", "EgressBytes": "2000", "IngressPackets": "10",
		"EgressPackets": "20", "ConnectionEstablishedTime": "2026-11-29 12:00:01", "Timestamp": "2026-11-29 12:10:00",
		"ConnectionEndTime": "-"}
	for k, v := range want {
		if c[k] != v {
			t.Errorf("%s = %#v, want %#v", k, c[k], v)
		}
	}
	if st := c["Status"].(map[string]any); st["Code"] != "active" {
		t.Errorf("Status %v", st)
	}
	bob := conns[1].(map[string]any)
	if want := append([]string{"ClientIpv6Address"}, awsConnectionFields...); !slices.Equal(keys(bob), sorted(want)) ||
		bob["ClientIpv6Address"] != "fd00:10:1::1:3" || bob["ClientIp"] != "10.2.0.3" {
		t.Errorf("a dual-stack connection: %v", bob)
	}
	if p, ok := c["PostureComplianceStatuses"].([]any); !ok || len(p) != 0 {
		t.Errorf("PostureComplianceStatuses = %#v, want []", c["PostureComplianceStatuses"])
	}
	ext := c["CvpnExtensions"].(map[string]any)
	wantExt := map[string]any{"DeviceIp": "192.0.2.10", "DevicePort": 50001.0, "TransportProtocol": "udp", "Cipher": "AES-256-GCM",
		"ClientVersion": "2.6.14", "Platform": "linux"}
	for k, v := range wantExt {
		if ext[k] != v {
			t.Errorf("CvpnExtensions.%s = %#v, want %#v", k, ext[k], v)
		}
	}
}

// TestDescribeConnectionsFilters: connection-id and username filter, several values are an OR
// and several filters an AND; an unknown filter is refused.
func TestDescribeConnectionsFilters(t *testing.T) {
	l := newAPILab(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		filters []Filter
		want    []string
	}{
		{"none", nil, []string{idAlice, idBob}},
		{"username", []Filter{{Name: "username", Values: []string{"bob"}}}, []string{idBob}},
		{"connection-id", []Filter{{Name: "connection-id", Values: []string{idAlice}}}, []string{idAlice}},
		{"both values", []Filter{{Name: "username", Values: []string{"bob", "alice"}}}, []string{idAlice, idBob}},
		{"and", []Filter{{Name: "username", Values: []string{"bob"}}, {Name: "connection-id", Values: []string{idAlice}}}, nil},
		{"nobody", []Filter{{Name: "username", Values: []string{"carol"}}}, nil},
	} {
		out, err := l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{Filters: tc.filters})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var got []string
		for _, c := range out.Connections {
			got = append(got, c.ConnectionID)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	_, err := l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{Filters: []Filter{{Name: "user", Values: []string{"bob"}}}})
	var e *Error
	if !errors.As(err, &e) || e.Code != "InvalidParameterValue" || !strings.Contains(e.Message, `"user"`) {
		t.Errorf("unknown filter: %v", err)
	}
	_, err = l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{ClientVpnEndpointID: "cvpn-endpoint-other"})
	if !errors.As(err, &e) || e.Code != "InvalidClientVpnEndpointId.NotFound" {
		t.Errorf("other endpoint: %v", err)
	}
}

// TestTerminate: by username the user's sessions go from active to terminating, are listed as
// terminating until they end, then as terminated with their end time and final counters; by
// connection id likewise; a bad request is refused.
func TestTerminate(t *testing.T) {
	l := newAPILab(t)
	l.engine.keep = true
	ctx := context.Background()
	code, m := l.raw("TerminateClientVpnConnections", `{"Username": "bob"}`)
	if code != http.StatusOK || !slices.Equal(keys(m), []string{"ClientVpnEndpointId", "ConnectionStatuses", "Username"}) {
		t.Fatalf("status %d keys %q", code, keys(m))
	}
	sts := m["ConnectionStatuses"].([]any)
	if len(sts) != 1 {
		t.Fatalf("ConnectionStatuses %v", sts)
	}
	st := sts[0].(map[string]any)
	if !slices.Equal(keys(st), []string{"ConnectionId", "CurrentStatus", "PreviousStatus"}) || st["ConnectionId"] != idBob ||
		st["PreviousStatus"].(map[string]any)["Code"] != "active" || st["CurrentStatus"].(map[string]any)["Code"] != "terminating" {
		t.Errorf("status %v", st)
	}
	out, err := l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{Filters: []Filter{{Name: "username", Values: []string{"bob"}}}})
	if err != nil || len(out.Connections) != 1 || out.Connections[0].Status.Code != StatusTerminating {
		t.Fatalf("while tearing down: %+v, %v", out, err)
	}
	// Asked again while the session tears down, it is terminating still (the engine no longer
	// matches a closing session).
	l.engine.keep = false
	l.engine.Terminate(func(i *tunnel.Info) bool { return i.User == "bob" })
	ended := []tunnel.Status{status(idBob, "bob", "bob", "10.2.0.3", "192.0.2.11:50002", 5000)}
	again, err := l.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{ConnectionID: idBob})
	if err != nil || len(again.ConnectionStatuses) != 1 || again.ConnectionStatuses[0].PreviousStatus.Code != StatusTerminating {
		t.Errorf("again while terminating: %+v %v", again, err)
	}
	// Listed as terminating still, though the engine lists it no more.
	out, err = l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{Filters: []Filter{{Name: "username", Values: []string{"bob"}}}})
	if err != nil || len(out.Connections) != 1 || out.Connections[0].Status.Code != StatusTerminating || out.Connections[0].ConnectionEndTime != "-" {
		t.Fatalf("while saying goodbye: %+v, %v", out, err)
	}
	l.engine.end(ended, "terminated by the administrator")
	l.now = l.now.Add(time.Minute)
	out, err = l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{})
	if err != nil || len(out.Connections) != 2 {
		t.Fatalf("after: %+v, %v", out, err)
	}
	bob := out.Connections[1]
	if bob.ConnectionID != idBob || bob.Status.Code != StatusTerminated || bob.ConnectionEndTime != "2026-11-29 12:10:00" ||
		bob.IngressBytes != "5000" || bob.Cvpn.EndReason != "terminated by the administrator" {
		t.Errorf("bob after teardown: %+v", bob)
	}
	if out.Connections[0].Status.Code != StatusActive {
		t.Errorf("alice: %+v", out.Connections[0])
	}
	// Terminating an ended connection again says so; an unknown one is not found.
	again, err = l.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{ConnectionID: idBob})
	if err != nil || len(again.ConnectionStatuses) != 1 || again.ConnectionStatuses[0].CurrentStatus.Code != StatusTerminated {
		t.Errorf("again: %+v %v", again, err)
	}
	var e *Error
	if _, err := l.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{ConnectionID: "cvpn-connection-00000000000000000"}); !errors.As(err, &e) || e.Code != "InvalidClientVpnConnection.IdNotFound" {
		t.Errorf("unknown id: %v", err)
	}
	if _, err := l.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{}); !errors.As(err, &e) || e.Code != "MissingParameter" {
		t.Errorf("neither: %v", err)
	}
	if _, err := l.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{ConnectionID: idAlice, Username: "alice"}); !errors.As(err, &e) || e.Code != "MissingParameter" {
		t.Errorf("both: %v", err)
	}
	// The connection id terminates alice.
	res, err := l.client.TerminateClientVpnConnections(ctx, TerminateClientVpnConnectionsInput{ConnectionID: idAlice})
	if err != nil || len(res.ConnectionStatuses) != 1 || res.ConnectionStatuses[0].ConnectionID != idAlice {
		t.Errorf("by id: %+v %v", res, err)
	}
}

// TestHistoryWindowAndCap: ended connections are listed for 60 minutes, and at most historyCap
// of them are kept.
func TestHistoryWindowAndCap(t *testing.T) {
	now := t0
	h := NewHistory(func() time.Time { return now })
	h.Disconnected(status(idAlice, "alice", "alice", "10.2.0.2", "192.0.2.1:1", 1), session.End{Time: now})
	now = now.Add(59 * time.Minute)
	if got := len(h.endedConnections()); got != 1 {
		t.Fatalf("after 59 minutes %d ended, want 1", got)
	}
	now = now.Add(2 * time.Minute)
	if got := len(h.endedConnections()); got != 0 {
		t.Fatalf("after 61 minutes %d ended, want 0", got)
	}
	for i := range historyCap + 10 {
		s := status(idAlice, "alice", "alice", "10.2.0.2", "192.0.2.1:1", uint64(i))
		h.Disconnected(s, session.End{Time: now})
	}
	got := h.endedConnections()
	if len(got) != historyCap || got[0].status.Traffic.RxBytes != 10 {
		t.Errorf("%d kept, first %d; want %d, the oldest dropped", len(got), got[0].status.Traffic.RxBytes, historyCap)
	}
}

// TestDescribeEndpointRoutesRules: the endpoint with its listeners, pool, traffic and drops;
// the routes and the authorization rules in AWS's shapes.
func TestDescribeEndpointRoutesRules(t *testing.T) {
	l := newAPILab(t)
	code, m := l.raw("DescribeClientVpnEndpoints", "{}")
	if code != http.StatusOK {
		t.Fatalf("status %d %v", code, m)
	}
	e := m["ClientVpnEndpoints"].([]any)[0].(map[string]any)
	wantKeys := []string{"ClientCidrBlock", "ClientVpnEndpointId", "ConnectionLogOptions", "CreationTime", "CvpnExtensions", "Description",
		"DnsName", "DnsServers", "EndpointIpAddressType", "SessionTimeoutHours", "SplitTunnel", "Status", "TrafficIpAddressType",
		"TransportProtocol", "VpnPort", "VpnProtocol"}
	if !slices.Equal(keys(e), wantKeys) {
		t.Errorf("endpoint fields %q, want %q", keys(e), wantKeys)
	}
	out, err := l.client.DescribeClientVpnEndpoints(context.Background(), DescribeClientVpnEndpointsInput{})
	if err != nil {
		t.Fatal(err)
	}
	ep := out.ClientVpnEndpoints[0]
	if ep.Status.Code != "available" || ep.ClientCidrBlock != "10.2.0.0/22" || ep.TransportProtocol != "udp" || ep.VpnPort != 443 ||
		ep.Cvpn.ActiveConnections != 2 || ep.Cvpn.Pool != (PoolUsage{Capacity: 1021, InUse: 2}) || ep.Cvpn.Traffic.IngressBytes != "6000" ||
		ep.Cvpn.Traffic.EgressBytes != "12000" || ep.Cvpn.Drops["decrypt_failed"] != 3 || len(ep.Cvpn.Listeners) != 2 ||
		ep.Cvpn.Listeners[1] != (Listener{Protocol: "tcp", Address: "0.0.0.0:1194"}) || ep.SessionTimeoutHours != 24 {
		t.Errorf("endpoint %+v", ep)
	}
	code, m = l.raw("DescribeClientVpnRoutes", "")
	routes := m["Routes"].([]any)
	if code != http.StatusOK || len(routes) != 2 {
		t.Fatalf("routes %d %v", code, m)
	}
	r0, r1 := routes[0].(map[string]any), routes[1].(map[string]any)
	if !slices.Equal(keys(r0), []string{"ClientVpnEndpointId", "Description", "DestinationCidr", "Origin", "Status", "TargetSubnet", "Type"}) ||
		r0["DestinationCidr"] != "10.0.1.0/24" || r0["Type"] != "Nat" || r0["TargetSubnet"] != "eth0" || r1["Type"] != "local" {
		t.Errorf("routes %v", routes)
	}
	code, m = l.raw("DescribeClientVpnAuthorizationRules", "")
	rules := m["AuthorizationRules"].([]any)
	if code != http.StatusOK || len(rules) != 1 {
		t.Fatalf("rules %d %v", code, m)
	}
	rule := rules[0].(map[string]any)
	if !slices.Equal(keys(rule), []string{"AccessAll", "ClientVpnEndpointId", "Description", "DestinationCidr", "GroupId", "Status"}) ||
		rule["GroupId"] != "dev" || rule["AccessAll"] != false || rule["DestinationCidr"] != "10.0.0.0/16" {
		t.Errorf("rule %v", rule)
	}
}

// TestBadRequests: unknown fields, bad JSON, a body over the bound, another method and an
// unknown action are refused with an AWS-shaped error.
func TestBadRequests(t *testing.T) {
	l := newAPILab(t)
	for _, tc := range []struct {
		name, action, body string
		code               int
	}{
		{"unknown field", "DescribeClientVpnConnections", `{"Filter": []}`, http.StatusBadRequest},
		{"bad json", "DescribeClientVpnConnections", `{`, http.StatusBadRequest},
		{"too big", "DescribeClientVpnConnections", `{"Filters": [{"Name": "username", "Values": ["` + strings.Repeat("x", maxBody) + `"]}]}`, http.StatusRequestEntityTooLarge},
	} {
		code, m := l.raw(tc.action, tc.body)
		if code != tc.code || m["Error"] == nil {
			t.Errorf("%s: %d %v, want %d and an Error", tc.name, code, m, tc.code)
		}
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", l.path)
	}}}
	resp, err := c.Post("http://cvpn/DeleteClientVpnEndpoint", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown action: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodDelete, "http://cvpn/DescribeClientVpnConnections", nil)
	if resp, err = c.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("DELETE: %d", resp.StatusCode)
	}
}

// TestSocket: the socket is 0600; a stale socket file is replaced; a live one is not taken
// over; Close removes it.
func TestSocket(t *testing.T) {
	l := newAPILab(t)
	fi, err := os.Stat(l.path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v, want a socket of mode 0600", fi.Mode(), err)
	}
	if _, err := Listen(l.path, l.handler); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Listen on a live socket = %v", err)
	}
	stale := filepath.Join(t.TempDir(), "sub", "stale.sock")
	s1, err := Listen(stale, l.handler)
	if err != nil {
		t.Fatal(err)
	}
	// Leave the file behind as a crashed process would.
	s1.l.(*net.UnixListener).SetUnlinkOnClose(false)
	s1.Close()
	if _, err := os.Stat(stale); err != nil {
		// Close removed it: put a dead socket file there by hand.
		ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ul.SetUnlinkOnClose(false)
		ul.Close()
	}
	s2, err := Listen(stale, l.handler)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if _, err := NewClient(stale).DescribeClientVpnRoutes(context.Background(), DescribeClientVpnRoutesInput{}); err != nil {
		t.Errorf("call over the replaced socket: %v", err)
	}
	s2.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("Close left the socket: %v", err)
	}
	notSock := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notSock, nil, 0o600)
	if _, err := Listen(notSock, l.handler); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen on a regular file = %v", err)
	}
}

// TestRefusedCaller: a caller whose uid is not allowed gets 403 and nothing else (the check
// injected: the caller here is root).
func TestRefusedCaller(t *testing.T) {
	l := newAPILab(t)
	l.handler.allowed = func(uid uint32) bool { return uid != uint32(os.Getuid()) }
	code, m := l.raw("TerminateClientVpnConnections", `{"Username": "bob"}`)
	if code != http.StatusForbidden || m["Error"].(map[string]any)["Code"] != "UnauthorizedOperation" {
		t.Errorf("refused caller: %d %v", code, m)
	}
	if len(l.engine.Clients()) != 2 {
		t.Error("a refused caller terminated a session")
	}
}

// TestRefusedOtherUser: a real process of another user (nobody, through setpriv) that can
// reach the socket is refused by its peer credentials. Root runs it, as CI does.
func TestRefusedOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root, to run a client as another user; CI runs as root")
	}
	l := newAPILab(t)
	// Open the way for nobody, so that the peer check is what refuses it.
	// (the test's own directories, up to the temporary directory).
	for p := filepath.Dir(l.path); strings.HasPrefix(p, os.TempDir()+"/"); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(l.path, 0o666); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		out, err := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--",
			"curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--unix-socket", l.path, "-X", "POST"}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := run("-d", `{"Username": "bob"}`, "http://cvpn/TerminateClientVpnConnections")
	if err != nil || !strings.HasSuffix(strings.TrimSpace(out), "403") || !strings.Contains(out, "UnauthorizedOperation") {
		t.Errorf("nobody: %v\n%s", err, out)
	}
	if len(l.engine.Clients()) != 2 {
		t.Error("another user terminated a session")
	}
	// The same request by root succeeds.
	out2, err := exec.Command("curl", "-sS", "-w", "\n%{http_code}", "--unix-socket", l.path, "-X", "POST", "http://cvpn/DescribeClientVpnConnections").CombinedOutput()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out2)), "200") {
		t.Errorf("root: %v\n%s", err, out2)
	}
}
