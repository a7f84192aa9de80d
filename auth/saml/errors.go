package saml

import "errors"

// Sentinels for errors.Is. Every error Complete returns wraps exactly one of them, and its
// message says what was wrong without quoting the response or assertion.
var (
	// ErrConfig: the Config cannot make a service provider (bad metadata, URL, key).
	ErrConfig = errors.New("saml: invalid configuration")
	// ErrTooManyLogins: Begin found the pending-login store full of unexpired logins.
	ErrTooManyLogins = errors.New("saml: too many pending logins")
	// ErrRequest: the ACS request is not a form POST (method, content type, body).
	ErrRequest = errors.New("saml: not an HTTP-POST binding request")
	// ErrResponseTooLarge: the SAMLResponse (or the whole form) is larger than
	// Config.MaxResponseBytes; it was refused before any decoding or XML parsing.
	ErrResponseTooLarge = errors.New("saml: response too large")
	// ErrMalformedResponse: missing or repeated fields, bad base64, XML that does not parse
	// or does not hold what a Response must hold.
	ErrMalformedResponse = errors.New("saml: malformed response")
	// ErrUnknownLogin: the RelayState names no pending login: never issued, expired, already
	// completed (single use), or absent as in an IdP-initiated login.
	ErrUnknownLogin = errors.New("saml: unknown, expired or used login state")
	// ErrSignature: neither the Response nor the Assertion carries a valid signature by a
	// certificate of the IdP metadata.
	ErrSignature = errors.New("saml: missing or invalid signature")
	// ErrRequestID: InResponseTo does not name the AuthnRequest of this login (replays,
	// IdP-initiated responses, a response for another login).
	ErrRequestID = errors.New("saml: InResponseTo does not match the login's request")
	// ErrAudience: the assertion is not restricted to Config.EntityID.
	ErrAudience = errors.New("saml: audience is not this service provider")
	// ErrDestination: the Response's Destination or the Recipient is not Config.ACSURL.
	ErrDestination = errors.New("saml: destination is not this ACS")
	// ErrIssuer: the Response or Assertion issuer is not the IdP of the metadata.
	ErrIssuer = errors.New("saml: issuer is not the configured IdP")
	// ErrExpired: the assertion or response is no longer valid (NotOnOrAfter, IssueInstant).
	ErrExpired = errors.New("saml: assertion expired")
	// ErrNotYetValid: NotBefore or IssueInstant lies in the future beyond the skew.
	ErrNotYetValid = errors.New("saml: assertion not yet valid")
	// ErrStatus: the IdP answered with a status other than Success (login failed there).
	ErrStatus = errors.New("saml: IdP reported a failed login")
	// ErrReplayed: this assertion ID was already accepted.
	ErrReplayed = errors.New("saml: assertion replayed")
	// ErrIdentity: the NameID or the groups attribute is missing, too long, too many or
	// holds characters a username or group may not.
	ErrIdentity = errors.New("saml: unusable identity in assertion")
	// ErrRefused: the library refused the response for a reason none of the above names;
	// the message carries its reason.
	ErrRefused = errors.New("saml: response refused")
)
