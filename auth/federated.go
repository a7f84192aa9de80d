package auth

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/auth/credential"
	"github.com/cvpn/cvpn/auth/sso"
	"github.com/cvpn/cvpn/auth/token"
	"github.com/cvpn/cvpn/state"
	"github.com/cvpn/cvpn/tunnel/session"
)

// Federation is single sign-on at an identity provider (OIDC or SAML), through a browser: the
// portal completes the broker's logins; the pipeline ties them to connections.
type Federation struct {
	Broker *sso.Broker
	// LoginURL is the address a user opens for a login's code (the portal's /d/<code>).
	LoginURL func(code string) string
	// Identities keeps who each login was (username and groups) for its auth-tokens, so a
	// reconnect within the session timeout needs no browser.
	Identities state.Store
}

// Refusal codes of federated logins.
const (
	CodeSSOLogin   session.RefusalCode = "sso_login" // the client was sent to the browser
	CodeSSOExpired session.RefusalCode = "sso_expired"
	CodeSSOFailed  session.RefusalCode = "sso_failed"
)

// identityBucket holds federated logins' identities by login id.
const identityBucket = "sso-identity"

// identityRecord is what identityBucket keeps of a login.
type identityRecord struct {
	Username string    `json:"username"`
	Groups   []string  `json:"groups"`
	Expires  time.Time `json:"expires"`
}

// ssoTrimEvery is how many identity records are written between sweeps of expired ones.
const ssoTrimEvery = 256

var ssoWrites atomic.Uint64

// federated authenticates a client of a federated endpoint: an auth-token of an earlier login,
// the answer to a login notice (CRV1) whose browser login completed, or a new login: a
// pending session for a client that opens URLs itself (IV_SSO), a CRV1 notice with the link
// for every other client.
func (p *Pipeline) federated(ctx context.Context, cfg *Config, log *slog.Logger, r *session.AuthRequest) (*session.User, error) {
	f := cfg.Federation
	var cred credential.Credential
	if r.HasUserPass && r.Username != "" {
		var err error
		if cred, err = credential.Parse(r.Username, r.Password); err != nil {
			log.Warn("single sign-on refused", "user", printable(r.Username), "reason", err)
			return nil, refuse(CodeBadCredentials, "malformed credentials: "+err.Error())
		}
	}
	switch cred.Kind {
	case credential.Token:
		claims, rec, err := p.federatedToken(ctx, cfg, cred.Token, cred.Username)
		if err != nil {
			log.Warn("auth-token refused", "user", cred.Username, "reason", err)
			return nil, refuse(CodeTokenInvalid, "the auth-token is no longer valid: log in again")
		}
		log.Info("auth-token accepted", "user", rec.Username, "login", claims.Login.UTC().Format(time.RFC3339))
		return p.federatedUser(cfg, rec.Username, rec.Groups, claims), nil
	case credential.Dynamic:
		id, err := f.Broker.Take(ctx, cred.State)
		switch {
		case errors.Is(err, sso.ErrPending):
			// The user pressed Enter before signing in: the same notice again.
			log.Info("single sign-on: login not completed yet; the link is sent again")
			url := ""
			if code, err := f.Broker.CodeOf(ctx, cred.State); err == nil {
				url = f.LoginURL(sso.FormatCode(code))
			}
			return nil, p.notice(cfg, log, cred.State, cred.Username, url)
		case errors.Is(err, sso.ErrUnknown):
			log.Warn("single sign-on refused", "reason", err)
			return nil, refuse(CodeSSOExpired, "the login link expired or was used: connect again for a new one")
		case err != nil:
			log.Warn("single sign-on refused", "reason", err)
			return nil, refuse(CodeSSOFailed, "single sign-on failed: "+err.Error())
		}
		log.Info("single sign-on accepted", "user", id.Username, "issuer", id.Issuer, "groups", len(id.Groups))
		return p.federatedLogin(ctx, cfg, log, id)
	}
	attempt := sso.Attempt{ConnectionID: r.ConnectionID, Remote: r.Remote.Addr().Unmap(), Hint: r.Username}
	if r.Peer != nil {
		attempt.Platform, attempt.Version = r.Peer.Platform, r.Peer.Version
	}
	if r.Certificate != nil {
		attempt.CommonName = r.Certificate.Subject.CommonName
	}
	login, err := f.Broker.Start(ctx, attempt)
	if err != nil {
		log.Warn("single sign-on: no login started", "reason", err)
		return nil, refuse(CodeSSOLogin, "too many logins in progress; try again later")
	}
	url := f.LoginURL(sso.FormatCode(login.Code))
	if extra := webAuth(r, url); extra != "" {
		log.Info("single sign-on: login pending in the client's browser", "code", sso.FormatCode(login.Code))
		return nil, &session.Pending{Extra: extra, Timeout: login.Expires.Sub(p.now()), Wait: func(ctx context.Context) (*session.User, error) {
			id, err := f.Broker.Await(ctx, login.State)
			if err != nil {
				log.Warn("single sign-on refused", "code", sso.FormatCode(login.Code), "reason", err)
				if errors.Is(err, sso.ErrUnknown) || errors.Is(err, context.DeadlineExceeded) {
					return nil, refuse(CodeSSOExpired, "the login was not completed in time")
				}
				return nil, refuse(CodeSSOFailed, "single sign-on failed: "+err.Error())
			}
			log.Info("single sign-on accepted", "user", id.Username, "issuer", id.Issuer, "groups", len(id.Groups))
			return p.federatedLogin(ctx, cfg, log, id)
		}}
	}
	return nil, p.notice(cfg, log, login.State, r.Username, url)
}

// webAuth is the INFO_PRE text that sends a client announcing IV_SSO to url, "" for a client
// that cannot open one (src/openvpn/ssl.c announces webauth, openurl, crtext).
func webAuth(r *session.AuthRequest, url string) string {
	if r.Peer == nil {
		return ""
	}
	methods := strings.Split(r.Peer.Raw["IV_SSO"], ",")
	switch {
	case slices.Contains(methods, "webauth"):
		return "WEB_AUTH::" + url
	case slices.Contains(methods, "openurl"):
		return "OPEN_URL:" + url
	}
	return ""
}

// notice refuses an attempt with the CRV1 notice that sends the user to url and asks for
// Enter; url "" finds the link again by the login's state.
func (p *Pipeline) notice(cfg *Config, log *slog.Logger, state, hint, url string) error {
	if url == "" {
		url = "the link given before"
	}
	if hint == "" || len(hint) > 64 {
		hint = "sso"
	}
	msg, err := credential.Notice(state, hint, "Open "+url+" in a browser, sign in, then press Enter")
	if err != nil {
		log.Error("single sign-on: building the notice failed", "err", err)
		return refuse(CodeSSOLogin, "the login link cannot be sent")
	}
	log.Info("single sign-on: login link sent", "url", url)
	// The state admits whoever presents it once the browser login completed: client only.
	return &session.Refusal{Message: msg, Logged: "single sign-on link sent: " + url, Code: CodeSSOLogin}
}

// federatedLogin makes the session user of a completed browser login and keeps its identity
// for the auth-token.
func (p *Pipeline) federatedLogin(ctx context.Context, cfg *Config, log *slog.Logger, id sso.Identity) (*session.User, error) {
	if id.Username == "" {
		return nil, refuse(CodeSSOFailed, "the identity provider named no user")
	}
	claims := p.newLogin(cfg, id.Username)
	rec, _ := json.Marshal(identityRecord{Username: id.Username, Groups: id.Groups, Expires: claims.Expires})
	store := cfg.Federation.Identities
	if err := store.Put(ctx, identityBucket, hex.EncodeToString(claims.ID[:]), rec); err != nil {
		log.Error("single sign-on: keeping the login for its auth-token failed; reconnects will ask again", "err", err)
	}
	if ssoWrites.Add(1)%ssoTrimEvery == 0 {
		go p.trimIdentities(store)
	}
	return p.federatedUser(cfg, id.Username, id.Groups, claims), nil
}

// federatedUser is the session user of a federated login with its auth-token.
func (p *Pipeline) federatedUser(cfg *Config, user string, groups []string, claims token.Claims) *session.User {
	return &session.User{Name: user, Username: user, Groups: slices.Clone(groups), Push: tokenPush(cfg, user, claims)}
}

// federatedToken verifies a federated login's auth-token and finds who it was.
func (p *Pipeline) federatedToken(ctx context.Context, cfg *Config, tok, user string) (token.Claims, identityRecord, error) {
	claims, err := cfg.Tokens.Verify(tok, user, p.now())
	if err != nil {
		return claims, identityRecord{}, err
	}
	data, err := cfg.Federation.Identities.Get(ctx, identityBucket, hex.EncodeToString(claims.ID[:]))
	if err != nil {
		return claims, identityRecord{}, err
	}
	var rec identityRecord
	if err := json.Unmarshal(data, &rec); err != nil || rec.Username != user || !p.now().Before(rec.Expires) {
		return claims, identityRecord{}, errors.New("the login of this token is not known")
	}
	return claims, rec, nil
}

// trimIdentities removes the identities of logins whose tokens expired.
func (p *Pipeline) trimIdentities(store state.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keys, err := store.List(ctx, identityBucket)
	if err != nil {
		return
	}
	now := p.now()
	for _, k := range keys {
		data, err := store.Get(ctx, identityBucket, k)
		var rec identityRecord
		if err != nil || json.Unmarshal(data, &rec) != nil || !now.Before(rec.Expires) {
			_ = store.Delete(ctx, identityBucket, k)
		}
	}
}

// reauthenticateFederated checks a federated session's renegotiation: its auth-token, and the
// login it was minted for. The groups stay those of the login (the identity provider is not
// asked again before the session timeout).
func (p *Pipeline) reauthenticateFederated(ctx context.Context, cfg *Config, log *slog.Logger, info *session.Info, r *session.AuthRequest) (*session.User, error) {
	cred, err := credential.Parse(r.Username, r.Password)
	if err != nil || cred.Kind != credential.Token || cred.Username != info.Username {
		log.Warn("renegotiation refused", "reason", "no auth-token of the session's user")
		return nil, refuse(CodeTokenInvalid, "renegotiation needs the auth-token: log in again")
	}
	claims, rec, err := p.federatedToken(ctx, cfg, cred.Token, cred.Username)
	if err != nil {
		log.Warn("renegotiation refused", "reason", err)
		return nil, refuse(CodeTokenInvalid, "the auth-token is no longer valid: log in again")
	}
	out := p.federatedUser(cfg, rec.Username, rec.Groups, claims)
	out.Name = info.User
	log.Info("renegotiation accepted", "groups", out.Groups)
	return out, nil
}
