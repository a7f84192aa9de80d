package clientstore

import (
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// newStore makes a store in a temporary directory laid out as cvpn init does: pki/ca.crt,
// pki/ca.key, an empty pki/crl.pem and no clients yet. The CA is valid for caDays from now.
func newStore(t *testing.T, caDays int, now time.Time) (Store, *pki.Identity) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA("ca", pki.ECDSAP256, time.Duration(caDays)*day, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteIdentity(ca, filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	crl, err := pki.NewCRL(ca, now, DefaultCRLDays*day)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCRL(crl, filepath.Join(dir, "crl.pem")); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Endpoint{Authentication: config.Authentication{Certificate: &config.CertificateAuthentication{
		ClientRootCAFile: filepath.Join(dir, "ca.crt"),
		CRLFile:          filepath.Join(dir, "crl.pem"),
	}}}
	s := Of(cfg, "")
	loaded, err := s.LoadCA()
	if err != nil {
		t.Fatal(err)
	}
	return s, loaded
}

func TestOf(t *testing.T) {
	cfg := &config.Endpoint{Authentication: config.Authentication{Certificate: &config.CertificateAuthentication{
		ClientRootCAFile: "/etc/cvpn/pki/ca.crt", CRLFile: "/etc/cvpn/pki/crl.pem",
	}}}
	want := Store{CACertFile: "/etc/cvpn/pki/ca.crt", CAKeyFile: "/etc/cvpn/pki/ca.key", Dir: "/etc/cvpn/pki/clients", CRLFile: "/etc/cvpn/pki/crl.pem"}
	if got := Of(cfg, ""); got != want {
		t.Errorf("Of = %+v, want %+v", got, want)
	}
	want.CAKeyFile = "/offline/ca.key"
	if got := Of(cfg, "/offline/ca.key"); got != want {
		t.Errorf("Of with a CA key elsewhere = %+v, want %+v", got, want)
	}
	if f := want.TLSCryptV2KeyFile("alice"); f != "/etc/cvpn/pki/clients/alice.tls-crypt-v2.key" {
		t.Errorf("TLSCryptV2KeyFile = %s", f)
	}
}

func TestCheckName(t *testing.T) {
	for name, ok := range map[string]bool{
		"alice": true, "alice.smith@example.com": true, "a+b_c-d": true, "A1": true,
		"": false, ".hidden": false, "-x": false, "../evil": false, "a/b": false, "a b": false,
		"trailing.": false, "a\tb": false, string(make([]byte, 65)): false,
		"x234567890123456789012345678901234567890123456789012345678901234": true, // 64
	} {
		if err := CheckName(name); (err == nil) != ok {
			t.Errorf("CheckName(%q) = %v, want ok %v", name, err, ok)
		}
	}
}

func TestIssue(t *testing.T) {
	now := time.Now()
	s, ca := newStore(t, 3650, now)
	v2, err := tlscrypt.GenerateV2ServerKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Issue(ca, Request{Name: "alice", Groups: []string{"dev"}, KeyType: pki.RSA2048, TLSCryptV2: v2}, now)
	if err != nil {
		t.Fatal(err)
	}
	if got.CertFile != s.CertFile("alice") || got.KeyFile != s.KeyFile("alice") || got.TLSCryptV2KeyFile != s.TLSCryptV2KeyFile("alice") {
		t.Errorf("files %+v", got)
	}
	id, err := s.Identity("alice")
	if err != nil {
		t.Fatal(err)
	}
	if id.Cert.Subject.CommonName != "alice" || !slices.Equal(pki.Groups(id.Cert), []string{"dev"}) || id.Cert.CheckSignatureFrom(ca.Cert) != nil {
		t.Errorf("certificate: CN %q groups %q", id.Cert.Subject.CommonName, pki.Groups(id.Cert))
	}
	if v := id.Cert.NotAfter.Sub(now); v < (DefaultClientDays-1)*day || v > DefaultClientDays*day {
		t.Errorf("default validity %v, want about %d days", v, DefaultClientDays)
	}
	if kt := CAKeyType(&pki.Identity{Key: id.Key}); kt != pki.RSA2048 {
		t.Errorf("CAKeyType of an RSA key: %v, want RSA2048", kt)
	}
	if kt := CAKeyType(ca); kt != pki.ECDSAP256 {
		t.Errorf("CAKeyType of an ECDSA CA: %v, want ECDSAP256", kt)
	}
	edCA, err := pki.NewCA("ed25519 CA", pki.Ed25519, 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if kt := CAKeyType(edCA); kt != pki.Ed25519 {
		t.Errorf("CAKeyType of an Ed25519 CA: %v, want Ed25519", kt)
	}
	for _, f := range []string{got.KeyFile, got.TLSCryptV2KeyFile} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %v, %v; want private", f, fi.Mode(), err)
		}
	}
	key, err := s.TLSCryptV2Key("alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlscrypt.ParseV2ClientKey(key); err != nil {
		t.Errorf("tls-crypt-v2 client key: %v", err)
	}
	if _, err := s.TLSCryptV2Key("nobody"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("TLSCryptV2Key of a client without one: %v, want fs.ErrNotExist", err)
	}

	// Names are unique, even across key types; a refused issue writes nothing.
	if _, err := s.Issue(ca, Request{Name: "alice"}, now); err == nil {
		t.Error("issued alice twice")
	}
	if _, err := s.Issue(ca, Request{Name: "../bob"}, now); err == nil {
		t.Error("issued a client called ../bob")
	}
	if _, err := s.Issue(ca, Request{Name: "bob", Validity: 3651 * day}, now); err == nil {
		t.Error("issued a client that outlives its CA")
	}
	if _, err := os.Stat(s.CertFile("bob")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused issue wrote bob.crt (%v)", err)
	}
	if _, err := s.ClientCert("bob"); err == nil {
		t.Error("ClientCert of a client never issued")
	}
}

// TestIssueNearCAEnd checks that the default validity is cut short to the CA's remaining life.
func TestIssueNearCAEnd(t *testing.T) {
	now := time.Now()
	s, ca := newStore(t, 30, now)
	got, err := s.Issue(ca, Request{Name: "alice"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if na := got.Identity.Cert.NotAfter; na.After(ca.Cert.NotAfter) || na.Before(now.Add(29*day)) {
		t.Errorf("notAfter %v, want the CA's %v", na, ca.Cert.NotAfter)
	}
}

func TestRevokeListRefresh(t *testing.T) {
	now := time.Now()
	s, ca := newStore(t, 3650, now)
	for _, r := range []Request{{Name: "alice", Groups: []string{"dev"}}, {Name: "bob"}, {Name: "carol", Validity: day}} {
		if _, err := s.Issue(ca, r, now); err != nil {
			t.Fatal(err)
		}
	}
	bob, err := s.ClientCert("bob")
	if err != nil {
		t.Fatal(err)
	}
	crl, err := s.Revoke(ca, bob, 10*day, now)
	if err != nil {
		t.Fatal(err)
	}
	if !crl.IsRevoked(bob) || crl.List.Number.Cmp(big.NewInt(2)) != 0 {
		t.Errorf("revoke: bob revoked %v, CRL number %v", crl.IsRevoked(bob), crl.List.Number)
	}
	if _, err := s.Revoke(ca, bob, 10*day, now); !errors.Is(err, pki.ErrAlreadyRevoked) {
		t.Errorf("revoking bob twice: %v, want pki.ErrAlreadyRevoked", err)
	}
	onDisk, err := pki.LoadCRL(s.CRLFile)
	if err != nil || !onDisk.IsRevoked(bob) {
		t.Fatalf("the CRL file does not revoke bob (%v)", err)
	}

	cas, err := s.LoadCAs()
	if err != nil {
		t.Fatal(err)
	}
	clients, problems, err := s.List(cas, now.Add(2*day))
	if err != nil || len(problems) != 0 {
		t.Fatalf("List: %v, %v", problems, err)
	}
	var got []string
	for _, c := range clients {
		got = append(got, fmt.Sprintf("%s %s", c.Name, c.Status))
	}
	if want := []string{"alice valid", "bob revoked", "carol expired"}; !slices.Equal(got, want) {
		t.Errorf("List = %q, want %q", got, want)
	}
	// Against another CA (after a re-init), the old clients are untrusted, unless revoked.
	other, err := pki.NewCA("other", pki.ECDSAP256, 365*day, now)
	if err != nil {
		t.Fatal(err)
	}
	clients, _, _ = s.List([]*x509.Certificate{other.Cert}, now)
	got = got[:0]
	for _, c := range clients {
		got = append(got, fmt.Sprintf("%s %s", c.Name, c.Status))
	}
	if want := []string{"alice untrusted", "bob revoked", "carol untrusted"}; !slices.Equal(got, want) {
		t.Errorf("List against another CA = %q, want %q", got, want)
	}

	refreshed, err := s.RefreshCRL(ca, 20*day, now.Add(day))
	if err != nil {
		t.Fatal(err)
	}
	if refreshed.List.Number.Cmp(big.NewInt(3)) != 0 || !refreshed.IsRevoked(bob) || refreshed.Len() != 1 ||
		!refreshed.List.NextUpdate.After(now.Add(20*day)) {
		t.Errorf("refresh: number %v, %d entries, next update %v", refreshed.List.Number, refreshed.Len(), refreshed.List.NextUpdate)
	}
}

// TestListProblems checks that an unreadable CRL or certificate is reported beside the clients
// that could be read, and a missing clients directory holds none.
func TestListProblems(t *testing.T) {
	now := time.Now()
	s, ca := newStore(t, 3650, now)
	cas, err := s.LoadCAs()
	if err != nil {
		t.Fatal(err)
	}
	if clients, problems, err := s.List(cas, now); len(clients) != 0 || len(problems) != 0 || err != nil {
		t.Errorf("no clients directory: %v, %v, %v", clients, problems, err)
	}
	if _, err := s.Issue(ca, Request{Name: "alice"}, now); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.CertFile("broken"), []byte("not PEM"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.CRLFile, []byte("not PEM"), 0o644); err != nil {
		t.Fatal(err)
	}
	clients, problems, err := s.List(cas, now)
	if err != nil || len(clients) != 1 || clients[0].Name != "alice" || len(problems) != 2 {
		t.Fatalf("List: clients %+v, problems %v, err %v; want alice and two problems", clients, problems, err)
	}
	if msg := problems[0].Error(); !strings.HasPrefix(msg, "revocation status unknown: ") {
		t.Errorf("first problem %q, want the CRL's", msg)
	}
}

func TestCRLFile(t *testing.T) {
	now := time.Now()
	s, ca := newStore(t, 3650, now)
	if _, err := CreateCRL(ca, s.CRLFile, day, now); !errors.Is(err, fs.ErrExist) {
		t.Errorf("CreateCRL over the CRL: %v, want fs.ErrExist", err)
	}
	f := filepath.Join(filepath.Dir(s.CRLFile), "new.pem")
	crl, err := CreateCRL(ca, f, day, now)
	if err != nil || crl.Len() != 0 {
		t.Fatalf("CreateCRL: %v", err)
	}
	if _, err := pki.LoadCRL(f); err != nil {
		t.Errorf("the created CRL does not load: %v", err)
	}
	s.CRLFile = ""
	if _, err := s.RefreshCRL(ca, day, now); !errors.Is(err, ErrNoCRLFile) {
		t.Errorf("RefreshCRL without a CRL file: %v, want ErrNoCRLFile", err)
	}
}

// TestConcurrentRevocations checks the directory lock: revocations at once each land in the CRL.
func TestConcurrentRevocations(t *testing.T) {
	now := time.Now()
	s, ca := newStore(t, 3650, now)
	const n = 8
	for i := range n {
		if _, err := s.Issue(ca, Request{Name: fmt.Sprint("client", i)}, now); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cert, err := s.ClientCert(fmt.Sprint("client", i))
			if err == nil {
				_, err = s.Revoke(ca, cert, day, now)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	crl, err := pki.LoadCRL(s.CRLFile)
	if err != nil {
		t.Fatal(err)
	}
	if crl.Len() != n || crl.List.Number.Cmp(big.NewInt(n+1)) != 0 {
		t.Errorf("CRL lists %d revocations with number %v, want %d and %d", crl.Len(), crl.List.Number, n, n+1)
	}
}

func TestGroupsWithoutRule(t *testing.T) {
	cfg := &config.Endpoint{AuthorizationRules: []config.AuthorizationRule{{AccessGroupID: "dev"}, {AuthorizeAllGroups: true}}}
	if got := GroupsWithoutRule(cfg, []string{"dev", "dve", "ops"}); !slices.Equal(got, []string{"dve", "ops"}) {
		t.Errorf("GroupsWithoutRule = %q, want dve and ops", got)
	}
}

// TestCRLFileOfSeveralCAs: revoking and re-signing rewrite only the store CA's CRL in a file
// that also holds another CA's (an intermediate's), which stays as it was and where it was; a
// file without the CA's CRL gets one appended on revocation, and cannot be refreshed.
func TestCRLFileOfSeveralCAs(t *testing.T) {
	now := time.Now()
	s, ca := newStore(t, 3650, now)
	other, err := pki.NewCA("other", pki.ECDSAP256, 365*day, now)
	if err != nil {
		t.Fatal(err)
	}
	otherCRL, err := pki.NewCRL(other, now, 30*day)
	if err != nil {
		t.Fatal(err)
	}
	mine, err := pki.LoadCRL(s.CRLFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCRLs([]*pki.CRL{otherCRL, mine}, s.CRLFile); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Issue(ca, Request{Name: "bob"}, now); err != nil {
		t.Fatal(err)
	}
	bob, err := s.ClientCert("bob")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Revoke(ca, bob, 10*day, now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RefreshCRL(ca, 20*day, now.Add(day)); err != nil {
		t.Fatal(err)
	}
	crls, err := pki.LoadCRLs(s.CRLFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(crls) != 2 || string(crls[0].PEM) != string(otherCRL.PEM) {
		t.Fatalf("the file holds %d CRLs, the other CA's first and unchanged: %v", len(crls), len(crls) > 0 && string(crls[0].PEM) == string(otherCRL.PEM))
	}
	if got := crls[1]; got.List.Number.Cmp(big.NewInt(3)) != 0 || !got.IsRevoked(bob) || got.List.CheckSignatureFrom(ca.Cert) != nil {
		t.Errorf("the CA's CRL: number %v, bob revoked %v", got.List.Number, got.IsRevoked(bob))
	}
	cas, err := s.LoadCAs()
	if err != nil {
		t.Fatal(err)
	}
	if clients, problems, err := s.List(cas, now); err != nil || len(problems) != 0 || len(clients) != 1 || clients[0].Status != Revoked {
		t.Errorf("List over two CRLs: %+v, %v, %v; want bob revoked", clients, problems, err)
	}

	if err := pki.WriteCRLs([]*pki.CRL{otherCRL}, s.CRLFile); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RefreshCRL(ca, 20*day, now); err == nil || !strings.Contains(err.Error(), `no CRL of CA "ca"`) {
		t.Errorf("RefreshCRL without the CA's CRL in the file: %v, want refused naming the CA", err)
	}
	if _, err := s.Revoke(ca, bob, 10*day, now); err != nil {
		t.Fatal(err)
	}
	if crls, err := pki.LoadCRLs(s.CRLFile); err != nil || len(crls) != 2 || !crls[1].IsRevoked(bob) || crls[1].List.Number.Cmp(big.NewInt(1)) != 0 {
		t.Errorf("revoking into a file without the CA's CRL: %d CRLs (%v), want the CA's new one appended", len(crls), err)
	}
}
