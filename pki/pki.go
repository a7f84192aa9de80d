// Package pki is cvpn's built-in certificate authority: it creates a CA,
// issues server and client certificates from it, revokes them with a CRL,
// and loads and writes PEM identities, CA bundles and CRLs with crypto/x509.
//
// It owns key generation, certificate templates (key usages, extended key
// usages, SANs, groups as Subject OU), CRL signing and lookup (NewCRL,
// Revoke, RefreshCRL, LoadCRL, CRL.IsRevoked), CRL files of several CRLs
// (one per issuing CA) checked against their issuers and a certificate's
// chain checked against them as OpenVPN's crl-verify does (LoadCRLSet,
// CRLSet.Check), the checks that make a loaded file fit for its role
// (CheckServerCertificate, LoadCertPool's CA check) and PEM file handling.
// It does not own certificate verification policy during a handshake (the
// control channel does that with the pool LoadCertPool returns and the CRL
// set LoadCRLSet returns), when a CRL is re-signed, or where files live on
// disk (cmd and endpoint decide).
//
// Conventions: ECDSA P-256 keys unless RSA-2048 or Ed25519 is asked for,
// SHA-256 signatures (Ed25519's own with an Ed25519 key), 128-bit random serial numbers, PKCS#8 private keys in PEM.
package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
)

// KeyType selects the key algorithm of a new identity.
type KeyType int

const (
	// ECDSAP256 is an ECDSA key on NIST P-256. It is the default: small,
	// fast, and accepted by every OpenVPN 2.4+ client.
	ECDSAP256 KeyType = iota
	// RSA2048 is a 2048-bit RSA key, for clients that cannot do ECDSA.
	RSA2048
	// Ed25519 is an Ed25519 key (RFC 8410). Signing and verifying cost about half of P-256's in
	// Go, so a server that does many handshakes spends less per handshake. OpenVPN 2.5+ built on
	// OpenSSL 1.1.1 or later accepts it in TLS 1.2 and 1.3; clients on mbed TLS (older OpenVPN
	// Connect builds) do not, so it is not the default.
	Ed25519
)

// String returns the name used in messages and flags.
func (kt KeyType) String() string {
	switch kt {
	case ECDSAP256:
		return "ecdsa-p256"
	case RSA2048:
		return "rsa2048"
	case Ed25519:
		return "ed25519"
	}
	return fmt.Sprintf("KeyType(%d)", int(kt))
}

// ParseKeyType maps the names String returns back to a KeyType, for flags.
func ParseKeyType(s string) (KeyType, error) {
	for _, kt := range []KeyType{ECDSAP256, RSA2048, Ed25519} {
		if s == kt.String() {
			return kt, nil
		}
	}
	return 0, fmt.Errorf("pki: unknown key type %q (want %s, %s or %s)", s, ECDSAP256, RSA2048, Ed25519)
}

// Identity is a certificate with its private key.
//
// Invariants for an Identity returned by this package: Key is the private key
// of Cert; CertPEM holds Cert as its first CERTIFICATE block, followed by any
// chain certificates that were in the loaded file; KeyPEM holds Key as one
// PKCS#8 "PRIVATE KEY" block.
type Identity struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// TLSCertificate returns the identity as a crypto/tls certificate, with the
// chain from CertPEM and Leaf set.
func (id *Identity) TLSCertificate() (tls.Certificate, error) {
	var chain [][]byte
	rest := id.CertPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			chain = append(chain, b.Bytes)
		}
	}
	if len(chain) == 0 {
		return tls.Certificate{}, fmt.Errorf("pki: identity %q: CertPEM: %w", id.Cert.Subject.CommonName, ErrNoCertificate)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: id.Key, Leaf: id.Cert}, nil
}

// Groups returns the group names carried in the certificate's Subject OU
// values, in certificate order. The result is a copy the caller may keep.
func Groups(cert *x509.Certificate) []string {
	if cert == nil || len(cert.Subject.OrganizationalUnit) == 0 {
		return nil
	}
	return slices.Clone(cert.Subject.OrganizationalUnit)
}
