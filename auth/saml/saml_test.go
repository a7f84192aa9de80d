package saml

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beevik/etree"

	"github.com/cvpn/cvpn/internal/samllab"
)

const (
	testEntityID = "https://portal.test/saml/metadata"
	testACS      = "https://portal.test/saml/acs"
)

// clock is a Config.Now that tests move forward.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// newSP builds an SP for lab, registers it there under spID and returns it with its clock.
func newSP(t *testing.T, lab *samllab.Lab, spID string, mod func(*Config)) (*SP, *clock) {
	t.Helper()
	clk := &clock{}
	cfg := Config{IdPMetadata: lab.Metadata, EntityID: testEntityID, ACSURL: testACS, Now: clk.Now}
	if mod != nil {
		mod(&cfg)
	}
	sp, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	md, err := sp.Metadata()
	if err != nil {
		t.Fatalf("Metadata: %v", err)
	}
	lab.AddServiceProvider(spID, md)
	return sp, clk
}

// acsRequest is the browser's POST of form to the ACS.
func acsRequest(form url.Values) *http.Request {
	r := httptest.NewRequest(http.MethodPost, testACS, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return r
}

func begin(t *testing.T, sp *SP) (string, Login) {
	t.Helper()
	u, login, err := sp.Begin()
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	return u, login
}

// responseXML decodes the SAMLResponse of form.
func responseXML(t *testing.T, form url.Values) *etree.Document {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(form.Get("SAMLResponse"))
	if err != nil {
		t.Fatalf("SAMLResponse: %v", err)
	}
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(raw); err != nil {
		t.Fatalf("SAMLResponse XML: %v", err)
	}
	return doc
}

func withResponse(t *testing.T, form url.Values, doc *etree.Document) url.Values {
	t.Helper()
	b, err := doc.WriteToBytes()
	if err != nil {
		t.Fatal(err)
	}
	out := url.Values{}
	for k, v := range form {
		out[k] = v
	}
	out.Set("SAMLResponse", base64.StdEncoding.EncodeToString(b))
	return out
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error %v, want %v", err, want)
	}
	t.Logf("refused as expected: %v", err)
}

func TestLogin(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "alice-pw", "eng", "vpn-admins")
	sp, _ := newSP(t, lab, "portal", nil)

	redirect, login := begin(t, sp)
	u, err := url.Parse(redirect)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Scheme + "://" + u.Host + u.Path; got != lab.URL+"/sso" {
		t.Errorf("redirect to %s, want the IdP's SSO %s/sso", got, lab.URL)
	}
	if u.Query().Get("RelayState") != login.State || u.Query().Get("SAMLRequest") == "" {
		t.Errorf("redirect query %v lacks the AuthnRequest or RelayState %s", u.Query(), login.State)
	}
	if u.Query().Get("Signature") != "" {
		t.Error("AuthnRequest signed by an SP without a key")
	}
	if len(login.State) != 43 || login.RequestID == "" || !login.Expires.After(time.Now()) {
		t.Errorf("login %+v", login)
	}

	form := lab.Login(t, redirect, "alice", "alice-pw")
	if form.Get("RelayState") != login.State {
		t.Errorf("RelayState %q, want %q", form.Get("RelayState"), login.State)
	}
	id, err := sp.Complete(acsRequest(form))
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	want := Identity{Username: "alice", Groups: []string{"eng", "vpn-admins"}, Subject: "alice", Issuer: lab.EntityID, State: login.State}
	if id.Username != want.Username || !slices.Equal(id.Groups, want.Groups) || id.Subject != want.Subject ||
		id.Issuer != want.Issuer || id.State != want.State {
		t.Errorf("identity %+v, want %+v", id, want)
	}
	if n := sp.Pending(); n != 0 {
		t.Errorf("%d logins pending after completion", n)
	}
}

// TestLoginSignedRequestEncryptedAssertion: an SP with an RSA key signs its AuthnRequests,
// publishes the certificate, and the IdP encrypts the assertion to it.
func TestLoginSignedRequestEncryptedAssertion(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("bob", "bob-pw", "ops")
	cert, key := spKeyPair(t)
	sp, _ := newSP(t, lab, "portal", func(c *Config) { c.Certificate, c.Key = cert, key })

	redirect, login := begin(t, sp)
	u, _ := url.Parse(redirect)
	if u.Query().Get("Signature") == "" || !strings.Contains(u.Query().Get("SigAlg"), "rsa-sha256") {
		t.Errorf("AuthnRequest not signed with RSA-SHA256: %v", u.Query())
	}
	form := lab.Login(t, redirect, "bob", "bob-pw")
	if doc := responseXML(t, form); doc.FindElement("//EncryptedAssertion") == nil {
		t.Error("the IdP did not encrypt the assertion to the SP's certificate")
	}
	id, err := sp.Complete(acsRequest(form))
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if id.Username != "bob" || !slices.Equal(id.Groups, []string{"ops"}) || id.State != login.State {
		t.Errorf("identity %+v", id)
	}
}

func spKeyPair(t testing.TB) (*x509.Certificate, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "portal.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

func TestWrongPasswordGetsNoResponse(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "alice-pw")
	sp, _ := newSP(t, lab, "portal", nil)
	redirect, _ := begin(t, sp)
	if _, form, err := lab.TryLogin(redirect, "alice", "wrong"); err == nil {
		t.Fatalf("the IdP answered a wrong password with %v", form)
	}
}

func TestGroupsAttribute(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "pw", "eng", "eng", "ops")
	// samlidp also sends the groups as eduPersonAffiliation.
	sp, _ := newSP(t, lab, "portal", func(c *Config) { c.GroupsAttribute = "urn:oid:1.3.6.1.4.1.5923.1.1.1.1" })
	redirect, _ := begin(t, sp)
	id, err := sp.Complete(acsRequest(lab.Login(t, redirect, "alice", "pw")))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(id.Groups, []string{"eng", "ops"}) {
		t.Errorf("groups %q, want eng, ops (duplicates removed)", id.Groups)
	}

	// A user without groups has none, not an error.
	lab.AddUser("carol", "pw")
	sp2, _ := newSP(t, lab, "portal", nil)
	redirect, _ = begin(t, sp2)
	id, err = sp2.Complete(acsRequest(lab.Login(t, redirect, "carol", "pw")))
	if err != nil || id.Username != "carol" || len(id.Groups) != 0 {
		t.Errorf("carol: %+v, %v", id, err)
	}
}

func TestGroupsBounded(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("many", "pw", "a", "b", "c")
	lab.AddUser("long", "pw", strings.Repeat("g", MaxNameLength+1))
	sp, _ := newSP(t, lab, "portal", func(c *Config) { c.MaxGroups = 2 })

	redirect, _ := begin(t, sp)
	_, err := sp.Complete(acsRequest(lab.Login(t, redirect, "many", "pw")))
	wantErr(t, err, ErrIdentity)
	redirect, _ = begin(t, sp)
	_, err = sp.Complete(acsRequest(lab.Login(t, redirect, "long", "pw")))
	wantErr(t, err, ErrIdentity)
}

// TestUnsignedResponseRefused strips every signature from a real response: the library must
// not accept a Response whose Assertion is unsigned.
func TestUnsignedResponseRefused(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "pw", "eng")
	sp, _ := newSP(t, lab, "portal", nil)
	redirect, _ := begin(t, sp)
	form := lab.Login(t, redirect, "alice", "pw")

	doc := responseXML(t, form)
	sigs := doc.FindElements("//Signature")
	if len(sigs) == 0 {
		t.Fatal("the IdP's response carries no signature to strip")
	}
	for _, s := range sigs {
		s.Parent().RemoveChild(s)
	}
	if len(doc.FindElements("//Signature")) != 0 {
		t.Fatal("signatures left")
	}
	_, err := sp.Complete(acsRequest(withResponse(t, form, doc)))
	wantErr(t, err, ErrSignature)
}

// TestAssertionSignatureSuffices: with the Response's own signature removed, the signed
// Assertion still carries the login (either signature is enough, as AWS accepts).
func TestAssertionSignatureSuffices(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "pw", "eng")
	sp, _ := newSP(t, lab, "portal", nil)
	redirect, _ := begin(t, sp)
	form := lab.Login(t, redirect, "alice", "pw")

	doc := responseXML(t, form)
	sig := doc.Root().SelectElement("Signature")
	if sig == nil || doc.FindElement("/Response/Assertion/Signature") == nil {
		t.Fatal("samlidp no longer signs both the Response and the Assertion")
	}
	doc.Root().RemoveChild(sig)
	id, err := sp.Complete(acsRequest(withResponse(t, form, doc)))
	if err != nil || id.Username != "alice" {
		t.Fatalf("Complete with a signed Assertion only: %+v, %v", id, err)
	}
}

// TestTamperedAssertionRefused changes the NameID of a signed assertion.
func TestTamperedAssertionRefused(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "pw", "eng")
	sp, _ := newSP(t, lab, "portal", nil)
	redirect, _ := begin(t, sp)
	form := lab.Login(t, redirect, "alice", "pw")

	doc := responseXML(t, form)
	nameID := doc.FindElement("//Assertion/Subject/NameID")
	if nameID == nil || nameID.Text() != "alice" {
		t.Fatalf("no NameID alice in the response")
	}
	nameID.SetText("admin")
	_, err := sp.Complete(acsRequest(withResponse(t, form, doc)))
	wantErr(t, err, ErrSignature)
}

// TestOtherIdPRefused: a response signed by another IdP (whose metadata the SP does not
// hold) is refused, although everything else about it fits.
func TestOtherIdPRefused(t *testing.T) {
	lab := samllab.Start(t)
	other := samllab.Start(t)
	other.AddUser("alice", "pw")
	sp, clk := newSP(t, lab, "portal", nil)
	// The same SP (entity ID, ACS) as configured for the other IdP.
	twin, _ := newSP(t, other, "portal", func(c *Config) { c.IdPMetadata = other.Metadata })

	redirect, login := begin(t, twin)
	form := other.Login(t, redirect, "alice", "pw")
	if err := sp.putPending(context.Background(), login.State, pendingLogin{requestID: login.RequestID, expires: clk.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	_, err := sp.Complete(acsRequest(form))
	if !errors.Is(err, ErrSignature) && !errors.Is(err, ErrIssuer) {
		t.Fatalf("error %v, want a signature or issuer refusal", err)
	}
	t.Logf("refused as expected: %v", err)
}

// TestOtherAudienceRefused: a response the IdP issued for another SP (same ACS URL, other
// entity ID), presented to this SP with the InResponseTo it expects.
func TestOtherAudienceRefused(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "pw")
	sp, clk := newSP(t, lab, "portal", nil)
	otherSP, _ := newSP(t, lab, "other", func(c *Config) { c.EntityID = "https://other.test/saml/metadata" })

	redirect, login := begin(t, otherSP)
	form := lab.Login(t, redirect, "alice", "pw")
	// Make sp expect exactly this request, so only the audience is wrong.
	if err := sp.putPending(context.Background(), login.State, pendingLogin{requestID: login.RequestID, expires: clk.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	_, err := sp.Complete(acsRequest(form))
	wantErr(t, err, ErrAudience)
}

func TestExpiredAssertionRefused(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "pw")
	sp, clk := newSP(t, lab, "portal", nil)
	redirect, _ := begin(t, sp)
	form := lab.Login(t, redirect, "alice", "pw")
	// samlidp's assertions say NotOnOrAfter = issue + 90 s; the library allows 180 s of skew.
	// Five minutes later the login itself (10 min TTL) is still pending.
	clk.advance(5 * time.Minute)
	_, err := sp.Complete(acsRequest(form))
	wantErr(t, err, ErrExpired)
}

// TestFutureAssertionRefused: the SP's clock five minutes behind the IdP's.
func TestFutureAssertionRefused(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "pw")
	sp, clk := newSP(t, lab, "portal", nil)
	redirect, _ := begin(t, sp)
	form := lab.Login(t, redirect, "alice", "pw")
	clk.advance(-5 * time.Minute)
	_, err := sp.Complete(acsRequest(form))
	wantErr(t, err, ErrNotYetValid)
}

// TestReplayRefused posts one response twice, then again under a fresh login's state.
func TestReplayRefused(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "pw")
	sp, clk := newSP(t, lab, "portal", nil)
	redirect, login := begin(t, sp)
	form := lab.Login(t, redirect, "alice", "pw")
	if _, err := sp.Complete(acsRequest(form)); err != nil {
		t.Fatalf("first Complete: %v", err)
	}
	_, err := sp.Complete(acsRequest(form))
	wantErr(t, err, ErrUnknownLogin)

	// An attacker with the captured response begins a login of their own and posts the
	// response under its state: InResponseTo names the completed login's request.
	_, fresh := begin(t, sp)
	replay := url.Values{"SAMLResponse": {form.Get("SAMLResponse")}, "RelayState": {fresh.State}}
	_, err = sp.Complete(acsRequest(replay))
	wantErr(t, err, ErrRequestID)

	// Were the pending login somehow restored, the assertion ID is still spent.
	if err := sp.putPending(context.Background(), login.State, pendingLogin{requestID: login.RequestID, expires: clk.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	_, err = sp.Complete(acsRequest(form))
	wantErr(t, err, ErrReplayed)
}

// TestIdPInitiatedRefused: an unsolicited response from the IdP (samlidp's shortcut flow),
// once with no RelayState and once with the state of a real pending login.
func TestIdPInitiatedRefused(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "pw")
	sp, _ := newSP(t, lab, "portal", nil)

	lab.AddShortcut("portal", testEntityID, "")
	form := lab.IdPInitiatedLogin(t, "portal", "alice", "pw")
	if doc := responseXML(t, form); doc.Root().SelectAttrValue("InResponseTo", "") != "" {
		t.Fatal("the IdP-initiated response has an InResponseTo")
	}
	_, err := sp.Complete(acsRequest(form))
	wantErr(t, err, ErrUnknownLogin)

	_, login := begin(t, sp)
	lab.AddShortcut("portal-state", testEntityID, login.State)
	form = lab.IdPInitiatedLogin(t, "portal-state", "alice", "pw")
	if form.Get("RelayState") != login.State {
		t.Fatalf("RelayState %q", form.Get("RelayState"))
	}
	_, err = sp.Complete(acsRequest(form))
	wantErr(t, err, ErrRequestID)
}

// TestOversizedResponseRefusedBeforeParsing: a real, valid response over the limit gets the
// size error, the XML parser never sees it, and the login stays pending.
func TestOversizedResponseRefusedBeforeParsing(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "pw")
	sp, _ := newSP(t, lab, "portal", func(c *Config) { c.MaxResponseBytes = 2048 })
	redirect, _ := begin(t, sp)
	form := lab.Login(t, redirect, "alice", "pw")
	if n := len(form.Get("SAMLResponse")); n <= 2048 {
		t.Fatalf("the real response is only %d bytes", n)
	}
	_, err := sp.Complete(acsRequest(form))
	wantErr(t, err, ErrResponseTooLarge)

	// The same through a form the caller already parsed.
	r := acsRequest(form)
	if err := r.ParseForm(); err != nil {
		t.Fatal(err)
	}
	_, err = sp.Complete(r)
	wantErr(t, err, ErrResponseTooLarge)

	// A body far over the limit is refused while reading it.
	huge := url.Values{"SAMLResponse": {strings.Repeat("PHg+", 8<<10)}, "RelayState": {form.Get("RelayState")}}
	_, err = sp.Complete(acsRequest(huge))
	wantErr(t, err, ErrResponseTooLarge)

	if n := sp.xmlParses.Load(); n != 0 {
		t.Errorf("%d responses reached the XML parser", n)
	}
	if sp.Pending() != 1 {
		t.Errorf("%d logins pending, want the one begun (refusals before parsing spend no login)", sp.Pending())
	}
}

// TestMalformedRefused: requests that fail before or at the XML, each with its sentinel.
func TestMalformedRefused(t *testing.T) {
	lab := samllab.Start(t)
	sp, clk := newSP(t, lab, "portal", nil)
	b64 := base64.StdEncoding.EncodeToString
	cases := []struct {
		name   string
		req    func(state string) *http.Request
		want   error
		parsed bool // reaches the XML parser
	}{
		{"GET", func(string) *http.Request { return httptest.NewRequest(http.MethodGet, testACS, nil) }, ErrRequest, false},
		{"JSON", func(string) *http.Request {
			r := httptest.NewRequest(http.MethodPost, testACS, strings.NewReader(`{}`))
			r.Header.Set("Content-Type", "application/json")
			return r
		}, ErrRequest, false},
		{"no SAMLResponse", func(s string) *http.Request { return acsRequest(url.Values{"RelayState": {s}}) }, ErrMalformedResponse, false},
		{"two SAMLResponse", func(s string) *http.Request {
			return acsRequest(url.Values{"SAMLResponse": {b64([]byte("<a/>")), b64([]byte("<b/>"))}, "RelayState": {s}})
		}, ErrMalformedResponse, false},
		{"artifact", func(s string) *http.Request { return acsRequest(url.Values{"SAMLart": {"AAQAAA"}, "RelayState": {s}}) }, ErrMalformedResponse, false},
		{"bad base64", func(s string) *http.Request {
			return acsRequest(url.Values{"SAMLResponse": {"!!not base64!!"}, "RelayState": {s}})
		}, ErrMalformedResponse, false},
		{"bad form encoding", func(string) *http.Request {
			r := httptest.NewRequest(http.MethodPost, testACS, strings.NewReader("SAMLResponse=%zz"))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return r
		}, ErrMalformedResponse, false},
		{"no RelayState", func(string) *http.Request { return acsRequest(url.Values{"SAMLResponse": {b64([]byte("<a/>"))}}) }, ErrUnknownLogin, false},
		{"unknown RelayState", func(string) *http.Request {
			return acsRequest(url.Values{"SAMLResponse": {b64([]byte("<a/>"))}, "RelayState": {"nope"}})
		}, ErrUnknownLogin, false},
		{"not XML", func(s string) *http.Request {
			return acsRequest(url.Values{"SAMLResponse": {b64([]byte("<Response <<"))}, "RelayState": {s}})
		}, ErrMalformedResponse, true},
		{"not a Response", func(s string) *http.Request {
			return acsRequest(url.Values{"SAMLResponse": {b64([]byte(`<x xmlns="urn:oasis:names:tc:SAML:2.0:protocol"/>`))}, "RelayState": {s}})
		}, ErrMalformedResponse, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, login := begin(t, sp)
			before := sp.xmlParses.Load()
			_, err := sp.Complete(tc.req(login.State))
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.want != nil {
				wantErr(t, err, tc.want)
			}
			t.Logf("%v", err)
			if parsed := sp.xmlParses.Load() != before; parsed != tc.parsed {
				t.Errorf("reached the XML parser: %v, want %v", parsed, tc.parsed)
			}
		})
	}

	// An expired login state is unknown.
	_, login := begin(t, sp)
	clk.advance(DefaultLoginTTL + time.Second)
	_, err := sp.Complete(acsRequest(url.Values{"SAMLResponse": {b64([]byte("<a/>"))}, "RelayState": {login.State}}))
	wantErr(t, err, ErrUnknownLogin)
}

func TestPendingLoginsBounded(t *testing.T) {
	lab := samllab.Start(t)
	sp, clk := newSP(t, lab, "portal", func(c *Config) { c.MaxPendingLogins = 2 })
	begin(t, sp)
	begin(t, sp)
	if _, _, err := sp.Begin(); !errors.Is(err, ErrTooManyLogins) {
		t.Fatalf("third Begin: %v, want ErrTooManyLogins", err)
	}
	clk.advance(DefaultLoginTTL)
	if _, _, err := sp.Begin(); err != nil {
		t.Fatalf("Begin after the others expired: %v", err)
	}
	if sp.Pending() != 1 {
		t.Errorf("%d pending, want the expired ones swept", sp.Pending())
	}
}

func TestCheckTimes(t *testing.T) {
	lab := samllab.Start(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	sp, _ := newSP(t, lab, "portal", func(c *Config) { c.ClockSkew = time.Minute })
	mk := func(issue, notBefore, notOnOrAfter, confirmUntil time.Time) error {
		a := assertionAt(issue, notBefore, notOnOrAfter, confirmUntil)
		return sp.checkTimes(a, now)
	}
	m := time.Minute
	if err := mk(now, now.Add(-m), now.Add(m), now.Add(m)); err != nil {
		t.Errorf("valid window: %v", err)
	}
	if err := mk(now.Add(-2*m), now.Add(-3*m), now.Add(-30*time.Second), now.Add(-30*time.Second)); err != nil {
		t.Errorf("within skew: %v", err)
	}
	for name, tc := range map[string]struct {
		err  error
		want error
	}{
		"issued ahead":       {mk(now.Add(2*m), now, now.Add(3*m), now.Add(3*m)), ErrNotYetValid},
		"NotBefore ahead":    {mk(now, now.Add(2*m), now.Add(3*m), now.Add(3*m)), ErrNotYetValid},
		"NotOnOrAfter past":  {mk(now.Add(-3*m), now.Add(-3*m), now.Add(-m), now.Add(m)), ErrExpired},
		"confirmation past":  {mk(now.Add(-3*m), now.Add(-3*m), now.Add(m), now.Add(-m)), ErrExpired},
		"NotOnOrAfter exact": {mk(now, now, now.Add(-m), now.Add(m)), ErrExpired},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", name, tc.err, tc.want)
		}
	}
}

func TestCheckName(t *testing.T) {
	for _, v := range []string{"alice", "alice@example.com", "CN=eng,OU=groups,DC=example,DC=com", "Zoë", strings.Repeat("a", MaxNameLength)} {
		if err := checkName(v); err != nil {
			t.Errorf("%q: %v", v, err)
		}
	}
	for _, v := range []string{"", strings.Repeat("a", MaxNameLength+1), "a\nb", "a\x00", "\xff", " alice", "alice\t"} {
		if checkName(v) == nil {
			t.Errorf("%q accepted", v)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	lab := samllab.Start(t)
	cert, key := spKeyPair(t)
	otherCert, _ := spKeyPair(t)
	good := Config{IdPMetadata: lab.Metadata, EntityID: testEntityID, ACSURL: testACS}
	for name, mod := range map[string]func(*Config){
		"no metadata":      func(c *Config) { c.IdPMetadata = nil },
		"garbage metadata": func(c *Config) { c.IdPMetadata = []byte("<nope") },
		"SP metadata":      func(c *Config) { c.IdPMetadata = spMetadata(t) },
		"no entity ID":     func(c *Config) { c.EntityID = "" },
		"relative ACS":     func(c *Config) { c.ACSURL = "/saml/acs" },
		"ftp ACS":          func(c *Config) { c.ACSURL = "ftp://portal.test/acs" },
		"key without cert": func(c *Config) { c.Key = key },
		"cert without key": func(c *Config) { c.Certificate = cert },
		"mismatched key":   func(c *Config) { c.Certificate, c.Key = otherCert, key },
		"huge metadata":    func(c *Config) { c.IdPMetadata = make([]byte, maxMetadataBytes+1) },
		"no signing cert": func(c *Config) {
			c.IdPMetadata = []byte(strings.ReplaceAll(string(lab.Metadata), "X509Certificate>", "X509Certificat>"))
		},
		"no redirect SSO": func(c *Config) {
			c.IdPMetadata = []byte(strings.ReplaceAll(string(lab.Metadata), "HTTP-Redirect", "HTTP-Nothing"))
		},
		"unparseable certs": func(c *Config) { c.IdPMetadata = breakCerts(t, lab.Metadata) },
	} {
		cfg := good
		mod(&cfg)
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
	if _, err := New(good); err != nil {
		t.Errorf("good config: %v", err)
	}
}

func spMetadata(t *testing.T) []byte {
	lab := samllab.Start(t)
	sp, err := New(Config{IdPMetadata: lab.Metadata, EntityID: testEntityID, ACSURL: testACS})
	if err != nil {
		t.Fatal(err)
	}
	md, err := sp.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	return md
}

func breakCerts(t *testing.T, md []byte) []byte {
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(md); err != nil {
		t.Fatal(err)
	}
	for _, c := range doc.FindElements("//X509Certificate") {
		c.SetText("AAAA")
	}
	b, _ := doc.WriteToBytes()
	return b
}

// TestConcurrentLogins runs logins side by side (go test -race): each completes with its own
// identity and state.
func TestConcurrentLogins(t *testing.T) {
	lab := samllab.Start(t)
	sp, _ := newSP(t, lab, "portal", nil)
	const n = 6
	for i := range n {
		lab.AddUser(fmt.Sprintf("user%d", i), "pw", fmt.Sprintf("group%d", i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			redirect, login, err := sp.Begin()
			if err != nil {
				errs <- err
				return
			}
			user := fmt.Sprintf("user%d", i)
			_, form, err := lab.TryLogin(redirect, user, "pw")
			if err != nil {
				errs <- err
				return
			}
			id, err := sp.Complete(acsRequest(form))
			switch {
			case err != nil:
				errs <- err
			case id.Username != user || id.State != login.State || !slices.Equal(id.Groups, []string{fmt.Sprintf("group%d", i)}):
				errs <- fmt.Errorf("login %d completed as %+v", i, id)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if sp.Pending() != 0 {
		t.Errorf("%d logins left pending", sp.Pending())
	}
}
