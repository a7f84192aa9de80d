package endpoint

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
)

// examplePKI is the committed throwaway PKI the examples name.
var examplePKI = filepath.Join("..", "examples", "pki")

// exampleFile writes examples/endpoint.yaml with the replacements old, new, ... applied to a
// temporary directory, its pki/ paths pointing at examples/pki, and returns its path.
func exampleFile(t *testing.T, oldnew ...string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "examples", "endpoint.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	yml := string(data)
	for i := 0; i < len(oldnew); i += 2 {
		if !strings.Contains(yml, oldnew[i]) {
			t.Fatalf("examples/endpoint.yaml lacks %q", oldnew[i])
		}
		yml = strings.Replace(yml, oldnew[i], oldnew[i+1], 1)
	}
	abs, err := filepath.Abs(examplePKI)
	if err != nil {
		t.Fatal(err)
	}
	yml = strings.ReplaceAll(yml, " pki/", " "+abs+"/")
	f := filepath.Join(t.TempDir(), "endpoint.yaml")
	if err := os.WriteFile(f, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestLoadExample(t *testing.T) {
	ep, err := Load(filepath.Join("..", "examples", "endpoint.yaml"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if ep.Server == nil || ep.Server.Cert.Subject.CommonName != "vpn.example.com" {
		t.Errorf("server identity %+v", ep.Server)
	}
	if len(ep.ClientCACerts) != 1 || ep.ClientCAs == nil || ep.CRL == nil {
		t.Errorf("client CAs %d (pool %v), CRL %v", len(ep.ClientCACerts), ep.ClientCAs != nil, ep.CRL)
	}
	if ep.ControlKey == nil || ep.TLSAuthKey != nil || ep.TLSCryptV2ServerKey == nil {
		t.Errorf("control keys: tls-crypt %v, tls-auth %v, tls-crypt-v2 %v", ep.ControlKey != nil, ep.TLSAuthKey != nil, ep.TLSCryptV2ServerKey != nil)
	}
	want := []datacrypto.Cipher{datacrypto.AES256GCM, datacrypto.AES128GCM, datacrypto.ChaCha20Poly1305}
	if !slices.Equal(ep.Ciphers, want) {
		t.Errorf("ciphers %v, want %v", ep.Ciphers, want)
	}
	p := ep.Policy
	if !slices.Equal(p.Routes, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}) || p.ClientToClient || !p.SplitTunnel ||
		!slices.Equal(p.DNS, []netip.Addr{netip.MustParseAddr("10.0.0.2")}) || p.Bandwidth != 10e6 || p.GroupBandwidth["ops"] != 50e6 {
		t.Errorf("policy %+v", p)
	}
	dev, ops := p.Authz.Groups([]string{"dev"}), p.Authz.Groups([]string{"ops"})
	app, shared := netip.MustParseAddr("10.0.1.5"), netip.MustParseAddr("10.0.2.5")
	if !p.Authz.Allowed(app, dev) || p.Authz.Allowed(app, ops) || !p.Authz.Allowed(shared, ops) {
		t.Errorf("authz: dev->app %v, ops->app %v, ops->shared %v", p.Authz.Allowed(app, dev), p.Authz.Allowed(app, ops), p.Authz.Allowed(shared, ops))
	}
}

// TestLoadReportsEveryFileProblem checks that problems with the named files come back joined,
// each a *config.ValidationError naming its key and the key's line.
func TestLoadReportsEveryFileProblem(t *testing.T) {
	f := exampleFile(t,
		"key_file: pki/server.key", "key_file: pki/other.key",
		"crl_file: pki/crl.pem", "crl_file: pki/other-ca-crl.pem",
		"tls_crypt_key_file: pki/tc.key", "tls_crypt_key_file: pki/ca.crt")
	_, err := Load(f, time.Now())
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		t.Fatalf("err = %v, want joined errors", err)
	}
	var got []string
	for _, e := range joined.Unwrap() {
		var ve *config.ValidationError
		if !errors.As(e, &ve) || ve.Line == 0 || ve.File != f {
			t.Errorf("%v is not a *config.ValidationError with the file and a line", e)
			continue
		}
		got = append(got, ve.Path)
	}
	want := []string{"server_certificate.key_file", "authentication.certificate.crl_file", "control_channel.tls_crypt_key_file"}
	if !slices.Equal(got, want) {
		t.Errorf("problems name %q, want %q", got, want)
	}
}

// TestLoadClock checks that the files are checked at the instant given, not the wall clock.
func TestLoadClock(t *testing.T) {
	f := exampleFile(t)
	_, err := Load(f, time.Now().Add(100*365*24*time.Hour))
	if err == nil || !strings.Contains(err.Error(), "server_certificate.cert_file: ") || !strings.Contains(err.Error(), "no CA in it is valid now") {
		t.Errorf("a century on: err = %v, want the expired server certificate and CA named", err)
	}
}

func TestPolicyOfLocalRoute(t *testing.T) {
	clients := netip.MustParsePrefix("10.2.0.0/22")
	cfg := &config.Endpoint{
		ClientCIDRBlock: clients,
		SplitTunnel:     true,
		Routes: []config.Route{
			{DestinationCIDRBlock: netip.MustParsePrefix("10.0.0.0/16")},
			{DestinationCIDRBlock: clients, Local: true},
		},
		AuthorizationRules: []config.AuthorizationRule{{TargetNetworkCIDR: clients, AuthorizeAllGroups: true}},
	}
	p, err := PolicyOf(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !p.ClientToClient || !slices.Equal(p.Routes, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}) {
		t.Errorf("client-to-client %v, routes %v: want the local route enabling it and not pushed", p.ClientToClient, p.Routes)
	}
}

// TestControlWrapper checks that the wrapper is the server's side of what the file asks for:
// a client with the other side (and only that one) unwraps what it wraps.
func TestControlWrapper(t *testing.T) {
	k, err := tlscrypt.GenerateStaticKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	plain := append([]byte{0x38}, make([]byte, 8+20)...) // P_CONTROL_HARD_RESET_SERVER_V2, session id, body
	for _, tc := range []struct {
		name           string
		ep             Endpoint
		client, others tlscrypt.Wrapper
	}{
		{"tls-crypt", Endpoint{ControlKey: k}, tlscrypt.NewTLSCrypt(k, false), tlscrypt.NewTLSCrypt(k, true)},
		{"tls-auth direction 0, SHA256",
			Endpoint{TLSAuthKey: k, Config: &config.Endpoint{ControlChannel: config.ControlChannel{TLSAuthKeyDirection: 0, TLSAuthDigest: "SHA256"}}},
			tlscrypt.NewTLSAuth(k, 1, sha256.New), tlscrypt.NewTLSAuth(k, 0, sha256.New)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.ep.Config == nil {
				tc.ep.Config = &config.Endpoint{}
			}
			w, err := tc.ep.ControlWrapper()
			if err != nil || w == nil {
				t.Fatalf("ControlWrapper: %v, %v", w, err)
			}
			wire, err := w.Wrap(nil, plain, 1, 1)
			if err != nil {
				t.Fatal(err)
			}
			if got, _, _, err := tc.client.Unwrap(nil, wire); err != nil || !bytes.Equal(got, plain) {
				t.Errorf("the client's side does not unwrap it: %v", err)
			}
			if _, _, _, err := tc.others.Unwrap(nil, wire); err == nil {
				t.Error("the server's own side unwraps it too: the wrapper is not the server's")
			}
		})
	}
	none := Endpoint{Config: &config.Endpoint{}}
	if w, err := none.ControlWrapper(); w != nil || err != nil {
		t.Errorf("no control key: %v, %v; want nil, nil", w, err)
	}
	bad := Endpoint{TLSAuthKey: k, Config: &config.Endpoint{ControlChannel: config.ControlChannel{TLSAuthDigest: "MD5"}}}
	if _, err := bad.ControlWrapper(); err == nil || !strings.Contains(err.Error(), "control_channel.tls_auth_digest") {
		t.Errorf("digest MD5: err = %v, want one naming control_channel.tls_auth_digest", err)
	}
}

// tlsCryptV2ServerKeyPEM is the PEM type `openvpn --genkey tls-crypt-v2-server` writes.
const tlsCryptV2ServerKeyPEM = "OpenVPN tls-crypt-v2 server key"

func TestLoadTLSCryptV2ServerKey(t *testing.T) {
	dir := t.TempDir()
	good := make([]byte, 128)
	for i := range good {
		good[i] = byte(i)
	}
	write := func(name string, data []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	k, err := LoadTLSCryptV2ServerKey(write("good", pem.EncodeToMemory(&pem.Block{Type: tlsCryptV2ServerKeyPEM, Bytes: good})))
	if err != nil || !bytes.Equal(k.Marshal(), readFileBytes(t, filepath.Join(dir, "good"))) {
		t.Errorf("good key: %v", err)
	}
	for name, data := range map[string][]byte{
		"not PEM":  []byte("hello"),
		"client":   pem.EncodeToMemory(&pem.Block{Type: "OpenVPN tls-crypt-v2 client key", Bytes: good}),
		"too long": pem.EncodeToMemory(&pem.Block{Type: tlsCryptV2ServerKeyPEM, Bytes: append(good, 0)}),
	} {
		if _, err := LoadTLSCryptV2ServerKey(write(name, data)); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, name)) {
			t.Errorf("%s: err = %v, want an error naming the file", name, err)
		}
	}
}

func readFileBytes(t *testing.T, f string) []byte {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
