// Package connecthandler calls the client-connect handler of an endpoint,
// cvpn's counterpart of AWS Client VPN's client connect handler (a Lambda
// function there): after a client is authenticated and before authorization
// rules apply, the handler gets AWS's schema v2 request (a JSON object
// describing the connection) and answers whether to allow it, with a
// message for the user when it does not, and posture-compliance statuses
// for the connection log.
//
// A handler is either a command, run without a shell, that reads the
// request on its standard input and writes the response on its standard
// output, or an https:// URL the request is POSTed to. Either way the call
// is bounded in time (30 s by default, AWS's fixed limit), in size
// (MaxResponseSize) and in concurrency (Config.MaxConcurrent), and a
// handler that fails or answers badly refuses the connection with one of
// AWS's connection-log failure reasons (see the Reason constants).
//
// The package owns the wire format, the process and HTTP handling, and the
// sanitizing of what the handler says before it reaches a client. It does
// not own what the caller does with a Decision: sending AUTH_FAILED,
// writing the connection log, counting metrics (it reports each outcome to
// an Observer) or which groups and platform names fill the Request.
package connecthandler

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Defaults and limits of Config.
const (
	// DefaultTimeout is AWS's fixed Lambda timeout for the handler.
	DefaultTimeout = 30 * time.Second
	// MaxTimeout is the longest Config.Timeout New accepts: AWS's limit,
	// and half the 60 s a stock OpenVPN client waits for a handshake
	// (hand-window).
	MaxTimeout = 30 * time.Second
	// DefaultMaxConcurrent bounds the handler calls in flight at once.
	DefaultMaxConcurrent = 64
)

// Config configures a Handler. Exactly one of Command and URL is set.
type Config struct {
	// Command is the program and its arguments. Command[0] must be an
	// absolute path to an executable regular file that is not
	// world-writable. It runs in its own process group with the working
	// directory "/" and only PATH (a fixed system PATH) in its
	// environment; the request is on its standard input (one line of
	// JSON), the response is read from its standard output, and its
	// standard error's first line goes into a Failure. When the call ends,
	// for whatever reason, the process group is killed, so a handler's
	// background children do not outlive the call (a descendant that
	// leaves the group with setsid or setpgid is not tracked). Linux only.
	Command []string
	// URL is an https:// URL the request is POSTed to as
	// application/json. Plain http:// is refused even for loopback: the
	// request carries user names, groups and client addresses, AWS
	// reaches its handler over its own authenticated API, and a local
	// handler can be a Command. Redirects are not followed (a 3xx is an
	// execution error), and no proxy from the environment is used.
	URL string
	// RootCAs verifies the URL's certificate; nil means the system roots.
	RootCAs *x509.CertPool
	// Timeout bounds a whole call, including the wait for a free slot:
	// 0 means DefaultTimeout; at most MaxTimeout.
	Timeout time.Duration
	// MaxConcurrent bounds the calls in flight; others wait for a slot
	// within their timeout. 0 means DefaultMaxConcurrent.
	MaxConcurrent int
	// Observer, if not nil, is told the outcome and duration of every
	// call.
	Observer Observer
}

// Observer receives the outcome of each call, for metrics (the lead's
// cvpn_client_connect_handler_* series). Outcome is OutcomeAllowed,
// OutcomeDenied or a Failure's Reason (see Outcomes); d is the call's
// duration, from Call to its return. Observe is called from the calling
// goroutine and must not block.
type Observer interface {
	Observe(outcome string, d time.Duration)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(outcome string, d time.Duration)

// Observe calls f(outcome, d).
func (f ObserverFunc) Observe(outcome string, d time.Duration) { f(outcome, d) }

// Request describes a connection to the handler: AWS's schema v2 request
// fields. Empty fields are sent as "" (AWS: "For mutual authentication,
// this field is empty").
type Request struct {
	ConnectionID         string   // connection-id
	EndpointID           string   // endpoint-id
	CommonName           string   // common-name: the client certificate's CN
	Username             string   // username: the directory user name, if any
	Platform             string   // platform: the client's OS platform
	PlatformVersion      string   // platform-version
	PublicIP             string   // public-ip: the client's address as the server sees it
	ClientOpenVPNVersion string   // client-openvpn-version
	Groups               []string // groups: sent as one string, comma-joined (see Encode)
}

// Decision is a handler's valid answer.
type Decision struct {
	// Allow is the handler's verdict. A denied connection is logged with
	// ReasonDenied.
	Allow bool
	// Message is the handler's text for the user when it denies,
	// sanitized for AUTH_FAILED,<Message> (SanitizeMessage); it may be
	// empty.
	Message string
	// Posture is the handler's posture-compliance statuses (at most 10,
	// sanitized like Message), for the connection log.
	Posture []string
}

// Handler calls one configured client-connect handler. It is safe for
// concurrent use.
type Handler struct {
	timeout  time.Duration
	slots    chan struct{} // a buffered token per call in flight
	observer Observer
	run      runner
}

// runner performs one call: send body, return the raw response. Its errors
// are *Failure. ctx carries the call's deadline, with errCallTimeout as its
// cause when the Handler's own timeout fires.
type runner interface {
	run(ctx context.Context, body []byte) ([]byte, error)
	close()
}

// errCallTimeout is the cause of a call context that hit Config.Timeout.
var errCallTimeout = errors.New("handler timeout")

// New checks cfg and returns a Handler. Errors wrap ErrNoHandler,
// ErrBothHandlers, ErrBadCommand, ErrBadURL or ErrBadLimit.
func New(cfg Config) (*Handler, error) {
	h := &Handler{timeout: cfg.Timeout, observer: cfg.Observer}
	switch {
	case cfg.Timeout == 0:
		h.timeout = DefaultTimeout
	case cfg.Timeout < 0 || cfg.Timeout > MaxTimeout:
		return nil, fmt.Errorf("%w: timeout %v is not between 0 and %v", ErrBadLimit, cfg.Timeout, MaxTimeout)
	}
	n := cfg.MaxConcurrent
	switch {
	case n == 0:
		n = DefaultMaxConcurrent
	case n < 0:
		return nil, fmt.Errorf("%w: max concurrent calls %d is negative", ErrBadLimit, n)
	}
	h.slots = make(chan struct{}, n)

	switch {
	case len(cfg.Command) > 0 && cfg.URL != "":
		return nil, ErrBothHandlers
	case len(cfg.Command) > 0:
		r, err := newExecRunner(cfg.Command)
		if err != nil {
			return nil, err
		}
		h.run = r
	case cfg.URL != "":
		r, err := newHTTPSRunner(cfg.URL, cfg.RootCAs, n)
		if err != nil {
			return nil, err
		}
		h.run = r
	default:
		return nil, ErrNoHandler
	}
	return h, nil
}

// Close releases idle connections to a URL handler. Calls in flight are
// not affected.
func (h *Handler) Close() { h.run.close() }

// Call asks the handler about req. It returns the handler's Decision, or a
// *Failure (and a zero Decision) when the handler could not decide; either
// a Failure or Allow false refuses the connection.
//
// Call returns within the configured timeout, or when ctx is done: a
// deadline of ctx counts as ReasonTimedOut, its cancellation as
// ReasonServiceError (wrapping context.Canceled). Killing a command takes
// a few milliseconds more, and up to 2 s more if a descendant that left
// its process group holds the command's output open. Call holds no lock
// while it waits, and it reports the outcome to the Observer before it
// returns.
func (h *Handler) Call(ctx context.Context, req Request) (Decision, error) {
	start := time.Now()
	d, err := h.call(ctx, req)
	if h.observer != nil {
		outcome := OutcomeAllowed
		var f *Failure
		switch {
		case errors.As(err, &f):
			outcome = f.Reason
		case err != nil: // not produced by call; counted all the same
			outcome = ReasonOtherExecutionError
		case !d.Allow:
			outcome = OutcomeDenied
		}
		h.observer.Observe(outcome, time.Since(start))
	}
	return d, err
}

func (h *Handler) call(ctx context.Context, req Request) (Decision, error) {
	start := time.Now()
	body, err := req.Encode()
	if err != nil {
		return Decision{}, &Failure{Reason: ReasonServiceError, Err: err}
	}
	ctx, cancel := context.WithTimeoutCause(ctx, h.timeout, errCallTimeout)
	defer cancel()
	if ctx.Err() != nil { // select below would pick at random
		return Decision{}, interrupted(ctx)
	}

	select {
	case h.slots <- struct{}{}:
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return Decision{}, fail(ReasonThrottled, "all %d call slots stayed busy for %v", cap(h.slots), time.Since(start).Round(time.Millisecond))
		}
		return Decision{}, canceled(ctx)
	}
	defer func() { <-h.slots }()

	resp, err := h.run.run(ctx, body)
	if err != nil {
		var f *Failure
		if errors.As(err, &f) && f.Reason == ReasonTimedOut && context.Cause(ctx) == errCallTimeout {
			f.Err = fmt.Errorf("no answer within %v", h.timeout)
		}
		return Decision{}, err
	}
	d, err := ParseResponse(resp)
	if err != nil {
		return Decision{}, &Failure{Reason: ReasonInvalidResponse, Err: err}
	}
	return d, nil
}

// interrupted returns the Failure for a call whose ctx is done: a deadline
// (the handler's own timeout or the caller's) is a timeout, a cancellation
// is the caller's doing.
func interrupted(ctx context.Context) *Failure {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		if context.Cause(ctx) == errCallTimeout {
			return fail(ReasonTimedOut, "no answer within the handler timeout")
		}
		return fail(ReasonTimedOut, "no answer before the caller's deadline")
	}
	return canceled(ctx)
}

func canceled(ctx context.Context) *Failure {
	return &Failure{Reason: ReasonServiceError, Err: fmt.Errorf("call abandoned: %w", context.Cause(ctx))}
}
