package admin

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/session"
)

// connID is the id of the i-th connection of a paging test.
func connID(i int) string { return fmt.Sprintf("cvpn-connection-%017x", 0x100+i) }

// pagingSession is connection i of user, established at est.
func pagingSession(i int, user string, est time.Time) tunnel.Status {
	st := status(connID(i), user, user, fmt.Sprintf("10.2.%d.%d", i/200, 2+i%200), "192.0.2.1:40000", uint64(i))
	st.Info.Established = est
	return st
}

// pagingLab is an API lab whose engine lists n active sessions, established a second apart but
// for pairs sharing a time (so the id breaks ties), listed out of order; and whose history holds
// ended sessions established between them.
func pagingLab(t *testing.T, active, ended int) (l *apiLab, want []string) {
	t.Helper()
	l = newAPILab(t)
	type item struct {
		est time.Time
		id  string
	}
	var all []item
	var sessions []tunnel.Status
	for i := range active {
		est := t0.Add(time.Duration(i/2) * 2 * time.Second) // pairs share a time
		sessions = append(sessions, pagingSession(i, fmt.Sprintf("user%d", i%3), est))
		all = append(all, item{est, connID(i)})
	}
	slices.Reverse(sessions) // the engine's order is not the listing's
	l.engine.sessions = sessions
	for j := range ended {
		i := active + j
		est := t0.Add(time.Duration(j)*2*time.Second + time.Second)
		l.history.Disconnected(pagingSession(i, "gone", est), session.End{Time: l.now, Reason: "exit"})
		all = append(all, item{est, connID(i)})
	}
	slices.SortFunc(all, func(a, b item) int {
		if c := a.est.Compare(b.est); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	for _, x := range all {
		want = append(want, x.id)
	}
	return l, want
}

func ids(cs []Connection) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.ConnectionID)
	}
	return out
}

func intp(n int) *int { return &n }

// TestPagingConnections: MaxResults pages the connections, active and ended together, oldest
// established first and ties by id; each page but the last carries a NextToken; all pages
// together are exactly the listing without MaxResults, which is one page without a token.
func TestPagingConnections(t *testing.T) {
	l, want := pagingLab(t, 23, 9)
	ctx := context.Background()
	one, err := l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{})
	if err != nil || one.NextToken != "" || !slices.Equal(ids(one.Connections), want) {
		t.Fatalf("without MaxResults: token %q, %q, %v; want all of %q", one.NextToken, ids(one.Connections), err, want)
	}
	for _, max := range []int{5, 7, 31, 32, 1000} {
		var got []string
		in := DescribeClientVpnConnectionsInput{MaxResults: intp(max)}
		for pages := 0; ; pages++ {
			if pages > len(want) {
				t.Fatalf("MaxResults %d: more pages than connections", max)
			}
			out, err := l.client.DescribeClientVpnConnections(ctx, in)
			if err != nil {
				t.Fatalf("MaxResults %d, page %d: %v", max, pages, err)
			}
			if len(out.Connections) > max || (out.NextToken != "" && len(out.Connections) != max) {
				t.Fatalf("MaxResults %d, page %d: %d connections, token %q", max, pages, len(out.Connections), out.NextToken)
			}
			got = append(got, ids(out.Connections)...)
			if out.NextToken == "" {
				break
			}
			in.NextToken = out.NextToken
		}
		if !slices.Equal(got, want) {
			t.Errorf("MaxResults %d: pages give %q, want %q", max, got, want)
		}
	}
	// Paging and filters together: the filter applies before the page.
	out, err := l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{MaxResults: intp(5),
		Filters: []Filter{{Name: "username", Values: []string{"user1"}}}})
	if err != nil || len(out.Connections) != 5 || out.NextToken == "" {
		t.Fatalf("filtered page: %d, %q, %v", len(out.Connections), out.NextToken, err)
	}
	for _, c := range out.Connections {
		if c.Username != "user1" {
			t.Errorf("filtered page lists %s of %s", c.ConnectionID, c.Username)
		}
	}
	all, err := l.client.DescribeAllClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{MaxResults: intp(5)})
	if err != nil || all.NextToken != "" || !slices.Equal(ids(all.Connections), want) {
		t.Errorf("DescribeAllClientVpnConnections: token %q, %q, %v; want %q", all.NextToken, ids(all.Connections), err, want)
	}
}

// TestPagingStable: connections that come and go between two pages shift nothing: a connection
// that ends after its page is not listed again, one that ends before its page is listed once as
// terminated, and one that connects meanwhile comes on a later page.
func TestPagingStable(t *testing.T) {
	l, want := pagingLab(t, 12, 0)
	ctx := context.Background()
	first, err := l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{MaxResults: intp(5)})
	if err != nil || first.NextToken == "" || !slices.Equal(ids(first.Connections), want[:5]) {
		t.Fatalf("first page: %q %q %v", ids(first.Connections), first.NextToken, err)
	}
	byID := func(id string) tunnel.Status {
		for _, s := range l.engine.Clients() {
			if s.ConnectionID == id {
				return s
			}
		}
		t.Fatalf("no session %s", id)
		return tunnel.Status{}
	}
	// One listed already ends, one not listed yet ends, and a new one connects.
	l.engine.end([]tunnel.Status{byID(want[0]), byID(want[7])}, "exit")
	fresh := pagingSession(99, "late", t0.Add(time.Hour))
	l.engine.mu.Lock()
	l.engine.sessions = append(l.engine.sessions, fresh)
	l.engine.mu.Unlock()
	got := ids(first.Connections)
	in := DescribeClientVpnConnectionsInput{MaxResults: intp(5), NextToken: first.NextToken}
	var ended string
	for {
		out, err := l.client.DescribeClientVpnConnections(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range out.Connections {
			if c.Status.Code == StatusTerminated {
				ended += c.ConnectionID
			}
		}
		got = append(got, ids(out.Connections)...)
		if out.NextToken == "" {
			break
		}
		in.NextToken = out.NextToken
	}
	if w := append(slices.Clone(want), connID(99)); !slices.Equal(got, w) {
		t.Errorf("pages around changes give %q, want %q", got, w)
	}
	if ended != want[7] {
		t.Errorf("listed as terminated on later pages: %q, want %s", ended, want[7])
	}
}

// TestPagingRefused: MaxResults outside 5..1000 and a NextToken the action did not issue are
// InvalidParameterValue naming the field, over the wire as AWS shapes errors.
func TestPagingRefused(t *testing.T) {
	l, _ := pagingLab(t, 12, 0)
	ctx := context.Background()
	out, err := l.client.DescribeClientVpnRoutes(ctx, DescribeClientVpnRoutesInput{})
	if err != nil {
		t.Fatal(err)
	}
	secret := l.handler.src.tokenSecret()
	// A token the routes issued, had there been more: valid for the routes, not for connections.
	routesToken := pager{action: "DescribeClientVpnRoutes", secret: secret}.token(indexKey(1))
	conns, err := l.client.DescribeClientVpnConnections(ctx, DescribeClientVpnConnectionsInput{MaxResults: intp(5)})
	if err != nil || conns.NextToken == "" {
		t.Fatalf("a first page: %v", err)
	}
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	// signed is a token of payload signed as this endpoint signs: only its contents are wrong.
	signed := func(payload string) string { return enc(payload + string(sign(secret, []byte(payload)))) }
	lastKey := connectionKey(&tunnel.Info{ConnectionID: connID(4), Established: t0.Add(4 * time.Second)})
	if conns.NextToken != (pager{action: "DescribeClientVpnConnections", secret: secret}).token(lastKey) {
		t.Fatalf("the first page's token does not resume after its last connection %s", lastKey)
	}
	// Another process (cvpn restarted) signs with another key.
	otherProcess := pager{action: "DescribeClientVpnConnections", secret: []byte("another process's key")}.token(lastKey)
	edited := []byte(conns.NextToken)
	edited[len(edited)/2] ^= 'A' ^ 'B'
	for _, tc := range []struct {
		name, body, field string
	}{
		{"MaxResults 4", `{"MaxResults": 4}`, "MaxResults"},
		{"MaxResults 1001", `{"MaxResults": 1001}`, "MaxResults"},
		{"MaxResults 0", `{"MaxResults": 0}`, "MaxResults"},
		{"MaxResults -5", `{"MaxResults": -5}`, "MaxResults"},
		{"MaxResults huge", `{"MaxResults": 99999999999999999999}`, "MaxResults"},
		{"MaxResults fraction", `{"MaxResults": 5.5}`, "MaxResults"},
		{"MaxResults string", `{"MaxResults": "5"}`, "MaxResults"},
		{"token not base64", `{"NextToken": "not a token!"}`, "NextToken"},
		{"token unsigned", `{"NextToken": "` + enc("cvpn1\x00DescribeClientVpnConnections\x00"+lastKey) + `"}`, "NextToken"},
		{"token of another process", `{"NextToken": "` + otherProcess + `"}`, "NextToken"},
		{"token edited", `{"NextToken": "` + string(edited) + `"}`, "NextToken"},
		{"token of another version", `{"NextToken": "` + signed("cvpn0\x00DescribeClientVpnConnections\x00"+lastKey) + `"}`, "NextToken"},
		{"token of another action", `{"NextToken": "` + routesToken + `"}`, "NextToken"},
		{"token with a bad key", `{"NextToken": "` + signed("cvpn1\x00DescribeClientVpnConnections\x00zz.cvpn-connection-1") + `"}`, "NextToken"},
		{"token with a key of another shape", `{"NextToken": "` + signed("cvpn1\x00DescribeClientVpnConnections\x0000000001") + `"}`, "NextToken"},
		{"token too long", `{"NextToken": "` + conns.NextToken + strings.Repeat("A", maxToken) + `"}`, "NextToken"},
		{"token cut short", `{"NextToken": "` + conns.NextToken[:len(conns.NextToken)-3] + `"}`, "NextToken"},
		{"token too short for a MAC", `{"NextToken": "` + enc("cvpn1") + `"}`, "NextToken"},
	} {
		code, m := l.raw("DescribeClientVpnConnections", tc.body)
		e, _ := m["Error"].(map[string]any)
		if code != http.StatusBadRequest || e == nil || e["Code"] != "InvalidParameterValue" || !strings.Contains(e["Message"].(string), tc.field) {
			t.Errorf("%s: %d %v, want 400 InvalidParameterValue naming %s", tc.name, code, m, tc.field)
		}
	}
	// The same checks guard every Describe action.
	for _, action := range []string{"DescribeClientVpnEndpoints", "DescribeClientVpnRoutes", "DescribeClientVpnAuthorizationRules"} {
		for _, body := range []string{`{"MaxResults": 4}`, `{"NextToken": "` + conns.NextToken + `"}`} {
			code, m := l.raw(action, body)
			if e, _ := m["Error"].(map[string]any); code != http.StatusBadRequest || e == nil || e["Code"] != "InvalidParameterValue" {
				t.Errorf("%s %s: %d %v, want 400 InvalidParameterValue", action, body, code, m)
			}
		}
	}
	if len(out.Routes) != 2 {
		t.Errorf("routes %v", out.Routes)
	}
}

// TestPagingRoutesRulesEndpoints: the routes and the authorization rules page in the file's
// order; the one endpoint fits any page.
func TestPagingRoutesRulesEndpoints(t *testing.T) {
	l := newAPILab(t)
	cfg := l.handler.src.Endpoint()
	var wantRoutes, wantRules []string
	cfg.Routes, cfg.AuthorizationRules = nil, nil
	for i := range 12 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 0}), 24)
		cfg.Routes = append(cfg.Routes, config.Route{DestinationCIDRBlock: p})
		cfg.AuthorizationRules = append(cfg.AuthorizationRules, config.AuthorizationRule{TargetNetworkCIDR: p, AccessGroupID: fmt.Sprint("g", i)})
		wantRoutes, wantRules = append(wantRoutes, p.String()), append(wantRules, fmt.Sprint("g", i))
	}
	ctx := context.Background()
	var routes, rules []string
	var sizes []int
	for in := (DescribeClientVpnRoutesInput{MaxResults: intp(5)}); ; {
		out, err := l.client.DescribeClientVpnRoutes(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(out.Routes))
		for _, r := range out.Routes {
			routes = append(routes, r.DestinationCidr)
		}
		if in.NextToken = out.NextToken; in.NextToken == "" {
			break
		}
	}
	if !slices.Equal(routes, wantRoutes) || !slices.Equal(sizes, []int{5, 5, 2}) {
		t.Errorf("routes in pages %v: %q, want %q", sizes, routes, wantRoutes)
	}
	for in := (DescribeClientVpnAuthorizationRulesInput{MaxResults: intp(6)}); ; {
		out, err := l.client.DescribeClientVpnAuthorizationRules(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range out.AuthorizationRules {
			rules = append(rules, r.GroupID)
		}
		if in.NextToken = out.NextToken; in.NextToken == "" {
			break
		}
	}
	if !slices.Equal(rules, wantRules) {
		t.Errorf("rules in pages: %q, want %q", rules, wantRules)
	}
	if all, err := l.client.DescribeClientVpnRoutes(ctx, DescribeClientVpnRoutesInput{}); err != nil || len(all.Routes) != 12 || all.NextToken != "" {
		t.Errorf("routes without MaxResults: %d, %q, %v", len(all.Routes), all.NextToken, err)
	}
	eps, err := l.client.DescribeClientVpnEndpoints(ctx, DescribeClientVpnEndpointsInput{MaxResults: intp(5)})
	if err != nil || len(eps.ClientVpnEndpoints) != 1 || eps.NextToken != "" {
		t.Errorf("endpoints with MaxResults 5: %+v %v", eps, err)
	}
	// A token of the routes is no token of the rules.
	first, err := l.client.DescribeClientVpnRoutes(ctx, DescribeClientVpnRoutesInput{MaxResults: intp(5)})
	if err != nil {
		t.Fatal(err)
	}
	var e *Error
	_, err = l.client.DescribeClientVpnAuthorizationRules(ctx, DescribeClientVpnAuthorizationRulesInput{NextToken: first.NextToken})
	if !errors.As(err, &e) || e.Code != "InvalidParameterValue" || !strings.Contains(e.Message, "NextToken") {
		t.Errorf("a routes token for the rules: %v", err)
	}
}

// TestDescribeAllRepeatedToken: a server that answers the same NextToken again is an error of
// DescribeAllClientVpnConnections, not an endless loop.
func TestDescribeAllRepeatedToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "loop.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		writeJSON(w, http.StatusOK, DescribeClientVpnConnectionsOutput{Connections: []Connection{}, NextToken: "again"})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	_, err = NewClient(path).DescribeAllClientVpnConnections(context.Background(), DescribeClientVpnConnectionsInput{})
	if err == nil || !strings.Contains(err.Error(), "repeated NextToken") || calls != 2 {
		t.Errorf("after %d calls: %v, want an error naming the repeated NextToken after 2", calls, err)
	}
}

// FuzzNextToken: no NextToken makes newPager panic; one it accepts is short, of its action, and
// resumes after a key of the action's shape, which a token of its own encodes back.
func FuzzNextToken(f *testing.F) {
	secret := []byte("fuzz key")
	p := pager{action: "DescribeClientVpnConnections", secret: secret}
	f.Add(p.token("8000000000000000.cvpn-connection-0123456789abcdef0"))
	f.Add(p.token(""))
	f.Add(pager{action: "DescribeClientVpnRoutes", secret: secret}.token(indexKey(3)))
	f.Add("")
	f.Add("%%%")
	f.Fuzz(func(t *testing.T, token string) {
		for _, a := range []struct {
			action string
			valid  func(string) bool
		}{{"DescribeClientVpnConnections", validConnectionKey}, {"DescribeClientVpnRoutes", validIndexKey}} {
			p, err := newPager(a.action, secret, nil, token, a.valid)
			if err != nil {
				var e *Error
				if !errors.As(err, &e) || e.Code != "InvalidParameterValue" || !strings.Contains(e.Message, "NextToken") {
					t.Fatalf("%q: %v", token, err)
				}
				continue
			}
			if token == "" {
				if p.after != "" {
					t.Fatalf("no token resumes after %q", p.after)
				}
				continue
			}
			if len(token) > maxToken || !a.valid(p.after) {
				t.Fatalf("%s accepted %q (key %q)", a.action, token, p.after)
			}
			again, err := newPager(a.action, secret, nil, p.token(p.after), a.valid)
			if err != nil || again.after != p.after {
				t.Fatalf("re-encoded %q: %v, %q", p.after, err, again.after)
			}
		}
	})
}
