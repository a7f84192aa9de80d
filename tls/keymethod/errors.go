package keymethod

import "errors"

// Sentinel errors of ParseClient and ParseServer. All but ErrIncomplete are
// wrapped with the field that failed.
var (
	// ErrIncomplete means the bytes so far are a valid prefix of a
	// key-method-2 message and more must be read. It is returned unwrapped.
	ErrIncomplete = errors.New("keymethod: message incomplete")

	// ErrKeyMethod means the key-method byte is not 2 (key method 1 was
	// removed in OpenVPN 2.5).
	ErrKeyMethod = errors.New("keymethod: unsupported key method")

	// ErrBadString means a length-prefixed string is not NUL-terminated or
	// has a NUL inside.
	ErrBadString = errors.New("keymethod: bad string encoding")

	// ErrFieldTooLong means a string field exceeds its limit. OpenVPN answers
	// an overlong username or password with AUTH_FAILED rather than dropping
	// the session; a caller may do the same on this error.
	ErrFieldTooLong = errors.New("keymethod: field too long")

	// ErrTrailingData means bytes follow the peer-info string.
	ErrTrailingData = errors.New("keymethod: trailing data after message")
)
