package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// updateExamplePKI regenerates examples/pki. The files are committed so the examples are
// stable; run this only when they near expiry (TestExamplePKIFresh says when):
//
//	go test ./cmd/cvpn -run TestExamplePKI -update-example-pki
var updateExamplePKI = flag.Bool("update-example-pki", false, "regenerate the throwaway PKI under examples/pki")

const examplesDir = "../../examples"

// examplePKIHeader starts every file of examples/pki. PEM readers (Go's, OpenSSL's) and the
// OpenVPN static key reader skip text before the first BEGIN line.
const examplePKIHeader = "# EXAMPLE ONLY: published with cvpn, so every key here is public. Never use it for a real endpoint.\n"

// examplePKIEpoch is the "now" the example PKI is made at; with the long lifetimes below its
// certificates stay valid into the 2050s.
var examplePKIEpoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func TestExamplePKI(t *testing.T) {
	if !*updateExamplePKI {
		t.Skip("pass -update-example-pki to regenerate examples/pki")
	}
	dir := filepath.Join(examplesDir, "pki")
	const years = 365 * day
	now := examplePKIEpoch
	mk := func(id *pki.Identity, err error) *pki.Identity {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	ca := mk(pki.NewCA("cvpn EXAMPLE CA - DO NOT USE", pki.ECDSAP256, 30*years, now))
	otherCA := mk(pki.NewCA("cvpn EXAMPLE other CA - DO NOT USE", pki.ECDSAP256, 30*years, now))
	server := mk(pki.IssueServer(ca, "vpn.example.com", []string{"vpn.example.com"}, pki.ECDSAP256, 29*years, now))
	alice := mk(pki.IssueClient(ca, "alice", []string{"dev"}, pki.ECDSAP256, 29*years, now))
	expired := mk(pki.IssueServer(ca, "vpn.example.com", []string{"vpn.example.com"}, pki.ECDSAP256, day, now.Add(day)))
	other := mk(pki.IssueServer(otherCA, "other.example.com", nil, pki.ECDSAP256, 29*years, now))

	for _, f := range []string{"ca.crt", "server.crt", "server.key", "expired.crt", "expired.key", "other.key",
		"tc.key", "ta.key", "tc-v2-server.key", "crl.pem", "other-ca-crl.pem", "clients/alice.crt", "clients/alice.key",
		"server-chain.crt"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	write := func(name string, data []byte) {
		t.Helper()
		data = append([]byte(examplePKIHeader), data...)
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.crt", ca.CertPEM)
	write("server.crt", server.CertPEM)
	write("server.key", server.KeyPEM)
	// For endpoints without client_root_ca_file (ad-endpoint.yaml): the profile's CA follows
	// the server's certificate.
	write("server-chain.crt", append(slices.Clone(server.CertPEM), ca.CertPEM...))
	write("clients/alice.crt", alice.CertPEM)
	write("clients/alice.key", alice.KeyPEM)
	write("expired.crt", expired.CertPEM)
	write("expired.key", expired.KeyPEM)
	write("other.key", other.KeyPEM)
	for _, name := range []string{"tc.key", "ta.key"} {
		k, err := tlscrypt.GenerateStaticKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		write(name, k.Marshal())
	}
	v2, err := tlscrypt.GenerateV2ServerKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	write("tc-v2-server.key", v2.Marshal())
	for name, signer := range map[string]*pki.Identity{"crl.pem": ca, "other-ca-crl.pem": otherCA} {
		crl, err := pki.NewCRL(signer, now, 29*years)
		if err != nil {
			t.Fatal(err)
		}
		write(name, crl.PEM)
	}
}

// TestExamplePKIFresh fails ten years before the example PKI expires, so it is regenerated
// long before the examples rot.
func TestExamplePKIFresh(t *testing.T) {
	horizon := time.Now().Add(10 * 365 * day)
	for _, f := range []string{"ca.crt", "server.crt", "clients/alice.crt"} {
		certs, err := pki.LoadCertificates(filepath.Join(examplesDir, "pki", f))
		if err != nil {
			t.Fatal(err)
		}
		if certs[0].NotAfter.Before(horizon) {
			t.Errorf("examples/pki/%s expires %s; regenerate: go test ./cmd/cvpn -run TestExamplePKI -update-example-pki", f, certs[0].NotAfter)
		}
	}
	crl, err := pki.LoadCRL(filepath.Join(examplesDir, "pki", "crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if crl.List.NextUpdate.Before(horizon) {
		t.Errorf("examples/pki/crl.pem expires %s; regenerate it", crl.List.NextUpdate)
	}
}

// expectLine is the first line of each broken example: the key path its one error names.
var expectLine = regexp.MustCompile(`^# expect: (\S+)$`)

func TestBrokenExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(examplesDir, "broken", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 20 {
		t.Fatalf("found %d broken examples, want one per rule (at least 20)", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(data), "\n")
			m := expectLine.FindStringSubmatch(first)
			if m == nil {
				t.Fatalf("first line %q is not # expect: KEY.PATH", first)
			}
			code, stdout, stderr := runCmd(t, "validate", "--config", f)
			if code != exitInvalid {
				t.Errorf("exit %d, want %d\nstdout:\n%s", code, exitInvalid, stdout)
			}
			lines := nonEmptyLines(stderr)
			if len(lines) != 1 {
				t.Fatalf("%d error lines, want exactly 1:\n%s", len(lines), stderr)
			}
			want := regexp.MustCompile(`^` + regexp.QuoteMeta(f) + `:\d+: ` + regexp.QuoteMeta(m[1]) + `: \S`)
			if !want.MatchString(lines[0]) {
				t.Errorf("error line\n  %s\ndoes not name %s with its file and line", lines[0], m[1])
			}
			if stdout != "" {
				t.Errorf("stdout not empty:\n%s", stdout)
			}
		})
	}
}

func TestGoodExample(t *testing.T) {
	f := filepath.Join(examplesDir, "endpoint.yaml")
	code, stdout, stderr := runCmd(t, "validate", "--config", f)
	if code != 0 {
		t.Fatalf("exit %d, want 0\nstderr:\n%s", code, stderr)
	}
	for _, want := range []string{
		f + ": valid",
		"listener   0.0.0.0:443/udp",
		"listener   0.0.0.0:443/tcp",
		"listener   0.0.0.0:1194/udp",
		"clients    10.2.0.0/22: 1021 concurrent connections",
		"route      10.0.0.0/16",
		"authorize  group dev -> 10.0.1.0/24",
		"authorize  all groups -> 10.0.2.0/24",
	} {
		if !strings.Contains(stdout, want+"\n") {
			t.Errorf("summary lacks %q:\n%s", want, stdout)
		}
	}
	if stderr != "" {
		t.Errorf("stderr not empty:\n%s", stderr)
	}
}

// TestDualStackExample: the dual-stack example validates with a listener per family on each
// port and both client blocks.
func TestDualStackExample(t *testing.T) {
	f := filepath.Join(examplesDir, "dual-stack-endpoint.yaml")
	code, stdout, stderr := runCmd(t, "validate", "--config", f)
	if code != 0 {
		t.Fatalf("exit %d, want 0\nstderr:\n%s", code, stderr)
	}
	for _, want := range []string{
		"listener   0.0.0.0:443/udp",
		"listener   [::]:443/udp",
		"listener   [::]:443/tcp",
		"clients    10.2.0.0/22 and fd00:10:1::1:0/112: 1021 concurrent connections",
		"route      fd00:10:2::/64",
		"authorize  group ops -> fd00:10:2::/64",
	} {
		if !strings.Contains(stdout, want+"\n") {
			t.Errorf("summary lacks %q:\n%s", want, stdout)
		}
	}
}

// TestClusterExample: the cluster node example validates, and a pushed endpoint.yaml runs on
// it with its cluster section (its own SNAT address, its own etcd).
func TestClusterExample(t *testing.T) {
	f := filepath.Join(examplesDir, "cluster-node.yaml")
	code, stdout, stderr := runCmd(t, "validate", "--config", f)
	if code != 0 || stderr != "" || !strings.Contains(stdout, f+": valid\n") {
		t.Fatalf("validate: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	local, err := config.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	pushed := readFile(t, filepath.Join(examplesDir, "endpoint.yaml"))
	ep, err := config.ParseWithCluster([]byte(pushed), "etcd revision 1", examplesDir, local)
	if err != nil {
		t.Fatalf("endpoint.yaml pushed to node-a: %v", err)
	}
	if ep.Cluster.NodeName != "node-a" || ep.TargetNetwork.SNATAddress != local.Cluster.SNATAddress || len(ep.Cluster.Etcd.Endpoints) != 3 {
		t.Errorf("pushed endpoint.yaml on node-a: cluster %+v, SNAT %s", ep.Cluster, ep.TargetNetwork.SNATAddress)
	}
}

// chmodExamplePassword makes examples/ldap-bind-password readable by its owner only, as
// config demands of a bind_password_file: git records no read permissions, so a checkout
// leaves it 0644. A user of the examples does the same (the examples' comments say so).
func chmodExamplePassword(t *testing.T) {
	t.Helper()
	if err := os.Chmod(filepath.Join(examplesDir, "ldap-bind-password"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDirectoryExamples: the OpenLDAP and Active Directory examples validate, and export the
// profiles they promise.
func TestDirectoryExamples(t *testing.T) {
	chmodExamplePassword(t)
	for _, tc := range []struct {
		file    string
		summary []string
		profile []string // directives the exported profile has
		cert    bool     // whether the profile expects a client certificate
	}{
		{
			file: "ldap-endpoint.yaml",
			summary: []string{"listener   0.0.0.0:443/udp", "authorize  group dev -> 10.0.1.0/24",
				"authorize  group cn=ops,ou=groups,dc=example,dc=com -> 10.0.2.0/24"},
			profile: []string{"auth-user-pass", "auth-nocache", "auth-retry interact",
				`static-challenge "Enter the code from your authenticator app" 1`},
			cert: true,
		},
		{
			file:    "ad-endpoint.yaml",
			summary: []string{"listener   0.0.0.0:443/tcp", "authorize  group S-1-5-21-1004336348-1177238915-682003330-1105 -> 10.0.3.0/24"},
			profile: []string{"auth-user-pass", "auth-nocache", "auth-retry interact"},
		},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f := filepath.Join(examplesDir, tc.file)
			code, stdout, stderr := runCmd(t, "validate", "--config", f)
			if code != 0 || stderr != "" {
				t.Fatalf("validate: exit %d, want 0\nstderr:\n%s", code, stderr)
			}
			for _, want := range append([]string{f + ": valid"}, tc.summary...) {
				if !strings.Contains(stdout, want+"\n") {
					t.Errorf("summary lacks %q:\n%s", want, stdout)
				}
			}
			profile := mustRun(t, "export-client-config", "--config", f)
			got := directives(profile)
			for _, want := range tc.profile {
				if !slices.Contains(got, want) {
					t.Errorf("profile lacks %q:\n%s", want, strings.Join(got, "\n"))
				}
			}
			if slices.ContainsFunc(got, func(d string) bool { return strings.HasPrefix(d, "static-challenge") }) != slices.ContainsFunc(tc.profile, func(d string) bool { return strings.HasPrefix(d, "static-challenge") }) {
				t.Errorf("static-challenge where none is expected, or the reverse:\n%s", strings.Join(got, "\n"))
			}
			if asks := strings.Contains(profile, "# No client identity"); asks != tc.cert {
				t.Errorf("profile asks for a client certificate: %v, want %v", asks, tc.cert)
			}
			if ca, ok := inline(profile, "ca"); !ok || !strings.Contains(readFile(t, filepath.Join(examplesDir, "pki", "ca.crt")), ca) {
				t.Errorf("<ca> is not the example CA:\n%s", ca)
			}
		})
	}
}

// TestFederatedExamples: the OIDC and SAML examples validate, summarise their single sign-on
// and portal, and export login profiles without static-challenge; the OIDC one (no
// certificate authentication) without a client certificate.
func TestFederatedExamples(t *testing.T) {
	if err := os.Chmod(filepath.Join(examplesDir, "oidc-client-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file    string
		summary []string
		cert    bool // whether the profile expects a client certificate
	}{
		{
			file: "oidc-endpoint.yaml",
			summary: []string{"listener   0.0.0.0:443/tcp", "authorize  group developers -> 10.0.1.0/24",
				"login      single sign-on: OIDC issuer https://idp.example.com/realms/corp, client cvpn",
				"portal     https://vpn.example.com:8443 on 0.0.0.0:8443 (the server certificate)"},
		},
		{
			file: "saml-endpoint.yaml",
			summary: []string{"authorize  group vpn-users -> 10.0.0.0/16",
				"login      single sign-on: SAML IdP metadata " + absPath(t, filepath.Join(examplesDir, "idp-metadata.xml")),
				"portal     https://vpn.example.com on 0.0.0.0:443 (" + absPath(t, filepath.Join(examplesDir, "pki", "server.crt")) + ")"},
			cert: true,
		},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f := filepath.Join(examplesDir, tc.file)
			code, stdout, stderr := runCmd(t, "validate", "--config", f)
			if code != 0 || stderr != "" {
				t.Fatalf("validate: exit %d, want 0\nstderr:\n%s", code, stderr)
			}
			for _, want := range append([]string{f + ": valid"}, tc.summary...) {
				if !strings.Contains(stdout, want+"\n") {
					t.Errorf("summary lacks %q:\n%s", want, stdout)
				}
			}
			profile := mustRun(t, "export-client-config", "--config", f)
			got := directives(profile)
			for _, want := range []string{"auth-user-pass", "auth-nocache", "auth-retry interact"} {
				if !slices.Contains(got, want) {
					t.Errorf("profile lacks %q:\n%s", want, strings.Join(got, "\n"))
				}
			}
			if slices.ContainsFunc(got, func(d string) bool { return strings.HasPrefix(d, "static-challenge") }) {
				t.Errorf("a federated profile has static-challenge:\n%s", strings.Join(got, "\n"))
			}
			if asks := strings.Contains(profile, "# No client identity"); asks != tc.cert {
				t.Errorf("profile asks for a client certificate: %v, want %v", asks, tc.cert)
			}
			if ca, ok := inline(profile, "ca"); !ok || !strings.Contains(readFile(t, filepath.Join(examplesDir, "pki", "ca.crt")), ca) {
				t.Errorf("<ca> is not the example CA:\n%s", ca)
			}
		})
	}
}

func absPath(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestDirectoryExamplePasswordMode: as checked out by git (mode 0644), the example password
// file is refused, with the fix named; cvpn never reads a password other users could read.
func TestDirectoryExamplePasswordMode(t *testing.T) {
	dir := t.TempDir()
	copyFile := func(from, to string, mode os.FileMode) {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(examplesDir, from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, to)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, to), data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, to), mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	for _, f := range []string{"pki/server.crt", "pki/server.key", "pki/tc.key", "pki/ca.crt", "pki/crl.pem"} {
		copyFile(f, f, 0o644)
	}
	copyFile("ldap-endpoint.yaml", "ldap-endpoint.yaml", 0o644)
	copyFile("ldap-bind-password", "ldap-bind-password", 0o644)
	f := filepath.Join(dir, "ldap-endpoint.yaml")
	code, _, stderr := runCmd(t, "validate", "--config", f)
	lines := nonEmptyLines(stderr)
	if code != exitInvalid || len(lines) != 1 ||
		!regexp.MustCompile(`^`+regexp.QuoteMeta(f)+`:\d+: authentication\.directory\.bind_password_file: .* is readable by every user of the host \(mode 0644\); .*chmod o-r`).MatchString(lines[0]) {
		t.Errorf("validate with a world-readable password file: exit %d (want %d), stderr:\n%s", code, exitInvalid, stderr)
	}
	if err := os.Chmod(filepath.Join(dir, "ldap-bind-password"), 0o640); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCmd(t, "validate", "--config", f); code != 0 {
		t.Errorf("validate with the password file 0640: exit %d, stderr:\n%s", code, stderr)
	}
}

func nonEmptyLines(s string) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader([]byte(s)))
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			out = append(out, sc.Text())
		}
	}
	return out
}
