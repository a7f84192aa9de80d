// Package portal is the self-service portal's web server: a user signs in (directory
// password with a TOTP second factor, or OIDC or SAML at an identity provider) and downloads
// the endpoint's profile for UDP or TCP, enrols or resets an authenticator, sees and ends
// their own connections, and approves (or denies) the device login of a VPN client that was
// sent to /d/<code>.
//
// The package owns the HTTP surface only: pages (server-rendered html/template, one embedded
// stylesheet, no JavaScript), browser sessions, CSRF protection, login rate limits and
// security headers. It does not know the endpoint, the directory, the identity providers'
// protocols or how profiles and certificates are made: all of that comes through the
// interfaces of Config, so the lead wires real implementations and tests wire fakes. It does
// not listen or terminate TLS either: Handler is served by the caller's http.Server over HTTPS
// (the session cookie is Secure and __Host- prefixed, so the portal only works over HTTPS).
//
// Security model, in one place:
//   - Sessions live on the server; the browser holds a random 256-bit id in the cookie
//     __Host-cvpn (Secure, HttpOnly, SameSite=Lax, Path=/), and the store keys sessions by
//     the id's SHA-256. A new id is issued at every change of privilege (password accepted,
//     second factor accepted, federated login finished), so a planted id is worthless.
//     Sessions expire after IdleTimeout without a request and AbsoluteTimeout after login.
//   - Sessions and federated logins in progress live in a state.Store (Config.State): nodes
//     of a cluster sharing it serve a browser alike, whichever node each request reaches.
//     The store holds the id's SHA-256 as the key and the session sealed under another hash
//     of the id, so neither the cookie nor a pending authenticator secret can be read from
//     it. Anyone can make a session not signed in (GET /login): it costs the store one
//     record (under 1 KiB) and two ledger places, lives 15 minutes from its creation
//     whatever its browser does, and is bounded per client address (/64 for IPv6) and in
//     all (MaxSessions): when a bound is full the portal answers busy until places expire,
//     never ending signed-in sessions, which are bounded per user (MaxSessionsPerUser).
//     Federated logins are bounded in all (4096 begun within their 10 minutes) and per
//     session (4, the oldest dropped).
//   - Every POST but the SAML ACS carries the session's CSRF token (compared in constant time)
//     and, when the browser sends Origin or Referer, must come from PublicURL's origin
//     (Referrer-Policy same-origin makes browsers send the real Origin; "null" is refused). The
//     ACS is posted cross-site by the IdP and carries no cookie (SameSite=Lax): its login is
//     bound to the browser that began it by a single-use finish step (/login/finish) that
//     must present the beginning session's cookie.
//   - With MFA on, a directory user without an authenticator signs in with the password
//     alone, and may then only enrol one and confirm it with a code; downloads, sessions
//     and device approvals wait until then.
//   - Return paths after login are local paths only ("/x", never "//x", "/\x" or a URL).
//   - Failed logins (passwords, codes, federated answers) and unknown device codes are counted
//     per client address and per username in bounded tables in Config.State, so every node
//     of a cluster counts them alike; over the limit the portal answers 429 without asking
//     the directory.
//   - Every response carries the security headers (CSP without scripts, no framing,
//     nosniff, no referrer to other sites, HSTS); pages with user data are not cached.
package portal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cvpn/cvpn/auth/sso"
	"github.com/cvpn/cvpn/state"
)

// Identity is who signed in to the portal.
type Identity struct {
	Username string
	Groups   []string
	// Method is how they signed in: "directory", "oidc" or "saml".
	Method string
	// Subject and Issuer are the identity provider's, for federated logins; they are passed
	// on to device logins the user approves.
	Subject, Issuer string
}

// Sign-in methods, Identity.Method.
const (
	MethodDirectory = "directory"
	MethodOIDC      = "oidc"
	MethodSAML      = "saml"
)

// PasswordLogin checks a directory username and password.
type PasswordLogin interface {
	// Login returns the user's identity, or an error for a wrong password, an unknown or
	// disabled user or an unreachable directory alike (the portal shows one message).
	Login(ctx context.Context, username, password string) (Identity, error)
}

// SecondFactor is the users' TOTP authenticators (package auth/mfa).
type SecondFactor interface {
	Enrolled(ctx context.Context, user string) (bool, error)
	// Verify checks a code; a code is accepted at most once.
	Verify(ctx context.Context, user, code string) error
	// Enroll gives user a new secret, replacing any, and returns its otpauth:// URI.
	Enroll(ctx context.Context, user string) (uri string, err error)
	// Reset removes user's secret.
	Reset(ctx context.Context, user string) error
}

// FederatedLogin is single sign-on at an identity provider (package auth/oidc or auth/saml
// behind an adapter).
type FederatedLogin interface {
	// Name is "oidc" or "saml": the login's button, its /login/<name> path and which callback
	// (/oidc/callback or /saml/acs) completes it.
	Name() string
	// Begin starts a login: the URL to send the browser to, and the login's state, which
	// Complete returns again for the provider's answer.
	Begin(ctx context.Context) (redirectURL, state string, err error)
	// Complete verifies the provider's answer at the callback. It returns the login's state
	// whenever it can read one, even with an error.
	Complete(ctx context.Context, r *http.Request) (state string, id Identity, err error)
}

// Profiles makes the profile a user downloads.
type Profiles interface {
	// Profile returns the profile for proto ("udp" or "tcp"); for certificate endpoints it
	// issues the user a certificate.
	Profile(ctx context.Context, id Identity, proto string) (filename string, body []byte, err error)
}

// Sessions is the endpoint's VPN connections, as far as their user may see them.
type Sessions interface {
	// List returns user's own connections.
	List(user string) []SessionView
	// End disconnects user's connection connectionID; it fails for anyone else's.
	End(user, connectionID string) error
}

// SessionView is one VPN connection as the portal shows it. The addresses are named as in
// the admin API and the connection log (AWS ClientIp and DeviceIp).
type SessionView struct {
	ConnectionID string
	// ClientIP is the address the connection has inside the VPN (from client_cidr_block).
	ClientIP string
	// DeviceIP is the address the device connects from.
	DeviceIP        string
	Platform, Since string
}

// Config is what a Server needs. Password or Federated is required; the rest is optional and
// its page section is left out when nil.
type Config struct {
	// PublicURL is the portal's https URL as browsers reach it; its origin is what POSTs
	// must come from.
	PublicURL string
	// Title names the portal in pages ("cvpn" when empty).
	Title string
	// Log gets the portal's own log lines (discarded when nil); Now is the clock (time.Now
	// when nil): session expiry and rate limits read it.
	Log *slog.Logger
	Now func() time.Time

	Password  PasswordLogin
	MFA       SecondFactor // needs Password
	Federated []FederatedLogin
	// IdPOrigins are the origins (https://host[:port]) the federated logins redirect to;
	// the Content-Security-Policy's form-action allows them, as browsers check a form's
	// redirects against it. A login whose provider URL is on another origin gets a page
	// with a link to it instead of a redirect (one more click), and a warning in the log.
	IdPOrigins []string

	Profiles Profiles
	// Protocols returns the transport protocols ("udp", "tcp") the endpoint listens on: the
	// home page offers those profiles only, and a download of another is refused. Both
	// when nil. It is asked at each request, so a reload that changes the listeners applies.
	Protocols func() []string
	Sessions  Sessions
	Devices   *sso.Broker

	// OnDownload is called for each profile downloaded (cvpn_portal_configuration_downloads_total).
	OnDownload func(proto string)
	// Audit is told of every action: event names are the Event constants; attrs are
	// slog-style pairs (user, method, client_ip, ...), never secrets.
	Audit func(event string, attrs ...any)

	// IdleTimeout and AbsoluteTimeout bound a browser session (30 min and 12 h when zero).
	IdleTimeout, AbsoluteTimeout time.Duration
	// MaxSessions bounds the browser sessions not signed in (10000 when zero), across every
	// node of State; signed-in sessions are bounded per user (MaxSessionsPerUser).
	MaxSessions int
	// State holds the browser sessions and the federated logins in progress; nodes of a
	// cluster pass their shared store so that a browser is served alike by every node. Nil
	// keeps them in this process (state.NewMemory).
	State state.Store
}

// Audit events.
const (
	EventLogin         = "portal_login"
	EventLoginFailed   = "portal_login_failed"
	EventLoginLimited  = "portal_login_limited"
	EventLogout        = "portal_logout"
	EventDownload      = "portal_download"
	EventMFAEnrol      = "portal_mfa_enrol"
	EventMFAConfirm    = "portal_mfa_confirm"
	EventMFAReset      = "portal_mfa_reset"
	EventSessionEnded  = "portal_session_ended"
	EventDeviceApprove = "portal_device_approved"
	EventDeviceDeny    = "portal_device_denied"
)

// Buckets of the sign-in failure counts in Config.State.
const (
	FailureUserBucket    = "portal-failures-user"
	FailureAddressBucket = "portal-failures-address"
)

// Defaults and bounds.
const (
	DefaultIdleTimeout     = 30 * time.Minute
	DefaultAbsoluteTimeout = 12 * time.Hour
	DefaultMaxSessions     = 10000
	// MaxFailuresPerUser and MaxFailuresPerAddress failed sign-ins within FailureWindow
	// make the portal refuse further attempts for that username or client address.
	MaxFailuresPerUser    = 5
	MaxFailuresPerAddress = 20
	FailureWindow         = 15 * time.Minute

	codeStepTTL    = 5 * time.Minute  // password accepted, waiting for the TOTP code
	federatedTTL   = 10 * time.Minute // a federated login at the identity provider
	finishTTL      = 2 * time.Minute  // a federated answer waiting for /login/finish
	maxFederated   = 4096
	maxFormBytes   = 16 << 10
	maxACSBytes    = 4 << 20 // the SAML package bounds the response itself, tighter
	maxUsername    = 256
	maxPassword    = 1024
	maxGroups      = 1024
	limiterEntries = 65536
)

// Server is the portal. It is safe for concurrent use.
type Server struct {
	cfg       Config
	log       *slog.Logger
	now       func() time.Time
	origin    string // PublicURL's scheme://host[:port]
	csp       string
	federated map[string]FederatedLogin
	idps      map[string]bool // IdPOrigins: form-action allows redirects there
	fedNames  []string        // in Config order, for the buttons

	sessions *store
	pending  *federatedTable
	users    *limiter // failures by username
	addrs    *limiter // failures by client address
	// limitAudits damps the audit records of refused (limited) attempts.
	limitAudits *limiter
	pages       *pages
	handler     http.Handler
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Password == nil && len(cfg.Federated) == 0 {
		return nil, fmt.Errorf("%w: no sign-in method: set Password or Federated", ErrConfig)
	}
	if cfg.MFA != nil && cfg.Password == nil {
		return nil, fmt.Errorf("%w: MFA needs Password (a second factor of directory logins)", ErrConfig)
	}
	origin, err := httpsOrigin(cfg.PublicURL)
	if err != nil {
		return nil, fmt.Errorf("%w: PublicURL: %v", ErrConfig, err)
	}
	s := &Server{cfg: cfg, log: cfg.Log, now: cfg.Now, origin: origin, federated: map[string]FederatedLogin{}, idps: map[string]bool{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.cfg.Title == "" {
		s.cfg.Title = "cvpn"
	}
	for _, f := range cfg.Federated {
		if f == nil {
			return nil, fmt.Errorf("%w: a nil federated login", ErrConfig)
		}
		n := f.Name()
		if n != MethodOIDC && n != MethodSAML {
			return nil, fmt.Errorf("%w: federated login named %q: want %q or %q", ErrConfig, n, MethodOIDC, MethodSAML)
		}
		if s.federated[n] != nil {
			return nil, fmt.Errorf("%w: two federated logins named %q", ErrConfig, n)
		}
		s.federated[n] = f
		s.fedNames = append(s.fedNames, n)
	}
	formAction := []string{"'self'"}
	for _, o := range cfg.IdPOrigins {
		norm, err := idpOrigin(o)
		if err != nil {
			return nil, fmt.Errorf("%w: IdPOrigins: %v", ErrConfig, err)
		}
		formAction = append(formAction, norm)
		s.idps[norm] = true
	}
	s.csp = "default-src 'self'; img-src 'self' data:; form-action " + strings.Join(formAction, " ") +
		"; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
	idle, abs, max := cfg.IdleTimeout, cfg.AbsoluteTimeout, cfg.MaxSessions
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	if abs <= 0 {
		abs = DefaultAbsoluteTimeout
	}
	if max <= 0 {
		max = DefaultMaxSessions
	}
	st := cfg.State
	if st == nil {
		st = state.NewMemory()
	}
	s.sessions = newStore(st, s.log, s.now, max, idle, abs)
	s.pending = newFederatedTable(st, s.log, maxFederated)
	s.users = newLimiter(st, FailureUserBucket, MaxFailuresPerUser, FailureWindow, limiterEntries)
	s.addrs = newLimiter(st, FailureAddressBucket, MaxFailuresPerAddress, FailureWindow, limiterEntries)
	// The audit damping is this node's own: it saves log lines, not attempts.
	s.limitAudits = newLimiter(state.NewMemory(), "portal-audit-damping", 1, time.Minute, limiterEntries)
	if s.pages, err = parsePages(); err != nil {
		return nil, err
	}
	s.handler = s.headers(s.routes())
	return s, nil
}

// Handler returns the portal's HTTP handler. Serve it over HTTPS with an http.Server that
// sets ReadHeaderTimeout, ReadTimeout, WriteTimeout and MaxHeaderBytes.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /static/portal.css", s.stylesheet)
	mux.HandleFunc("GET /login", s.loginPage)
	mux.HandleFunc("POST /login", s.passwordLogin)
	mux.HandleFunc("POST /login/code", s.codeLogin)
	mux.HandleFunc("POST /login/cancel", s.cancelLogin)
	mux.HandleFunc("POST /login/{name}", s.beginFederated)
	mux.HandleFunc("GET /login/finish", s.finishFederated)
	mux.HandleFunc("GET /oidc/callback", s.callback(MethodOIDC))
	mux.HandleFunc("POST /saml/acs", s.callback(MethodSAML))
	mux.HandleFunc("POST /logout", s.logout)
	mux.HandleFunc("GET /{$}", s.home)
	mux.HandleFunc("POST /download", s.download)
	mux.HandleFunc("GET /mfa", s.mfaPage)
	mux.HandleFunc("POST /mfa/enrol", s.mfaEnrol)
	mux.HandleFunc("POST /mfa/confirm", s.mfaConfirm)
	mux.HandleFunc("POST /mfa/reset", s.mfaReset)
	mux.HandleFunc("GET /mfa/qr.png", s.mfaQR)
	mux.HandleFunc("POST /sessions/end", s.endSession)
	mux.HandleFunc("GET /d", s.deviceForm)
	mux.HandleFunc("GET /d/{code}", s.devicePage)
	mux.HandleFunc("POST /d/{code}", s.deviceDecide)
	mux.HandleFunc("/", s.notFound)
	return mux
}

// audit tells Config.Audit and the log of an action.
func (s *Server) audit(r *http.Request, event string, attrs ...any) {
	attrs = append(attrs, "client_ip", clientAddr(r))
	s.log.Info("portal: "+event, attrs...)
	if s.cfg.Audit != nil {
		s.cfg.Audit(event, attrs...)
	}
}

// httpsOrigin returns the scheme://host[:port] of an https URL, lower-cased.
func httpsOrigin(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if u.Scheme != "https" {
		return "", fmt.Errorf("%q is not an https URL (the session cookie is Secure)", raw)
	}
	if u.Host == "" || u.User != nil {
		return "", fmt.Errorf("%q has no host, or has credentials", raw)
	}
	return "https://" + strings.ToLower(u.Host), nil
}

// idpOrigin checks an origin of IdPOrigins: https://host[:port], or http:// on a loopback
// host (a test provider).
func idpOrigin(o string) (string, error) {
	u, err := url.Parse(o)
	if err != nil || u.Host == "" || u.User != nil || strings.TrimSuffix(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" ||
		strings.ContainsAny(o, " ;,'\"\t\r\n") {
		return "", fmt.Errorf("%q is not an origin (https://host[:port])", o)
	}
	h := u.Hostname()
	loopback := h == "localhost" || h == "127.0.0.1" || h == "::1"
	if u.Scheme != "https" && (u.Scheme != "http" || !loopback) {
		return "", fmt.Errorf("%q is not an https origin (http only on a loopback host)", o)
	}
	return u.Scheme + "://" + strings.ToLower(u.Host), nil
}

// validIdentity checks what a login returned before a session is built on it.
func validIdentity(id Identity) error {
	if id.Username == "" || len(id.Username) > maxUsername || !printable(id.Username) {
		return errors.New("the username is empty, too long or not printable")
	}
	if len(id.Groups) > maxGroups {
		return fmt.Errorf("%d groups, more than %d", len(id.Groups), maxGroups)
	}
	return nil
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}
