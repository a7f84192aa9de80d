package endpoint

import (
	"bytes"
	"crypto/x509"
	"errors"
	"slices"
	"strings"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint/metrics"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// ReloadReport says what a reload applied.
type ReloadReport struct {
	// Changed are the YAML paths of the keys applied, in file order; none when the file
	// matches the running endpoint.
	Changed []string
}

// ReloadError is a refused reload: nothing of the file was applied and the running
// configuration stays.
type ReloadError struct {
	// Reason says which kind of refusal this is: "the endpoint file is invalid", "keys
	// cannot change while the endpoint runs", "a listener cannot open".
	Reason string
	// Refused names the keys that cannot change while the endpoint runs, in file order; nil
	// when the reload failed for another reason (Err says which).
	Refused []string
	// Err is the cause: the file's problems (each a *config.ValidationError naming the key),
	// the refused keys' errors (the same, from config.CheckReload), or the listener's.
	Err error
}

func (e *ReloadError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *ReloadError) Unwrap() error { return e.Err }

// Reasons of a ReloadError.
const (
	reasonInvalid  = "the endpoint file is invalid"
	reasonRestart  = "keys cannot change while the endpoint runs"
	reasonListener = "a listener cannot open"
	// the new connection log file cannot open; the old one stays in use
	reasonConnectionLog = "the connection log cannot open"
	// the new metrics address cannot open; the old one stays in use
	reasonMetrics = "the metrics address cannot open"
	// the directory, MFA or client-connect handler settings cannot be applied
	reasonAuth = "the authentication settings cannot be applied"
)

// ErrStopped refuses a reload of an endpoint that has stopped.
var ErrStopped = errors.New("endpoint: stopped")

// action is what applying a key takes; a key may take several.
type action uint8

const (
	applyListeners     action = 1 << iota // SetListeners: open the new, close the removed
	applySettings                         // Reconfigure: what new handshakes use, and timers
	applyPolicy                           // Reload: the per-packet policy
	applyRevoker                          // SetRevoker and a new CRL watcher
	applyConnectionLog                    // the connection log switches files
	applyMetrics                          // the metrics server moves: the new opens, then the old closes
	applyAuth                             // the admission pipeline: directory, MFA, handler, groups, token lifetime
)

// keyActions says what each key a reload applies (config.ReloadKeys' live keys) takes. Keys
// that nothing running reads yet (description, remote_hostname, vpc_cidr_blocks) take none:
// the file in force records them. TestKeyActions checks that every live key is here.
var keyActions = map[string]action{
	"description":                                      0,
	"remote_hostname":                                  0, // profiles are rendered from the file
	"vpc_cidr_blocks":                                  0, // checked against the SNAT address when the file loads
	"listen_address":                                   applyListeners,
	"listen_ipv6_address":                              applyListeners,
	"transport":                                        applyListeners,
	"server_certificate.cert_file":                     applySettings,
	"server_certificate.key_file":                      applySettings,
	"control_channel.tls_crypt_key_file":               applySettings,
	"control_channel.tls_auth_key_file":                applySettings,
	"control_channel.tls_auth_key_direction":           applySettings,
	"control_channel.tls_auth_digest":                  applySettings,
	"control_channel.tls_crypt_v2_server_key_file":     applySettings,
	"authentication.certificate.client_root_ca_file":   applySettings | applyRevoker | applyAuth, // the watcher checks new CRLs against it
	"authentication.certificate.crl_file":              applyRevoker,
	"authentication.directory.url":                     applyAuth,
	"authentication.directory.start_tls":               applyAuth,
	"authentication.directory.ca_file":                 applyAuth,
	"authentication.directory.bind_dn":                 applyAuth,
	"authentication.directory.bind_password_file":      applyAuth,
	"authentication.directory.user_base_dn":            applyAuth,
	"authentication.directory.user_filter":             applyAuth,
	"authentication.directory.group_attribute":         applyAuth,
	"authentication.directory.nested_groups":           applyAuth,
	"authentication.directory.group_base_dn":           applyAuth,
	"authentication.directory.group_filter":            applyAuth,
	"authentication.directory.timeout_seconds":         applyAuth,
	"authentication.federated.oidc.issuer":             applyAuth,
	"authentication.federated.oidc.client_id":          applyAuth,
	"authentication.federated.oidc.client_secret_file": applyAuth,
	"authentication.federated.oidc.ca_file":            applyAuth,
	"authentication.federated.oidc.scopes":             applyAuth,
	"authentication.federated.oidc.username_claim":     applyAuth,
	"authentication.federated.oidc.groups_claim":       applyAuth,
	"authentication.federated.saml.idp_metadata_file":  applyAuth,
	"authentication.federated.saml.groups_attribute":   applyAuth,
	"authentication.mfa.totp.issuer":                   applyAuth,
	"authentication.mfa.challenge":                     applyAuth,
	"authentication.mfa.challenge_text":                applyAuth,
	"client_connect_handler.command":                   applyAuth,
	"client_connect_handler.url":                       applyAuth,
	"client_connect_handler.ca_file":                   applyAuth,
	"client_connect_handler.timeout_seconds":           applyAuth,
	"data_ciphers":                                     applySettings,
	"routes":                                           applyPolicy,
	"authorization_rules":                              applyPolicy | applyAuth, // the group IDs directory groups are matched with
	"split_tunnel":                                     applyPolicy,
	"allow_host_access":                                applyPolicy,
	"dns_servers":                                      applyPolicy,
	"session_timeout_hours":                            applySettings | applyAuth, // auth-tokens live as long
	"client_login_banner":                              applySettings,
	"bandwidth_limit_mbps":                             applyPolicy,
	"bandwidth_limits":                                 applyPolicy | applyAuth,
	"reneg_seconds":                                    applySettings,
	"max_connections_per_user":                         applySettings,
	"keepalive.ping_seconds":                           applySettings,
	"keepalive.ping_restart_seconds":                   applySettings,
	"connection_log.enabled":                           applyConnectionLog,
	"connection_log.file":                              applyConnectionLog,
	"metrics.listen_address":                           applyMetrics,
}

// Diff compares the running endpoint with the next one loaded from its file: key by key
// (config.Diff), and for a key naming a file whose path stays, by the file's content, so that a
// certificate or key renewed in place is a change. changed are the keys a reload applies,
// refused those it cannot (config.CheckReload says why); both are YAML paths in file order.
func Diff(running, next *Endpoint) (changed, refused []string) {
	return config.Diff(running.Config, next.Config, func(key string) bool { return fileChanged(running, next, key) })
}

// fileChanged reports whether the file that key names has another content in next than in
// running (both loaded from the same path).
func fileChanged(running, next *Endpoint, key string) bool {
	switch key {
	case "server_certificate.cert_file":
		return !bytes.Equal(identityPEM(running.Server, true), identityPEM(next.Server, true))
	case "server_certificate.key_file":
		return !bytes.Equal(identityPEM(running.Server, false), identityPEM(next.Server, false))
	case "control_channel.tls_crypt_key_file":
		return !sameStaticKey(running.ControlKey, next.ControlKey)
	case "control_channel.tls_auth_key_file":
		return !sameStaticKey(running.TLSAuthKey, next.TLSAuthKey)
	case "control_channel.tls_crypt_v2_server_key_file":
		a, b := running.TLSCryptV2ServerKey, next.TLSCryptV2ServerKey
		return (a == nil) != (b == nil) || a != nil && !bytes.Equal(a.Marshal(), b.Marshal())
	case "authentication.certificate.client_root_ca_file":
		return !slices.EqualFunc(running.ClientCACerts, next.ClientCACerts, func(a, b *x509.Certificate) bool { return a.Equal(b) })
	case "authentication.certificate.crl_file":
		return !bytes.Equal(crlPEM(running.CRL), crlPEM(next.CRL))
	case "authentication.directory.bind_password_file":
		return running.BindPassword != next.BindPassword
	case "authentication.directory.ca_file":
		return !running.DirectoryRoots.Equal(next.DirectoryRoots)
	case "client_connect_handler.ca_file":
		return !running.HandlerRoots.Equal(next.HandlerRoots)
	case "authentication.federated.oidc.ca_file":
		return !running.OIDCRoots.Equal(next.OIDCRoots)
	case "authentication.federated.oidc.client_secret_file":
		return running.OIDCClientSecret != next.OIDCClientSecret
	case "authentication.federated.saml.idp_metadata_file":
		return !bytes.Equal(running.SAMLMetadata, next.SAMLMetadata)
	}
	if running.Config.KeyLine(key) == 0 && next.Config.KeyLine(key) == 0 {
		return false // in neither file: no file to have changed
	}
	return true // a file this does not know how to compare: apply it
}

func identityPEM(id *pki.Identity, cert bool) []byte {
	switch {
	case id == nil:
		return nil
	case cert:
		return id.CertPEM
	default:
		return id.KeyPEM
	}
}

func sameStaticKey(a, b *tlscrypt.StaticKey) bool {
	return (a == nil) == (b == nil) && (a == nil || bytes.Equal(a.Marshal(), b.Marshal()))
}

func crlPEM(c *pki.CRLSet) []byte {
	if c == nil {
		return nil
	}
	return c.PEM
}

// Reload re-reads the endpoint file at path and applies what changed, or nothing:
//
//   - an invalid file (validation, or a named file whose content is wrong) is refused with its
//     problems, each naming the key;
//   - a change of a key that cannot change while the endpoint runs (config.CheckReload) refuses
//     the whole file, naming each such key;
//   - everything is loaded and checked before anything is applied; a new metrics address opens
//     first (and closes again if the reload fails; the old one closes once it succeeded), the
//     listeners next (new ones open, removed ones close and their clients are told RESTART,
//     kept ones are left alone), and when one cannot open, nothing else is applied either;
//   - then the settings new handshakes use (certificate, client CA, control-channel keys,
//     ciphers, keepalive, renegotiation, session timeout, banner), the per-packet policy
//     (rules, routes, bandwidth, DNS, split tunnel), and the CRL, which goes into force at once
//     and is watched from then on.
//
// Connected clients keep their sessions, and what they negotiated (cipher, control-channel
// key), except that a new CRL cuts off those it revokes, a removed listener's clients are told
// to reconnect, and the session timeout and renegotiation interval apply to them too. One log
// line says what changed ("reload applied" with the keys, or "reload: no changes") or why
// nothing did ("reload refused ...; the running configuration stays"). A refusal is a
// *ReloadError.
func (r *Running) Reload(path string) (*ReloadReport, error) {
	if lc := r.opts.Lifecycle; lc != nil {
		lc.Reloading()
		defer lc.Reloaded()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rep, err := r.reloadPath(path)
	r.logReload(rep, err)
	return rep, err
}

// logReload logs a reload's outcome.
func (r *Running) logReload(rep *ReloadReport, err error) {
	if err != nil {
		var re *ReloadError
		switch {
		case !errors.As(err, &re):
			r.log.Error("reload refused; the running configuration stays", "err", err)
		case re.Refused != nil:
			r.log.Error("reload refused: "+re.Reason+"; the running configuration stays",
				"refused", strings.Join(re.Refused, ", "), "err", re.Err)
		default:
			r.log.Error("reload refused: "+re.Reason+"; the running configuration stays", "err", re.Err)
		}
		return
	}
	if len(rep.Changed) == 0 {
		r.log.Info("reload: no changes")
	} else {
		r.log.Info("reload applied", "changed", strings.Join(rep.Changed, ", "))
	}
}

// reloadPath loads the file at path (on a cluster node: the pushed file with the one at path's
// cluster section) and applies it; r.mu is held.
func (r *Running) reloadPath(path string) (*ReloadReport, error) {
	if r.stopped {
		return nil, ErrStopped
	}
	next, err := r.loadFile(path)
	if err != nil {
		return nil, &ReloadError{Reason: reasonInvalid, Err: err}
	}
	return r.apply(next)
}

// apply puts next in force, key by key, or nothing of it; r.mu is held.
func (r *Running) apply(next *Endpoint) (_ *ReloadReport, err error) {
	if r.stopped {
		return nil, ErrStopped
	}
	running := r.current()
	changed, refused := Diff(running, next)
	if len(refused) > 0 {
		return nil, &ReloadError{Reason: reasonRestart, Refused: refused, Err: config.CheckReload(running.Config, next.Config)}
	}
	var todo action
	for _, k := range changed {
		a, ok := keyActions[k]
		if !ok {
			a = applySettings | applyPolicy // a key this does not know yet: everything it could be
		}
		todo |= a
	}
	ecfg, err := engineConfig(next)
	if err != nil {
		return nil, &ReloadError{Reason: reasonInvalid, Err: err}
	}
	var metricsServer *metrics.Server
	if todo&applyMetrics != 0 {
		// Opened first, closed again if anything after fails; put in place at the end.
		if metricsServer, err = r.openMetrics(next.Config); err != nil {
			return nil, &ReloadError{Reason: reasonMetrics, Err: err}
		}
		defer func() {
			if err != nil && metricsServer != nil {
				_ = metricsServer.Close()
			}
		}()
	}
	if todo&applyConnectionLog != 0 {
		// First, since it may fail (the new file cannot open: the old one stays in use).
		if err := r.connLog.SetPath(connectionLogPath(next.Config)); err != nil {
			return nil, &ReloadError{Reason: reasonConnectionLog, Err: next.Config.KeyError("connection_log.file", err)}
		}
	}
	if todo&applyListeners != 0 {
		if err := r.srv.SetListeners(ecfg.UDP, ecfg.TCP); err != nil {
			if todo&applyConnectionLog != 0 { // back to the running file's log
				_ = r.connLog.SetPath(connectionLogPath(running.Config))
			}
			return nil, &ReloadError{Reason: reasonListener, Err: engineError(err, next.Config)}
		}
		r.makeRoom(len(ecfg.UDP))
	}
	if todo&applyAuth != 0 {
		// Before the settings, since it can fail (a directory URL or a handler that cannot be
		// set up); then only the listeners and the log, undone here, had changed.
		if err := r.adm.reconfigure(next); err != nil {
			if todo&applyListeners != 0 {
				udp, tcp := Listeners(running.Config)
				_ = r.srv.SetListeners(udp, tcp)
			}
			if todo&applyConnectionLog != 0 {
				_ = r.connLog.SetPath(connectionLogPath(running.Config))
			}
			return nil, &ReloadError{Reason: reasonAuth, Err: err}
		}
	}
	if todo&applySettings != 0 {
		if err := r.srv.Reconfigure(ecfg.Settings()); err != nil {
			// Load checked everything Reconfigure does, so this is a bug; undo the listeners
			// so that the running configuration still is the old file's.
			if todo&applyListeners != 0 {
				udp, tcp := Listeners(running.Config)
				_ = r.srv.SetListeners(udp, tcp)
			}
			if todo&applyConnectionLog != 0 {
				_ = r.connLog.SetPath(connectionLogPath(running.Config))
			}
			return nil, &ReloadError{Reason: "the engine refused the settings", Err: err}
		}
	}
	if todo&applyPolicy != 0 {
		r.policy.setFile(next.Policy) // with the host's own addresses
	}
	if todo&applyRevoker != 0 {
		r.stopCRLWatch()
		r.putCRL(next.CRL)
		r.watchCRL(next)
	}
	if todo&applyMetrics != 0 {
		r.switchMetrics(metricsServer)
	}
	r.cur = next
	return &ReloadReport{Changed: changed}, nil
}
