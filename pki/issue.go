package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// backdate is how far before now a new certificate's NotBefore is set, so a
// peer whose clock runs a little behind ours still accepts a certificate
// issued a moment ago.
const backdate = time.Hour

// maxNameLen is the X.520 upper bound for CommonName and
// OrganizationalUnitName (ub-common-name, ub-organizational-unit-name).
const maxNameLen = 64

// NewCA creates a self-signed CA valid from now (less a small backdate for
// clock skew) for validity. It may sign leaf certificates only (path length
// 0) and CRLs.
func NewCA(commonName string, kt KeyType, validity time.Duration, now time.Time) (*Identity, error) {
	if err := checkName("CA common name", commonName); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("pki: CA %q: validity %v is not positive", commonName, validity)
	}
	key, err := generateKey(kt)
	if err != nil {
		return nil, fmt.Errorf("pki: CA %q: %w", commonName, err)
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, fmt.Errorf("pki: CA %q: %w", commonName, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("pki: CA %q: %w", commonName, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid,
		SignatureAlgorithm:    signatureAlgorithm(key),
	}
	id, err := sign(tmpl, tmpl, key, key)
	if err != nil {
		return nil, fmt.Errorf("pki: CA %q: %w", commonName, err)
	}
	return id, nil
}

// IssueServer issues a certificate for the VPN endpoint, signed by ca. Each
// SAN is an IP address if it parses as one, otherwise a DNS name. The
// certificate carries extended key usage serverAuth, which OpenVPN clients
// check with `remote-cert-tls server`.
func IssueServer(ca *Identity, commonName string, sans []string, kt KeyType, validity time.Duration, now time.Time) (*Identity, error) {
	if err := checkName("server common name", commonName); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if kt == RSA2048 {
		// TLS 1.2 RSA key exchange needs keyEncipherment; some clients check.
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	for _, san := range sans {
		if ip, err := netip.ParseAddr(san); err == nil {
			if ip.Zone() != "" {
				return nil, fmt.Errorf("pki: server %q: SAN %q: an IP address SAN cannot have a zone", commonName, san)
			}
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
			continue
		}
		if err := checkDNSName(san); err != nil {
			return nil, fmt.Errorf("pki: server %q: SAN %q: %w", commonName, san, err)
		}
		tmpl.DNSNames = append(tmpl.DNSNames, san)
	}
	id, err := issue(ca, tmpl, kt, validity, now)
	if err != nil {
		return nil, fmt.Errorf("pki: server %q: %w", commonName, err)
	}
	return id, nil
}

// IssueClient issues a client certificate signed by ca. Each group becomes a
// Subject OU value (read back with Groups); authorization rules match on them.
// The certificate carries extended key usage clientAuth.
func IssueClient(ca *Identity, commonName string, groups []string, kt KeyType, validity time.Duration, now time.Time) (*Identity, error) {
	if err := checkName("client common name", commonName); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	for i, g := range groups {
		if err := checkName("group", g); err != nil {
			return nil, fmt.Errorf("pki: client %q: %w", commonName, err)
		}
		for _, prev := range groups[:i] {
			if prev == g {
				return nil, fmt.Errorf("pki: client %q: group %q is listed twice", commonName, g)
			}
		}
	}
	subject, err := clientSubject(commonName, groups)
	if err != nil {
		return nil, fmt.Errorf("pki: client %q: %w", commonName, err)
	}
	tmpl := &x509.Certificate{
		RawSubject:  subject,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	id, err := issue(ca, tmpl, kt, validity, now)
	if err != nil {
		return nil, fmt.Errorf("pki: client %q: %w", commonName, err)
	}
	return id, nil
}

// clientSubject encodes the Subject "OU=g1, OU=g2, ..., CN=commonName" with
// each OU in its own RDN, the way openssl and easy-rsa write several OUs.
// pkix.Name would put all OUs in one multi-valued RDN ("OU=g1+OU=g2"), which
// some DN matchers mishandle.
func clientSubject(commonName string, groups []string) ([]byte, error) {
	oidOU := asn1.ObjectIdentifier{2, 5, 4, 11}
	oidCN := asn1.ObjectIdentifier{2, 5, 4, 3}
	var rdns pkix.RDNSequence
	for _, g := range groups {
		rdns = append(rdns, pkix.RelativeDistinguishedNameSET{{Type: oidOU, Value: g}})
	}
	rdns = append(rdns, pkix.RelativeDistinguishedNameSET{{Type: oidCN, Value: commonName}})
	der, err := asn1.Marshal(rdns)
	if err != nil {
		return nil, fmt.Errorf("encode subject: %w", err)
	}
	return der, nil
}

// issue fills in the fields common to leaf certificates and signs tmpl with ca.
func issue(ca *Identity, tmpl *x509.Certificate, kt KeyType, validity time.Duration, now time.Time) (*Identity, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, fmt.Errorf("issuing CA: missing certificate or key")
	}
	if err := checkCA(ca.Cert); err != nil {
		return nil, fmt.Errorf("issuing CA %q: %w", ca.Cert.Subject.CommonName, err)
	}
	if !publicKeysEqual(ca.Cert.PublicKey, ca.Key.Public()) {
		return nil, fmt.Errorf("issuing CA %q: %w", ca.Cert.Subject.CommonName, ErrKeyMismatch)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("validity %v is not positive", validity)
	}
	notAfter := now.Add(validity)
	if now.Before(ca.Cert.NotBefore) || now.After(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("issuing CA %q is not valid at %s (valid %s to %s)",
			ca.Cert.Subject.CommonName, now.UTC().Format(time.RFC3339),
			ca.Cert.NotBefore.UTC().Format(time.RFC3339), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if notAfter.After(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("validity ends %s, after issuing CA %q expires %s; shorten the validity or renew the CA",
			notAfter.UTC().Format(time.RFC3339), ca.Cert.Subject.CommonName, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := generateKey(kt)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-backdate)
	tmpl.NotAfter = notAfter
	tmpl.BasicConstraintsValid = true
	tmpl.IsCA = false
	tmpl.SubjectKeyId = skid
	tmpl.SignatureAlgorithm = signatureAlgorithm(ca.Key)
	return sign(tmpl, ca.Cert, key, ca.Key)
}

// sign creates the certificate and assembles the Identity with its PEM forms.
func sign(tmpl, parent *x509.Certificate, key, signer crypto.Signer) (*Identity, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &Identity{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  keyPEM,
	}, nil
}

func generateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case ECDSAP256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate %s key: %w", kt, err)
		}
		return k, nil
	case RSA2048:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("generate %s key: %w", kt, err)
		}
		return k, nil
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate %s key: %w", kt, err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("generate key: unknown key type %v", kt)
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key as PKCS#8: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// signatureAlgorithm picks a SHA-256 signature for the signer's key type;
// for other key types (Ed25519 in a loaded CA) crypto/x509 chooses.
func signatureAlgorithm(signer crypto.Signer) x509.SignatureAlgorithm {
	switch signer.Public().(type) {
	case *ecdsa.PublicKey:
		return x509.ECDSAWithSHA256
	case *rsa.PublicKey:
		return x509.SHA256WithRSA
	case ed25519.PublicKey:
		return x509.PureEd25519
	}
	return x509.UnknownSignatureAlgorithm
}

// serialLimit is 2^128: serial numbers are 128 random bits (CA/Browser Forum
// asks for at least 64), which also keeps the DER encoding within the 20
// octets RFC 5280 4.1.2.2 allows.
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

func randomSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if n.Sign() > 0 { // RFC 5280: serial numbers are positive.
			return n, nil
		}
	}
}

// subjectKeyID is the truncated SHA-256 of the subjectPublicKey bit string
// (RFC 7093 section 2, method 1).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("subject key id: %w", err)
	}
	var info struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		return nil, fmt.Errorf("subject key id: %w", err)
	}
	sum := sha256.Sum256(info.PublicKey.Bytes)
	return sum[:20], nil
}

// checkCA reports whether cert may sign certificates.
func checkCA(cert *x509.Certificate) error {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return ErrNotCA
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%w: key usage lacks certSign", ErrNotCA)
	}
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

// checkName validates a CommonName or group (OU) value. Names end up in
// logs, status files and OpenVPN's X509 environment, so control characters
// are refused.
func checkName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", what)
	case len(s) > maxNameLen:
		return fmt.Errorf("%s %q is longer than %d bytes", what, s, maxNameLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s %q is not valid UTF-8", what, s)
	case strings.TrimSpace(s) != s:
		return fmt.Errorf("%s %q has leading or trailing space", what, s)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%s %q contains a control character", what, s)
		}
	}
	return nil
}

// checkDNSName accepts host names and a leading wildcard label.
func checkDNSName(s string) error {
	if s == "" {
		return fmt.Errorf("empty DNS name")
	}
	if len(s) > 253 {
		return fmt.Errorf("DNS name longer than 253 bytes")
	}
	for i, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "*" && i == 0 {
			continue
		}
		if label == "" || len(label) > 63 {
			return fmt.Errorf("not an IP address or DNS name: label %q is empty or longer than 63 bytes", label)
		}
		for _, c := range []byte(label) {
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return fmt.Errorf("not an IP address or DNS name: %q is not allowed in a DNS label", c)
			}
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("not an IP address or DNS name: label %q starts or ends with '-'", label)
		}
	}
	return nil
}
