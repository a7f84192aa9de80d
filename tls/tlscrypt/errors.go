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

// Errors returned by the tls-crypt-v2 key file functions (v2.go), wrapped
// with detail.
var (
	// ErrV2KeyPEM means the expected "-----BEGIN OpenVPN tls-crypt-v2 ...
	// key-----" block is missing or is not valid PEM (bad base64, no END
	// line).
	ErrV2KeyPEM = errors.New("missing or malformed tls-crypt-v2 PEM block")
	// ErrV2KeyLength means a tls-crypt-v2 key decoded to the wrong number of
	// bytes, or a client key's wrapped key (WKc) does not end in its own
	// length.
	ErrV2KeyLength = errors.New("wrong tls-crypt-v2 key length")
	// ErrV2MetadataTooLong means client key metadata exceeds
	// V2MaxMetadataLen (734) bytes, which would make WKc longer than 1024.
	ErrV2MetadataTooLong = errors.New("tls-crypt-v2 metadata longer than 734 bytes")
)

// Errors returned by UnwrapClientKey and SplitWKc. Like the Unwrap errors
// they are returned as is, so that rejecting a forged packet never allocates.
var (
	// ErrWKcLength means a wrapped client key is shorter than 290 or longer
	// than 1024 bytes, or its trailing length field does not match its
	// length.
	ErrWKcLength = errors.New("tlscrypt: unwrap client key: bad wrapped client key length")
	// ErrWKcAuth means the wrapped client key's tag did not verify: it was
	// made with another tls-crypt-v2 server key, or was forged or corrupted.
	ErrWKcAuth = errors.New("tlscrypt: unwrap client key: authentication failed")
	// ErrNotWKcPacket means SplitWKc got a packet whose opcode is neither
	// P_CONTROL_HARD_RESET_CLIENT_V3 nor P_CONTROL_WKC_V1.
	ErrNotWKcPacket = errors.New("tlscrypt: split wkc: opcode is not P_CONTROL_HARD_RESET_CLIENT_V3 or P_CONTROL_WKC_V1")
	// ErrWKcSplit means the trailing WKc length of a V3 reset or WKC_V1
	// packet is out of range or leaves too little room for the tls-crypt
	// wrapped packet in front of it.
	ErrWKcSplit = errors.New("tlscrypt: split wkc: wrapped client key length inconsistent with packet")
)
