package pki

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// crlBackdate is how far before now a new CRL's thisUpdate is set, so a
// server whose clock runs a little behind the signer's does not find the
// CRL not yet valid.
const crlBackdate = 5 * time.Minute

// CRL is a certificate revocation list (RFC 5280 section 5) with its PEM
// form ("X509 CRL" block, as openssl and OpenVPN's crl-verify read it).
//
// A CRL made or loaded by this package is immutable; Revoke and RefreshCRL
// return a new one. A nil *CRL revokes nothing.
type CRL struct {
	List *x509.RevocationList
	PEM  []byte
	// revoked maps serial.String() to the revocation time, for IsRevoked.
	revoked map[string]time.Time
}

// NewCRL creates an empty CRL with CRL number 1, signed by ca, valid from
// now for validity (its nextUpdate). OpenVPN servers refuse every client once
// nextUpdate has passed, so a CRL must be re-signed (RefreshCRL) before then.
func NewCRL(ca *Identity, now time.Time, validity time.Duration) (*CRL, error) {
	c, err := signCRL(ca, nil, big.NewInt(1), now, validity)
	if err != nil {
		return nil, fmt.Errorf("pki: new CRL: %w", err)
	}
	return c, nil
}

// Revoke returns a CRL that adds cert, revoked at now, to the entries of
// prev, with the next CRL number, signed by ca and valid for validity. prev
// must be signed by ca; a nil prev starts a new list. cert must be issued by
// ca. Revoking a certificate twice wraps ErrAlreadyRevoked.
func Revoke(ca *Identity, prev *CRL, cert *x509.Certificate, now time.Time, validity time.Duration) (*CRL, error) {
	if cert == nil {
		return nil, errors.New("pki: revoke: no certificate")
	}
	what := fmt.Sprintf("revoke %q (serial %X)", cert.Subject.CommonName, cert.SerialNumber)
	if ca == nil || ca.Cert == nil {
		return nil, fmt.Errorf("pki: %s: no issuing CA", what)
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		return nil, fmt.Errorf("pki: %s: %w %q: %v", what, ErrNotIssuedBy, ca.Cert.Subject.CommonName, err)
	}
	if at, ok := prev.revokedAt(cert); ok {
		return nil, fmt.Errorf("pki: %s: %w on %s", what, ErrAlreadyRevoked, at.UTC().Format(time.RFC3339))
	}
	var entries []x509.RevocationListEntry
	number := big.NewInt(1)
	if prev != nil {
		if err := prev.List.CheckSignatureFrom(ca.Cert); err != nil {
			return nil, fmt.Errorf("pki: %s: the current CRL is %w %q: %v", what, ErrNotIssuedBy, ca.Cert.Subject.CommonName, err)
		}
		entries = slices.Clone(prev.List.RevokedCertificateEntries)
		number = nextNumber(prev)
	}
	entries = append(entries, x509.RevocationListEntry{SerialNumber: cert.SerialNumber, RevocationTime: now.UTC()})
	c, err := signCRL(ca, entries, number, now, validity)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", what, err)
	}
	return c, nil
}

// RefreshCRL re-signs prev's entries with the next CRL number and a new
// validity period, to keep a CRL from expiring when nothing was revoked.
func RefreshCRL(ca *Identity, prev *CRL, now time.Time, validity time.Duration) (*CRL, error) {
	if prev == nil {
		return nil, errors.New("pki: refresh CRL: no CRL to refresh")
	}
	if ca == nil || ca.Cert == nil {
		return nil, errors.New("pki: refresh CRL: no issuing CA")
	}
	if err := prev.List.CheckSignatureFrom(ca.Cert); err != nil {
		return nil, fmt.Errorf("pki: refresh CRL: it is %w %q: %v", ErrNotIssuedBy, ca.Cert.Subject.CommonName, err)
	}
	c, err := signCRL(ca, slices.Clone(prev.List.RevokedCertificateEntries), nextNumber(prev), now, validity)
	if err != nil {
		return nil, fmt.Errorf("pki: refresh CRL: %w", err)
	}
	return c, nil
}

func nextNumber(prev *CRL) *big.Int {
	if prev.List.Number == nil {
		return big.NewInt(1)
	}
	return new(big.Int).Add(prev.List.Number, big.NewInt(1))
}

func signCRL(ca *Identity, entries []x509.RevocationListEntry, number *big.Int, now time.Time, validity time.Duration) (*CRL, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("issuing CA: missing certificate or key")
	}
	if err := checkCA(ca.Cert); err != nil {
		return nil, fmt.Errorf("issuing CA %q: %w", ca.Cert.Subject.CommonName, err)
	}
	if ca.Cert.KeyUsage != 0 && ca.Cert.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return nil, fmt.Errorf("issuing CA %q: %w: key usage lacks cRLSign", ca.Cert.Subject.CommonName, ErrNotCA)
	}
	if !publicKeysEqual(ca.Cert.PublicKey, ca.Key.Public()) {
		return nil, fmt.Errorf("issuing CA %q: %w", ca.Cert.Subject.CommonName, ErrKeyMismatch)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("validity %v is not positive", validity)
	}
	tmpl := &x509.RevocationList{
		SignatureAlgorithm:        signatureAlgorithm(ca.Key),
		RevokedCertificateEntries: entries,
		Number:                    number,
		ThisUpdate:                now.Add(-crlBackdate).UTC(),
		NextUpdate:                now.Add(validity).UTC(),
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign CRL: %w", err)
	}
	return parseCRLDER(der)
}

func parseCRLDER(der []byte) (*CRL, error) {
	list, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("parse CRL: %w", err)
	}
	c := &CRL{
		List:    list,
		PEM:     pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}),
		revoked: make(map[string]time.Time, len(list.RevokedCertificateEntries)),
	}
	for _, e := range list.RevokedCertificateEntries {
		if e.SerialNumber != nil {
			c.revoked[e.SerialNumber.String()] = e.RevocationTime
		}
	}
	return c, nil
}

// ParseCRL parses a file holding exactly one CRL, in PEM ("X509 CRL" block) or DER form.
func ParseCRL(data []byte) (*CRL, error) {
	crls, err := ParseCRLs(data)
	if err != nil {
		return nil, err
	}
	if len(crls) != 1 {
		return nil, fmt.Errorf("holds %d CRLs, want one", len(crls))
	}
	return crls[0], nil
}

// ParseCRLs parses every CRL in data: each "X509 CRL" PEM block in order, the way OpenVPN's
// crl-verify reads a CRL file (one CRL per issuing CA, intermediates included:
// backend_tls_ctx_reload_crl in src/openvpn/ssl_openssl.c), or a single DER CRL. A file with
// no CRL, a PEM block of another type or a CRL that does not parse wraps ErrNoCRL. Delta CRLs
// (RFC 5280 section 5.2.4) are refused: OpenVPN does not ask OpenSSL to use them either, and a
// delta read as a complete list would drop every entry of its base.
func ParseCRLs(data []byte) ([]*CRL, error) {
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		c, err := parseCRLDER(data)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNoCRL, err)
		}
		return []*CRL{c}, checkComplete(c, 1)
	}
	var crls []*CRL
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			if bytes.Contains(rest, []byte("-----BEGIN")) {
				return nil, fmt.Errorf("%w: malformed PEM after CRL %d", ErrNoCRL, len(crls))
			}
			break
		}
		if b.Type != "X509 CRL" {
			return nil, fmt.Errorf("%w: found a %q PEM block", ErrNoCRL, b.Type)
		}
		c, err := parseCRLDER(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: CRL %d: %v", ErrNoCRL, len(crls)+1, err)
		}
		if err := checkComplete(c, len(crls)+1); err != nil {
			return nil, err
		}
		crls = append(crls, c)
	}
	if len(crls) == 0 {
		return nil, fmt.Errorf("%w: malformed PEM", ErrNoCRL)
	}
	return crls, nil
}

// oidDeltaCRLIndicator marks a delta CRL (RFC 5280 section 5.2.4).
var oidDeltaCRLIndicator = asn1.ObjectIdentifier{2, 5, 29, 27}

// checkComplete refuses a delta CRL, the n-th of its file.
func checkComplete(c *CRL, n int) error {
	for _, e := range c.List.Extensions {
		if e.Id.Equal(oidDeltaCRLIndicator) {
			return fmt.Errorf("%w: CRL %d (issuer %q) is a delta CRL; give the complete CRL", ErrNoCRL, n, c.List.Issuer.CommonName)
		}
	}
	return nil
}

// LoadCRL reads a CRL file holding one CRL (PEM or DER).
func LoadCRL(file string) (*CRL, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("pki: read CRL: %w", err)
	}
	c, err := ParseCRL(data)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", file, err)
	}
	return c, nil
}

// LoadCRLs reads a CRL file holding one or more CRLs (ParseCRLs).
func LoadCRLs(file string) ([]*CRL, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("pki: read CRL: %w", err)
	}
	crls, err := ParseCRLs(data)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", file, err)
	}
	return crls, nil
}

// WriteCRL replaces file with c's PEM (mode 0644) atomically: see WriteCRLs.
func WriteCRL(c *CRL, file string) error {
	if c == nil {
		return errors.New("pki: write CRL: empty CRL")
	}
	return WriteCRLs([]*CRL{c}, file)
}

// WriteCRLs replaces file with the PEM of crls, in order (mode 0644), atomically: it writes a
// temporary file in the same directory and renames it over file, so a server watching file
// never reads half a CRL.
func WriteCRLs(crls []*CRL, file string) (err error) {
	var data []byte
	for _, c := range crls {
		if c == nil || len(c.PEM) == 0 {
			return errors.New("pki: write CRL: empty CRL")
		}
		data = append(data, c.PEM...)
	}
	if len(data) == 0 {
		return errors.New("pki: write CRL: no CRL")
	}
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return fmt.Errorf("pki: write CRL: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("pki: write CRL: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("pki: write CRL: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("pki: write CRL: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pki: write CRL: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("pki: write CRL: %w", err)
	}
	return nil
}

// IsRevoked reports whether c lists cert: same issuer name and a listed
// serial number. A nil c revokes nothing.
func (c *CRL) IsRevoked(cert *x509.Certificate) bool {
	_, ok := c.revokedAt(cert)
	return ok
}

// RevokedAt returns when cert was revoked, if c lists it.
func (c *CRL) RevokedAt(cert *x509.Certificate) (time.Time, bool) { return c.revokedAt(cert) }

func (c *CRL) revokedAt(cert *x509.Certificate) (time.Time, bool) {
	if c == nil || cert == nil || cert.SerialNumber == nil || !bytes.Equal(cert.RawIssuer, c.List.RawIssuer) {
		return time.Time{}, false
	}
	at, ok := c.revoked[cert.SerialNumber.String()]
	return at, ok
}

// Len returns the number of revoked certificates c lists.
func (c *CRL) Len() int {
	if c == nil {
		return 0
	}
	return len(c.List.RevokedCertificateEntries)
}

// Verify checks that c is signed by one of cas and is current at now
// (thisUpdate <= now <= nextUpdate). It returns the signing CA. Errors wrap
// ErrNotIssuedBy, ErrCRLNotYetValid or ErrCRLExpired.
func (c *CRL) Verify(cas []*x509.Certificate, now time.Time) (*x509.Certificate, error) {
	var signer *x509.Certificate
	for _, ca := range cas {
		if bytes.Equal(ca.RawSubject, c.List.RawIssuer) && c.List.CheckSignatureFrom(ca) == nil {
			signer = ca
			break
		}
	}
	if signer == nil {
		return nil, fmt.Errorf("pki: CRL (issuer %q): %w any CA of the bundle", c.List.Issuer.CommonName, ErrNotIssuedBy)
	}
	if err := c.checkTime(now); err != nil {
		return nil, fmt.Errorf("pki: CRL number %v: %w", c.List.Number, err)
	}
	return signer, nil
}
