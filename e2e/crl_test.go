package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/pki/pkitest"
)

// TestIntermediateCRL: clients of an intermediate CA, whose root and intermediate are added to
// client_root_ca_file, with one CRL per CA in crl_file. The stock client of the intermediate
// connects; a new intermediate CRL revoking it cuts it off (AUTH_FAILED) and refuses it again,
// while another client of the intermediate stays connected.
func TestIntermediateCRL(t *testing.T) {
	t.Parallel()
	s := newCLISetup(t, nil)
	pkiDir := filepath.Join(s.dir, "pki")
	now := time.Now()
	root, err := pkitest.Root("e2e root CA", 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := pkitest.Intermediate(root, "e2e intermediate CA", 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	clients := filepath.Join(pkiDir, "clients")
	if err := os.MkdirAll(clients, 0o700); err != nil {
		t.Fatal(err)
	}
	issue := func(name string) *pki.Identity {
		id, err := pki.IssueClient(inter, name, []string{"dev"}, pki.ECDSAP256, 24*time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteIdentity(id, filepath.Join(clients, name+".crt"), filepath.Join(clients, name+".key")); err != nil {
			t.Fatal(err)
		}
		return id
	}
	dave := issue("dave")
	issue("erin")

	// client_root_ca_file: cvpn init's CA (it signs the server), then the root and the
	// intermediate; crl_file: one CRL of each.
	bundle := filepath.Join(pkiDir, "ca.crt")
	initCA, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bundle, append(append(initCA, root.CertPEM...), inter.CertPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	crlFile := filepath.Join(pkiDir, "crl.pem")
	initCRL, err := pki.LoadCRL(crlFile)
	if err != nil {
		t.Fatal(err)
	}
	rootCRL, err := pki.NewCRL(root, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	interCRL, err := pki.NewCRL(inter, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCRLs([]*pki.CRL{initCRL, rootCRL, interCRL}, crlFile); err != nil {
		t.Fatal(err)
	}
	s.serve()
	d := s.connectExported("dave", "udp", true)
	e := s.connectExported("erin", "udp", true)
	s.ping(d, netlab.VPCHost.String())

	revoked, err := pki.Revoke(inter, interCRL, dave.Cert, time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCRLs([]*pki.CRL{initCRL, rootCRL, revoked}, crlFile); err != nil {
		t.Fatal(err)
	}
	if err := s.srv.WaitFor(`reason="certificate revoked"`, 8*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := d.proc.WaitFor("AUTH_FAILED,client certificate revoked", 5*time.Second); err != nil {
		t.Fatalf("dave was not told he was revoked: %v", err)
	}
	again := s.startProfile("dave", filepath.Join(s.dir, "dave-udp.ovpn"), false)
	if err := s.srv.WaitFor(`CRL of \"e2e intermediate CA\"`, 20*time.Second); err != nil {
		t.Fatalf("dave's new connection was not refused by the intermediate's CRL: %v", err)
	}
	if strings.Contains(again.proc.Output(), "Initialization Sequence Completed") {
		t.Fatalf("dave connected again:\n%s", again.proc.Output())
	}
	s.ping(e, netlab.VPCHost.String())
	if strings.Contains(e.proc.Output(), "AUTH_FAILED") || strings.Contains(e.proc.Output(), "SIGUSR1") {
		t.Fatalf("erin was disturbed by dave's revocation:\n%s", e.proc.Output())
	}
}
