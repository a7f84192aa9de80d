package connecthandler

import (
	"errors"
	"fmt"
)

// Connection-log failure reasons, the values AWS Client VPN writes in the
// connection-attempt-failure-reason field when its client connect handler
// refuses a connection (AWS Client VPN administrator guide, "Connection
// authorization", "Monitoring connection authorization failures").
//
// ReasonDenied is the only one that is not a Failure: the handler answered
// and said no (Decision.Allow false). Every other reason is the Reason of a
// *Failure returned by Call, and the connection is refused all the same.
const (
	// ReasonDenied: the handler answered with "allow": false.
	ReasonDenied = "client-connect-failed"
	// ReasonTimedOut: the handler did not answer within Config.Timeout (or
	// before the caller's context deadline).
	ReasonTimedOut = "client-connect-handler-timed-out"
	// ReasonOtherExecutionError: the handler failed: the command could not
	// start, exited non-zero or was killed by a signal, or the HTTPS request
	// failed (connection, TLS, a non-2xx status other than 429, a redirect).
	ReasonOtherExecutionError = "client-connect-handler-other-execution-error"
	// ReasonThrottled: no call slot (Config.MaxConcurrent) came free within
	// the timeout, or the HTTPS handler answered 429 Too Many Requests. AWS
	// uses it when the Lambda function is throttled.
	ReasonThrottled = "client-connect-handler-throttled"
	// ReasonInvalidResponse: the handler answered, but not with a valid
	// schema v1 or v2 response (see ParseResponse), or with more than
	// MaxResponseSize bytes.
	ReasonInvalidResponse = "client-connect-handler-invalid-response"
	// ReasonServiceError: the call was abandoned on cvpn's side: the
	// caller's context was canceled (the client went away, the server is
	// stopping) or the request could not be encoded.
	ReasonServiceError = "client-connect-handler-service-error"
)

// Outcomes of a call, as passed to Observer.Observe: OutcomeAllowed,
// OutcomeDenied, or the Reason of the Failure.
const (
	OutcomeAllowed = "allowed"
	OutcomeDenied  = "denied"
)

// Outcomes lists every outcome Observer.Observe can be given, so a metrics
// exporter can create its labelled series up front.
func Outcomes() []string {
	return []string{
		OutcomeAllowed, OutcomeDenied,
		ReasonTimedOut, ReasonOtherExecutionError, ReasonThrottled,
		ReasonInvalidResponse, ReasonServiceError,
	}
}

// DefaultFailureMessage is what AWS Client VPN shows a client when the
// handler fails (rather than denies). Callers send it after AUTH_FAILED,
// for a *Failure.
const DefaultFailureMessage = "Error establishing connection. Please contact your administrator."

// Failure is the error Call returns when the handler could not decide: the
// connection must be refused with DefaultFailureMessage, and Reason goes to
// the connection log.
type Failure struct {
	// Reason is one of the Reason constants other than ReasonDenied.
	Reason string
	// Err says what went wrong, for the server log. For a command it
	// carries the first line of its standard error, quoted.
	Err error
}

func (f *Failure) Error() string {
	if f.Err == nil {
		return "client-connect handler: " + f.Reason
	}
	return "client-connect handler: " + f.Reason + ": " + f.Err.Error()
}

// Unwrap returns f.Err.
func (f *Failure) Unwrap() error { return f.Err }

// maxDetail bounds what a Failure quotes of a handler's own words (the
// first line of a command's standard error, of an HTTP error body).
const maxDetail = 200

func fail(reason string, format string, args ...any) *Failure {
	return &Failure{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Errors of New.
var (
	// ErrNoHandler: neither Command nor URL is set.
	ErrNoHandler = errors.New("connecthandler: no command or URL")
	// ErrBothHandlers: both Command and URL are set.
	ErrBothHandlers = errors.New("connecthandler: both a command and a URL")
	// ErrBadCommand: Command is not an absolute path to an executable
	// regular file that only its owner (or group) may write.
	ErrBadCommand = errors.New("connecthandler: invalid command")
	// ErrBadURL: URL is not an absolute https:// URL without credentials.
	ErrBadURL = errors.New("connecthandler: invalid URL")
	// ErrBadLimit: Timeout or MaxConcurrent is out of range.
	ErrBadLimit = errors.New("connecthandler: invalid limit")
)
