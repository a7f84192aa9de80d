package oidc

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/oidclab"
)

const (
	redirectA = "https://portal.test/oidc/callback"
	redirectB = "https://other.test/oidc/callback"
)

// clock is an injectable clock that starts at the real time, so that the lab's real-time tokens
// are fresh on it, and moves only when told.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// Set puts the clock d away from the real time.
func (c *clock) Set(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset = d
}

// tap is the relying party's transport to the lab: it counts requests by path, records the ID
// token of every token response, and can replace the ID token or access token on the way (a
// token endpoint, or a network position, that an attacker controls).
type tap struct {
	base http.RoundTripper

	mu          sync.Mutex
	paths       map[string]int
	idTokens    []string
	swapIDToken func(string) string
	swapAccess  func(string) string
}

func (tp *tap) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := tp.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.paths[req.URL.Path]++
	if req.URL.Path != "/oauth/token" || resp.StatusCode != http.StatusOK {
		return resp, nil
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("tap: token response: %w", err)
	}
	id, _ := m["id_token"].(string)
	tp.idTokens = append(tp.idTokens, id)
	if tp.swapIDToken != nil {
		m["id_token"] = tp.swapIDToken(id)
	}
	if tp.swapAccess != nil {
		m["access_token"] = tp.swapAccess(m["access_token"].(string))
	}
	body, _ = json.Marshal(m)
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Del("Content-Length")
	return resp, nil
}

func (tp *tap) count(path string) int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.paths[path]
}

func (tp *tap) lastIDToken(t *testing.T) string {
	t.Helper()
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if len(tp.idTokens) == 0 {
		t.Fatal("no token response went through the tap")
	}
	return tp.idTokens[len(tp.idTokens)-1]
}

func (tp *tap) setSwap(f func(string) string) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.swapIDToken = f
}

// rp is a Provider under test with its lab, clock and tap.
type rp struct {
	*Provider
	lab *oidclab.Lab
	clk *clock
	tap *tap
}

func newRP(t *testing.T, lab *oidclab.Lab, clientID, secret, redirect string, mut ...func(*Config)) *rp {
	t.Helper()
	clk := &clock{}
	tp := &tap{base: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: lab.CAPool}}, paths: map[string]int{}}
	cfg := Config{
		Issuer:       lab.Issuer,
		ClientID:     clientID,
		ClientSecret: secret,
		RedirectURL:  redirect,
		HTTPClient:   &http.Client{Transport: tp},
		Now:          clk.Now,
	}
	for _, f := range mut {
		f(&cfg)
	}
	p, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &rp{Provider: p, lab: lab, clk: clk, tap: tp}
}

// startLab starts a provider with client "cvpn" (redirectA) and users alice (groups eng, vpn)
// and bob (no groups).
func startLab(t *testing.T, opts ...oidclab.Option) *oidclab.Lab {
	t.Helper()
	lab := oidclab.Start(t, opts...)
	lab.AddClient("cvpn", "cvpn-secret", redirectA)
	lab.AddUser("alice", "alice-pw", "eng", "vpn")
	lab.AddUser("bob", "bob-pw")
	return lab
}

// signIn begins a login and signs in at the lab; it returns the login and the callback URL.
func (r *rp) signIn(t *testing.T, user, password string) (Login, *url.URL) {
	t.Helper()
	authURL, login, err := r.Begin(context.Background())
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	cb, err := url.Parse(r.lab.Login(t, authURL, user, password))
	if err != nil {
		t.Fatalf("callback URL: %v", err)
	}
	if got := cb.Scheme + "://" + cb.Host + cb.Path; got != r.oauth.RedirectURL {
		t.Fatalf("the provider redirected to %s, not the redirect URL %s", got, r.oauth.RedirectURL)
	}
	if got := cb.Query().Get("state"); got != login.State {
		t.Fatalf("callback state %q, want the login's %q", got, login.State)
	}
	return login, cb
}

func (r *rp) complete(t *testing.T, cb *url.URL) (Identity, error) {
	t.Helper()
	return r.CompleteRequest(httptest.NewRequest(http.MethodGet, cb.String(), nil))
}

func TestLogin(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	login, cb := r.signIn(t, "alice", "alice-pw")
	if !login.Expires.Equal(login.Created.Add(DefaultLoginTTL)) {
		t.Errorf("login expires %v, want created %v + %v", login.Expires, login.Created, DefaultLoginTTL)
	}
	id, err := r.complete(t, cb)
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	want := Identity{Username: "alice", Groups: []string{"eng", "vpn"}, Subject: lab.Subject("alice"), Issuer: lab.Issuer}
	if !reflect.DeepEqual(id, want) {
		t.Errorf("identity %+v, want %+v", id, want)
	}
	// What went to the authorization endpoint: PKCE S256, a nonce, the default scopes.
	reqs := lab.AuthRequests()
	last := reqs[len(reqs)-1]
	if !last.HasCodeChallenge || last.CodeChallengeMethod != "S256" {
		t.Errorf("code challenge %v method %q, want S256", last.HasCodeChallenge, last.CodeChallengeMethod)
	}
	if len(last.Nonce) < 40 || len(last.State) < 40 {
		t.Errorf("nonce %d chars, state %d chars: want 256-bit values", len(last.Nonce), len(last.State))
	}
	if !slices.Equal(last.Scopes, []string{"openid", "profile", "email"}) {
		t.Errorf("scopes %q, want openid profile email", last.Scopes)
	}
	if r.logins.len(context.Background(), r.clk.Now()) != 0 {
		t.Errorf("%d logins still pending after Complete", r.logins.len(context.Background(), r.clk.Now()))
	}

	// A user without groups has none.
	_, cb = r.signIn(t, "bob", "bob-pw")
	if id, err := r.complete(t, cb); err != nil || id.Username != "bob" || id.Groups != nil {
		t.Errorf("bob: %+v, %v; want username bob without groups", id, err)
	}
}

func TestLoginES256AndGroupsScope(t *testing.T) {
	lab := startLab(t, oidclab.WithES256(), oidclab.WithGroupsClaim("roles"))
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA, func(c *Config) {
		c.Scopes = []string{"profile", "groups"}
		c.GroupsClaim = "roles"
	})
	_, cb := r.signIn(t, "alice", "alice-pw")
	id, err := r.complete(t, cb)
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if id.Username != "alice" || !slices.Equal(id.Groups, []string{"eng", "vpn"}) {
		t.Errorf("identity %+v, want alice in eng, vpn from the roles claim", id)
	}
	reqs := lab.AuthRequests()
	if got := reqs[len(reqs)-1].Scopes; !slices.Equal(got, []string{"openid", "profile", "groups"}) {
		t.Errorf("scopes %q, want openid added to profile groups", got)
	}
}

func TestWrongState(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	login, cb := r.signIn(t, "alice", "alice-pw")
	code := cb.Query().Get("code")

	forged := *cb
	q := forged.Query()
	q.Set("state", randomToken())
	forged.RawQuery = q.Encode()
	if _, err := r.complete(t, &forged); !errors.Is(err, ErrUnknownState) {
		t.Errorf("forged state: %v, want ErrUnknownState", err)
	}
	for _, state := range []string{"", strings.Repeat("a", 4096)} {
		if _, err := r.Complete(context.Background(), state, code); !errors.Is(err, ErrBadCallback) {
			t.Errorf("state of %d bytes: %v, want ErrBadCallback", len(state), err)
		}
	}
	// The real login was not consumed by the forgeries.
	if id, err := r.Complete(context.Background(), login.State, code); err != nil || id.Username != "alice" {
		t.Errorf("the real callback after forged ones: %+v, %v", id, err)
	}
}

func TestReplayedState(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	_, cb := r.signIn(t, "alice", "alice-pw")
	if _, err := r.complete(t, cb); err != nil {
		t.Fatalf("first Complete: %v", err)
	}
	exchanges := r.tap.count("/oauth/token")
	if _, err := r.complete(t, cb); !errors.Is(err, ErrStateReplayed) {
		t.Errorf("second Complete: %v, want ErrStateReplayed", err)
	}
	if got := r.tap.count("/oauth/token"); got != exchanges {
		t.Errorf("the replay reached the token endpoint (%d exchanges, was %d)", got, exchanges)
	}

	// A login whose completion failed is consumed too.
	login, cb := r.signIn(t, "alice", "alice-pw")
	if _, err := r.Complete(context.Background(), login.State, "not-the-code"); !errors.Is(err, ErrExchange) {
		t.Fatalf("wrong code: %v, want ErrExchange", err)
	}
	if _, err := r.complete(t, cb); !errors.Is(err, ErrStateReplayed) {
		t.Errorf("the right code after a failed completion: %v, want ErrStateReplayed", err)
	}
}

func TestExpiredLogin(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA, func(c *Config) { c.LoginTTL = 2 * time.Minute })
	_, cb := r.signIn(t, "alice", "alice-pw")
	r.clk.Advance(2 * time.Minute)
	if _, err := r.complete(t, cb); !errors.Is(err, ErrLoginExpired) {
		t.Errorf("after LoginTTL: %v, want ErrLoginExpired", err)
	}
	if n := r.tap.count("/oauth/token"); n != 0 {
		t.Errorf("an expired login reached the token endpoint %d times", n)
	}
	if _, err := r.complete(t, cb); !errors.Is(err, ErrStateReplayed) {
		t.Errorf("the expired state again: %v, want ErrStateReplayed", err)
	}
	// Just inside the TTL it works.
	_, cb = r.signIn(t, "alice", "alice-pw")
	r.clk.Advance(2*time.Minute - time.Second)
	if _, err := r.complete(t, cb); err != nil {
		t.Errorf("within LoginTTL: %v", err)
	}
}

func TestTooManyLogins(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA, func(c *Config) { c.MaxPendingLogins = 2 })
	for i := range 2 {
		if _, _, err := r.Begin(context.Background()); err != nil {
			t.Fatalf("Begin %d: %v", i, err)
		}
	}
	if _, _, err := r.Begin(context.Background()); !errors.Is(err, ErrTooManyLogins) {
		t.Fatalf("third Begin: %v, want ErrTooManyLogins", err)
	}
	r.clk.Advance(DefaultLoginTTL)
	if _, _, err := r.Begin(context.Background()); err != nil {
		t.Errorf("Begin once the others expired: %v", err)
	}
	if n := r.logins.len(context.Background(), r.clk.Now()); n != 1 {
		t.Errorf("%d logins pending, want 1 after the sweep", n)
	}
}

// exchangeWith completes a fresh login of r as alice with the token response's ID token replaced
// by idToken.
func (r *rp) exchangeWith(t *testing.T, swap func(string) string) error {
	t.Helper()
	_, cb := r.signIn(t, "alice", "alice-pw")
	var sent string
	r.tap.setSwap(func(orig string) string { sent = swap(orig); return sent })
	defer r.tap.setSwap(nil)
	id, err := r.complete(t, cb)
	if err == nil {
		t.Errorf("accepted as %+v", id)
		return nil
	}
	// No part of the token, nor the login's nonce, in the error.
	reqs := r.lab.AuthRequests()
	secrets := append(strings.Split(sent, "."), reqs[len(reqs)-1].Nonce, cb.Query().Get("code"))
	for _, s := range secrets {
		if len(s) >= 16 && strings.Contains(err.Error(), s) {
			t.Errorf("the error %q reveals %.20q...", err, s)
		}
	}
	return err
}

func TestIDTokenFromAnotherIssuer(t *testing.T) {
	lab, other := startLab(t), startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	ro := newRP(t, other, "cvpn", "cvpn-secret", redirectA)
	_, cb := ro.signIn(t, "alice", "alice-pw")
	if _, err := ro.complete(t, cb); err != nil {
		t.Fatalf("login at the other provider: %v", err)
	}
	foreign := ro.tap.lastIDToken(t)
	err := r.exchangeWith(t, func(string) string { return foreign })
	if !errors.Is(err, ErrIssuer) || !strings.Contains(err.Error(), other.Issuer) {
		t.Errorf("token from %s: %v, want ErrIssuer naming it", other.Issuer, err)
	}
}

func TestIDTokenForAnotherAudience(t *testing.T) {
	lab := startLab(t)
	lab.AddClient("other-app", "other-secret", redirectB)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	ro := newRP(t, lab, "other-app", "other-secret", redirectB)
	_, cb := ro.signIn(t, "alice", "alice-pw")
	if _, err := ro.complete(t, cb); err != nil {
		t.Fatalf("login for other-app: %v", err)
	}
	foreign := ro.tap.lastIDToken(t)
	if err := r.exchangeWith(t, func(string) string { return foreign }); !errors.Is(err, ErrAudience) || !strings.Contains(err.Error(), "lacks client ID") {
		t.Errorf("token for other-app: %v, want ErrAudience on aud", err)
	}

	// Issued to other-app but also listing cvpn in aud: azp (other-app) gives it away.
	lab.SetExtraAudience("other-app", "cvpn")
	_, cb = ro.signIn(t, "alice", "alice-pw")
	if _, err := ro.complete(t, cb); err != nil {
		t.Fatalf("login for other-app with two audiences: %v", err)
	}
	foreign = ro.tap.lastIDToken(t)
	err := r.exchangeWith(t, func(string) string { return foreign })
	if !errors.Is(err, ErrAudience) || !strings.Contains(err.Error(), "authorized party") {
		t.Errorf("token with aud [other-app cvpn], azp other-app: %v, want ErrAudience on azp", err)
	}
}

func TestNonceMismatch(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	// A token the provider really issued to cvpn, for another login of the same user.
	_, cb := r.signIn(t, "alice", "alice-pw")
	if _, err := r.complete(t, cb); err != nil {
		t.Fatalf("first login: %v", err)
	}
	other := r.tap.lastIDToken(t)
	if err := r.exchangeWith(t, func(string) string { return other }); !errors.Is(err, ErrNonce) {
		t.Errorf("ID token of another login: %v, want ErrNonce", err)
	}
	if err := r.exchangeWith(t, func(string) string { return "" }); !errors.Is(err, ErrIDToken) {
		t.Errorf("no ID token: %v, want ErrIDToken", err)
	}
}

func TestTamperedIDToken(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	flipSig := func(tok string) string {
		parts := strings.Split(tok, ".")
		sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
		sig[len(sig)/2] ^= 0x01
		parts[2] = base64.RawURLEncoding.EncodeToString(sig)
		return strings.Join(parts, ".")
	}
	if err := r.exchangeWith(t, flipSig); !errors.Is(err, ErrSignature) {
		t.Errorf("flipped signature bit: %v, want ErrSignature", err)
	}
	// The payload edited to another user, the signature kept.
	rename := func(tok string) string {
		parts := strings.Split(tok, ".")
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		payload = bytes.Replace(payload, []byte(`"alice"`), []byte(`"admin"`), 1)
		parts[1] = base64.RawURLEncoding.EncodeToString(payload)
		return strings.Join(parts, ".")
	}
	if err := r.exchangeWith(t, rename); !errors.Is(err, ErrSignature) {
		t.Errorf("edited payload: %v, want ErrSignature", err)
	}
	// alg none, and an unsigned token.
	none := func(tok string) string {
		parts := strings.Split(tok, ".")
		parts[0] = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
		parts[2] = ""
		return strings.Join(parts, ".")
	}
	if err := r.exchangeWith(t, none); !errors.Is(err, ErrSignature) {
		t.Errorf("alg none: %v, want ErrSignature", err)
	}
	if err := r.exchangeWith(t, func(string) string { return "not.a-jwt" }); !errors.Is(err, ErrIDToken) {
		t.Errorf("garbage: %v, want ErrIDToken", err)
	}
	// The access token swapped: at_hash no longer matches.
	_, cb := r.signIn(t, "alice", "alice-pw")
	r.tap.mu.Lock()
	r.tap.swapAccess = func(string) string { return "another-access-token" }
	r.tap.mu.Unlock()
	if _, err := r.complete(t, cb); !errors.Is(err, ErrIDToken) || !strings.Contains(err.Error(), "at_hash") {
		t.Errorf("swapped access token: %v, want ErrIDToken on at_hash", err)
	}
}

func TestIDTokenTimes(t *testing.T) {
	lab := startLab(t, oidclab.WithIDTokenLifetime(time.Minute))
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	// Expired: the token lives a minute; three minutes later it is past exp plus the skew.
	_, cb := r.signIn(t, "alice", "alice-pw")
	r.clk.Advance(3 * time.Minute)
	if _, err := r.complete(t, cb); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("expired ID token: %v, want ErrTokenExpired", err)
	}
	// Issued in the future: our clock five minutes behind the provider's.
	_, cb = r.signIn(t, "alice", "alice-pw")
	r.clk.Set(-5 * time.Minute)
	if _, err := r.complete(t, cb); !errors.Is(err, ErrTokenExpired) || !strings.Contains(err.Error(), "future") {
		t.Errorf("ID token from the future: %v, want ErrTokenExpired", err)
	}
	// Within the skew both ways it verifies.
	for _, skew := range []time.Duration{-30 * time.Second, 30 * time.Second} {
		r.clk.Set(skew)
		_, cb = r.signIn(t, "alice", "alice-pw")
		if _, err := r.complete(t, cb); err != nil {
			t.Errorf("clock %v off: %v", skew, err)
		}
	}
}

func TestKeyRotation(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	ok := func(what string) {
		t.Helper()
		_, cb := r.signIn(t, "alice", "alice-pw")
		if _, err := r.complete(t, cb); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	ok("before rotation")
	if n := r.tap.count("/keys"); n != 1 {
		t.Fatalf("%d key fetches after the first login, want 1", n)
	}
	ok("second login, same key")
	if n := r.tap.count("/keys"); n != 1 {
		t.Errorf("%d key fetches with a cached key, want 1", n)
	}

	lab.RotateKeys()
	r.clk.Advance(KeyRefetchInterval)
	ok("after rotation")
	if n := r.tap.count("/keys"); n != 2 {
		t.Errorf("%d key fetches after a rotation, want 2", n)
	}
	if kid := kidOf(t, r.tap.lastIDToken(t)); kid != lab.SigningKeyID() {
		t.Errorf("token signed by kid %q, want the new key %q", kid, lab.SigningKeyID())
	}

	// A second rotation right away: the refetch is rate-limited, so the new key is unknown...
	lab.RotateKeys()
	_, cb := r.signIn(t, "alice", "alice-pw")
	if _, err := r.complete(t, cb); !errors.Is(err, ErrSignature) {
		t.Errorf("unknown key within the refetch interval: %v, want ErrSignature", err)
	}
	if n := r.tap.count("/keys"); n != 2 {
		t.Errorf("%d key fetches within the refetch interval, want still 2", n)
	}
	// ...until the interval has passed.
	r.clk.Advance(KeyRefetchInterval)
	ok("after the refetch interval")
	if n := r.tap.count("/keys"); n != 3 {
		t.Errorf("%d key fetches, want 3", n)
	}
}

func kidOf(t *testing.T, tok string) string {
	t.Helper()
	h, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	if err != nil {
		t.Fatalf("token header: %v", err)
	}
	var hdr struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(h, &hdr); err != nil {
		t.Fatalf("token header: %v", err)
	}
	return hdr.Kid
}

func TestGroupsClaim(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	many := func(n, size int) []string {
		g := make([]string, n)
		for i := range g {
			g[i] = fmt.Sprintf("g%0*d", size-1, i)
		}
		return g
	}
	for _, tc := range []struct {
		name   string
		claim  any
		want   []string
		err    error
		errSub string
	}{
		{name: "single string", claim: "eng", want: []string{"eng"}},
		{name: "duplicates and empties", claim: []string{"eng", "", "eng", "ops"}, want: []string{"eng", "ops"}},
		{name: "null", claim: nil, want: nil},
		{name: "at the count limit", claim: many(MaxGroups, 8), want: many(MaxGroups, 8)},
		{name: "over the count limit", claim: many(MaxGroups+1, 8), err: ErrClaims, errSub: "entries"},
		{name: "name at the length limit", claim: []string{strings.Repeat("x", MaxNameLength)}, want: []string{strings.Repeat("x", MaxNameLength)}},
		{name: "name over the length limit", claim: []string{strings.Repeat("x", MaxNameLength+1)}, err: ErrClaims, errSub: "bytes"},
		{name: "control character", claim: []string{"eng\nadmin"}, err: ErrClaims, errSub: "control"},
		{name: "number", claim: 42, err: ErrClaims, errSub: "number"},
		{name: "object", claim: map[string]any{"eng": true}, err: ErrClaims, errSub: "object"},
		{name: "list with a number", claim: []any{"eng", 7}, err: ErrClaims, errSub: "entry 1"},
		{name: "nested list", claim: []any{[]string{"eng"}}, err: ErrClaims, errSub: "list"},
		// 60000 groups: the token response passes the size bound before any parsing.
		{name: "oversized ID token", claim: many(20000, 10), err: ErrTooLarge, errSub: "ID token of"},
		{name: "oversized response", claim: many(60000, 12), err: ErrTooLarge, errSub: "token response"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lab.SetClaim("alice", "groups", tc.claim)
			_, cb := r.signIn(t, "alice", "alice-pw")
			id, err := r.complete(t, cb)
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.errSub) {
					t.Errorf("got %+v, %v; want %v mentioning %q", id.Groups, err, tc.err, tc.errSub)
				}
				return
			}
			if err != nil || !slices.Equal(id.Groups, tc.want) {
				t.Errorf("got %d groups %.80q, %v; want %.80q", len(id.Groups), id.Groups, err, tc.want)
			}
		})
	}
}

func TestUsernameClaim(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	login := func() (Identity, error) {
		t.Helper()
		_, cb := r.signIn(t, "alice", "alice-pw")
		return r.complete(t, cb)
	}
	lab.SetClaim("alice", "preferred_username", "")
	if id, err := login(); err != nil || id.Username != "alice@oidclab.test" {
		t.Errorf("without preferred_username: %+v, %v; want the email", id, err)
	}
	lab.SetClaim("alice", "email", "")
	if id, err := login(); err != nil || id.Username != lab.Subject("alice") {
		t.Errorf("without preferred_username and email: %+v, %v; want the subject", id, err)
	}
	lab.SetClaim("alice", "preferred_username", "alice\x00root")
	if _, err := login(); !errors.Is(err, ErrClaims) {
		t.Errorf("username with a NUL: %v, want ErrClaims", err)
	}

	// A configured claim has no fallback.
	ru := newRP(t, lab, "cvpn", "cvpn-secret", redirectA, func(c *Config) { c.UsernameClaim = "upn" })
	lab.SetClaim("alice", "preferred_username", "alice")
	_, cb := ru.signIn(t, "alice", "alice-pw")
	if _, err := ru.complete(t, cb); !errors.Is(err, ErrClaims) {
		t.Errorf("missing upn claim: %v, want ErrClaims", err)
	}
	lab.SetClaim("alice", "upn", "alice@corp.example")
	_, cb = ru.signIn(t, "alice", "alice-pw")
	if id, err := ru.complete(t, cb); err != nil || id.Username != "alice@corp.example" {
		t.Errorf("upn claim: %+v, %v", id, err)
	}
	lab.SetClaim("alice", "upn", []string{"a", "b"})
	_, cb = ru.signIn(t, "alice", "alice-pw")
	if _, err := ru.complete(t, cb); !errors.Is(err, ErrClaims) {
		t.Errorf("upn claim as a list: %v, want ErrClaims", err)
	}
}

func TestCallbackErrors(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)

	// The provider's error response: reported, sanitized, and the login consumed.
	_, login, err := r.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, redirectA+"?"+url.Values{
		"state": {login.State}, "error": {"access_denied"}, "error_description": {"user said no\r\nX-Injected: 1"},
	}.Encode(), nil)
	_, err = r.CompleteRequest(req)
	if !errors.Is(err, ErrProviderDenied) || !strings.Contains(err.Error(), "access_denied") || strings.ContainsAny(err.Error(), "\r\n") {
		t.Errorf("error response: %q, want ErrProviderDenied with access_denied on one line", err)
	}
	if _, err := r.CompleteRequest(req); !errors.Is(err, ErrStateReplayed) {
		t.Errorf("error response again: %v, want ErrStateReplayed", err)
	}

	// RFC 9207: an authorization response naming another issuer.
	_, cb := r.signIn(t, "alice", "alice-pw")
	q := cb.Query()
	q.Set("iss", "https://evil.test")
	cb.RawQuery = q.Encode()
	if _, err := r.complete(t, cb); !errors.Is(err, ErrIssuer) {
		t.Errorf("iss of another provider: %v, want ErrIssuer", err)
	}
	if n := r.tap.count("/oauth/token"); n != 0 {
		t.Errorf("a mixed-up response reached the token endpoint %d times", n)
	}

	// No code.
	_, cb = r.signIn(t, "alice", "alice-pw")
	q = cb.Query()
	q.Del("code")
	cb.RawQuery = q.Encode()
	if _, err := r.complete(t, cb); !errors.Is(err, ErrBadCallback) {
		t.Errorf("no code: %v, want ErrBadCallback", err)
	}
}

func TestWrongClientSecret(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "not-the-secret", redirectA)
	_, cb := r.signIn(t, "alice", "alice-pw")
	_, err := r.complete(t, cb)
	if !errors.Is(err, ErrExchange) {
		t.Fatalf("wrong client secret: %v, want ErrExchange", err)
	}
	if strings.Contains(err.Error(), cb.Query().Get("code")) || strings.Contains(err.Error(), "not-the-secret") {
		t.Errorf("the error reveals the code or the secret: %v", err)
	}
}

func TestNew(t *testing.T) {
	lab := startLab(t)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: lab.CAPool}}}
	base := Config{Issuer: lab.Issuer, ClientID: "cvpn", RedirectURL: redirectA, HTTPClient: hc}
	for _, tc := range []struct {
		name string
		mut  func(*Config)
		err  error
	}{
		{"http issuer", func(c *Config) { c.Issuer = strings.Replace(c.Issuer, "https:", "http:", 1) }, ErrConfig},
		{"no client ID", func(c *Config) { c.ClientID = "" }, ErrConfig},
		{"relative redirect", func(c *Config) { c.RedirectURL = "/oidc/callback" }, ErrConfig},
		// The discovery document names the issuer without the trailing slash.
		{"issuer not exact", func(c *Config) { c.Issuer += "/" }, ErrIssuer},
		{"untrusted CA", func(c *Config) { c.HTTPClient = nil }, ErrDiscovery},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.mut(&cfg)
			if _, err := New(context.Background(), cfg); !errors.Is(err, tc.err) {
				t.Errorf("New: %v, want %v", err, tc.err)
			}
		})
	}
	if _, err := New(context.Background(), base); err != nil {
		t.Errorf("New with a good config: %v", err)
	}

	// A provider whose discovery document never ends, and one that redirects.
	huge := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/openid-configuration" {
			http.Redirect(w, r, lab.Issuer+"/.well-known/openid-configuration", http.StatusFound)
			return
		}
		w.Write([]byte(`{"issuer":"`))
		for range 1024 {
			w.Write(bytes.Repeat([]byte("a"), 1024))
		}
	}))
	defer huge.Close()
	cfg := Config{Issuer: huge.URL, ClientID: "cvpn", RedirectURL: redirectA, HTTPClient: huge.Client()}
	if _, err := New(context.Background(), cfg); !errors.Is(err, ErrDiscovery) || !errors.Is(err, ErrTooLarge) {
		t.Errorf("endless discovery document: %v, want ErrDiscovery and ErrTooLarge", err)
	}
	cfg.Issuer = huge.URL + "/redirecting"
	if _, err := New(context.Background(), cfg); !errors.Is(err, ErrDiscovery) || !strings.Contains(err.Error(), "redirect") {
		t.Errorf("redirecting discovery: %v, want ErrDiscovery", err)
	}
}

func TestConcurrentLogins(t *testing.T) {
	lab := startLab(t)
	r := newRP(t, lab, "cvpn", "cvpn-secret", redirectA)
	const n = 8
	errs := make(chan error, n)
	for range n {
		go func() {
			authURL, login, err := r.Begin(context.Background())
			if err != nil {
				errs <- err
				return
			}
			cb, err := lab.TryLogin(authURL, "alice", "alice-pw")
			if err != nil {
				errs <- err
				return
			}
			id, err := r.CompleteRequest(httptest.NewRequest(http.MethodGet, cb, nil))
			if err == nil && (id.Username != "alice" || !strings.Contains(cb, login.State)) {
				err = fmt.Errorf("identity %+v for login %s via %s", id, login.State, cb)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestParseJWKS(t *testing.T) {
	// A symmetric key must never verify ID tokens (it would let anyone who read the JWKS sign).
	oct := `{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}`
	if _, err := parseJWKS([]byte(oct)); err == nil {
		t.Error("a JWKS with only a symmetric key was accepted")
	}
	if _, err := parseJWKS([]byte(`{"keys":`)); err == nil {
		t.Error("truncated JWKS accepted")
	}
}

func TestBoundedBody(t *testing.T) {
	for _, n := range []int{maxResponseBytes, maxResponseBytes + 1} {
		b := &boundedBody{rc: io.NopCloser(bytes.NewReader(make([]byte, n))), left: maxResponseBytes}
		got, err := io.ReadAll(b)
		if n <= maxResponseBytes && (err != nil || len(got) != n) {
			t.Errorf("body of %d bytes: read %d, %v", n, len(got), err)
		}
		if n > maxResponseBytes && !errors.Is(err, ErrTooLarge) {
			t.Errorf("body of %d bytes: %v, want ErrTooLarge", n, err)
		}
	}
}
