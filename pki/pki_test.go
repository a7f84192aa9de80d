package pki

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// now is the injected clock for every test: certificates and TLS
// verification both use it, so nothing depends on the wall clock.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	year  = 365 * 24 * time.Hour
	month = 30 * 24 * time.Hour
)

func mustCA(t *testing.T, kt KeyType) *Identity {
	t.Helper()
	ca, err := NewCA("cvpn test CA", kt, 10*year, now)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func TestNewCA(t *testing.T) {
	for _, kt := range []KeyType{ECDSAP256, RSA2048, Ed25519} {
		t.Run(kt.String(), func(t *testing.T) {
			ca := mustCA(t, kt)
			c := ca.Cert
			if !c.IsCA || !c.BasicConstraintsValid {
				t.Errorf("IsCA=%v BasicConstraintsValid=%v, want both true", c.IsCA, c.BasicConstraintsValid)
			}
			if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign; c.KeyUsage != want {
				t.Errorf("KeyUsage = %v, want %v", c.KeyUsage, want)
			}
			if len(c.SubjectKeyId) == 0 {
				t.Error("SubjectKeyId is empty")
			}
			if c.MaxPathLen != 0 || !c.MaxPathLenZero {
				t.Errorf("MaxPathLen=%d MaxPathLenZero=%v, want 0 true", c.MaxPathLen, c.MaxPathLenZero)
			}
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
				t.Errorf("serial %v is not a positive number of at most 128 bits", c.SerialNumber)
			}
			want := map[KeyType]x509.SignatureAlgorithm{ECDSAP256: x509.ECDSAWithSHA256, RSA2048: x509.SHA256WithRSA, Ed25519: x509.PureEd25519}[kt]
			if c.SignatureAlgorithm != want {
				t.Errorf("SignatureAlgorithm = %v, want %v", c.SignatureAlgorithm, want)
			}
			if err := c.CheckSignatureFrom(c); err != nil {
				t.Errorf("self-signature: %v", err)
			}
			if !strings.Contains(string(ca.KeyPEM), "-----BEGIN PRIVATE KEY-----") {
				t.Errorf("KeyPEM is not PKCS#8:\n%s", ca.KeyPEM)
			}
		})
	}
}

func TestSerialsDiffer(t *testing.T) {
	ca := mustCA(t, ECDSAP256)
	a, err := IssueClient(ca, "a", nil, ECDSAP256, year, now)
	if err != nil {
		t.Fatal(err)
	}
	b, err := IssueClient(ca, "b", nil, ECDSAP256, year, now)
	if err != nil {
		t.Fatal(err)
	}
	if a.Cert.SerialNumber.Cmp(b.Cert.SerialNumber) == 0 {
		t.Errorf("two certificates share serial %v", a.Cert.SerialNumber)
	}
}

func TestServerCertVerifies(t *testing.T) {
	for _, kt := range []KeyType{ECDSAP256, RSA2048, Ed25519} {
		t.Run(kt.String(), func(t *testing.T) {
			ca := mustCA(t, kt)
			srv, err := IssueServer(ca, "vpn.example.com", []string{"vpn.example.com", "192.0.2.10"}, kt, year, now)
			if err != nil {
				t.Fatalf("IssueServer: %v", err)
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca.Cert)
			for _, name := range []string{"vpn.example.com", "192.0.2.10"} {
				_, err := srv.Cert.Verify(x509.VerifyOptions{
					DNSName:     name,
					Roots:       roots,
					CurrentTime: now,
					KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				})
				if err != nil {
					t.Errorf("Verify for %s as serverAuth: %v", name, err)
				}
			}
			_, err = srv.Cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			if err == nil {
				t.Error("server certificate verified as clientAuth")
			}
			want := x509.KeyUsageDigitalSignature
			if kt == RSA2048 {
				want |= x509.KeyUsageKeyEncipherment
			}
			if srv.Cert.KeyUsage != want {
				t.Errorf("KeyUsage = %v, want %v", srv.Cert.KeyUsage, want)
			}
			if srv.Cert.IsCA {
				t.Error("server certificate is a CA")
			}
			if !slices.Equal(srv.Cert.AuthorityKeyId, ca.Cert.SubjectKeyId) {
				t.Error("AuthorityKeyId does not match the CA's SubjectKeyId")
			}
		})
	}
}

func TestClientCertAndGroups(t *testing.T) {
	ca := mustCA(t, ECDSAP256)
	groups := []string{"dev", "ops"}
	cl, err := IssueClient(ca, "alice", groups, ECDSAP256, year, now)
	if err != nil {
		t.Fatalf("IssueClient: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := cl.Cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("Verify as clientAuth: %v", err)
	}
	if got := Groups(cl.Cert); !slices.Equal(got, groups) {
		t.Errorf("Groups = %q, want %q", got, groups)
	}
	if cl.Cert.Subject.CommonName != "alice" {
		t.Errorf("CN = %q, want alice", cl.Cert.Subject.CommonName)
	}
	if cl.Cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v, want DigitalSignature", cl.Cert.KeyUsage)
	}
	// Groups returns a copy.
	Groups(cl.Cert)[0] = "x"
	if cl.Cert.Subject.OrganizationalUnit[0] != "dev" {
		t.Error("Groups returned the certificate's own slice")
	}
	if g := Groups(mustCA(t, ECDSAP256).Cert); g != nil {
		t.Errorf("Groups of a certificate without OU = %q, want nil", g)
	}
}

func TestIssueRejects(t *testing.T) {
	ca := mustCA(t, ECDSAP256)
	leaf, err := IssueClient(ca, "leaf", nil, ECDSAP256, year, now)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		do   func() error
		want string
	}{
		{"empty CN", func() error { _, err := IssueClient(ca, "", nil, ECDSAP256, year, now); return err }, "client common name is empty"},
		{"control char in group", func() error { _, err := IssueClient(ca, "bob", []string{"a\nb"}, ECDSAP256, year, now); return err }, "control character"},
		{"duplicate group", func() error { _, err := IssueClient(ca, "bob", []string{"a", "a"}, ECDSAP256, year, now); return err }, `group "a" is listed twice`},
		{"leaf as CA", func() error { _, err := IssueClient(leaf, "bob", nil, ECDSAP256, year, now); return err }, "not a CA"},
		{"outlives CA", func() error { _, err := IssueServer(ca, "s", nil, ECDSAP256, 11*year, now); return err }, "after issuing CA"},
		{"CA expired", func() error { _, err := IssueServer(ca, "s", nil, ECDSAP256, month, now.Add(20*year)); return err }, "is not valid at"},
		{"bad SAN", func() error { _, err := IssueServer(ca, "s", []string{"bad name"}, ECDSAP256, year, now); return err }, `SAN "bad name"`},
		{"zero validity", func() error { _, err := NewCA("ca", ECDSAP256, 0, now); return err }, "not positive"},
		{"bad key type", func() error { _, err := NewCA("ca", KeyType(9), year, now); return err }, "unknown key type"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// writeAll writes identities under dir as name.crt/name.key.
func writeAll(t *testing.T, dir string, ids map[string]*Identity) {
	t.Helper()
	for name, id := range ids {
		if err := WriteIdentity(id, filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")); err != nil {
			t.Fatalf("WriteIdentity %s: %v", name, err)
		}
	}
}

// handshake runs a TLS handshake over net.Pipe between a server that
// requires a client certificate from clientCAs and a client presenting
// client. It returns the server's error (the side that judges the client).
func handshake(t *testing.T, server, client *Identity, clientCAs, serverRoots *x509.CertPool) error {
	t.Helper()
	sc, err := server.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := client.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	clock := func() time.Time { return now }
	sConn, cConn := net.Pipe()
	defer sConn.Close()
	defer cConn.Close()
	deadline := time.Now().Add(10 * time.Second)
	sConn.SetDeadline(deadline)
	cConn.SetDeadline(deadline)

	srv := tls.Server(sConn, &tls.Config{
		Certificates: []tls.Certificate{sc},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
		Time:         clock,
	})
	cli := tls.Client(cConn, &tls.Config{
		Certificates: []tls.Certificate{cc},
		RootCAs:      serverRoots,
		ServerName:   "vpn.example.com",
		Time:         clock,
	})
	clientErr := make(chan error, 1)
	go func() {
		err := cli.Handshake()
		if err == nil {
			// In TLS 1.3 the client finishes before the server has judged
			// its certificate; read the server's reply (or its alert).
			buf := make([]byte, 2)
			_, err = cli.Read(buf)
		}
		clientErr <- err
	}()
	serverErr := srv.Handshake()
	if serverErr == nil {
		if _, err := srv.Write([]byte("ok")); err != nil {
			t.Fatalf("server write: %v", err)
		}
	} else {
		sConn.Close()
	}
	cerr := <-clientErr
	if serverErr == nil && cerr != nil {
		t.Fatalf("server accepted but client failed: %v", cerr)
	}
	return serverErr
}

func TestTLSHandshake(t *testing.T) {
	for _, kt := range []KeyType{ECDSAP256, RSA2048, Ed25519} {
		t.Run(kt.String(), func(t *testing.T) {
			dir := t.TempDir()
			ca := mustCA(t, kt)
			otherCA := mustCA(t, kt)
			srv, err := IssueServer(ca, "vpn.example.com", []string{"vpn.example.com"}, kt, year, now)
			if err != nil {
				t.Fatal(err)
			}
			alice, err := IssueClient(ca, "alice", []string{"dev"}, kt, year, now)
			if err != nil {
				t.Fatal(err)
			}
			mallory, err := IssueClient(otherCA, "mallory", []string{"dev"}, kt, year, now)
			if err != nil {
				t.Fatal(err)
			}
			writeAll(t, dir, map[string]*Identity{"ca": ca, "server": srv, "alice": alice})

			// Load back from disk, as the endpoint does.
			clientCAs, certs, err := LoadCertPool(filepath.Join(dir, "ca.crt"))
			if err != nil {
				t.Fatalf("LoadCertPool: %v", err)
			}
			if len(certs) != 1 || !certs[0].Equal(ca.Cert) {
				t.Fatalf("LoadCertPool returned %d certificates, want the CA", len(certs))
			}
			loadedSrv, err := LoadIdentity(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
			if err != nil {
				t.Fatalf("LoadIdentity server: %v", err)
			}
			loadedAlice, err := LoadIdentity(filepath.Join(dir, "alice.crt"), filepath.Join(dir, "alice.key"))
			if err != nil {
				t.Fatalf("LoadIdentity alice: %v", err)
			}
			serverRoots := x509.NewCertPool()
			serverRoots.AddCert(ca.Cert)

			if err := handshake(t, loadedSrv, loadedAlice, clientCAs, serverRoots); err != nil {
				t.Errorf("handshake with a client of the same CA: %v", err)
			}
			if err := handshake(t, loadedSrv, mallory, clientCAs, serverRoots); err == nil {
				t.Error("handshake with a client of another CA succeeded")
			}
			// A server certificate is not a client certificate.
			if err := handshake(t, loadedSrv, loadedSrv, clientCAs, serverRoots); err == nil {
				t.Error("handshake with a server certificate as client succeeded")
			}
		})
	}
}

func TestWriteIdentityModes(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, ECDSAP256)
	cert, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := WriteIdentity(ca, cert, key); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]fs.FileMode{key: 0o600, cert: 0o644} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got&^want != 0 || (f == cert && got != want) {
			t.Errorf("%s mode = %v, want %v", filepath.Base(f), got, want)
		}
	}
	fi, _ := os.Stat(key)
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("key file mode %v is readable by group or others", fi.Mode().Perm())
	}
	// A second write must not clobber the key.
	other := mustCA(t, ECDSAP256)
	if err := WriteIdentity(other, cert, key); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second WriteIdentity err = %v, want fs.ErrExist", err)
	}
	got, err := LoadIdentity(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Cert.Equal(ca.Cert) {
		t.Error("files were overwritten")
	}
}

func TestLoadIdentityErrors(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, ECDSAP256)
	srv, err := IssueServer(ca, "vpn.example.com", nil, ECDSAP256, year, now)
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, dir, map[string]*Identity{"ca": ca, "server": srv})
	p := func(name string) string { return filepath.Join(dir, name) }
	write := func(name, data string) string {
		if err := os.WriteFile(p(name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p(name)
	}
	tests := []struct {
		name      string
		cert, key string
		want      []string
		sentinel  error
	}{
		{"mismatched key", p("server.crt"), p("ca.key"), []string{"ca.key", "does not match certificate", "server.crt", "vpn.example.com"}, ErrKeyMismatch},
		{"cert not PEM", write("junk.crt", "hello"), p("server.key"), []string{"junk.crt", "not PEM"}, ErrNotPEM},
		{"cert file holds a key", p("server.key"), p("server.key"), []string{"server.key", "no CERTIFICATE"}, ErrNoCertificate},
		{"swapped files", p("server.key"), p("server.crt"), []string{"server.key", "no CERTIFICATE"}, ErrNoCertificate},
		{"key file holds a cert", p("server.crt"), p("ca.crt"), []string{"ca.crt", "no private key", "swapped"}, ErrNoPrivateKey},
		{"key not PEM", p("server.crt"), write("junk.key", "hello"), []string{"junk.key", "not PEM"}, ErrNotPEM},
		{"corrupt cert", write("bad.crt", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), p("server.key"), []string{"bad.crt", "certificate 1"}, nil},
		{"encrypted key", p("server.crt"), write("enc.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"), []string{"enc.key", "encrypted"}, nil},
		{"missing cert", p("nope.crt"), p("server.key"), []string{"nope.crt", "no such file"}, fs.ErrNotExist},
		{"missing key", p("server.crt"), p("nope.key"), []string{"nope.key", "no such file"}, fs.ErrNotExist},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadIdentity(tc.cert, tc.key)
			if err == nil {
				t.Fatal("LoadIdentity succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %q, want it to contain %q", err, w)
				}
			}
			if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
				t.Errorf("err = %v, want errors.Is %v", err, tc.sentinel)
			}
		})
	}
}

func TestLoadIdentityLegacyKeyAndChain(t *testing.T) {
	// A key in SEC 1 form ("EC PRIVATE KEY", as openssl ecparam writes it,
	// after an EC PARAMETERS block) and a cert file with the CA appended.
	dir := t.TempDir()
	ca := mustCA(t, ECDSAP256)
	srv, err := IssueServer(ca, "vpn.example.com", nil, ECDSAP256, year, now)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(srv.Key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n" +
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	certFile, keyFile := filepath.Join(dir, "s.crt"), filepath.Join(dir, "s.key")
	if err := os.WriteFile(certFile, append(slices.Clone(srv.CertPEM), ca.CertPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte(keyPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	id, err := LoadIdentity(certFile, keyFile)
	if err != nil {
		t.Fatalf("LoadIdentity: %v", err)
	}
	if !id.Cert.Equal(srv.Cert) {
		t.Error("leaf is not the first certificate")
	}
	if !strings.HasPrefix(string(id.KeyPEM), "-----BEGIN PRIVATE KEY-----") {
		t.Errorf("KeyPEM not normalised to PKCS#8:\n%s", id.KeyPEM)
	}
	tc, err := id.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if len(tc.Certificate) != 2 {
		t.Errorf("TLS chain has %d certificates, want 2", len(tc.Certificate))
	}
}

func TestLoadCertPoolErrors(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, ECDSAP256)
	leaf, err := IssueClient(ca, "alice", nil, ECDSAP256, year, now)
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, dir, map[string]*Identity{"ca": ca, "alice": leaf})
	empty := filepath.Join(dir, "empty.crt")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		file     string
		sentinel error
		want     string
	}{
		{filepath.Join(dir, "alice.crt"), ErrNotCA, `alice.crt: certificate 1 (subject CN "alice"): certificate is not a CA`},
		{empty, ErrNotPEM, "empty.crt: not PEM"},
		{filepath.Join(dir, "ca.key"), ErrNoCertificate, "ca.key: no CERTIFICATE block"},
	}
	for _, tc := range tests {
		t.Run(filepath.Base(tc.file), func(t *testing.T) {
			_, _, err := LoadCertPool(tc.file)
			if !errors.Is(err, tc.sentinel) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %v containing %q", err, tc.sentinel, tc.want)
			}
		})
	}
}

func TestParseKeyType(t *testing.T) {
	for _, kt := range []KeyType{ECDSAP256, RSA2048, Ed25519} {
		got, err := ParseKeyType(kt.String())
		if err != nil || got != kt {
			t.Errorf("ParseKeyType(%q) = %v, %v", kt.String(), got, err)
		}
	}
	if _, err := ParseKeyType("dsa"); err == nil {
		t.Error("ParseKeyType(dsa) succeeded")
	}
}
