package oidc

import "errors"

// Sentinel errors. Errors returned by this package wrap one of them, with the detail (which
// issuer, which claim, which limit) in the message; never with a token, a code, a nonce or a
// PKCE verifier.
var (
	// ErrConfig: the Config is incomplete or invalid (no issuer, a non-HTTPS issuer, ...).
	ErrConfig = errors.New("oidc: invalid configuration")
	// ErrDiscovery: the provider's discovery document could not be fetched or is unusable (its
	// issuer differs from the configured one, an endpoint is missing or not HTTPS).
	ErrDiscovery = errors.New("oidc: discovery failed")
	// ErrTooManyLogins: Begin refused a new login because MaxPendingLogins unexpired logins are
	// waiting for their callback.
	ErrTooManyLogins = errors.New("oidc: too many pending logins")
	// ErrUnknownState: the callback's state was never issued by this Provider (or its record
	// was dropped long after it expired). The callback may be forged.
	ErrUnknownState = errors.New("oidc: unknown login state")
	// ErrStateReplayed: the callback's state was already used by an earlier Complete, whatever
	// that one's outcome: each login completes at most once.
	ErrStateReplayed = errors.New("oidc: login state already used")
	// ErrLoginExpired: the callback came after the login's LoginTTL.
	ErrLoginExpired = errors.New("oidc: login expired")
	// ErrProviderDenied: the provider answered the callback with an error (the user cancelled,
	// access_denied, ...) instead of a code.
	ErrProviderDenied = errors.New("oidc: provider returned an error")
	// ErrBadCallback: the callback request lacks a state or a code, or one is oversized.
	ErrBadCallback = errors.New("oidc: malformed callback")
	// ErrExchange: the token endpoint refused the code or could not be reached.
	ErrExchange = errors.New("oidc: code exchange failed")
	// ErrTooLarge: a response from the provider (discovery, keys, token) exceeded its size limit.
	ErrTooLarge = errors.New("oidc: provider response too large")
	// ErrIDToken: the ID token is missing or malformed (not a JWS, bad JSON, no subject).
	ErrIDToken = errors.New("oidc: malformed ID token")
	// ErrIssuer: the ID token (or the callback's iss parameter) names another issuer.
	ErrIssuer = errors.New("oidc: wrong issuer")
	// ErrAudience: the ID token was not issued for this client: aud lacks the client ID, or azp
	// names another client.
	ErrAudience = errors.New("oidc: wrong audience")
	// ErrSignature: the ID token's signature does not verify with the provider's published
	// keys, uses an algorithm this package refuses, or names a key the provider does not publish.
	ErrSignature = errors.New("oidc: invalid ID token signature")
	// ErrTokenExpired: the ID token has expired, is not yet valid, or was issued in the future,
	// beyond the allowed clock skew.
	ErrTokenExpired = errors.New("oidc: ID token expired or not yet valid")
	// ErrNonce: the ID token's nonce is not the one this login sent.
	ErrNonce = errors.New("oidc: ID token nonce mismatch")
	// ErrClaims: the ID token lacks a usable username claim, or its groups claim is malformed
	// or exceeds the limits on count and length.
	ErrClaims = errors.New("oidc: unusable ID token claims")
)
