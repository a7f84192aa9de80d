package pki

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"slices"
	"time"
)

// LoadCertificates reads a PEM file and returns its certificates in order.
// It fails when the file holds no CERTIFICATE block.
func LoadCertificates(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("pki: read certificate: %w", err)
	}
	certs, _, err := parseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", file, err)
	}
	return certs, nil
}

// LoadPrivateKey reads the one private key in a PEM file, in any of the
// forms LoadIdentity accepts.
func LoadPrivateKey(file string) (crypto.Signer, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("pki: read private key: %w", err)
	}
	key, err := parsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", file, err)
	}
	return key, nil
}

// LoadCA loads an issuing CA: the certificate in certFile (which may be a
// bundle of several CAs, as client_root_ca_file is after a CA rotation) whose
// public key is the key in keyFile. The certificate must be a CA.
func LoadCA(certFile, keyFile string) (*Identity, error) {
	certs, err := LoadCertificates(certFile)
	if err != nil {
		return nil, err
	}
	key, err := LoadPrivateKey(keyFile)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(certs, func(c *x509.Certificate) bool { return publicKeysEqual(c.PublicKey, key.Public()) })
	if i < 0 {
		return nil, fmt.Errorf("pki: %s: %w any certificate in %s", keyFile, ErrKeyMismatch, certFile)
	}
	ca := certs[i]
	if err := checkCA(ca); err != nil {
		return nil, fmt.Errorf("pki: %s: certificate %d (subject CN %q): %w", certFile, i+1, ca.Subject.CommonName, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", keyFile, err)
	}
	return &Identity{
		Cert:    ca,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}),
		KeyPEM:  keyPEM,
	}, nil
}

// CheckValidity reports whether cert is within its validity period at now.
// Errors wrap ErrExpired or ErrNotYetValid.
func CheckValidity(cert *x509.Certificate, now time.Time) error {
	switch {
	case now.After(cert.NotAfter):
		return fmt.Errorf("%w on %s (subject CN %q)", ErrExpired, cert.NotAfter.UTC().Format(time.RFC3339), cert.Subject.CommonName)
	case now.Before(cert.NotBefore):
		return fmt.Errorf("%w until %s (subject CN %q)", ErrNotYetValid, cert.NotBefore.UTC().Format(time.RFC3339), cert.Subject.CommonName)
	}
	return nil
}

// CheckServerCertificate reports whether cert can serve as the endpoint's
// certificate at now: within its validity period, and acceptable to an
// OpenVPN client with remote-cert-tls server, which demands a key usage
// extension and the serverAuth extended key usage. Errors wrap ErrExpired,
// ErrNotYetValid or ErrNoServerAuth.
func CheckServerCertificate(cert *x509.Certificate, now time.Time) error {
	if err := CheckValidity(cert, now); err != nil {
		return err
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		what := "no extended key usage"
		switch {
		case slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth):
			what = "extended key usage clientAuth: it is a client certificate"
		case cert.IsCA:
			what = "no serverAuth extended key usage: it is a CA certificate"
		case len(cert.ExtKeyUsage) > 0:
			what = "extended key usages without serverAuth"
		}
		return fmt.Errorf("%w (subject CN %q): %s; OpenVPN clients with remote-cert-tls server refuse it",
			ErrNoServerAuth, cert.Subject.CommonName, what)
	}
	if cert.KeyUsage == 0 {
		return fmt.Errorf("%w (subject CN %q): no key usage extension; OpenVPN clients with remote-cert-tls server refuse it",
			ErrNoServerAuth, cert.Subject.CommonName)
	}
	return nil
}
