package main

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pquerna/otp/totp"

	"github.com/cvpn/cvpn/auth/mfa"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint"
)

// mfaEndpoint returns an endpoint file with directory users and TOTP, its state in a
// temporary directory.
func mfaEndpoint(t *testing.T) string {
	t.Helper()
	cfg := newEndpoint(t)
	dir := filepath.Dir(cfg)
	if err := os.WriteFile(filepath.Join(dir, "bind-password"), []byte("service\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(data), "authentication:\n", `authentication:
  directory:
    url: ldap://127.0.0.1:3890
    bind_dn: "cn=cvpn,dc=example,dc=com"
    bind_password_file: bind-password
    user_base_dn: "ou=people,dc=example,dc=com"
  mfa: {totp: {issuer: Test VPN}}
`, 1)
	text += "state_dir: " + filepath.Join(dir, "state") + "\n"
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestUserMFA: enroll prints a working otpauth URI and QR code, refuses to replace a secret
// without --force, and reset removes it.
func TestUserMFA(t *testing.T) {
	cfg := mfaEndpoint(t)
	code, stdout, stderr := runCmd(t, "user", "mfa", "enroll", "alice", "--config", cfg)
	if code != 0 {
		t.Fatalf("enroll: exit %d, stderr %q", code, stderr)
	}
	i := strings.Index(stdout, "otpauth://totp/")
	if i < 0 || !strings.Contains(stdout, "█") && !strings.Contains(stdout, "▀") {
		t.Fatalf("enroll printed no URI or QR code:\n%s", stdout)
	}
	uri, _, _ := strings.Cut(stdout[i:], "\n")
	u, err := url.Parse(uri)
	if err != nil || u.Query().Get("issuer") != "Test VPN" || u.Query().Get("secret") == "" {
		t.Fatalf("uri %q: %v", uri, err)
	}

	code, _, stderr = runCmd(t, "user", "mfa", "enroll", "alice", "--config", cfg)
	if code == 0 || !strings.Contains(stderr, "--force") {
		t.Errorf("second enroll: exit %d, stderr %q", code, stderr)
	}
	code, stdout, stderr = runCmd(t, "user", "mfa", "enroll", "alice", "--force", "--config", cfg)
	if code != 0 || strings.Contains(stdout, u.Query().Get("secret")) {
		t.Fatalf("enroll --force: exit %d (stderr %q), same secret again: %v", code, stderr, strings.Contains(stdout, u.Query().Get("secret")))
	}
	j := strings.Index(stdout, "otpauth://totp/")
	uri2, _, _ := strings.Cut(stdout[j:], "\n")
	u2, _ := url.Parse(uri2)

	// The secret printed is the one the endpoint checks codes against.
	ep, err := config.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, sealer, err := endpoint.OpenState(ep)
	if err != nil {
		t.Fatal(err)
	}
	tp := &mfa.TOTP{Store: st, Sealer: sealer, Issuer: "Test VPN"}
	c, _ := totp.GenerateCode(u2.Query().Get("secret"), timeNow())
	if err := tp.Verify(context.Background(), "alice", c); err != nil {
		t.Errorf("a code of the printed secret: %v", err)
	}
	st.Close()

	code, stdout, stderr = runCmd(t, "user", "mfa", "reset", "alice", "--config", cfg)
	if code != 0 || !strings.Contains(stdout, "removed") {
		t.Fatalf("reset: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	st, sealer, _ = endpoint.OpenState(ep)
	defer st.Close()
	tp = &mfa.TOTP{Store: st, Sealer: sealer}
	if ok, err := tp.Enrolled(context.Background(), "alice"); ok || err != nil {
		t.Errorf("after reset: enrolled %v, %v", ok, err)
	}
}

func TestUserMFAErrors(t *testing.T) {
	plain := newEndpoint(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"user"}, "missing subcommand"},
		{[]string{"user", "mfa", "enrol", "x"}, `did you mean "enroll"`},
		{[]string{"user", "mfa", "enroll", "--config", plain}, "missing the user's NAME"},
		{[]string{"user", "mfa", "enroll", "alice", "--config", plain}, "no authentication.directory"},
	} {
		code, _, stderr := runCmd(t, c.args...)
		if code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("%q: exit %d, stderr %q, want %q", c.args, code, stderr, c.want)
		}
	}
}

// TestClientCommandsOnDirectoryOnlyEndpoint: the certificate commands say why they do not
// apply to an endpoint whose users log in through the directory alone.
func TestClientCommandsOnDirectoryOnlyEndpoint(t *testing.T) {
	chmodExamplePassword(t)
	for _, args := range [][]string{
		{"client", "list"},
		{"client", "issue", "alice"},
		{"client", "revoke", "alice"},
		{"client", "refresh-crl"},
	} {
		args = append(args, "--config", filepath.Join(examplesDir, "ad-endpoint.yaml"))
		code, _, stderr := runCmd(t, args...)
		if code == 0 || !strings.Contains(stderr, "no authentication.certificate") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
}
