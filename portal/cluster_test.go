package portal

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/cvpn/cvpn/state"
)

// twoNodes returns an env whose server is node A, and node B: another server with the same
// configuration and the same store, as two nodes of a cluster. on switches the node the
// env's browsers reach.
func twoNodes(t *testing.T) (e *env, st *state.Memory, on func(*Server), a, b *Server) {
	t.Helper()
	st = state.NewMemory()
	e = newEnv(t, func(c *Config) { c.State = st })
	b, err := New(e.srv.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e, st, func(s *Server) { e.srv = s }, e.srv, b
}

// TestClusterPasswordLoginAcrossNodes: each request of a sign-in reaches another node; the
// session is the same on both, and ends on both.
func TestClusterPasswordLoginAcrossNodes(t *testing.T) {
	e, st, on, a, b := twoNodes(t)
	br := e.browser(clientAddrA)
	on(a)
	wantCode(t, br.get("/login"), http.StatusOK)
	on(b)
	r := br.follow(br.post("/login", url.Values{"username": {"alice"}, "password": {"correct horse"}}, nil))
	wantBody(t, r, `action="/login/code"`)
	on(a)
	r = br.follow(br.post("/login/code", url.Values{"code": {e.mfa.code("alice")}}, nil))
	wantCode(t, r, http.StatusOK)
	on(b)
	r = br.get("/")
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "alice", "Download for UDP")

	// The store holds neither the cookie nor the session in the clear.
	keys, _ := st.List(context.Background(), SessionBucket)
	for _, k := range keys {
		v, _ := st.Get(context.Background(), SessionBucket, k)
		if k == br.cookie || bytes.Contains(v, []byte(br.cookie)) || bytes.Contains(v, []byte(br.csrf)) {
			t.Errorf("the store holds a session's secrets")
		}
	}

	on(a)
	wantCode(t, br.post("/logout", nil, nil), http.StatusSeeOther)
	on(b)
	if r := br.get("/"); r.code != http.StatusSeeOther || !strings.HasPrefix(r.loc, "/login") {
		t.Fatalf("after logout on the other node, / answers %d %q", r.code, r.loc)
	}
}

// TestClusterFederatedLoginAcrossNodes: a federated login begun on A is answered on B and
// finished on A, once.
func TestClusterFederatedLoginAcrossNodes(t *testing.T) {
	e, _, on, a, b := twoNodes(t)
	br := e.browser(clientAddrA)
	on(a)
	br.get("/login")
	r := br.post("/login/oidc", nil, nil)
	wantCode(t, r, http.StatusSeeOther)
	u, err := url.Parse(r.loc)
	if err != nil {
		t.Fatal(err)
	}
	state := u.Query().Get("state")
	on(b)
	r = br.get("/oidc/callback?" + url.Values{"state": {state}, "user": {"carol"}}.Encode())
	if r.code != http.StatusSeeOther || !strings.HasPrefix(r.loc, "/login/finish?t=") {
		t.Fatalf("callback on the other node: %d %q", r.code, r.loc)
	}
	finish := r.loc
	on(a)
	r = br.follow(r)
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "carol")
	// The state and the finish step are spent on both nodes.
	for _, s := range []*Server{a, b} {
		on(s)
		if r := br.get("/oidc/callback?" + url.Values{"state": {state}, "user": {"mallory"}}.Encode()); r.code < 400 {
			t.Fatalf("a replayed callback answers %d", r.code)
		}
		if r := br.get(finish); r.code != http.StatusForbidden {
			t.Fatalf("a replayed finish answers %d", r.code)
		}
	}
}

// TestClusterAnonymousBoundAcrossNodes: the bound on sessions not signed in counts both
// nodes.
func TestClusterAnonymousBoundAcrossNodes(t *testing.T) {
	e, _, on, a, b := twoNodes(t)
	for i := range anonPerAddress {
		on([]*Server{a, b}[i%2])
		wantCode(t, e.browser("198.51.100.7:1").get("/login"), http.StatusOK)
	}
	for _, s := range []*Server{a, b} {
		on(s)
		wantCode(t, e.browser("198.51.100.7:1").get("/login"), http.StatusServiceUnavailable)
	}
}

// TestClusterLoginLimitAcrossNodes: wrong passwords spread over two nodes count against the
// username on both.
func TestClusterLoginLimitAcrossNodes(t *testing.T) {
	e, _, on, a, b := twoNodes(t)
	for i := range MaxFailuresPerUser {
		on([]*Server{a, b}[i%2])
		br := e.browser(fmt.Sprintf("198.51.100.%d:1", i+1))
		br.get("/login")
		wantCode(t, br.post("/login", url.Values{"username": {"alice"}, "password": {"guess" + strconv.Itoa(i)}}, nil), http.StatusUnauthorized)
	}
	for _, s := range []*Server{a, b} {
		on(s)
		br := e.browser("203.0.113.1:1")
		br.get("/login")
		wantCode(t, br.post("/login", url.Values{"username": {"alice"}, "password": {"correct horse"}}, nil), http.StatusTooManyRequests)
	}
}
