package pki

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCheckServerCertificate(t *testing.T) {
	ca := mustCA(t, ECDSAP256)
	srv, err := IssueServer(ca, "vpn.example.com", []string{"vpn.example.com"}, ECDSAP256, year, now)
	if err != nil {
		t.Fatal(err)
	}
	alice := mustClient(t, ca, "alice")
	tests := []struct {
		name     string
		cert     *x509.Certificate
		at       time.Time
		sentinel error
		want     string
	}{
		{"good", srv.Cert, now, nil, ""},
		{"expired", srv.Cert, now.Add(2 * year), ErrExpired, "certificate expired on 2027-03-01T12:00:00Z"},
		{"not yet valid", srv.Cert, now.Add(-2 * time.Hour), ErrNotYetValid, "certificate not valid until 2026-03-01T11:00:00Z"},
		{"client certificate", alice.Cert, now, ErrNoServerAuth, "clientAuth: it is a client certificate"},
		{"CA certificate", ca.Cert, now, ErrNoServerAuth, "it is a CA certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckServerCertificate(tc.cert, tc.at)
			if tc.sentinel == nil {
				if err != nil {
					t.Fatalf("CheckServerCertificate: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.sentinel) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %v containing %q", err, tc.sentinel, tc.want)
			}
		})
	}
}

func TestLoadCA(t *testing.T) {
	dir := t.TempDir()
	old, ca := mustCA(t, ECDSAP256), mustCA(t, RSA2048)
	alice := mustClient(t, ca, "alice")
	writeAll(t, dir, map[string]*Identity{"old": old, "ca": ca, "alice": alice})
	p := func(name string) string { return filepath.Join(dir, name) }
	// A bundle of two CAs: the key picks its certificate.
	bundle := p("bundle.crt")
	if err := os.WriteFile(bundle, append(append([]byte{}, old.CertPEM...), ca.CertPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := LoadCA(bundle, p("ca.key"))
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !got.Cert.Equal(ca.Cert) {
		t.Error("LoadCA picked the wrong certificate of the bundle")
	}
	if _, err := IssueClient(got, "bob", nil, ECDSAP256, year, now); err != nil {
		t.Errorf("issuing with the loaded CA: %v", err)
	}
	if _, err := LoadCA(p("ca.crt"), p("old.key")); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("LoadCA with another CA's key: %v, want ErrKeyMismatch", err)
	}
	if _, err := LoadCA(p("alice.crt"), p("alice.key")); !errors.Is(err, ErrNotCA) {
		t.Errorf("LoadCA of a leaf: %v, want ErrNotCA", err)
	}
}
