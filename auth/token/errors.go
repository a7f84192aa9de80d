package token

import "errors"

// Errors of Verify.
var (
	// ErrMalformed: the string is not shaped like a token.
	ErrMalformed = errors.New("token: malformed auth-token")
	// ErrInvalid: the MAC does not match, because the token was forged,
	// altered, minted with a key no longer in the ring, or for another user.
	ErrInvalid = errors.New("token: auth-token does not authenticate for this user")
	// ErrExpired: the token authenticated but its life is over.
	ErrExpired = errors.New("token: auth-token expired")
)
