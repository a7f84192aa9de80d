// Package samllab runs a real SAML 2.0 identity provider for tests: github.com/crewjam/saml's
// samlidp server, over HTTPS on a free port of a loopback (or given) address, with its own
// TLS certificate and its own RSA signing key. Tests add users (password and groups) and
// register service providers by their metadata; the lab hands out the IdP metadata a service
// provider is configured with.
//
// Two adaptations make its assertions look like the ones AWS Client VPN expects of an IdP:
// the NameID is the user's name (samlidp would send the email address, or a transient ID),
// and the user's groups are sent in a "memberOf" attribute (samlidp sends them only as
// eduPersonAffiliation, urn:oid:1.3.6.1.4.1.5923.1.1.1.1, which it still does). Both are made
// in a SessionProvider wrapped around samlidp's own, so the login form, password checks,
// sessions, request validation, signing and encryption stay samlidp's.
//
// The login page is a plain HTML form a real browser fills (inputs #user and #password,
// button #login). Login drives the same pages with an http.Client for tests without a
// browser and returns the form the browser would POST to the service provider's ACS.
//
// samlidp's login form posts the AuthnRequest back to /sso without the HTTP-Redirect
// binding's query signature, so for a service provider that signs its AuthnRequests the
// browser must already hold an IdP session (Login handles that by signing in at /login
// first); service providers that do not sign (the default, as with AWS) work in a browser
// as they are.
//
// The samlidp administration endpoints (/users, /services, /shortcuts, /sessions) refuse
// every request that does not carry the lab's own random token, so a browser under test
// cannot change the IdP; the lab itself uses them in-process.
//
// It does not fake anything that a service provider verifies: signatures, audience,
// destination, InResponseTo and times are what samlidp produces.
package samllab

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/crewjam/saml"
	"github.com/crewjam/saml/samlidp"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/net/html"

	"github.com/cvpn/cvpn/internal/testlog"
)

// GroupsAttribute is the attribute the lab's assertions carry the user's groups in.
const GroupsAttribute = "memberOf"

// adminHeader carries the lab's token on its in-process admin requests.
const adminHeader = "X-Samllab-Admin"

// Lab is a running IdP.
type Lab struct {
	// URL is the IdP's base URL, https://<addr>:<port>.
	URL string
	// EntityID is the IdP's entity ID (its metadata URL).
	EntityID string
	// Metadata is the IdP's metadata document, for the service provider's configuration.
	Metadata []byte
	// TLSCert is the self-signed certificate of the HTTPS server (IP SAN of the address).
	TLSCert *x509.Certificate
	// SigningCert is the certificate of the key that signs assertions; it is in Metadata.
	SigningCert *x509.Certificate
	// SigningKey is that key, for tests that craft responses the IdP would sign.
	SigningKey *rsa.PrivateKey
	// IdP is the samlidp server.
	IdP *samlidp.Server

	t          testing.TB
	adminToken string
	httpSrv    *http.Server
}

// Start runs an IdP on a free port of 127.0.0.1.
func Start(t testing.TB) *Lab { return StartAt(t, "127.0.0.1") }

// StartAt runs an IdP on a free port of the IP address addr. It stops when the test ends.
func StartAt(t testing.TB, addr string) *Lab {
	t.Helper()
	ip := net.ParseIP(addr)
	if ip == nil {
		t.Fatalf("samllab: %q is not an IP address", addr)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatalf("samllab: listen on %s: %v", addr, err)
	}
	base := "https://" + ln.Addr().String()
	baseURL, _ := url.Parse(base)

	tlsCert, tlsKey := selfSigned(t, ip)
	sigKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("samllab: signing key: %v", err)
	}
	sigCert := signingCertificate(t, sigKey)

	var tok [16]byte
	_, _ = rand.Read(tok[:])
	l := &Lab{
		URL: base, EntityID: base + "/metadata", TLSCert: tlsCert,
		SigningCert: sigCert, SigningKey: sigKey, t: t, adminToken: hex.EncodeToString(tok[:]),
	}
	idp, err := samlidp.New(samlidp.Options{
		URL:         *baseURL,
		Key:         sigKey,
		Certificate: sigCert,
		Store:       &samlidp.MemoryStore{},
		// samlidp logs user names and errors, never passwords; lines after the test are dropped.
		Logger:            slog.NewLogLogger(testlog.New(t).With("idp", "samllab").Handler(), slog.LevelInfo),
		LoginFormTemplate: loginForm,
		AdminMiddleware:   l.adminOnly,
	})
	if err != nil {
		t.Fatalf("samllab: samlidp: %v", err)
	}
	idp.IDP.SessionProvider = sessionProvider{idp: idp}
	l.IdP = idp

	l.httpSrv = &http.Server{
		Handler:           idp,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{{Certificate: [][]byte{tlsCert.Raw}, PrivateKey: tlsKey, Leaf: tlsCert}},
			MinVersion:   tls.VersionTLS12,
		},
		ErrorLog: slog.NewLogLogger(testlog.New(t).With("idp", "samllab https").Handler(), slog.LevelDebug),
	}
	go func() { _ = l.httpSrv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = l.httpSrv.Close() })

	rec := l.admin(http.MethodGet, "/metadata", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("samllab: metadata: HTTP %d: %s", rec.Code, rec.Body)
	}
	l.Metadata = rec.Body.Bytes()
	return l
}

// adminOnly lets through only the lab's own in-process admin requests.
func (l *Lab) adminOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(adminHeader) != l.adminToken {
			http.Error(w, "samllab: the admin endpoints are the test's", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// admin runs a request through the IdP's handler in-process.
func (l *Lab) admin(method, path string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, l.URL+path, bytes.NewReader(body))
	req.Header.Set(adminHeader, l.adminToken)
	rec := httptest.NewRecorder()
	l.IdP.ServeHTTP(rec, req)
	return rec
}

// sessionProvider is samlidp's session provider with the NameID set to the user's name and
// the groups also sent as memberOf.
type sessionProvider struct{ idp *samlidp.Server }

func (p sessionProvider) GetSession(w http.ResponseWriter, r *http.Request, req *saml.IdpAuthnRequest) *saml.Session {
	s := p.idp.GetSession(w, r, req)
	if s == nil {
		return nil
	}
	c := *s
	c.NameID = s.UserName
	c.NameIDFormat = string(saml.UnspecifiedNameIDFormat)
	if len(s.Groups) > 0 {
		vals := make([]saml.AttributeValue, len(s.Groups))
		for i, g := range s.Groups {
			vals[i] = saml.AttributeValue{Type: "xs:string", Value: g}
		}
		c.CustomAttributes = append(append([]saml.Attribute(nil), s.CustomAttributes...), saml.Attribute{
			Name:       GroupsAttribute,
			NameFormat: "urn:oasis:names:tc:SAML:2.0:attrname-format:basic",
			Values:     vals,
		})
	}
	return &c
}

// AddUser adds (or replaces) a user with a password and groups.
func (l *Lab) AddUser(name, password string, groups ...string) {
	l.t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		l.t.Fatalf("samllab: hash: %v", err)
	}
	u := samlidp.User{Name: name, HashedPassword: hash, Groups: append([]string(nil), groups...)}
	if err := l.IdP.Store.Put("/users/"+name, &u); err != nil {
		l.t.Fatalf("samllab: add user %s: %v", name, err)
	}
}

// AddServiceProvider registers a service provider by its metadata document, under id.
func (l *Lab) AddServiceProvider(id string, metadata []byte) {
	l.t.Helper()
	if rec := l.admin(http.MethodPut, "/services/"+url.PathEscape(id), metadata); rec.Code/100 != 2 {
		l.t.Fatalf("samllab: register SP %s: HTTP %d: %s", id, rec.Code, rec.Body)
	}
}

// AddShortcut makes /login/<name> start an IdP-initiated login to the service provider of
// entity ID spEntityID, with RelayState relayState.
func (l *Lab) AddShortcut(name, spEntityID, relayState string) {
	l.t.Helper()
	b, _ := json.Marshal(samlidp.Shortcut{Name: name, ServiceProviderID: spEntityID, RelayState: &relayState})
	if rec := l.admin(http.MethodPut, "/shortcuts/"+url.PathEscape(name), b); rec.Code/100 != 2 {
		l.t.Fatalf("samllab: shortcut %s: HTTP %d: %s", name, rec.Code, rec.Body)
	}
}

// Client returns an HTTP client that trusts the lab's TLS certificate and keeps cookies (the
// IdP's session), without following redirects to other hosts' pages it cannot reach anyway.
func (l *Lab) Client() *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(l.TLSCert)
	jar, _ := cookiejar.New(nil)
	return &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			Proxy:           nil,
		},
	}
}

// Login follows an SP-initiated login with an HTTP client: it opens redirectURL (the
// service provider's AuthnRequest at the IdP), fills the login form with user and password,
// and returns the form the IdP's answer page would have the browser POST to the ACS
// (SAMLResponse and RelayState). It fails the test if the IdP does not answer with one.
func (l *Lab) Login(t testing.TB, redirectURL, user, password string) url.Values {
	t.Helper()
	_, vals, err := l.TryLogin(redirectURL, user, password)
	if err != nil {
		t.Fatalf("samllab: login as %s: %v", user, err)
	}
	return vals
}

// TryLogin is Login returning an error (a wrong password, an unknown SP) instead of failing
// the test. It also returns the URL the answer form posts to (the ACS).
func (l *Lab) TryLogin(redirectURL, user, password string) (acs string, form url.Values, err error) {
	if !strings.HasPrefix(redirectURL, l.URL+"/") {
		return "", nil, fmt.Errorf("redirect URL %.80q is not at the IdP %s", redirectURL, l.URL)
	}
	c := l.Client()
	if u, err := url.Parse(redirectURL); err == nil && u.Query().Get("Signature") != "" {
		// samlidp's login form posts the AuthnRequest back without the query string's
		// signature, which the IdP then refuses for an SP that signs; sign in first and
		// send the signed request with the session.
		if err := l.signIn(c, user, password); err != nil {
			return "", nil, err
		}
		resp, err := c.Get(redirectURL)
		if err != nil {
			return "", nil, err
		}
		return answerForm(resp)
	}
	resp, err := c.Get(redirectURL)
	if err != nil {
		return "", nil, err
	}
	page, err := readPage(resp)
	if err != nil {
		return "", nil, err
	}
	action, fields, err := findForm(page, resp.Request.URL)
	if err != nil {
		return "", nil, fmt.Errorf("login page: %w", err)
	}
	if _, ok := fields["password"]; !ok {
		return "", nil, fmt.Errorf("login page has no password field: %.300s", page)
	}
	fields.Set("user", user)
	fields.Set("password", password)
	return l.postForAnswer(c, action, fields)
}

// IdPInitiatedLogin signs user in at the IdP and opens /login/<shortcut> (see AddShortcut),
// returning the unsolicited response form the IdP would have the browser POST to the ACS.
func (l *Lab) IdPInitiatedLogin(t testing.TB, shortcut, user, password string) url.Values {
	t.Helper()
	c := l.Client()
	if err := l.signIn(c, user, password); err != nil {
		t.Fatalf("samllab: %v", err)
	}
	resp, err := c.Get(l.URL + "/login/" + url.PathEscape(shortcut))
	if err != nil {
		t.Fatalf("samllab: IdP-initiated login: %v", err)
	}
	_, fields, err := answerForm(resp)
	if err != nil {
		t.Fatalf("samllab: IdP-initiated login: %v", err)
	}
	return fields
}

// signIn opens a session at the IdP for c (samlidp's /login answers a good password with
// the session as JSON and a cookie).
func (l *Lab) signIn(c *http.Client, user, password string) error {
	resp, err := c.PostForm(l.URL+"/login", url.Values{"user": {user}, "password": {password}})
	if err != nil {
		return fmt.Errorf("IdP login: %w", err)
	}
	body, err := readPage(resp)
	if err != nil || !bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) {
		return fmt.Errorf("IdP login as %s refused (%v): %.300s", user, err, body)
	}
	return nil
}

func (l *Lab) postForAnswer(c *http.Client, action string, fields url.Values) (string, url.Values, error) {
	resp, err := c.PostForm(action, fields)
	if err != nil {
		return "", nil, err
	}
	return answerForm(resp)
}

// answerForm reads the IdP's answer page: the auto-submitting form to the ACS.
func answerForm(resp *http.Response) (string, url.Values, error) {
	page, err := readPage(resp)
	if err != nil {
		return "", nil, err
	}
	acs, answer, err := findForm(page, resp.Request.URL)
	if err != nil {
		return "", nil, fmt.Errorf("answer page: %w", err)
	}
	if answer.Get("SAMLResponse") == "" {
		return "", nil, errors.New("the IdP did not answer with a SAMLResponse (wrong password?)")
	}
	return acs, answer, nil
}

func readPage(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("%s: HTTP %d: %.300s", resp.Request.URL, resp.StatusCode, b)
	}
	return b, nil
}

// findForm returns the action (resolved against base) and the input fields of the first
// form of page.
func findForm(page []byte, base *url.URL) (string, url.Values, error) {
	doc, err := html.Parse(bytes.NewReader(page))
	if err != nil {
		return "", nil, err
	}
	var form *html.Node
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if form != nil {
			return
		}
		if n.Type == html.ElementNode && n.Data == "form" {
			form = n
			return
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	if form == nil {
		return "", nil, fmt.Errorf("no form in %.300s", page)
	}
	action, err := base.Parse(attr(form, "action"))
	if err != nil {
		return "", nil, fmt.Errorf("form action: %v", err)
	}
	fields := url.Values{}
	var inputs func(n *html.Node)
	inputs = func(n *html.Node) {
		if n.Type == html.ElementNode && n.Data == "input" && attr(n, "name") != "" {
			fields.Add(attr(n, "name"), attr(n, "value"))
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			inputs(c)
		}
	}
	inputs(form)
	return action.String(), fields, nil
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// loginForm is the IdP's login page: samlidp's fields (user, password, the hidden
// SAMLRequest and RelayState) with labels and ids a browser test can address.
var loginForm = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>samllab IdP: sign in</title>
<style>body{font-family:sans-serif;max-width:24rem;margin:3rem auto;padding:0 1rem}
label,input{display:block;width:100%;box-sizing:border-box;margin:.3rem 0}input{padding:.5rem}
.toast{color:#b00020}</style></head>
<body><h1>samllab IdP</h1>
{{if .Toast}}<p class="toast" id="toast">{{.Toast}}</p>{{end}}
<form method="post" action="{{.URL}}">
<label for="user">Username</label><input id="user" type="text" name="user" autocomplete="username" value="">
<label for="password">Password</label><input id="password" type="password" name="password" autocomplete="current-password" value="">
<input type="hidden" name="SAMLRequest" value="{{.SAMLRequest}}">
<input type="hidden" name="RelayState" value="{{.RelayState}}">
<input id="login" type="submit" value="Sign in">
</form></body></html>
`))

// selfSigned makes the HTTPS server's certificate for ip.
func selfSigned(t testing.TB, ip net.IP) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("samllab: TLS key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "samllab IdP " + ip.String()},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{ip},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("samllab: TLS certificate: %v", err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

// signingCertificate makes the certificate of the assertion signing key.
func signingCertificate(t testing.TB, key *rsa.PrivateKey) *x509.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: "samllab IdP signing"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("samllab: signing certificate: %v", err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("samllab: serial: %v", err)
	}
	return n
}
