// Package endpoint loads and runs an endpoint. Load reads the validated endpoint file together
// with every file it names (the server identity, the client root CAs, the CRL, the
// control-channel keys), checked for their roles at one instant, and builds what the engine is
// made of: the per-packet policy snapshot and the control-channel wrapper. Start and Serve run
// it: host setup (package tunnel/host), the engine (package tunnel) and the CRL watcher, and a
// clean teardown. Running.Reload re-reads the file and applies what changed key by key, or
// nothing: config.Diff and config.CheckReload say which keys may change, this package compares
// the content of the files they name and applies the rest to the engine.
//
// It owns no signals, flags or exit statuses (cmd/cvpn maps them), and writes no files but
// one: when the endpoint holds its own CA key, the CRL watcher has that CA's CRL re-signed
// (by package endpoint/clientstore) before it expires. The schema and its validation are
// package config, the engine is package tunnel, issuing and revoking clients is package
// endpoint/clientstore, client profiles are package endpoint/profile.
package endpoint

import (
	"crypto/x509"
	"fmt"
	"time"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
)

// Endpoint is a validated endpoint file with the files it names loaded.
type Endpoint struct {
	Config        *config.Endpoint
	Server        *pki.Identity
	ClientCAs     *x509.CertPool
	ClientCACerts []*x509.Certificate // the certificates of ClientCAs, in file order
	// CRL is authentication.certificate.crl_file: its CRLs (one per issuing CA) checked
	// against ClientCACerts; nil when absent (a nil *pki.CRLSet revokes nothing).
	CRL *pki.CRLSet
	// ControlKey is the tls-crypt key; TLSAuthKey the tls-auth key (at most
	// one of them is set); TLSCryptV2ServerKey the tls-crypt-v2 server key.
	ControlKey          *tlscrypt.StaticKey
	TLSAuthKey          *tlscrypt.StaticKey
	TLSCryptV2ServerKey *tlscrypt.V2ServerKey
	// DirectoryRoots verify the directory servers (authentication.directory.ca_file; nil for
	// the system roots); BindPassword is the service account's password
	// (bind_password_file). HandlerRoots verify the client-connect handler's URL.
	DirectoryRoots *x509.CertPool
	BindPassword   string
	HandlerRoots   *x509.CertPool
	// OIDCRoots verify the OIDC issuer (authentication.federated.oidc.ca_file; nil for the
	// system roots), OIDCClientSecret is its client_secret_file; SAMLMetadata is the IdP's
	// metadata (idp_metadata_file).
	OIDCRoots        *x509.CertPool
	OIDCClientSecret string
	SAMLMetadata     []byte
	// PortalCertificate is the portal's TLS identity: portal.cert_file and key_file, else the
	// server certificate.
	PortalCertificate *pki.Identity
	Ciphers           []datacrypto.Cipher
	Policy            *tunnel.Policy
}

// Load reads the endpoint file at path and loads and checks every file it names as of now, so
// that nothing is applied unless all of it is good. Problems with the named files come back
// joined, each a *config.ValidationError naming the key and its line.
func Load(path string, now time.Time) (*Endpoint, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	return loadConfig(cfg, now)
}

// loadConfig loads the files a validated endpoint file names and builds what the engine is
// made of.
func loadConfig(cfg *config.Endpoint, now time.Time) (*Endpoint, error) {
	ep := &Endpoint{Config: cfg}
	if err := ep.loadFiles(now); err != nil {
		return nil, err
	}
	for i, name := range cfg.DataCiphers {
		c, err := datacrypto.ParseCipher(name)
		if err != nil {
			return nil, fmt.Errorf("data_ciphers[%d]: %w", i, err)
		}
		ep.Ciphers = append(ep.Ciphers, c)
	}
	var err error
	ep.Policy, err = PolicyOf(cfg)
	if err != nil {
		return nil, err
	}
	return ep, nil
}

// PolicyOf builds the per-packet policy snapshot from the file: authorization rules, routes,
// client-to-client, split tunnel, DNS and bandwidth limits.
func PolicyOf(cfg *config.Endpoint) (*tunnel.Policy, error) {
	rules := make([]authz.Rule, 0, len(cfg.AuthorizationRules))
	for _, r := range cfg.AuthorizationRules {
		rules = append(rules, authz.Rule{Network: r.TargetNetworkCIDR, Group: r.AccessGroupID, AllGroups: r.AuthorizeAllGroups})
	}
	az, err := authz.New(rules)
	if err != nil {
		return nil, fmt.Errorf("authorization_rules: %w", err)
	}
	p := tunnel.Policy{
		Authz:          az,
		SplitTunnel:    cfg.SplitTunnel,
		DNS:            cfg.DNSServers,
		Bandwidth:      cfg.BandwidthLimitMbps * 1e6,
		GroupBandwidth: map[string]float64{},
	}
	// Host, the host's own addresses, is the running endpoint's to add: they change.
	p.AllowHostAccess = cfg.AllowHostAccess
	for _, b := range cfg.BandwidthLimits {
		p.GroupBandwidth[b.AccessGroupID] = b.Mbps * 1e6
	}
	for _, r := range cfg.Routes {
		if r.Local {
			// target: local (the client CIDR) enables client-to-client traffic. It is not pushed:
			// the subnet of the client's own ifconfig already covers it.
			p.ClientToClient = true
			continue
		}
		p.Routes = append(p.Routes, r.DestinationCIDRBlock)
	}
	return tunnel.NewPolicy(p)
}

// ControlWrapper builds the control-channel protection the endpoint file asks for: tls-crypt,
// tls-auth with the server's key-direction and digest, or nil for none. tls-crypt-v2 is not a
// wrapper here: each client brings its own key, unwrapped with TLSCryptV2ServerKey.
func (ep *Endpoint) ControlWrapper() (tlscrypt.Wrapper, error) {
	cc := ep.Config.ControlChannel
	switch {
	case ep.ControlKey != nil:
		return tlscrypt.NewTLSCrypt(ep.ControlKey, true), nil
	case ep.TLSAuthKey != nil:
		h, err := tlscrypt.AuthDigest(cc.TLSAuthDigest)
		if err != nil {
			return nil, fmt.Errorf("control_channel.tls_auth_digest: %q is not SHA1, SHA256 or SHA512", cc.TLSAuthDigest)
		}
		return tlscrypt.NewTLSAuth(ep.TLSAuthKey, int(cc.TLSAuthKeyDirection), h), nil
	}
	return nil, nil
}
