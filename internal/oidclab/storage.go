package oidclab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// storage is the in-memory op.Storage the zitadel provider drives: users, clients, pending
// authorization requests, issued access tokens and the signing keys. The op package does the
// protocol (authorize, token, keys, userinfo, discovery); storage only keeps state.
type storage struct {
	groupsClaim   string
	idTokenTTL    time.Duration
	maxKeyHistory int

	mu       sync.Mutex // guards everything below
	users    map[string]*user
	clients  map[string]*client
	requests map[string]*authRequest // by request ID
	codes    map[string]string       // code -> request ID
	tokens   map[string]*accessToken // by token ID
	keys     []*signingKey           // last is the one that signs; all are published
	seen     []AuthRequestInfo
}

type user struct {
	id       string // sub
	name     string
	password string
	groups   []string
	claims   map[string]any // overrides; a nil value removes the claim
}

type client struct {
	id           string
	secret       string
	redirectURIs []string
	extraAud     []string
	ttl          time.Duration
}

type accessToken struct {
	id       string
	clientID string
	subject  string
	scopes   []string
	expires  time.Time
}

type signingKey struct {
	id  string
	alg jose.SignatureAlgorithm
	key any // *rsa.PrivateKey or *ecdsa.PrivateKey
}

func newStorage(groupsClaim string, idTokenTTL time.Duration) *storage {
	return &storage{
		groupsClaim:   groupsClaim,
		idTokenTTL:    idTokenTTL,
		maxKeyHistory: 3,
		users:         map[string]*user{},
		clients:       map[string]*client{},
		requests:      map[string]*authRequest{},
		codes:         map[string]string{},
		tokens:        map[string]*accessToken{},
	}
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newSigningKey generates an RSA key for RS256, the algorithm every relying party must accept
// (OpenID Connect Core 1.0 §15.1), or an ECDSA P-256 key for ES256.
func newSigningKey(alg jose.SignatureAlgorithm) (*signingKey, error) {
	switch alg {
	case jose.RS256:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		return &signingKey{id: randomID()[:12], alg: alg, key: k}, nil
	case jose.ES256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		return &signingKey{id: randomID()[:12], alg: alg, key: k}, nil
	}
	return nil, fmt.Errorf("oidclab: unsupported signing algorithm %s", alg)
}

func (s *storage) addKey(k *signingKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = append(s.keys, k)
	if len(s.keys) > s.maxKeyHistory {
		s.keys = s.keys[len(s.keys)-s.maxKeyHistory:]
	}
}

// authRequest is one authorization request from a relying party, pending until the user signs
// in on the login page (done, subject set), then redeemed once by its code.
type authRequest struct {
	id        string
	req       oidc.AuthRequest
	audience  []string
	created   time.Time
	done      bool
	subject   string
	authTime  time.Time
	challenge *oidc.CodeChallenge
}

func (a *authRequest) GetID() string                         { return a.id }
func (a *authRequest) GetACR() string                        { return "" }
func (a *authRequest) GetAMR() []string                      { return []string{"pwd"} }
func (a *authRequest) GetAudience() []string                 { return a.audience }
func (a *authRequest) GetAuthTime() time.Time                { return a.authTime }
func (a *authRequest) GetClientID() string                   { return a.req.ClientID }
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge { return a.challenge }
func (a *authRequest) GetNonce() string                      { return a.req.Nonce }
func (a *authRequest) GetRedirectURI() string                { return a.req.RedirectURI }
func (a *authRequest) GetResponseType() oidc.ResponseType    { return a.req.ResponseType }
func (a *authRequest) GetResponseMode() oidc.ResponseMode    { return a.req.ResponseMode }
func (a *authRequest) GetScopes() []string                   { return a.req.Scopes }
func (a *authRequest) GetState() string                      { return a.req.State }
func (a *authRequest) GetSubject() string                    { return a.subject }
func (a *authRequest) Done() bool                            { return a.done }

var errNotFound = errors.New("oidclab: not found")

// CreateAuthRequest stores an authorization request the op package has validated (client,
// redirect URI, response type, PKCE method).
func (s *storage) CreateAuthRequest(_ context.Context, req *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[req.ClientID]
	if !ok {
		return nil, errNotFound
	}
	a := &authRequest{
		id:       randomID(),
		req:      *req,
		audience: append([]string{req.ClientID}, c.extraAud...),
		created:  time.Now(),
	}
	if req.CodeChallenge != "" {
		a.challenge = &oidc.CodeChallenge{Challenge: req.CodeChallenge, Method: req.CodeChallengeMethod}
	}
	s.requests[a.id] = a
	s.seen = append(s.seen, AuthRequestInfo{
		ClientID: req.ClientID, RedirectURI: req.RedirectURI, Scopes: slices.Clone([]string(req.Scopes)),
		State: req.State, Nonce: req.Nonce, CodeChallengeMethod: string(req.CodeChallengeMethod),
		HasCodeChallenge: req.CodeChallenge != "",
	})
	return a, nil
}

func (s *storage) AuthRequestByID(_ context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.requests[id]
	if !ok {
		return nil, errNotFound
	}
	return a, nil
}

func (s *storage) AuthRequestByCode(_ context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.codes[code]
	if !ok {
		return nil, errNotFound
	}
	a, ok := s.requests[id]
	if !ok {
		return nil, errNotFound
	}
	return a, nil
}

func (s *storage) SaveAuthCode(_ context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[code] = id
	return nil
}

// DeleteAuthRequest runs once the code is redeemed: the request and its codes are gone, so a
// second redemption of the same code fails with invalid_grant.
func (s *storage) DeleteAuthRequest(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.requests, id)
	for code, rid := range s.codes {
		if rid == id {
			delete(s.codes, code)
		}
	}
	return nil
}

// checkLogin marks request id as authenticated by name if the password matches.
func (s *storage) checkLogin(id, name, password string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.requests[id]
	if !ok {
		return errors.New("unknown or expired authorization request")
	}
	u, ok := s.users[name]
	if !ok || subtle.ConstantTimeCompare([]byte(u.password), []byte(password)) != 1 {
		return errors.New("invalid username or password")
	}
	a.done, a.subject, a.authTime = true, u.id, time.Now()
	return nil
}

func (s *storage) CreateAccessToken(_ context.Context, req op.TokenRequest) (string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := &accessToken{id: randomID(), subject: req.GetSubject(), scopes: req.GetScopes(), expires: time.Now().Add(5 * time.Minute)}
	if a, ok := req.(*authRequest); ok {
		t.clientID = a.GetClientID()
	}
	s.tokens[t.id] = t
	return t.id, t.expires, nil
}

func (s *storage) CreateAccessAndRefreshTokens(context.Context, op.TokenRequest, string) (string, string, time.Time, error) {
	return "", "", time.Time{}, errors.New("oidclab: refresh tokens are not supported")
}

func (s *storage) TokenRequestByRefreshToken(context.Context, string) (op.RefreshTokenRequest, error) {
	return nil, op.ErrInvalidRefreshToken
}

func (s *storage) TerminateSession(context.Context, string, string) error { return nil }

func (s *storage) RevokeToken(_ context.Context, tokenOrID, _, _ string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, tokenOrID)
	return nil
}

func (s *storage) GetRefreshTokenInfo(context.Context, string, string) (string, string, error) {
	return "", "", op.ErrInvalidRefreshToken
}

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.keys) == 0 {
		return nil, errors.New("oidclab: no signing key")
	}
	return signer{s.keys[len(s.keys)-1]}, nil
}

func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var algs []jose.SignatureAlgorithm
	for _, k := range s.keys {
		if !slices.Contains(algs, k.alg) {
			algs = append(algs, k.alg)
		}
	}
	return algs, nil
}

// KeySet publishes the current key and the previous ones, as providers do during a rotation.
func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]op.Key, 0, len(s.keys))
	for _, k := range s.keys {
		keys = append(keys, publicKey{k})
	}
	return keys, nil
}

func (s *storage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok {
		return nil, errNotFound
	}
	return opClient{c: c, ttl: s.idTokenTTL}, nil
}

func (s *storage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok || subtle.ConstantTimeCompare([]byte(c.secret), []byte(secret)) != 1 {
		return errors.New("oidclab: invalid client credentials")
	}
	return nil
}

// SetUserinfoFromScopes is deprecated in the op package; SetUserinfoFromRequest does the work.
func (s *storage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil
}

// SetUserinfoFromRequest fills the ID token's user claims: preferred_username and email (with
// the profile and email scopes), the groups claim (always, like a provider with a groups mapper),
// then the per-user overrides set by SetClaim.
func (s *storage) SetUserinfoFromRequest(_ context.Context, ui *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	return s.setUserinfo(ui, req.GetSubject(), scopes)
}

func (s *storage) SetUserinfoFromToken(_ context.Context, ui *oidc.UserInfo, tokenID, subject, _ string) error {
	s.mu.Lock()
	t, ok := s.tokens[tokenID]
	s.mu.Unlock()
	if !ok || time.Now().After(t.expires) {
		return errors.New("oidclab: invalid access token")
	}
	return s.setUserinfo(ui, t.subject, t.scopes)
}

func (s *storage) setUserinfo(ui *oidc.UserInfo, subject string, scopes []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var u *user
	for _, cand := range s.users {
		if cand.id == subject {
			u = cand
		}
	}
	if u == nil {
		return errors.New("oidclab: unknown subject")
	}
	ui.Subject = u.id
	if slices.Contains(scopes, oidc.ScopeProfile) {
		ui.PreferredUsername = u.name
		ui.Name = u.name
	}
	if slices.Contains(scopes, oidc.ScopeEmail) {
		ui.Email = u.name + "@oidclab.test"
		ui.EmailVerified = true
	}
	if len(u.groups) > 0 {
		ui.AppendClaims(s.groupsClaim, slices.Clone(u.groups))
	}
	for k, v := range u.claims {
		switch k {
		case "preferred_username":
			ui.PreferredUsername, _ = v.(string)
		case "email":
			ui.Email, _ = v.(string)
		case "name":
			ui.Name, _ = v.(string)
		default:
			if v == nil {
				delete(ui.Claims, k)
			} else {
				ui.AppendClaims(k, v)
			}
		}
	}
	return nil
}

func (s *storage) SetIntrospectionFromToken(_ context.Context, resp *oidc.IntrospectionResponse, tokenID, subject, clientID string) error {
	s.mu.Lock()
	t, ok := s.tokens[tokenID]
	s.mu.Unlock()
	if !ok || time.Now().After(t.expires) {
		return nil // inactive
	}
	resp.Active = true
	resp.Subject = t.subject
	resp.ClientID = t.clientID
	resp.Scope = t.scopes
	return nil
}

func (s *storage) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

func (s *storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errors.New("oidclab: JWT profile grants are not supported")
}

func (s *storage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, errors.New("oidclab: JWT profile grants are not supported")
}

func (s *storage) Health(context.Context) error { return nil }

// signer and publicKey adapt a signingKey to op.SigningKey and op.Key.
type signer struct{ k *signingKey }

func (s signer) SignatureAlgorithm() jose.SignatureAlgorithm { return s.k.alg }
func (s signer) Key() any                                    { return s.k.key }
func (s signer) ID() string                                  { return s.k.id }

type publicKey struct{ k *signingKey }

func (p publicKey) ID() string                         { return p.k.id }
func (p publicKey) Algorithm() jose.SignatureAlgorithm { return p.k.alg }
func (p publicKey) Use() string                        { return "sig" }
func (p publicKey) Key() any {
	switch k := p.k.key.(type) {
	case *rsa.PrivateKey:
		return &k.PublicKey
	case *ecdsa.PrivateKey:
		return &k.PublicKey
	}
	return nil
}

// opClient is a registered confidential web client: authorization code flow only,
// client_secret_basic or client_secret_post, user claims in the ID token.
type opClient struct {
	c   *client
	ttl time.Duration
}

func (c opClient) GetID() string                       { return c.c.id }
func (c opClient) RedirectURIs() []string              { return c.c.redirectURIs }
func (c opClient) PostLogoutRedirectURIs() []string    { return nil }
func (c opClient) ApplicationType() op.ApplicationType { return op.ApplicationTypeWeb }
func (c opClient) AuthMethod() oidc.AuthMethod         { return oidc.AuthMethodBasic }
func (c opClient) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c opClient) GrantTypes() []oidc.GrantType { return []oidc.GrantType{oidc.GrantTypeCode} }
func (c opClient) LoginURL(id string) string    { return loginPath + "?authRequestID=" + id }
func (c opClient) AccessTokenType() op.AccessTokenType {
	return op.AccessTokenTypeBearer
}
func (c opClient) IDTokenLifetime() time.Duration {
	if c.c.ttl > 0 {
		return c.c.ttl
	}
	return c.ttl
}
func (c opClient) DevMode() bool { return false }
func (c opClient) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c opClient) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c opClient) IsScopeAllowed(scope string) bool     { return scope == "groups" }
func (c opClient) IDTokenUserinfoClaimsAssertion() bool { return true }
func (c opClient) ClockSkew() time.Duration             { return 0 }
