package credential

import "errors"

// ErrMalformed is wrapped by every error of Parse: the client sent a username
// or password field that is too long, badly encoded, or has characters no
// prompt produces.
var ErrMalformed = errors.New("credential: malformed credentials")
