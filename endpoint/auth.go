package endpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/cvpn/cvpn/auth"
	"github.com/cvpn/cvpn/auth/connecthandler"
	"github.com/cvpn/cvpn/auth/directory"
	"github.com/cvpn/cvpn/auth/mfa"
	"github.com/cvpn/cvpn/auth/sso"
	"github.com/cvpn/cvpn/auth/token"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint/admin"
	"github.com/cvpn/cvpn/portal"
	"github.com/cvpn/cvpn/state"
)

// admission is the running endpoint's admission pipeline and what it owns: the state store
// (MFA secrets, used codes, the auth-token key), the directory's connections and the
// client-connect handler. A reload rebuilds the directory and the handler and swaps them into
// the pipeline; the store stays open from start to stop (state_dir cannot change).
type admission struct {
	log      *slog.Logger
	now      func() time.Time
	observer connecthandler.Observer
	pipeline *auth.Pipeline

	// broker ties connection attempts to browser logins (single sign-on); kept across
	// reloads so that logins in progress survive one.
	broker *sso.Broker
	// cluster, on a cluster node, holds the cluster-wide state store (etcd) used instead of
	// state_dir's.
	cluster *clusterRun

	mu      sync.Mutex
	login   portal.FederatedLogin // the identity provider, nil without single sign-on
	store   state.Store           // nil until an endpoint file asks for a directory or single sign-on
	sealer  *state.Sealer
	tokens  *token.Keyring
	dir     *directory.Directory
	handler *connecthandler.Handler
}

// StatePaths are where an endpoint keeps its state: the store and the key that seals secrets
// in it.
func StatePaths(cfg *config.Endpoint) (dir, sealKey string) {
	return cfg.StateDir, filepath.Join(cfg.StateDir, "seal.key")
}

// OpenState opens the endpoint's state store and sealing key (created on first use). Only one
// process may hold the store: a second gets an error saying so.
func OpenState(cfg *config.Endpoint) (state.Store, *state.Sealer, error) {
	dir, keyFile := StatePaths(cfg)
	st, err := state.OpenBolt(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("state_dir: %w", err)
	}
	sealer, err := state.LoadOrCreateSealer(keyFile)
	if err != nil {
		_ = st.Close()
		return nil, nil, fmt.Errorf("state_dir: %w", err)
	}
	return st, sealer, nil
}

// newAdmission builds the pipeline for ep.
func newAdmission(ep *Endpoint, cl *clusterRun, log *slog.Logger, now func() time.Time, observer connecthandler.Observer) (*admission, error) {
	a := &admission{log: log, now: now, observer: observer, cluster: cl}
	a.broker = sso.New(sso.Options{Now: now, Store: a.shared()})
	cfg, err := a.build(ep)
	if err != nil {
		a.close()
		return nil, err
	}
	if a.pipeline, err = auth.New(cfg, log.With("component", "auth"), now); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

// reconfigure rebuilds what ep asks for and swaps it in. The directory and handler it
// replaces are closed a minute later, when handshakes that began with them have ended.
func (a *admission) reconfigure(ep *Endpoint) error {
	a.mu.Lock()
	oldDir, oldHandler := a.dir, a.handler
	a.mu.Unlock()
	cfg, err := a.build(ep)
	if err != nil {
		return err
	}
	if err := a.pipeline.Reconfigure(cfg); err != nil {
		return err
	}
	a.mu.Lock()
	newDir, newHandler := a.dir, a.handler
	a.mu.Unlock()
	time.AfterFunc(time.Minute, func() {
		if oldDir != nil && oldDir != newDir {
			_ = oldDir.Close()
		}
		if oldHandler != nil && oldHandler != newHandler {
			oldHandler.Close()
		}
	})
	return nil
}

// build makes the pipeline's configuration for ep, opening the state store the first time a
// directory is configured.
func (a *admission) build(ep *Endpoint) (auth.Config, error) {
	cfg := ep.Config
	out := auth.Config{
		State:         a.shared(),
		Certificate:   cfg.Authentication.Certificate != nil,
		EndpointID:    endpointID(cfg),
		TokenLifetime: cfg.SessionTimeout,
		GroupIDs:      groupIDs(cfg),
	}
	var dir *directory.Directory
	if d := cfg.Authentication.Directory; d != nil {
		if err := a.openState(cfg); err != nil {
			return out, err
		}
		var err error
		dir, err = directory.New(directory.Config{
			URLs: d.URLs, StartTLS: d.StartTLS, RootCAs: ep.DirectoryRoots,
			BindDN: d.BindDN, BindPassword: ep.BindPassword,
			UserBaseDN: d.UserBaseDN, UserFilter: d.UserFilter,
			GroupAttribute: d.GroupAttribute, NestedGroups: d.NestedGroups,
			GroupBaseDN: d.GroupBaseDN, GroupFilter: d.GroupFilter,
			Timeout: d.Timeout, Log: a.log.With("component", "directory"), Now: a.now,
		})
		if err != nil {
			return out, cfg.KeyError("authentication.directory", err)
		}
		out.Directory = dir
		out.Tokens = a.tokens
		if m := cfg.Authentication.MFA; m != nil {
			out.MFA = &mfa.TOTP{Store: a.store, Sealer: a.sealer, Issuer: m.TOTPIssuer, Now: a.now}
			out.Challenge, out.ChallengeText = m.Challenge, m.ChallengeText
		}
	}
	var login portal.FederatedLogin
	if f := cfg.Authentication.Federated; f != nil {
		if err := a.openState(cfg); err != nil {
			if dir != nil {
				_ = dir.Close()
			}
			return out, err
		}
		var err error
		if login, err = federatedLogin(ep, a.log.With("component", "sso"), a.now, a.shared()); err != nil {
			if dir != nil {
				_ = dir.Close()
			}
			return out, err
		}
		out.Tokens = a.tokens
		out.Federation = &auth.Federation{
			Broker:     a.broker,
			LoginURL:   func(code string) string { return publicURL(cfg, deviceLoginPath+code) },
			Identities: a.store,
		}
	}
	var handler *connecthandler.Handler
	if h := cfg.ClientConnectHandler; h != nil {
		var err error
		handler, err = connecthandler.New(connecthandler.Config{
			Command: h.Command, URL: h.URL, RootCAs: ep.HandlerRoots, Timeout: h.Timeout,
			Observer: a.observer,
		})
		if err != nil {
			if dir != nil {
				_ = dir.Close()
			}
			return out, cfg.KeyError("client_connect_handler", err)
		}
		out.Handler = handler
	}
	a.mu.Lock()
	a.dir, a.handler, a.login = dir, handler, login
	a.mu.Unlock()
	return out, nil
}

// shared is the cluster-wide store of a cluster node, for the login state every node must see
// (device logins, challenges, federated logins, portal sessions); nil on a single node, where
// each keeps it in memory.
func (a *admission) shared() state.Store {
	if a.cluster == nil {
		return nil
	}
	return a.cluster.node.Store()
}

// openState opens the store, the sealing key and the token keyring once.
func (a *admission) openState(cfg *config.Endpoint) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.store != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var (
		st     state.Store
		sealer *state.Sealer
		err    error
	)
	if a.cluster != nil {
		st, sealer, err = a.cluster.openState(ctx, cfg)
	} else {
		st, sealer, err = OpenState(cfg)
	}
	if err != nil {
		return err
	}
	ring, err := token.LoadOrCreateKeyring(ctx, st, sealer)
	if err != nil {
		_ = st.Close()
		return fmt.Errorf("state_dir: auth-token key: %w", err)
	}
	a.store, a.sealer, a.tokens = st, sealer, ring
	return nil
}

// mfa returns the TOTP of the running endpoint, or an error when it has no second factor.
func (a *admission) mfa(cfg *config.Endpoint) (*mfa.TOTP, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := cfg.Authentication.MFA
	if m == nil || a.store == nil {
		return nil, errors.New("the endpoint has no second factor (authentication.mfa)")
	}
	return &mfa.TOTP{Store: a.store, Sealer: a.sealer, Issuer: m.TOTPIssuer, Now: a.now}, nil
}

// close releases the store, the directory and the handler.
func (a *admission) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.dir != nil {
		_ = a.dir.Close()
	}
	if a.handler != nil {
		a.handler.Close()
	}
	if a.store != nil {
		_ = a.store.Close()
	}
}

// groupIDs are the group identifiers the file's authorization rules and bandwidth limits
// name.
func groupIDs(cfg *config.Endpoint) []string {
	var ids []string
	for _, r := range cfg.AuthorizationRules {
		if r.AccessGroupID != "" {
			ids = append(ids, r.AccessGroupID)
		}
	}
	for _, b := range cfg.BandwidthLimits {
		ids = append(ids, b.AccessGroupID)
	}
	return ids
}

// totpEnrolments are admin.Enrolments over a TOTP.
type totpEnrolments struct{ t *mfa.TOTP }

func (e totpEnrolments) Enroll(ctx context.Context, user string, force bool) (string, error) {
	enrolled, err := e.t.Enrolled(ctx, user)
	if err != nil {
		return "", err
	}
	if enrolled && !force {
		return "", admin.ErrEnrolled
	}
	return e.t.Enroll(ctx, user)
}

func (e totpEnrolments) Reset(ctx context.Context, user string) error { return e.t.Reset(ctx, user) }

// OpenEnrolments opens the TOTP enrolments of an endpoint that is not running (the state store
// is free); close releases the store.
func OpenEnrolments(cfg *config.Endpoint) (e admin.Enrolments, close func(), err error) {
	m := cfg.Authentication.MFA
	if cfg.Authentication.Directory == nil || m == nil {
		return nil, nil, errors.New("the endpoint has no second factor (authentication.mfa)")
	}
	st, sealer, err := OpenState(cfg)
	if err != nil {
		return nil, nil, err
	}
	return totpEnrolments{&mfa.TOTP{Store: st, Sealer: sealer, Issuer: m.TOTPIssuer}}, func() { _ = st.Close() }, nil
}

// enrolments are the running endpoint's TOTP enrolments, for the admin API.
func (r *Running) enrolments() (admin.Enrolments, error) {
	t, err := r.adm.mfa(r.Endpoint().Config)
	if err != nil {
		return nil, err
	}
	return totpEnrolments{t}, nil
}
