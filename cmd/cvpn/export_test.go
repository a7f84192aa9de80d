package main

import (
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// inline returns the body of <tag>...</tag> in an .ovpn profile, and whether it is there.
func inline(profile, tag string) (string, bool) {
	_, rest, ok := strings.Cut(profile, "<"+tag+">\n")
	if !ok {
		return "", false
	}
	body, _, ok := strings.Cut(rest, "</"+tag+">")
	return body, ok
}

// directives returns the profile's option lines outside inline blocks, without comments.
func directives(profile string) []string {
	var out []string
	inBlock := false
	for _, l := range strings.Split(profile, "\n") {
		switch {
		case strings.HasPrefix(l, "</"):
			inBlock = false
		case strings.HasPrefix(l, "<"):
			inBlock = true
		case !inBlock && l != "" && !strings.HasPrefix(l, "#"):
			out = append(out, l)
		}
	}
	return out
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestExportClientConfig(t *testing.T) {
	cfgPath := newEndpoint(t, "--transport", "udp/443,tcp/443,udp/1194")
	dir := filepath.Dir(cfgPath)
	p := func(name string) string { return filepath.Join(dir, "pki", name) }
	mustRun(t, "client", "issue", "alice", "--group", "dev", "--config", cfgPath)

	profile := mustRun(t, "export-client-config", "--config", cfgPath, "--client", "alice")
	got := directives(profile)
	want := []string{
		"client", "dev tun", "proto udp",
		"remote vpn.example.com 443", "remote vpn.example.com 1194",
		"resolv-retry infinite", "nobind", "persist-key", "persist-tun", "explicit-exit-notify 1",
		"remote-cert-tls server", "verify-x509-name vpn.example.com name",
		"cipher AES-256-GCM", "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
		"reneg-sec 0", "verb 3",
	}
	if !slices.Equal(got, want) {
		t.Errorf("directives:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if ca, ok := inline(profile, "ca"); !ok || ca != readFile(t, p("ca.crt")) {
		t.Errorf("<ca> is not pki/ca.crt:\n%s", ca)
	}
	if cert, ok := inline(profile, "cert"); !ok || cert != readFile(t, p("clients/alice.crt")) {
		t.Errorf("<cert> is not alice.crt:\n%s", cert)
	}
	key, ok := inline(profile, "key")
	if !ok {
		t.Fatal("no <key>")
	}
	keyFile := filepath.Join(t.TempDir(), "k")
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadIdentity(p("clients/alice.crt"), keyFile); err != nil {
		t.Errorf("<key> is not alice's key: %v", err)
	}
	tc, ok := inline(profile, "tls-crypt")
	if !ok {
		t.Fatal("no <tls-crypt>")
	}
	k1, err1 := tlscrypt.ParseStaticKey([]byte(tc))
	k2, err2 := tlscrypt.ParseStaticKey([]byte(readFile(t, p("tc.key"))))
	if err1 != nil || err2 != nil || *k1 != *k2 {
		t.Errorf("<tls-crypt> is not pki/tc.key (%v, %v)", err1, err2)
	}

	// TCP: only the tcp listener.
	profile = mustRun(t, "export-client-config", "--config", cfgPath, "--protocol", "tcp")
	got = directives(profile)
	if !slices.Contains(got, "proto tcp") || slices.Contains(got, "explicit-exit-notify 1") || !slices.Contains(got, "remote vpn.example.com 443") || slices.Contains(got, "remote vpn.example.com 1194") {
		t.Errorf("tcp profile:\n%s", strings.Join(got, "\n"))
	}
}

// TestExportCarriesNoEndpointSecret checks that a profile holds no private key but the named
// client's: never the CA key, the server key, another client's key or the tls-crypt-v2 key.
func TestExportCarriesNoEndpointSecret(t *testing.T) {
	cfgPath := newEndpoint(t)
	dir := filepath.Dir(cfgPath)
	p := func(name string) string { return filepath.Join(dir, "pki", name) }
	mustRun(t, "client", "issue", "alice", "--config", cfgPath)
	mustRun(t, "client", "issue", "bob", "--config", cfgPath)
	// A tls-crypt-v2 server key alongside tls-crypt.
	v2, err := tlscrypt.GenerateV2ServerKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("v2.key"), v2.Marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	yml := strings.Replace(readFile(t, cfgPath), "  tls_crypt_key_file: pki/tc.key\n",
		"  tls_crypt_key_file: pki/tc.key\n  tls_crypt_v2_server_key_file: pki/v2.key\n", 1)
	if err := os.WriteFile(cfgPath, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}

	secrets := map[string]string{"CA key": p("ca.key"), "server key": p("server.key"), "bob's key": p("clients/bob.key"), "tls-crypt-v2 server key": p("v2.key")}
	for _, client := range []string{"", "alice"} {
		args := []string{"export-client-config", "--config", cfgPath}
		if client != "" {
			args = append(args, "--client", client)
		}
		profile := mustRun(t, args...)
		for what, f := range secrets {
			for rest := []byte(readFile(t, f)); ; {
				var b *pem.Block
				if b, rest = pem.Decode(rest); b == nil {
					break
				}
				body := pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes})
				if strings.Contains(profile, string(body)) {
					t.Errorf("profile for %q holds the %s", client, what)
				}
			}
		}
		keys := strings.Count(profile, "PRIVATE KEY-----") / 2
		if client == "" && (keys != 0 || strings.Contains(profile, "<cert>") || strings.Contains(profile, "<key>")) {
			t.Errorf("profile without a client holds %d private keys or a <cert>/<key>", keys)
		}
		if client == "alice" && keys != 1 {
			t.Errorf("profile for alice holds %d private keys, want 1", keys)
		}
		if strings.Contains(profile, "tls-crypt-v2") {
			t.Error("profile mentions tls-crypt-v2")
		}
	}
}

func TestExportTLSAuth(t *testing.T) {
	cfgPath := newEndpoint(t)
	dir := filepath.Dir(cfgPath)
	k, err := tlscrypt.GenerateStaticKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pki", "ta.key"), k.Marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	orig := readFile(t, cfgPath)
	for _, tc := range []struct {
		name, control string
		want, absent  []string
	}{
		{"direction 0, SHA256", "  tls_auth_key_file: pki/ta.key\n  tls_auth_key_direction: 0\n  tls_auth_digest: SHA256\n",
			[]string{"key-direction 1", "auth SHA256"}, nil},
		{"direction 1", "  tls_auth_key_file: pki/ta.key\n  tls_auth_key_direction: 1\n",
			[]string{"key-direction 0"}, []string{"auth SHA1"}},
		{"bidirectional", "  tls_auth_key_file: pki/ta.key\n  tls_auth_digest: SHA512\n",
			[]string{"auth SHA512"}, []string{"key-direction 0", "key-direction 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			yml := strings.Replace(orig, "  tls_crypt_key_file: pki/tc.key\n", tc.control, 1)
			if err := os.WriteFile(cfgPath, []byte(yml), 0o644); err != nil {
				t.Fatal(err)
			}
			profile := mustRun(t, "export-client-config", "--config", cfgPath)
			got := directives(profile)
			for _, w := range tc.want {
				if !slices.Contains(got, w) {
					t.Errorf("profile lacks %q:\n%s", w, strings.Join(got, "\n"))
				}
			}
			for _, a := range tc.absent {
				if slices.Contains(got, a) {
					t.Errorf("profile has %q", a)
				}
			}
			body, ok := inline(profile, "tls-auth")
			if !ok {
				t.Fatal("no <tls-auth>")
			}
			if got, err := tlscrypt.ParseStaticKey([]byte(body)); err != nil || *got != *k {
				t.Errorf("<tls-auth> is not ta.key: %v", err)
			}
			if strings.Contains(profile, "<tls-crypt>") {
				t.Error("profile has <tls-crypt> too")
			}
		})
	}
}

func TestExportRefuses(t *testing.T) {
	cfgPath := newEndpoint(t)
	mustRun(t, "client", "issue", "alice", "--config", cfgPath)
	mustRun(t, "client", "issue", "bob", "--config", cfgPath)
	mustRun(t, "client", "revoke", "bob", "--config", cfgPath)
	orig := readFile(t, cfgPath)
	edited := func(t *testing.T, from, to string) string {
		t.Helper()
		if !strings.Contains(orig, from) {
			t.Fatalf("endpoint.yaml lacks %q", from)
		}
		f := filepath.Join(filepath.Dir(cfgPath), "edited.yaml")
		if err := os.WriteFile(f, []byte(strings.Replace(orig, from, to, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	v2, err := tlscrypt.GenerateV2ServerKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(cfgPath), "pki", "v2.key"), v2.Marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		config func(t *testing.T) string
		args   []string
		code   int
		want   string
	}{
		{"no tcp listener", nil, []string{"--protocol", "tcp"}, exitInvalid, "--protocol tcp: the endpoint has no tcp listener (transport: udp/443)"},
		{"bad protocol", nil, []string{"--protocol", "sctp"}, exitInvalid, `--protocol "sctp": want udp or tcp`},
		{"unknown client", nil, []string{"--client", "zed"}, exitRuntime, `no client named "zed"`},
		{"bad client name", nil, []string{"--client", "../x"}, exitInvalid, "client name"},
		{"revoked client", nil, []string{"--client", "bob"}, exitRuntime, `client "bob": revoked on`},
		{"stray argument", nil, []string{"alice"}, exitInvalid, "unexpected arguments"},
		{"no remote_hostname", func(t *testing.T) string { return edited(t, "remote_hostname: vpn.example.com\n", "") },
			nil, exitInvalid, "remote_hostname: not set"},
		{"invalid endpoint", func(t *testing.T) string {
			return edited(t, "client_cidr_block: 10.2.0.0/22", "client_cidr_block: 10.2.0.0/24")
		},
			nil, exitInvalid, "client_cidr_block: 10.2.0.0/24: prefix length"},
		{"only tls-crypt-v2", func(t *testing.T) string {
			return edited(t, "  tls_crypt_key_file: pki/tc.key\n", "  tls_crypt_v2_server_key_file: pki/v2.key\n")
		}, nil, exitRuntime, "control_channel.tls_crypt_v2_server_key_file: this endpoint accepts only tls-crypt-v2 clients"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := cfgPath
			if tc.config != nil {
				f = tc.config(t)
			}
			code, stdout, stderr := runCmd(t, append([]string{"export-client-config", "--config", f}, tc.args...)...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, want %d; stderr %q, want it to contain %q", code, tc.code, stderr, tc.want)
			}
			if stdout != "" {
				t.Errorf("a refused export printed:\n%s", stdout)
			}
		})
	}
}

// directoryEndpoint makes an endpoint with cvpn init and adds directory authentication with a
// static MFA challenge; without certificate authentication when dirOnly, and then with the CA
// appended to the server certificate file, where the profile's <ca> comes from.
func directoryEndpoint(t *testing.T, dirOnly bool) string {
	t.Helper()
	cfgPath := newEndpoint(t)
	dir := filepath.Dir(cfgPath)
	yml := readFile(t, cfgPath)
	// The certificate block as cvpn init writes it, comments and all.
	start := strings.Index(yml, "  certificate:\n")
	end := strings.Index(yml, "crl_file: pki/crl.pem\n")
	if start < 0 || end < start {
		t.Fatalf("endpoint.yaml lacks authentication.certificate:\n%s", yml)
	}
	certAuth := yml[start : end+len("crl_file: pki/crl.pem\n")]
	auth := certAuth
	if dirOnly {
		auth = ""
		chain := readFile(t, filepath.Join(dir, "pki", "server.crt")) + readFile(t, filepath.Join(dir, "pki", "ca.crt"))
		if err := os.WriteFile(filepath.Join(dir, "pki", "server-chain.crt"), []byte(chain), 0o644); err != nil {
			t.Fatal(err)
		}
		yml = strings.Replace(yml, "cert_file: pki/server.crt", "cert_file: pki/server-chain.crt", 1)
	}
	auth += "  directory:\n    url: ldaps://dc1.example.com\n    user_base_dn: \"ou=people,dc=example,dc=com\"\n" +
		"  mfa:\n    challenge_text: \"Code, from your app:\"\n"
	yml = strings.Replace(yml, certAuth, auth, 1)
	if err := os.WriteFile(cfgPath, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfgPath
}

// TestExportDirectory: profiles of an endpoint with directory users ask for a username,
// password and the static challenge; with certificate authentication too they may carry a
// client's identity.
func TestExportDirectory(t *testing.T) {
	cfgPath := directoryEndpoint(t, false)
	mustRun(t, "client", "issue", "alice", "--config", cfgPath)
	login := []string{"auth-user-pass", "auth-nocache", "auth-retry interact", `static-challenge "Code, from your app:" 1`}
	for _, client := range []string{"", "alice"} {
		args := []string{"export-client-config", "--config", cfgPath}
		if client != "" {
			args = append(args, "--client", client)
		}
		profile := mustRun(t, args...)
		got := directives(profile)
		for _, want := range login {
			if !slices.Contains(got, want) {
				t.Errorf("profile for %q lacks %q:\n%s", client, want, strings.Join(got, "\n"))
			}
		}
		_, hasCert := inline(profile, "cert")
		if hasCert != (client != "") {
			t.Errorf("profile for %q: <cert> present %v", client, hasCert)
		}
	}
}

// TestExportDirectoryOnly: an endpoint without certificate authentication exports a profile
// with no certificate and refuses --client.
func TestExportDirectoryOnly(t *testing.T) {
	cfgPath := directoryEndpoint(t, true)
	dir := filepath.Dir(cfgPath)
	profile := mustRun(t, "export-client-config", "--config", cfgPath)
	got := directives(profile)
	for _, want := range []string{"auth-user-pass", "auth-nocache", "auth-retry interact", `static-challenge "Code, from your app:" 1`} {
		if !slices.Contains(got, want) {
			t.Errorf("profile lacks %q:\n%s", want, strings.Join(got, "\n"))
		}
	}
	for _, tag := range []string{"cert", "key"} {
		if _, ok := inline(profile, tag); ok {
			t.Errorf("profile has a <%s>", tag)
		}
	}
	if strings.Contains(profile, "PRIVATE KEY") || strings.Contains(profile, "No client identity") {
		t.Errorf("a directory-only profile holds a key or asks for a client certificate:\n%s", profile)
	}
	if ca, ok := inline(profile, "ca"); !ok || ca != readFile(t, filepath.Join(dir, "pki", "ca.crt")) {
		t.Errorf("<ca> is not pki/ca.crt:\n%s", ca)
	}

	code, stdout, stderr := runCmd(t, "export-client-config", "--config", cfgPath, "--client", "alice")
	if code != exitInvalid || !strings.Contains(stderr, "this endpoint has no certificate authentication") || stdout != "" {
		t.Errorf("--client on a directory-only endpoint: exit %d (want %d), stderr %q, stdout %q", code, exitInvalid, stderr, stdout)
	}
}

// federatedEndpoint makes an endpoint with cvpn init and replaces its certificate
// authentication with federated (OIDC) authentication and a portal; withCert keeps the
// certificate authentication as well. Without it the CA is appended to the server certificate
// file, where the profile's <ca> comes from.
func federatedEndpoint(t *testing.T, withCert bool) string {
	t.Helper()
	cfgPath := directoryEndpoint(t, !withCert)
	yml := readFile(t, cfgPath)
	start := strings.Index(yml, "  directory:\n")
	end := strings.Index(yml, "challenge_text: \"Code, from your app:\"\n")
	if start < 0 || end < start {
		t.Fatalf("endpoint.yaml lacks the directory block:\n%s", yml)
	}
	fed := "  federated:\n    oidc:\n      issuer: https://idp.example.com/realms/corp\n      client_id: cvpn\n"
	yml = yml[:start] + fed + yml[end+len("challenge_text: \"Code, from your app:\"\n"):]
	yml += "portal:\n  listen_address: 0.0.0.0:8443\n  public_url: https://vpn.example.com:8443\n"
	if err := os.WriteFile(cfgPath, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfgPath
}

// TestExportFederated: a federated endpoint's profiles ask for a username and password and
// answer the login notice at the console (auth-retry interact), with no static-challenge; a
// federated-only endpoint's carry no certificate and refuse --client, naming single sign-on.
func TestExportFederated(t *testing.T) {
	login := []string{"auth-user-pass", "auth-nocache", "auth-retry interact"}
	check := func(t *testing.T, profile string, withClient bool) {
		t.Helper()
		got := directives(profile)
		for _, want := range login {
			if !slices.Contains(got, want) {
				t.Errorf("profile lacks %q:\n%s", want, strings.Join(got, "\n"))
			}
		}
		if slices.ContainsFunc(got, func(d string) bool { return strings.HasPrefix(d, "static-challenge") }) {
			t.Errorf("a federated profile has static-challenge:\n%s", strings.Join(got, "\n"))
		}
		if !strings.Contains(profile, "# Single sign-on:") {
			t.Errorf("the profile does not say how single sign-on goes:\n%s", profile)
		}
		if _, hasCert := inline(profile, "cert"); hasCert != withClient {
			t.Errorf("<cert> present %v, want %v", hasCert, withClient)
		}
	}
	t.Run("federated only", func(t *testing.T) {
		cfgPath := federatedEndpoint(t, false)
		profile := mustRun(t, "export-client-config", "--config", cfgPath)
		check(t, profile, false)
		if strings.Contains(profile, "PRIVATE KEY") || strings.Contains(profile, "No client identity") {
			t.Errorf("a federated-only profile holds a key or asks for a client certificate:\n%s", profile)
		}
		code, stdout, stderr := runCmd(t, "export-client-config", "--config", cfgPath, "--client", "alice")
		if code != exitInvalid || !strings.Contains(stderr, "at the identity provider (single sign-on)") || stdout != "" {
			t.Errorf("--client on a federated-only endpoint: exit %d (want %d), stderr %q, stdout %q", code, exitInvalid, stderr, stdout)
		}
	})
	t.Run("federated and certificate", func(t *testing.T) {
		cfgPath := federatedEndpoint(t, true)
		mustRun(t, "client", "issue", "alice", "--config", cfgPath)
		check(t, mustRun(t, "export-client-config", "--config", cfgPath), false)
		check(t, mustRun(t, "export-client-config", "--config", cfgPath, "--client", "alice"), true)
	})
}
