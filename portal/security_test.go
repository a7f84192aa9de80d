package portal

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/cvpn/cvpn/auth/expiry"
	"github.com/cvpn/cvpn/state"
)

func TestCookieAttributes(t *testing.T) {
	e := newEnv(t, nil)
	r := e.browser(clientAddrA).get("/login")
	var c *http.Cookie
	for _, s := range r.sets {
		if s.Name == cookieName {
			c = s
		}
	}
	if c == nil {
		t.Fatalf("no %s cookie: %v", cookieName, r.hdr["Set-Cookie"])
	}
	if !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.Domain != "" {
		t.Fatalf("cookie attributes: %s", r.hdr.Get("Set-Cookie"))
	}
	raw, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil || len(raw) != 32 {
		t.Fatalf("session id %q is not 256 random bits: %v", c.Value, err)
	}
	if other := e.browser(clientAddrA).get("/login"); other.sets[0].Value == c.Value {
		t.Fatal("two browsers got the same session id")
	}
}

func TestSessionFixation(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	planted, plantedCSRF := b.cookie, b.csrf
	b.follow(b.post("/login", url.Values{"username": {"alice"}, "password": {"correct horse"}}, nil))
	afterPassword := b.cookie
	if afterPassword == planted {
		t.Fatal("the session id was not rotated when the password was accepted")
	}
	b.follow(b.post("/login/code", url.Values{"code": {e.mfa.code("alice")}}, nil))
	if b.cookie == afterPassword || b.cookie == planted {
		t.Fatal("the session id was not rotated when the code was accepted")
	}
	if b.csrf == plantedCSRF {
		t.Fatal("the CSRF token survived the login")
	}
	// An attacker holding the id planted before the login has nothing.
	attacker := e.browser("198.51.100.66:1")
	attacker.cookie, attacker.csrf = planted, plantedCSRF
	if r := attacker.get("/"); r.code != http.StatusSeeOther {
		t.Fatalf("the planted id opens home: %d", r.code)
	}
	if r := attacker.post("/download", url.Values{"proto": {"udp"}, "csrf": {plantedCSRF}}, nil); r.code != http.StatusForbidden {
		t.Fatalf("the planted id downloads: %d", r.code)
	}
}

func TestIdleAndAbsoluteExpiry(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MFA = nil })
	b := e.browser(clientAddrA)
	b.loginPassword("alice", "correct horse")
	e.clk.advance(DefaultIdleTimeout - time.Minute)
	wantCode(t, b.get("/"), http.StatusOK)
	e.clk.advance(DefaultIdleTimeout)
	if r := b.get("/"); r.code != http.StatusSeeOther || !strings.HasPrefix(r.loc, "/login") {
		t.Fatalf("after %v idle, / answers %d %q", DefaultIdleTimeout, r.code, r.loc)
	}

	b = e.browser(clientAddrA)
	b.loginPassword("alice", "correct horse")
	// Kept busy, the session still ends at the absolute expiry.
	step := DefaultIdleTimeout - time.Minute
	var elapsed time.Duration
	for elapsed+step < DefaultAbsoluteTimeout {
		e.clk.advance(step)
		elapsed += step
		wantCode(t, b.get("/"), http.StatusOK)
	}
	e.clk.advance(DefaultAbsoluteTimeout - elapsed)
	if r := b.get("/"); r.code != http.StatusSeeOther {
		t.Fatalf("a busy session outlives %v: %d", DefaultAbsoluteTimeout, r.code)
	}
}

func TestCSRF(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.browser(clientAddrA)
	alice.loginPassword("alice", "correct horse")
	dave := e.browser("192.0.2.20:1")
	dave.get("/login")
	for name, form := range map[string]url.Values{
		"missing token":         {"proto": {"udp"}},
		"empty token":           {"proto": {"udp"}, "csrf": {""}},
		"wrong token":           {"proto": {"udp"}, "csrf": {alice.csrf[:len(alice.csrf)-1] + "x"}},
		"another session token": {"proto": {"udp"}, "csrf": {dave.csrf}},
	} {
		r := alice.do("POST", "/download", strings.NewReader(form.Encode()), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Origin": {publicURL}})
		if r.code != http.StatusForbidden {
			t.Errorf("%s: POST /download answers %d, want 403", name, r.code)
		}
	}
	// Alice's token with dave's cookie (a cookie from another session) is refused too.
	dave.csrf = alice.csrf
	if r := dave.post("/logout", nil, nil); r.code != http.StatusForbidden {
		t.Errorf("another session's cookie with alice's token: %d, want 403", r.code)
	}
	// The token is checked on every POST, the pre-login ones included.
	for _, p := range []string{"/login", "/login/code", "/login/cancel", "/login/oidc", "/logout", "/download", "/mfa/enrol", "/mfa/confirm", "/mfa/reset", "/sessions/end", "/d/ABCDEFGH"} {
		r := alice.post(p, url.Values{"csrf": {"forged"}, "username": {"alice"}, "password": {"correct horse"}, "proto": {"udp"}}, nil)
		if r.code != http.StatusForbidden {
			t.Errorf("POST %s with a forged token: %d, want 403", p, r.code)
		}
	}
	e.mu.Lock()
	n := len(e.downloads)
	e.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d downloads went through", n)
	}
	wantCode(t, alice.post("/download", url.Values{"proto": {"udp"}}, nil), http.StatusOK)
}

func TestCSRFOrigin(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.loginPassword("alice", "correct horse")
	for name, hdr := range map[string]http.Header{
		"other origin":         {"Origin": {"https://evil.test"}},
		"null origin":          {"Origin": {"null"}},
		"other port":           {"Origin": {publicURL + ":8443"}},
		"http origin":          {"Origin": {"http://portal.test"}},
		"other referer":        {"Origin": nil, "Referer": {"https://evil.test/page"}},
		"referer as subdomain": {"Origin": nil, "Referer": {"https://portal.test.evil.test/"}},
	} {
		h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
		for k, v := range hdr {
			if v != nil {
				h[k] = v
			}
		}
		form := url.Values{"proto": {"udp"}, "csrf": {b.csrf}}
		r := b.do("POST", "/download", strings.NewReader(form.Encode()), h)
		if r.code != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", name, r.code)
		}
	}
	// Same origin by Referer alone, or neither header (the token still holds): accepted.
	form := url.Values{"proto": {"udp"}, "csrf": {b.csrf}}
	r := b.do("POST", "/download", strings.NewReader(form.Encode()), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Referer": {publicURL + "/"}})
	wantCode(t, r, http.StatusOK)
	r = b.do("POST", "/download", strings.NewReader(form.Encode()), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
	wantCode(t, r, http.StatusOK)
}

func TestForgedCookie(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.browser(clientAddrA)
	alice.loginPassword("alice", "correct horse")
	real := alice.cookie
	for _, forged := range []string{
		base64.RawURLEncoding.EncodeToString(make([]byte, 32)),
		real[:len(real)-1] + "A",
		real + "A",
		"x",
		strings.Repeat("A", 4096),
	} {
		if forged == real {
			continue
		}
		m := e.browser(clientAddrA)
		m.cookie, m.csrf = forged, alice.csrf
		if r := m.get("/"); r.code != http.StatusSeeOther || !strings.HasPrefix(r.loc, "/login") {
			t.Errorf("forged cookie %.20q opens home: %d", forged, r.code)
		}
		if r := m.post("/download", url.Values{"proto": {"udp"}}, nil); r.code != http.StatusForbidden {
			t.Errorf("forged cookie %.20q downloads: %d", forged, r.code)
		}
	}
}

func TestLocalPath(t *testing.T) {
	for in, want := range map[string]string{
		"/":                            "/",
		"/d/ABCDEFGH":                  "/d/ABCDEFGH",
		"/mfa?x=1":                     "/mfa?x=1",
		"":                             "",
		"//evil.test":                  "",
		"///evil.test":                 "",
		"/\\evil.test":                 "",
		"\\\\evil.test":                "",
		"/\t/evil.test":                "",
		"/\n/evil.test":                "",
		"https://evil.test/":           "",
		"javascript:alert(1)":          "",
		"evil.test":                    "",
		" /x":                          "",
		"/x y":                         "",
		"/" + strings.Repeat("a", 600): "",
	} {
		if got := localPath(in); got != want {
			t.Errorf("localPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNoOpenRedirectAfterLogin(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MFA = nil })
	for next, want := range map[string]string{
		"//evil.test/x":       "/",
		"/\\evil.test":        "/",
		"https://evil.test/":  "/",
		"/%09/evil.test":      "/%09/evil.test", // stays a path on the portal
		"/d/ABCDEFGH":         "/d/ABCDEFGH",
		"javascript:alert(1)": "/",
		"/\t/evil.test":       "/",
	} {
		b := e.browser(clientAddrA)
		b.get("/login?next=" + url.QueryEscape(next))
		r := b.post("/login", url.Values{"username": {"dave"}, "password": {"dave pass"}}, nil)
		if r.code != http.StatusSeeOther || r.loc != want {
			t.Errorf("next=%q: login redirects %d to %q, want %q", next, r.code, r.loc, want)
		}
		// Signed in, /login?next= goes nowhere else either.
		if r := b.get("/login?next=" + url.QueryEscape(next)); r.loc != want {
			t.Errorf("next=%q signed in: redirect to %q, want %q", next, r.loc, want)
		}
	}
}

func TestLoginRateLimitPerUser(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MFA = nil })
	// Failures from ever-changing addresses still count against the username.
	for i := range MaxFailuresPerUser {
		b := e.browser(fmt.Sprintf("198.51.100.%d:1", i+1))
		b.get("/login")
		wantCode(t, b.post("/login", url.Values{"username": {"Dave"}, "password": {"guess" + strconv.Itoa(i)}}, nil), http.StatusUnauthorized)
	}
	calls := e.dir.callCount()
	b := e.browser("203.0.113.1:1")
	b.get("/login")
	r := b.post("/login", url.Values{"username": {"dave"}, "password": {"dave pass"}}, nil)
	wantCode(t, r, http.StatusTooManyRequests)
	wantBody(t, r, "Too many failed sign-ins", "15 minutes")
	if r.hdr.Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
	if e.dir.callCount() != calls {
		t.Fatal("the directory was asked for a limited username")
	}
	for range 10 {
		wantCode(t, b.post("/login", url.Values{"username": {"dave"}, "password": {"dave pass"}}, nil), http.StatusTooManyRequests)
	}
	if n := len(e.audited(EventLoginLimited)); n != 1 {
		t.Fatalf("%d audit records of 11 limited attempts in a minute, want 1", n)
	}
	// Another user is not limited.
	c := e.browser("203.0.113.2:1")
	if r := c.loginPassword("alice", "correct horse"); r.code != http.StatusOK {
		t.Fatalf("another user is limited too: %d", r.code)
	}
	// The window passes.
	e.clk.advance(FailureWindow)
	b.get("/login")
	wantCode(t, b.post("/login", url.Values{"username": {"dave"}, "password": {"dave pass"}}, nil), http.StatusSeeOther)
}

func TestLoginRateLimitPerAddress(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser("198.51.100.9:1")
	b.get("/login")
	// Unknown usernames count as much as known ones.
	for i := range MaxFailuresPerAddress {
		r := b.post("/login", url.Values{"username": {fmt.Sprintf("nobody%d", i)}, "password": {"x"}}, nil)
		wantCode(t, r, http.StatusUnauthorized)
	}
	wantCode(t, b.post("/login", url.Values{"username": {"alice"}, "password": {"correct horse"}}, nil), http.StatusTooManyRequests)
	// Federated logins and device codes from that address are limited too.
	wantCode(t, b.post("/login/oidc", nil, nil), http.StatusTooManyRequests)
	wantCode(t, b.get("/d/ABCDEFGH"), http.StatusTooManyRequests)
	// Another address (IPv6 hosts count by /64) is not.
	other := e.browser("[2001:db8:1:2::10]:1")
	other.get("/login")
	wantCode(t, other.post("/login", url.Values{"username": {"nobody"}, "password": {"x"}}, nil), http.StatusUnauthorized)
}

func TestIPv6ClientsCountedByPrefix(t *testing.T) {
	r1 := httptest.NewRequest("GET", "/", nil)
	r1.RemoteAddr = "[2001:db8:1:2::10]:1"
	r2 := httptest.NewRequest("GET", "/", nil)
	r2.RemoteAddr = "[2001:db8:1:2:ffff::1]:2"
	r3 := httptest.NewRequest("GET", "/", nil)
	r3.RemoteAddr = "[::ffff:192.0.2.1]:3"
	if clientAddr(r1) != clientAddr(r2) || clientAddr(r1) != "2001:db8:1:2::/64" {
		t.Fatalf("IPv6 hosts of one /64 count apart: %q %q", clientAddr(r1), clientAddr(r2))
	}
	if clientAddr(r3) != "192.0.2.1" {
		t.Fatalf("a mapped IPv4 address counts as %q", clientAddr(r3))
	}
}

func TestDeviceCodeGuessingLimited(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	for i := range MaxFailuresPerAddress {
		wantCode(t, b.get(fmt.Sprintf("/d/GUESS%03d", i)), http.StatusNotFound)
	}
	l := startDevice(t, e)
	wantCode(t, b.get("/d/"+l.Code), http.StatusTooManyRequests)
}

func TestTOTPGuessingLimited(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	b.follow(b.post("/login", url.Values{"username": {"alice"}, "password": {"correct horse"}}, nil))
	// The password was right: the counter is at zero; each wrong code counts.
	for range MaxFailuresPerUser {
		wantCode(t, b.post("/login/code", url.Values{"code": {"000000"}}, nil), http.StatusUnauthorized)
	}
	wantCode(t, b.post("/login/code", url.Values{"code": {e.mfa.code("alice")}}, nil), http.StatusTooManyRequests)
}

func TestLimiterBounded(t *testing.T) {
	ctx := context.Background()
	l := newLimiter(state.NewMemory(), "failures", 5, time.Minute, 100)
	now := time.Unix(1e9, 0)
	for i := range 10000 {
		l.fail(ctx, fmt.Sprintf("user%d", i), now)
	}
	if n := l.len(); n > 100 {
		t.Fatalf("limiter holds %d keys, more than 100", n)
	}
	// One key keeps at most max failures however many it gets.
	for range 1000 {
		l.fail(ctx, "target", now)
	}
	k, _ := l.recordKey("target")
	p, _, err := expiry.Get(ctx, l.st, l.bucket, k, now)
	if err != nil || len(p) != 5*8 {
		t.Fatalf("a key keeps %d failures (%v), want 5", len(p)/8, err)
	}
	if over, _ := l.limited(ctx, "target", now); !over {
		t.Fatal("a key over its failures is not limited")
	}
	if over, _ := l.limited(ctx, "target", now.Add(time.Minute)); over {
		t.Fatal("a key is still limited after the window")
	}
}

func TestSessionStoreBounded(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxSessions = 50 })
	alice := e.browser(clientAddrA)
	alice.loginPassword("alice", "correct horse")
	for i := range 500 {
		e.browser(fmt.Sprintf("198.51.100.%d:1", i%250)).get("/login")
	}
	// MaxSessions bounds the sessions not signed in; alice's is bounded as hers.
	if n := e.srv.sessions.len(); n > 50+1 {
		t.Fatalf("%d sessions kept, more than 50 anonymous and alice's", n)
	}
	// The flood of anonymous sessions did not end the signed-in user's.
	wantCode(t, alice.get("/"), http.StatusOK)
	// Anonymous sessions expire on their own, whatever their browser does: then there is
	// room again.
	e.clk.advance(anonTTL)
	wantCode(t, e.browser("203.0.113.9:1").get("/login"), http.StatusOK)
}

// TestSessionsPerAddressBounded: one address gets anonPerAddress sessions not signed in.
func TestSessionsPerAddressBounded(t *testing.T) {
	e := newEnv(t, nil)
	for range anonPerAddress {
		wantCode(t, e.browser("198.51.100.7:1").get("/login"), http.StatusOK)
	}
	wantCode(t, e.browser("198.51.100.7:2").get("/login"), http.StatusServiceUnavailable)
	wantCode(t, e.browser("198.51.100.8:1").get("/login"), http.StatusOK)
}

func TestFederatedTableBounded(t *testing.T) {
	ctx := context.Background()
	tbl := newFederatedTable(nil, nil, 10)
	now := time.Unix(1e9, 0)
	var k [32]byte
	for i := range 20 {
		k[0] = byte(i)
		_ = tbl.begin(ctx, fmt.Sprint("s", i), "oidc", k, now)
	}
	if tbl.len() > 10 {
		t.Fatalf("table holds %d logins, more than 10", tbl.len())
	}
	// One session keeps at most perSession logins.
	k[0] = 200
	tbl = newFederatedTable(nil, nil, 100)
	for i := range 20 {
		if err := tbl.begin(ctx, fmt.Sprint("t", i), "oidc", k, now.Add(time.Duration(i))); err != nil {
			t.Fatal(err)
		}
	}
	if tbl.len() != perSession {
		t.Fatalf("one session holds %d logins, want %d", tbl.len(), perSession)
	}
	// The ones kept are the newest.
	if _, live := tbl.take(ctx, "t19", now); !live {
		t.Fatal("the newest login was dropped")
	}
	if l, _ := tbl.take(ctx, "t0", now); l.Provider != "" {
		t.Fatal("the oldest login was kept")
	}
}

func TestFederatedLoginBoundToBrowser(t *testing.T) {
	e := newEnv(t, nil)
	// The attacker begins a login and signs in at the provider as themselves...
	attacker := e.browser("198.51.100.66:1")
	attacker.get("/login")
	u, _ := url.Parse(attacker.post("/login/oidc", nil, nil).loc)
	// ...then makes the victim's browser deliver the provider's answer (login CSRF).
	victim := e.browser(clientAddrA)
	victim.get("/login")
	r := victim.get("/oidc/callback?" + url.Values{"state": {u.Query().Get("state")}, "user": {"mallory"}}.Encode())
	r = victim.follow(r)
	wantCode(t, r, http.StatusForbidden)
	wantBody(t, r, "started in another browser")
	if r := victim.get("/"); r.code != http.StatusSeeOther {
		t.Fatal("the victim was signed in as the attacker")
	}
	// A state this portal never began, and one begun for the other provider, are refused.
	wantCode(t, victim.get("/oidc/callback?state=never-begun&user=x"), http.StatusUnauthorized)
	victim.get("/login")
	u, _ = url.Parse(victim.post("/login/oidc", nil, nil).loc)
	e.saml.mu.Lock()
	e.saml.states[u.Query().Get("state")] = true // the SAML fake would accept it
	e.saml.mu.Unlock()
	form := url.Values{"RelayState": {u.Query().Get("state")}, "user": {"mallory"}}
	r = victim.do("POST", "/saml/acs", strings.NewReader(form.Encode()), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
	wantCode(t, r, http.StatusBadRequest)
}

func TestFederatedFinishSingleUse(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	u, _ := url.Parse(b.post("/login/oidc", nil, nil).loc)
	r := b.get("/oidc/callback?" + url.Values{"state": {u.Query().Get("state")}, "user": {"carol"}}.Encode())
	finish := r.loc
	wantCode(t, b.get(finish), http.StatusSeeOther)
	wantCode(t, b.get(finish), http.StatusForbidden)
}

func TestFederatedLoginExpires(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	u, _ := url.Parse(b.post("/login/oidc", nil, nil).loc)
	e.clk.advance(federatedTTL + time.Second)
	b.get("/login") // keeps the session alive
	r := b.get("/oidc/callback?" + url.Values{"state": {u.Query().Get("state")}, "user": {"carol"}}.Encode())
	wantCode(t, r, http.StatusBadRequest)
	wantBody(t, r, msgExpired)
}

// pagesOf signs in and returns the portal's pages, for the header and markup checks.
func pagesOf(t *testing.T, e *env) map[string]res {
	b := e.browser(clientAddrA)
	out := map[string]res{"/login": b.get("/login")}
	b.loginPassword("alice", "correct horse")
	l := startDevice(t, e)
	for _, p := range []string{"/", "/mfa", "/d", "/d/" + l.Code, "/d/UNKNOWN1", "/no/such/page", "/static/portal.css"} {
		out[p] = b.get(p)
	}
	out["POST /mfa/enrol"] = b.follow(b.post("/mfa/enrol", nil, nil))
	out["/mfa/qr.png"] = b.get("/mfa/qr.png")
	out["POST /download"] = b.post("/download", url.Values{"proto": {"udp"}}, nil)
	out["POST /login (forged)"] = b.post("/login", url.Values{"csrf": {"x"}}, nil)
	return out
}

func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t, nil)
	for p, r := range pagesOf(t, e) {
		h := r.hdr
		csp := h.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'self'", "img-src 'self' data:", "form-action 'self' https://idp.test", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", p, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe") || strings.Contains(csp, "script-src") {
			t.Errorf("%s: CSP allows scripts: %q", p, csp)
		}
		for k, want := range map[string]string{
			"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
		} {
			if got := h.Get(k); got != want {
				t.Errorf("%s: %s %q, want %q", p, k, got, want)
			}
		}
		if !strings.HasPrefix(h.Get("Strict-Transport-Security"), "max-age=") {
			t.Errorf("%s: Strict-Transport-Security %q", p, h.Get("Strict-Transport-Security"))
		}
		if p != "/static/portal.css" && h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", p, h.Get("Cache-Control"))
		}
	}
}

func TestPagesHaveNoScriptAndFitPhones(t *testing.T) {
	e := newEnv(t, nil)
	for p, r := range pagesOf(t, e) {
		if !strings.HasPrefix(r.hdr.Get("Content-Type"), "text/html") {
			continue
		}
		doc, err := html.Parse(strings.NewReader(r.body))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		viewport := false
		var walk func(*html.Node)
		walk = func(n *html.Node) {
			if n.Type == html.ElementNode {
				if n.Data == "script" || n.Data == "iframe" {
					t.Errorf("%s: <%s> element", p, n.Data)
				}
				for _, a := range n.Attr {
					if strings.HasPrefix(a.Key, "on") || strings.HasPrefix(strings.TrimSpace(strings.ToLower(a.Val)), "javascript:") || a.Key == "style" {
						t.Errorf("%s: <%s %s=%q>", p, n.Data, a.Key, a.Val)
					}
					if n.Data == "meta" && a.Key == "name" && a.Val == "viewport" {
						viewport = true
					}
				}
				if n.Data == "form" && attr(n, "method") == "post" && !hasCSRFField(n) {
					t.Errorf("%s: a POST form to %s without the CSRF token", p, attr(n, "action"))
				}
			}
			for c := n.FirstChild; c != nil; c = c.NextSibling {
				walk(c)
			}
		}
		walk(doc)
		if !viewport {
			t.Errorf("%s: no viewport meta", p)
		}
	}
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func hasCSRFField(form *html.Node) bool {
	found := false
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && n.Data == "input" && attr(n, "name") == "csrf" && attr(n, "value") != "" {
			found = true
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(form)
	return found
}

func TestRequestBodyLimits(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	big := strings.Repeat("a", 1<<20)
	r := b.post("/login", url.Values{"username": {"alice"}, "password": {big}}, nil)
	wantCode(t, r, http.StatusRequestEntityTooLarge)
	// Without a Content-Length (chunked), the body is cut while the form is read.
	body := io.MultiReader(strings.NewReader("csrf="+b.csrf+"&password="), strings.NewReader(big))
	req := httptest.NewRequest("POST", publicURL+"/login", body)
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: cookieName, Value: b.cookie})
	req.RemoteAddr = clientAddrA
	rec := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("a chunked 1 MiB form: %d, want 400", rec.Code)
	}
	if e.dir.callCount() != 0 {
		t.Fatal("the directory was asked about an oversized form")
	}
	// An overlong username is refused without asking the directory.
	r = b.post("/login", url.Values{"username": {strings.Repeat("u", maxUsername+1)}, "password": {"x"}}, nil)
	wantCode(t, r, http.StatusUnauthorized)
	if e.dir.callCount() != 0 {
		t.Fatal("the directory was asked about an overlong username")
	}
}

func TestErrorsNeverEchoSecrets(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	secretPassword := "S3cret-Passw0rd-<xyz>"
	r := b.post("/login", url.Values{"username": {"alice"}, "password": {secretPassword}}, nil)
	wantNotBody(t, r, secretPassword, html.EscapeString(secretPassword), "secret-detail", "uid=alice")
	b.follow(b.post("/login", url.Values{"username": {"alice"}, "password": {"correct horse"}}, nil))
	r = b.post("/login/code", url.Values{"code": {"987654"}}, nil)
	wantNotBody(t, r, "987654", "mfa: wrong code")
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, a := range e.audits {
		s := fmt.Sprint(a.attrs...)
		if strings.Contains(s, secretPassword) || strings.Contains(s, "987654") || strings.Contains(s, b.cookie) {
			t.Errorf("audit record %s holds a secret: %v", a.event, a.attrs)
		}
	}
}

// TestOverRealTLS runs a sign-in and a download with net/http's client and cookie jar
// against the handler served over TLS: the Secure, __Host- cookie works in a real client.
func TestOverRealTLS(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MFA = nil })
	var srv atomic.Pointer[Server]
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		srv.Load().Handler().ServeHTTP(w, r)
	}))
	cfg := e.srv.cfg
	cfg.PublicURL = "https://" + ts.Listener.Addr().String()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Store(s)
	ts.StartTLS()
	defer ts.Close()
	jar, _ := cookiejar.New(nil)
	c := ts.Client()
	c.Jar = jar
	get := func(p string) string {
		resp, err := c.Get(ts.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	page := get("/login")
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token on the login page:\n%s", page)
	}
	post := func(p string, form url.Values) *http.Response {
		req, _ := http.NewRequest("POST", ts.URL+p, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", ts.URL)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := post("/login", url.Values{"csrf": {m[1]}, "username": {"dave"}, "password": {"dave pass"}})
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Download for UDP") {
		t.Fatalf("login over TLS ended %d:\n%s", resp.StatusCode, body)
	}
	m = csrfRE.FindStringSubmatch(string(body))
	resp = post("/download", url.Values{"csrf": {m[1]}, "proto": {"tcp"}})
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "client\nproto tcp\n# for dave\n" {
		t.Fatalf("download over TLS: %d %q", resp.StatusCode, body)
	}
}
