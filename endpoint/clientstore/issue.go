package clientstore

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"os"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// Default lifetimes, in days, of what the store signs.
const (
	DefaultClientDays = 825 // the CA/Browser Forum's former ceiling, and easy-rsa's default
	DefaultCRLDays    = 180 // OpenVPN refuses every client once the CRL's nextUpdate passes
)

const day = 24 * time.Hour

// Request is a client to issue.
type Request struct {
	Name    string   // the certificate's CN and the files' name; see CheckName
	Groups  []string // carried as the certificate's OU values
	KeyType pki.KeyType
	// Validity is how long the certificate is valid from now. Zero means DefaultClientDays,
	// cut short to the CA's remaining life so the default does not fail near the CA's end; a
	// validity given explicitly that outlives the CA is refused.
	Validity time.Duration
	// TLSCryptV2 is the endpoint's tls-crypt-v2 server key when the client is to get its own
	// tls-crypt-v2 client key (wrapped with it); nil for none.
	TLSCryptV2 *tlscrypt.V2ServerKey
}

// Issued is a client the store has just issued, with the files it wrote.
type Issued struct {
	Identity          *pki.Identity
	CertFile, KeyFile string
	TLSCryptV2KeyFile string // "" when the client has no tls-crypt-v2 key
}

// Issue signs a client certificate with ca and writes it and its key (mode 0600), and the
// client's tls-crypt-v2 key when asked, to the clients directory. Names are unique: a client
// whose files exist is refused, even if revoked.
func (s Store) Issue(ca *pki.Identity, r Request, now time.Time) (*Issued, error) {
	if err := CheckName(r.Name); err != nil {
		return nil, err
	}
	name := r.Name
	for _, f := range []string{s.CertFile(name), s.KeyFile(name)} {
		if _, err := os.Lstat(f); err == nil {
			return nil, fmt.Errorf("client %q already exists (%s); names are unique. "+
				"To replace it: cvpn client revoke %s, remove %s and %s, and issue again",
				name, f, name, s.CertFile(name), s.KeyFile(name))
		}
	}
	validity := r.Validity
	if validity == 0 {
		validity = DefaultClientDays * day
		if left := ca.Cert.NotAfter.Sub(now); validity > left {
			validity = left
		}
	}
	id, err := pki.IssueClient(ca, name, r.Groups, r.KeyType, validity, now)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("clients directory: %w", err)
	}
	out := &Issued{Identity: id, CertFile: s.CertFile(name), KeyFile: s.KeyFile(name)}
	if err := pki.WriteIdentity(id, out.CertFile, out.KeyFile); err != nil {
		return nil, err
	}
	if r.TLSCryptV2 != nil {
		ck, err := tlscrypt.NewV2ClientKey(rand.Reader, r.TLSCryptV2, nil)
		if err == nil {
			err = writeNewFile(s.TLSCryptV2KeyFile(name), ck.Marshal(), 0o600)
		}
		if err != nil {
			return nil, fmt.Errorf("tls-crypt-v2 key: %w", err)
		}
		out.TLSCryptV2KeyFile = s.TLSCryptV2KeyFile(name)
	}
	return out, nil
}

// CAKeyType is the key type of ca's own key, the default for the clients it issues.
func CAKeyType(ca *pki.Identity) pki.KeyType {
	if _, ok := ca.Key.(*rsa.PrivateKey); ok {
		return pki.RSA2048
	}
	if _, ok := ca.Key.(*ecdsa.PrivateKey); ok {
		return pki.ECDSAP256
	}
	if _, ok := ca.Key.(ed25519.PrivateKey); ok {
		return pki.Ed25519
	}
	return pki.ECDSAP256
}

// GroupsWithoutRule returns the groups that no authorization rule of cfg names: a client in
// only those groups reaches nothing but what authorize_all_groups rules allow. Rules match
// groups by exact name, so this is usually a typo.
func GroupsWithoutRule(cfg *config.Endpoint, groups []string) []string {
	var out []string
	for _, g := range groups {
		used := false
		for _, r := range cfg.AuthorizationRules {
			used = used || r.AccessGroupID == g
		}
		if !used {
			out = append(out, g)
		}
	}
	return out
}

// writeNewFile writes data to a file that must not exist yet, with mode perm.
func writeNewFile(name string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
