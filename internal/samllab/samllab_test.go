package samllab

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/beevik/etree"
	"github.com/crewjam/saml/samlsp"

	cvpnsaml "github.com/cvpn/cvpn/auth/saml"
)

func TestMetadataAndTLS(t *testing.T) {
	l := Start(t)
	md, err := samlsp.ParseMetadata(l.Metadata)
	if err != nil {
		t.Fatalf("metadata: %v", err)
	}
	if md.EntityID != l.EntityID || md.EntityID != l.URL+"/metadata" {
		t.Errorf("entity ID %q, lab says %q", md.EntityID, l.EntityID)
	}
	var found bool
	for _, d := range md.IDPSSODescriptors {
		for _, kd := range d.KeyDescriptors {
			for _, c := range kd.KeyInfo.X509Data.X509Certificates {
				der, _ := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(c.Data), ""))
				if cert, err := x509.ParseCertificate(der); err == nil && cert.Equal(l.SigningCert) {
					found = true
				}
			}
		}
	}
	if !found {
		t.Error("the signing certificate is not in the metadata")
	}
	// The HTTPS server's certificate verifies for its address; an untrusting client fails.
	resp, err := l.Client().Get(l.URL + "/metadata")
	if err != nil {
		t.Fatalf("GET metadata with the lab's client: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("metadata: HTTP %d", resp.StatusCode)
	}
	plain := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{}}}
	if resp, err := plain.Get(l.URL + "/metadata"); err == nil {
		resp.Body.Close()
		t.Error("a client without the lab's certificate connected")
	}
}

func TestAdminEndpointsNeedTheToken(t *testing.T) {
	l := Start(t)
	l.AddUser("alice", "pw")
	c := l.Client()
	for _, p := range []string{"/users/", "/users/alice", "/services/", "/sessions/", "/shortcuts/"} {
		resp, err := c.Get(l.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("GET %s from a client: HTTP %d, want 403", p, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest(http.MethodPut, l.URL+"/users/mallory", strings.NewReader(`{"password":"x"}`))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("PUT /users/mallory: HTTP %d, want 403", resp.StatusCode)
	}
	if rec := l.admin(http.MethodGet, "/users/alice", nil); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"alice"`) {
		t.Errorf("the lab's own admin request: HTTP %d %s", rec.Code, rec.Body)
	}
}

// newSP is a cvpn service provider registered at l, with its ACS at acs.
func newSP(t *testing.T, l *Lab, acs string) *cvpnsaml.SP {
	t.Helper()
	sp, err := cvpnsaml.New(cvpnsaml.Config{IdPMetadata: l.Metadata, EntityID: "https://portal.test/saml/metadata", ACSURL: acs})
	if err != nil {
		t.Fatal(err)
	}
	md, err := sp.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	l.AddServiceProvider("portal", md)
	return sp
}

// TestAssertionShape: NameID is the username (unspecified format), memberOf holds the groups,
// and everything is signed.
func TestAssertionShape(t *testing.T) {
	l := Start(t)
	l.AddUser("alice", "alice-pw", "eng", "vpn users")
	sp := newSP(t, l, "https://portal.test/saml/acs")
	redirect, login, err := sp.Begin()
	if err != nil {
		t.Fatal(err)
	}
	acs, form, err := l.TryLogin(redirect, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	if acs != "https://portal.test/saml/acs" || form.Get("RelayState") != login.State {
		t.Errorf("answer form posts to %s with RelayState %q", acs, form.Get("RelayState"))
	}
	raw, _ := base64.StdEncoding.DecodeString(form.Get("SAMLResponse"))
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(raw); err != nil {
		t.Fatal(err)
	}
	nameID := doc.FindElement("//Assertion/Subject/NameID")
	if nameID == nil || nameID.Text() != "alice" ||
		nameID.SelectAttrValue("Format", "") != "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified" {
		t.Errorf("NameID %v", nameID)
	}
	var groups []string
	for _, a := range doc.FindElements("//Assertion/AttributeStatement/Attribute") {
		if a.SelectAttrValue("Name", "") == GroupsAttribute {
			for _, v := range a.SelectElements("AttributeValue") {
				groups = append(groups, v.Text())
			}
		}
	}
	if !slices.Equal(groups, []string{"eng", "vpn users"}) {
		t.Errorf("memberOf %q", groups)
	}
	if doc.FindElement("/Response/Signature") == nil || doc.FindElement("/Response/Assertion/Signature") == nil {
		t.Error("Response or Assertion unsigned")
	}
	if _, _, err := l.TryLogin(redirect, "alice", "wrong"); err == nil {
		t.Error("a wrong password got a response")
	}
	if _, _, err := l.TryLogin("https://elsewhere.test/sso", "alice", "alice-pw"); err == nil {
		t.Error("TryLogin followed a URL that is not the IdP's")
	}
}

func TestLoginPageForBrowsers(t *testing.T) {
	l := Start(t)
	sp := newSP(t, l, "https://portal.test/saml/acs")
	redirect, _, err := sp.Begin()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := l.Client().Get(redirect)
	if err != nil {
		t.Fatal(err)
	}
	page, err := readPage(resp)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`id="user"`, `id="password"`, `id="login"`, `name="SAMLRequest"`, `name="RelayState"`, `name="viewport"`} {
		if !strings.Contains(string(page), want) {
			t.Errorf("login page lacks %s", want)
		}
	}
	action, fields, err := findForm(page, resp.Request.URL)
	if err != nil {
		t.Fatal(err)
	}
	if u, _ := url.Parse(action); u == nil || u.Path != "/sso" || fields.Get("SAMLRequest") == "" {
		t.Errorf("form posts to %s with %v", action, fields)
	}
}
