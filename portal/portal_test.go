package portal

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/png"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/auth/sso"
	"golang.org/x/net/html"
	"rsc.io/qr"
)

const clientAddrA = "192.0.2.10:50000"

func TestNewRefusesBadConfig(t *testing.T) {
	dir := &fakeDir{}
	for name, cfg := range map[string]Config{
		"no login":         {PublicURL: publicURL},
		"mfa alone":        {PublicURL: publicURL, MFA: newFakeMFA(), Federated: []FederatedLogin{&fakeFed{name: "oidc"}}},
		"http url":         {PublicURL: "http://portal.test", Password: dir},
		"no host":          {PublicURL: "https:///x", Password: dir},
		"bad provider":     {PublicURL: publicURL, Federated: []FederatedLogin{&fakeFed{name: "ldap"}}},
		"twice oidc":       {PublicURL: publicURL, Federated: []FederatedLogin{&fakeFed{name: "oidc"}, &fakeFed{name: "oidc"}}},
		"idp origin path":  {PublicURL: publicURL, Password: dir, IdPOrigins: []string{"https://idp.test/login"}},
		"idp origin http":  {PublicURL: publicURL, Password: dir, IdPOrigins: []string{"http://idp.test"}},
		"idp origin query": {PublicURL: publicURL, Password: dir, IdPOrigins: []string{"https://idp.test?x=1"}},
		"idp origin none":  {PublicURL: publicURL, Password: dir, IdPOrigins: []string{"idp.test"}},
		"idp origin csp":   {PublicURL: publicURL, Password: dir, IdPOrigins: []string{"https://idp.test; script-src *"}},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: New = %v, want ErrConfig", name, err)
		}
	}
}

func TestIdPOrigins(t *testing.T) {
	s, err := New(Config{PublicURL: publicURL, Password: &fakeDir{}, IdPOrigins: []string{"https://IdP.test:8443/", "http://127.0.0.1:9000", "http://localhost:9"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := "form-action 'self' https://idp.test:8443 http://127.0.0.1:9000 http://localhost:9;"; !strings.Contains(s.csp, want) {
		t.Fatalf("CSP %q lacks %q", s.csp, want)
	}
}

func TestPasswordLogin(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MFA = nil })
	b := e.browser(clientAddrA)
	r := b.get("/login")
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, `name="username"`, `name="password"`, `action="/login/oidc"`, `action="/login/saml"`)
	anon := b.cookie
	r = b.post("/login", url.Values{"username": {"dave"}, "password": {"dave pass"}}, nil)
	wantCode(t, r, http.StatusSeeOther)
	if r.loc != "/" {
		t.Fatalf("login redirects to %q, want /", r.loc)
	}
	if b.cookie == anon || b.cookie == "" {
		t.Fatal("the session id was not rotated at login")
	}
	r = b.get("/")
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "dave", "Download for UDP", "Download for TCP", "Your connections")
	wantNotBody(t, r, "Authenticator") // MFA off
	a := e.audited(EventLogin)
	if len(a) != 1 || a[0].attr("user") != "dave" || a[0].attr("method") != MethodDirectory {
		t.Fatalf("audit of the login: %+v", a)
	}
}

func TestPasswordLoginWrong(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	r := b.post("/login", url.Values{"username": {"alice"}, "password": {"hunter2-typed-secret"}}, nil)
	wantCode(t, r, http.StatusUnauthorized)
	wantBody(t, r, msgBadPassword)
	wantNotBody(t, r, "hunter2-typed-secret", "secret-detail", "ldap")
	if r := b.get("/"); r.code != http.StatusSeeOther || !strings.HasPrefix(r.loc, "/login") {
		t.Fatalf("after a wrong password, / answers %d %q; want a redirect to /login", r.code, r.loc)
	}
	if a := e.audited(EventLoginFailed); len(a) != 1 || a[0].attr("user") != "alice" {
		t.Fatalf("audit of the failure: %+v", a)
	}
}

func TestPasswordAndTOTP(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	r := b.follow(b.post("/login", url.Values{"username": {"alice"}, "password": {"correct horse"}}, nil))
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, `action="/login/code"`, "alice")
	if r := b.get("/"); r.code != http.StatusSeeOther {
		t.Fatalf("before the code, / answers %d; want a redirect", r.code)
	}
	r = b.post("/login/code", url.Values{"code": {"000000"}}, nil)
	wantCode(t, r, http.StatusUnauthorized)
	wantBody(t, r, msgBadCode)
	r = b.post("/login/code", url.Values{"code": {e.mfa.code("alice")}}, nil)
	wantCode(t, r, http.StatusSeeOther)
	r = b.follow(r)
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "Your VPN", "Replace authenticator", "Remove authenticator")

	// The same code again, in another browser, is refused (the second factor's replay rule).
	b2 := e.browser("192.0.2.11:1")
	b2.get("/login")
	b2.follow(b2.post("/login", url.Values{"username": {"alice"}, "password": {"correct horse"}}, nil))
	wantCode(t, b2.post("/login/code", url.Values{"code": {e.mfa.code("alice")}}, nil), http.StatusUnauthorized)
}

func TestCodeStepExpires(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	b.follow(b.post("/login", url.Values{"username": {"alice"}, "password": {"correct horse"}}, nil))
	e.clk.advance(codeStepTTL + time.Second)
	r := b.post("/login/code", url.Values{"code": {e.mfa.code("alice")}}, nil)
	wantCode(t, r, http.StatusUnauthorized)
	wantBody(t, r, msgExpired)
}

func TestNotEnrolledMustEnrolFirst(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	r := b.post("/login", url.Values{"username": {"bob"}, "password": {"battery staple"}}, nil)
	wantCode(t, r, http.StatusSeeOther)
	if r.loc != "/mfa" {
		t.Fatalf("a user without an authenticator is sent to %q, want /mfa", r.loc)
	}
	r = b.get("/")
	if r.code != http.StatusSeeOther || r.loc != "/mfa" {
		t.Fatalf("home before enrolment: %d %q, want a redirect to /mfa", r.code, r.loc)
	}
	r = b.get("/mfa")
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "needs an authenticator")
	for _, p := range []string{"/download", "/sessions/end", "/mfa/reset"} {
		if r := b.post(p, url.Values{"proto": {"udp"}, "connection": {"cvpn-endpoint-conn-b1"}}, nil); r.code != http.StatusForbidden {
			t.Errorf("POST %s before enrolment: %d, want 403", p, r.code)
		}
	}
	if !e.sessions.has("bob", "cvpn-endpoint-conn-b1") {
		t.Fatal("a connection was ended before enrolment")
	}

	r = b.follow(b.post("/mfa/enrol", nil, nil))
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, `src="/mfa/qr.png"`, `href="otpauth://totp/cvpn:bob?`, "JBSWY3DPEHPK3PX")
	if !e.mfa.isEnrolled("bob") {
		t.Fatal("enrolment did not reach the second factor")
	}
	r = b.post("/mfa/confirm", url.Values{"code": {"999999"}}, nil)
	wantCode(t, r, http.StatusUnauthorized)
	before := b.cookie
	r = b.post("/mfa/confirm", url.Values{"code": {e.mfa.code("bob")}}, nil)
	wantCode(t, r, http.StatusSeeOther)
	if b.cookie == before {
		t.Fatal("the session was not rotated when enrolment completed the login")
	}
	r = b.follow(r)
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "Your authenticator is enrolled.", "Download for UDP")
	if len(e.audited(EventMFAEnrol)) != 1 || len(e.audited(EventMFAConfirm)) != 1 {
		t.Fatalf("audit: enrol %d, confirm %d; want 1 each", len(e.audited(EventMFAEnrol)), len(e.audited(EventMFAConfirm)))
	}
	if r := b.get("/mfa/qr.png"); r.code != http.StatusNotFound {
		t.Fatalf("the QR code is still drawn after confirmation: %d", r.code)
	}
}

// qrModules samples a QR PNG drawn by rsc.io/qr (a 4-module border) into its modules.
func qrModules(t *testing.T, img image.Image, size int) [][]bool {
	t.Helper()
	w := img.Bounds().Dx()
	if w != img.Bounds().Dy() || w%(size+8) != 0 {
		t.Fatalf("QR image is %v, not a square of %d modules", img.Bounds(), size+8)
	}
	scale := w / (size + 8)
	out := make([][]bool, size)
	for y := range size {
		out[y] = make([]bool, size)
		for x := range size {
			r, _, _, _ := img.At((x+4)*scale+scale/2, (y+4)*scale+scale/2).RGBA()
			out[y][x] = r < 0x8000
		}
	}
	return out
}

func TestEnrolQRCodeEncodesTheURI(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.loginPassword("alice", "correct horse")
	r := b.follow(b.post("/mfa/enrol", nil, nil))
	m := regexp.MustCompile(`href="(otpauth://[^"]+)"`).FindStringSubmatch(r.body)
	if m == nil {
		t.Fatalf("the enrolment page has no otpauth link:\n%s", r.body)
	}
	uri := html.UnescapeString(m[1])
	r = b.get("/mfa/qr.png")
	wantCode(t, r, http.StatusOK)
	if ct := r.hdr.Get("Content-Type"); ct != "image/png" {
		t.Fatalf("QR Content-Type %q", ct)
	}
	if cc := r.hdr.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("QR Cache-Control %q, want no-store: it holds the secret", cc)
	}
	img, err := png.Decode(bytes.NewReader([]byte(r.body)))
	if err != nil {
		t.Fatalf("the QR image is not a PNG: %v", err)
	}
	want, err := qr.Encode(uri, qr.M)
	if err != nil {
		t.Fatal(err)
	}
	got := qrModules(t, img, want.Size)
	for y := range want.Size {
		for x := range want.Size {
			if got[y][x] != want.Black(x, y) {
				t.Fatalf("module (%d,%d) differs from the QR code of %q", x, y, uri)
			}
		}
	}
	// Another browser (signed in as someone else) gets no image.
	other := e.browser("192.0.2.11:1")
	other.loginPassword("dave", "dave pass")
	if r := other.get("/mfa/qr.png"); r.code == http.StatusOK {
		t.Fatal("another session can read the QR code")
	}
}

func TestMFAReset(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.loginPassword("alice", "correct horse")
	r := b.follow(b.post("/mfa/reset", nil, nil))
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "Your authenticator was removed.", "Enrol an authenticator")
	if e.mfa.isEnrolled("alice") {
		t.Fatal("reset did not reach the second factor")
	}
	if a := e.audited(EventMFAReset); len(a) != 1 || a[0].attr("user") != "alice" {
		t.Fatalf("audit of the reset: %+v", a)
	}
}

func TestFederatedLoginOIDC(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	r := b.post("/login/oidc", nil, nil)
	wantCode(t, r, http.StatusSeeOther)
	u, err := url.Parse(r.loc)
	if err != nil || u.Host != "idp.test" {
		t.Fatalf("POST /login/oidc redirects to %q, want the provider", r.loc)
	}
	state := u.Query().Get("state")
	r = b.get("/oidc/callback?" + url.Values{"state": {state}, "user": {"carol"}}.Encode())
	wantCode(t, r, http.StatusSeeOther)
	if !strings.HasPrefix(r.loc, "/login/finish?t=") {
		t.Fatalf("callback redirects to %q", r.loc)
	}
	r = b.follow(r)
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "carol", "Download for UDP")
	wantNotBody(t, r, "Authenticator") // no TOTP for federated users
	if a := e.audited(EventLogin); len(a) != 1 || a[0].attr("method") != MethodOIDC || a[0].attr("user") != "carol" {
		t.Fatalf("audit: %+v", a)
	}
	// The answer is single-use.
	r = b.get("/oidc/callback?" + url.Values{"state": {state}, "user": {"mallory"}}.Encode())
	if r.code < 400 {
		t.Fatalf("a replayed callback answers %d", r.code)
	}
}

func TestFederatedLoginOtherOriginGetsALink(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.IdPOrigins = nil })
	b := e.browser(clientAddrA)
	b.get("/login")
	r := b.post("/login/oidc", nil, nil)
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, `href="https://idp.test/authorize?state=oidc-state-1"`, "Continue to the identity provider")
	r = b.follow(b.get("/oidc/callback?" + url.Values{"state": {"oidc-state-1"}, "user": {"carol"}}.Encode()))
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "carol")
}

func TestFederatedLoginSAMLPostedCrossSite(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	r := b.post("/login/saml", nil, nil)
	u, _ := url.Parse(r.loc)
	state := u.Query().Get("state")
	// The IdP's page posts the response: cross-site, so the browser sends no cookie (SameSite=Lax).
	cookie := b.cookie
	b.cookie = ""
	form := url.Values{"SAMLResponse": {"PHNhbWw+"}, "RelayState": {state}, "user": {"erin"}}
	r = b.do("POST", "/saml/acs", strings.NewReader(form.Encode()), http.Header{
		"Content-Type": {"application/x-www-form-urlencoded"}, "Origin": {"https://idp.test"}})
	wantCode(t, r, http.StatusSeeOther)
	b.cookie = cookie // the redirected GET is same-site: the cookie is sent again
	r = b.follow(r)
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "erin")
	if a := e.audited(EventLogin); len(a) != 1 || a[0].attr("method") != MethodSAML {
		t.Fatalf("audit: %+v", a)
	}
}

func TestFederatedLoginRefused(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.get("/login")
	u, _ := url.Parse(b.post("/login/oidc", nil, nil).loc)
	r := b.get("/oidc/callback?" + url.Values{"state": {u.Query().Get("state")}, "fail": {"1"}}.Encode())
	wantCode(t, r, http.StatusUnauthorized)
	wantBody(t, r, msgFederated)
	wantNotBody(t, r, "SECRETDETAIL", "signature")
	if r := b.get("/"); r.code != http.StatusSeeOther {
		t.Fatal("a refused federated login signed the browser in")
	}
	if len(e.audited(EventLoginFailed)) != 1 {
		t.Fatal("no audit record of the refused login")
	}
}

func TestDownload(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.loginPassword("alice", "correct horse")
	for _, proto := range []string{"udp", "tcp"} {
		r := b.post("/download", url.Values{"proto": {proto}}, nil)
		wantCode(t, r, http.StatusOK)
		if r.body != "client\nproto "+proto+"\n# for alice\n" {
			t.Fatalf("profile body %q", r.body)
		}
		if ct := r.hdr.Get("Content-Type"); ct != "application/x-openvpn-profile" {
			t.Errorf("Content-Type %q", ct)
		}
		disp, params, err := mime.ParseMediaType(r.hdr.Get("Content-Disposition"))
		if err != nil || disp != "attachment" || params["filename"] != "cvpn-alice-"+proto+".ovpn" {
			t.Errorf("Content-Disposition %q", r.hdr.Get("Content-Disposition"))
		}
		if r.hdr.Get("Cache-Control") != "no-store" {
			t.Errorf("a profile may be cached: %q", r.hdr.Get("Cache-Control"))
		}
	}
	e.mu.Lock()
	downloads := strings.Join(e.downloads, ",")
	e.mu.Unlock()
	if downloads != "udp,tcp" {
		t.Fatalf("OnDownload saw %q, want udp,tcp", downloads)
	}
	if a := e.audited(EventDownload); len(a) != 2 || a[1].attr("proto") != "tcp" {
		t.Fatalf("audit: %+v", a)
	}
	wantCode(t, b.post("/download", url.Values{"proto": {"icmp"}}, nil), http.StatusBadRequest)
	if r := b.get("/download?proto=udp"); r.code == http.StatusOK || strings.Contains(r.body, "proto udp") {
		t.Fatalf("GET /download: %d, a profile (downloads issue certificates: POST only)", r.code)
	}
	e.profiles.fail = true
	r := b.post("/download", url.Values{"proto": {"udp"}}, nil)
	wantCode(t, r, http.StatusBadGateway)
	wantNotBody(t, r, "secret-detail", "pki")
}

func TestProfileName(t *testing.T) {
	for in, want := range map[string]string{
		"cvpn-alice-udp.ovpn":         "cvpn-alice-udp.ovpn",
		`a"; filename=evil.sh`:        "a___filename_evil.sh.ovpn",
		"../../etc/passwd":            "_.._etc_passwd.ovpn",
		"":                            "cvpn-udp.ovpn",
		"...":                         "cvpn-udp.ovpn",
		"prof\r\nSet-Cookie: x=y":     "prof__Set-Cookie__x_y.ovpn",
		strings.Repeat("a", 300):      strings.Repeat("a", 96) + ".ovpn",
		"résumé.ovpn":                 "r_sum_.ovpn",
		"endpoint-cvpn-1234-tcp.conf": "endpoint-cvpn-1234-tcp.conf.ovpn",
	} {
		if got := profileName(in, "udp"); got != want {
			t.Errorf("profileName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSessionsListAndEndOwnOnly(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	r := b.loginPassword("alice", "correct horse")
	wantBody(t, r, "cvpn-endpoint-conn-a1", "cvpn-endpoint-conn-a2", "198.51.100.7", "10.8.0.3", "ios")
	wantNotBody(t, r, "cvpn-endpoint-conn-b1")
	r = b.post("/sessions/end", url.Values{"connection": {"cvpn-endpoint-conn-a1"}}, nil)
	wantCode(t, r, http.StatusSeeOther)
	r = b.follow(r)
	wantBody(t, r, "The connection was ended.", "cvpn-endpoint-conn-a2")
	wantNotBody(t, r, "cvpn-endpoint-conn-a1")
	if e.sessions.has("alice", "cvpn-endpoint-conn-a1") {
		t.Fatal("the connection was not ended")
	}
	// Bob's connection id, posted by alice, is refused and bob keeps his connection.
	r = b.post("/sessions/end", url.Values{"connection": {"cvpn-endpoint-conn-b1"}}, nil)
	wantCode(t, r, http.StatusNotFound)
	if !e.sessions.has("bob", "cvpn-endpoint-conn-b1") {
		t.Fatal("alice ended bob's connection")
	}
	if a := e.audited(EventSessionEnded); len(a) != 1 || a[0].attr("connection") != "cvpn-endpoint-conn-a1" {
		t.Fatalf("audit: %+v", a)
	}
}

// startDevice starts a device login as the admission pipeline does.
func startDevice(t *testing.T, e *env) sso.Login {
	t.Helper()
	l, err := e.broker.Start(context.Background(), sso.Attempt{ConnectionID: "cvpn-endpoint-conn-77", Remote: netip.MustParseAddr("203.0.113.50"),
		Platform: "linux", Version: "2.6.14", Hint: "<b>alice</b>"})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestDeviceApprove(t *testing.T) {
	e := newEnv(t, nil)
	l := startDevice(t, e)
	e.clk.advance(90 * time.Second)
	b := e.browser(clientAddrA)
	// Not signed in: the link sends the browser to sign in, then back.
	r := b.get("/d/" + strings.ToLower(sso.FormatCode(l.Code)))
	wantCode(t, r, http.StatusSeeOther)
	if !strings.HasPrefix(r.loc, "/login?next=") {
		t.Fatalf("an anonymous device link redirects to %q", r.loc)
	}
	b.get(r.loc)
	r = b.post("/login", url.Values{"username": {"alice"}, "password": {"correct horse"}}, nil)
	r = b.follow(r)
	r = b.post("/login/code", url.Values{"code": {e.mfa.code("alice")}}, nil)
	wantCode(t, r, http.StatusSeeOther)
	if !strings.HasPrefix(r.loc, "/d/") {
		t.Fatalf("after login the browser goes to %q, not back to the device link", r.loc)
	}
	r = b.follow(r)
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, sso.FormatCode(l.Code), "203.0.113.50", "linux", "2.6.14", "2026-11-29 12:00:00 UTC", "1m30s ago", "&lt;b&gt;alice&lt;/b&gt;")
	wantNotBody(t, r, "<b>alice</b>")
	wantBody(t, r, `id="device-other-address"`) // 192.0.2.10 opened a link of 203.0.113.50
	same := e.browser("203.0.113.50:4000")
	_, _ = e.mfa.Enroll(context.Background(), "dave")
	same.loginPassword("dave", "dave pass")
	r = same.get("/d/" + l.Code)
	wantCode(t, r, http.StatusOK)
	wantNotBody(t, r, `id="device-other-address"`)
	r = b.post("/d/"+l.Code, url.Values{"decision": {"approve"}}, nil)
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "approved")
	id, err := e.broker.Take(context.Background(), l.State)
	if err != nil {
		t.Fatalf("the broker's login was not completed: %v", err)
	}
	if id.Username != "alice" || strings.Join(id.Groups, ",") != "staff,alice-group" {
		t.Fatalf("broker identity %+v", id)
	}
	if a := e.audited(EventDeviceApprove); len(a) != 1 || a[0].attr("connection") != "cvpn-endpoint-conn-77" {
		t.Fatalf("audit: %+v", a)
	}
}

func TestDeviceApproveFederatedKeepsSubject(t *testing.T) {
	e := newEnv(t, nil)
	l := startDevice(t, e)
	b := e.browser(clientAddrA)
	b.get("/login")
	u, _ := url.Parse(b.post("/login/oidc", nil, nil).loc)
	b.follow(b.get("/oidc/callback?" + url.Values{"state": {u.Query().Get("state")}, "user": {"carol"}}.Encode()))
	wantCode(t, b.get("/d/"+l.Code), http.StatusOK)
	wantCode(t, b.post("/d/"+l.Code, url.Values{"decision": {"approve"}}, nil), http.StatusOK)
	id, err := e.broker.Take(context.Background(), l.State)
	if err != nil || id.Username != "carol" || id.Subject != "sub-carol" || id.Issuer != "https://idp.test" || id.Groups[0] != "engineers" {
		t.Fatalf("broker identity %+v, %v", id, err)
	}
}

func TestDeviceDeny(t *testing.T) {
	e := newEnv(t, nil)
	l := startDevice(t, e)
	b := e.browser(clientAddrA)
	b.loginPassword("alice", "correct horse")
	b.get("/d/" + l.Code)
	r := b.post("/d/"+l.Code, url.Values{"decision": {"deny"}}, nil)
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "denied")
	if _, err := e.broker.Take(context.Background(), l.State); !errors.Is(err, sso.ErrFailed) || err.Error() != errDenied.Error() {
		t.Fatalf("Take after deny: %v, want the denial", err)
	}
	if len(e.audited(EventDeviceDeny)) != 1 {
		t.Fatal("no audit record of the denial")
	}
}

func TestDeviceUnknownExpiredDecided(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.loginPassword("alice", "correct horse")
	r := b.get("/d/ABCD-EFGH")
	wantCode(t, r, http.StatusNotFound)
	wantBody(t, r, "unknown or has expired")
	r = b.get("/d/%3Cscript%3E")
	wantCode(t, r, http.StatusNotFound)
	wantNotBody(t, r, "<script")

	l := startDevice(t, e)
	e.clk.advance(sso.DefaultTTL + time.Second)
	wantCode(t, b.get("/d/"+l.Code), http.StatusNotFound)
	wantCode(t, b.post("/d/"+l.Code, url.Values{"decision": {"approve"}}, nil), http.StatusNotFound)

	l = startDevice(t, e)
	wantCode(t, b.post("/d/"+l.Code, url.Values{"decision": {"approve"}}, nil), http.StatusOK)
	r = b.get("/d/" + l.Code)
	wantCode(t, r, http.StatusGone)
	wantBody(t, r, "approved or denied already")
	wantCode(t, b.post("/d/"+l.Code, url.Values{"decision": {"deny"}}, nil), http.StatusGone)
}

func TestDeviceCodeForm(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	r := b.get("/d?code=abcd-efgh")
	if r.code != http.StatusSeeOther || r.loc != "/d/ABCDEFGH" {
		t.Fatalf("/d?code= answers %d %q", r.code, r.loc)
	}
	r = b.get("/d?code=" + url.QueryEscape("../../x"))
	wantCode(t, r, http.StatusOK)
	wantBody(t, r, "not a code")
}

func TestLogout(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser(clientAddrA)
	b.loginPassword("alice", "correct horse")
	old, csrf := b.cookie, b.csrf
	r := b.post("/logout", nil, nil)
	wantCode(t, r, http.StatusSeeOther)
	cleared := false
	for _, c := range r.sets {
		cleared = cleared || (c.Name == cookieName && c.MaxAge < 0)
	}
	if !cleared {
		t.Fatal("logout did not clear the cookie")
	}
	if a := e.audited(EventLogout); len(a) != 1 || a[0].attr("user") != "alice" {
		t.Fatalf("audit: %+v", a)
	}
	// The old cookie is dead on the server too.
	b.cookie, b.csrf = old, csrf
	if r := b.get("/"); r.code != http.StatusSeeOther {
		t.Fatalf("the logged-out session still opens home: %d", r.code)
	}
	if r := b.post("/download", url.Values{"proto": {"udp"}, "csrf": {csrf}}, nil); r.code != http.StatusForbidden {
		t.Fatalf("the logged-out session still downloads: %d", r.code)
	}
}
