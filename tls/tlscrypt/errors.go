package tlscrypt

import "errors"

// Errors returned by Wrap and Unwrap. They are returned as is (not wrapped)
// so that rejecting a forged packet never allocates; each names the operation.
var (
	// ErrPacketTooShort means a wire packet is shorter than the wrapping's
	// fixed fields (49 bytes for tls-crypt, 17+digest size for tls-auth).
	ErrPacketTooShort = errors.New("tlscrypt: unwrap: packet too short")
	// ErrAuthFailed means the HMAC did not verify: wrong key, wrong
	// direction or a forged or corrupted packet.
	ErrAuthFailed = errors.New("tlscrypt: unwrap: authentication failed")
	// ErrPlainTooShort means a plain-layout packet is shorter than opcode
	// byte plus session id (9 bytes).
	ErrPlainTooShort = errors.New("tlscrypt: plain packet shorter than opcode and session id")
	// ErrNilKey means the Wrapper was constructed with a nil *StaticKey.
	ErrNilKey = errors.New("tlscrypt: nil static key")
	// ErrBadDirection means NewTLSAuth got a key direction other than
	// 0, 1 or -1.
	ErrBadDirection = errors.New("tlscrypt: tls-auth key direction must be 0, 1 or -1")
	// ErrDigestTooLong means the tls-auth digest is longer than the 64-byte
	// HMAC slot of the static key.
	ErrDigestTooLong = errors.New("tlscrypt: tls-auth digest longer than 64 bytes")
)

// Errors returned by ParseStaticKey, wrapped with detail.
var (
	ErrKeyBeginMarker = errors.New("missing -----BEGIN OpenVPN Static key V1----- marker")
	ErrKeyEndMarker   = errors.New("missing -----END OpenVPN Static key V1----- marker")
	ErrKeyNotHex      = errors.New("non-hex character in key")
	ErrKeyLength      = errors.New("wrong key length")
)
