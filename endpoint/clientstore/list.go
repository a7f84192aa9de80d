package clientstore

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cvpn/cvpn/pki"
)

// Status is where a client stands, as cvpn client list shows it.
type Status string

// Client statuses, first match wins.
const (
	Revoked   Status = "revoked"   // listed in the CRL
	Expired   Status = "expired"   // past its certificate's notAfter
	Untrusted Status = "untrusted" // not signed by any CA of client_root_ca_file (an old CA's client)
	Valid     Status = "valid"
)

// Client is one issued client.
type Client struct {
	Name   string
	Cert   *x509.Certificate
	Status Status
}

// List reads every client certificate in the clients directory, in name order, with its status
// at now against cas (client_root_ca_file, see LoadCAs) and the CRLs of the CRL file. Problems that leave
// the listing incomplete or a status unknown (an unreadable CRL, an unreadable certificate)
// come back in problems, in order, beside the clients that could be read; err is set only when
// the directory itself cannot be read. A clients directory that does not exist yet holds no
// clients.
func (s Store) List(cas []*x509.Certificate, now time.Time) (clients []Client, problems []error, err error) {
	var crls []*pki.CRL
	if s.CRLFile != "" {
		if crls, err = pki.LoadCRLs(s.CRLFile); err != nil {
			problems = append(problems, fmt.Errorf("revocation status unknown: %w", err))
		}
	}
	entries, err := os.ReadDir(s.Dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, problems, err
	}
	for _, e := range entries {
		name, isCert := strings.CutSuffix(e.Name(), ".crt")
		if !isCert || !e.Type().IsRegular() {
			continue
		}
		certs, err := pki.LoadCertificates(filepath.Join(s.Dir, e.Name()))
		if err != nil {
			problems = append(problems, err)
			continue
		}
		c := certs[0]
		status := Valid
		switch {
		case slices.ContainsFunc(crls, func(crl *pki.CRL) bool { return crl.IsRevoked(c) }):
			status = Revoked
		case now.After(c.NotAfter):
			status = Expired
		case !slices.ContainsFunc(cas, func(ca *x509.Certificate) bool { return c.CheckSignatureFrom(ca) == nil }):
			status = Untrusted
		}
		clients = append(clients, Client{Name: name, Cert: c, Status: status})
	}
	return clients, problems, nil
}
