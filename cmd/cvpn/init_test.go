package main

import (
	"crypto/rsa"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// newEndpoint runs cvpn init in a temporary directory and returns the endpoint file's path.
func newEndpoint(t *testing.T, extra ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ep")
	args := append([]string{"init", "--dir", dir, "--remote", "vpn.example.com"}, extra...)
	code, stdout, stderr := runCmd(t, args...)
	if code != 0 {
		t.Fatalf("cvpn %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return filepath.Join(dir, "endpoint.yaml")
}

func TestInit(t *testing.T) {
	cfgPath := newEndpoint(t, "--transport", "udp/443,tcp/1194", "--vpc-cidr", "10.0.0.0/16", "--vpc-cidr", "172.16.0.0/12",
		"--client-cidr", "10.8.0.0/20", "--target-interface", "ens5", "--snat-address", "172.16.0.9")
	dir := filepath.Dir(cfgPath)
	p := func(name string) string { return filepath.Join(dir, "pki", name) }

	modes := map[string]os.FileMode{
		"ca.crt": 0o644, "server.crt": 0o644, "crl.pem": 0o644,
		"ca.key": 0o600, "server.key": 0o600, "tc.key": 0o600,
	}
	for name, want := range modes {
		fi, err := os.Stat(p(name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got&^want != 0 {
			t.Errorf("%s mode %v, want at most %v", name, got, want)
		}
	}
	if fi, err := os.Stat(p("clients")); err != nil || !fi.IsDir() {
		t.Errorf("clients directory: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("DIR holds %d entries, want endpoint.yaml and pki (no staging left)", len(entries))
	}

	// The file holds relative paths, so the directory can move.
	yml, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(yml), dir) {
		t.Errorf("endpoint.yaml holds absolute paths:\n%s", yml)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatalf("config.Load: %v", err)
	}
	wantTransport := []config.Listener{{Protocol: "udp", Port: 443}, {Protocol: "tcp", Port: 1194}}
	if !slices.Equal(cfg.Transport, wantTransport) || cfg.ClientCIDRBlock.String() != "10.8.0.0/20" ||
		len(cfg.VPCCIDRBlocks) != 2 || len(cfg.Routes) != 2 || len(cfg.AuthorizationRules) != 2 ||
		cfg.TargetNetwork.Interface != "ens5" || cfg.TargetNetwork.SNATAddress.String() != "172.16.0.9" ||
		cfg.RemoteHostname != "vpn.example.com" || cfg.Authentication.Certificate.CRLFile != p("crl.pem") {
		t.Errorf("endpoint.yaml does not reflect the flags:\n%s", yml)
	}
	if code, stdout, stderr := runCmd(t, "validate", "--config", cfgPath); code != 0 {
		t.Errorf("validate: exit %d\n%s%s", code, stdout, stderr)
	}

	ca, err := pki.LoadCA(p("ca.crt"), p("ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := pki.LoadIdentity(p("server.crt"), p("server.key"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "vpn.example.com", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("server certificate: %v", err)
	}
	if srv.Cert.Subject.CommonName != "vpn.example.com" {
		t.Errorf("server CN = %q", srv.Cert.Subject.CommonName)
	}
	crl, err := pki.LoadCRL(p("crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := crl.Verify([]*x509.Certificate{ca.Cert}, timeNow()); err != nil || crl.Len() != 0 {
		t.Errorf("CRL: %v, %d entries", err, crl.Len())
	}
	data, err := os.ReadFile(p("tc.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlscrypt.ParseStaticKey(data); err != nil {
		t.Errorf("tc.key: %v", err)
	}
}

func TestInitRSAAndIPRemote(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ep")
	code, _, stderr := runCmd(t, "init", "--dir", dir, "--remote", "203.0.113.5", "--key-type", "rsa2048")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	srv, err := pki.LoadIdentity(filepath.Join(dir, "pki", "server.crt"), filepath.Join(dir, "pki", "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := srv.Key.(*rsa.PrivateKey); !ok {
		t.Errorf("server key is %T, want RSA", srv.Key)
	}
	if len(srv.Cert.IPAddresses) != 1 || !srv.Cert.IPAddresses[0].Equal(net.ParseIP("203.0.113.5")) {
		t.Errorf("server IP SANs = %v, want 203.0.113.5", srv.Cert.IPAddresses)
	}
}

func TestInitExisting(t *testing.T) {
	cfgPath := newEndpoint(t)
	dir := filepath.Dir(cfgPath)
	before, _ := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
	code, _, stderr := runCmd(t, "init", "--dir", dir, "--remote", "vpn.example.com")
	if code != exitRuntime || !strings.Contains(stderr, "already holds an endpoint (pki, endpoint.yaml); pass --force") {
		t.Errorf("second init: exit %d, stderr %q", code, stderr)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
	if string(before) != string(after) {
		t.Error("second init without --force changed the CA")
	}
	code, stdout, stderr := runCmd(t, "init", "--dir", dir, "--remote", "vpn.example.com", "--force")
	if code != 0 {
		t.Fatalf("init --force: exit %d: %s", code, stderr)
	}
	moved, _ := filepath.Glob(filepath.Join(dir, "pki.replaced-*", "ca.crt"))
	if len(moved) != 1 || !strings.Contains(stdout, "moved ") {
		t.Fatalf("old pki not moved aside: %v\n%s", moved, stdout)
	}
	old, _ := os.ReadFile(moved[0])
	now, _ := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
	if string(old) != string(before) || string(now) == string(before) {
		t.Error("init --force did not keep the old CA aside and make a new one")
	}
}

func TestInitRefusesBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no dir", []string{"--remote", "vpn.example.com"}, exitInvalid, "--dir required"},
		{"no remote", []string{"--dir", "D"}, exitInvalid, "--remote required"},
		{"bad remote", []string{"--dir", "D", "--remote", "vpn example.com"}, exitInvalid, `--remote: "vpn example.com" is not an IP address or DNS name`},
		{"bad key type", []string{"--dir", "D", "--remote", "r.example", "--key-type", "dsa"}, exitInvalid, "--key-type"},
		{"bad transport", []string{"--dir", "D", "--remote", "r.example", "--transport", "udp"}, exitInvalid, `--transport: "udp" is not PROTOCOL/PORT`},
		{"bad protocol", []string{"--dir", "D", "--remote", "r.example", "--transport", "sctp/443"}, exitInvalid,
			`--transport (transport[0].protocol): "sctp" is not udp or tcp`},
		{"client cidr too small", []string{"--dir", "D", "--remote", "r.example", "--client-cidr", "10.2.0.0/24"}, exitInvalid,
			"--client-cidr (client_cidr_block): 10.2.0.0/24: prefix length must be /12 to /22, got /24"},
		{"client cidr in vpc", []string{"--dir", "D", "--remote", "r.example", "--client-cidr", "10.0.4.0/22"}, exitInvalid,
			"--client-cidr (client_cidr_block): 10.0.4.0/22 overlaps vpc_cidr_blocks[0] 10.0.0.0/16"},
		{"snat outside vpc", []string{"--dir", "D", "--remote", "r.example", "--snat-address", "192.168.0.1"}, exitInvalid,
			"--snat-address (target_network.snat_address): 192.168.0.1 is not inside any of vpc_cidr_blocks"},
		{"vpc cidr garbage", []string{"--dir", "D", "--remote", "r.example", "--vpc-cidr", "a: b"}, exitInvalid,
			`--vpc-cidr (vpc_cidr_blocks[0]): "a: b" is not a CIDR block`},
		{"interface", []string{"--dir", "D", "--remote", "r.example", "--target-interface", "eth/1"}, exitInvalid,
			"--target-interface (target_network.interface)"},
		{"stray argument", []string{"--dir", "D", "--remote", "r.example", "extra"}, exitInvalid, "unexpected arguments"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ep")
			args := []string{"init"}
			for _, a := range tc.args {
				if a == "D" {
					a = dir
				}
				args = append(args, a)
			}
			code, stdout, stderr := runCmd(t, args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, want %d; stderr:\n%s\nwant it to contain %q", code, tc.code, stderr, tc.want)
			}
			if strings.Contains(stdout, "created") {
				t.Errorf("stdout says something was created:\n%s", stdout)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("a refused init left %s behind (%v)", dir, err)
			}
		})
	}
}
