package endpoint

import (
	"os"
	"testing"
	"time"

	"github.com/cvpn/cvpn/pki"
)

// TestCRLReloadedOncePerChange: a new CRL is put in force and logged once; touching the file,
// changing its mode or rewriting the same lists in place changes its stamp but not the lists,
// so nothing more is put in force or logged.
func TestCRLReloadedOncePerChange(t *testing.T) {
	ca, err := pki.NewCA("ca", pki.ECDSAP256, 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	alice := mustClient(t, ca, "alice")
	l := newWatchLab(t, ca, nil, false, mustCRL(t, ca, 30*day, t0))
	l.write(mustCRL(t, ca, 30*day, t0, alice.Cert))
	l.at(time.Minute)
	data, err := os.ReadFile(l.file())
	if err != nil {
		t.Fatal(err)
	}
	later := t0.Add(time.Hour)
	if err := os.Chtimes(l.file(), later, later); err != nil {
		t.Fatal(err)
	}
	l.at(2 * time.Minute)
	if err := os.Chmod(l.file(), 0o600); err != nil {
		t.Fatal(err)
	}
	l.at(3 * time.Minute)
	if err := os.WriteFile(l.file(), data, 0o600); err != nil {
		t.Fatal(err)
	}
	l.at(4 * time.Minute)
	if n := l.logs.count(`msg="CRL reloaded"`); len(l.put) != 1 || n != 1 {
		t.Fatalf("one change: %d sets put, %d \"CRL reloaded\" lines, want 1 and 1; log:\n%s", len(l.put), n, l.logs)
	}
	// A real change after them is still seen.
	l.write(mustCRL(t, ca, 30*day, t0))
	l.at(5 * time.Minute)
	if n := l.logs.count(`msg="CRL reloaded"`); len(l.put) != 2 || n != 2 || l.inForce().IsRevoked(alice.Cert) {
		t.Fatalf("second change: %d sets put, %d lines; log:\n%s", len(l.put), n, l.logs)
	}
}
