package pki

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"slices"
	"time"
)

// CRLSet is the CRLs of one CRL file, each verified against its issuer among a CA bundle
// (client_root_ca_file), together with that bundle, so that a certificate is checked against
// the CRL of its own issuer and every CA certificate above it against the CRL of its issuer in
// turn. That is what OpenVPN's crl-verify does: it loads every CRL of the file and sets
// X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL (backend_tls_ctx_reload_crl in
// src/openvpn/ssl_openssl.c), so OpenSSL checks each certificate of the chain and refuses one
// whose issuer has no current CRL.
//
// A CRLSet is immutable. A nil *CRLSet revokes nothing and refuses nothing.
type CRLSet struct {
	// PEM is every CRL of the set as "X509 CRL" blocks, in file order.
	PEM []byte

	crls []*CRL              // in file order
	cas  []*x509.Certificate // the bundle
	byCA []*CRL              // byCA[i] is the CRL cas[i] signed; nil when the file holds none
	// parent[i] is the index of the CA that signed cas[i], or -1 when cas[i] is a trust anchor:
	// self-signed, or signed by a CA outside the bundle.
	parent []int
}

// maxChain bounds how many CA certificates above a certificate are walked: more than any real
// PKI has, and it ends a cycle of cross-signed CAs.
const maxChain = 8

// NewCRLSet checks each of crls against cas at now and returns them as a set: each CRL must be
// signed by a CA of cas whose subject is the CRL's issuer (RFC 5280 section 6.3.3 (f)), be
// current (thisUpdate <= now <= nextUpdate), and be the only CRL of that CA. The first problem
// is the error, naming the CRL by its place in the file and its issuer; it wraps
// ErrNotIssuedBy, ErrCRLNotYetValid or ErrCRLExpired.
func NewCRLSet(crls []*CRL, cas []*x509.Certificate, now time.Time) (*CRLSet, error) {
	if len(crls) == 0 {
		return nil, fmt.Errorf("pki: %w", ErrNoCRL)
	}
	s := &CRLSet{crls: slices.Clone(crls), cas: slices.Clone(cas), byCA: make([]*CRL, len(cas)), parent: make([]int, len(cas))}
	for i, ca := range s.cas {
		s.parent[i] = -1
		if !bytes.Equal(ca.RawSubject, ca.RawIssuer) || ca.CheckSignatureFrom(ca) != nil {
			s.parent[i] = slices.IndexFunc(s.cas, func(p *x509.Certificate) bool {
				return bytes.Equal(p.RawSubject, ca.RawIssuer) && ca.CheckSignatureFrom(p) == nil
			})
		}
	}
	for n, c := range crls {
		what := fmt.Sprintf("CRL %d of %d (issuer %q, number %v)", n+1, len(crls), c.List.Issuer.CommonName, c.List.Number)
		i := slices.IndexFunc(cas, func(ca *x509.Certificate) bool {
			return bytes.Equal(ca.RawSubject, c.List.RawIssuer) && c.List.CheckSignatureFrom(ca) == nil
		})
		switch {
		case i < 0:
			return nil, fmt.Errorf("pki: %s: %w any CA of the bundle", what, ErrNotIssuedBy)
		case s.byCA[i] != nil:
			return nil, fmt.Errorf("pki: %s: the file holds another CRL of the same CA (number %v); keep only the newest",
				what, s.byCA[i].List.Number)
		}
		if err := c.checkTime(now); err != nil {
			return nil, fmt.Errorf("pki: %s: %w", what, err)
		}
		s.byCA[i] = c
		s.PEM = append(s.PEM, c.PEM...)
	}
	return s, nil
}

// LoadCRLSet reads a CRL file holding one or more CRLs and checks them against cas at now
// (NewCRLSet). Errors name the file.
func LoadCRLSet(file string, cas []*x509.Certificate, now time.Time) (*CRLSet, error) {
	crls, err := LoadCRLs(file)
	if err != nil {
		return nil, err
	}
	s, err := NewCRLSet(crls, cas, now)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return s, nil
}

// CRLs returns the set's CRLs in file order.
func (s *CRLSet) CRLs() []*CRL {
	if s == nil {
		return nil
	}
	return slices.Clone(s.crls)
}

// Issuer returns the CA of the bundle that signed c, a CRL of the set; nil for another CRL.
func (s *CRLSet) Issuer(c *CRL) *x509.Certificate {
	if s == nil {
		return nil
	}
	if i := slices.Index(s.byCA, c); i >= 0 && c != nil {
		return s.cas[i]
	}
	return nil
}

// Of returns the CRL that ca signed, or nil when the set holds none.
func (s *CRLSet) Of(ca *x509.Certificate) *CRL {
	if s == nil {
		return nil
	}
	if i := slices.IndexFunc(s.cas, ca.Equal); i >= 0 {
		return s.byCA[i]
	}
	return nil
}

// Uncovered returns the CAs of the bundle, valid at now, of which the set holds no CRL: every
// certificate they issued (CA certificates too) is refused by Check, as OpenVPN refuses them.
func (s *CRLSet) Uncovered(now time.Time) []*x509.Certificate {
	if s == nil {
		return nil
	}
	var out []*x509.Certificate
	for i, ca := range s.cas {
		if s.byCA[i] == nil && CheckValidity(ca, now) == nil {
			out = append(out, ca)
		}
	}
	return out
}

// Len returns the number of revoked certificates the set's CRLs list.
func (s *CRLSet) Len() int {
	if s == nil {
		return 0
	}
	n := 0
	for _, c := range s.crls {
		n += c.Len()
	}
	return n
}

// Check returns nil when cert may be admitted at now, or why not. Walking up from cert through
// the bundle (up to a self-signed root, or a CA of the bundle whose issuer is not in it, which
// is a trust anchor and not checked itself, RFC 5280 section 6.1), each certificate must have
// its issuer in the bundle (ErrNoIssuerCRL otherwise: no CRL in the set could speak for it),
// that issuer must have a CRL in the set (ErrNoIssuerCRL), the CRL must not list it
// (ErrRevoked) and must be current at now (ErrCRLNotYetValid, ErrCRLExpired): an expired CRL
// refuses everything its CA issued, as OpenSSL's X509_V_ERR_CRL_HAS_EXPIRED does in OpenVPN.
// Check does not authenticate cert: it is for a certificate a TLS handshake verified against
// the bundle (issuerOf says how its issuer is found).
func (s *CRLSet) Check(cert *x509.Certificate, now time.Time) error {
	if s == nil || cert == nil {
		return nil
	}
	i := s.issuerOf(cert)
	if i < 0 {
		return fmt.Errorf("%w %q: that CA is not in the bundle the CRLs are checked against", ErrNoIssuerCRL, cert.Issuer.CommonName)
	}
	for c, depth := cert, 0; i >= 0; c, i, depth = s.cas[i], s.parent[i], depth+1 {
		if depth > maxChain {
			return fmt.Errorf("%w: more than %d CAs above the certificate", ErrNoIssuerCRL, maxChain)
		}
		what := "it"
		if depth > 0 {
			what = fmt.Sprintf("its issuing CA %q", c.Subject.CommonName)
		}
		ca, crl := s.cas[i], s.byCA[i]
		if crl == nil {
			return fmt.Errorf("%w %q: the CRL file holds none, so whether %s is revoked is unknown", ErrNoIssuerCRL, ca.Subject.CommonName, what)
		}
		if at, ok := crl.revokedAt(c); ok {
			return fmt.Errorf("%s is %w (on %s, by the CRL of %q)", what, ErrRevoked, at.UTC().Format(time.RFC3339), ca.Subject.CommonName)
		}
		if err := crl.checkTime(now); err != nil {
			return fmt.Errorf("the CRL of %q (number %v): %w", ca.Subject.CommonName, crl.List.Number, err)
		}
	}
	return nil
}

// IsRevoked reports whether the set lists cert or a CA certificate above it (the first half of
// Check, whatever the time and whatever CRLs are missing). A nil set revokes nothing.
func (s *CRLSet) IsRevoked(cert *x509.Certificate) bool {
	_, ok := s.RevokedAt(cert)
	return ok
}

// RevokedAt returns when cert, or the first CA certificate above it that is listed, was
// revoked, if the set lists either.
func (s *CRLSet) RevokedAt(cert *x509.Certificate) (time.Time, bool) {
	if s == nil || cert == nil {
		return time.Time{}, false
	}
	i := s.issuerOf(cert)
	for c, depth := cert, 0; i >= 0 && depth <= maxChain; c, i, depth = s.cas[i], s.parent[i], depth+1 {
		if at, ok := s.byCA[i].revokedAt(c); ok {
			return at, true
		}
	}
	return time.Time{}, false
}

// issuerOf returns the index in the bundle of the CA that issued c, or -1: the one CA whose
// subject is c's issuer and, when both carry one, whose subject key identifier is c's authority
// key identifier (RFC 5280 section 4.2.1.1); only when that does not single out one CA are
// signatures checked. A handshake has verified c's signature against the bundle already, and
// the check costs as much as the rest of the lookup a thousand times over; the CA's own
// certificates were verified when the set was made.
func (s *CRLSet) issuerOf(c *x509.Certificate) int {
	found, n := -1, 0
	for i, ca := range s.cas {
		if bytes.Equal(ca.RawSubject, c.RawIssuer) &&
			(len(c.AuthorityKeyId) == 0 || len(ca.SubjectKeyId) == 0 || bytes.Equal(ca.SubjectKeyId, c.AuthorityKeyId)) {
			found, n = i, n+1
		}
	}
	if n == 1 {
		return found
	}
	return slices.IndexFunc(s.cas, func(ca *x509.Certificate) bool {
		return bytes.Equal(ca.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(ca) == nil
	})
}

// checkTime reports whether c is current at now (thisUpdate <= now <= nextUpdate; a CRL
// without nextUpdate does not expire). Errors wrap ErrCRLNotYetValid or ErrCRLExpired; the
// caller names the CRL.
func (c *CRL) checkTime(now time.Time) error {
	if now.Before(c.List.ThisUpdate) {
		return fmt.Errorf("%w until %s", ErrCRLNotYetValid, c.List.ThisUpdate.UTC().Format(time.RFC3339))
	}
	if !c.List.NextUpdate.IsZero() && now.After(c.List.NextUpdate) {
		return fmt.Errorf("%w on %s (its next update)", ErrCRLExpired, c.List.NextUpdate.UTC().Format(time.RFC3339))
	}
	return nil
}
