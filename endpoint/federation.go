package endpoint

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cvpn/cvpn/auth/oidc"
	"github.com/cvpn/cvpn/auth/saml"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/portal"
	"github.com/cvpn/cvpn/state"
)

// The identity provider behind an endpoint's single sign-on, as the portal uses it: OIDC or
// SAML behind portal.FederatedLogin.

// portalPath are the portal's paths the identity providers return to.
const (
	oidcCallbackPath = "/oidc/callback"
	samlACSPath      = "/saml/acs"
	samlMetadataPath = "/saml/metadata" // the SP's entity ID, where its metadata is served
	deviceLoginPath  = "/d/"
)

// publicURL is the portal's URL with path p.
func publicURL(cfg *config.Endpoint, p string) string {
	return strings.TrimSuffix(cfg.Portal.PublicURL, "/") + p
}

// oidcLogin is an OIDC provider as a portal login. Discovery happens at the first login (and
// again after a failure, at most every retryEvery), so an unreachable provider at start does
// not keep the endpoint from serving certificate and token logins.
type oidcLogin struct {
	cfg oidc.Config
	log *slog.Logger

	mu       sync.Mutex
	provider *oidc.Provider
	lastTry  time.Time
	lastErr  error
}

const retryEvery = 10 * time.Second

func newOIDCLogin(ep *Endpoint, log *slog.Logger, now func() time.Time, shared state.Store) *oidcLogin {
	o := ep.Config.Authentication.Federated.OIDC
	client := &http.Client{Timeout: 10 * time.Second}
	if ep.OIDCRoots != nil {
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ep.OIDCRoots, MinVersion: tls.VersionTLS12}}
	}
	return &oidcLogin{log: log, cfg: oidc.Config{
		Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: ep.OIDCClientSecret, Scopes: o.Scopes,
		RedirectURL: publicURL(ep.Config, oidcCallbackPath), UsernameClaim: o.UsernameClaim, GroupsClaim: o.GroupsClaim,
		HTTPClient: client, Now: now, Store: shared,
	}}
}

func (l *oidcLogin) Name() string { return portal.MethodOIDC }

func (l *oidcLogin) get(ctx context.Context) (*oidc.Provider, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.provider != nil {
		return l.provider, nil
	}
	if !l.lastTry.IsZero() && time.Since(l.lastTry) < retryEvery {
		return nil, l.lastErr
	}
	l.lastTry = time.Now()
	p, err := oidc.New(ctx, l.cfg)
	if err != nil {
		l.lastErr = fmt.Errorf("the identity provider %s cannot be reached: %w", l.cfg.Issuer, err)
		l.log.Error("single sign-on: OIDC discovery failed", "issuer", l.cfg.Issuer, "err", err)
		return nil, l.lastErr
	}
	l.provider = p
	return p, nil
}

func (l *oidcLogin) Begin(ctx context.Context) (string, string, error) {
	p, err := l.get(ctx)
	if err != nil {
		return "", "", err
	}
	u, login, err := p.Begin(ctx)
	return u, login.State, err
}

func (l *oidcLogin) Complete(ctx context.Context, r *http.Request) (string, portal.Identity, error) {
	state := r.URL.Query().Get("state")
	p, err := l.get(ctx)
	if err != nil {
		return state, portal.Identity{}, err
	}
	id, err := p.CompleteRequest(r.WithContext(ctx))
	if err != nil {
		return state, portal.Identity{}, err
	}
	return state, portal.Identity{Username: id.Username, Groups: id.Groups, Method: portal.MethodOIDC, Subject: id.Subject, Issuer: id.Issuer}, nil
}

// samlLogin is a SAML service provider as a portal login.
type samlLogin struct{ sp *saml.SP }

func newSAMLLogin(ep *Endpoint, now func() time.Time, shared state.Store) (*samlLogin, error) {
	s := ep.Config.Authentication.Federated.SAML
	sp, err := saml.New(saml.Config{
		IdPMetadata: ep.SAMLMetadata, EntityID: publicURL(ep.Config, samlMetadataPath), ACSURL: publicURL(ep.Config, samlACSPath),
		GroupsAttribute: s.GroupsAttribute, Now: now, Store: shared,
	})
	if err != nil {
		return nil, ep.Config.KeyError("authentication.federated.saml.idp_metadata_file", err)
	}
	return &samlLogin{sp: sp}, nil
}

func (l *samlLogin) Name() string { return portal.MethodSAML }

// Metadata is the service provider's metadata document.
func (l *samlLogin) Metadata() ([]byte, error) { return l.sp.Metadata() }

func (l *samlLogin) Begin(context.Context) (string, string, error) {
	u, login, err := l.sp.Begin()
	return u, login.State, err
}

func (l *samlLogin) Complete(_ context.Context, r *http.Request) (string, portal.Identity, error) {
	id, err := l.sp.Complete(r)
	if err != nil {
		return id.State, portal.Identity{}, err
	}
	return id.State, portal.Identity{Username: id.Username, Groups: id.Groups, Method: portal.MethodSAML, Subject: id.Subject, Issuer: id.Issuer}, nil
}

// federatedLogin builds the endpoint's identity provider login, or nil when it has none.
// shared, on a cluster node, keeps the logins in progress where every node sees them.
func federatedLogin(ep *Endpoint, log *slog.Logger, now func() time.Time, shared state.Store) (portal.FederatedLogin, error) {
	f := ep.Config.Authentication.Federated
	switch {
	case f == nil:
		return nil, nil
	case f.OIDC != nil:
		return newOIDCLogin(ep, log, now, shared), nil
	case f.SAML != nil:
		return newSAMLLogin(ep, now, shared)
	}
	return nil, errors.New("authentication.federated names no identity provider")
}
