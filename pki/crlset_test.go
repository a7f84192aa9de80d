package pki_test

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/pki/pkitest"
)

// t0 is the injected clock of the CRL set tests.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const day = 24 * time.Hour

// hierarchy is root -> inter -> alice, bob (clients of the intermediate) and root -> carol (a
// client of the root), with one CRL per CA: the root's lists nothing, the intermediate's
// revokes bob.
type hierarchy struct {
	root, inter         *pki.Identity
	alice, bob, carol   *pki.Identity
	rootCRL, interCRL   *pki.CRL
	bundle              []*x509.Certificate
	rootDays, interDays time.Duration
}

func newHierarchy(t testing.TB) *hierarchy {
	t.Helper()
	h := &hierarchy{rootDays: 90 * day, interDays: 30 * day}
	var err error
	if h.root, err = pkitest.Root("root CA", 10*365*day, t0); err != nil {
		t.Fatal(err)
	}
	if h.inter, err = pkitest.Intermediate(h.root, "intermediate CA", 5*365*day, t0); err != nil {
		t.Fatal(err)
	}
	client := func(ca *pki.Identity, name string) *pki.Identity {
		id, err := pki.IssueClient(ca, name, []string{"dev"}, pki.ECDSAP256, 365*day, t0)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	h.alice, h.bob, h.carol = client(h.inter, "alice"), client(h.inter, "bob"), client(h.root, "carol")
	if h.rootCRL, err = pki.NewCRL(h.root, t0, h.rootDays); err != nil {
		t.Fatal(err)
	}
	if h.interCRL, err = pki.Revoke(h.inter, nil, h.bob.Cert, t0, h.interDays); err != nil {
		t.Fatal(err)
	}
	h.bundle = []*x509.Certificate{h.root.Cert, h.inter.Cert}
	return h
}

func (h *hierarchy) set(t *testing.T, crls ...*pki.CRL) *pki.CRLSet {
	t.Helper()
	s, err := pki.NewCRLSet(crls, h.bundle, t0)
	if err != nil {
		t.Fatalf("NewCRLSet: %v", err)
	}
	return s
}

// TestCRLSetIntermediate: a client of an intermediate CA is checked against the intermediate's
// CRL, a client of the root against the root's, and the intermediate itself against the
// root's, whose revocation then refuses all of its clients.
func TestCRLSetIntermediate(t *testing.T) {
	h := newHierarchy(t)
	s := h.set(t, h.rootCRL, h.interCRL)
	for _, c := range []struct {
		name    string
		cert    *x509.Certificate
		revoked bool
	}{{"alice", h.alice.Cert, false}, {"bob", h.bob.Cert, true}, {"carol", h.carol.Cert, false}} {
		err := s.Check(c.cert, t0.Add(time.Hour))
		if got := errors.Is(err, pki.ErrRevoked); got != c.revoked || !c.revoked && err != nil {
			t.Errorf("Check(%s) = %v, want revoked %v", c.name, err, c.revoked)
		}
		if s.IsRevoked(c.cert) != c.revoked {
			t.Errorf("IsRevoked(%s) = %v, want %v", c.name, !c.revoked, c.revoked)
		}
	}
	if s.Len() != 1 || len(s.CRLs()) != 2 || s.Of(h.inter.Cert) != h.interCRL || !s.Issuer(h.rootCRL).Equal(h.root.Cert) {
		t.Errorf("set: %d entries, %d CRLs, the intermediate's %v, the root CRL's issuer %v", s.Len(), len(s.CRLs()),
			s.Of(h.inter.Cert) == h.interCRL, s.Issuer(h.rootCRL).Subject)
	}
	// The same serial under the root is not bob: a CRL speaks for its issuer only.
	twin := *h.carol.Cert
	twin.SerialNumber = h.bob.Cert.SerialNumber
	if s.IsRevoked(&twin) {
		t.Error("a root client with bob's serial counts as revoked by the intermediate's CRL")
	}

	// The root revokes the intermediate: its clients are refused, the root's are not.
	rootRevokes, err := pki.Revoke(h.root, h.rootCRL, h.inter.Cert, t0, h.rootDays)
	if err != nil {
		t.Fatal(err)
	}
	s = h.set(t, h.interCRL, rootRevokes)
	err = s.Check(h.alice.Cert, t0)
	if !errors.Is(err, pki.ErrRevoked) || !strings.Contains(err.Error(), `issuing CA "intermediate CA"`) {
		t.Errorf("Check(alice) under a revoked intermediate = %v, want ErrRevoked naming the intermediate", err)
	}
	if !s.IsRevoked(h.alice.Cert) || s.Check(h.carol.Cert, t0) != nil {
		t.Errorf("revoked intermediate: IsRevoked(alice) %v, Check(carol) %v", s.IsRevoked(h.alice.Cert), s.Check(h.carol.Cert, t0))
	}
}

// TestCRLSetMissingIssuerCRL: a certificate whose issuer (or whose issuer's issuer) has no CRL
// in the set is refused, as OpenVPN's X509_V_FLAG_CRL_CHECK_ALL refuses it; Uncovered names
// those CAs.
func TestCRLSetMissingIssuerCRL(t *testing.T) {
	h := newHierarchy(t)
	onlyInter := h.set(t, h.interCRL)
	if err := onlyInter.Check(h.alice.Cert, t0); !errors.Is(err, pki.ErrNoIssuerCRL) || !strings.Contains(err.Error(), `"root CA"`) {
		t.Errorf("Check(alice) without the root's CRL = %v, want ErrNoIssuerCRL naming the root", err)
	}
	if u := onlyInter.Uncovered(t0); len(u) != 1 || !u[0].Equal(h.root.Cert) {
		t.Errorf("Uncovered = %d CAs, want the root", len(u))
	}
	onlyRoot := h.set(t, h.rootCRL)
	if err := onlyRoot.Check(h.alice.Cert, t0); !errors.Is(err, pki.ErrNoIssuerCRL) {
		t.Errorf("Check(alice) without the intermediate's CRL = %v, want ErrNoIssuerCRL", err)
	}
	if err := onlyRoot.Check(h.carol.Cert, t0); err != nil {
		t.Errorf("Check(carol) with the root's CRL = %v", err)
	}
	// A client of a CA outside the bundle (an intermediate the client would send itself) has
	// no CRL that could speak for it.
	outside, err := pkitest.Intermediate(h.root, "outside CA", 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	dave, err := pki.IssueClient(outside, "dave", nil, pki.ECDSAP256, 30*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.set(t, h.rootCRL, h.interCRL).Check(dave.Cert, t0); !errors.Is(err, pki.ErrNoIssuerCRL) {
		t.Errorf("Check(dave), issued outside the bundle = %v, want ErrNoIssuerCRL", err)
	}
	// An intermediate that is itself the bundle's trust anchor is not checked above itself.
	anchored, err := pki.NewCRLSet([]*pki.CRL{h.interCRL}, []*x509.Certificate{h.inter.Cert}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := anchored.Check(h.alice.Cert, t0); err != nil {
		t.Errorf("Check(alice) with the intermediate as the only CA = %v", err)
	}
	var none *pki.CRLSet
	if none.Check(h.bob.Cert, t0) != nil || none.IsRevoked(h.bob.Cert) || none.Len() != 0 {
		t.Error("a nil set refuses")
	}
}

// TestCRLSetExpiry: past a CRL's nextUpdate, everything its CA issued is refused, and only that.
func TestCRLSetExpiry(t *testing.T) {
	h := newHierarchy(t)
	s := h.set(t, h.rootCRL, h.interCRL)
	interEnd := t0.Add(h.interDays)
	if err := s.Check(h.alice.Cert, interEnd); err != nil {
		t.Errorf("Check(alice) at the intermediate CRL's next update = %v", err)
	}
	err := s.Check(h.alice.Cert, interEnd.Add(time.Second))
	if !errors.Is(err, pki.ErrCRLExpired) || !strings.Contains(err.Error(), `"intermediate CA"`) {
		t.Errorf("Check(alice) past the intermediate CRL's next update = %v, want ErrCRLExpired naming it", err)
	}
	if err := s.Check(h.carol.Cert, interEnd.Add(time.Second)); err != nil {
		t.Errorf("Check(carol) past the intermediate CRL's next update = %v", err)
	}
	rootEnd := t0.Add(h.rootDays + time.Second)
	if err := s.Check(h.carol.Cert, rootEnd); !errors.Is(err, pki.ErrCRLExpired) {
		t.Errorf("Check(carol) past the root CRL's next update = %v, want ErrCRLExpired", err)
	}
	// A fresh intermediate CRL does not help alice while the root's, which checks the
	// intermediate, has expired.
	fresh, err := pki.RefreshCRL(h.inter, h.interCRL, rootEnd, h.interDays)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := pki.NewCRLSet([]*pki.CRL{fresh}, h.bundle, rootEnd)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Check(h.alice.Cert, rootEnd); !errors.Is(err, pki.ErrNoIssuerCRL) {
		t.Errorf("Check(alice) without a root CRL = %v, want ErrNoIssuerCRL", err)
	}
	if _, err := pki.NewCRLSet([]*pki.CRL{h.rootCRL, fresh}, h.bundle, rootEnd); !errors.Is(err, pki.ErrCRLExpired) {
		t.Errorf("NewCRLSet with the root's expired CRL = %v, want ErrCRLExpired", err)
	}
}

// TestCRLSetRefusesForeignCRLs: a CRL signed by a CA outside the bundle, by a CA that only
// claims the intermediate's name, or a second CRL of one CA, refuses the whole set.
func TestCRLSetRefusesForeignCRLs(t *testing.T) {
	h := newHierarchy(t)
	impostor, err := pkitest.Impostor(h.inter, 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := pki.NewCRL(impostor, t0, h.interDays)
	if err != nil {
		t.Fatal(err)
	}
	// A client of the impostor names the intermediate as its issuer, but not its key: no CRL
	// of the set speaks for it.
	mallory, err := pki.IssueClient(impostor, "mallory", nil, pki.ECDSAP256, 30*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.set(t, h.rootCRL, h.interCRL).Check(mallory.Cert, t0); !errors.Is(err, pki.ErrNoIssuerCRL) {
		t.Errorf("Check(a client of the impostor) = %v, want ErrNoIssuerCRL", err)
	}
	if _, err := pki.NewCRLSet([]*pki.CRL{h.rootCRL, forged}, h.bundle, t0); !errors.Is(err, pki.ErrNotIssuedBy) ||
		!strings.Contains(err.Error(), "CRL 2 of 2") {
		t.Errorf("a CRL under the intermediate's name from another key = %v, want ErrNotIssuedBy naming CRL 2", err)
	}
	other, err := pkitest.Root("other CA", 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := pki.NewCRL(other, t0, h.interDays)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.NewCRLSet([]*pki.CRL{foreign}, h.bundle, t0); !errors.Is(err, pki.ErrNotIssuedBy) {
		t.Errorf("another CA's CRL = %v, want ErrNotIssuedBy", err)
	}
	newer, err := pki.RefreshCRL(h.inter, h.interCRL, t0, h.interDays)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.NewCRLSet([]*pki.CRL{h.interCRL, newer}, h.bundle, t0); err == nil || !strings.Contains(err.Error(), "another CRL of the same CA") {
		t.Errorf("two CRLs of one CA = %v, want refused", err)
	}
	if _, err := pki.NewCRLSet(nil, h.bundle, t0); !errors.Is(err, pki.ErrNoCRL) {
		t.Errorf("no CRL = %v, want ErrNoCRL", err)
	}
}

// TestCRLFileOfSeveral: a file holds several CRLs, written and read back in order; the
// single-CRL reader refuses it, and a delta CRL is refused.
func TestCRLFileOfSeveral(t *testing.T) {
	h := newHierarchy(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "crl.pem")
	if err := pki.WriteCRLs([]*pki.CRL{h.rootCRL, h.interCRL}, file); err != nil {
		t.Fatal(err)
	}
	s, err := pki.LoadCRLSet(file, h.bundle, t0)
	if err != nil {
		t.Fatalf("LoadCRLSet: %v", err)
	}
	crls := s.CRLs()
	if len(crls) != 2 || crls[0].List.Issuer.CommonName != "root CA" || crls[1].List.Issuer.CommonName != "intermediate CA" ||
		!s.IsRevoked(h.bob.Cert) {
		t.Errorf("loaded %d CRLs, bob revoked %v", len(crls), s.IsRevoked(h.bob.Cert))
	}
	onDisk, err := os.ReadFile(file)
	if err != nil || string(onDisk) != string(s.PEM) {
		t.Errorf("the set's PEM differs from the file (%v)", err)
	}
	if _, err := pki.LoadCRL(file); err == nil || !strings.Contains(err.Error(), "holds 2 CRLs") {
		t.Errorf("LoadCRL of two CRLs = %v, want refused", err)
	}
	if _, err := pki.LoadCRLSet(file, []*x509.Certificate{h.root.Cert}, t0); !errors.Is(err, pki.ErrNotIssuedBy) || !strings.Contains(err.Error(), file) {
		t.Errorf("LoadCRLSet without the intermediate in the bundle = %v, want ErrNotIssuedBy naming the file", err)
	}
	mixed := filepath.Join(dir, "mixed.pem")
	if err := os.WriteFile(mixed, append(append([]byte{}, h.rootCRL.PEM...), h.root.CertPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCRLs(mixed); !errors.Is(err, pki.ErrNoCRL) {
		t.Errorf("a CRL followed by a certificate = %v, want ErrNoCRL", err)
	}

	delta, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(7), ThisUpdate: t0, NextUpdate: t0.Add(day),
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 27}, Critical: true, Value: []byte{2, 1, 6}}},
	}, h.root.Cert, h.root.Key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.ParseCRLs(delta); !errors.Is(err, pki.ErrNoCRL) || !strings.Contains(err.Error(), "delta") {
		t.Errorf("a delta CRL = %v, want refused as a delta", err)
	}
}

// TestCRLSetOpenSSL checks the set's verdicts against openssl verify -crl_check_all, the check
// OpenVPN's crl-verify asks OpenSSL for.
func TestCRLSetOpenSSL(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is needed to compare with OpenVPN's CRL check: %v", err)
	}
	now := time.Now()
	root, err := pkitest.Root("root CA", 365*day, now)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := pkitest.Intermediate(root, "intermediate CA", 365*day, now)
	if err != nil {
		t.Fatal(err)
	}
	alice, err := pki.IssueClient(inter, "alice", nil, pki.ECDSAP256, 30*day, now)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := pki.IssueClient(inter, "bob", nil, pki.ECDSAP256, 30*day, now)
	if err != nil {
		t.Fatal(err)
	}
	rootCRL, err := pki.NewCRL(root, now, 30*day)
	if err != nil {
		t.Fatal(err)
	}
	interCRL, err := pki.Revoke(inter, nil, bob.Cert, now, 30*day)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, data ...[]byte) string {
		p := filepath.Join(dir, name)
		var all []byte
		for _, d := range data {
			all = append(all, d...)
		}
		if err := os.WriteFile(p, all, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bundle := write("ca.crt", root.CertPEM, inter.CertPEM)
	both := write("both.pem", rootCRL.PEM, interCRL.PEM)
	onlyInter := write("inter.pem", interCRL.PEM)
	certs := []*x509.Certificate{root.Cert, inter.Cert}
	for _, c := range []struct {
		name string
		id   *pki.Identity
		crls []*pki.CRL
		file string
	}{
		{"alice, both CRLs", alice, []*pki.CRL{rootCRL, interCRL}, both},
		{"bob, both CRLs", bob, []*pki.CRL{rootCRL, interCRL}, both},
		{"alice, no root CRL", alice, []*pki.CRL{interCRL}, onlyInter},
	} {
		s, err := pki.NewCRLSet(c.crls, certs, now)
		if err != nil {
			t.Fatal(err)
		}
		ours := s.Check(c.id.Cert, now)
		out, err := exec.Command(bin, "verify", "-crl_check_all", "-CAfile", bundle, "-CRLfile", c.file,
			write(c.id.Cert.Subject.CommonName+".crt", c.id.CertPEM)).CombinedOutput()
		if (err == nil) != (ours == nil) {
			t.Errorf("%s: cvpn says %v, openssl verify -crl_check_all says %v:\n%s", c.name, ours, err, out)
		}
	}
}

// BenchmarkCRLSetCheck is what each TLS handshake pays for the CRL: one signature check of the
// client's certificate and a map lookup per CA above it.
func BenchmarkCRLSetCheck(b *testing.B) {
	h := newHierarchy(b)
	s, err := pki.NewCRLSet([]*pki.CRL{h.rootCRL, h.interCRL}, h.bundle, t0)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := s.Check(h.alice.Cert, t0); err != nil {
			b.Fatal(err)
		}
	}
}
