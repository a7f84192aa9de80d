package endpoint

import (
	"bytes"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/pki/pkitest"
)

// syncBuffer collects the log of the goroutines under test.
type syncBuffer struct{ testlog.Buffer }

// count returns how many log lines contain every one of parts.
func (s *syncBuffer) count(parts ...string) int {
	n := 0
	for _, line := range strings.Split(s.String(), "\n") {
		all := line != ""
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// t0 is where the watcher tests' clock starts.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// watchLab is a CRL watcher driven by hand: a directory laid out as cvpn init lays it out
// (pki/ca.crt, pki/crl.pem, and pki/ca.key unless the test is of a foreign CA), a clock the
// test moves, and a record of the sets put in force. The watcher polls only when the test calls
// poll.
type watchLab struct {
	t      *testing.T
	dir    string
	ca     *pki.Identity
	bundle []*x509.Certificate
	clock  time.Time
	logs   *syncBuffer
	put    []*pki.CRLSet
	w      *crlWatcher
}

// newWatchLab writes ca.crt (ca, then the other CAs), ca.key (unless withKey is false) and
// crl.pem holding crls, and starts a watcher at t0.
func newWatchLab(t *testing.T, ca *pki.Identity, others []*pki.Identity, withKey bool, crls ...*pki.CRL) *watchLab {
	t.Helper()
	l := &watchLab{t: t, dir: filepath.Join(t.TempDir(), "pki"), ca: ca, clock: t0, logs: &syncBuffer{}}
	if err := os.Mkdir(l.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bundle := append([]byte{}, ca.CertPEM...)
	l.bundle = []*x509.Certificate{ca.Cert}
	for _, o := range others {
		bundle = append(bundle, o.CertPEM...)
		l.bundle = append(l.bundle, o.Cert)
	}
	if err := os.WriteFile(filepath.Join(l.dir, "ca.crt"), bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	if withKey {
		if err := os.WriteFile(filepath.Join(l.dir, "ca.key"), ca.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	l.write(crls...)
	set, err := pki.LoadCRLSet(l.file(), l.bundle, l.clock)
	if err != nil {
		t.Fatal(err)
	}
	ep := &Endpoint{
		Config: &config.Endpoint{Authentication: config.Authentication{Certificate: &config.CertificateAuthentication{
			ClientRootCAFile: filepath.Join(l.dir, "ca.crt"), CRLFile: l.file(),
		}}},
		ClientCACerts: l.bundle,
		CRL:           set,
	}
	l.w = newCRLWatcher(ep, func(s *pki.CRLSet) { l.put = append(l.put, s) }, slog.New(slog.NewTextHandler(l.logs, nil)),
		func() time.Time { return l.clock })
	return l
}

func (l *watchLab) file() string { return filepath.Join(l.dir, "crl.pem") }

// write replaces the CRL file by rename, as cvpn client revoke does.
func (l *watchLab) write(crls ...*pki.CRL) {
	l.t.Helper()
	if err := pki.WriteCRLs(crls, l.file()); err != nil {
		l.t.Fatal(err)
	}
}

// at moves the clock to t0+d and polls once.
func (l *watchLab) at(d time.Duration) {
	l.clock = t0.Add(d)
	l.w.poll()
}

// inForce is the set in force: the last one put, or the one the watcher started with.
func (l *watchLab) inForce() *pki.CRLSet {
	if len(l.put) == 0 {
		return l.w.set
	}
	return l.put[len(l.put)-1]
}

func (l *watchLab) revocation() revocation {
	return revocation{l.inForce(), func() time.Time { return l.clock }}
}

func mustCRL(t *testing.T, ca *pki.Identity, validity time.Duration, at time.Time, revoke ...*x509.Certificate) *pki.CRL {
	t.Helper()
	crl, err := pki.NewCRL(ca, at, validity)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range revoke {
		if crl, err = pki.Revoke(ca, crl, c, at, validity); err != nil {
			t.Fatal(err)
		}
	}
	return crl
}

func mustClient(t *testing.T, ca *pki.Identity, name string) *pki.Identity {
	t.Helper()
	id, err := pki.IssueClient(ca, name, []string{"dev"}, pki.ECDSAP256, 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestCRLWatcherReloads: a new CRL file is put in force when it changes; a CRL of another CA is
// refused and logged, and the set in force stays.
func TestCRLWatcherReloads(t *testing.T) {
	ca, err := pki.NewCA("ca", pki.ECDSAP256, 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other", pki.ECDSAP256, 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	alice := mustClient(t, ca, "alice")
	l := newWatchLab(t, ca, nil, false, mustCRL(t, ca, 30*day, t0))
	l.at(time.Minute)
	if len(l.put) != 0 {
		t.Fatalf("an unchanged file was put in force %d times", len(l.put))
	}
	l.write(mustCRL(t, ca, 30*day, t0, alice.Cert))
	l.at(2 * time.Minute)
	if len(l.put) != 1 || !l.inForce().IsRevoked(alice.Cert) || l.logs.count(`msg="CRL reloaded"`, "revoked=1") != 1 {
		t.Fatalf("after revoking alice: %d sets put, alice revoked %v; log:\n%s", len(l.put), l.inForce().IsRevoked(alice.Cert), l.logs)
	}
	l.write(mustCRL(t, other, 30*day, t0))
	l.at(3 * time.Minute)
	if len(l.put) != 1 || l.logs.count(`msg="new CRL refused; the previous one stays in force"`, "not issued by") != 1 {
		t.Fatalf("another CA's CRL: %d sets put; log:\n%s", len(l.put), l.logs)
	}
	if err := l.revocation().CheckRevocation(alice.Cert); !errors.Is(err, pki.ErrRevoked) {
		t.Errorf("alice after the refused file: %v, want still revoked", err)
	}
	// A CRL from a signer whose clock runs an hour ahead is refused once, and put in force
	// when its thisUpdate comes.
	l.write(mustCRL(t, ca, 30*day, l.clock.Add(time.Hour)))
	l.at(4 * time.Minute)
	l.at(5 * time.Minute)
	if len(l.put) != 1 || l.logs.count(`msg="new CRL refused`, "CRL not valid until") != 1 {
		t.Fatalf("a CRL not valid yet: %d sets put; log:\n%s", len(l.put), l.logs)
	}
	l.at(time.Hour)
	if len(l.put) != 2 || l.inForce().IsRevoked(alice.Cert) {
		t.Fatalf("the CRL, valid now, was not put in force (%d sets put); log:\n%s", len(l.put), l.logs)
	}
}

// TestCRLWarningsAndExpiry: with no CA key to re-sign with, the log warns 30, 7 and 1 day before
// the CRL's next update, each once, then says once that it expired; from then on every
// handshake is refused, until a current CRL arrives. A CRL that comes into force with five
// days left is warned about once, for seven days.
func TestCRLWarningsAndExpiry(t *testing.T) {
	ca, err := pki.NewCA("ca", pki.ECDSAP256, 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	alice := mustClient(t, ca, "alice")
	l := newWatchLab(t, ca, nil, false, mustCRL(t, ca, 45*day, t0))
	if l.w.resign != nil {
		t.Fatal("the watcher re-signs without a CA key")
	}
	warnings := func() [3]int {
		return [3]int{l.logs.count("CRL expires within 30 days"), l.logs.count("CRL expires within 7 days"), l.logs.count("CRL expires within 1 day")}
	}
	steps := []struct {
		at   time.Duration
		want [3]int
	}{
		{0, [3]int{}},
		{15 * day, [3]int{}},
		{15*day + time.Hour, [3]int{1, 0, 0}}, // 29 days 23 hours left
		{20 * day, [3]int{1, 0, 0}},
		{38*day + time.Hour, [3]int{1, 1, 0}},
		{40 * day, [3]int{1, 1, 0}},
		{44*day + time.Minute, [3]int{1, 1, 1}},
		{45 * day, [3]int{1, 1, 1}},
	}
	for _, s := range steps {
		l.at(s.at)
		if got := warnings(); got != s.want {
			t.Fatalf("at t0+%v: warnings (30, 7, 1 day) logged %v times, want %v; log:\n%s", s.at, got, s.want, l.logs)
		}
		if l.logs.count("CRL expired") != 0 {
			t.Fatalf("at t0+%v, before the next update: the CRL is said to have expired", s.at)
		}
		if err := l.revocation().CheckRevocation(alice.Cert); err != nil {
			t.Fatalf("at t0+%v alice is refused: %v", s.at, err)
		}
	}
	if !strings.Contains(l.logs.String(), `issuer=ca`) || !strings.Contains(l.logs.String(), "cvpn client refresh-crl") {
		t.Errorf("the warnings do not name the CA and the fix:\n%s", l.logs)
	}

	for range 3 {
		l.at(45*day + time.Second)
	}
	if n := l.logs.count(`level=ERROR msg="CRL expired: every new TLS handshake`); n != 1 {
		t.Fatalf("the expiry is logged %d times, want once; log:\n%s", n, l.logs)
	}
	err = l.revocation().CheckRevocation(alice.Cert)
	if !errors.Is(err, pki.ErrCRLExpired) || !strings.Contains(err.Error(), `"ca"`) {
		t.Fatalf("alice past the next update: %v, want ErrCRLExpired naming the CA", err)
	}
	if l.revocation().IsRevoked(alice.Cert) {
		t.Error("an expired CRL lists alice: connected clients would be cut off at once")
	}

	// A current CRL ends the refusals; it comes into force with five days left.
	l.write(mustCRL(t, ca, 5*day, l.clock))
	l.at(45*day + time.Minute)
	if len(l.put) != 1 {
		t.Fatalf("the fresh CRL was not put in force; log:\n%s", l.logs)
	}
	if err := l.revocation().CheckRevocation(alice.Cert); err != nil {
		t.Errorf("alice with a fresh CRL: %v", err)
	}
	if got := warnings(); got != [3]int{1, 2, 1} {
		t.Errorf("a CRL with five days left: warnings %v, want one more for 7 days only; log:\n%s", got, l.logs)
	}
}

// TestCRLResigned: holding its CA key, the endpoint re-signs the CRL once a third of its
// validity is left, keeps its entries, writes it atomically and puts it in force; no warning is
// logged on the way. A second CA's CRL in the same file, whose key it does not hold, is left
// alone and warned about.
func TestCRLResigned(t *testing.T) {
	ca, err := pki.NewCA("ca", pki.ECDSAP256, 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other", pki.ECDSAP256, 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	bob := mustClient(t, ca, "bob")
	otherCRL := mustCRL(t, other, 30*day, t0)
	l := newWatchLab(t, ca, []*pki.Identity{other}, true, mustCRL(t, ca, 30*day, t0, bob.Cert), otherCRL)
	if l.w.resign == nil || l.logs.count("the endpoint holds its CA key") != 1 {
		t.Fatalf("the watcher does not re-sign with the CA key beside ca.crt; log:\n%s", l.logs)
	}
	for _, d := range []time.Duration{0, 10 * day, 19*day + 23*time.Hour} {
		l.at(d)
	}
	if len(l.put) != 0 || l.logs.count("CRL re-signed") != 0 {
		t.Fatalf("re-signed with more than a third of the validity left; log:\n%s", l.logs)
	}
	l.at(20*day + time.Minute) // a third (ten days) left
	if n := l.logs.count(`msg="CRL re-signed"`, "issuer=ca", "number=3"); n != 1 || len(l.put) != 1 {
		t.Fatalf("re-signed %d times, %d sets put; log:\n%s", n, len(l.put), l.logs)
	}
	crls, err := pki.LoadCRLs(l.file())
	if err != nil {
		t.Fatal(err)
	}
	if len(crls) != 2 || !bytes.Equal(crls[1].PEM, otherCRL.PEM) {
		t.Fatalf("the file holds %d CRLs; the other CA's must stay as it was", len(crls))
	}
	mine := crls[0]
	if !mine.IsRevoked(bob.Cert) || !mine.List.NextUpdate.Equal(l.clock.Add(30*day)) || mine.List.CheckSignatureFrom(ca.Cert) != nil {
		t.Errorf("the re-signed CRL: bob revoked %v, next update %v (want %v)", mine.IsRevoked(bob.Cert), mine.List.NextUpdate, l.clock.Add(30*day))
	}
	if got := l.inForce().Of(ca.Cert); got == nil || !bytes.Equal(got.PEM, mine.PEM) {
		t.Error("the re-signed CRL is not the one in force")
	}
	if n := l.logs.count("not re-signed by cvpn", "issuer=other"); n != 1 {
		t.Errorf("the other CA's CRL: %d lines saying cvpn cannot re-sign it; log:\n%s", n, l.logs)
	}
	if n := l.logs.count("CRL expires within 30 days", "issuer=other"); n != 1 {
		t.Errorf("the other CA's CRL with ten days left: warned %d times, want once; log:\n%s", n, l.logs)
	}
	if n := l.logs.count("CRL expires", "issuer=ca"); n != 0 {
		t.Errorf("the CRL cvpn re-signs was warned about %d times; log:\n%s", n, l.logs)
	}
	// Past the first CRL's next update, alice is fine: the re-signed one is in force.
	if err := l.revocation().CheckRevocation(mustClient(t, ca, "alice").Cert); err != nil {
		t.Errorf("after re-signing: %v", err)
	}
	l.at(31 * day)
	if err := l.revocation().CheckRevocation(mustClient(t, ca, "carol").Cert); err != nil {
		t.Errorf("past the first CRL's next update: %v", err)
	}
}

// TestCRLResignFails: when re-signing fails (here the CA key is not the CA's any more), the
// error is logged and retried an hour later, and the warnings the re-signing would have made
// needless are logged.
func TestCRLResignFails(t *testing.T) {
	ca, err := pki.NewCA("ca", pki.ECDSAP256, 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	l := newWatchLab(t, ca, nil, true, mustCRL(t, ca, 30*day, t0))
	stranger, err := pki.NewCA("stranger", pki.ECDSAP256, 365*day, t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.dir, "ca.key"), stranger.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	l.at(20*day + time.Minute)
	l.at(20*day + 30*time.Minute)
	if n := l.logs.count(`msg="re-signing the CRL failed; trying again in an hour"`); n != 1 {
		t.Fatalf("%d failures logged in the first hour, want one; log:\n%s", n, l.logs)
	}
	if n := l.logs.count("CRL expires within 30 days", "cvpn could not re-sign it"); n != 1 {
		t.Errorf("the warning after a failed re-signing: %d, want one saying so; log:\n%s", n, l.logs)
	}
	l.at(21*day + 2*time.Minute)
	if n := l.logs.count(`msg="re-signing the CRL failed`); n != 2 {
		t.Errorf("%d attempts after an hour, want a second one", n)
	}
	if err := os.WriteFile(filepath.Join(l.dir, "ca.key"), ca.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	l.at(22*day + 3*time.Minute)
	if l.logs.count(`msg="CRL re-signed"`) != 1 || len(l.put) != 1 {
		t.Errorf("with the key back, the next attempt does not re-sign; log:\n%s", l.logs)
	}
}

// TestCRLExpiryAtRuntime runs the endpoint: once its CRL is past its next update, new
// handshakes are refused with the reason, the connected client keeps its session (it has no
// renegotiation due), and a current CRL in the file admits new clients again.
func TestCRLExpiryAtRuntime(t *testing.T) {
	l := newLab(t)
	var offset atomic.Int64
	l.now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	crl := mustCRL(t, l.ca, 30*time.Second, time.Now())
	if err := pki.WriteCRL(crl, filepath.Join(l.dir, "crl.pem")); err != nil {
		t.Fatal(err)
	}
	l.start()
	a, _ := l.connect(clientOptions{cn: "a"})

	offset.Store(int64(35 * time.Second))
	waitLog(t, l.logs, "the watcher says the CRL expired", `msg="CRL expired: every new TLS handshake`)
	if _, _, err := l.dial(clientOptions{cn: "b", timeout: 3 * time.Second}); err == nil {
		t.Fatal("b connected past the CRL's next update")
	}
	waitLog(t, l.logs, "b's refusal names the expired CRL", `msg="authentication refused"`, `client certificate \"b\"`, "CRL expired on")
	alive(t, "the connected client", a)
	l.ping(a, 1)

	if err := pki.WriteCRL(mustCRL(t, l.ca, time.Hour, l.now()), filepath.Join(l.dir, "crl.pem")); err != nil {
		t.Fatal(err)
	}
	waitLog(t, l.logs, "the current CRL is reloaded", `msg="CRL reloaded"`)
	l.connect(clientOptions{cn: "c"})
	alive(t, "the connected client", a)
}

// TestCRLIntermediateAtRuntime runs the endpoint with a root and an intermediate CA as client
// root CAs and one CRL of each in the file: a client of the intermediate that its CRL revokes
// is refused, one it revokes later is cut off, and a CRL under the intermediate's name signed
// by another key is refused.
func TestCRLIntermediateAtRuntime(t *testing.T) {
	l := newLab(t)
	now := time.Now()
	root, err := pkitest.Root("root CA", 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := pkitest.Intermediate(root, "intermediate CA", 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name string) *pki.Identity {
		id, err := pki.IssueClient(inter, name, []string{"dev"}, pki.ECDSAP256, 24*time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	alice, bob, carol := issue("alice"), issue("bob"), issue("carol")
	l.writeFile("ca.crt", append(append([]byte{}, root.CertPEM...), inter.CertPEM...))
	rootCRL := mustCRL(t, root, 24*time.Hour, now)
	writeCRLs := func(crls ...*pki.CRL) {
		t.Helper()
		if err := pki.WriteCRLs(crls, filepath.Join(l.dir, "crl.pem")); err != nil {
			t.Fatal(err)
		}
	}
	writeCRLs(rootCRL, mustCRL(t, inter, 24*time.Hour, now, bob.Cert))
	l.start()

	a := connectAs(t, l, alice)
	if _, _, err := l.dial(clientOptions{id: bob, timeout: 3 * time.Second}); err == nil {
		t.Fatal("bob, revoked by the intermediate's CRL, connected")
	}
	waitLog(t, l.logs, "bob's refusal names the intermediate's CRL", `client certificate \"bob\"`, "is revoked", `CRL of \"intermediate CA\"`)

	writeCRLs(rootCRL, mustCRL(t, inter, 24*time.Hour, now, bob.Cert, alice.Cert))
	if err := ended(t, "alice, revoked by the intermediate's new CRL", a); !errors.Is(err, client.ErrAuthFailed) {
		t.Errorf("alice ended with %v, want AUTH_FAILED", err)
	}

	impostor, err := pkitest.Impostor(inter, 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	writeCRLs(rootCRL, mustCRL(t, impostor, 24*time.Hour, now))
	waitLog(t, l.logs, "the forged CRL is refused", `msg="new CRL refused; the previous one stays in force"`, "not issued by")
	if _, _, err := l.dial(clientOptions{id: alice, timeout: 3 * time.Second}); err == nil {
		t.Fatal("alice connected after a forged CRL that does not list her")
	}
	connectAs(t, l, carol)
}

// connectAs connects a client with identity id, or fails the test.
func connectAs(t *testing.T, l *lab, id *pki.Identity) *client.Session {
	t.Helper()
	s, _, err := l.dial(clientOptions{id: id})
	if err != nil {
		t.Fatalf("connect %s: %v", id.Cert.Subject.CommonName, err)
	}
	return s
}

// waitLog waits until a line of logs holds every one of parts.
func waitLog(t *testing.T, logs *syncBuffer, what string, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for logs.count(parts...) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
