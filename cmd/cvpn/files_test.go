package main

import (
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tlsCryptV2ServerKeyPEM is the PEM type `openvpn --genkey tls-crypt-v2-server` writes.
const tlsCryptV2ServerKeyPEM = "OpenVPN tls-crypt-v2 server key"

// TestValidateReportsEveryFileProblem checks that the file content checks report every
// problem at once, one line each, naming the key and its line.
func TestValidateReportsEveryFileProblem(t *testing.T) {
	cfgPath := newEndpoint(t)
	dir := filepath.Dir(cfgPath)
	mustRun(t, "client", "issue", "alice", "--config", cfgPath)
	v2 := filepath.Join(dir, "pki", "v2.key")
	if err := os.WriteFile(v2, pem.EncodeToMemory(&pem.Block{Type: tlsCryptV2ServerKeyPEM, Bytes: make([]byte, 100)}), 0o600); err != nil {
		t.Fatal(err)
	}
	yml := strings.NewReplacer(
		"key_file: pki/server.key", "key_file: pki/ca.key",
		"client_root_ca_file: pki/ca.crt", "client_root_ca_file: pki/clients/alice.crt",
		"  tls_crypt_key_file: pki/tc.key\n", "  tls_crypt_key_file: pki/tc.key\n  tls_crypt_v2_server_key_file: pki/v2.key\n",
	).Replace(readFile(t, cfgPath))
	if err := os.WriteFile(cfgPath, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCmd(t, "validate", "--config", cfgPath)
	lines := nonEmptyLines(stderr)
	if code != exitInvalid || stdout != "" || len(lines) != 3 {
		t.Fatalf("exit %d, %d lines, want 2 and 3:\n%s", code, len(lines), stderr)
	}
	for i, want := range []string{
		"server_certificate.key_file: pki: " + filepath.Join(dir, "pki", "ca.key") + ": private key does not match certificate",
		"authentication.certificate.client_root_ca_file: pki: " + filepath.Join(dir, "pki", "clients", "alice.crt") + `: certificate 1 (subject CN "alice"): certificate is not a CA`,
		"control_channel.tls_crypt_v2_server_key_file: " + v2 + ": tlscrypt: tls-crypt-v2 server key: wrong tls-crypt-v2 key length: 100 bytes, want 128",
	} {
		if !strings.HasPrefix(lines[i], cfgPath+":") || !strings.Contains(lines[i], ": "+want) {
			t.Errorf("line %d:\n  %s\nwant it to contain\n  %s", i+1, lines[i], want)
		}
	}
}

func TestValidateClock(t *testing.T) {
	cfgPath := newEndpoint(t)
	// Past the server certificate (and CA): both named.
	setClock(t, time.Now().Add(11*365*day))
	_, _, stderr := runCmd(t, "validate", "--config", cfgPath)
	for _, want := range []string{
		"server_certificate.cert_file: ", "certificate expired on",
		"authentication.certificate.client_root_ca_file: ", "no CA in it is valid now",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	// Before the server certificate.
	setClock(t, time.Now().Add(-2*day))
	if _, _, stderr := runCmd(t, "validate", "--config", cfgPath); !strings.Contains(stderr, "certificate not valid until") {
		t.Errorf("stderr lacks not-yet-valid:\n%s", stderr)
	}
}
