package etcdlab

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// writeCertificates creates the test CA, the members' certificate and the client's, writes them
// under c.dir and builds c.clientTLS.
//
// The members share one certificate that carries both serverAuth and clientAuth: etcd's own
// gRPC gateway dials its member with the server certificate, and --client-cert-auth checks it
// like any client's. pki.IssueServer gives serverAuth only (what OpenVPN clients check), so the
// lab issues its own with crypto/x509.
func (c *Cluster) writeCertificates() error {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "etcdlab test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caCert, caPEM, err := sign(caTmpl, nil, caKey, caKey)
	if err != nil {
		return fmt.Errorf("CA: %w", err)
	}

	server := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "etcdlab member"},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, m := range c.members {
		server.IPAddresses = append(server.IPAddresses, m.host.AsSlice())
	}
	client := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "etcdlab client"},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}

	dir := filepath.Join(c.dir, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	c.caFile = filepath.Join(dir, "ca.pem")
	c.serverCertFile, c.serverKeyFile = filepath.Join(dir, "member.pem"), filepath.Join(dir, "member.key")
	c.certFile, c.keyFile = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
	if err := os.WriteFile(c.caFile, caPEM, 0o644); err != nil {
		return err
	}
	var clientCertPEM, clientKeyPEM []byte
	for _, leaf := range []struct {
		tmpl              *x509.Certificate
		certFile, keyFile string
		certPEM, keyPEM   *[]byte
	}{
		{server, c.serverCertFile, c.serverKeyFile, nil, nil},
		{client, c.certFile, c.keyFile, &clientCertPEM, &clientKeyPEM},
	} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		_, certPEM, err := sign(leaf.tmpl, caCert, key, caKey)
		if err != nil {
			return fmt.Errorf("%s: %w", leaf.tmpl.Subject.CommonName, err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		if err := os.WriteFile(leaf.certFile, certPEM, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(leaf.keyFile, keyPEM, 0o600); err != nil {
			return err
		}
		if leaf.certPEM != nil {
			*leaf.certPEM, *leaf.keyPEM = certPEM, keyPEM
		}
	}
	c.clientTLS, err = clientTLSConfig(caPEM, clientCertPEM, clientKeyPEM)
	return err
}

// sign creates tmpl signed by parent's key (self-signed when parent is nil).
func sign(tmpl, parent *x509.Certificate, key *ecdsa.PrivateKey, signer crypto.Signer) (*x509.Certificate, []byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
