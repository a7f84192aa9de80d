package endpoint

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// loadFiles loads every file the endpoint names and checks that each is fit
// for its role at now: the server certificate is current, carries serverAuth
// and matches its key; every client root is a CA and not all of them have
// expired; each CRL of the CRL file is signed by one of them and current; the control channel
// keys parse. Every problem comes back joined, each a *config.ValidationError
// naming the key (and its line) whose file is wrong, so that `cvpn validate`
// prints one line per problem.
func (ep *Endpoint) loadFiles(now time.Time) error {
	cfg := ep.Config
	var errs []error
	bad := func(path string, err error) { errs = append(errs, cfg.KeyError(path, err)) }

	sc := cfg.ServerCertificate
	certs, certErr := pki.LoadCertificates(sc.CertFile)
	if certErr != nil {
		bad("server_certificate.cert_file", certErr)
	} else if err := pki.CheckServerCertificate(certs[0], now); err != nil {
		bad("server_certificate.cert_file", fmt.Errorf("%s: %w", sc.CertFile, err))
		certErr = err
	}
	_, keyErr := pki.LoadPrivateKey(sc.KeyFile)
	if keyErr != nil {
		bad("server_certificate.key_file", keyErr)
	}
	if certErr == nil && keyErr == nil {
		id, err := pki.LoadIdentity(sc.CertFile, sc.KeyFile)
		if err != nil {
			bad("server_certificate.key_file", err) // the key is not the certificate's
		} else {
			ep.Server = id
		}
	}

	if auth := cfg.Authentication.Certificate; auth != nil {
		ep.loadClientCAs(auth, now, bad)
	}
	if d := cfg.Authentication.Directory; d != nil {
		if d.CAFile != "" {
			if pool, _, err := pki.LoadCertPool(d.CAFile); err != nil {
				bad("authentication.directory.ca_file", err)
			} else {
				ep.DirectoryRoots = pool
			}
		}
		if d.BindPasswordFile != "" {
			if pw, err := LoadSecretFile(d.BindPasswordFile); err != nil {
				bad("authentication.directory.bind_password_file", err)
			} else {
				ep.BindPassword = pw
			}
		}
	}
	if f := cfg.Authentication.Federated; f != nil && f.OIDC != nil {
		if f.OIDC.CAFile != "" {
			if pool, _, err := pki.LoadCertPool(f.OIDC.CAFile); err != nil {
				bad("authentication.federated.oidc.ca_file", err)
			} else {
				ep.OIDCRoots = pool
			}
		}
		if f.OIDC.ClientSecretFile != "" {
			if secret, err := LoadSecretFile(f.OIDC.ClientSecretFile); err != nil {
				bad("authentication.federated.oidc.client_secret_file", err)
			} else {
				ep.OIDCClientSecret = secret
			}
		}
	}
	if f := cfg.Authentication.Federated; f != nil && f.SAML != nil {
		data, err := os.ReadFile(f.SAML.IdPMetadataFile)
		if err != nil {
			bad("authentication.federated.saml.idp_metadata_file", err)
		} else {
			ep.SAMLMetadata = data
		}
	}
	if p := cfg.Portal; p != nil {
		ep.PortalCertificate = ep.Server
		if p.CertFile != "" {
			if id, err := pki.LoadIdentity(p.CertFile, p.KeyFile); err != nil {
				bad("portal.cert_file", err)
			} else {
				ep.PortalCertificate = id
			}
		}
	}
	if h := cfg.ClientConnectHandler; h != nil && h.CAFile != "" {
		if pool, _, err := pki.LoadCertPool(h.CAFile); err != nil {
			bad("client_connect_handler.ca_file", err)
		} else {
			ep.HandlerRoots = pool
		}
	}

	var err error
	cc := cfg.ControlChannel
	if f := cc.TLSCryptKeyFile; f != "" {
		ep.ControlKey, err = LoadStaticKey(f)
		if err != nil {
			bad("control_channel.tls_crypt_key_file", err)
		}
	}
	if f := cc.TLSAuthKeyFile; f != "" {
		ep.TLSAuthKey, err = LoadStaticKey(f)
		if err != nil {
			bad("control_channel.tls_auth_key_file", err)
		}
	}
	if f := cc.TLSCryptV2ServerKeyFile; f != "" {
		ep.TLSCryptV2ServerKey, err = LoadTLSCryptV2ServerKey(f)
		if err != nil {
			bad("control_channel.tls_crypt_v2_server_key_file", err)
		}
	}
	return errors.Join(errs...)
}

// loadClientCAs loads the client root CAs and their CRLs.
func (ep *Endpoint) loadClientCAs(auth *config.CertificateAuthentication, now time.Time, bad func(string, error)) {
	pool, cas, err := pki.LoadCertPool(auth.ClientRootCAFile)
	if err != nil {
		bad("authentication.certificate.client_root_ca_file", err)
	} else if i := slices.IndexFunc(cas, func(ca *x509.Certificate) bool { return pki.CheckValidity(ca, now) == nil }); i < 0 {
		bad("authentication.certificate.client_root_ca_file", fmt.Errorf("%s: no CA in it is valid now: %w", auth.ClientRootCAFile, pki.CheckValidity(cas[0], now)))
	} else {
		ep.ClientCAs, ep.ClientCACerts = pool, cas
	}
	if auth.CRLFile != "" {
		// Every CRL of the file (one per issuing CA, intermediates too), each signed by its
		// issuer among the client root CAs and current.
		crls, err := pki.LoadCRLs(auth.CRLFile)
		switch {
		case err != nil:
			bad("authentication.certificate.crl_file", err)
		case ep.ClientCACerts != nil:
			if ep.CRL, err = pki.NewCRLSet(crls, ep.ClientCACerts, now); err != nil {
				hint := ""
				if errors.Is(err, pki.ErrCRLExpired) {
					hint = " (clients are refused while it is expired; re-sign it with cvpn client refresh-crl)"
				}
				bad("authentication.certificate.crl_file", fmt.Errorf("%s: %w%s", auth.CRLFile, err, hint))
			}
		}
	}
}

// LoadSecretFile reads a file holding one secret (a password), without its trailing newline.
// A file every user of the host may read is refused: the secret would not be one.
func LoadSecretFile(file string) (string, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o004 != 0 {
		return "", fmt.Errorf("%s: readable by every user (mode %04o): chmod o-r it", file, fi.Mode().Perm())
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
	if pw == "" {
		return "", fmt.Errorf("%s: empty", file)
	}
	return pw, nil
}

// LoadStaticKey reads an OpenVPN static key file (tls-crypt or tls-auth); a key that does not
// parse is an error naming the file.
func LoadStaticKey(file string) (*tlscrypt.StaticKey, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	k, err := tlscrypt.ParseStaticKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return k, nil
}

// LoadTLSCryptV2ServerKey reads a tls-crypt-v2 server key file (the PEM block
// `openvpn --genkey tls-crypt-v2-server` writes); a key that does not parse is an error naming
// the file and how to make one.
func LoadTLSCryptV2ServerKey(file string) (*tlscrypt.V2ServerKey, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	k, err := tlscrypt.ParseV2ServerKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (make one with openvpn --genkey tls-crypt-v2-server FILE)", file, err)
	}
	return k, nil
}
