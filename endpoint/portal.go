package endpoint

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"time"

	"github.com/cvpn/cvpn/auth/directory"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/portal"
	"github.com/cvpn/cvpn/tunnel"
)

// The self-service portal of a running endpoint (portal: in the file): its HTTPS server, and
// the adapters that give it the endpoint's directory, second factor, identity provider,
// sessions and profiles.

// portalServer is the portal's HTTPS server.
type portalServer struct {
	srv *http.Server
	ln  net.Listener
}

// startPortal serves the portal when the endpoint file asks for one.
func startPortal(r *Running, ep *Endpoint) (*portalServer, error) {
	cfg := ep.Config
	if cfg.Portal == nil {
		return nil, nil
	}
	if r.opts.PortalProfiles == nil {
		return nil, errors.New("portal: no profile maker (endpoint.Options.PortalProfiles)")
	}
	pcfg := portal.Config{
		PublicURL: cfg.Portal.PublicURL,
		Title:     portalTitle(cfg),
		Log:       r.log.With("component", "portal"),
		Now:       r.opts.Now,
		Profiles:  r.opts.PortalProfiles(r.Endpoint),
		Protocols: func() []string { return transportProtocols(r.Endpoint().Config) },
		Sessions:  portalSessions{r.srv},
		State:     r.adm.shared(),
		OnDownload: func(proto string) {
			r.mx.PortalDownload(proto)
		},
		Audit: func(event string, attrs ...any) {
			r.log.Info("audit: "+event, append([]any{"component", "portal"}, attrs...)...)
		},
	}
	if cfg.Authentication.Directory != nil {
		pcfg.Password = portalPassword{r.adm}
		if cfg.Authentication.MFA != nil {
			pcfg.MFA = portalMFA{r}
		}
	}
	r.adm.mu.Lock()
	login := r.adm.login
	r.adm.mu.Unlock()
	if login != nil {
		// Device logins (the link a connecting client is sent to) come only from single
		// sign-on: without it the home page offers no device approval.
		pcfg.Devices = r.adm.broker
		pcfg.Federated = []portal.FederatedLogin{portalFederated{r.adm, login.Name()}}
		if o := idpOrigin(ep); o != "" {
			pcfg.IdPOrigins = []string{o}
		}
	}
	p, err := portal.New(pcfg)
	if err != nil {
		return nil, cfg.KeyError("portal", err)
	}
	cert, err := ep.PortalCertificate.TLSCertificate()
	if err != nil {
		return nil, cfg.KeyError("portal.cert_file", err)
	}
	ln, err := net.Listen("tcp", cfg.Portal.ListenAddress.String())
	if err != nil {
		return nil, cfg.KeyError("portal.listen_address", fmt.Errorf("%v: is something else listening there?", err))
	}
	handler := p.Handler()
	if login != nil && login.Name() == portal.MethodSAML {
		handler = withSPMetadata(handler, r.adm)
	}
	srv := &http.Server{
		Handler:           handler,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(r.log.With("component", "portal").Handler(), slog.LevelDebug),
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	r.log.Info("portal listening", "address", ln.Addr(), "url", cfg.Portal.PublicURL)
	return &portalServer{srv: srv, ln: ln}, nil
}

// close stops the portal, giving requests under way a few seconds.
func (p *portalServer) close() {
	if p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
}

// transportProtocols are the protocols the endpoint listens on, each once: the profiles the
// portal offers.
func transportProtocols(cfg *config.Endpoint) []string {
	var out []string
	for _, l := range cfg.Transport {
		if !slices.Contains(out, l.Protocol) {
			out = append(out, l.Protocol)
		}
	}
	return out
}

func portalTitle(cfg *config.Endpoint) string {
	if cfg.Description != "" && len(cfg.Description) <= 80 {
		return cfg.Description
	}
	return "cvpn"
}

var samlSSOLocation = regexp.MustCompile(`SingleSignOnService[^>]*Location="(https://[^"/]+)`)

// idpOrigin is the identity provider's origin (scheme://host[:port]), which the portal's
// Content-Security-Policy lets forms go to.
func idpOrigin(ep *Endpoint) string {
	f := ep.Config.Authentication.Federated
	switch {
	case f == nil:
		return ""
	case f.OIDC != nil:
		if u, err := url.Parse(f.OIDC.Issuer); err == nil {
			return u.Scheme + "://" + u.Host
		}
	case f.SAML != nil:
		if m := samlSSOLocation.FindSubmatch(ep.SAMLMetadata); m != nil {
			return string(m[1])
		}
	}
	return ""
}

// spMetadata is a login that has service provider metadata to publish (SAML).
type spMetadata interface {
	Metadata() ([]byte, error)
}

// withSPMetadata serves the SAML service provider's metadata at its entity ID
// (<public_url>/saml/metadata), for the IdP's administrator to register cvpn from, and passes
// every other request to the portal. The login in force answers, so a reload that changes the
// IdP changes the document; without a SAML login the portal answers (404).
func withSPMetadata(next http.Handler, a *admission) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != samlMetadataPath || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
			next.ServeHTTP(w, r)
			return
		}
		a.mu.Lock()
		md, ok := a.login.(spMetadata)
		a.mu.Unlock()
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		b, err := md.Metadata()
		if err != nil {
			http.Error(w, "the service provider's metadata could not be made", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/samlmetadata+xml")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'none'")
		_, _ = w.Write(b)
	})
}

// portalPassword logs portal users in against the directory in force.
type portalPassword struct{ a *admission }

func (p portalPassword) Login(ctx context.Context, username, password string) (portal.Identity, error) {
	p.a.mu.Lock()
	dir := p.a.dir
	p.a.mu.Unlock()
	if dir == nil {
		return portal.Identity{}, errors.New("the endpoint has no directory")
	}
	u, err := dir.Authenticate(ctx, username, password)
	if err != nil {
		return portal.Identity{}, err
	}
	return portal.Identity{Username: u.Name, Groups: groupCNs(u.Groups), Method: portal.MethodDirectory}, nil
}

func groupCNs(groups []directory.Group) []string {
	out := make([]string, 0, len(groups))
	for _, g := range groups {
		if g.CN != "" {
			out = append(out, g.CN)
		} else {
			out = append(out, g.DN)
		}
	}
	return out
}

// portalMFA is the second factor in force.
type portalMFA struct{ r *Running }

func (m portalMFA) totp() (interface {
	Enrolled(context.Context, string) (bool, error)
	Verify(context.Context, string, string) error
	Enroll(context.Context, string) (string, error)
	Reset(context.Context, string) error
}, error) {
	return m.r.adm.mfa(m.r.Endpoint().Config)
}

func (m portalMFA) Enrolled(ctx context.Context, user string) (bool, error) {
	t, err := m.totp()
	if err != nil {
		return false, err
	}
	return t.Enrolled(ctx, user)
}

func (m portalMFA) Verify(ctx context.Context, user, code string) error {
	t, err := m.totp()
	if err != nil {
		return err
	}
	return t.Verify(ctx, user, code)
}

func (m portalMFA) Enroll(ctx context.Context, user string) (string, error) {
	t, err := m.totp()
	if err != nil {
		return "", err
	}
	return t.Enroll(ctx, user)
}

func (m portalMFA) Reset(ctx context.Context, user string) error {
	t, err := m.totp()
	if err != nil {
		return err
	}
	return t.Reset(ctx, user)
}

// portalFederated is the identity provider in force (a reload may replace it).
type portalFederated struct {
	a    *admission
	name string
}

func (f portalFederated) current() (portal.FederatedLogin, error) {
	f.a.mu.Lock()
	defer f.a.mu.Unlock()
	if f.a.login == nil || f.a.login.Name() != f.name {
		return nil, errors.New("single sign-on is not configured any more")
	}
	return f.a.login, nil
}

func (f portalFederated) Name() string { return f.name }

func (f portalFederated) Begin(ctx context.Context) (string, string, error) {
	l, err := f.current()
	if err != nil {
		return "", "", err
	}
	return l.Begin(ctx)
}

func (f portalFederated) Complete(ctx context.Context, r *http.Request) (string, portal.Identity, error) {
	l, err := f.current()
	if err != nil {
		return "", portal.Identity{}, err
	}
	return l.Complete(ctx, r)
}

// portalSessions are a user's own VPN sessions.
type portalSessions struct{ srv *tunnel.Server }

func (s portalSessions) List(user string) []portal.SessionView {
	var out []portal.SessionView
	for _, st := range s.srv.Clients() {
		if st.User != user {
			continue
		}
		v := portal.SessionView{ConnectionID: st.ConnectionID, ClientIP: st.Address.String(), Platform: st.Platform,
			Since: st.Established.UTC().Format("2006-01-02 15:04:05 UTC")}
		if st.Remote.IsValid() {
			v.DeviceIP = st.Remote.Addr().Unmap().String()
		}
		out = append(out, v)
	}
	return out
}

func (s portalSessions) End(user, connectionID string) error {
	ended := s.srv.TerminateBecause(func(info *tunnel.Info) bool { return info.User == user && info.ConnectionID == connectionID },
		"ended by the user in the self-service portal")
	if len(ended) == 0 {
		return errors.New("no such connection of yours")
	}
	return nil
}
