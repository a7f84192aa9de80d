package clientstore

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/cvpn/cvpn/pki"
)

// ErrNoCRLFile means the endpoint names no authentication.certificate.crl_file, so there is no
// list to revoke in or refresh.
var ErrNoCRLFile = errors.New("clientstore: the endpoint names no crl_file")

// Revoke adds cert, revoked at now, to ca's CRL in the CRL file, re-signed by ca and valid for
// validity, and returns the new list. The other CRLs of the file (those of other CAs, such as
// intermediates) are kept as they are; a file without a CRL of ca gets one. The CRL's directory
// is locked from reading the old file to renaming the new one over it, so two revocations at
// once cannot lose one. A certificate revoked before wraps pki.ErrAlreadyRevoked.
func (s Store) Revoke(ca *pki.Identity, cert *x509.Certificate, validity time.Duration, now time.Time) (*pki.CRL, error) {
	return s.rewriteCRL(ca, func(prev *pki.CRL) (*pki.CRL, error) { return pki.Revoke(ca, prev, cert, now, validity) })
}

// RefreshCRL re-signs ca's CRL in the CRL file with ca, with the same entries, the next CRL
// number and validity from now, and returns the new list; the file's other CRLs are kept. Run
// it before the list's nextUpdate passes: OpenVPN servers (cvpn too) refuse every client of
// the CA while its CRL is expired. A running cvpn does it itself when it can read ca's key.
func (s Store) RefreshCRL(ca *pki.Identity, validity time.Duration, now time.Time) (*pki.CRL, error) {
	return s.rewriteCRL(ca, func(prev *pki.CRL) (*pki.CRL, error) {
		if prev == nil {
			return nil, fmt.Errorf("refresh CRL: %s holds no CRL of CA %q", s.CRLFile, ca.Cert.Subject.CommonName)
		}
		return pki.RefreshCRL(ca, prev, now, validity)
	})
}

// rewriteCRL replaces ca's CRL in the CRL file with next(that CRL, or nil when the file holds
// none, then appended), keeping the file's other CRLs in their places, under the directory lock.
func (s Store) rewriteCRL(ca *pki.Identity, next func(prev *pki.CRL) (*pki.CRL, error)) (*pki.CRL, error) {
	if s.CRLFile == "" {
		return nil, ErrNoCRLFile
	}
	if ca == nil || ca.Cert == nil {
		return nil, errors.New("clientstore: no issuing CA")
	}
	unlock, err := LockDir(filepath.Dir(s.CRLFile))
	if err != nil {
		return nil, err
	}
	defer unlock()
	crls, err := pki.LoadCRLs(s.CRLFile)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(crls, func(c *pki.CRL) bool {
		return bytes.Equal(c.List.RawIssuer, ca.Cert.RawSubject) && c.List.CheckSignatureFrom(ca.Cert) == nil
	})
	var prev *pki.CRL
	if i >= 0 {
		prev = crls[i]
	}
	crl, err := next(prev)
	if err != nil {
		return nil, err
	}
	if i >= 0 {
		crls[i] = crl
	} else {
		crls = append(crls, crl)
	}
	if err := pki.WriteCRLs(crls, s.CRLFile); err != nil {
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

// LockDir takes an exclusive lock on dir (flock on the directory), so two revocations at once
// cannot both read the old CRL and the second write lose the first's entry; whoever else
// rewrites the CRL file (a cluster node installing the cluster's) takes it too. It returns the
// unlock function.
func LockDir(dir string) (func(), error) {
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
