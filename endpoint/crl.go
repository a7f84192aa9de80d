package endpoint

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/cvpn/cvpn/endpoint/clientstore"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tunnel"
)

// The CRL at runtime, as the stock server keeps it: OpenVPN re-reads crl-verify's file when it
// changes and checks the client's chain against it at every TLS handshake, renegotiations
// included (key_state_init in src/openvpn/ssl.c, backend_tls_ctx_reload_crl in
// src/openvpn/ssl_openssl.c). So does cvpn: the watcher below puts each new version in force,
// and revocation checks every handshake against the CRLs at the endpoint's clock. A CRL past
// its next update therefore refuses every new handshake of the clients its CA issued (fail
// closed); a connected client keeps its session until its next renegotiation (reneg_seconds),
// which is refused, and the session ends when the hand window passes without a new key. A
// current CRL in the file ends the refusals at the next poll.

// revocation is a CRL set in force for the engine: IsRevoked (listed, here or above in the
// chain) is what cuts connected clients off when a new set comes into force; CheckRevocation
// decides each handshake at the endpoint's clock (pki.CRLSet.Check: listed, an issuer without
// a CRL, a CRL past its next update).
type revocation struct {
	set *pki.CRLSet
	now func() time.Time
}

var _ tunnel.RevocationChecker = revocation{}

func (r revocation) IsRevoked(cert *x509.Certificate) bool { return r.set.IsRevoked(cert) }

func (r revocation) CheckRevocation(cert *x509.Certificate) error { return r.set.Check(cert, r.now()) }

// crlPoll is how often the CRL file is checked for a new version, and the CRLs' dates.
const crlPoll = 2 * time.Second

const day = 24 * time.Hour

// crlWarnings are how long before a CRL's next update the log warns, most distant first.
var crlWarnings = []time.Duration{30 * day, 7 * day, day}

// resignRetry is how long the watcher waits after a failed re-signing before it tries again.
const resignRetry = time.Hour

// errNotOurCA says that the CA key the endpoint holds is not the key of a CRL's issuer.
var errNotOurCA = errors.New("the CA key beside client_root_ca_file is another CA's")

// crlWatcher keeps the CRL file in force while the endpoint runs. Each poll it:
//
//   - reloads the file when it changed (cvpn client revoke replaces it by rename), checks it
//     against the client root CAs and puts it in force; a file that fails to load or verify is
//     logged once and the set in force stays (one whose CRL is not valid yet, from a signer
//     whose clock runs ahead, is tried again each poll until it is);
//   - when the endpoint holds its own CA key (the built-in PKI: the key beside
//     client_root_ca_file, as cvpn init lays it out), re-signs that CA's CRL once less than a
//     third of its validity is left, or seven days when that is more (but never more than half
//     of it), writes it atomically (clientstore, under the directory lock that cvpn client
//     revoke takes too) and reloads it;
//   - warns once when a CRL has less than 30, 7 and 1 day left (only the nearest of those it
//     has reached, when it came into force that late), and logs once when it has expired. A
//     CRL cvpn re-signs itself is not warned about before its re-signing is due: only a failed
//     re-signing lets it come near its end.
//
// A watcher belongs to one goroutine.
type crlWatcher struct {
	file string
	cas  []*x509.Certificate
	put  func(*pki.CRLSet) // puts a new set in force
	log  *slog.Logger
	now  func() time.Time
	// resign re-signs the CRL of issuer in the file, valid for validity from now, and returns
	// it (wrapping errNotOurCA when the endpoint's CA key is not issuer's); nil when the
	// endpoint holds no CA key.
	resign func(issuer *x509.Certificate, validity time.Duration, now time.Time) (*pki.CRL, error)

	stamp   string      // the file's identity and version when last read
	refused string      // the stamp of the last version refused (logged once)
	set     *pki.CRLSet // in force
	state   map[string]*crlState
}

// crlState is what the watcher has done about one CRL, keyed by its signature.
type crlState struct {
	warned  int       // how many of crlWarnings are logged (or skipped: reached before it came into force)
	expired bool      // its expiry is logged
	notOurs bool      // the endpoint cannot re-sign it
	retry   time.Time // no re-signing attempt before
}

// newCRLWatcher watches ep's CRL file, whose set ep.CRL is in force. It re-signs the CRL of the
// endpoint's own CA when the clients store's CA key (clientstore.Of) exists.
func newCRLWatcher(ep *Endpoint, put func(*pki.CRLSet), log *slog.Logger, now func() time.Time) *crlWatcher {
	w := &crlWatcher{
		file: ep.Config.Authentication.Certificate.CRLFile, cas: ep.ClientCACerts, put: put, log: log, now: now,
		set: ep.CRL, state: map[string]*crlState{},
	}
	w.stamp = w.fileStamp()
	store := clientstore.Of(ep.Config, "")
	if _, err := os.Stat(store.CAKeyFile); err == nil {
		w.resign = func(issuer *x509.Certificate, validity time.Duration, now time.Time) (*pki.CRL, error) {
			ca, err := store.LoadCA()
			if err != nil {
				return nil, err
			}
			if !ca.Cert.Equal(issuer) {
				return nil, errNotOurCA
			}
			return store.RefreshCRL(ca, validity, now)
		}
		log.Info("the endpoint holds its CA key: cvpn re-signs that CA's CRL before it expires", "ca_key", store.CAKeyFile, "file", w.file)
	}
	return w
}

// run polls every interval until stop is closed, starting at once.
func (w *crlWatcher) run(stop <-chan struct{}, interval time.Duration) {
	w.uncovered()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		w.poll()
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// poll is one round: reload, re-sign, warn.
func (w *crlWatcher) poll() {
	w.reload()
	if w.resignDue(w.now()) {
		w.reload()
	}
	w.warn(w.now())
}

// fileStamp is the CRL file's identity and version: a rename over it changes the inode, a
// rewrite in place the modification or change time or the size (reading it, its access time,
// changes nothing). "" when it cannot be read.
func (w *crlWatcher) fileStamp() string {
	fi, err := os.Stat(w.file)
	if err != nil {
		return ""
	}
	stamp := fmt.Sprint(fi.ModTime().UnixNano(), fi.Size())
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		stamp += fmt.Sprint(" ", st.Dev, st.Ino, st.Ctim.Nano())
	}
	return stamp
}

// reload loads the file when it changed and puts it in force, or logs why not.
func (w *crlWatcher) reload() {
	cur := w.fileStamp()
	if cur == w.stamp || cur == "" {
		return
	}
	set, err := pki.LoadCRLSet(w.file, w.cas, w.now())
	if err != nil {
		if cur != w.refused {
			w.refused = cur
			w.log.Error("new CRL refused; the previous one stays in force", "file", w.file, "err", err)
		}
		if !errors.Is(err, pki.ErrCRLNotYetValid) {
			w.stamp = cur // nothing changes until the file does; a CRL not valid yet is tried again
		}
		return
	}
	w.stamp, w.refused = cur, ""
	if w.set != nil && bytes.Equal(set.PEM, w.set.PEM) {
		return // touched, chmod-ed or rewritten with the same lists: no change to put or log
	}
	w.set = set
	w.prune()
	w.put(set)
	w.log.Info("CRL reloaded", "file", w.file, "crls", len(set.CRLs()), "revoked", set.Len())
	w.uncovered()
}

// uncovered warns about the client root CAs the set in force holds no CRL of.
func (w *crlWatcher) uncovered() {
	for _, ca := range w.set.Uncovered(w.now()) {
		w.log.Warn("the CRL file holds no CRL of a client root CA: every certificate it issued is refused, as OpenVPN's crl-verify refuses it",
			"ca", ca.Subject.CommonName, "file", w.file)
	}
}

// stateOf returns what the watcher has done about c.
func (w *crlWatcher) stateOf(c *pki.CRL) *crlState {
	key := string(c.List.Signature)
	st, ok := w.state[key]
	if !ok {
		st = &crlState{}
		w.state[key] = st
	}
	return st
}

// prune forgets the CRLs no longer in force.
func (w *crlWatcher) prune() {
	keep := map[string]*crlState{}
	for _, c := range w.set.CRLs() {
		if st, ok := w.state[string(c.List.Signature)]; ok {
			keep[string(c.List.Signature)] = st
		}
	}
	w.state = keep
}

// resignAt is when the watcher re-signs c: once a third of its validity is left, or seven
// days when that is more, but never more than half of it (so a short CRL is not re-signed
// again at once). The zero time when c has no next update.
func resignAt(c *pki.CRL) time.Time {
	next := c.List.NextUpdate
	if next.IsZero() {
		return time.Time{}
	}
	validity := next.Sub(c.List.ThisUpdate)
	margin := max(validity/3, min(7*day, validity/2))
	return next.Add(-margin)
}

// resignDue re-signs the CRLs of the set that are due and reports whether it wrote one.
func (w *crlWatcher) resignDue(now time.Time) (wrote bool) {
	if w.resign == nil {
		return false
	}
	for _, c := range w.set.CRLs() {
		st := w.stateOf(c)
		at := resignAt(c)
		if st.notOurs || at.IsZero() || now.Before(at) || now.Before(st.retry) {
			continue
		}
		issuer := w.set.Issuer(c)
		// The new CRL is valid as long as this one was (cvpn init's or --crl-days'), less the
		// few minutes its thisUpdate is backdated by.
		validity := max(c.List.NextUpdate.Sub(c.List.ThisUpdate).Truncate(time.Hour), time.Hour)
		fresh, err := w.resign(issuer, validity, now)
		switch {
		case errors.Is(err, errNotOurCA):
			st.notOurs = true
			w.log.Info("CRL not re-signed by cvpn: "+errNotOurCA.Error(), "issuer", issuer.Subject.CommonName, "file", w.file)
		case err != nil:
			st.retry = now.Add(resignRetry)
			w.log.Error("re-signing the CRL failed; trying again in an hour", "issuer", issuer.Subject.CommonName,
				"next_update", c.List.NextUpdate.UTC().Format(time.RFC3339), "file", w.file, "err", err)
		default:
			wrote = true
			w.log.Info("CRL re-signed", "issuer", issuer.Subject.CommonName, "number", fresh.List.Number,
				"next_update", fresh.List.NextUpdate.UTC().Format(time.RFC3339), "was", c.List.NextUpdate.UTC().Format(time.RFC3339),
				"file", w.file)
		}
	}
	return wrote
}

// warn logs, once each, that a CRL of the set is near its next update or past it.
func (w *crlWatcher) warn(now time.Time) {
	for _, c := range w.set.CRLs() {
		next := c.List.NextUpdate
		if next.IsZero() {
			continue
		}
		st := w.stateOf(c)
		issuer := w.set.Issuer(c).Subject.CommonName
		fix := "re-sign it (cvpn client refresh-crl, for the CA cvpn init made) or install a current CRL of this CA in the file"
		if w.resign != nil && !st.notOurs {
			if now.Before(resignAt(c)) {
				continue // cvpn re-signs it before it comes near its end
			}
			fix = "cvpn could not re-sign it (see the error above); " + fix
		}
		left := next.Sub(now)
		if left < 0 {
			if !st.expired {
				st.expired = true
				w.log.Error("CRL expired: every new TLS handshake (renegotiations too) of a certificate its CA issued is refused until a current CRL is in force",
					"issuer", issuer, "next_update", next.UTC().Format(time.RFC3339), "file", w.file, "fix", fix)
			}
			continue
		}
		reached := 0
		for reached < len(crlWarnings) && left < crlWarnings[reached] {
			reached++
		}
		if reached > st.warned {
			st.warned = reached
			within := crlWarnings[reached-1]
			w.log.Warn(fmt.Sprintf("CRL expires within %s: from then on every client its CA issued is refused", days(within)),
				"issuer", issuer, "next_update", next.UTC().Format(time.RFC3339), "left", left.Round(time.Minute).String(),
				"file", w.file, "fix", fix)
		}
	}
}

// days writes d, a whole number of days, as "30 days" or "1 day".
func days(d time.Duration) string {
	if n := int(d / day); n != 1 {
		return fmt.Sprintf("%d days", n)
	}
	return "1 day"
}
