package saml

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	crewsaml "github.com/crewjam/saml"
)

func assertionAt(issue, notBefore, notOnOrAfter, confirmUntil time.Time) *crewsaml.Assertion {
	return &crewsaml.Assertion{
		IssueInstant: issue,
		Conditions:   &crewsaml.Conditions{NotBefore: notBefore, NotOnOrAfter: notOnOrAfter},
		Subject: &crewsaml.Subject{SubjectConfirmations: []crewsaml.SubjectConfirmation{{
			SubjectConfirmationData: &crewsaml.SubjectConfirmationData{NotOnOrAfter: confirmUntil},
		}}},
	}
}

// staticIdPMetadata is the metadata of an IdP that exists only on paper: enough for an SP
// that never sees a valid response.
func staticIdPMetadata(t testing.TB) []byte {
	cert, key := spKeyPair(t)
	idp := crewsaml.IdentityProvider{
		Key: key, Certificate: cert,
		MetadataURL: url.URL{Scheme: "https", Host: "idp.test", Path: "/metadata"},
		SSOURL:      url.URL{Scheme: "https", Host: "idp.test", Path: "/sso"},
	}
	b, err := xml.Marshal(idp.Metadata())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzComplete feeds arbitrary ACS bodies to Complete, with a pending login under the state
// "s". Nothing may panic, nothing may be accepted (no body carries the paper IdP's
// signature), every refusal wraps a sentinel, and a SAMLResponse over the limit is refused for
// its size before the XML parser runs.
func FuzzComplete(f *testing.F) {
	const max = 512
	md := staticIdPMetadata(f)
	f.Add([]byte("SAMLResponse=PHg%2B&RelayState=s"))
	f.Add([]byte("SAMLResponse=" + url.QueryEscape(base64.StdEncoding.EncodeToString([]byte(`<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="a" Version="2.0" InResponseTo="r"/>`))) + "&RelayState=s"))
	f.Add([]byte("SAMLResponse=%%%&RelayState=s"))
	f.Add([]byte("SAMLart=AAQ&RelayState=s"))
	f.Add([]byte("RelayState=s&RelayState=s&SAMLResponse=AAAA"))
	f.Add(bytes.Repeat([]byte("A"), 3*max+formOverhead+2))
	sentinels := []error{ErrRequest, ErrResponseTooLarge, ErrMalformedResponse, ErrUnknownLogin, ErrSignature,
		ErrRequestID, ErrAudience, ErrDestination, ErrIssuer, ErrExpired, ErrNotYetValid, ErrStatus, ErrReplayed,
		ErrIdentity, ErrRefused}
	f.Fuzz(func(t *testing.T, body []byte) {
		sp, err := New(Config{IdPMetadata: md, EntityID: testEntityID, ACSURL: testACS, MaxResponseBytes: max})
		if err != nil {
			t.Fatal(err)
		}
		if err := sp.putPending(context.Background(), "s", pendingLogin{requestID: "r", expires: time.Now().Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest(http.MethodPost, testACS, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		id, err := sp.Complete(r)
		if err == nil {
			t.Fatalf("accepted %q as %+v", body, id)
		}
		matched := false
		for _, s := range sentinels {
			if errors.Is(err, s) {
				matched = true
			}
		}
		if !matched {
			t.Fatalf("error %v wraps no sentinel", err)
		}
		if form, perr := url.ParseQuery(string(body)); perr == nil && len(form["SAMLResponse"]) == 1 &&
			len(form["SAMLResponse"][0]) > max && form["SAMLart"] == nil {
			if !errors.Is(err, ErrResponseTooLarge) {
				t.Fatalf("a %d-byte SAMLResponse got %v, want ErrResponseTooLarge", len(form["SAMLResponse"][0]), err)
			}
		}
		if errors.Is(err, ErrResponseTooLarge) && sp.xmlParses.Load() != 0 {
			t.Fatal("an oversized response reached the XML parser")
		}
	})
}
