package directory

import (
	"context"
	"crypto/x509"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/slapdlab"
	"github.com/cvpn/cvpn/internal/testlog"
)

// These tests run against a real OpenLDAP (slapd with the memberof overlay) started by slapdlab.

func slapdConfig(t *testing.T, l *slapdlab.Lab, url string) Config {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(l.CAPEM) {
		t.Fatal("slapdlab CA PEM holds no certificate")
	}
	return Config{
		URLs:         []string{url},
		RootCAs:      roots,
		BindDN:       l.ServiceDN,
		BindPassword: l.ServicePassword,
		UserBaseDN:   l.PeopleDN,
		Timeout:      5 * time.Second,
		Log:          testlog.New(t),
	}
}

func TestSlapdLoginGroupsAndLookup(t *testing.T) {
	l := slapdlab.Start(t)
	l.AddUser("alice", "alice-pw")
	l.AddUser("bob", "bob-pw")
	l.AddGroup("eng", "alice")
	l.AddGroup("ops", "bob")
	d := newDir(t, slapdConfig(t, l, l.LDAPSURL))
	ctx := context.Background()

	u, err := d.Authenticate(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.EqualFold(u.DN, l.UserDN("alice")) || u.Name != "alice" {
		t.Errorf("user %q %q", u.DN, u.Name)
	}
	if len(u.Groups) != 1 || !u.Groups[0].Matches("eng") || !u.Groups[0].Matches(l.GroupDN("eng")) || u.Groups[0].Matches("ops") {
		t.Fatalf("alice's groups = %+v, want eng only", u.Groups)
	}
	if u, err := d.Authenticate(ctx, " ALICE", "alice-pw"); err != nil || u.Name != "alice" {
		t.Errorf("Authenticate(\" ALICE\") = %+v, %v; want the name alice as slapd spells it", u, err)
	}
	if _, err := d.Authenticate(ctx, "alice", "bob-pw"); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("wrong password: %v", err)
	}
	if _, err := d.Authenticate(ctx, "alice", ""); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("empty password: %v", err)
	}
	if _, err := d.Authenticate(ctx, "*", "alice-pw"); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("username *: %v", err)
	}
	if _, err := d.Authenticate(ctx, "nobody", "x"); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("unknown user: %v", err)
	}

	l.RemoveMember("eng", "alice")
	l.AddMember("ops", "alice")
	u, err = d.Lookup(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Groups) != 1 || !u.Groups[0].Matches("ops") {
		t.Errorf("after moving alice from eng to ops, Lookup groups = %+v", u.Groups)
	}

	l.LockUser("bob")
	if _, err := d.Lookup(ctx, "bob"); !errors.Is(err, ErrDisabled) {
		t.Errorf("locked bob: Lookup err = %v, want ErrDisabled", err)
	}
	if _, err := d.Authenticate(ctx, "bob", "bob-pw"); !errors.Is(err, ErrDisabled) && !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("locked bob: Authenticate err = %v, want refused", err)
	}
	l.UnlockUser("bob")
	if _, err := d.Authenticate(ctx, "bob", "bob-pw"); err != nil {
		t.Errorf("unlocked bob: %v", err)
	}

	l.DeleteUser("alice")
	if _, err := d.Lookup(ctx, "alice"); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("deleted alice: Lookup err = %v, want ErrNoSuchUser", err)
	}
}

func TestSlapdStartTLSAndGroupSearch(t *testing.T) {
	l := slapdlab.Start(t)
	l.AddUser("carol", "carol-pw")
	l.AddGroup("vpn", "carol")
	l.AddGroup("other")
	cfg := slapdConfig(t, l, l.URL)
	cfg.StartTLS = true
	cfg.GroupBaseDN = l.GroupsDN
	cfg.GroupFilter = "(&(objectClass=groupOfNames)(member={dn}))"
	d := newDir(t, cfg)
	u, err := d.Authenticate(context.Background(), "carol", "carol-pw")
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Groups) != 1 || u.Groups[0].CN != "vpn" {
		t.Errorf("groups = %+v, want vpn", u.Groups)
	}

	// A CA that did not sign the server's certificate: the handshake fails, nothing is sent.
	cfg.RootCAs = x509.NewCertPool()
	d = newDir(t, cfg)
	_, err = d.Authenticate(context.Background(), "carol", "carol-pw")
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("StartTLS to an untrusted server: err = %v, want ErrUnavailable naming the unknown authority", err)
	}
	cfg.StartTLS = false
	cfg.URLs = []string{l.LDAPSURL}
	d = newDir(t, cfg)
	_, err = d.Authenticate(context.Background(), "carol", "carol-pw")
	var unknownCA x509.UnknownAuthorityError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &unknownCA) {
		t.Errorf("ldaps to an untrusted server: err = %v, want ErrUnavailable wrapping an unknown-authority error", err)
	}
}

func TestSlapdRestartRecovery(t *testing.T) {
	l := slapdlab.Start(t)
	l.AddUser("alice", "alice-pw")
	l.AddGroup("eng", "alice")
	clk := &fakeClock{}
	clk.ns.Store(time.Now().UnixNano())
	cfg := slapdConfig(t, l, l.LDAPSURL)
	cfg.Now = clk.now
	cfg.Backoff = 5 * time.Second
	d := newDir(t, cfg)
	ctx := context.Background()
	if _, err := d.Authenticate(ctx, "alice", "alice-pw"); err != nil {
		t.Fatal(err)
	}
	l.Stop()
	if _, err := d.Authenticate(ctx, "alice", "alice-pw"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("slapd stopped: err = %v, want ErrUnavailable", err)
	}
	l.Restart()
	clk.advance(6 * time.Second)
	u, err := d.Authenticate(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatalf("slapd back: %v", err)
	}
	if len(u.Groups) != 1 || !u.Groups[0].Matches("eng") {
		t.Errorf("groups after the restart = %+v", u.Groups)
	}
	// The pooled connections from before the stop were dead; a restart without a failed login in
	// between must be invisible too.
	l.Restart()
	if _, err := d.Lookup(ctx, "alice"); err != nil {
		t.Fatalf("Lookup across a restart: %v", err)
	}
}

// TestSlapdNoGoroutineLeak: after Close, no connection goroutine of the pools is left.
func TestSlapdNoGoroutineLeak(t *testing.T) {
	l := slapdlab.Start(t)
	l.AddUser("alice", "alice-pw")
	before := runtime.NumGoroutine()
	cfg := slapdConfig(t, l, l.LDAPSURL)
	cfg.PoolSize = 3
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := d.Authenticate(context.Background(), "alice", "alice-pw"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := runtime.NumGoroutine(); n <= before {
		t.Fatalf("%d goroutines with pooled connections open, %d before: the check below proves nothing", n, before)
	}
	_ = d.Close()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
