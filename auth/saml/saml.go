// Package saml is cvpn's SAML 2.0 service provider for federated logins, as AWS Client VPN's
// federated authentication: the IdP is described by its metadata file, the browser is sent to
// it with an HTTP-Redirect AuthnRequest, and it answers at the portal's assertion consumer
// service (ACS, /saml/acs) with the HTTP-POST binding. A login yields an Identity whose
// Username is the assertion's NameID and whose Groups are the values of the memberOf
// attribute (Config.GroupsAttribute).
//
// The XML, signature and condition checks are github.com/crewjam/saml's; this package chooses
// its strict settings and adds what cvpn needs around them:
//   - a signed Response or a signed Assertion is required, by a certificate of the IdP
//     metadata (SHA-1 signatures refused);
//   - the audience must be Config.EntityID, the Destination and Recipient Config.ACSURL;
//   - NotBefore / NotOnOrAfter and IssueInstant are checked against Config.Now with
//     Config.ClockSkew on top of the library's own bounds;
//   - every login is SP-initiated: InResponseTo must name the AuthnRequest of a pending login,
//     found by its RelayState; IdP-initiated (unsolicited) responses are refused;
//   - the SAMLResponse form value is refused beyond Config.MaxResponseBytes before it is
//     base64-decoded, let alone parsed;
//   - the HTTP-Artifact and HTTP-POST-SimpleSign bindings are not accepted: the portal never
//     calls back to the IdP, and it advertises only HTTP-POST in its metadata.
//
// Pending logins live in a state.Store (Config.Store; in this process without one), keyed by
// the SHA-256 of their state: Begin adds one, Complete takes it out (compare-and-swap) whatever
// the outcome, so each login state and each AuthnRequest ID is single use across every node
// sharing the store, and a replayed response finds no login; accepted assertion IDs are kept
// there too. Begin also returns the Login so the caller can bind its own state (a waiting VPN
// connection, a portal session) to Login.State, which Complete hands back in Identity.State.
//
// Attacker's view: anyone who can open the portal's login page begins a login, costing the
// store one entry of about 100 bytes and 8 bytes of a ledger; the ledger admits
// Config.MaxPendingLogins logins begun within a LoginTTL across every node (then
// ErrTooManyLogins); a place is freed when its login expires, not when it completes, so the
// bound is also one on the rate of logins. Assertion IDs are recorded only for responses
// whose signature verified. Begin sweeps expired keys in bounded batches.
//
// The package never logs, and its errors never quote a response or an assertion: they name
// what was wrong and wrap one of the sentinels of errors.go. It does not know about VPN
// sessions, the portal's cookies or rate limits (the portal rate-limits Begin and the ACS).
package saml

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	crewsaml "github.com/crewjam/saml"
	"github.com/crewjam/saml/samlsp"
	dsig "github.com/russellhaering/goxmldsig"

	"github.com/cvpn/cvpn/auth/expiry"
	"github.com/cvpn/cvpn/state"
)

// Defaults for the zero fields of Config.
const (
	DefaultGroupsAttribute  = "memberOf"
	DefaultMaxResponseBytes = 256 << 10
	DefaultLoginTTL         = 10 * time.Minute
	DefaultMaxPendingLogins = 10000
	DefaultMaxGroups        = 256
	DefaultClockSkew        = 60 * time.Second

	// MaxNameLength bounds the NameID and each group name, in bytes.
	MaxNameLength = 256
	// maxMetadataBytes bounds the IdP metadata file.
	maxMetadataBytes = 4 << 20
)

// Config describes the service provider and the IdP it trusts.
type Config struct {
	// IdPMetadata is the content of the IdP's metadata file (an EntityDescriptor, or an
	// EntitiesDescriptor holding one IdP). Its signing certificates are the only keys
	// trusted for responses; it must offer an HTTP-Redirect SingleSignOnService.
	IdPMetadata []byte
	// EntityID is this service provider's entity ID: the audience assertions must name.
	EntityID string
	// ACSURL is the absolute URL of the portal's assertion consumer service (/saml/acs):
	// the Destination and Recipient responses must name.
	ACSURL string
	// Certificate and Key, if set, sign the AuthnRequests (for IdPs that want signed
	// requests) and, for an RSA key, decrypt encrypted assertions; the SP metadata then
	// publishes the certificate. Both or neither.
	Certificate *x509.Certificate
	Key         crypto.Signer
	// GroupsAttribute is the Name of the attribute whose values are the user's groups
	// (DefaultGroupsAttribute, "memberOf", as AWS Client VPN).
	GroupsAttribute string
	// MaxResponseBytes bounds the base64 SAMLResponse form value (DefaultMaxResponseBytes).
	MaxResponseBytes int
	// MaxPendingLogins bounds the logins begun within a LoginTTL, and the remembered
	// assertion IDs, across every node of Store (DefaultMaxPendingLogins).
	MaxPendingLogins int
	// MaxGroups bounds the values of the groups attribute (DefaultMaxGroups).
	MaxGroups int
	// ClockSkew is the tolerance for the IdP's clock on NotBefore, NotOnOrAfter and
	// IssueInstant (DefaultClockSkew); the library's own bounds (180 s) still apply.
	ClockSkew time.Duration
	// LoginTTL is how long a begun login may be completed (DefaultLoginTTL).
	LoginTTL time.Duration
	// Now is the clock (time.Now if nil).
	Now func() time.Time
	// Store holds the pending logins and the accepted assertion IDs; nodes of a cluster pass
	// their shared store so that the ACS may be reached on another node than the one that
	// began the login. Nil keeps them in this process (state.NewMemory).
	Store state.Store
}

// Login is a begun login.
type Login struct {
	// State is the RelayState sent to the IdP and echoed to the ACS: 43 random URL-safe
	// characters, a secret of this login.
	State string
	// RequestID is the ID of the AuthnRequest; the response's InResponseTo must equal it.
	RequestID string
	// Expires is when Complete stops accepting the login.
	Expires time.Time
}

// Identity is who a completed login proved to be.
type Identity struct {
	// Username is the assertion's NameID value.
	Username string
	// Groups are the values of Config.GroupsAttribute, in assertion order, duplicates removed.
	Groups []string
	// Subject is the IdP's identifier of the user: the NameID value, as SAML has no other.
	Subject string
	// Issuer is the IdP's entity ID.
	Issuer string
	// State is the Login.State this response completed.
	State string
}

// SP is a SAML service provider. It is safe for concurrent use.
type SP struct {
	cfg  Config
	acs  url.URL
	base crewsaml.ServiceProvider // never mutated after New; copied per call (see at)

	mu        sync.Mutex // guards lastSweep
	lastSweep time.Time

	// xmlParses counts responses handed to the XML parser, so tests can prove a refusal
	// happened before parsing.
	xmlParses atomic.Int64
}

type pendingLogin struct {
	requestID string
	expires   time.Time
}

// New checks cfg and builds the service provider.
func New(cfg Config) (*SP, error) {
	if cfg.GroupsAttribute == "" {
		cfg.GroupsAttribute = DefaultGroupsAttribute
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.LoginTTL <= 0 {
		cfg.LoginTTL = DefaultLoginTTL
	}
	if cfg.MaxPendingLogins <= 0 {
		cfg.MaxPendingLogins = DefaultMaxPendingLogins
	}
	if cfg.MaxGroups <= 0 {
		cfg.MaxGroups = DefaultMaxGroups
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = DefaultClockSkew
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Store == nil {
		cfg.Store = state.NewMemory()
	}
	if cfg.EntityID == "" {
		return nil, fmt.Errorf("%w: no entity ID", ErrConfig)
	}
	acs, err := url.Parse(cfg.ACSURL)
	if err != nil || (acs.Scheme != "https" && acs.Scheme != "http") || acs.Host == "" {
		return nil, fmt.Errorf("%w: ACS URL %q is not an absolute http(s) URL", ErrConfig, cfg.ACSURL)
	}
	if len(cfg.IdPMetadata) == 0 {
		return nil, fmt.Errorf("%w: no IdP metadata", ErrConfig)
	}
	if len(cfg.IdPMetadata) > maxMetadataBytes {
		return nil, fmt.Errorf("%w: IdP metadata is %d bytes, more than %d", ErrConfig, len(cfg.IdPMetadata), maxMetadataBytes)
	}
	md, err := samlsp.ParseMetadata(cfg.IdPMetadata)
	if err != nil {
		return nil, fmt.Errorf("%w: IdP metadata: %v", ErrConfig, err)
	}
	if len(md.IDPSSODescriptors) == 0 {
		return nil, fmt.Errorf("%w: IdP metadata of %q has no IDPSSODescriptor", ErrConfig, md.EntityID)
	}
	if md.EntityID == "" {
		return nil, fmt.Errorf("%w: IdP metadata has no entityID", ErrConfig)
	}
	base := crewsaml.ServiceProvider{
		EntityID:                         cfg.EntityID,
		AcsURL:                           *acs,
		IDPMetadata:                      md,
		AuthnNameIDFormat:                crewsaml.UnspecifiedNameIDFormat,
		AssertionConsumerServiceBindings: []string{crewsaml.HTTPPostBinding},
		LimitRelayStateLength:            true,
		RejectSHA1Signatures:             true,
	}
	if sso := base.GetSSOBindingLocation(crewsaml.HTTPRedirectBinding); sso == "" {
		return nil, fmt.Errorf("%w: IdP metadata of %q has no HTTP-Redirect SingleSignOnService", ErrConfig, md.EntityID)
	}
	if (cfg.Key == nil) != (cfg.Certificate == nil) {
		return nil, fmt.Errorf("%w: SP certificate and key must be given together", ErrConfig)
	}
	if cfg.Key != nil {
		switch cfg.Key.Public().(type) {
		case *rsa.PublicKey:
			base.SignatureMethod = dsig.RSASHA256SignatureMethod
		case *ecdsa.PublicKey:
			base.SignatureMethod = dsig.ECDSASHA256SignatureMethod
		default:
			return nil, fmt.Errorf("%w: SP key is %T, not RSA or ECDSA", ErrConfig, cfg.Key.Public())
		}
		if !publicKeysEqual(cfg.Key.Public(), cfg.Certificate.PublicKey) {
			return nil, fmt.Errorf("%w: SP key does not match the SP certificate", ErrConfig)
		}
		base.Key = cfg.Key
		base.Certificate = cfg.Certificate
	}
	s := &SP{cfg: cfg, acs: *acs}
	s.base = base
	// Probe that the metadata's signing certificates parse, so a broken file fails at load
	// rather than at the first login.
	if _, err := signingCertificates(md); err != nil {
		return nil, fmt.Errorf("%w: IdP metadata: %v", ErrConfig, err)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// signingCertificates returns the IdP's signing certificates from its metadata.
func signingCertificates(md *crewsaml.EntityDescriptor) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for _, d := range md.IDPSSODescriptors {
		for _, kd := range d.KeyDescriptors {
			if kd.Use != "" && kd.Use != "signing" {
				continue
			}
			for _, c := range kd.KeyInfo.X509Data.X509Certificates {
				der, err := base64.StdEncoding.DecodeString(stripSpace(c.Data))
				if err != nil {
					return nil, fmt.Errorf("signing certificate is not base64: %v", err)
				}
				cert, err := x509.ParseCertificate(der)
				if err != nil {
					return nil, fmt.Errorf("signing certificate: %v", err)
				}
				certs = append(certs, cert)
			}
		}
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("no signing certificate in the IDPSSODescriptor")
	}
	return certs, nil
}

func stripSpace(s string) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ' ', '\t', '\r', '\n':
		default:
			b = append(b, s[i])
		}
	}
	return string(b)
}

// at returns a copy of the library's service provider whose clock reads now. The library
// takes its clock as a *dsig.Clock; a fixed one per call keeps Config.Now the only clock and
// needs no shared mutable state.
func (s *SP) at(now time.Time) *crewsaml.ServiceProvider {
	sp := s.base
	sp.Clock = dsig.NewFakeClockAt(now)
	return &sp
}

// IdPEntityID is the entity ID of the trusted IdP.
func (s *SP) IdPEntityID() string { return s.base.IDPMetadata.EntityID }

// Metadata returns this SP's metadata document, to register the SP at the IdP: entity ID,
// the ACS with the HTTP-POST binding, and the certificate if one is configured.
func (s *SP) Metadata() ([]byte, error) {
	md := s.at(s.cfg.Now()).Metadata()
	b, err := xml.MarshalIndent(md, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("saml: SP metadata: %w", err)
	}
	return append([]byte(xml.Header), b...), nil
}

// Begin starts a login: it returns the URL of the IdP to redirect the browser to (an
// HTTP-Redirect binding AuthnRequest, signed if the SP has a key, RelayState = Login.State)
// and records the login as pending until Login.Expires. It is BeginContext without a deadline
// of the caller's.
func (s *SP) Begin() (string, Login, error) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	return s.BeginContext(ctx)
}

var errNoLogin = errors.New("saml: no pending login")

// storeTimeout bounds the store calls of Begin, which has no context of its caller.
const storeTimeout = 10 * time.Second

// BeginContext is Begin with the caller's context for the store.
func (s *SP) BeginContext(ctx context.Context) (string, Login, error) {
	now := s.cfg.Now()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", Login{}, fmt.Errorf("saml: login state: %w", err)
	}
	state := base64.RawURLEncoding.EncodeToString(b[:])
	sp := s.at(now)
	req, err := sp.MakeAuthenticationRequest(sp.GetSSOBindingLocation(crewsaml.HTTPRedirectBinding),
		crewsaml.HTTPRedirectBinding, crewsaml.HTTPPostBinding)
	if err != nil {
		return "", Login{}, fmt.Errorf("saml: AuthnRequest: %w", err)
	}
	u, err := req.Redirect(state, sp)
	if err != nil {
		return "", Login{}, fmt.Errorf("saml: AuthnRequest redirect: %w", err)
	}
	login := Login{State: state, RequestID: req.ID, Expires: now.Add(s.cfg.LoginTTL)}
	s.sweep(ctx, now)
	ledger, places := expiry.Shard("login", expiry.Key("saml state", state), s.cfg.MaxPendingLogins)
	if err := expiry.Reserve(ctx, s.cfg.Store, BoundBucket, ledger, now, login.Expires, places); err != nil {
		if errors.Is(err, expiry.ErrFull) {
			return "", Login{}, fmt.Errorf("%w: %d logins were begun in the last %s",
				ErrTooManyLogins, s.cfg.MaxPendingLogins, s.cfg.LoginTTL)
		}
		return "", Login{}, fmt.Errorf("saml: record the login: %w", err)
	}
	if err := s.putPending(ctx, state, pendingLogin{requestID: req.ID, expires: login.Expires}); err != nil {
		return "", Login{}, err
	}
	return u.String(), login, nil
}

// putPending records a pending login.
func (s *SP) putPending(ctx context.Context, state string, p pendingLogin) error {
	if err := expiry.Put(ctx, s.cfg.Store, LoginBucket, expiry.Key("saml state", state), p.expires, []byte(p.requestID)); err != nil {
		return fmt.Errorf("saml: record the login: %w", err)
	}
	return nil
}

// take removes the pending login of state and returns it if it has not expired.
func (s *SP) take(ctx context.Context, state string, now time.Time) (pendingLogin, error) {
	var p pendingLogin
	err := expiry.Update(ctx, s.cfg.Store, LoginBucket, expiry.Key("saml state", state), now,
		func(v []byte, until time.Time, ok bool) ([]byte, time.Time, error) {
			if !ok {
				return nil, time.Time{}, errNoLogin
			}
			p = pendingLogin{requestID: string(v), expires: until}
			return nil, time.Time{}, nil
		})
	if errors.Is(err, errNoLogin) {
		return pendingLogin{}, fmt.Errorf("%w: the RelayState names no pending login of this SP", ErrUnknownLogin)
	}
	if err != nil {
		return pendingLogin{}, fmt.Errorf("saml: take the login: %w", err)
	}
	return p, nil
}

// sweep deletes a batch of expired keys, at most every sweepEvery on this node.
func (s *SP) sweep(ctx context.Context, now time.Time) {
	s.mu.Lock()
	due := now.Sub(s.lastSweep) >= sweepEvery
	if due {
		s.lastSweep = now
	}
	s.mu.Unlock()
	if due {
		for _, b := range []string{LoginBucket, AssertionBucket, BoundBucket} {
			_, _ = expiry.Sweep(ctx, s.cfg.Store, b, now, sweepBatch)
		}
	}
}

// Pending returns how many logins are begun and not yet completed or expired, across every
// node of the store. It reads every pending key: for tests and diagnostics.
func (s *SP) Pending() int {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	keys, _ := s.cfg.Store.List(ctx, LoginBucket)
	n := 0
	for _, k := range keys {
		if _, _, err := expiry.Get(ctx, s.cfg.Store, LoginBucket, k, s.cfg.Now()); err == nil {
			n++
		}
	}
	return n
}
