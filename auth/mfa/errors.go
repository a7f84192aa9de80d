package mfa

import "errors"

// Errors of TOTP.Verify.
var (
	// ErrNotEnrolled: the user has no TOTP secret.
	ErrNotEnrolled = errors.New("mfa: user is not enrolled for TOTP")
	// ErrInvalidCode: the code is malformed, wrong, or outside the skew window.
	ErrInvalidCode = errors.New("mfa: invalid TOTP code")
	// ErrReplayed: the code is right but its time step was already used.
	ErrReplayed = errors.New("mfa: TOTP code already used")
)
