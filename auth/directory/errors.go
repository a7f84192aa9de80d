package directory

import "errors"

// Sentinel errors. Errors returned by this package wrap one of them where they apply, with the
// detail (which server, which result code) in the message; never with a password.
var (
	// ErrInvalidCredentials: unknown user, wrong or empty password, a username this package
	// refuses to send (empty, too long, control characters), or a username matching several
	// entries. The cases are not told apart to the caller, so a client cannot enumerate users.
	ErrInvalidCredentials = errors.New("directory: invalid username or password")
	// ErrUnavailable: no directory server answered (every URL failed or is in back-off), an
	// operation timed out, or the caller's context ended. It wraps the last network error.
	ErrUnavailable = errors.New("directory: no directory server available")
	// ErrDisabled: the account exists but is disabled (AD userAccountControl ACCOUNTDISABLE) or
	// locked (OpenLDAP ppolicy pwdAccountLockedTime).
	ErrDisabled = errors.New("directory: account disabled")
	// ErrNoSuchUser: Lookup found no entry for the username (the user was deleted, or renamed).
	// Authenticate reports this case as ErrInvalidCredentials instead.
	ErrNoSuchUser = errors.New("directory: no such user")
	// ErrClosed: the Directory was closed.
	ErrClosed = errors.New("directory: closed")
)
