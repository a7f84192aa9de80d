package pki

import "errors"

// Sentinel errors. Functions wrap them with the file or name that failed, so
// callers test with errors.Is and users read the wrapped message.
var (
	// ErrNotPEM means a file holds no PEM block at all.
	ErrNotPEM = errors.New("not PEM")
	// ErrNoCertificate means a file holds PEM but no CERTIFICATE block.
	ErrNoCertificate = errors.New("no CERTIFICATE block")
	// ErrNoPrivateKey means a file holds PEM but no private key block.
	ErrNoPrivateKey = errors.New("no private key block")
	// ErrKeyMismatch means a private key is not the key of the certificate
	// it was loaded or issued with.
	ErrKeyMismatch = errors.New("private key does not match certificate")
	// ErrNotCA means a certificate was used as a CA but is not one (no
	// basic constraints with cA=TRUE, or a key usage without certSign).
	ErrNotCA = errors.New("certificate is not a CA")
)

// Sentinel errors of revocation and certificate checks.
var (
	// ErrNoCRL means a file does not hold a parsable CRL.
	ErrNoCRL = errors.New("no X509 CRL")
	// ErrNotIssuedBy means a certificate or CRL is not signed by the CA it
	// was checked against.
	ErrNotIssuedBy = errors.New("not issued by")
	// ErrAlreadyRevoked means Revoke was asked to revoke a listed
	// certificate.
	ErrAlreadyRevoked = errors.New("already revoked")
	// ErrCRLExpired means a CRL's nextUpdate has passed.
	ErrCRLExpired = errors.New("CRL expired")
	// ErrCRLNotYetValid means a CRL's thisUpdate is in the future.
	ErrCRLNotYetValid = errors.New("CRL not valid")
	// ErrRevoked means a certificate, or a CA certificate above it, is listed in the CRL of its
	// issuer.
	ErrRevoked = errors.New("revoked")
	// ErrNoIssuerCRL means a certificate's issuer has no CRL in the set that checks it, so its
	// revocation status is unknown.
	ErrNoIssuerCRL = errors.New("no CRL of its issuer")
	// ErrExpired means a certificate's notAfter has passed.
	ErrExpired = errors.New("certificate expired")
	// ErrNotYetValid means a certificate's notBefore is in the future.
	ErrNotYetValid = errors.New("certificate not valid")
	// ErrNoServerAuth means a certificate used as the server's lacks the
	// serverAuth extended key usage (or a key usage extension) that
	// OpenVPN clients check with remote-cert-tls server.
	ErrNoServerAuth = errors.New("not a TLS server certificate")
)
