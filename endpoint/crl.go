package endpoint

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tunnel"
)

// RevocationTarget is what WatchCRL hands each new CRL to. *tunnel.Server is one: it puts the
// list in force and cuts off connected clients it revokes.
type RevocationTarget interface {
	SetRevoker(tunnel.Revoker)
}

// crlPoll is how often the CRL file is checked for a new version.
const crlPoll = 2 * time.Second

// WatchCRL reloads the CRL file when it changes (cvpn client revoke replaces it by rename),
// checks it against cas and hands it to target, until stop is closed. A CRL that fails to load
// or verify is logged and the previous one stays in force. It polls every two seconds.
func WatchCRL(file string, cas []*x509.Certificate, target RevocationTarget, log *slog.Logger, stop <-chan struct{}) {
	watchCRL(file, cas, target, log, stop, crlPoll, time.Now)
}

// watchCRL is WatchCRL with the poll interval and the clock the CRL is verified at given.
func watchCRL(file string, cas []*x509.Certificate, target RevocationTarget, log *slog.Logger, stop <-chan struct{},
	poll time.Duration, now func() time.Time) {
	// A stamp of the file's identity and version: a rename over it changes the inode (in Sys),
	// a rewrite in place the time or size.
	stamp := func() string {
		fi, err := os.Stat(file)
		if err != nil {
			return ""
		}
		return fmt.Sprint(fi.ModTime().UnixNano(), fi.Size(), fi.Sys())
	}
	last := stamp()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		cur := stamp()
		if cur == last || cur == "" {
			continue
		}
		crl, err := pki.LoadCRL(file)
		if err == nil {
			_, err = crl.Verify(cas, now())
		}
		if err != nil {
			log.Error("new CRL refused; the previous one stays in force", "file", file, "err", err)
			last = cur
			continue
		}
		last = cur
		target.SetRevoker(crl)
		log.Info("CRL reloaded", "file", file, "revoked", crl.Len())
	}
}
