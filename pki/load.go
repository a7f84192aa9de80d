package pki

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// LoadIdentity reads a PEM certificate file (leaf first, optionally followed
// by chain certificates) and a PEM private key file, and checks that the key
// belongs to the certificate. The key may be PKCS#8 ("PRIVATE KEY"), SEC 1
// ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY"), so keys made by easy-rsa
// or openssl load too; encrypted keys are refused.
func LoadIdentity(certPEMFile, keyPEMFile string) (*Identity, error) {
	certData, err := os.ReadFile(certPEMFile)
	if err != nil {
		return nil, fmt.Errorf("pki: read certificate: %w", err)
	}
	certs, ders, err := parseCertificates(certData)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", certPEMFile, err)
	}
	keyData, err := os.ReadFile(keyPEMFile)
	if err != nil {
		return nil, fmt.Errorf("pki: read private key: %w", err)
	}
	key, err := parsePrivateKey(keyData)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", keyPEMFile, err)
	}
	leaf := certs[0]
	if !publicKeysEqual(leaf.PublicKey, key.Public()) {
		return nil, fmt.Errorf("pki: %s: %w %s (subject CN %q)", keyPEMFile, ErrKeyMismatch, certPEMFile, leaf.Subject.CommonName)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", keyPEMFile, err)
	}
	var certPEM []byte
	for _, der := range ders {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return &Identity{Cert: leaf, Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// LoadCertPool reads a PEM bundle of CA certificates, for verifying client
// certificates (client_root_ca_file). Every certificate in the file must be a
// CA: a leaf certificate there is almost always the wrong file, and trusting
// it would not do what the operator meant.
func LoadCertPool(caFile string) (*x509.CertPool, []*x509.Certificate, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: read CA bundle: %w", err)
	}
	certs, _, err := parseCertificates(data)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	for i, c := range certs {
		if err := checkCA(c); err != nil {
			return nil, nil, fmt.Errorf("pki: %s: certificate %d (subject CN %q): %w", caFile, i+1, c.Subject.CommonName, err)
		}
		pool.AddCert(c)
	}
	return pool, certs, nil
}

// parseCertificates returns every CERTIFICATE block in data, in order, with
// its DER. Other block types are skipped; a file with none is an error.
func parseCertificates(data []byte) ([]*x509.Certificate, [][]byte, error) {
	var (
		certs  []*x509.Certificate
		ders   [][]byte
		blocks int
	)
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks++
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
		ders = append(ders, b.Bytes)
	}
	switch {
	case blocks == 0:
		return nil, nil, ErrNotPEM
	case len(certs) == 0:
		return nil, nil, ErrNoCertificate
	}
	return certs, ders, nil
}

// parsePrivateKey returns the one private key in data.
func parsePrivateKey(data []byte) (crypto.Signer, error) {
	var (
		key     crypto.Signer
		blocks  int
		sawCert bool
	)
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks++
		var (
			parsed any
			err    error
		)
		switch b.Type {
		case "PRIVATE KEY":
			parsed, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			parsed, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			parsed, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("private key is encrypted; cvpn needs an unencrypted key (openssl pkey -in KEY -out KEY.plain)")
		case "CERTIFICATE":
			sawCert = true
			continue
		default:
			continue // EC PARAMETERS from `openssl ecparam -genkey`, and the like
		}
		if _, ok := b.Headers["Proc-Type"]; ok {
			return nil, errors.New("private key is encrypted; cvpn needs an unencrypted key (openssl pkey -in KEY -out KEY.plain)")
		}
		if err != nil {
			return nil, fmt.Errorf("%s block: %w", b.Type, err)
		}
		if key != nil {
			return nil, errors.New("file holds more than one private key")
		}
		signer, ok := parsed.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s block: key type %T cannot sign", b.Type, parsed)
		}
		key = signer
	}
	switch {
	case key != nil:
		return key, nil
	case blocks == 0:
		return nil, ErrNotPEM
	case sawCert:
		return nil, fmt.Errorf("%w: the file holds a certificate (are the certificate and key files swapped?)", ErrNoPrivateKey)
	}
	return nil, ErrNoPrivateKey
}
