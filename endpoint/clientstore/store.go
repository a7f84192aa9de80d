// Package clientstore keeps an endpoint's client identities and its certificate revocation
// list: it issues clients (certificate, key and, optionally, their own tls-crypt-v2 key),
// revokes them, lists them with their status, and re-signs the CRL before it expires.
//
// The store needs no database: the issued certificates are the index. Each client is NAME.crt
// and NAME.key in the clients directory; its status is the certificate's own dates and the CRL.
// So there is nothing to drift out of step with what was issued, a backup is a copy of the
// directory, and `ls` tells the truth. The price: a client whose files were removed cannot be
// revoked by name (its serial stays in the CRL if it was revoked before).
//
// It does not load or check the server's own files (package endpoint), render client profiles
// (package endpoint/profile), parse flags or print: cmd/cvpn does that.
package clientstore

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/pki"
)

// Store is where an endpoint's client identities live. By convention (the layout cvpn init
// makes) the CA key sits beside authentication.certificate.client_root_ca_file with the
// extension .key (pki/ca.crt, pki/ca.key), and the issued identities in the clients directory
// beside it (pki/clients/NAME.crt and NAME.key).
type Store struct {
	// CACertFile is client_root_ca_file, whose first certificate issues clients; CAKeyFile is
	// that CA's private key.
	CACertFile, CAKeyFile string
	// Dir is the clients directory.
	Dir string
	// CRLFile is authentication.certificate.crl_file; "" when the endpoint names none.
	CRLFile string
}

// Of returns the store of the endpoint cfg. caKeyFile is the CA's private key; "" means the
// conventional place beside client_root_ca_file.
func Of(cfg *config.Endpoint, caKeyFile string) Store {
	auth := cfg.Authentication.Certificate
	ca := auth.ClientRootCAFile
	if caKeyFile == "" {
		caKeyFile = strings.TrimSuffix(ca, filepath.Ext(ca)) + ".key"
	}
	return Store{CACertFile: ca, CAKeyFile: caKeyFile, Dir: filepath.Join(filepath.Dir(ca), "clients"), CRLFile: auth.CRLFile}
}

// namePattern is what a client name (its CN and its file name) may be: it must be safe as a file
// name and in an OpenVPN status line.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$`)

// CheckName refuses a client name that cannot be a certificate CN, a file name in the clients
// directory and a word of an OpenVPN status line.
func CheckName(name string) error {
	if !namePattern.MatchString(name) || strings.HasSuffix(name, ".") {
		return fmt.Errorf("client name %q: use 1 to 64 letters, digits and . _ @ + -, starting with a letter or digit", name)
	}
	return nil
}

// CertFile is the certificate of the client called name.
func (s Store) CertFile(name string) string { return filepath.Join(s.Dir, name+".crt") }

// KeyFile is the private key of the client called name.
func (s Store) KeyFile(name string) string { return filepath.Join(s.Dir, name+".key") }

// TLSCryptV2KeyFile is the client's own tls-crypt-v2 key, when it has one.
func (s Store) TLSCryptV2KeyFile(name string) string {
	return filepath.Join(s.Dir, name+".tls-crypt-v2.key")
}

// LoadCA loads the issuing CA: client_root_ca_file and its key.
func (s Store) LoadCA() (*pki.Identity, error) {
	ca, err := pki.LoadCA(s.CACertFile, s.CAKeyFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load the issuing CA: %w (pass --ca-key FILE if the CA key is kept elsewhere)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("load the issuing CA: %w", err)
	}
	return ca, nil
}

// LoadCAs loads the certificates of client_root_ca_file: the CAs clients must chain to. It
// needs no CA key.
func (s Store) LoadCAs() ([]*x509.Certificate, error) {
	_, cas, err := pki.LoadCertPool(s.CACertFile)
	return cas, err
}

// ClientCert reads the certificate of the client called name.
func (s Store) ClientCert(name string) (*x509.Certificate, error) {
	certs, err := pki.LoadCertificates(s.CertFile(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no client named %q (no %s; issue one with: cvpn client issue %s)", name, s.CertFile(name), name)
	}
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// Identity reads the certificate and key of the client called name and checks that they match.
func (s Store) Identity(name string) (*pki.Identity, error) {
	if _, err := s.ClientCert(name); err != nil {
		return nil, err
	}
	return pki.LoadIdentity(s.CertFile(name), s.KeyFile(name))
}

// TLSCryptV2Key reads the client's own tls-crypt-v2 key file (fs.ErrNotExist when the client
// was issued without one).
func (s Store) TLSCryptV2Key(name string) ([]byte, error) {
	return os.ReadFile(s.TLSCryptV2KeyFile(name))
}
