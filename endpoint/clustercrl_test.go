package endpoint

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/cluster"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/internal/etcdlab"
	"github.com/cvpn/cvpn/pki"
)

// crlChain is one CA's CRLs, each the next of the one before: crls[0] is empty, crls[1]
// revokes one client, crls[2] is crls[1] re-signed.
type crlChain struct {
	ca   *pki.Identity
	crls []*pki.CRL
}

func newCRLChain(t *testing.T, name string, now time.Time) *crlChain {
	t.Helper()
	ca, err := pki.NewCA(name, pki.ECDSAP256, 365*day, now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	client, err := pki.IssueClient(ca, "alice", nil, pki.ECDSAP256, 30*day, now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	c0, err := pki.NewCRL(ca, now.Add(-time.Hour), 30*day)
	if err != nil {
		t.Fatal(err)
	}
	c1, err := pki.Revoke(ca, c0, client.Cert, now.Add(-30*time.Minute), 30*day)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := pki.RefreshCRL(ca, c1, now, 30*day)
	if err != nil {
		t.Fatal(err)
	}
	return &crlChain{ca: ca, crls: []*pki.CRL{c0, c1, c2}}
}

// fileID is what tells a rewritten file from one left alone: its content, inode and times.
func fileID(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return string(data) + fi.ModTime().String() + string(rune(st.Ino)) + fi.Mode().String()
}

func TestCompareCRLs(t *testing.T) {
	now := time.Now()
	a, b := newCRLChain(t, "a", now), newCRLChain(t, "b", now)
	cas := []*x509.Certificate{a.ca.Cert, b.ca.Cert}
	place := func(crls ...*pki.CRL) []*pki.CRL {
		t.Helper()
		p, err := crlsByCA(crls, cas)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		x, y []*pki.CRL
		want crlOrder
	}{
		{"same", place(a.crls[1]), place(a.crls[1]), crlSame},
		{"higher number", place(a.crls[1]), place(a.crls[0]), crlNewer},
		{"lower number", place(a.crls[0]), place(a.crls[1]), crlOlder},
		{"re-signed", place(a.crls[2], b.crls[0]), place(a.crls[1], b.crls[0]), crlNewer},
		{"covers one more CA", place(a.crls[0], b.crls[0]), place(a.crls[0]), crlNewer},
		{"drops a CA", place(a.crls[0]), place(b.crls[0], a.crls[0]), crlOlder},
		{"each newer for one CA", place(a.crls[1], b.crls[0]), place(a.crls[0], b.crls[1]), crlMixed},
	} {
		if got := compareCRLs(tc.x, tc.y); got != tc.want {
			t.Errorf("%s: %v; want %v", tc.name, got, tc.want)
		}
	}
	// The order is strict: two lists with one number and one date still have a winner.
	x, y := *a.crls[1].List, *a.crls[1].List
	x.Signature, y.Signature = []byte{1}, []byte{2}
	if compareCRL(&pki.CRL{List: &x}, &pki.CRL{List: &y}) >= 0 || compareCRL(&pki.CRL{List: &y}, &pki.CRL{List: &x}) <= 0 {
		t.Error("two CRLs with the same number and date are not ordered by their signatures")
	}
	if _, err := crlsByCA([]*pki.CRL{a.crls[0]}, []*x509.Certificate{b.ca.Cert}); !errors.Is(err, pki.ErrNotIssuedBy) {
		t.Errorf("placing a CRL of another CA: %v; want ErrNotIssuedBy", err)
	}
	if _, err := crlsByCA([]*pki.CRL{a.crls[0], a.crls[1]}, cas); err == nil {
		t.Error("two CRLs of one CA were placed")
	}
}

func TestInstallCRL(t *testing.T) {
	now := time.Now()
	a := newCRLChain(t, "a", now)
	cas := []*x509.Certificate{a.ca.Cert}
	file := filepath.Join(t.TempDir(), "crl.pem")
	if err := pki.WriteCRL(a.crls[1], file); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o640); err != nil {
		t.Fatal(err)
	}
	before := fileID(t, file)

	// Older, the same, of another CA, expired, not a CRL: the file is left alone.
	stranger := newCRLChain(t, "a", now) // same name, another key
	expired, err := pki.RefreshCRL(a.ca, a.crls[2], now.Add(-48*time.Hour), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		pem      []byte
		notNewer bool
	}{
		{"older", a.crls[0].PEM, true},
		{"the same", a.crls[1].PEM, true},
		{"of another CA", stranger.crls[2].PEM, false},
		{"expired", expired.PEM, false},
		{"not a CRL", []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"), false},
	} {
		err := InstallCRL(file, cas, tc.pem, now)
		if err == nil || errors.Is(err, ErrCRLNotNewer) != tc.notNewer {
			t.Errorf("install %s: %v; want it refused (not newer: %v)", tc.name, err, tc.notNewer)
		}
		if fileID(t, file) != before {
			t.Fatalf("install %s changed the file", tc.name)
		}
	}

	// Newer: written, with the file's mode; the watcher loads it.
	if err := InstallCRL(file, cas, a.crls[2].PEM, now); err != nil {
		t.Fatalf("install a newer CRL: %v", err)
	}
	set, err := pki.LoadCRLSet(file, cas, now)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(set.PEM, a.crls[2].PEM) {
		t.Error("the file does not hold the newer CRL")
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o640 {
		t.Errorf("the file's mode is %v; want 0640 kept", fi.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".crl.pem.tmp-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// A missing file, or one that does not verify, is replaced by any CRL that does.
	missing := filepath.Join(t.TempDir(), "crl.pem")
	if err := InstallCRL(missing, cas, a.crls[0].PEM, now); err != nil {
		t.Errorf("install into a missing file: %v", err)
	}
	if err := pki.WriteCRL(stranger.crls[2], file); err != nil {
		t.Fatal(err)
	}
	if err := InstallCRL(file, cas, a.crls[0].PEM, now); err != nil {
		t.Errorf("install over a CRL of another CA: %v", err)
	}
}

// crlNodeLab is a Running with just what watchClusterCRL reads (the endpoint in force, the CRL
// in force, the node), on a real etcd.
type crlNodeLab struct {
	t    *testing.T
	r    *Running
	file string
	cli  *clientv3.Client
	logs *syncBuffer
}

func newCRLNodeLab(t *testing.T, lab *etcdlab.Cluster, ca *pki.Identity, first *pki.CRL) *crlNodeLab {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "crl.pem")
	if err := pki.WriteCRL(first, file); err != nil {
		t.Fatal(err)
	}
	cas := []*x509.Certificate{ca.Cert}
	set, err := pki.LoadCRLSet(file, cas, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	node, err := cluster.Join(ctx, cluster.Config{Endpoints: lab.Endpoints(), Node: "n1", TTL: 5 * time.Second, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Close() })
	node.Start()
	ep := &Endpoint{
		Config: &config.Endpoint{Authentication: config.Authentication{Certificate: &config.CertificateAuthentication{
			CRLFile: file,
		}}},
		ClientCACerts: cas,
		CRL:           set,
	}
	r := &Running{log: log, opts: Options{Now: time.Now}, cur: ep, cl: &clusterRun{node: node}}
	r.crl.Store(set)
	wctx, stop := context.WithCancel(context.Background())
	wait := r.watchClusterCRL(wctx)
	t.Cleanup(func() { stop(); wait() })
	return &crlNodeLab{t: t, r: r, file: file, cli: lab.Client(t), logs: logs}
}

// stored returns the cluster's CRL and its revision.
func (l *crlNodeLab) stored() ([]byte, int64) {
	l.t.Helper()
	pem, rev, _, err := cluster.CRL(context.Background(), l.cli, "")
	if err != nil {
		l.t.Fatal(err)
	}
	return pem, rev
}

// eventually waits until cond holds.
func (l *crlNodeLab) eventually(what string, cond func() bool) {
	l.t.Helper()
	for end := time.Now().Add(30 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			l.t.Fatalf("never: %s\nlog:\n%s", what, l.logs.String())
		}
	}
}

func (l *crlNodeLab) fileHolds(c *pki.CRL) bool {
	data, err := os.ReadFile(l.file)
	return err == nil && bytes.Equal(data, c.PEM)
}

func TestClusterCRLBothWays(t *testing.T) {
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	a := newCRLChain(t, "a", time.Now())
	l := newCRLNodeLab(t, lab, a.ca, a.crls[0])
	ctx := context.Background()

	// The node's CRL, newer than none, goes to etcd at start.
	l.eventually("the node stores its CRL in the empty cluster", func() bool {
		pem, _ := l.stored()
		return bytes.Equal(pem, a.crls[0].PEM)
	})

	// A newer CRL in etcd (a revocation on another host) is written to the file.
	rev1, err := cluster.PutCRL(ctx, l.cli, "", a.crls[1].PEM)
	if err != nil {
		t.Fatal(err)
	}
	l.eventually("the newer CRL from etcd is written to the file", func() bool { return l.fileHolds(a.crls[1]) })
	// The watcher puts it in force (here, by hand); the node does not store it again.
	l.r.crl.Store(mustSet(t, a.crls[1], a.ca))
	before := fileID(t, l.file)

	// An older CRL in etcd is refused: the file stays, and the node stores its own again.
	if _, err := cluster.PutCRL(ctx, l.cli, "", a.crls[0].PEM); err != nil {
		t.Fatal(err)
	}
	l.eventually("the node answers an older CRL with its own", func() bool {
		pem, rev := l.stored()
		return bytes.Equal(pem, a.crls[1].PEM) && rev > rev1
	})
	if fileID(t, l.file) != before {
		t.Error("an older CRL from etcd changed the file")
	}

	// One that does not verify (another CA of the same name) is refused and logged, and
	// answered the same way.
	stranger := newCRLChain(t, "a", time.Now())
	_, srev := l.stored()
	if _, err := cluster.PutCRL(ctx, l.cli, "", stranger.crls[2].PEM); err != nil {
		t.Fatal(err)
	}
	l.eventually("the node answers an unverifiable CRL with its own", func() bool {
		pem, rev := l.stored()
		return bytes.Equal(pem, a.crls[1].PEM) && rev > srev+1
	})
	if l.logs.count("the cluster's CRL refused") != 1 {
		t.Errorf("the unverifiable CRL was not logged once:\n%s", l.logs.String())
	}
	if fileID(t, l.file) != before {
		t.Error("an unverifiable CRL from etcd changed the file")
	}

	// A newer CRL loaded from the node's own file (cvpn client revoke on its host, or the
	// watcher's re-signing) goes to etcd.
	if err := pki.WriteCRL(a.crls[2], l.file); err != nil {
		t.Fatal(err)
	}
	l.r.crl.Store(mustSet(t, a.crls[2], a.ca))
	l.eventually("the node stores its newer CRL", func() bool {
		pem, _ := l.stored()
		return bytes.Equal(pem, a.crls[2].PEM)
	})
	if l.logs.count("CRL from the cluster written") != 1 {
		t.Errorf("the file was written %d times; want once (for the newer CRL from etcd):\n%s",
			l.logs.count("CRL from the cluster written"), l.logs.String())
	}
}

func mustSet(t *testing.T, c *pki.CRL, ca *pki.Identity) *pki.CRLSet {
	t.Helper()
	s, err := pki.NewCRLSet([]*pki.CRL{c}, []*x509.Certificate{ca.Cert}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestClusterCRLWithoutCRLFile(t *testing.T) {
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	a := newCRLChain(t, "a", time.Now())
	l := newCRLNodeLab(t, lab, a.ca, a.crls[0])
	l.eventually("the node stores its CRL", func() bool { pem, _ := l.stored(); return pem != nil })
	// The endpoint in force loses its CRL file (a reload): the node does nothing more.
	l.r.mu.Lock()
	ep := *l.r.cur
	cfg := *ep.Config
	cfg.Authentication = config.Authentication{}
	ep.Config = &cfg
	l.r.cur = &ep
	l.r.mu.Unlock()
	before := fileID(t, l.file)
	if _, err := cluster.PutCRL(context.Background(), l.cli, "", a.crls[2].PEM); err != nil {
		t.Fatal(err)
	}
	l.eventually("the node says once that it has no CRL file", func() bool {
		return l.logs.count("the endpoint has no crl_file") == 1
	})
	if fileID(t, l.file) != before {
		t.Error("a node without a crl_file wrote the old file")
	}
}
