// Package auth is cvpn's admission pipeline. It decides, one step after another, who a
// client is and whether it may connect: its certificate, its directory login, its second
// factor (TOTP, entered through a static or a dynamic challenge), its auth-token on
// renegotiation and reconnect, and the client-connect handler. Each step logs one line per
// decision and refuses with a code the connection log and the metrics name. Pipeline
// implements session.Hooks.
package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/auth/connecthandler"
	"github.com/cvpn/cvpn/auth/credential"
	"github.com/cvpn/cvpn/auth/directory"
	"github.com/cvpn/cvpn/auth/mfa"
	"github.com/cvpn/cvpn/auth/token"
	"github.com/cvpn/cvpn/state"
	"github.com/cvpn/cvpn/tunnel/session"
)

// Directory is a directory of users: package directory's LDAP client, or a fake in tests.
type Directory interface {
	// Authenticate checks a username and password and returns the user with its groups.
	Authenticate(ctx context.Context, username, password string) (*directory.User, error)
	// Lookup returns a user's current groups without a password; a user deleted or
	// disabled since is an error.
	Lookup(ctx context.Context, username string) (*directory.User, error)
}

// SecondFactor checks one-time codes: package mfa's TOTP.
type SecondFactor interface {
	Enrolled(ctx context.Context, user string) (bool, error)
	Verify(ctx context.Context, user, code string) error
}

// ConnectHandler is AWS's client-connect handler: package connecthandler.
type ConnectHandler interface {
	Call(ctx context.Context, req connecthandler.Request) (connecthandler.Decision, error)
}

// Challenge modes: how a second factor is asked for.
const (
	// ChallengeStatic expects the code with the password (the profile's static-challenge);
	// a client that sends a password alone gets a dynamic challenge.
	ChallengeStatic = "static"
	// ChallengeDynamic always asks with a CRV1 challenge after the password.
	ChallengeDynamic = "dynamic"
)

// Config is what the pipeline checks. A zero Config admits by certificate alone.
type Config struct {
	// Certificate requires a client certificate (TLS has verified its chain and revocation).
	Certificate bool
	// Directory, when set, requires a directory login (username and password).
	Directory Directory
	// MFA, when set, requires a one-time code after the password; it needs Directory.
	MFA SecondFactor
	// Challenge is ChallengeStatic (default) or ChallengeDynamic; ChallengeText is the
	// prompt of a dynamic challenge.
	Challenge, ChallengeText string
	// Tokens mint and verify auth-tokens; required with Directory.
	Tokens *token.Keyring
	// TokenLifetime is how long after a login its auth-token is accepted: the session
	// timeout, so a reconnect within it needs no password or code.
	TokenLifetime time.Duration
	// Federation, when set, logs users in at an identity provider through a browser (single
	// sign-on) instead of a directory; it needs Tokens.
	Federation *Federation
	// Handler, when set, is asked about every authenticated connection.
	Handler ConnectHandler
	// EndpointID names the endpoint to the handler.
	EndpointID string
	// GroupIDs are the group identifiers the authorization rules and bandwidth limits name
	// (access_group_id): a directory group matching one (by cn, DN or SID) is given to the
	// session under that spelling too.
	GroupIDs []string
	// State holds the dynamic challenges waiting for an answer and the counts of wrong
	// codes; nodes of a cluster pass their shared store so that a client may answer on
	// another node and a lockout holds on every node. Nil keeps them in this process.
	State state.Store
}

// Refusal codes of the pipeline (the connection log's failure reason and a metric label),
// besides connecthandler's Reason constants, which refusals by the handler carry.
const (
	CodeNoCertificate        session.RefusalCode = "no_certificate"
	CodeNoCredentials        session.RefusalCode = "no_credentials"
	CodeBadCredentials       session.RefusalCode = "malformed_credentials"
	CodeInvalidCredentials   session.RefusalCode = "invalid_credentials"
	CodeDirectoryUnavailable session.RefusalCode = "directory_unavailable"
	CodeDisabled             session.RefusalCode = "account_disabled"
	CodeMFAChallenge         session.RefusalCode = "mfa_challenge"
	CodeMFAInvalid           session.RefusalCode = "mfa_invalid"
	CodeMFAReplayed          session.RefusalCode = "mfa_replayed"
	CodeMFANotEnrolled       session.RefusalCode = "mfa_not_enrolled"
	CodeMFALocked            session.RefusalCode = "mfa_locked"
	CodeChallengeUnknown     session.RefusalCode = "challenge_unknown"
	CodeTokenInvalid         session.RefusalCode = "token_invalid"
	CodeIdentityChanged      session.RefusalCode = "identity_changed"
)

// RefusalCodes are the codes the pipeline refuses with, the client-connect handler's reasons
// included.
func RefusalCodes() []session.RefusalCode {
	codes := []session.RefusalCode{CodeNoCertificate, CodeNoCredentials, CodeBadCredentials, CodeInvalidCredentials,
		CodeDirectoryUnavailable, CodeDisabled, CodeMFAChallenge, CodeMFAInvalid, CodeMFAReplayed, CodeMFANotEnrolled,
		CodeMFALocked, CodeChallengeUnknown, CodeTokenInvalid, CodeIdentityChanged, CodeSSOLogin, CodeSSOExpired, CodeSSOFailed}
	for _, o := range connecthandler.Outcomes() {
		if o != connecthandler.OutcomeAllowed && o != connecthandler.OutcomeDenied {
			codes = append(codes, session.RefusalCode(o))
		}
	}
	return append(codes, connecthandler.ReasonDenied)
}

// What clients are told. A wrong password and an unknown user read the same.
const (
	msgInvalidCredentials = "wrong username or password"
	msgUnavailable        = "the directory cannot be reached; try again later"
)

// Pipeline is the admission pipeline; Reconfigure swaps what it checks for new handshakes.
type Pipeline struct {
	cfg        atomic.Pointer[Config]
	log        *slog.Logger
	now        func() time.Time
	challenges *challenges
	codes      *codeGuard
	mem        state.Store // the store of a Config without State
}

// New returns a pipeline checking cfg; log may be nil, now nil means time.Now.
func New(cfg Config, log *slog.Logger, now func() time.Time) (*Pipeline, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	p := &Pipeline{log: log, now: now, challenges: newChallenges(now), codes: newCodeGuard(now), mem: state.NewMemory()}
	if err := p.Reconfigure(cfg); err != nil {
		return nil, err
	}
	return p, nil
}

// store is where cfg's challenges and wrong-code counts live.
func (p *Pipeline) store(cfg *Config) state.Store {
	if cfg.State != nil {
		return cfg.State
	}
	return p.mem
}

// Reconfigure checks and installs cfg.
func (p *Pipeline) Reconfigure(cfg Config) error {
	switch {
	case !cfg.Certificate && cfg.Directory == nil && cfg.Federation == nil:
		return errors.New("auth: neither certificates, a directory nor single sign-on authenticate clients")
	case cfg.Federation != nil && cfg.Directory != nil:
		return errors.New("auth: a directory and single sign-on exclude each other")
	case cfg.Federation != nil && (cfg.Tokens == nil || cfg.Federation.Broker == nil || cfg.Federation.LoginURL == nil || cfg.Federation.Identities == nil):
		return errors.New("auth: single sign-on needs an auth-token keyring, a login broker, login URLs and an identity store")
	case cfg.MFA != nil && cfg.Directory == nil:
		return errors.New("auth: a second factor needs a directory login")
	case cfg.Directory != nil && cfg.Tokens == nil:
		return errors.New("auth: a directory login needs an auth-token keyring")
	}
	if cfg.Challenge == "" {
		cfg.Challenge = ChallengeStatic
	}
	if cfg.Challenge != ChallengeStatic && cfg.Challenge != ChallengeDynamic {
		return fmt.Errorf("auth: challenge %q: want %s or %s", cfg.Challenge, ChallengeStatic, ChallengeDynamic)
	}
	if cfg.ChallengeText == "" {
		cfg.ChallengeText = "Enter your authenticator code"
	}
	if cfg.TokenLifetime <= 0 {
		cfg.TokenLifetime = 24 * time.Hour
	}
	cfg.GroupIDs = slices.Clone(cfg.GroupIDs)
	p.cfg.Store(&cfg)
	return nil
}

func refuse(code session.RefusalCode, msg string) *session.Refusal {
	return &session.Refusal{Message: msg, Code: code}
}

// Authenticate runs the steps for a new session: certificate, then directory login with its
// second factor, or an auth-token from an earlier login.
func (p *Pipeline) Authenticate(ctx context.Context, r *session.AuthRequest) (*session.User, error) {
	cfg := p.cfg.Load()
	log := p.log.With("remote", r.Remote, "connection_id", r.ConnectionID)
	var cn string
	var ous []string
	if r.Certificate != nil {
		cn, ous = r.Certificate.Subject.CommonName, r.Certificate.Subject.OrganizationalUnit
	}
	if cfg.Certificate {
		if r.Certificate == nil {
			log.Warn("certificate refused", "reason", "none presented")
			return nil, refuse(CodeNoCertificate, "a client certificate is required")
		}
		log.Info("certificate accepted", "cn", cn, "serial", fmt.Sprintf("%X", r.Certificate.SerialNumber))
		if cfg.Directory == nil && cfg.Federation == nil {
			return &session.User{Name: cn, Groups: ous}, nil
		}
	}
	if cfg.Federation != nil {
		return p.federated(ctx, cfg, log, r)
	}
	if !r.HasUserPass || r.Username == "" {
		log.Warn("directory login refused", "reason", "no username and password sent")
		return nil, refuse(CodeNoCredentials, "a username and password are required (auth-user-pass)")
	}
	cred, err := credential.Parse(r.Username, r.Password)
	if err != nil {
		log.Warn("directory login refused", "user", printable(r.Username), "reason", err)
		return nil, refuse(CodeBadCredentials, "malformed credentials: "+err.Error())
	}
	log = log.With("user", cred.Username)
	var u *directory.User
	var claims token.Claims
	switch cred.Kind {
	case credential.Token:
		claims, u, err = p.tokenLogin(ctx, cfg, cred)
		if err != nil {
			log.Warn("auth-token refused", "reason", err)
			return nil, err
		}
		log.Info("auth-token accepted", "login", claims.Login.UTC().Format(time.RFC3339))
	case credential.Dynamic:
		if cfg.MFA == nil {
			log.Warn("challenge response refused", "reason", "no second factor is configured")
			return nil, refuse(CodeChallengeUnknown, "unexpected challenge response")
		}
		if u, err = p.challenges.take(ctx, p.store(cfg), cred.State, cred.Username); err != nil {
			log.Warn("challenge response refused", "reason", err)
			return nil, refuse(CodeChallengeUnknown, "the challenge expired or is unknown: log in again")
		}
		if err := p.verifyCode(ctx, cfg, log, u.Name, cred.Response); err != nil {
			return nil, err
		}
		claims = p.newLogin(cfg, u.Name)
	default: // Plain, Static
		if u, err = p.login(ctx, cfg, log, cred.Username, cred.Password); err != nil {
			return nil, err
		}
		if cfg.MFA != nil {
			if err := p.enrolled(ctx, cfg, log, u.Name); err != nil {
				return nil, err
			}
			if cred.Kind != credential.Static || cfg.Challenge == ChallengeDynamic {
				return nil, p.challenge(ctx, cfg, log, u)
			}
			if err := p.verifyCode(ctx, cfg, log, u.Name, cred.Response); err != nil {
				return nil, err
			}
		}
		claims = p.newLogin(cfg, u.Name)
	}
	return p.user(cfg, u, claims), nil
}

// Reauthenticate checks a renegotiation: the same certificate, and for directory users a
// valid auth-token (or password, without a second factor) of the same user, who must still
// exist and be enabled. Their groups are read again. When the directory cannot be reached,
// the session keeps its groups: an outage of the directory does not end every session.
func (p *Pipeline) Reauthenticate(ctx context.Context, info *session.Info, r *session.AuthRequest) (*session.User, error) {
	cfg := p.cfg.Load()
	log := p.log.With("connection_id", info.ConnectionID, "user", info.User)
	if info.Certificate != nil && !session.SameCertificate(info, r.Certificate) {
		log.Warn("renegotiation refused", "reason", "another certificate")
		return nil, refuse(CodeIdentityChanged, "renegotiation presented another certificate")
	}
	if info.Username != "" && cfg.Federation != nil {
		return p.reauthenticateFederated(ctx, cfg, log, info, r)
	}
	if info.Username == "" || cfg.Directory == nil {
		if info.Username != "" {
			log.Warn("renegotiation refused", "reason", "directory login no longer configured")
			return nil, refuse(CodeIdentityChanged, "the endpoint no longer accepts directory logins")
		}
		return &session.User{Name: info.User, Groups: info.Groups}, nil
	}
	if !r.HasUserPass {
		log.Warn("renegotiation refused", "reason", "no credentials")
		return nil, refuse(CodeNoCredentials, "renegotiation without credentials")
	}
	cred, err := credential.Parse(r.Username, r.Password)
	if err != nil || cred.Username != info.Username {
		log.Warn("renegotiation refused", "reason", "malformed credentials or another user")
		return nil, refuse(CodeIdentityChanged, "renegotiation presented another identity")
	}
	var claims token.Claims
	switch cred.Kind {
	case credential.Token:
		if claims, err = cfg.Tokens.Verify(cred.Token, cred.Username, p.now()); err != nil {
			log.Warn("renegotiation refused", "reason", err)
			return nil, refuse(CodeTokenInvalid, "the auth-token is no longer valid: log in again")
		}
	case credential.Plain:
		if cfg.MFA != nil {
			log.Warn("renegotiation refused", "reason", "a password alone, with a second factor required")
			return nil, refuse(CodeTokenInvalid, "renegotiation needs the auth-token: log in again")
		}
		if _, err := p.login(ctx, cfg, log, cred.Username, cred.Password); err != nil {
			return nil, err
		}
		claims = p.newLogin(cfg, cred.Username)
	default:
		log.Warn("renegotiation refused", "reason", "a challenge answer")
		return nil, refuse(CodeTokenInvalid, "renegotiation needs the auth-token: log in again")
	}
	u, err := cfg.Directory.Lookup(ctx, cred.Username)
	switch {
	case errors.Is(err, directory.ErrUnavailable):
		log.Warn("directory unreachable at renegotiation; the session keeps its groups", "err", err)
		return &session.User{Name: info.User, Username: info.Username, Groups: info.Groups,
			Push: tokenPush(cfg, cred.Username, claims)}, nil
	case errors.Is(err, directory.ErrDisabled), errors.Is(err, directory.ErrNoSuchUser):
		log.Warn("renegotiation refused", "reason", err)
		return nil, refuse(CodeDisabled, "the account is disabled or was removed")
	case err != nil:
		log.Warn("renegotiation refused", "reason", err)
		return nil, refuse(CodeDirectoryUnavailable, msgUnavailable)
	}
	out := p.user(cfg, u, claims)
	out.Name = info.User
	log.Info("renegotiation accepted", "groups", out.Groups)
	return out, nil
}

// OnConnect asks the client-connect handler, when there is one.
func (p *Pipeline) OnConnect(ctx context.Context, info *session.Info) error {
	cfg := p.cfg.Load()
	if cfg.Handler == nil {
		return nil
	}
	log := p.log.With("connection_id", info.ConnectionID, "user", info.User)
	req := connecthandler.Request{
		ConnectionID: info.ConnectionID, EndpointID: cfg.EndpointID, CommonName: info.CommonName,
		Username: info.Username, Platform: info.Platform, PlatformVersion: info.PlatformVersion,
		ClientOpenVPNVersion: info.Version, Groups: info.Groups,
	}
	if info.Remote.IsValid() {
		req.PublicIP = info.Remote.Addr().Unmap().String()
	}
	d, err := cfg.Handler.Call(ctx, req)
	if err != nil {
		var f *connecthandler.Failure
		reason := connecthandler.ReasonOtherExecutionError
		if errors.As(err, &f) {
			reason = f.Reason
		}
		log.Warn("client-connect handler failed", "reason", reason, "err", err)
		return refuse(session.RefusalCode(reason), connecthandler.DefaultFailureMessage)
	}
	if !d.Allow {
		msg := d.Message
		if msg == "" {
			msg = "connection refused by the client-connect handler"
		}
		log.Warn("client-connect handler denied", "message", msg)
		return refuse(connecthandler.ReasonDenied, msg)
	}
	info.Posture = d.Posture
	log.Info("client-connect handler allowed", "posture", d.Posture)
	return nil
}

// OnDisconnect does nothing: the connection log hears of ends through session events.
func (p *Pipeline) OnDisconnect(*session.Info, string) {}

// login checks a username and password against the directory.
func (p *Pipeline) login(ctx context.Context, cfg *Config, log *slog.Logger, user, password string) (*directory.User, error) {
	u, err := cfg.Directory.Authenticate(ctx, user, password)
	switch {
	case err == nil:
		log.Info("directory login accepted", "dn", u.DN, "groups", len(u.Groups))
		return u, nil
	case errors.Is(err, directory.ErrUnavailable):
		log.Error("directory login failed: no directory server answered", "err", err)
		return nil, refuse(CodeDirectoryUnavailable, msgUnavailable)
	case errors.Is(err, directory.ErrDisabled):
		log.Warn("directory login refused", "reason", "account disabled")
		return nil, refuse(CodeDisabled, "the account is disabled")
	case errors.Is(err, directory.ErrInvalidCredentials):
		log.Warn("directory login refused", "reason", "wrong username or password")
		return nil, refuse(CodeInvalidCredentials, msgInvalidCredentials)
	default:
		log.Error("directory login failed", "err", err)
		return nil, refuse(CodeDirectoryUnavailable, msgUnavailable)
	}
}

// enrolled refuses a user without a second factor when one is required.
func (p *Pipeline) enrolled(ctx context.Context, cfg *Config, log *slog.Logger, user string) error {
	ok, err := cfg.MFA.Enrolled(ctx, user)
	if err != nil {
		log.Error("second factor: reading the enrolment failed", "err", err)
		return refuse(CodeMFAInvalid, "the second factor cannot be checked; try again later")
	}
	if !ok {
		log.Warn("second factor refused", "reason", "not enrolled")
		return refuse(CodeMFANotEnrolled, "no authenticator is enrolled for this user: ask an administrator")
	}
	return nil
}

// verifyCode checks a one-time code.
func (p *Pipeline) verifyCode(ctx context.Context, cfg *Config, log *slog.Logger, user, code string) error {
	if err := p.codes.allow(ctx, p.store(cfg), user); err != nil && !errors.Is(err, errTooManyCodes) {
		log.Error("second factor: check failed", "err", err)
		return refuse(CodeMFAInvalid, "the second factor cannot be checked; try again later")
	} else if err != nil {
		log.Warn("second factor refused", "reason", "too many wrong codes", "lockout", codeLockout)
		return refuse(CodeMFALocked, fmt.Sprintf("too many wrong codes: try again in %v", codeLockout))
	}
	err := cfg.MFA.Verify(ctx, user, code)
	if errors.Is(err, mfa.ErrInvalidCode) {
		p.codes.failed(ctx, p.store(cfg), user)
	}
	switch {
	case err == nil:
		p.codes.succeeded(ctx, p.store(cfg), user)
		log.Info("second factor accepted")
		return nil
	case errors.Is(err, mfa.ErrReplayed):
		log.Warn("second factor refused", "reason", "code already used")
		return refuse(CodeMFAReplayed, "that code was already used: wait for the next one")
	case errors.Is(err, mfa.ErrNotEnrolled):
		log.Warn("second factor refused", "reason", "not enrolled")
		return refuse(CodeMFANotEnrolled, "no authenticator is enrolled for this user: ask an administrator")
	case errors.Is(err, mfa.ErrInvalidCode):
		log.Warn("second factor refused", "reason", "wrong code")
		return refuse(CodeMFAInvalid, "wrong authenticator code")
	default:
		log.Error("second factor: check failed", "err", err)
		return refuse(CodeMFAInvalid, "the second factor cannot be checked; try again later")
	}
}

// challenge refuses a password-only login with a CRV1 dynamic challenge for the code.
func (p *Pipeline) challenge(ctx context.Context, cfg *Config, log *slog.Logger, u *directory.User) error {
	id, err := p.challenges.put(ctx, p.store(cfg), u)
	if err != nil {
		log.Warn("second factor: no challenge issued", "reason", err)
		return refuse(CodeMFAChallenge, "too many logins in progress; try again later")
	}
	msg, err := credential.Challenge(true, id, u.Name, cfg.ChallengeText)
	if err != nil {
		log.Error("second factor: building the challenge failed", "err", err)
		return refuse(CodeMFAChallenge, "the second factor cannot be asked for")
	}
	log.Info("second factor: dynamic challenge sent")
	// The state stands for a checked password until it is answered: it goes to the client only.
	return &session.Refusal{Message: msg, Logged: "dynamic challenge for the authenticator code sent", Code: CodeMFAChallenge}
}

// tokenLogin accepts an auth-token of an earlier login, with the user's current groups.
func (p *Pipeline) tokenLogin(ctx context.Context, cfg *Config, cred credential.Credential) (token.Claims, *directory.User, error) {
	if cfg.Directory == nil {
		return token.Claims{}, nil, refuse(CodeTokenInvalid, "auth-tokens are not accepted here")
	}
	claims, err := cfg.Tokens.Verify(cred.Token, cred.Username, p.now())
	if err != nil {
		return claims, nil, refuse(CodeTokenInvalid, "the auth-token is no longer valid: log in again")
	}
	u, err := cfg.Directory.Lookup(ctx, cred.Username)
	switch {
	case err == nil:
		return claims, u, nil
	case errors.Is(err, directory.ErrDisabled), errors.Is(err, directory.ErrNoSuchUser):
		return claims, nil, refuse(CodeDisabled, "the account is disabled or was removed")
	default:
		return claims, nil, refuse(CodeDirectoryUnavailable, msgUnavailable)
	}
}

// newLogin is the token claims of a login now.
func (p *Pipeline) newLogin(cfg *Config, user string) token.Claims {
	now := p.now()
	c := token.Claims{User: user, Login: now, Expires: now.Add(cfg.TokenLifetime)}
	_, _ = randRead(c.ID[:])
	return c
}

// user is the session's user for a directory user: named by the username, with its groups
// and the auth-token to push.
func (p *Pipeline) user(cfg *Config, u *directory.User, claims token.Claims) *session.User {
	return &session.User{Name: u.Name, Username: u.Name, Groups: groupNames(u.Groups, cfg.GroupIDs), Push: tokenPush(cfg, u.Name, claims)}
}

// tokenPush is the options that give the client its auth-token: the token and, as OpenVPN
// does for auth-gen-token, the username it belongs to (src/openvpn/auth_token.c).
func tokenPush(cfg *Config, user string, c token.Claims) []string {
	c.User = user
	return []string{
		"auth-token-user " + base64.StdEncoding.EncodeToString([]byte(user)),
		"auth-token " + cfg.Tokens.Mint(c),
	}
}

// groupNames names a user's directory groups for authorization: each by its cn (its DN when
// it has none), and by every rule group ID it matches under that ID's spelling.
func groupNames(groups []directory.Group, ids []string) []string {
	var out []string
	add := func(s string) {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, g := range groups {
		if g.CN != "" {
			add(g.CN)
		} else {
			add(g.DN)
		}
		for _, id := range ids {
			if g.Matches(id) {
				add(id)
			}
		}
	}
	return out
}

// printable quotes a client-sent string for a log line, bounded.
func printable(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strings.ToValidUTF8(fmt.Sprintf("%q", s), "?")
}
