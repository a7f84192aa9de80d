package session

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"sync"
	"time"
)

// maxVerifiedChains bounds a chainCache: about 100 bytes an entry, 400 KiB in all.
const maxVerifiedChains = 4096

// chainCache verifies client certificate chains against one root pool (one settings snapshot)
// and remembers those that verified, keyed by the bytes of every certificate the client sent,
// so that a client that renegotiates (hourly by default) or reconnects with the same chain costs
// no signature check of its certificate by its CA (one ECDSA P-256 verification, a tenth of the
// server's CPU in a handshake). What a remembered chain skips is time-independent but for the
// validity periods, which are kept with it and checked at every use: a hit means x509 Verify
// would succeed now. Everything else stays per handshake: the client's proof that it holds the
// key (TLS CertificateVerify, checked by crypto/tls after this), revocation (verifyConnection,
// after this), and the hooks.
//
// Who can fill it: only chains that verify against the configured CAs are stored, so entries
// are certificates the endpoint's CAs issued (a stranger may present a copy of one, and fails at
// CertificateVerify). It holds at most maxVerifiedChains; a new entry beyond them evicts an
// arbitrary one. A reload with other CAs builds a new cache.
type chainCache struct {
	roots *x509.CertPool

	mu      sync.Mutex
	entries map[[sha256.Size]byte]validity
}

// validity is when a verified chain's certificates are all valid.
type validity struct{ notBefore, notAfter time.Time }

func newChainCache(roots *x509.CertPool) *chainCache {
	return &chainCache{roots: roots, entries: make(map[[sha256.Size]byte]validity)}
}

// verify checks that certs (the client's certificate first, then what it sent with it) chain to
// the roots for client authentication at now, as crypto/tls does with
// RequireAndVerifyClientCert. The error is x509's.
func (c *chainCache) verify(certs []*x509.Certificate, now time.Time) error {
	key := chainKey(certs)
	c.mu.Lock()
	v, ok := c.entries[key]
	c.mu.Unlock()
	if ok && !now.Before(v.notBefore) && !now.After(v.notAfter) {
		return nil
	}
	opts := x509.VerifyOptions{
		Roots:         c.roots,
		CurrentTime:   now,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, cert := range certs[1:] {
		opts.Intermediates.AddCert(cert)
	}
	chains, err := certs[0].Verify(opts)
	if err != nil {
		return err
	}
	// Any one verified chain will be built again and verify while all its certificates are
	// valid; keep the first one's period.
	v = validity{notBefore: chains[0][0].NotBefore, notAfter: chains[0][0].NotAfter}
	for _, cert := range chains[0][1:] {
		if cert.NotBefore.After(v.notBefore) {
			v.notBefore = cert.NotBefore
		}
		if cert.NotAfter.Before(v.notAfter) {
			v.notAfter = cert.NotAfter
		}
	}
	c.mu.Lock()
	if len(c.entries) >= maxVerifiedChains {
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[key] = v
	c.mu.Unlock()
	return nil
}

// chainKey is the SHA-256 of the certificates' DER, each after its length.
func chainKey(certs []*x509.Certificate) [sha256.Size]byte {
	h := sha256.New()
	var n [4]byte
	for _, cert := range certs {
		binary.BigEndian.PutUint32(n[:], uint32(len(cert.Raw)))
		h.Write(n[:])
		h.Write(cert.Raw)
	}
	var key [sha256.Size]byte
	h.Sum(key[:0])
	return key
}
