// Package oidc is cvpn's OpenID Connect relying party: it sends a user's browser to the
// provider (authorization code flow with PKCE S256, a state and a nonce per login), takes the
// provider's callback, exchanges the code, verifies the ID token and returns the user's
// Identity (username and groups from configured claims).
//
// It knows nothing of VPN sessions or HTTP routing: the caller (the admission pipeline, the
// self-service portal) binds a login's State to whatever waits for it and serves the callback.
//
// # Login state
//
// A Provider keeps its pending logins itself, in a state.Store (Config.Store; in this process
// without one) keyed by the SHA-256 of the state parameter: Begin stores the nonce, the PKCE
// verifier and the expiry, sealed under a key derived from the state, and returns only public
// facts (Login); Complete marks the entry used (compare-and-swap) before anything else, so a
// state completes at most once whatever the outcome and on whichever node of a cluster the
// callback lands, and a login older than Config.LoginTTL fails with ErrLoginExpired. A used
// state is remembered for another LoginTTL, so a replay fails with ErrStateReplayed rather than
// ErrUnknownState. Secrets never leave the Provider (nor sit in the store in the clear), and
// the caller cannot forget to delete them.
//
// Attacker's view: anyone who can open the portal's login page begins a login, costing the
// store one record of about 250 bytes and 8 bytes of a ledger; the ledger admits
// Config.MaxPendingLogins logins begun within a LoginTTL across every node (then
// ErrTooManyLogins), so the store holds at most twice that many records; Begin sweeps
// expired records in bounded batches. The portal's per-address rate limits come first.
//
// # What is verified
//
// Discovery (OpenID Connect Discovery 1.0 §4) must name exactly the configured issuer, and every
// endpoint must be HTTPS. The ID token (OpenID Connect Core 1.0 §3.1.3.7) must: be a JWS signed
// with an asymmetric algorithm by a key the provider publishes at its jwks_uri; name the issuer
// in iss; list the client ID in aud; if azp is present (required with several audiences), name
// the client ID; be unexpired and not issued in the future, within a skew of one minute on
// Config.Now; carry the login's nonce; carry at_hash matching the access token if present.
// An authorization response carrying iss (RFC 9207) must name the issuer too.
//
// Keys are fetched on first use and again when a token names an unknown key ID (a rotation), at
// most once per 10 seconds. Every response read from the provider is bounded (512 KiB) and
// every request has a timeout; provider endpoints may not redirect.
//
// Nothing here logs; errors never include a token, code, nonce or verifier.
//
// The discovery, claim types and ID token checks are zitadel/oidc's (pkg/client, pkg/oidc); the
// code exchange is golang.org/x/oauth2's. The key set, expiry checks and login table are this
// package's own, for the injected clock and the rate-limited refetch.
package oidc

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/client"
	zrp "github.com/zitadel/oidc/v3/pkg/client/rp"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/oauth2"

	"github.com/cvpn/cvpn/state"
)

// Defaults and fixed limits.
const (
	// DefaultLoginTTL is how long a login may wait for its callback.
	DefaultLoginTTL = 10 * time.Minute
	// DefaultMaxPendingLogins bounds the login table.
	DefaultMaxPendingLogins = 10000
	// ClockSkew is the tolerance on the ID token's exp, iat and nbf.
	ClockSkew = time.Minute
	// KeyRefetchInterval is the least time between two fetches of the provider's keys.
	KeyRefetchInterval = 10 * time.Second

	defaultHTTPTimeout = 10 * time.Second
	maxIDTokenBytes    = 256 << 10
	maxStateBytes      = 128
	maxCodeBytes       = 4096
)

// signingAlgs are the ID token algorithms accepted: asymmetric only. HS256 (a MAC keyed with the
// client secret) and "none" are refused.
var signingAlgs = []string{
	string(jose.RS256), string(jose.RS384), string(jose.RS512),
	string(jose.PS256), string(jose.PS384), string(jose.PS512),
	string(jose.ES256), string(jose.ES384), string(jose.ES512),
	string(jose.EdDSA),
}

// Config configures a Provider.
type Config struct {
	// Issuer is the provider's issuer URL, exactly as its discovery document and its ID tokens
	// state it (https only).
	Issuer string
	// ClientID and ClientSecret are cvpn's registration at the provider. An empty secret makes
	// cvpn a public client (PKCE only).
	ClientID     string
	ClientSecret string
	// Scopes requested. Empty means openid, profile and email; "openid" is added if missing.
	// Ask for "groups" here if the provider needs that scope to send the groups claim.
	Scopes []string
	// RedirectURL is the callback URL registered at the provider (the portal's /oidc/callback).
	RedirectURL string
	// UsernameClaim names the claim that holds the username. Empty means preferred_username,
	// falling back to email, then sub. A claim named here has no fallback. The username is what
	// the provider states: where users can edit their own preferred_username or email (some
	// multi-tenant providers), name a claim the provider's administrators control, since
	// authorization rules match on it; Identity.Subject is the stable identifier either way.
	UsernameClaim string
	// GroupsClaim names the claim that holds the groups (default "groups"); a list of strings or
	// a single string, at most MaxGroups names of at most MaxNameLength bytes.
	GroupsClaim string
	// HTTPClient makes the requests to the provider (its transport's TLS roots are used; tests
	// trust their CA here). Nil means a default client. Its timeout defaults to 10 s.
	HTTPClient *http.Client
	// Now is the clock (default time.Now), for login expiry, ID token times and key refetches.
	Now func() time.Time
	// LoginTTL is how long a login may wait for its callback (default DefaultLoginTTL).
	LoginTTL time.Duration
	// MaxPendingLogins bounds the logins waiting for a callback (default
	// DefaultMaxPendingLogins); Begin fails with ErrTooManyLogins beyond it.
	MaxPendingLogins int
	// Store holds the pending logins; nodes of a cluster pass their shared store so that a
	// callback may reach another node than the one that began the login. Nil keeps them in
	// this process (state.NewMemory).
	Store state.Store
}

// Identity is a user the provider vouched for.
type Identity struct {
	// Username is from Config.UsernameClaim (see there).
	Username string
	// Groups is from Config.GroupsClaim, without empty names or duplicates, in the provider's
	// order; nil if the claim is absent.
	Groups []string
	// Subject is the provider's stable, never reassigned identifier for the user (sub).
	Subject string
	// Issuer is the provider's issuer URL.
	Issuer string
}

// Login is the public record of a login Begin started. The secrets it stands for (nonce, PKCE
// verifier) stay inside the Provider; the caller keeps State to find what waits for this login
// when Complete returns.
type Login struct {
	// State is the state parameter sent to the provider and returned in its callback.
	State string `json:"state"`
	// Created and Expires bound the login on Config.Now.
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// Provider is a relying party registered with one OpenID Provider. It is safe for concurrent use.
type Provider struct {
	cfg    Config
	client *http.Client
	oauth  oauth2.Config
	keys   *keySet
	names  []string // username claims, in order
	logins *loginTable
}

// New fetches the provider's discovery document and returns a Provider. Keys are fetched on
// first use.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	if err := checkConfig(&cfg); err != nil {
		return nil, err
	}
	hc := providerClient(cfg.HTTPClient)
	disco, err := client.Discover(ctx, cfg.Issuer, hc)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return nil, fmt.Errorf("%w: discovery document of %s: %w", ErrDiscovery, cfg.Issuer, ErrTooLarge)
		}
		if errors.Is(err, zoidc.ErrIssuerInvalid) {
			return nil, fmt.Errorf("%w: the discovery document at %s names another issuer: %w", ErrDiscovery, cfg.Issuer, ErrIssuer)
		}
		return nil, fmt.Errorf("%w: %s: %s", ErrDiscovery, cfg.Issuer, sanitize(err.Error(), 300))
	}
	for name, u := range map[string]string{
		"authorization_endpoint": disco.AuthorizationEndpoint,
		"token_endpoint":         disco.TokenEndpoint,
		"jwks_uri":               disco.JwksURI,
	} {
		if pu, err := url.Parse(u); err != nil || pu.Scheme != "https" || pu.Host == "" {
			return nil, fmt.Errorf("%w: %s: %s %.200q is not an https URL", ErrDiscovery, cfg.Issuer, name, u)
		}
	}
	p := &Provider{
		cfg:    cfg,
		client: hc,
		keys:   &keySet{url: disco.JwksURI, client: hc, now: cfg.Now, minRefetch: KeyRefetchInterval},
		logins: newLoginTable(cfg.Store, cfg.MaxPendingLogins, cfg.LoginTTL),
		names:  defaultUsernameClaims,
	}
	if cfg.UsernameClaim != "" {
		p.names = []string{cfg.UsernameClaim}
	}
	style := oauth2.AuthStyleInHeader // client_secret_basic, the default (OIDC Discovery §3)
	if m := disco.TokenEndpointAuthMethodsSupported; len(m) > 0 && !slices.Contains(m, zoidc.AuthMethodBasic) &&
		slices.Contains(m, zoidc.AuthMethodPost) {
		style = oauth2.AuthStyleInParams
	}
	if cfg.ClientSecret == "" {
		style = oauth2.AuthStyleInParams // public client: client_id in the form, no secret
	}
	p.oauth = oauth2.Config{
		ClientID:     cfg.ClientID,
		ClientSecret: cfg.ClientSecret,
		RedirectURL:  cfg.RedirectURL,
		Scopes:       cfg.Scopes,
		Endpoint: oauth2.Endpoint{
			AuthURL:   disco.AuthorizationEndpoint,
			TokenURL:  disco.TokenEndpoint,
			AuthStyle: style,
		},
	}
	return p, nil
}

func checkConfig(cfg *Config) error {
	iss, err := url.Parse(cfg.Issuer)
	if err != nil || iss.Scheme != "https" || iss.Host == "" || iss.RawQuery != "" || iss.Fragment != "" {
		return fmt.Errorf("%w: issuer %q must be an https URL without query or fragment", ErrConfig, cfg.Issuer)
	}
	if cfg.ClientID == "" {
		return fmt.Errorf("%w: no client ID", ErrConfig)
	}
	if ru, err := url.Parse(cfg.RedirectURL); err != nil || (ru.Scheme != "https" && ru.Scheme != "http") || ru.Host == "" {
		return fmt.Errorf("%w: redirect URL %q must be an absolute http(s) URL", ErrConfig, cfg.RedirectURL)
	}
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = []string{zoidc.ScopeOpenID, zoidc.ScopeProfile, zoidc.ScopeEmail}
	} else if !slices.Contains(cfg.Scopes, zoidc.ScopeOpenID) {
		cfg.Scopes = append([]string{zoidc.ScopeOpenID}, cfg.Scopes...)
	}
	if cfg.GroupsClaim == "" {
		cfg.GroupsClaim = "groups"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LoginTTL <= 0 {
		cfg.LoginTTL = DefaultLoginTTL
	}
	if cfg.MaxPendingLogins <= 0 {
		cfg.MaxPendingLogins = DefaultMaxPendingLogins
	}
	return nil
}

// Issuer returns the provider's issuer URL.
func (p *Provider) Issuer() string { return p.cfg.Issuer }

// Begin starts a login: it returns the provider URL to send the user's browser to and the
// login's public record. The login waits in the Provider until Complete or LoginTTL.
func (p *Provider) Begin(ctx context.Context) (authURL string, login Login, err error) {
	if err := ctx.Err(); err != nil {
		return "", Login{}, err
	}
	now := p.cfg.Now()
	pl := pendingLogin{
		nonce:    randomToken(),
		verifier: oauth2.GenerateVerifier(),
		expires:  now.Add(p.cfg.LoginTTL),
	}
	state := randomToken()
	if err := p.logins.add(ctx, state, pl, now); err != nil {
		return "", Login{}, err
	}
	authURL = p.oauth.AuthCodeURL(state,
		oauth2.S256ChallengeOption(pl.verifier),
		oauth2.SetAuthURLParam("nonce", pl.nonce))
	return authURL, Login{State: state, Created: now, Expires: pl.expires}, nil
}

// CompleteRequest completes a login from the provider's redirect to the callback: the query's
// state and code, or its error. It reads only r.URL (response_mode query, the default).
func (p *Provider) CompleteRequest(r *http.Request) (Identity, error) {
	q := r.URL.Query()
	state := q.Get("state")
	if iss := q.Get("iss"); iss != "" && iss != p.cfg.Issuer {
		// RFC 9207 §2.4: a response from another provider (a mix-up attack). The login is
		// consumed: whoever holds this state is not talking to our provider.
		_, _ = p.logins.take(r.Context(), state, p.cfg.Now())
		return Identity{}, fmt.Errorf("%w: the authorization response names issuer %.200q", ErrIssuer, iss)
	}
	if e := q.Get("error"); e != "" {
		if _, err := p.logins.take(r.Context(), state, p.cfg.Now()); err != nil {
			return Identity{}, err
		}
		return Identity{}, fmt.Errorf("%w: %s: %s", ErrProviderDenied, sanitize(e, 64), sanitize(q.Get("error_description"), 200))
	}
	return p.Complete(r.Context(), state, q.Get("code"))
}

// Complete completes the login with this state: it consumes the login, exchanges code at the
// token endpoint with the login's PKCE verifier, verifies the ID token and returns the Identity.
func (p *Provider) Complete(ctx context.Context, state, code string) (Identity, error) {
	if state == "" || len(state) > maxStateBytes {
		return Identity{}, fmt.Errorf("%w: state missing or longer than %d bytes", ErrBadCallback, maxStateBytes)
	}
	pl, err := p.logins.take(ctx, state, p.cfg.Now())
	if err != nil {
		return Identity{}, err
	}
	if code == "" || len(code) > maxCodeBytes {
		return Identity{}, fmt.Errorf("%w: code missing or longer than %d bytes", ErrBadCallback, maxCodeBytes)
	}
	ctx, overflow := withOverflowFlag(context.WithValue(ctx, oauth2.HTTPClient, p.client))
	tok, err := p.oauth.Exchange(ctx, code, oauth2.VerifierOption(pl.verifier))
	if err != nil {
		if overflow.Load() {
			return Identity{}, fmt.Errorf("%w: token response: %w", ErrExchange, ErrTooLarge)
		}
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			// The provider's error code and description only, not the body.
			status := ""
			if re.Response != nil {
				status = re.Response.Status
			}
			return Identity{}, fmt.Errorf("%w: token endpoint answered %s: %s: %s", ErrExchange, status,
				sanitize(re.ErrorCode, 64), sanitize(re.ErrorDescription, 200))
		}
		return Identity{}, fmt.Errorf("%w: %s", ErrExchange, sanitize(err.Error(), 300))
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return Identity{}, fmt.Errorf("%w: the token response has no id_token", ErrIDToken)
	}
	claims, err := p.verify(ctx, raw, pl.nonce)
	if err != nil {
		return Identity{}, err
	}
	if err := zrp.VerifyAccessToken(tok.AccessToken, claims.AccessTokenHash, claims.SignatureAlg); err != nil {
		return Identity{}, fmt.Errorf("%w: at_hash does not match the access token", ErrIDToken)
	}
	return p.identity(claims)
}

// verify checks an ID token as OpenID Connect Core 1.0 §3.1.3.7 asks.
func (p *Provider) verify(ctx context.Context, raw, nonce string) (*zoidc.IDTokenClaims, error) {
	if len(raw) > maxIDTokenBytes {
		return nil, fmt.Errorf("%w: ID token of %d bytes, more than %d", ErrTooLarge, len(raw), maxIDTokenBytes)
	}
	claims := new(zoidc.IDTokenClaims)
	payload, err := zoidc.ParseToken(raw, claims)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIDToken, err)
	}
	if err := zoidc.CheckSubject(claims); err != nil {
		return nil, fmt.Errorf("%w: no sub claim", ErrIDToken)
	}
	if claims.Issuer != p.cfg.Issuer {
		return nil, fmt.Errorf("%w: ID token issued by %.200q, not %q", ErrIssuer, claims.Issuer, p.cfg.Issuer)
	}
	if err := zoidc.CheckAudience(claims, p.cfg.ClientID); err != nil {
		return nil, fmt.Errorf("%w: ID token audience %.200q lacks client ID %q", ErrAudience, []string(claims.Audience), p.cfg.ClientID)
	}
	if err := zoidc.CheckAZPVerifier(claims, zoidc.DefaultAZPVerifier(p.cfg.ClientID)); err != nil {
		return nil, fmt.Errorf("%w: ID token authorized party %.200q is not client ID %q", ErrAudience, claims.AuthorizedParty, p.cfg.ClientID)
	}
	if err := zoidc.CheckSignature(ctx, raw, payload, claims, signingAlgs, p.keys); err != nil {
		if errors.Is(err, ErrTooLarge) {
			return nil, fmt.Errorf("%w: provider keys: %w", ErrSignature, ErrTooLarge)
		}
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	now := p.cfg.Now()
	exp, iat, nbf := claims.GetExpiration(), claims.GetIssuedAt(), claims.NotBefore.AsTime()
	switch {
	case exp.IsZero() || !now.Before(exp.Add(ClockSkew)):
		return nil, fmt.Errorf("%w: expired at %s (now %s)", ErrTokenExpired, exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case iat.IsZero():
		return nil, fmt.Errorf("%w: no iat claim", ErrIDToken)
	case iat.After(now.Add(ClockSkew)):
		return nil, fmt.Errorf("%w: issued in the future, at %s (now %s)", ErrTokenExpired, iat.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case !nbf.IsZero() && nbf.Unix() > 0 && nbf.After(now.Add(ClockSkew)):
		return nil, fmt.Errorf("%w: not valid before %s (now %s)", ErrTokenExpired, nbf.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if subtle.ConstantTimeCompare([]byte(claims.Nonce), []byte(nonce)) != 1 {
		return nil, fmt.Errorf("%w: the ID token was not issued for this login", ErrNonce)
	}
	return claims, nil
}

func (p *Provider) identity(c *zoidc.IDTokenClaims) (Identity, error) {
	name, err := username(c.Claims, p.names)
	if err != nil {
		return Identity{}, err
	}
	g, err := groups(c.Claims, p.cfg.GroupsClaim)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Username: name, Groups: g, Subject: c.Subject, Issuer: c.Issuer}, nil
}

// randomToken returns 256 random bits, base64url without padding.
func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// sanitize keeps a provider-supplied string printable and short, for error messages.
func sanitize(s string, max int) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= max {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}
