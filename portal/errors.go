package portal

import "errors"

// Errors of the portal's configuration and of its session store.
var (
	// ErrConfig is wrapped by every error of New about its Config.
	ErrConfig = errors.New("portal: bad configuration")
	// ErrBusy is returned when the session store or the table of federated logins in
	// progress is full: the portal refuses new ones rather than grow.
	ErrBusy = errors.New("portal: too many sign-ins in progress")
	// errNotOwn is what ending a connection that is not among the user's own gives.
	errNotOwn = errors.New("portal: no such connection among the user's own")
	// errBadURI is an enrolment URI that is not otpauth:// or too long for a QR code.
	errBadURI = errors.New("portal: the enrolment URI is not an otpauth:// URI of a drawable length")
	// errDenied is what a denied device login fails with: the client is told.
	errDenied = errors.New("the sign-in was denied in the portal")
)
