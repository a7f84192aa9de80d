package portal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cvpn/cvpn/auth/sso"
)

// clock is the tests' injected time.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// fakeDir is a directory: users with passwords and groups. Its error names a detail that
// must never reach a page.
type fakeDir struct {
	mu    sync.Mutex
	users map[string]string
	calls int
}

var errDirDetail = errors.New("ldap: invalid credentials for uid=alice,ou=people,dc=secret-detail")

func (d *fakeDir) Login(_ context.Context, user, password string) (Identity, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls++
	if p, ok := d.users[user]; !ok || p != password {
		return Identity{}, errDirDetail
	}
	return Identity{Username: user, Groups: []string{"staff", user + "-group"}}, nil
}

func (d *fakeDir) callCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls
}

// fakeMFA is a second factor whose one valid code per user is "1234" + two digits kept in
// codes; a code is accepted once.
type fakeMFA struct {
	mu       sync.Mutex
	enrolled map[string]bool
	codes    map[string]string
	used     map[string]bool
	n        int
}

func newFakeMFA() *fakeMFA {
	return &fakeMFA{enrolled: map[string]bool{}, codes: map[string]string{}, used: map[string]bool{}}
}

var errFakeCode = errors.New("mfa: wrong code")

func (m *fakeMFA) Enrolled(_ context.Context, user string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.enrolled[user], nil
}

func (m *fakeMFA) Verify(_ context.Context, user, code string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.enrolled[user] || code != m.codes[user] || m.used[user+code] {
		return errFakeCode
	}
	m.used[user+code] = true
	return nil
}

func (m *fakeMFA) Enroll(_ context.Context, user string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n++
	m.enrolled[user] = true
	m.codes[user] = fmt.Sprintf("1234%02d", m.n)
	return fmt.Sprintf("otpauth://totp/cvpn:%s?algorithm=SHA1&digits=6&issuer=cvpn&period=30&secret=JBSWY3DPEHPK3PX%c", user, 'A'+m.n), nil
}

func (m *fakeMFA) Reset(_ context.Context, user string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.enrolled, user)
	return nil
}

func (m *fakeMFA) code(user string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.codes[user]
}

func (m *fakeMFA) isEnrolled(user string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.enrolled[user]
}

// fakeFed is an identity provider login: Begin hands out single-use states; Complete reads
// the state (the query's "state" or the form's "RelayState") and the user the provider
// vouches for ("user"); "fail" makes it refuse with an error naming a secret detail.
type fakeFed struct {
	name string
	base string // the provider's URL ("https://idp.test" when empty)

	mu     sync.Mutex
	states map[string]bool
	n      int
}

var errFedDetail = errors.New("saml: signature of assertion id-SECRETDETAIL invalid")

func (f *fakeFed) Name() string { return f.name }

func (f *fakeFed) Begin(context.Context) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	st := fmt.Sprintf("%s-state-%d", f.name, f.n)
	f.states[st] = true
	base := f.base
	if base == "" {
		base = "https://idp.test"
	}
	return base + "/authorize?state=" + url.QueryEscape(st), st, nil
}

func (f *fakeFed) Complete(_ context.Context, r *http.Request) (string, Identity, error) {
	if err := r.ParseForm(); err != nil {
		return "", Identity{}, err
	}
	st := r.Form.Get("state")
	if f.name == MethodSAML {
		st = r.PostForm.Get("RelayState")
	}
	f.mu.Lock()
	known := f.states[st]
	delete(f.states, st)
	f.mu.Unlock()
	if !known {
		return st, Identity{}, errors.New("unknown state")
	}
	if r.Form.Get("fail") != "" {
		return st, Identity{}, errFedDetail
	}
	return st, Identity{Username: r.Form.Get("user"), Groups: []string{"engineers"}, Subject: "sub-" + r.Form.Get("user"), Issuer: "https://idp.test"}, nil
}

// fakeProfiles makes a profile naming the user and protocol.
type fakeProfiles struct{ fail bool }

func (p *fakeProfiles) Profile(_ context.Context, id Identity, proto string) (string, []byte, error) {
	if p.fail {
		return "", nil, errors.New("pki: CA key secret-detail unreadable")
	}
	return fmt.Sprintf("cvpn-%s-%s.ovpn", id.Username, proto), []byte("client\nproto " + proto + "\n# for " + id.Username + "\n"), nil
}

// fakeSessions is the endpoint's connections by user.
type fakeSessions struct {
	mu    sync.Mutex
	conns map[string][]SessionView
}

func (s *fakeSessions) List(user string) []SessionView {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.conns[user])
}

func (s *fakeSessions) End(user, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.conns[user], func(v SessionView) bool { return v.ConnectionID == id })
	if i < 0 {
		return errors.New("no such connection of " + user)
	}
	s.conns[user] = slices.Delete(s.conns[user], i, i+1)
	return nil
}

func (s *fakeSessions) has(user, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.conns[user], func(v SessionView) bool { return v.ConnectionID == id })
}

type auditRecord struct {
	event string
	attrs []any
}

// env is a portal with fakes behind every interface.
type env struct {
	t         *testing.T
	srv       *Server
	clk       *clock
	dir       *fakeDir
	mfa       *fakeMFA
	oidc      *fakeFed
	saml      *fakeFed
	profiles  *fakeProfiles
	sessions  *fakeSessions
	broker    *sso.Broker
	mu        sync.Mutex
	audits    []auditRecord
	downloads []string
}

const publicURL = "https://portal.test"

func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	e := &env{
		t: t, clk: newClock(),
		dir:      &fakeDir{users: map[string]string{"alice": "correct horse", "bob": "battery staple", "dave": "dave pass"}},
		mfa:      newFakeMFA(),
		oidc:     &fakeFed{name: MethodOIDC, states: map[string]bool{}},
		saml:     &fakeFed{name: MethodSAML, states: map[string]bool{}},
		profiles: &fakeProfiles{},
		sessions: &fakeSessions{conns: map[string][]SessionView{
			"alice": {{ConnectionID: "cvpn-endpoint-conn-a1", ClientIP: "10.8.0.2", DeviceIP: "198.51.100.7", Platform: "linux", Since: "2026-11-29 11:00 UTC"},
				{ConnectionID: "cvpn-endpoint-conn-a2", ClientIP: "10.8.0.3", DeviceIP: "203.0.113.9", Platform: "ios", Since: "2026-11-29 11:30 UTC"}},
			"bob": {{ConnectionID: "cvpn-endpoint-conn-b1", ClientIP: "10.8.0.4", DeviceIP: "198.51.100.8", Platform: "win", Since: "2026-11-29 10:00 UTC"}},
		}},
	}
	e.broker = sso.New(sso.Options{Now: e.clk.Now})
	// alice has an authenticator; bob has none yet; dave is a directory user when MFA is off.
	_, _ = e.mfa.Enroll(context.Background(), "alice")
	cfg := Config{
		PublicURL: publicURL, Title: "Test VPN", Now: e.clk.Now,
		Password: e.dir, MFA: e.mfa, Federated: []FederatedLogin{e.oidc, e.saml},
		IdPOrigins: []string{"https://idp.test"},
		Profiles:   e.profiles, Sessions: e.sessions, Devices: e.broker,
		OnDownload: func(proto string) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.downloads = append(e.downloads, proto)
		},
		Audit: func(event string, attrs ...any) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.audits = append(e.audits, auditRecord{event, attrs})
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.srv = srv
	return e
}

// audited returns the audit records of event.
func (e *env) audited(event string) []auditRecord {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []auditRecord
	for _, a := range e.audits {
		if a.event == event {
			out = append(out, a)
		}
	}
	return out
}

// attr returns the value of key in an audit record's attrs.
func (a auditRecord) attr(key string) any {
	for i := 0; i+1 < len(a.attrs); i += 2 {
		if a.attrs[i] == key {
			return a.attrs[i+1]
		}
	}
	return nil
}

// browser is one browser: its cookie, address and the CSRF token of the last page.
type browser struct {
	e      *env
	addr   string
	cookie string
	csrf   string
}

func (e *env) browser(addr string) *browser { return &browser{e: e, addr: addr} }

// res is an answer with its body read.
type res struct {
	code int
	hdr  http.Header
	body string
	loc  string
	sets []*http.Cookie
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// do sends a request straight to the handler, as the browser.
func (b *browser) do(method, path string, body io.Reader, hdr http.Header) res {
	b.e.t.Helper()
	req := httptest.NewRequest(method, publicURL+path, body)
	req.RemoteAddr = b.addr
	for k, v := range hdr {
		req.Header[k] = v
	}
	if b.cookie != "" {
		req.AddCookie(&http.Cookie{Name: cookieName, Value: b.cookie})
	}
	rec := httptest.NewRecorder()
	b.e.srv.Handler().ServeHTTP(rec, req)
	resp := rec.Result()
	raw, _ := io.ReadAll(resp.Body)
	r := res{code: resp.StatusCode, hdr: resp.Header, body: string(raw), loc: resp.Header.Get("Location"), sets: resp.Cookies()}
	for _, c := range r.sets {
		if c.Name == cookieName {
			b.cookie = c.Value
			if c.MaxAge < 0 {
				b.cookie = ""
			}
		}
	}
	if m := csrfRE.FindStringSubmatch(r.body); m != nil {
		b.csrf = m[1]
	}
	return r
}

func (b *browser) get(path string) res { return b.do("GET", path, nil, nil) }

// post sends a form from the portal's own page: with the CSRF token and the portal's Origin
// (unless the form or hdr set their own).
func (b *browser) post(path string, form url.Values, hdr http.Header) res {
	b.e.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if _, ok := form["csrf"]; !ok {
		form.Set("csrf", b.csrf)
	}
	h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Origin": {publicURL}}
	for k, v := range hdr {
		h[k] = v
	}
	return b.do("POST", path, strings.NewReader(form.Encode()), h)
}

// follow follows the portal's redirects of r with GETs.
func (b *browser) follow(r res) res {
	b.e.t.Helper()
	for i := 0; i < 10 && r.code >= 300 && r.code < 400; i++ {
		if !strings.HasPrefix(r.loc, "/") {
			return r
		}
		r = b.get(r.loc)
	}
	return r
}

// loginPassword signs in with a password (and the code, when the user has one) and returns
// the page it ends on.
func (b *browser) loginPassword(user, password string) res {
	b.e.t.Helper()
	if r := b.get("/login"); r.code != http.StatusOK {
		b.e.t.Fatalf("GET /login: %d", r.code)
	}
	r := b.post("/login", url.Values{"username": {user}, "password": {password}}, nil)
	r = b.follow(r)
	if strings.Contains(r.body, `action="/login/code"`) {
		r = b.follow(b.post("/login/code", url.Values{"code": {b.e.mfa.code(user)}}, nil))
	}
	return r
}

func wantCode(t *testing.T, r res, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("status %d, want %d; body:\n%s", r.code, code, r.body)
	}
}

func wantBody(t *testing.T, r res, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(r.body, s) {
			t.Errorf("page lacks %q; body:\n%s", s, r.body)
		}
	}
}

func wantNotBody(t *testing.T, r res, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if strings.Contains(r.body, s) {
			t.Errorf("page has %q; body:\n%s", s, r.body)
		}
	}
}
