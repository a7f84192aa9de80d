package profile

import (
	"crypto/rand"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

const day = 24 * time.Hour

// testPKI is a CA, a server and two clients of it, and a CRL revoking the second client.
type testPKI struct {
	now          time.Time
	ca, server   *pki.Identity
	alice, bob   *pki.Identity
	crl          *pki.CRLSet
	shared       *tlscrypt.StaticKey
	clientCAPool *x509.CertPool
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{now: time.Now()}
	must := func(id *pki.Identity, err error) *pki.Identity {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	p.ca = must(pki.NewCA("ca", pki.ECDSAP256, 365*day, p.now))
	p.server = must(pki.IssueServer(p.ca, "vpn.example.com", []string{"vpn.example.com"}, pki.ECDSAP256, 300*day, p.now))
	p.alice = must(pki.IssueClient(p.ca, "alice", []string{"dev", "ops"}, pki.ECDSAP256, 30*day, p.now))
	p.bob = must(pki.IssueClient(p.ca, "bob", nil, pki.ECDSAP256, 30*day, p.now))
	empty, err := pki.NewCRL(p.ca, p.now, 30*day)
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := pki.Revoke(p.ca, empty, p.bob.Cert, p.now, 30*day)
	if err != nil {
		t.Fatal(err)
	}
	if p.crl, err = pki.NewCRLSet([]*pki.CRL{revoked}, []*x509.Certificate{p.ca.Cert}, p.now); err != nil {
		t.Fatal(err)
	}
	if p.shared, err = tlscrypt.GenerateStaticKey(rand.Reader); err != nil {
		t.Fatal(err)
	}
	p.clientCAPool = x509.NewCertPool()
	p.clientCAPool.AddCert(p.ca.Cert)
	return p
}

// endpoint is the loaded endpoint of this PKI with control channel cc and the shared key as its
// tls-crypt or tls-auth key.
func (p *testPKI) endpoint(cc config.ControlChannel) *endpoint.Endpoint {
	ep := &endpoint.Endpoint{
		Config: &config.Endpoint{
			RemoteHostname: "vpn.example.com",
			DataCiphers:    []string{"AES-256-GCM", "CHACHA20-POLY1305"},
			ControlChannel: cc,
			Authentication: config.Authentication{Certificate: &config.CertificateAuthentication{ClientRootCAFile: "ca.crt"}},
		},
		Server:        p.server,
		ClientCAs:     p.clientCAPool,
		ClientCACerts: []*x509.Certificate{p.ca.Cert},
		CRL:           p.crl,
	}
	switch {
	case cc.TLSCryptKeyFile != "":
		ep.ControlKey = p.shared
	case cc.TLSAuthKeyFile != "":
		ep.TLSAuthKey = p.shared
	}
	return ep
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

// blocks returns the tags of the profile's inline blocks in order.
func blocks(profile string) []string {
	var out []string
	for _, l := range strings.Split(profile, "\n") {
		if strings.HasPrefix(l, "<") && !strings.HasPrefix(l, "</") {
			out = append(out, strings.Trim(l, "<>"))
		}
	}
	return out
}

func TestNewTLSCryptWithClient(t *testing.T) {
	tp := newPKI(t)
	p, err := New(tp.endpoint(config.ControlChannel{TLSCryptKeyFile: "tc.key"}), "udp", []uint16{443, 1194}, tp.now)
	if err != nil {
		t.Fatal(err)
	}
	p.SetClient("alice", tp.alice)
	out := string(p.Render())
	want := []string{
		"client", "dev tun", "proto udp", "remote vpn.example.com 443", "remote vpn.example.com 1194",
		"resolv-retry infinite", "nobind", "persist-key", "persist-tun", "explicit-exit-notify 1", "remote-cert-tls server",
		"verify-x509-name vpn.example.com name", "cipher AES-256-GCM", "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
		"reneg-sec 0", "verb 3",
	}
	if got := directives(out); !slices.Equal(got, want) {
		t.Errorf("directives:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := blocks(out); !slices.Equal(got, []string{"ca", "cert", "key", "tls-crypt"}) {
		t.Errorf("blocks %q", got)
	}
	if !strings.Contains(out, "# client: alice (groups dev,ops).") {
		t.Errorf("no client comment with the groups:\n%s", out)
	}
	for what, pem := range map[string][]byte{"CA": tp.ca.CertPEM, "alice's certificate": tp.alice.CertPEM, "alice's key": tp.alice.KeyPEM, "tls-crypt key": tp.shared.Marshal()} {
		if !strings.Contains(out, strings.TrimRight(string(pem), "\n")+"\n") {
			t.Errorf("profile lacks the %s", what)
		}
	}

	// The client's own tls-crypt-v2 key replaces the shared one.
	p.SetTLSCryptV2Key([]byte("-----BEGIN OpenVPN tls-crypt-v2 client key-----\nAAAA\n-----END OpenVPN tls-crypt-v2 client key-----\n"))
	if got := blocks(string(p.Render())); !slices.Equal(got, []string{"ca", "cert", "key", "tls-crypt-v2"}) {
		t.Errorf("with a tls-crypt-v2 key, blocks %q", got)
	}
}

// TestNewTLSAuth checks that the profile carries the client's side of tls-auth: the other
// key-direction than the server's, none when bidirectional, and the digest unless SHA1.
func TestNewTLSAuth(t *testing.T) {
	tp := newPKI(t)
	for _, tc := range []struct {
		dir           config.KeyDirection
		digest        string
		want, absent  []string
		keyDirectionN int
	}{
		// TCP profiles carry no explicit-exit-notify: the server sees the connection close.
		{config.KeyDirectionNormal, config.DigestSHA256, []string{"key-direction 1", "auth SHA256"}, []string{"explicit-exit-notify 1"}, 1},
		{config.KeyDirectionInverse, config.DigestSHA1, []string{"key-direction 0"}, []string{"auth SHA1"}, 0},
		{config.KeyDirectionBidirectional, config.DigestSHA512, []string{"auth SHA512"}, []string{"key-direction 0", "key-direction 1"}, -1},
	} {
		ep := tp.endpoint(config.ControlChannel{TLSAuthKeyFile: "ta.key", TLSAuthKeyDirection: tc.dir, TLSAuthDigest: tc.digest})
		p, err := New(ep, "tcp", []uint16{443}, tp.now)
		if err != nil {
			t.Fatal(err)
		}
		if p.KeyDirection != tc.keyDirectionN {
			t.Errorf("server direction %d: client key-direction %d, want %d", tc.dir, p.KeyDirection, tc.keyDirectionN)
		}
		out := string(p.Render())
		got := directives(out)
		for _, w := range tc.want {
			if !slices.Contains(got, w) {
				t.Errorf("server direction %d: profile lacks %q:\n%s", tc.dir, w, strings.Join(got, "\n"))
			}
		}
		for _, a := range tc.absent {
			if slices.Contains(got, a) {
				t.Errorf("server direction %d: profile has %q", tc.dir, a)
			}
		}
		if b := blocks(out); !slices.Equal(b, []string{"ca", "tls-auth"}) {
			t.Errorf("blocks %q, want ca and tls-auth", b)
		}
		if !strings.Contains(out, "# No client identity") {
			t.Error("a profile without a client does not say so")
		}
	}
}

func TestNewRefusesServerName(t *testing.T) {
	tp := newPKI(t)
	for _, cn := range []string{"", "vpn\nexample"} {
		ep := tp.endpoint(config.ControlChannel{})
		cert := *tp.server.Cert
		cert.Subject.CommonName = cn
		ep.Server = &pki.Identity{Cert: &cert, CertPEM: tp.server.CertPEM}
		_, err := New(ep, "udp", []uint16{443}, tp.now)
		var ve *config.ValidationError
		if !errors.As(err, &ve) || ve.Path != "server_certificate.cert_file" {
			t.Errorf("CN %q: err = %v, want one naming server_certificate.cert_file", cn, err)
		}
	}
}

// TestServerRootPEM checks that <ca> is the root the server certificate chains to: a CA of
// client_root_ca_file, or a self-signed root appended to the server certificate file.
func TestServerRootPEM(t *testing.T) {
	tp := newPKI(t)
	ep := tp.endpoint(config.ControlChannel{})
	got, err := ServerRootPEM(ep, tp.now)
	if err != nil || string(got) != string(tp.ca.CertPEM) {
		t.Errorf("server of the client CA: %v\n%s", err, got)
	}

	root, err := pki.NewCA("server root", pki.ECDSAP256, 365*day, tp.now)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := pki.IssueServer(root, "vpn.example.com", nil, pki.ECDSAP256, 300*day, tp.now)
	if err != nil {
		t.Fatal(err)
	}
	ep.Server = &pki.Identity{Cert: srv.Cert, CertPEM: srv.CertPEM}
	if _, err := ServerRootPEM(ep, tp.now); err == nil || !strings.Contains(err.Error(), "cannot find the CA clients should trust") {
		t.Errorf("server of an unknown root: err = %v", err)
	}
	ep.Server.CertPEM = append(append([]byte{}, srv.CertPEM...), root.CertPEM...)
	if got, err := ServerRootPEM(ep, tp.now); err != nil || string(got) != string(root.CertPEM) {
		t.Errorf("root appended to the server file: %v\n%s", err, got)
	}
}

func TestCheckClient(t *testing.T) {
	tp := newPKI(t)
	ep := tp.endpoint(config.ControlChannel{})
	other, err := pki.NewCA("other", pki.ECDSAP256, 365*day, tp.now)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := pki.IssueClient(other, "carol", nil, pki.ECDSAP256, 30*day, tp.now)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cert *x509.Certificate
		now  time.Time
		want string // "" for accepted
	}{
		{"valid", tp.alice.Cert, tp.now, ""},
		{"revoked", tp.bob.Cert, tp.now, "revoked on"},
		{"another CA", stranger.Cert, tp.now, "the server would refuse its certificate"},
		{"expired", tp.alice.Cert, tp.now.Add(31 * day), "the server would refuse its certificate"},
		{"a server certificate", tp.server.Cert, tp.now, "the server would refuse its certificate"},
	} {
		err := CheckClient(ep, tc.cert, tc.now)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestQuoteOption(t *testing.T) {
	for in, want := range map[string]string{
		"vpn.example.com": "vpn.example.com",
		"my server":       `"my server"`,
		`a"b\c`:           `"a\"b\\c"`,
		"#x":              `"#x"`,
	} {
		if got := quoteOption(in); got != want {
			t.Errorf("quoteOption(%q) = %s, want %s", in, got, want)
		}
	}
}

// directoryEndpoint is p's endpoint with tls-crypt and directory authentication, with or without
// certificate authentication too, and with mfa (nil for none).
func (p *testPKI) directoryEndpoint(withCert bool, mfa *config.MFA) *endpoint.Endpoint {
	ep := p.endpoint(config.ControlChannel{TLSCryptKeyFile: "tc.key"})
	ep.Config.Authentication.Directory = &config.DirectoryAuthentication{URLs: []string{"ldaps://dc1.example.com"}}
	ep.Config.Authentication.MFA = mfa
	if !withCert {
		// What package endpoint loads for an endpoint without client_root_ca_file: no client
		// CAs, and the server certificate file carries its root after the leaf.
		ep.Config.Authentication.Certificate = nil
		ep.ClientCAs, ep.ClientCACerts, ep.CRL = nil, nil, nil
		ep.Server = &pki.Identity{Cert: p.server.Cert, CertPEM: append(slices.Clone(p.server.CertPEM), p.ca.CertPEM...), KeyPEM: p.server.KeyPEM}
	}
	return ep
}

// TestNewDirectory: endpoints with directory users get profiles that ask for a username and
// password, forget them once a token is pushed, and ask again after AUTH_FAILED.
func TestNewDirectory(t *testing.T) {
	tp := newPKI(t)
	userPass := []string{"auth-user-pass", "auth-nocache", "auth-retry interact"}
	for _, tc := range []struct {
		name      string
		withCert  bool
		mfa       *config.MFA
		challenge string // the static-challenge line; "" for none
		blocks    []string
	}{
		{name: "directory and certificate", withCert: true, blocks: []string{"ca", "tls-crypt"}},
		{name: "directory only", blocks: []string{"ca", "tls-crypt"}},
		{name: "static MFA", mfa: &config.MFA{Challenge: config.ChallengeStatic, ChallengeText: "Enter your authenticator code"},
			challenge: `static-challenge "Enter your authenticator code" 1`, blocks: []string{"ca", "tls-crypt"}},
		{name: "static MFA quoted", mfa: &config.MFA{Challenge: config.ChallengeStatic, ChallengeText: `Code for "vpn" \ 6 digits, then: Enter`},
			challenge: `static-challenge "Code for \"vpn\" \\ 6 digits, then: Enter" 1`, blocks: []string{"ca", "tls-crypt"}},
		{name: "one-word static MFA is quoted too", mfa: &config.MFA{Challenge: config.ChallengeStatic, ChallengeText: "Code"},
			challenge: `static-challenge "Code" 1`, blocks: []string{"ca", "tls-crypt"}},
		{name: "dynamic MFA", mfa: &config.MFA{Challenge: config.ChallengeDynamic, ChallengeText: "Code"}, blocks: []string{"ca", "tls-crypt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tp.directoryEndpoint(tc.withCert, tc.mfa), "udp", []uint16{443}, tp.now)
			if err != nil {
				t.Fatal(err)
			}
			out := string(p.Render())
			got := directives(out)
			want := []string{
				"client", "dev tun", "proto udp", "remote vpn.example.com 443",
				"resolv-retry infinite", "nobind", "persist-key", "persist-tun", "explicit-exit-notify 1", "remote-cert-tls server",
				"verify-x509-name vpn.example.com name", "cipher AES-256-GCM", "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
				"reneg-sec 0",
			}
			want = append(want, userPass...)
			if tc.challenge != "" {
				want = append(want, tc.challenge)
			}
			want = append(want, "verb 3")
			if !slices.Equal(got, want) {
				t.Errorf("directives:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if b := blocks(out); !slices.Equal(b, tc.blocks) {
				t.Errorf("blocks %q, want %q", b, tc.blocks)
			}
			if ca := strings.TrimRight(string(tp.ca.CertPEM), "\n"); !strings.Contains(out, "<ca>\n"+ca+"\n</ca>") {
				t.Errorf("<ca> is not the CA:\n%s", out)
			}
			if !strings.Contains(out, "# Log in with your directory username and password.") {
				t.Error("the profile does not say the user logs in")
			}
			if asksForCert := strings.Contains(out, "# No client identity"); asksForCert != tc.withCert {
				t.Errorf("profile asks for a client certificate: %v, want %v", asksForCert, tc.withCert)
			}
		})
	}

	// A certificate-only endpoint's profile has none of it.
	p, err := New(tp.endpoint(config.ControlChannel{}), "udp", []uint16{443}, tp.now)
	if err != nil {
		t.Fatal(err)
	}
	out := string(p.Render())
	for _, d := range append(userPass, "static-challenge") {
		if strings.Contains(out, d) {
			t.Errorf("certificate-only profile has %q", d)
		}
	}
}

// TestNewRefusesChallengeText: a challenge text that cannot go on a profile line (an
// Endpoint not made by config.Load) is an error naming the key, not a broken profile.
func TestNewRefusesChallengeText(t *testing.T) {
	tp := newPKI(t)
	ep := tp.directoryEndpoint(true, &config.MFA{Challenge: config.ChallengeStatic, ChallengeText: "Code\nremote evil.example.com"})
	_, err := New(ep, "udp", []uint16{443}, tp.now)
	var ve *config.ValidationError
	if !errors.As(err, &ve) || ve.Path != "authentication.mfa.challenge_text" {
		t.Errorf("New = %v, want a *config.ValidationError for authentication.mfa.challenge_text", err)
	}
}

// TestServerRootPEMDirectoryOnly: without client_root_ca_file the profile's CA must come from
// the server certificate file, and the error says so when it is not there.
func TestServerRootPEMDirectoryOnly(t *testing.T) {
	tp := newPKI(t)
	ep := tp.directoryEndpoint(false, nil)
	ep.Server = tp.server // the leaf alone
	_, err := New(ep, "udp", []uint16{443}, tp.now)
	var ve *config.ValidationError
	if !errors.As(err, &ve) || ve.Path != "server_certificate.cert_file" || !strings.Contains(err.Error(), "the endpoint has no client_root_ca_file") {
		t.Errorf("New = %v, want an error naming server_certificate.cert_file that says there is no client_root_ca_file", err)
	}
}

// TestNewFederated: a federated endpoint's profile asks for a username and password, forgets
// them once a token is pushed and answers the CRV1 login notice at the console; it never has
// static-challenge (not even with an MFA block, which config refuses with federated but an
// Endpoint made by hand may have), and without certificate authentication no certificate.
func TestNewFederated(t *testing.T) {
	tp := newPKI(t)
	for _, tc := range []struct {
		name     string
		withCert bool
	}{{"federated only", false}, {"federated and certificate", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ep := tp.directoryEndpoint(tc.withCert, &config.MFA{Challenge: config.ChallengeStatic, ChallengeText: "Code"})
			ep.Config.Authentication.Directory = nil
			ep.Config.Authentication.Federated = &config.FederatedAuthentication{OIDC: &config.OIDCAuthentication{Issuer: "https://idp.example.com"}}
			p, err := New(ep, "tcp", []uint16{443}, tp.now)
			if err != nil {
				t.Fatal(err)
			}
			out := string(p.Render())
			want := []string{
				"client", "dev tun", "proto tcp", "remote vpn.example.com 443",
				"resolv-retry infinite", "nobind", "persist-key", "persist-tun", "remote-cert-tls server",
				"verify-x509-name vpn.example.com name", "cipher AES-256-GCM", "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
				"reneg-sec 0", "auth-user-pass", "auth-nocache", "auth-retry interact", "verb 3",
			}
			if got := directives(out); !slices.Equal(got, want) {
				t.Errorf("directives:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if b := blocks(out); !slices.Equal(b, []string{"ca", "tls-crypt"}) {
				t.Errorf("blocks %q, want ca and tls-crypt", b)
			}
			if !strings.Contains(out, "# Single sign-on:") || strings.Contains(out, "directory username") {
				t.Errorf("the profile's comment does not explain the single sign-on login:\n%s", out)
			}
			if asksForCert := strings.Contains(out, "# No client identity"); asksForCert != tc.withCert {
				t.Errorf("profile asks for a client certificate: %v, want %v", asksForCert, tc.withCert)
			}
		})
	}
}
