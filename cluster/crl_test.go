package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/internal/etcdlab"
)

// crlSeen records what WatchCRL hands over.
type crlSeen struct {
	mu   sync.Mutex
	pems []string
	revs []int64
}

func (s *crlSeen) add(pem []byte, rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pems = append(s.pems, string(pem))
	s.revs = append(s.revs, rev)
}

// last returns the last CRL handed over and how many were.
func (s *crlSeen) last() (string, int64, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pems) == 0 {
		return "", 0, 0
	}
	return s.pems[len(s.pems)-1], s.revs[len(s.revs)-1], len(s.pems)
}

// watchCRL runs n.WatchCRL after revision after until the test ends.
func watchCRL(t *testing.T, n *Node, after int64) *crlSeen {
	seen := &crlSeen{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.WatchCRL(ctx, after, seen.add)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return seen
}

func TestCRLPutReadWatch(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	ctx := context.Background()

	if _, _, ok, err := CRL(ctx, cli, ""); ok || err != nil {
		t.Fatalf("CRL of an empty cluster: ok %v, err %v; want none", ok, err)
	}
	rev1, err := PutCRL(ctx, cli, "", []byte("crl one"))
	if err != nil {
		t.Fatal(err)
	}
	pem, rev, ok, err := CRL(ctx, cli, "")
	if err != nil || !ok || string(pem) != "crl one" || rev != rev1 {
		t.Fatalf("CRL = %q, %d, %v, %v; want %q at %d", pem, rev, ok, err, "crl one", rev1)
	}

	// A node that starts is handed the stored CRL first, then each new one.
	n := joinNode(t, lab, "a")
	seen := watchCRL(t, n, 0)
	eventually(t, "the watch hands over the stored CRL", func() bool {
		p, r, _ := seen.last()
		return p == "crl one" && r == rev1
	})
	rev2, err := PutCRL(ctx, cli, "", []byte("crl two"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the watch hands over the new CRL", func() bool {
		p, r, _ := seen.last()
		return p == "crl two" && r == rev2
	})
	if _, _, count := seen.last(); count != 2 {
		t.Errorf("the watch handed over %d CRLs; want 2", count)
	}

	// A watch that starts after a revision is not handed what it already has.
	later := watchCRL(t, n, rev2)
	rev3, err := PutCRL(ctx, cli, "", []byte("crl three"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the later watch hands over the third CRL", func() bool {
		p, r, _ := later.last()
		return p == "crl three" && r == rev3
	})
	if _, _, count := later.last(); count != 1 {
		t.Errorf("a watch after revision %d handed over %d CRLs; want only the third", rev2, count)
	}

	// Another prefix is another cluster.
	if _, _, ok, _ := CRL(ctx, cli, "/other"); ok {
		t.Error("a CRL stored under the default prefix is read under /other")
	}
}

func TestCRLPutIf(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	ctx := context.Background()

	rev1, ok, err := PutCRLIf(ctx, cli, "", []byte("first"), 0)
	if err != nil || !ok {
		t.Fatalf("PutCRLIf on an empty cluster: %v, %v", ok, err)
	}
	if _, ok, err := PutCRLIf(ctx, cli, "", []byte("stale"), 0); ok || err != nil {
		t.Fatalf("PutCRLIf expecting none over a stored CRL: ok %v, err %v; want refused", ok, err)
	}
	rev2, ok, err := PutCRLIf(ctx, cli, "", []byte("second"), rev1)
	if err != nil || !ok || rev2 <= rev1 {
		t.Fatalf("PutCRLIf over revision %d: %d, %v, %v", rev1, rev2, ok, err)
	}
	if _, ok, _ := PutCRLIf(ctx, cli, "", []byte("lost race"), rev1); ok {
		t.Fatal("PutCRLIf over an old revision stored its CRL")
	}
	if pem, _, _, _ := CRL(ctx, cli, ""); string(pem) != "second" {
		t.Errorf("stored CRL %q; want %q", pem, "second")
	}
}

func TestCRLSizeBound(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	cli := lab.Client(t)
	ctx := context.Background()

	big := bytes.Repeat([]byte("x"), MaxCRLLen+1)
	if _, err := PutCRL(ctx, cli, "", big); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("PutCRL of %d bytes: %v; want the limit", len(big), err)
	}
	if _, _, err := PutCRLIf(ctx, cli, "", big, 0); err == nil {
		t.Errorf("PutCRLIf of %d bytes stored it", len(big))
	}
	if _, _, ok, _ := CRL(ctx, cli, ""); ok {
		t.Fatal("an oversized CRL was stored")
	}
	if _, err := PutCRL(ctx, cli, "", big[:MaxCRLLen]); err != nil {
		t.Fatalf("PutCRL of exactly %d bytes: %v", MaxCRLLen, err)
	}

	// One written around PutCRL is refused by the readers, and the watch skips it.
	n := joinNode(t, lab, "a")
	seen := watchCRL(t, n, 0)
	eventually(t, "the watch hands over the CRL at the limit", func() bool { _, _, c := seen.last(); return c == 1 })
	if _, err := cli.Put(ctx, n.keys.crl(), string(big)); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, err := CRL(ctx, cli, ""); ok || err == nil {
		t.Errorf("CRL of an oversized stored value: ok %v, err %v; want an error", ok, err)
	}
	rev, err := PutCRL(ctx, cli, "", []byte("small again"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the watch hands over the CRL after the oversized one", func() bool {
		_, r, _ := seen.last()
		return r == rev
	})
	if _, _, count := seen.last(); count != 2 {
		t.Errorf("the watch handed over %d CRLs; want 2 (the oversized one skipped)", count)
	}
}

// TestCRLWatchSurvivesRestart: a watch broken by etcd going away is started again, and hands
// over what was stored meanwhile (here: after a restart, and after a compaction).
func TestCRLWatchSurvivesRestart(t *testing.T) {
	t.Parallel()
	lab := etcdlab.Start(t, etcdlab.Options{Members: 1})
	n := joinNode(t, lab, "a")
	seen := watchCRL(t, n, 0)
	ctx := context.Background()
	cli := lab.Client(t)
	if _, err := PutCRL(ctx, cli, "", []byte("before")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the watch hands over the first CRL", func() bool { p, _, _ := seen.last(); return p == "before" })

	lab.Member(0).Stop()
	lab.Member(0).Start()
	if err := lab.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	var last int64
	for i := range 5 {
		rev, err := putRetrying(ctx, cli, fmt.Sprintf("after %d", i))
		if err != nil {
			t.Fatal(err)
		}
		last = rev
	}
	if _, err := cli.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the watch hands over the newest CRL after the restart", func() bool {
		p, r, _ := seen.last()
		return p == "after 4" && r == last
	})
}

// putRetrying stores a CRL, retrying while etcd comes back.
func putRetrying(ctx context.Context, cli *clientv3.Client, pem string) (int64, error) {
	var err error
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		var rev int64
		if rev, err = PutCRL(ctx, cli, "", []byte(pem)); err == nil {
			return rev, nil
		}
	}
	return 0, errors.Join(errors.New("etcd did not come back"), err)
}
