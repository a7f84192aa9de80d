package session

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/cvpn/cvpn/pki"
)

// TestChainCacheAgainstVerify: the cache answers as x509 Verify does, at every time, for a
// chain it holds and for chains it does not: before, during and after the certificate's
// validity, from an unknown CA, and for a server certificate (wrong key usage).
func TestChainCacheAgainstVerify(t *testing.T) {
	now := time.Now()
	ca, err := pki.NewCA("cache CA", pki.ECDSAP256, 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other CA", pki.ECDSAP256, 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	issue := func(from *pki.Identity, server bool) []*x509.Certificate {
		t.Helper()
		var id *pki.Identity
		var err error
		if server {
			id, err = pki.IssueServer(from, "srv", nil, pki.ECDSAP256, 24*time.Hour, now)
		} else {
			id, err = pki.IssueClient(from, "alice", nil, pki.ECDSAP256, 24*time.Hour, now)
		}
		if err != nil {
			t.Fatal(err)
		}
		return []*x509.Certificate{id.Cert}
	}
	alice := issue(ca, false)
	withCA := append(append([]*x509.Certificate(nil), alice...), ca.Cert) // as OpenSSL sends it
	stranger := issue(other, false)
	server := issue(ca, true)
	model := func(certs []*x509.Certificate, at time.Time) error {
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err
	}
	c := newChainCache(roots)
	times := []time.Time{now, now.Add(-2 * time.Hour), now.Add(23 * time.Hour), now.Add(25 * time.Hour), now, now.Add(-2 * time.Hour)}
	for _, at := range times {
		for name, certs := range map[string][]*x509.Certificate{"alice": alice, "alice with CA": withCA, "stranger": stranger, "server": server} {
			got, want := c.verify(certs, at), model(certs, at)
			if (got == nil) != (want == nil) {
				t.Errorf("%s at %s: cache says %v, Verify says %v", name, at.Sub(now), got, want)
			}
			var unknown x509.UnknownAuthorityError
			if name == "stranger" && at.Equal(now) && !errors.As(got, &unknown) {
				t.Errorf("stranger: %v, want x509.UnknownAuthorityError", got)
			}
		}
	}
	if n := len(c.entries); n != 2 {
		t.Errorf("%d chains remembered, want alice's two", n)
	}
}

// TestChainCacheBounded: the cache never holds more than maxVerifiedChains chains.
func TestChainCacheBounded(t *testing.T) {
	now := time.Now()
	ca, err := pki.NewCA("cache CA", pki.Ed25519, 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	c := newChainCache(roots)
	// Fill it with stand-ins (each verified chain's key is its bytes' hash), then verify real
	// chains past the bound.
	for i := range maxVerifiedChains {
		c.entries[[32]byte{byte(i), byte(i >> 8), 1}] = validity{notBefore: now, notAfter: now.Add(time.Hour)}
	}
	for range 3 {
		id, err := pki.IssueClient(ca, "bob", nil, pki.Ed25519, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.verify([]*x509.Certificate{id.Cert}, now); err != nil {
			t.Fatal(err)
		}
		if n := len(c.entries); n > maxVerifiedChains {
			t.Fatalf("%d chains remembered, bound %d", n, maxVerifiedChains)
		}
		if _, ok := c.entries[chainKey([]*x509.Certificate{id.Cert})]; !ok {
			t.Fatal("the newest chain was not remembered")
		}
	}
}
