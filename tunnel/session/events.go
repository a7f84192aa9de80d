package session

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"time"

	"github.com/cvpn/cvpn/tunnel/counters"
)

// Events hears what happens to sessions: the connection log, metrics and the admin API listen.
// Calls run on the session's goroutines and must not block (record, then return).
type Events interface {
	// Connected: a session was admitted and established.
	Connected(s Status)
	// Refused: an attempt to connect (or to renegotiate) was refused.
	Refused(a Attempt)
	// Disconnected: an established session ended; s carries its final counters.
	Disconnected(s Status, end End)
}

// Attempt is a refused attempt to connect.
type Attempt struct {
	ConnectionID string
	Time         time.Time
	Remote       netip.AddrPort
	Transport    string
	// CommonName and User are what is known of the client: the common name of the certificate
	// it presented (even a refused one), the username it gave.
	CommonName, User string
	// Code names the kind of refusal (a metric label); Reason says it in words.
	Code   RefusalCode
	Reason string
}

// RefusalCode is the kind of a refused attempt.
type RefusalCode string

// Refusal codes.
const (
	RefusedUnknownCA      RefusalCode = "unknown_ca"
	RefusedRevoked        RefusalCode = "revoked"
	RefusedExpired        RefusalCode = "certificate_expired"
	RefusedNoCertificate  RefusalCode = "no_certificate"
	RefusedCertificate    RefusalCode = "certificate_invalid"
	RefusedNoSharedCipher RefusalCode = "no_shared_cipher"
	RefusedPoolExhausted  RefusalCode = "pool_exhausted"
	RefusedByHook         RefusalCode = "refused"
	RefusedKeyMethod      RefusalCode = "key_method"
	RefusedIdentity       RefusalCode = "identity_changed"
)

// End says how and when an established session ended.
type End struct {
	Time   time.Time
	Reason string
}

// newConnectionID returns a connection id in AWS Client VPN's form: "cvpn-connection-" and 17
// hex digits.
func newConnectionID() string {
	var b [9]byte
	_, _ = rand.Read(b[:])
	return "cvpn-connection-" + hex.EncodeToString(b[:])[:17]
}

// status is the session's listing as it is now.
func (s *Session) status() Status {
	return Status{Info: s.info.Load(), Remote: s.link.Remote(), Traffic: s.peer.Traffic.Snapshot()}
}

// refused tells the listeners about a refused attempt.
func (s *Session) refused(code RefusalCode, reason string, cert *x509.Certificate, user string) {
	if len(s.m.cfg.Events) == 0 {
		return
	}
	a := Attempt{ConnectionID: s.connID, Time: s.m.cfg.Now(), Remote: s.link.Remote(), Transport: s.link.Proto(),
		User: user, Code: code, Reason: reason}
	if cert != nil {
		a.CommonName = cert.Subject.CommonName
	}
	for _, e := range s.m.cfg.Events {
		e.Refused(a)
	}
}

// certificateRefusal classifies a TLS handshake that failed over the client's certificate
// (missing, not from the client CA, expired, revoked), with the certificate when the client sent
// one. ok is false for a transport reason (timeout, garbage, a closed session).
func certificateRefusal(err error, state tls.ConnectionState) (code RefusalCode, cert *x509.Certificate, ok bool) {
	if len(state.PeerCertificates) > 0 {
		cert = state.PeerCertificates[0]
	}
	var verify *tls.CertificateVerificationError
	var revoked *revokedError
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &revoked):
		return RefusedRevoked, revoked.cert, true
	case errors.As(err, &unknown):
		return RefusedUnknownCA, leafOf(verify, err, cert), true
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return RefusedExpired, leafOf(verify, err, cert), true
	case errors.As(err, &verify):
		return RefusedCertificate, leafOf(verify, err, cert), true
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return RefusedNoCertificate, nil, true
	}
	return "", nil, false
}

// leafOf returns the client's certificate from a verification error, if it carries one.
func leafOf(verify *tls.CertificateVerificationError, err error, cert *x509.Certificate) *x509.Certificate {
	if errors.As(err, &verify) && len(verify.UnverifiedCertificates) > 0 {
		return verify.UnverifiedCertificates[0]
	}
	return cert
}

// countRefusal keeps the drop counters' view of refused handshakes.
func (m *Manager) countRefusal() { m.drops.Add(counters.TLSHandshake) }
