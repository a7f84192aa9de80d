// Package pkitest makes the certificate hierarchies that cvpn's own PKI does not issue, for
// tests: a root CA that may sign CA certificates, intermediate CAs under it, and a CA that
// claims another CA's name with a key of its own. Clients of any of them are issued with
// pki.IssueClient as usual.
//
// It is for tests only; nothing in the product imports it.
package pkitest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"

	"github.com/cvpn/cvpn/pki"
)

// Root returns a self-signed root CA valid from an hour before now for validity, that may sign
// two levels of CAs below it.
func Root(commonName string, validity time.Duration, now time.Time) (*pki.Identity, error) {
	return newCA(nil, commonName, 2, validity, now)
}

// Intermediate returns a CA signed by parent, valid from an hour before now for validity, that
// may sign leaf certificates only.
func Intermediate(parent *pki.Identity, commonName string, validity time.Duration, now time.Time) (*pki.Identity, error) {
	if parent == nil {
		return nil, fmt.Errorf("pkitest: intermediate %q: no parent", commonName)
	}
	return newCA(parent, commonName, 0, validity, now)
}

// Impostor returns a self-signed CA with the same subject as ca but a key of its own: what
// it signs carries ca's name as its issuer, and must not pass for ca's.
func Impostor(ca *pki.Identity, validity time.Duration, now time.Time) (*pki.Identity, error) {
	id, err := newCA(nil, ca.Cert.Subject.CommonName, 0, validity, now)
	if err != nil {
		return nil, err
	}
	if string(id.Cert.RawSubject) != string(ca.Cert.RawSubject) {
		return nil, fmt.Errorf("pkitest: impostor of %q: subjects differ", ca.Cert.Subject.CommonName)
	}
	return id, nil
}

func newCA(parent *pki.Identity, commonName string, maxPathLen int, validity time.Duration, now time.Time) (*pki.Identity, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
	}
	parentCert, signer := tmpl, crypto.Signer(key)
	if parent != nil {
		parentCert, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("pkitest: CA %q: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &pki.Identity{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}
