package endpoint

import (
	"bytes"
	"crypto/x509"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tunnel"
)

// revocations records what WatchCRL hands over, as *tunnel.Server would take it.
type revocations struct {
	mu   sync.Mutex
	got  []tunnel.Revoker
	more chan struct{}
}

func (r *revocations) SetRevoker(rv tunnel.Revoker) {
	r.mu.Lock()
	r.got = append(r.got, rv)
	r.mu.Unlock()
	r.more <- struct{}{}
}

func (r *revocations) last() tunnel.Revoker {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[len(r.got)-1]
}

// syncBuffer is a bytes.Buffer safe for the watcher's logger and the test together.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestWatchCRL(t *testing.T) {
	now := time.Now()
	const day = 24 * time.Hour
	ca, err := pki.NewCA("ca", pki.ECDSAP256, 365*day, now)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other", pki.ECDSAP256, 365*day, now)
	if err != nil {
		t.Fatal(err)
	}
	alice, err := pki.IssueClient(ca, "alice", nil, pki.ECDSAP256, 30*day, now)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "crl.pem")
	empty, err := pki.NewCRL(ca, now, 30*day)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCRL(empty, file); err != nil {
		t.Fatal(err)
	}

	target := &revocations{more: make(chan struct{}, 64)}
	var logs syncBuffer
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		watchCRL(file, []*x509.Certificate{ca.Cert}, target, slog.New(slog.NewTextHandler(&logs, nil)), stop,
			5*time.Millisecond, func() time.Time { return now })
		close(done)
	}()
	// write replaces the file by rename, as cvpn client revoke does, until the last list handed
	// over satisfies ok: the first write may come before the watcher has stamped the file it
	// started with.
	write := func(what string, crl *pki.CRL, ok func(tunnel.Revoker) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if err := pki.WriteCRL(crl, file); err != nil {
				t.Fatal(err)
			}
			select {
			case <-target.more:
				if ok(target.last()) {
					return
				}
			case <-time.After(100 * time.Millisecond):
			}
		}
		t.Fatalf("%s: the watcher handed no such list over; log:\n%s", what, logs.String())
	}

	revoked, err := pki.Revoke(ca, empty, alice.Cert, now, 30*day)
	if err != nil {
		t.Fatal(err)
	}
	write("revoking alice", revoked, func(r tunnel.Revoker) bool { return r.IsRevoked(alice.Cert) })

	// A CRL of another CA is refused and logged; the next good one still gets through.
	foreign, err := pki.NewCRL(other, now, 30*day)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCRL(foreign, file); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "new CRL refused") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "new CRL refused") {
		t.Fatalf("a foreign CRL was not refused; log:\n%s", logs.String())
	}
	write("restoring the empty CRL", empty, func(r tunnel.Revoker) bool { return !r.IsRevoked(alice.Cert) })
	target.mu.Lock()
	for _, r := range target.got {
		crl, ok := r.(*pki.CRL)
		if !ok {
			t.Fatalf("handed over a %T, want a *pki.CRL", r)
		}
		if cn := crl.List.Issuer.CommonName; cn != "ca" {
			t.Errorf("handed over a CRL issued by %q, want only the CA's", cn)
		}
	}
	target.mu.Unlock()

	close(stop)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher did not return after stop")
	}
}
