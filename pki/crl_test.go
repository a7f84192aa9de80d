package pki

import (
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const crlValidity = 180 * 24 * time.Hour

func mustClient(t *testing.T, ca *Identity, name string) *Identity {
	t.Helper()
	id, err := IssueClient(ca, name, []string{"dev"}, ECDSAP256, year, now)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestCRLRevoke(t *testing.T) {
	for _, kt := range []KeyType{ECDSAP256, RSA2048} {
		t.Run(kt.String(), func(t *testing.T) {
			ca := mustCA(t, kt)
			alice, bob := mustClient(t, ca, "alice"), mustClient(t, ca, "bob")

			empty, err := NewCRL(ca, now, crlValidity)
			if err != nil {
				t.Fatalf("NewCRL: %v", err)
			}
			if err := empty.List.CheckSignatureFrom(ca.Cert); err != nil {
				t.Errorf("new CRL signature: %v", err)
			}
			if empty.List.Number.Cmp(big.NewInt(1)) != 0 || empty.Len() != 0 {
				t.Errorf("new CRL number %v with %d entries, want 1 with 0", empty.List.Number, empty.Len())
			}
			if got, want := empty.List.NextUpdate, now.Add(crlValidity); !got.Equal(want) {
				t.Errorf("NextUpdate = %v, want %v", got, want)
			}
			if empty.IsRevoked(alice.Cert) {
				t.Error("alice revoked by the empty CRL")
			}

			one, err := Revoke(ca, empty, alice.Cert, now, crlValidity)
			if err != nil {
				t.Fatalf("Revoke alice: %v", err)
			}
			later := now.Add(time.Hour)
			two, err := Revoke(ca, one, bob.Cert, later, crlValidity)
			if err != nil {
				t.Fatalf("Revoke bob: %v", err)
			}
			for i, c := range []*CRL{one, two} {
				if err := c.List.CheckSignatureFrom(ca.Cert); err != nil {
					t.Errorf("CRL %d signature: %v", i+1, err)
				}
				if want := big.NewInt(int64(i + 2)); c.List.Number.Cmp(want) != 0 {
					t.Errorf("CRL %d number = %v, want %v", i+1, c.List.Number, want)
				}
			}
			if !one.IsRevoked(alice.Cert) || one.IsRevoked(bob.Cert) {
				t.Errorf("after revoking alice: alice %v bob %v, want true false", one.IsRevoked(alice.Cert), one.IsRevoked(bob.Cert))
			}
			if !two.IsRevoked(alice.Cert) || !two.IsRevoked(bob.Cert) || two.Len() != 2 {
				t.Errorf("after revoking bob: alice %v bob %v len %d, want true true 2", two.IsRevoked(alice.Cert), two.IsRevoked(bob.Cert), two.Len())
			}
			if at, ok := two.RevokedAt(bob.Cert); !ok || !at.Equal(later.Truncate(time.Second)) {
				t.Errorf("RevokedAt(bob) = %v %v, want %v", at, ok, later)
			}
			if _, err := Revoke(ca, two, alice.Cert, later, crlValidity); !errors.Is(err, ErrAlreadyRevoked) {
				t.Errorf("revoking alice twice: %v, want ErrAlreadyRevoked", err)
			}

			// Refresh keeps the entries and moves the number and dates on.
			fresh, err := RefreshCRL(ca, two, now.Add(100*24*time.Hour), crlValidity)
			if err != nil {
				t.Fatalf("RefreshCRL: %v", err)
			}
			if fresh.List.Number.Cmp(big.NewInt(4)) != 0 || !fresh.IsRevoked(alice.Cert) || !fresh.IsRevoked(bob.Cert) {
				t.Errorf("refreshed CRL number %v, alice %v bob %v", fresh.List.Number, fresh.IsRevoked(alice.Cert), fresh.IsRevoked(bob.Cert))
			}
			if !fresh.List.NextUpdate.After(two.List.NextUpdate) {
				t.Errorf("refreshed NextUpdate %v is not after %v", fresh.List.NextUpdate, two.List.NextUpdate)
			}

			// A nil CRL revokes nothing; Revoke with nil starts at 1.
			var none *CRL
			if none.IsRevoked(alice.Cert) || none.Len() != 0 {
				t.Error("nil CRL revokes")
			}
			first, err := Revoke(ca, nil, alice.Cert, now, crlValidity)
			if err != nil || first.List.Number.Cmp(big.NewInt(1)) != 0 {
				t.Errorf("Revoke with no CRL: number %v, err %v", first.List.Number, err)
			}
		})
	}
}

func TestCRLIssuerMatters(t *testing.T) {
	ca, other := mustCA(t, ECDSAP256), mustCA(t, ECDSAP256)
	alice := mustClient(t, ca, "alice")
	mallory := mustClient(t, other, "mallory")
	crl, err := Revoke(ca, nil, alice.Cert, now, crlValidity)
	if err != nil {
		t.Fatal(err)
	}
	// A certificate of another issuer that carries a revoked serial number
	// is not revoked: a CRL speaks only for its own issuer.
	otherCA, err := NewCA("another CA", ECDSAP256, 10*year, now)
	if err != nil {
		t.Fatal(err)
	}
	twin := *mustClient(t, otherCA, "alice").Cert
	twin.SerialNumber = alice.Cert.SerialNumber
	if crl.IsRevoked(&twin) {
		t.Error("a certificate of another issuer with a revoked serial counts as revoked")
	}
	if _, err := Revoke(ca, crl, mallory.Cert, now, crlValidity); !errors.Is(err, ErrNotIssuedBy) {
		t.Errorf("revoking another CA's certificate: %v, want ErrNotIssuedBy", err)
	}
	if _, err := Revoke(other, crl, mallory.Cert, now, crlValidity); !errors.Is(err, ErrNotIssuedBy) {
		t.Errorf("revoking on top of another CA's CRL: %v, want ErrNotIssuedBy", err)
	}
	leaf := mustClient(t, ca, "leaf")
	if _, err := NewCRL(leaf, now, crlValidity); !errors.Is(err, ErrNotCA) {
		t.Errorf("NewCRL signed by a leaf: %v, want ErrNotCA", err)
	}
}

func TestCRLVerify(t *testing.T) {
	ca, other := mustCA(t, ECDSAP256), mustCA(t, ECDSAP256)
	crl, err := NewCRL(ca, now, crlValidity)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := crl.Verify([]*x509.Certificate{other.Cert, ca.Cert}, now)
	if err != nil || !signer.Equal(ca.Cert) {
		t.Errorf("Verify = %v, %v; want the CA", signer, err)
	}
	if _, err := crl.Verify([]*x509.Certificate{other.Cert}, now); !errors.Is(err, ErrNotIssuedBy) {
		t.Errorf("Verify against another CA: %v, want ErrNotIssuedBy", err)
	}
	if _, err := crl.Verify([]*x509.Certificate{ca.Cert}, now.Add(crlValidity+time.Second)); !errors.Is(err, ErrCRLExpired) {
		t.Errorf("Verify after nextUpdate: %v, want ErrCRLExpired", err)
	}
	if _, err := crl.Verify([]*x509.Certificate{ca.Cert}, now.Add(-time.Hour)); !errors.Is(err, ErrCRLNotYetValid) {
		t.Errorf("Verify before thisUpdate: %v, want ErrCRLNotYetValid", err)
	}
}

func TestCRLFiles(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, ECDSAP256)
	alice := mustClient(t, ca, "alice")
	file := filepath.Join(dir, "crl.pem")
	empty, err := NewCRL(ca, now, crlValidity)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteCRL(empty, file); err != nil {
		t.Fatalf("WriteCRL: %v", err)
	}
	revoked, err := Revoke(ca, empty, alice.Cert, now, crlValidity)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteCRL(revoked, file); err != nil { // replaces
		t.Fatalf("WriteCRL over an existing CRL: %v", err)
	}
	loaded, err := LoadCRL(file)
	if err != nil {
		t.Fatalf("LoadCRL: %v", err)
	}
	if !loaded.IsRevoked(alice.Cert) || loaded.List.Number.Cmp(big.NewInt(2)) != 0 {
		t.Errorf("loaded CRL: alice revoked %v, number %v", loaded.IsRevoked(alice.Cert), loaded.List.Number)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("CRL mode %v, want 0644", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d files after two writes, want 1 (no temporary left)", len(entries))
	}
	// DER loads too.
	der := filepath.Join(dir, "crl.der")
	if err := os.WriteFile(der, revoked.List.Raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err := LoadCRL(der); err != nil || !c.IsRevoked(alice.Cert) {
		t.Errorf("LoadCRL(DER) = %v", err)
	}
	// The wrong files are refused, naming the file.
	for _, f := range []struct{ name, data string }{
		{"cert.pem", string(ca.CertPEM)},
		{"junk.pem", "hello"},
		{"bad.pem", "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"},
	} {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, []byte(f.data), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadCRL(p)
		if !errors.Is(err, ErrNoCRL) || !strings.Contains(err.Error(), f.name) {
			t.Errorf("LoadCRL(%s) = %v, want ErrNoCRL naming the file", f.name, err)
		}
	}
	if _, err := LoadCRL(filepath.Join(dir, "nope.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadCRL of a missing file = %v", err)
	}
}

// TestCRLOpenSSL checks the CRL with the tool OpenVPN's crl-verify relies on.
func TestCRLOpenSSL(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	ca, err := NewCA("cvpn test CA", ECDSAP256, 10*year, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	alice, err := IssueClient(ca, "alice", nil, ECDSAP256, year, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	crl, err := Revoke(ca, nil, alice.Cert, time.Now(), crlValidity)
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, dir, map[string]*Identity{"ca": ca, "alice": alice})
	if err := WriteCRL(crl, filepath.Join(dir, "crl.pem")); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "crl", "-in", filepath.Join(dir, "crl.pem"), "-CAfile", filepath.Join(dir, "ca.crt"), "-noout").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verify OK") {
		t.Errorf("openssl crl -verify: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "verify", "-crl_check", "-CAfile", filepath.Join(dir, "ca.crt"),
		"-CRLfile", filepath.Join(dir, "crl.pem"), filepath.Join(dir, "alice.crt")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "certificate revoked") {
		t.Errorf("openssl verify -crl_check of a revoked certificate: %v\n%s", err, out)
	}
}
