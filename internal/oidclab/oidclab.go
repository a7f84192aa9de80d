// Package oidclab runs a real OpenID Provider for tests: zitadel/oidc's provider implementation
// (github.com/zitadel/oidc/v3/pkg/op, the same code its example server runs) over an in-memory
// storage of users, clients and signing keys, served over HTTPS with a test CA on a free port of
// 127.0.0.1 (or a given address or listener, for end-to-end tests whose VPN server reaches the
// provider through a network namespace).
//
// The op package does the protocol: discovery, the authorization endpoint (PKCE, nonce, redirect
// URI checks), the token endpoint (client authentication, single-use codes), the JWKS and
// userinfo endpoints, and signs the ID tokens. This package adds what a provider's product adds:
// a login page (a plain HTML form with inputs named username and password, fillable by a real
// browser), users with passwords and groups (the groups claim in the ID token), registered
// clients, and key rotation on demand.
//
//	lab := oidclab.Start(t)
//	lab.AddUser("alice", "pw", "eng", "vpn")
//	lab.AddClient("cvpn", "secret", "https://portal.test/oidc/callback")
//	// ... the relying party (trusting lab.CAPool) begins a login at lab.Issuer ...
//	callback := lab.Login(t, authURL, "alice", "pw") // the redirect to the RP, not followed
//
// It fakes nothing a relying party checks: tokens are signed with the published keys, codes are
// single use, and a wrong client secret or PKCE verifier is refused by the op package.
package oidclab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"html/template"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

const loginPath = "/login"

// AuthRequestInfo is what a relying party sent to the authorization endpoint, recorded for tests
// that check the request (PKCE method, nonce present, scopes).
type AuthRequestInfo struct {
	ClientID            string
	RedirectURI         string
	Scopes              []string
	State               string
	Nonce               string
	CodeChallengeMethod string
	HasCodeChallenge    bool
}

// Lab is a running OpenID Provider.
type Lab struct {
	// Issuer is the provider's issuer URL, https://ADDR:PORT (no trailing slash); discovery is
	// at Issuer + "/.well-known/openid-configuration".
	Issuer string
	// CAPEM is the PEM certificate of the test CA that signed the server certificate.
	CAPEM []byte
	// CAPool holds the test CA, for a relying party's http.Client.
	CAPool *x509.CertPool

	t     testing.TB
	store *storage
	srv   *http.Server
	alg   jose.SignatureAlgorithm

	mu      sync.Mutex // guards nextSub
	nextSub int
}

type options struct {
	addr        string
	ln          net.Listener
	groupsClaim string
	idTokenTTL  time.Duration
	alg         jose.SignatureAlgorithm
}

// Option configures Start.
type Option func(*options)

// WithAddr makes the provider listen on addr (an IP address) instead of 127.0.0.1; the
// certificate and the issuer name it.
func WithAddr(addr string) Option { return func(o *options) { o.addr = addr } }

// WithListener serves on ln (for example a listener opened inside a network namespace with
// netlab.ListenTCPIn); the certificate and the issuer name ln's address. The lab closes ln.
func WithListener(ln net.Listener) Option { return func(o *options) { o.ln = ln } }

// WithGroupsClaim names the ID token claim that carries the user's groups (default "groups").
func WithGroupsClaim(name string) Option { return func(o *options) { o.groupsClaim = name } }

// WithIDTokenLifetime sets how long ID tokens are valid (default 5 minutes).
func WithIDTokenLifetime(d time.Duration) Option { return func(o *options) { o.idTokenTTL = d } }

// WithES256 signs ID tokens with ECDSA P-256 keys instead of RSA (RS256).
func WithES256() Option { return func(o *options) { o.alg = jose.ES256 } }

// Start starts the provider and stops it when the test ends.
func Start(t testing.TB, opts ...Option) *Lab {
	t.Helper()
	o := options{addr: "127.0.0.1", groupsClaim: "groups", idTokenTTL: 5 * time.Minute, alg: jose.RS256}
	for _, f := range opts {
		f(&o)
	}
	ln := o.ln
	if ln == nil {
		ip := net.ParseIP(o.addr)
		if ip == nil {
			t.Fatalf("oidclab: listen address %q is not an IP address", o.addr)
		}
		var err error
		if ln, err = net.Listen("tcp", net.JoinHostPort(o.addr, "0")); err != nil {
			t.Fatalf("oidclab: listen on %s: %v", o.addr, err)
		}
	}
	tcp, ok := ln.Addr().(*net.TCPAddr)
	if !ok {
		ln.Close()
		t.Fatalf("oidclab: listener address %v is not TCP", ln.Addr())
	}
	host := tcp.IP
	if host.IsUnspecified() {
		host = net.IPv4(127, 0, 0, 1)
	}
	l := &Lab{
		t:      t,
		Issuer: "https://" + net.JoinHostPort(host.String(), fmt.Sprint(tcp.Port)),
		store:  newStorage(o.groupsClaim, o.idTokenTTL),
		alg:    o.alg,
	}
	key, err := newSigningKey(o.alg)
	if err != nil {
		ln.Close()
		t.Fatalf("oidclab: signing key: %v", err)
	}
	l.store.addKey(key)
	cert, err := l.makeCerts(host)
	if err != nil {
		ln.Close()
		t.Fatalf("oidclab: certificates: %v", err)
	}

	var cryptoKey [32]byte
	_, _ = rand.Read(cryptoKey[:])
	provider, err := op.NewProvider(&op.Config{
		CryptoKey:          cryptoKey,
		CryptoKeyId:        "oidclab",
		CodeMethodS256:     true,
		AuthMethodPost:     true,
		SupportedUILocales: []language.Tag{language.English},
		SupportedScopes:    []string{"openid", "profile", "email", "groups"},
	}, l.store, op.StaticIssuer(l.Issuer))
	if err != nil {
		ln.Close()
		t.Fatalf("oidclab: provider: %v", err)
	}
	mux := http.NewServeMux()
	interceptor := op.NewIssuerInterceptor(provider.IssuerFromRequest)
	lp := &loginPage{store: l.store, callback: op.AuthCallbackURL(provider)}
	mux.Handle(loginPath, interceptor.Handler(lp))
	mux.Handle("/", provider)

	l.srv = &http.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = l.srv.ServeTLS(ln, "", "")
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.srv.Shutdown(ctx)
		<-done
	})
	return l
}

// makeCerts creates the test CA and a server certificate for host (and localhost).
func (l *Lab) makeCerts(host net.IP) (tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "oidclab test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: host.String()},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{host},
		DNSNames:     []string{"localhost"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	l.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	l.CAPool = x509.NewCertPool()
	l.CAPool.AddCert(caCert)
	return tls.Certificate{Certificate: [][]byte{srvDER, caDER}, PrivateKey: srvKey}, nil
}

// HTTPClient returns a new client that trusts the lab's CA and follows no redirects.
func (l *Lab) HTTPClient() *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: l.CAPool}},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// AddUser adds (or replaces) a user who signs in with name and password. The ID token names
// them in preferred_username (profile scope) and as name@oidclab.test in email (email scope);
// groups, if any, go in the groups claim whatever the scopes. The subject is a stable opaque ID.
func (l *Lab) AddUser(name, password string, groups ...string) {
	l.mu.Lock()
	l.nextSub++
	sub := fmt.Sprintf("sub-%04d-%x", l.nextSub, sha256.Sum256([]byte(name)))[:24]
	l.mu.Unlock()
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	if old, ok := l.store.users[name]; ok {
		sub = old.id
	}
	l.store.users[name] = &user{id: sub, name: name, password: password, groups: append([]string(nil), groups...)}
}

// Subject returns the subject (sub claim) of user name, or "" for an unknown user.
func (l *Lab) Subject(name string) string {
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	if u, ok := l.store.users[name]; ok {
		return u.id
	}
	return ""
}

// SetClaim overrides claim in user name's ID tokens with value (any JSON value: a list of 10000
// groups, a number where a list belongs); a nil value removes the claim. The standard string
// claims preferred_username, email and name take a string ("" removes them). The user must exist.
func (l *Lab) SetClaim(name, claim string, value any) {
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	u, ok := l.store.users[name]
	if !ok {
		l.t.Fatalf("oidclab: SetClaim: no user %q", name)
	}
	if u.claims == nil {
		u.claims = map[string]any{}
	}
	u.claims[claim] = value
}

// AddClient registers (or replaces) a confidential web client with its secret and the redirect
// URIs it may use (exact match).
func (l *Lab) AddClient(id, secret string, redirectURIs ...string) {
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	l.store.clients[id] = &client{id: id, secret: secret, redirectURIs: append([]string(nil), redirectURIs...)}
}

// SetExtraAudience adds audiences to the ID tokens issued to client id (the aud claim then
// lists id and these; azp stays id). The client must exist.
func (l *Lab) SetExtraAudience(id string, aud ...string) {
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	c, ok := l.store.clients[id]
	if !ok {
		l.t.Fatalf("oidclab: SetExtraAudience: no client %q", id)
	}
	c.extraAud = append([]string(nil), aud...)
}

// RotateKeys makes a new signing key current. The previous keys (up to two) stay published in
// the JWKS, as a provider does while tokens signed by them are still valid.
func (l *Lab) RotateKeys() {
	k, err := newSigningKey(l.alg)
	if err != nil {
		l.t.Fatalf("oidclab: RotateKeys: %v", err)
	}
	l.store.addKey(k)
}

// DropOldKeys unpublishes every key but the current one.
func (l *Lab) DropOldKeys() {
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	l.store.keys = l.store.keys[len(l.store.keys)-1:]
}

// SigningKeyID returns the key ID (kid) of the key that signs new ID tokens.
func (l *Lab) SigningKeyID() string {
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	return l.store.keys[len(l.store.keys)-1].id
}

// AuthRequests returns the authorization requests the provider has received, oldest first.
func (l *Lab) AuthRequests() []AuthRequestInfo {
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	return append([]AuthRequestInfo(nil), l.store.seen...)
}

// Login plays a browser without JavaScript for tests that need no real one: it opens authURL
// (the relying party's redirect to this provider), follows the provider's redirects to the
// login page, submits username and password, follows the provider's redirects again and
// returns the first redirect that leaves the provider (the relying party's callback URL with
// code and state), without following it. It fails the test if the login does not get there.
func (l *Lab) Login(t testing.TB, authURL, username, password string) (callbackURL string) {
	t.Helper()
	u, err := l.TryLogin(authURL, username, password)
	if err != nil {
		t.Fatalf("oidclab: login as %q: %v", username, err)
	}
	return u
}

// TryLogin is Login returning an error instead of failing the test (for a wrong password, or
// an authorization request the provider refuses).
func (l *Lab) TryLogin(authURL, username, password string) (callbackURL string, err error) {
	c := l.HTTPClient()
	// Follow redirects while they stay on the provider.
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) > 10 {
			return errors.New("too many redirects")
		}
		if !l.onProvider(req.URL) {
			return http.ErrUseLastResponse
		}
		return nil
	}
	if u, err := url.Parse(authURL); err != nil || !l.onProvider(u) {
		return "", fmt.Errorf("authorization URL %q is not on the provider %s", authURL, l.Issuer)
	}
	resp, err := c.Get(authURL)
	if err != nil {
		return "", err
	}
	page, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); isRedirect(resp.StatusCode) && loc != "" {
		return loc, nil // the provider answered the RP at once (an error response)
	}
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != loginPath {
		return "", fmt.Errorf("authorization request ended at %s with %s: %.300q", resp.Request.URL.Path, resp.Status, page)
	}
	id := resp.Request.URL.Query().Get("authRequestID")
	form := url.Values{"id": {id}, "username": {username}, "password": {password}}
	resp, err = c.PostForm(resp.Request.URL.String(), form)
	if err != nil {
		return "", err
	}
	page, _ = io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if !isRedirect(resp.StatusCode) || loc == "" {
		msg := "login refused"
		if strings.Contains(string(page), errInvalidLogin) {
			msg = errInvalidLogin
		}
		return "", fmt.Errorf("%s (%s)", msg, resp.Status)
	}
	next, err := resp.Request.URL.Parse(loc)
	if err != nil {
		return "", fmt.Errorf("provider redirected to an unparsable location: %w", err)
	}
	return next.String(), nil
}

func isRedirect(code int) bool { return code >= 300 && code < 400 }

func (l *Lab) onProvider(u *url.URL) bool {
	iss, _ := url.Parse(l.Issuer)
	return u.Scheme == iss.Scheme && u.Host == iss.Host
}

const errInvalidLogin = "invalid username or password"

// loginPage is the provider's sign-in UI: GET shows the form, POST checks the password, marks
// the authorization request done and redirects to the op package's callback, which redirects to
// the relying party with a code.
type loginPage struct {
	store    *storage
	callback func(context.Context, string) string
}

var loginTmpl = template.Must(template.New("login").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>oidclab sign-in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;max-width:22rem;margin:3rem auto}label{display:block;margin:.6rem 0}
input{width:100%;padding:.4rem}button{margin-top:1rem;padding:.5rem 1.2rem}.error{color:#b00}</style>
</head><body>
<h1>oidclab</h1>
<p>Sign in to continue.</p>
{{if .Error}}<p class="error" id="error">{{.Error}}</p>{{end}}
<form method="post" action="">
<input type="hidden" name="id" value="{{.ID}}">
<label>Username <input type="text" name="username" id="username" autocomplete="username" autofocus required></label>
<label>Password <input type="password" name="password" id="password" autocomplete="current-password" required></label>
<button type="submit" id="submit">Sign in</button>
</form>
</body></html>
`))

func (p *loginPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// No form-action: browsers apply it to the redirects after the form is posted, and the
	// provider's answer redirects to the relying party, another origin.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	w.Header().Set("X-Frame-Options", "DENY")
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	switch r.Method {
	case http.MethodGet:
		p.render(w, http.StatusOK, r.URL.Query().Get("authRequestID"), "")
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		id := r.PostForm.Get("id")
		if id == "" {
			id = r.URL.Query().Get("authRequestID")
		}
		if err := p.store.checkLogin(id, r.PostForm.Get("username"), r.PostForm.Get("password")); err != nil {
			p.render(w, http.StatusUnauthorized, id, err.Error())
			return
		}
		http.Redirect(w, r, p.callback(r.Context(), id), http.StatusFound)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func (p *loginPage) render(w http.ResponseWriter, status int, id, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = loginTmpl.Execute(w, struct{ ID, Error string }{id, msg})
}
