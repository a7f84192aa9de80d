package clientstore

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cvpn/cvpn/pki"
)

// ErrNoCRLFile means the endpoint names no authentication.certificate.crl_file, so there is no
// list to revoke in or refresh.
var ErrNoCRLFile = errors.New("clientstore: the endpoint names no crl_file")

// Revoke adds cert, revoked at now, to the CRL file, re-signed by ca and valid for validity,
// and returns the new list. The CRL's directory is locked from reading the old list to renaming
// the new one over it, so two revocations at once cannot lose one. A certificate revoked
// before wraps pki.ErrAlreadyRevoked.
func (s Store) Revoke(ca *pki.Identity, cert *x509.Certificate, validity time.Duration, now time.Time) (*pki.CRL, error) {
	return s.rewriteCRL(func(prev *pki.CRL) (*pki.CRL, error) { return pki.Revoke(ca, prev, cert, now, validity) })
}

// RefreshCRL re-signs the CRL file with ca, with the same entries, the next CRL number and
// validity from now, and returns the new list. Run it before the list's nextUpdate passes:
// OpenVPN servers (cvpn too) refuse every client while the CRL is expired.
func (s Store) RefreshCRL(ca *pki.Identity, validity time.Duration, now time.Time) (*pki.CRL, error) {
	return s.rewriteCRL(func(prev *pki.CRL) (*pki.CRL, error) { return pki.RefreshCRL(ca, prev, now, validity) })
}

// rewriteCRL replaces the CRL file with next(the current list), holding the directory lock.
func (s Store) rewriteCRL(next func(prev *pki.CRL) (*pki.CRL, error)) (*pki.CRL, error) {
	if s.CRLFile == "" {
		return nil, ErrNoCRLFile
	}
	unlock, err := lockDir(filepath.Dir(s.CRLFile))
	if err != nil {
		return nil, err
	}
	defer unlock()
	prev, err := pki.LoadCRL(s.CRLFile)
	if err != nil {
		return nil, err
	}
	crl, err := next(prev)
	if err != nil {
		return nil, err
	}
	if err := pki.WriteCRL(crl, s.CRLFile); err != nil {
		return nil, err
	}
	return crl, nil
}

// CreateCRL writes a new, empty CRL signed by ca and valid for validity from now to file, which
// must not exist yet (an error wrapping fs.ErrExist otherwise): an endpoint that names no
// crl_file gets one this way.
func CreateCRL(ca *pki.Identity, file string, validity time.Duration, now time.Time) (*pki.CRL, error) {
	if _, err := os.Lstat(file); err == nil {
		return nil, &fs.PathError{Op: "create CRL", Path: file, Err: fs.ErrExist}
	}
	crl, err := pki.NewCRL(ca, now, validity)
	if err != nil {
		return nil, err
	}
	if err := pki.WriteCRL(crl, file); err != nil {
		return nil, err
	}
	return crl, nil
}

// lockDir takes an exclusive lock on dir, so two revocations at once cannot both read the old
// CRL and the second write lose the first's entry. It returns the unlock function.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil // closing drops the lock
}
