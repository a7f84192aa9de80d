package endpoint

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/cluster"
	"github.com/cvpn/cvpn/endpoint/clientstore"
	"github.com/cvpn/cvpn/pki"
)

// Revocations across a cluster (issue 18). The cluster's client CRL is one value in etcd
// (cluster.PutCRL); each node keeps it and its own CRL file (authentication.certificate.crl_file)
// in step, both ways:
//
//   - etcd to file: a CRL stored in etcd is checked against the node's client root CAs as the
//     CRL watcher checks its file (pki.NewCRLSet at the endpoint's clock) and, when it is newer
//     than the file's, written to the file atomically; the node's own CRL watcher then puts it
//     in force (ending the sessions it revokes), and a node that restarts starts with it.
//   - file to etcd: when the CRL in force (what the watcher, a reload or the start loaded from
//     the file: `cvpn client revoke` on the node's host, or the watcher's re-signing) is newer
//     than etcd's, the node stores it there, only if etcd's is still the one it compared with
//     (cluster.PutCRLIf).
//
// "Newer" is one strict order, the same on every node, CA by CA: the CRL number, then
// thisUpdate, then the signature bytes (so two lists re-signed at the same second by two
// nodes still have a winner). A set is newer than another when none of its CRLs is older than
// the other's of the same CA and one is newer (or covers a CA the other does not). Every node
// moves only towards the newer set, so the cluster settles on the newest and a CRL is never
// written back and forth; an equal set is never rewritten. Two sets each newer for a
// different CA (two CAs' lists revoked on two hosts at once) are not merged: both stay, and
// the node says so, until one host's list is newer for both.
//
// Attacker's view: whoever can write to etcd can store any bytes under the crl key (up to
// cluster.MaxCRLLen, which bounds what each node reads and parses on each change). A node
// writes nothing that does not verify against its own CAs and is not current at its clock,
// and nothing older than its file: so such a writer can neither forge a revocation nor lift
// one; the worst it can do is replay a list the node already has.

// clusterCRLPoll is how often the node compares the CRL in force with etcd's: a load of an
// atomic pointer when neither changed.
const clusterCRLPoll = 500 * time.Millisecond

// crlOrder is how one CRL set compares with another.
type crlOrder int

const (
	crlSame  crlOrder = iota // the same CRLs
	crlNewer                 // newer for some CA, older for none
	crlOlder                 // older for some CA, newer for none
	crlMixed                 // newer for one CA, older for another
)

func (o crlOrder) String() string {
	return [...]string{"the same", "newer", "older", "newer for one CA, older for another"}[o]
}

// crlsByCA places each CRL of crls under the CA of cas that signed it (by the CA's subject
// and key, as pki.NewCRLSet does; not its dates): byCA[i] is cas[i]'s CRL or nil. A CRL that
// no CA of cas signed, or a second CRL of one CA, is an error.
func crlsByCA(crls []*pki.CRL, cas []*x509.Certificate) ([]*pki.CRL, error) {
	byCA := make([]*pki.CRL, len(cas))
	for n, c := range crls {
		i := -1
		for j, ca := range cas {
			if bytes.Equal(ca.RawSubject, c.List.RawIssuer) && c.List.CheckSignatureFrom(ca) == nil {
				i = j
				break
			}
		}
		switch {
		case i < 0:
			return nil, fmt.Errorf("CRL %d (issuer %q): %w any client root CA", n+1, c.List.Issuer.CommonName, pki.ErrNotIssuedBy)
		case byCA[i] != nil:
			return nil, fmt.Errorf("CRL %d (issuer %q): a second CRL of the same CA", n+1, c.List.Issuer.CommonName)
		}
		byCA[i] = c
	}
	return byCA, nil
}

// compareCRL orders two CRLs of one CA: number, thisUpdate, signature.
func compareCRL(a, b *pki.CRL) int {
	if a.List.Number != nil && b.List.Number != nil {
		if c := a.List.Number.Cmp(b.List.Number); c != 0 {
			return c
		}
	}
	if c := a.List.ThisUpdate.Compare(b.List.ThisUpdate); c != 0 {
		return c
	}
	return bytes.Compare(a.List.Signature, b.List.Signature)
}

// compareCRLs orders a with b, both placed by crlsByCA over the same CAs.
func compareCRLs(a, b []*pki.CRL) crlOrder {
	newer, older := false, false
	for i := range a {
		switch x, y := a[i], b[i]; {
		case x == nil && y == nil:
		case y == nil:
			newer = true
		case x == nil:
			older = true
		default:
			c := compareCRL(x, y)
			newer = newer || c > 0
			older = older || c < 0
		}
	}
	switch {
	case newer && older:
		return crlMixed
	case newer:
		return crlNewer
	case older:
		return crlOlder
	}
	return crlSame
}

// ErrCRLNotNewer says that a CRL was not written (to a CRL file, or to the cluster) because
// the one there is as new or newer.
var ErrCRLNotNewer = errors.New("endpoint: the CRL is not newer")

// InstallCRL writes pem to file as installCRL does; `cvpn client revoke` on a host with a node
// file runs it before revoking, so that the new list builds on the cluster's.
func InstallCRL(file string, cas []*x509.Certificate, pem []byte, now time.Time) error {
	_, err := installCRL(file, cas, pem, now)
	return err
}

// installCRL writes pem, one or more CRLs, to file when they verify against cas and are
// current at now (as the CRL watcher checks its file), and are newer than the file's CRLs (a
// file that is missing or does not verify is replaced). It writes atomically (a temporary file
// renamed over file, with file's mode and owner) under the lock of file's directory that `cvpn
// client revoke` takes too, so that neither loses the other's list. It returns the order of
// pem against the file's CRLs; an error wrapping ErrCRLNotNewer when it wrote nothing for that
// reason.
func installCRL(file string, cas []*x509.Certificate, pem []byte, now time.Time) (crlOrder, error) {
	crls, err := pki.ParseCRLs(pem)
	if err != nil {
		return 0, err
	}
	if _, err := pki.NewCRLSet(crls, cas, now); err != nil {
		return 0, err
	}
	next, err := crlsByCA(crls, cas)
	if err != nil {
		return 0, err
	}
	unlock, err := clientstore.LockDir(filepath.Dir(file))
	if err != nil {
		return 0, err
	}
	defer unlock()
	order := crlNewer
	if have, err := pki.LoadCRLs(file); err == nil {
		if cur, err := crlsByCA(have, cas); err == nil {
			order = compareCRLs(next, cur)
		}
	}
	if order != crlNewer {
		return order, fmt.Errorf("%w: compared with %s's, it is %s", ErrCRLNotNewer, file, order)
	}
	var data []byte
	for _, c := range crls {
		data = append(data, c.PEM...)
	}
	return order, replaceFile(file, data)
}

// replaceFile replaces file with data atomically, keeping its mode and (when the process may)
// its owner; a new file gets mode 0644, as pki.WriteCRLs gives it.
func replaceFile(file string, data []byte) (err error) {
	mode, uid, gid := fs.FileMode(0o644), -1, -1
	if fi, err := os.Stat(file); err == nil {
		mode = fi.Mode().Perm()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	}
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if uid >= 0 && uid != os.Geteuid() {
		_ = f.Chown(uid, gid) // only root may; otherwise the file is the process user's, as before
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// PublishCRL stores file's CRLs as the cluster's CRL when they are newer than the one stored
// at revision rev (0: none; one that does not place under cas counts as none), and only if it
// is still that one (cluster.PutCRLIf). It returns the order of the file's CRLs against the
// stored ones, and returns the revision it stored them at. It wraps ErrCRLNotNewer when the
// stored ones are as new or newer (or one was stored meanwhile). `cvpn client revoke` on a
// host with a node file runs it after revoking.
func PublishCRL(ctx context.Context, cli *clientv3.Client, prefix, file string, cas []*x509.Certificate) (rev int64, err error) {
	crls, err := pki.LoadCRLs(file)
	if err != nil {
		return 0, err
	}
	mine, err := crlsByCA(crls, cas)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	stored, srev, ok, err := cluster.CRL(ctx, cli, prefix)
	if err != nil {
		return 0, err
	}
	order := crlNewer
	if ok {
		if theirs, err := placeCRLs(stored, cas); err == nil {
			order = compareCRLs(mine, theirs)
		}
	}
	if order != crlNewer {
		return 0, fmt.Errorf("%w: compared with the cluster's (etcd revision %d), %s's is %s", ErrCRLNotNewer, srev, file, order)
	}
	var data []byte
	for _, c := range crls {
		data = append(data, c.PEM...)
	}
	rev, put, err := cluster.PutCRLIf(ctx, cli, prefix, data, srev)
	if err != nil {
		return 0, err
	}
	if !put {
		return 0, fmt.Errorf("%w: another CRL was stored in the cluster meanwhile", ErrCRLNotNewer)
	}
	return rev, nil
}

// placeCRLs parses pem and places its CRLs under cas (crlsByCA).
func placeCRLs(pem []byte, cas []*x509.Certificate) ([]*pki.CRL, error) {
	crls, err := pki.ParseCRLs(pem)
	if err != nil {
		return nil, err
	}
	return crlsByCA(crls, cas)
}

// crlSync keeps a node's CRL file and the cluster's CRL in step; it belongs to the goroutine
// of watchClusterCRL.
type crlSync struct {
	r   *Running
	log *slog.Logger
	// etcd is the cluster's CRL as last seen (known: read or watched at least once) and its
	// revision (0: none stored).
	etcd    []byte
	etcdRev int64
	known   bool
	// compared is the set in force and the etcd revision last compared, so that a round
	// where neither changed costs nothing.
	compared    *pki.CRLSet
	comparedRev int64
	// refused is the revision of the last etcd CRL refused (logged once); off says the
	// endpoint has no CRL file (logged once); failing that storing in etcd fails (logged
	// once until it works).
	refused int64
	off     bool
	failing bool
}

// watchClusterCRL keeps the node's CRL file and the cluster's CRL in step until ctx ends (see
// above), and returns a function that waits until it has stopped. Nothing is done while the
// endpoint has no certificate authentication with a crl_file.
func (r *Running) watchClusterCRL(ctx context.Context) (wait func()) {
	s := &crlSync{r: r, log: r.log.With("component", "cluster-crl")}
	stored := make(chan storedCRL)
	done, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		r.cl.node.WatchCRL(ctx, 0, func(pem []byte, rev int64) {
			select {
			case stored <- storedCRL{pem, rev}:
			case <-ctx.Done():
			}
		})
	}()
	go func() {
		defer close(done)
		tick := time.NewTicker(clusterCRLPoll)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case c := <-stored:
				s.fromCluster(ctx, c.pem, c.rev)
			case <-tick.C:
				s.fromFile(ctx)
			}
		}
	}()
	return func() { <-done; <-watched }
}

type storedCRL struct {
	pem []byte
	rev int64
}

// target returns the CRL file and client root CAs of the endpoint in force; ok is false
// (logged once) when it has none.
func (s *crlSync) target() (file string, cas []*x509.Certificate, ok bool) {
	ep := s.r.Endpoint()
	c := ep.Config.Authentication.Certificate
	if c == nil || c.CRLFile == "" {
		if !s.off {
			s.off = true
			s.log.Debug("the endpoint has no crl_file: the cluster's CRL is not used")
		}
		return "", nil, false
	}
	s.off = false
	return c.CRLFile, ep.ClientCACerts, true
}

// fromCluster writes a CRL stored in etcd to the file when it verifies and is newer.
func (s *crlSync) fromCluster(ctx context.Context, pem []byte, rev int64) {
	s.etcd, s.etcdRev, s.known = pem, rev, true
	file, cas, ok := s.target()
	if !ok {
		return
	}
	order, err := installCRL(file, cas, pem, s.r.opts.Now())
	switch {
	case err == nil:
		s.log.Info("CRL from the cluster written to the CRL file; the CRL watcher puts it in force", "revision", rev, "file", file)
	case errors.Is(err, ErrCRLNotNewer):
		if order == crlMixed && s.refused != rev {
			s.log.Error("the cluster's CRL and this node's are each newer for a different CA: neither replaces the other; revoke again on one host to settle it",
				"revision", rev, "file", file)
		}
		s.refused = rev
		// When the file's is newer, fromFile stores it in etcd.
	default:
		if s.refused != rev {
			s.log.Warn("the cluster's CRL refused; the CRL file stays as it is", "revision", rev, "file", file, "err", err)
		}
		s.refused = rev
	}
	s.fromFile(ctx)
}

// fromFile stores the CRL in force in etcd when it is newer than etcd's.
func (s *crlSync) fromFile(ctx context.Context) {
	cur := s.r.crl.Load()
	if cur == nil || cur == s.compared && s.etcdRev == s.comparedRev && s.known {
		return
	}
	if !s.known {
		pem, rev, _, err := s.r.cl.node.CRL(ctx)
		if err != nil {
			return // next round
		}
		s.etcd, s.etcdRev, s.known = pem, rev, true
	}
	_, cas, ok := s.target()
	mine, err := crlsByCA(cur.CRLs(), cas)
	if !ok || err != nil {
		// No CRL file; or the set in force is of CAs a reload replaced, and the watcher
		// reloads the file.
		s.compared, s.comparedRev = cur, s.etcdRev
		return
	}
	order := crlNewer
	if s.etcd != nil {
		if theirs, err := placeCRLs(s.etcd, cas); err == nil {
			order = compareCRLs(mine, theirs)
		}
	}
	if order == crlNewer {
		rev, put, err := s.r.cl.node.PutCRLIf(ctx, cur.PEM, s.etcdRev)
		switch {
		case err != nil:
			if !s.failing {
				s.failing = true
				s.log.Warn("cannot store the node's CRL in the cluster; trying again", "err", err)
			}
			return
		case put:
			s.log.Info("the node's CRL is newer than the cluster's: stored it for the other nodes", "revision", rev)
			s.etcd, s.etcdRev = cur.PEM, rev
		}
		s.failing = false
		// Not put: another was stored meanwhile; the watch brings it, and the next round
		// compares again.
	}
	s.compared, s.comparedRev = cur, s.etcdRev
}
