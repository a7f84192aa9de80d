package main

import (
	"crypto/x509"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/pki"
)

// setClock moves the commands' clock for the rest of the test.
func setClock(t *testing.T, at time.Time) {
	t.Helper()
	saved := timeNow
	timeNow = func() time.Time { return at }
	t.Cleanup(func() { timeNow = saved })
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, stdout, stderr := runCmd(t, args...)
	if code != 0 {
		t.Fatalf("cvpn %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout
}

func loadCRLOf(t *testing.T, cfgPath string) *pki.CRL {
	t.Helper()
	crl, err := pki.LoadCRL(filepath.Join(filepath.Dir(cfgPath), "pki", "crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return crl
}

func TestClientIssue(t *testing.T) {
	cfgPath := newEndpoint(t)
	clients := filepath.Join(filepath.Dir(cfgPath), "pki", "clients")
	// Flags may follow the name.
	out := mustRun(t, "client", "issue", "alice", "--group", "dev", "--group", "ops", "--config", cfgPath)
	if !strings.Contains(out, "issued client alice") || !strings.Contains(out, "groups dev,ops") {
		t.Errorf("stdout:\n%s", out)
	}
	id, err := pki.LoadIdentity(filepath.Join(clients, "alice.crt"), filepath.Join(clients, "alice.key"))
	if err != nil {
		t.Fatal(err)
	}
	c := id.Cert
	if c.Subject.CommonName != "alice" || !slices.Equal(pki.Groups(c), []string{"dev", "ops"}) ||
		!slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("certificate: CN %q groups %q EKU %v", c.Subject.CommonName, pki.Groups(c), c.ExtKeyUsage)
	}
	ca, err := pki.LoadCertificates(filepath.Join(clients, "..", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckSignatureFrom(ca[0]); err != nil {
		t.Errorf("not signed by the endpoint's CA: %v", err)
	}
	if got := c.NotAfter.Sub(timeNow()); got < (defaultClientDays-1)*day || got > defaultClientDays*day {
		t.Errorf("validity %v, want about %d days", got, defaultClientDays)
	}
	if fi, err := os.Stat(filepath.Join(clients, "alice.key")); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("key mode: %v %v", fi.Mode(), err)
	}

	// Flags before the name, --days.
	mustRun(t, "client", "issue", "--config", cfgPath, "--days", "30", "bob")
	bob, err := pki.LoadCertificates(filepath.Join(clients, "bob.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if got := bob[0].NotAfter.Sub(timeNow()); got > 30*day {
		t.Errorf("--days 30 gave %v", got)
	}

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"existing name", []string{"alice"}, exitRuntime, `client "alice" already exists`},
		{"no name", nil, exitInvalid, "want exactly one NAME"},
		{"two names", []string{"carol", "dave"}, exitInvalid, "want exactly one NAME"},
		{"path in name", []string{"../evil"}, exitInvalid, `client name "../evil"`},
		{"dot name", []string{".hidden"}, exitInvalid, "client name"},
		{"bad key type", []string{"carol", "--key-type", "dsa"}, exitInvalid, "--key-type"},
		{"zero days", []string{"carol", "--days", "0"}, exitInvalid, "--days 0 is not positive"},
		{"outlives the CA", []string{"carol", "--days", "5000"}, exitRuntime, "after issuing CA"},
		{"control character in group", []string{"carol", "--group", "a\tb"}, exitRuntime, "control character"},
		{"missing config", []string{"carol", "--config", filepath.Join(t.TempDir(), "nope.yaml")}, exitInvalid, "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"client", "issue", "--config", cfgPath}, tc.args...)
			code, _, stderr := runCmd(t, args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, want %d; stderr %q, want it to contain %q", code, tc.code, stderr, tc.want)
			}
			if _, err := os.Stat(filepath.Join(clients, "carol.crt")); err == nil {
				t.Error("a refused issue wrote carol.crt")
			}
		})
	}
}

func TestClientIssueWarnsOfUnknownGroup(t *testing.T) {
	cfgPath := newEndpoint(t)
	_, _, stderr := runCmd(t, "client", "issue", "alice", "--group", "dve", "--config", cfgPath)
	if !strings.Contains(stderr, `warning: no authorization rule names group "dve"`) {
		t.Errorf("stderr %q lacks the warning", stderr)
	}
}

func TestClientRevokeAndList(t *testing.T) {
	cfgPath := newEndpoint(t)
	for _, name := range []string{"alice", "bob"} {
		mustRun(t, "client", "issue", name, "--group", "dev", "--config", cfgPath)
	}
	mustRun(t, "client", "issue", "carol", "--days", "1", "--config", cfgPath)
	certOf := func(name string) *x509.Certificate {
		certs, err := pki.LoadCertificates(filepath.Join(filepath.Dir(cfgPath), "pki", "clients", name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		return certs[0]
	}

	out := mustRun(t, "client", "revoke", "bob", "--config", cfgPath)
	if !strings.Contains(out, "revoked client bob") || !strings.Contains(out, "CRL number 2") {
		t.Errorf("revoke stdout:\n%s", out)
	}
	crl := loadCRLOf(t, cfgPath)
	if !crl.IsRevoked(certOf("bob")) || crl.IsRevoked(certOf("alice")) || crl.List.Number.Cmp(big.NewInt(2)) != 0 {
		t.Errorf("CRL: bob %v alice %v number %v", crl.IsRevoked(certOf("bob")), crl.IsRevoked(certOf("alice")), crl.List.Number)
	}
	ca, err := pki.LoadCertificates(filepath.Join(filepath.Dir(cfgPath), "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := crl.Verify(ca, timeNow()); err != nil {
		t.Errorf("CRL does not verify against the CA: %v", err)
	}
	if next := crl.List.NextUpdate.Sub(timeNow()); next < (defaultCRLDays-1)*day || next > defaultCRLDays*day {
		t.Errorf("CRL next update in %v, want about %d days", next, defaultCRLDays)
	}
	// The endpoint still validates with the new CRL.
	if code, _, stderr := runCmd(t, "validate", "--config", cfgPath); code != 0 {
		t.Errorf("validate after revoke: %s", stderr)
	}

	if code, _, stderr := runCmd(t, "client", "revoke", "bob", "--config", cfgPath); code != exitRuntime || !strings.Contains(stderr, "already revoked") {
		t.Errorf("revoke twice: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runCmd(t, "client", "revoke", "zed", "--config", cfgPath); code != exitRuntime || !strings.Contains(stderr, `no client named "zed"`) {
		t.Errorf("revoke unknown: exit %d, stderr %q", code, stderr)
	}
	if code, _, _ := runCmd(t, "client", "revoke", "--config", cfgPath); code != exitInvalid {
		t.Errorf("revoke without a name: exit %d", code)
	}
	if crl2 := loadCRLOf(t, cfgPath); crl2.List.Number.Cmp(big.NewInt(2)) != 0 {
		t.Errorf("refused revocations changed the CRL: number %v", crl2.List.Number)
	}

	// A client of another CA (left over from before a re-init) is untrusted.
	other, err := pki.NewCA("other", pki.ECDSAP256, 365*day, timeNow())
	if err != nil {
		t.Fatal(err)
	}
	dave, err := pki.IssueClient(other, "dave", nil, pki.ECDSAP256, 30*day, timeNow())
	if err != nil {
		t.Fatal(err)
	}
	clients := filepath.Join(filepath.Dir(cfgPath), "pki", "clients")
	if err := pki.WriteIdentity(dave, filepath.Join(clients, "dave.crt"), filepath.Join(clients, "dave.key")); err != nil {
		t.Fatal(err)
	}

	setClock(t, time.Now().Add(2*day)) // carol has expired
	out = mustRun(t, "client", "list", "--config", cfgPath)
	lines := nonEmptyLines(out)
	if len(lines) != 5 {
		t.Fatalf("list printed %d lines, want a header and 4 clients:\n%s", len(lines), out)
	}
	if f := strings.Fields(lines[0]); !slices.Equal(f, []string{"NAME", "GROUPS", "SERIAL", "NOT-AFTER", "STATUS"}) {
		t.Errorf("header %q", lines[0])
	}
	want := map[string][2]string{"alice": {"dev", "valid"}, "bob": {"dev", "revoked"}, "carol": {"-", "expired"}, "dave": {"-", "untrusted"}}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		w, ok := want[f[0]]
		if !ok || len(f) != 5 || f[1] != w[0] || f[4] != w[1] {
			t.Errorf("row %q, want groups %q status %q", l, w[0], w[1])
			continue
		}
		if serial := strings.ToUpper(certOf(f[0]).SerialNumber.Text(16)); f[2] != serial {
			t.Errorf("row %q: serial %s, want %s", l, f[2], serial)
		}
		if f[3] != certOf(f[0]).NotAfter.UTC().Format(time.RFC3339) {
			t.Errorf("row %q: not-after %s", l, f[3])
		}
		delete(want, f[0])
	}
	if len(want) > 0 {
		t.Errorf("list lacks %v:\n%s", want, out)
	}
}

func TestClientListEmpty(t *testing.T) {
	cfgPath := newEndpoint(t)
	code, stdout, stderr := runCmd(t, "client", "list", "--config", cfgPath)
	if code != 0 || len(nonEmptyLines(stdout)) != 1 || !strings.Contains(stderr, "no clients") {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

func TestRefreshCRL(t *testing.T) {
	cfgPath := newEndpoint(t)
	mustRun(t, "client", "issue", "alice", "--config", cfgPath)
	mustRun(t, "client", "revoke", "alice", "--config", cfgPath)
	before := loadCRLOf(t, cfgPath)

	// Once the CRL has expired, validate (and so serve) refuses the endpoint, naming crl_file,
	// and refresh-crl still works.
	setClock(t, time.Now().Add((defaultCRLDays+1)*day))
	code, _, stderr := runCmd(t, "validate", "--config", cfgPath)
	if lines := nonEmptyLines(stderr); code != exitInvalid || len(lines) != 1 ||
		!regexp.MustCompile(`endpoint\.yaml:\d+: authentication\.certificate\.crl_file: `).MatchString(lines[0]) ||
		!strings.Contains(lines[0], "CRL expired") || !strings.Contains(lines[0], "cvpn client refresh-crl") {
		t.Errorf("validate with an expired CRL: exit %d\n%s", code, stderr)
	}

	out := mustRun(t, "client", "refresh-crl", "--config", cfgPath)
	after := loadCRLOf(t, cfgPath)
	if !strings.Contains(out, "CRL number 3") || after.List.Number.Cmp(big.NewInt(3)) != 0 || after.Len() != before.Len() ||
		!after.List.NextUpdate.After(timeNow()) {
		t.Errorf("refresh: number %v, %d entries (was %d), next update %v\n%s", after.List.Number, after.Len(), before.Len(), after.List.NextUpdate, out)
	}
	if code, _, stderr := runCmd(t, "validate", "--config", cfgPath); code != 0 {
		t.Errorf("validate after refresh: %s", stderr)
	}
}

func TestRevokeWithoutCRLFile(t *testing.T) {
	cfgPath := newEndpoint(t)
	mustRun(t, "client", "issue", "alice", "--config", cfgPath)
	yml, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	noCRL := strings.Replace(string(yml), "    crl_file: pki/crl.pem\n", "", 1)
	if noCRL == string(yml) {
		t.Fatal("endpoint.yaml has no crl_file line")
	}
	if err := os.WriteFile(cfgPath, []byte(noCRL), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCmd(t, "client", "revoke", "alice", "--config", cfgPath)
	if code != exitInvalid || !strings.Contains(stderr, "authentication.certificate.crl_file: not set") ||
		!strings.Contains(stderr, "refresh-crl --create") {
		t.Errorf("revoke without crl_file: exit %d, stderr %q", code, stderr)
	}
	// --create refuses to overwrite, and writes a CRL the endpoint accepts.
	if code, _, stderr := runCmd(t, "client", "refresh-crl", "--config", cfgPath, "--create", "pki/crl.pem"); code != exitRuntime || !strings.Contains(stderr, "already exists") {
		t.Errorf("--create over an existing file: exit %d, stderr %q", code, stderr)
	}
	out := mustRun(t, "client", "refresh-crl", "--config", cfgPath, "--create", "pki/new-crl.pem")
	if !strings.Contains(out, "set crl_file: pki/new-crl.pem") {
		t.Errorf("stdout:\n%s", out)
	}
	withCRL := strings.Replace(noCRL, "client_root_ca_file: pki/ca.crt\n", "client_root_ca_file: pki/ca.crt\n    crl_file: pki/new-crl.pem\n", 1)
	if err := os.WriteFile(cfgPath, []byte(withCRL), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "client", "revoke", "alice", "--config", cfgPath)
	mustRun(t, "validate", "--config", cfgPath)
}

func TestClientCAKeyElsewhere(t *testing.T) {
	cfgPath := newEndpoint(t)
	pkiDir := filepath.Join(filepath.Dir(cfgPath), "pki")
	offline := filepath.Join(t.TempDir(), "ca.key")
	if err := os.Rename(filepath.Join(pkiDir, "ca.key"), offline); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCmd(t, "client", "issue", "alice", "--config", cfgPath)
	if code != exitRuntime || !strings.Contains(stderr, "pass --ca-key FILE") {
		t.Errorf("issue without the CA key: exit %d, stderr %q", code, stderr)
	}
	mustRun(t, "client", "issue", "alice", "--config", cfgPath, "--ca-key", offline)
	mustRun(t, "client", "revoke", "alice", "--config", cfgPath, "--ca-key", offline)
	mustRun(t, "client", "refresh-crl", "--config", cfgPath, "--ca-key", offline)
}
