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
