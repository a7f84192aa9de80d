package auth

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/cvpn/cvpn/auth/connecthandler"
	"github.com/cvpn/cvpn/auth/directory"
	"github.com/cvpn/cvpn/auth/mfa"
	"github.com/cvpn/cvpn/auth/token"
	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/state"
	"github.com/cvpn/cvpn/tunnel/session"
)

// fakeDirectory is a directory of users with passwords and groups, and a switch to make it
// unreachable.
type fakeDirectory struct {
	mu       sync.Mutex
	users    map[string]string // name -> password
	groups   map[string][]directory.Group
	disabled map[string]bool
	down     bool
	logins   int
	lookups  int
}

func newFakeDirectory() *fakeDirectory {
	return &fakeDirectory{users: map[string]string{}, groups: map[string][]directory.Group{}, disabled: map[string]bool{}}
}

func (d *fakeDirectory) Authenticate(_ context.Context, user, password string) (*directory.User, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.logins++
	switch pw, ok := d.users[user]; {
	case d.down:
		return nil, fmt.Errorf("%w: dial tcp: connection refused", directory.ErrUnavailable)
	case !ok || pw != password || password == "":
		return nil, directory.ErrInvalidCredentials
	case d.disabled[user]:
		return nil, directory.ErrDisabled
	}
	return &directory.User{DN: "uid=" + user + ",ou=people,dc=example,dc=com", Name: user, Groups: slices.Clone(d.groups[user])}, nil
}

func (d *fakeDirectory) Lookup(_ context.Context, user string) (*directory.User, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lookups++
	switch _, ok := d.users[user]; {
	case d.down:
		return nil, fmt.Errorf("%w: dial tcp: connection refused", directory.ErrUnavailable)
	case !ok:
		return nil, directory.ErrNoSuchUser
	case d.disabled[user]:
		return nil, directory.ErrDisabled
	}
	return &directory.User{DN: "uid=" + user + ",ou=people,dc=example,dc=com", Name: user, Groups: slices.Clone(d.groups[user])}, nil
}

func (d *fakeDirectory) set(f func(d *fakeDirectory)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d)
}

func group(cn string) directory.Group {
	return directory.Group{CN: cn, DN: "cn=" + cn + ",ou=groups,dc=example,dc=com", SID: "S-1-5-21-1-2-3-" + fmt.Sprint(len(cn))}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type fixture struct {
	p     *Pipeline
	dir   *fakeDirectory
	totp  *mfa.TOTP
	clock *clock
	cfg   Config
}

func newFixture(t *testing.T, withMFA bool, mutate ...func(*Config)) *fixture {
	t.Helper()
	f := &fixture{dir: newFakeDirectory(), clock: &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}}
	f.dir.users["alice"] = "s3cret"
	f.dir.groups["alice"] = []directory.Group{group("dev")}
	key := make([]byte, 32)
	ring, err := token.NewKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	f.cfg = Config{Directory: f.dir, Tokens: ring, TokenLifetime: 8 * time.Hour, EndpointID: "cvpn-endpoint-test"}
	if withMFA {
		sealer, err := state.LoadOrCreateSealer(t.TempDir() + "/seal.key")
		if err != nil {
			t.Fatal(err)
		}
		f.totp = &mfa.TOTP{Store: state.NewMemory(), Sealer: sealer, Issuer: "cvpn-test", Now: f.clock.Now}
		f.cfg.MFA = f.totp
	}
	for _, m := range mutate {
		m(&f.cfg)
	}
	f.p, err = New(f.cfg, testlog.New(t), f.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// enroll enrols user and returns a function giving the code at a time.
func (f *fixture) enroll(t *testing.T, user string) func(time.Time) string {
	t.Helper()
	uri, err := f.totp.Enroll(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	secret := u.Query().Get("secret")
	return func(at time.Time) string {
		code, err := totp.GenerateCode(secret, at)
		if err != nil {
			t.Fatal(err)
		}
		return code
	}
}

func req(user, password string) *session.AuthRequest {
	return &session.AuthRequest{Username: user, Password: password, HasUserPass: true,
		Remote: netip.MustParseAddrPort("198.51.100.7:51000"), ConnectionID: "cvpn-connection-0123456789abcdef0"}
}

func scrv1(password, response string) string {
	b := base64.StdEncoding.EncodeToString
	return "SCRV1:" + b([]byte(password)) + ":" + b([]byte(response))
}

// refusal returns err's refusal code, failing the test when err is not a refusal.
func refusal(t *testing.T, err error) (session.RefusalCode, string) {
	t.Helper()
	var r *session.Refusal
	if !errors.As(err, &r) {
		t.Fatalf("error %v is not a refusal", err)
	}
	return r.Code, r.Message
}

// pushed returns the auth-token and auth-token-user options of a user.
func pushed(t *testing.T, u *session.User) (tok, user string) {
	t.Helper()
	for _, o := range u.Push {
		if v, ok := strings.CutPrefix(o, "auth-token "); ok {
			tok = v
		}
		if v, ok := strings.CutPrefix(o, "auth-token-user "); ok {
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				t.Fatalf("auth-token-user %q: %v", v, err)
			}
			user = string(b)
		}
	}
	if tok == "" {
		t.Fatalf("no auth-token pushed: %q", u.Push)
	}
	return tok, user
}

func TestCertificateOnly(t *testing.T) {
	p, err := New(Config{Certificate: true}, testlog.New(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "laptop-1", OrganizationalUnit: []string{"dev", "ops"}}}
	u, err := p.Authenticate(context.Background(), &session.AuthRequest{Certificate: cert})
	if err != nil {
		t.Fatal(err)
	}
	if u.Name != "laptop-1" || !slices.Equal(u.Groups, []string{"dev", "ops"}) || u.Username != "" || len(u.Push) != 0 {
		t.Fatalf("user %+v", u)
	}
	_, err = p.Authenticate(context.Background(), &session.AuthRequest{})
	if code, _ := refusal(t, err); code != CodeNoCertificate {
		t.Fatalf("no certificate: code %q", code)
	}
}

func TestConfigRefusesIncoherentSetups(t *testing.T) {
	ring, _ := token.NewKeyring(make([]byte, 32))
	for name, cfg := range map[string]Config{
		"nothing":           {},
		"mfa alone":         {Certificate: true, MFA: &mfa.TOTP{}},
		"directory, tokens": {Directory: newFakeDirectory()},
		"challenge":         {Directory: newFakeDirectory(), Tokens: ring, Challenge: "sms"},
	} {
		if _, err := New(cfg, nil, nil); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}

func TestDirectoryLogin(t *testing.T) {
	f := newFixture(t, false, func(c *Config) {
		c.GroupIDs = []string{"CN=Dev,OU=Groups,DC=example,DC=com", "S-1-5-21-1-2-3-3", "ops"}
	})
	ctx := context.Background()
	u, err := f.p.Authenticate(ctx, req("alice", "s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	// dev by its cn, and under both rule spellings that name it (DN in other case, SID).
	want := []string{"dev", "CN=Dev,OU=Groups,DC=example,DC=com", "S-1-5-21-1-2-3-3"}
	if u.Name != "alice" || u.Username != "alice" || !slices.Equal(u.Groups, want) {
		t.Fatalf("user %+v, want groups %q", u, want)
	}
	if tok, who := pushed(t, u); who != "alice" || !strings.HasPrefix(tok, token.Prefix) {
		t.Fatalf("pushed token %q for %q", tok, who)
	}

	for _, c := range []struct {
		user, password string
		code           session.RefusalCode
	}{
		{"alice", "wrong", CodeInvalidCredentials},
		{"mallory", "s3cret", CodeInvalidCredentials},
		{"alice", "", CodeInvalidCredentials},
	} {
		_, err := f.p.Authenticate(ctx, req(c.user, c.password))
		code, msg := refusal(t, err)
		if code != c.code || msg != msgInvalidCredentials {
			t.Errorf("%s/%s: %q %q", c.user, c.password, code, msg)
		}
	}
	_, err = f.p.Authenticate(ctx, &session.AuthRequest{})
	if code, _ := refusal(t, err); code != CodeNoCredentials {
		t.Errorf("no credentials: %q", code)
	}
	_, err = f.p.Authenticate(ctx, req("alice", "SCRV1:!!!:???"))
	if code, _ := refusal(t, err); code != CodeBadCredentials {
		t.Errorf("malformed static response: %q", code)
	}

	f.dir.set(func(d *fakeDirectory) { d.down = true })
	_, err = f.p.Authenticate(ctx, req("alice", "s3cret"))
	if code, msg := refusal(t, err); code != CodeDirectoryUnavailable || !strings.Contains(msg, "cannot be reached") {
		t.Errorf("directory down: %q %q", code, msg)
	}
	f.dir.set(func(d *fakeDirectory) { d.down = false; d.disabled["alice"] = true })
	_, err = f.p.Authenticate(ctx, req("alice", "s3cret"))
	if code, _ := refusal(t, err); code != CodeDisabled {
		t.Errorf("disabled: %q", code)
	}
}

func TestCertificateAndDirectoryBothRequired(t *testing.T) {
	f := newFixture(t, false, func(c *Config) { c.Certificate = true })
	r := req("alice", "s3cret")
	_, err := f.p.Authenticate(context.Background(), r)
	if code, _ := refusal(t, err); code != CodeNoCertificate {
		t.Fatalf("directory login without a certificate: %q", code)
	}
	r.Certificate = &x509.Certificate{Subject: pkix.Name{CommonName: "alice-laptop"}}
	r.Password = "wrong"
	_, err = f.p.Authenticate(context.Background(), r)
	if code, _ := refusal(t, err); code != CodeInvalidCredentials {
		t.Fatalf("certificate with a wrong password: %q", code)
	}
	r.Password = "s3cret"
	u, err := f.p.Authenticate(context.Background(), r)
	if err != nil || u.Username != "alice" || !slices.Equal(u.Groups, []string{"dev"}) {
		t.Fatalf("both: %+v %v", u, err)
	}
}

// TestTokenReconnect: a reconnect within the token's life presents the pushed token and is
// admitted without the password, with the user's groups as they are now; an expired token,
// another user's token and a token of a removed user are refused.
func TestTokenReconnect(t *testing.T) {
	f := newFixture(t, false)
	ctx := context.Background()
	u, err := f.p.Authenticate(ctx, req("alice", "s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := pushed(t, u)
	logins := f.dir.logins
	f.dir.set(func(d *fakeDirectory) { d.groups["alice"] = []directory.Group{group("ops")} })
	f.clock.Add(2 * time.Hour)
	u2, err := f.p.Authenticate(ctx, req("alice", tok))
	if err != nil {
		t.Fatal(err)
	}
	if f.dir.logins != logins {
		t.Error("a token reconnect asked the directory for the password")
	}
	if !slices.Equal(u2.Groups, []string{"ops"}) {
		t.Errorf("groups after reconnect %q, want the current [ops]", u2.Groups)
	}
	_, err = f.p.Authenticate(ctx, req("bob", tok))
	if code, _ := refusal(t, err); code != CodeTokenInvalid {
		t.Errorf("alice's token for bob: %q", code)
	}
	f.clock.Add(6*time.Hour + time.Second)
	_, err = f.p.Authenticate(ctx, req("alice", tok))
	if code, _ := refusal(t, err); code != CodeTokenInvalid {
		t.Errorf("token past the session timeout: %q", code)
	}
	u3, _ := f.p.Authenticate(ctx, req("alice", "s3cret"))
	tok3, _ := pushed(t, u3)
	f.dir.set(func(d *fakeDirectory) { delete(d.users, "alice") })
	_, err = f.p.Authenticate(ctx, req("alice", tok3))
	if code, _ := refusal(t, err); code != CodeDisabled {
		t.Errorf("token of a removed user: %q", code)
	}
}

// TestStaticChallenge: the code travels with the password (SCRV1); each code is accepted once.
func TestStaticChallenge(t *testing.T) {
	f := newFixture(t, true)
	ctx := context.Background()
	_, err := f.p.Authenticate(ctx, req("alice", scrv1("s3cret", "123456")))
	if code, _ := refusal(t, err); code != CodeMFANotEnrolled {
		t.Fatalf("not enrolled: %q", code)
	}
	code := f.enroll(t, "alice")
	now := f.clock.Now()
	u, err := f.p.Authenticate(ctx, req("alice", scrv1("s3cret", code(now))))
	if err != nil {
		t.Fatal(err)
	}
	pushed(t, u)
	_, err = f.p.Authenticate(ctx, req("alice", scrv1("s3cret", code(now))))
	if c, _ := refusal(t, err); c != CodeMFAReplayed {
		t.Errorf("replayed code: %q", c)
	}
	f.clock.Add(30 * time.Second)
	wrong := code(f.clock.Now())
	wrong = fmt.Sprintf("%06d", (atoi(wrong)+1)%1000000)
	_, err = f.p.Authenticate(ctx, req("alice", scrv1("s3cret", wrong)))
	if c, _ := refusal(t, err); c != CodeMFAInvalid {
		t.Errorf("wrong code: %q", c)
	}
	_, err = f.p.Authenticate(ctx, req("alice", scrv1("bad", code(f.clock.Now()))))
	if c, _ := refusal(t, err); c != CodeInvalidCredentials {
		t.Errorf("right code, wrong password: %q", c)
	}
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// TestDynamicChallenge: a password alone gets a CRV1 challenge; its answer, with the state
// id, completes the login once; the state does not serve another user or a second answer.
func TestDynamicChallenge(t *testing.T) {
	for _, mode := range []string{ChallengeStatic, ChallengeDynamic} {
		t.Run(mode, func(t *testing.T) {
			f := newFixture(t, true, func(c *Config) { c.Challenge = mode; c.ChallengeText = "Code please" })
			code := f.enroll(t, "alice")
			ctx := context.Background()
			password := "s3cret"
			if mode == ChallengeDynamic {
				// A static response is not enough when challenges are dynamic.
				password = scrv1("s3cret", code(f.clock.Now()))
			}
			_, err := f.p.Authenticate(ctx, req("alice", password))
			c, msg := refusal(t, err)
			if c != CodeMFAChallenge {
				t.Fatalf("password alone: %q %q", c, msg)
			}
			parts := strings.SplitN(msg, ":", 5)
			if len(parts) != 5 || parts[0] != "CRV1" || parts[1] != "R,E" || parts[4] != "Code please" {
				t.Fatalf("challenge %q", msg)
			}
			if who, _ := base64.StdEncoding.DecodeString(parts[3]); string(who) != "alice" {
				t.Fatalf("challenge names user %q", who)
			}
			state := parts[2]
			answer := func(user, response string) error {
				_, err := f.p.Authenticate(ctx, req(user, "CRV1::"+state+"::"+response))
				return err
			}
			f.dir.users["bob"] = "pw"
			if c, _ := refusal(t, answer("bob", code(f.clock.Now()))); c != CodeChallengeUnknown {
				t.Errorf("alice's challenge answered as bob: %q", c)
			}
			f.clock.Add(30 * time.Second)
			if err := answer("alice", code(f.clock.Now())); err != nil {
				t.Fatalf("answer: %v", err)
			}
			if c, _ := refusal(t, answer("alice", code(f.clock.Now().Add(30*time.Second)))); c != CodeChallengeUnknown {
				t.Errorf("second answer to one challenge: %q", c)
			}
		})
	}
}

func TestChallengeExpires(t *testing.T) {
	f := newFixture(t, true)
	code := f.enroll(t, "alice")
	_, err := f.p.Authenticate(context.Background(), req("alice", "s3cret"))
	_, msg := refusal(t, err)
	state := strings.Split(msg, ":")[2]
	f.clock.Add(challengeTTL + time.Second)
	_, err = f.p.Authenticate(context.Background(), req("alice", "CRV1::"+state+"::"+code(f.clock.Now())))
	if c, _ := refusal(t, err); c != CodeChallengeUnknown {
		t.Fatalf("expired challenge: %q", c)
	}
	// Pending challenges per user are bounded.
	for i := range maxUserChallenge + 1 {
		_, err = f.p.Authenticate(context.Background(), req("alice", "s3cret"))
		c, m := refusal(t, err)
		if i < maxUserChallenge && (c != CodeMFAChallenge || !strings.HasPrefix(m, "CRV1:")) {
			t.Fatalf("challenge %d: %q %q", i, c, m)
		}
		if i == maxUserChallenge && strings.HasPrefix(m, "CRV1:") {
			t.Fatalf("challenge %d beyond the bound issued", i)
		}
	}
}

func info(u *session.User) *session.Info {
	return &session.Info{ConnectionID: "cvpn-connection-0123456789abcdef0", User: u.Name, Username: u.Username, Groups: u.Groups}
}

// TestReauthenticate: a renegotiation with the token renews it and reads the groups again; a
// disabled user is refused; an unreachable directory keeps the groups; a password alone does
// not do when a second factor is required.
func TestReauthenticate(t *testing.T) {
	f := newFixture(t, true)
	ctx := context.Background()
	code := f.enroll(t, "alice")
	u, err := f.p.Authenticate(ctx, req("alice", scrv1("s3cret", code(f.clock.Now()))))
	if err != nil {
		t.Fatal(err)
	}
	in := info(u)
	tok, _ := pushed(t, u)
	f.dir.set(func(d *fakeDirectory) { d.groups["alice"] = nil })
	r, err := f.p.Reauthenticate(ctx, in, req("alice", tok))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Groups) != 0 {
		t.Errorf("groups after removal from dev: %q", r.Groups)
	}
	renewed, _ := pushed(t, r)
	if _, err := f.p.Reauthenticate(ctx, in, req("alice", renewed)); err != nil {
		t.Errorf("renewed token refused: %v", err)
	}
	if _, err := f.p.Reauthenticate(ctx, in, req("alice", "s3cret")); err == nil {
		t.Error("renegotiation with a password alone accepted though MFA is on")
	}
	if _, err := f.p.Reauthenticate(ctx, in, req("bob", tok)); err == nil {
		t.Error("renegotiation as another user accepted")
	}
	f.dir.set(func(d *fakeDirectory) { d.down = true })
	r, err = f.p.Reauthenticate(ctx, in, req("alice", tok))
	if err != nil || !slices.Equal(r.Groups, in.Groups) {
		t.Errorf("directory down at renegotiation: %+v %v, want the old groups kept", r, err)
	}
	f.dir.set(func(d *fakeDirectory) { d.down = false; d.disabled["alice"] = true })
	_, err = f.p.Reauthenticate(ctx, in, req("alice", tok))
	if c, _ := refusal(t, err); c != CodeDisabled {
		t.Errorf("disabled at renegotiation: %q", c)
	}

	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "laptop"}}
	other := &x509.Certificate{Subject: pkix.Name{CommonName: "stolen"}}
	in.Certificate, in.CommonName = cert, "laptop"
	rr := req("alice", tok)
	rr.Certificate = other
	if _, err := f.p.Reauthenticate(ctx, in, rr); err == nil {
		t.Error("renegotiation with another certificate accepted")
	}
}

type fakeHandler struct {
	d   connecthandler.Decision
	err error
	got connecthandler.Request
}

func (h *fakeHandler) Call(_ context.Context, r connecthandler.Request) (connecthandler.Decision, error) {
	h.got = r
	return h.d, h.err
}

func TestClientConnectHandler(t *testing.T) {
	h := &fakeHandler{d: connecthandler.Decision{Allow: true, Posture: []string{"compliant"}}}
	f := newFixture(t, false, func(c *Config) { c.Handler = h })
	in := &session.Info{ConnectionID: "cvpn-connection-0123456789abcdef0", User: "alice", Username: "alice", CommonName: "laptop",
		Groups: []string{"dev"}, Platform: "linux", PlatformVersion: "6.1", Version: "2.6.14",
		Remote: netip.MustParseAddrPort("198.51.100.7:51000")}
	if err := f.p.OnConnect(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	want := connecthandler.Request{ConnectionID: in.ConnectionID, EndpointID: "cvpn-endpoint-test", CommonName: "laptop", Username: "alice",
		Platform: "linux", PlatformVersion: "6.1", PublicIP: "198.51.100.7", ClientOpenVPNVersion: "2.6.14", Groups: []string{"dev"}}
	if fmt.Sprint(h.got) != fmt.Sprint(want) {
		t.Errorf("handler asked %+v, want %+v", h.got, want)
	}
	if !slices.Equal(in.Posture, []string{"compliant"}) {
		t.Errorf("posture %q", in.Posture)
	}
	h.d = connecthandler.Decision{Message: "your laptop is not patched"}
	c, msg := refusal(t, f.p.OnConnect(context.Background(), in))
	if c != connecthandler.ReasonDenied || msg != "your laptop is not patched" {
		t.Errorf("deny: %q %q", c, msg)
	}
	h.err = &connecthandler.Failure{Reason: connecthandler.ReasonTimedOut, Err: errors.New("30s")}
	c, msg = refusal(t, f.p.OnConnect(context.Background(), in))
	if c != connecthandler.ReasonTimedOut || msg != connecthandler.DefaultFailureMessage {
		t.Errorf("timeout: %q %q", c, msg)
	}
}

// TestCodeGuessingBounded: after a few wrong codes a user's codes are refused unchecked, the
// right one too, until the lockout passes.
func TestCodeGuessingBounded(t *testing.T) {
	f := newFixture(t, true)
	code := f.enroll(t, "alice")
	ctx := context.Background()
	wrong := func() string { return fmt.Sprintf("%06d", (atoi(code(f.clock.Now()))+500000)%1000000) }
	for i := range maxCodeFailures {
		_, err := f.p.Authenticate(ctx, req("alice", scrv1("s3cret", wrong())))
		if c, _ := refusal(t, err); c != CodeMFAInvalid {
			t.Fatalf("guess %d: %q", i, c)
		}
	}
	_, err := f.p.Authenticate(ctx, req("alice", scrv1("s3cret", code(f.clock.Now()))))
	if c, _ := refusal(t, err); c != CodeMFALocked {
		t.Fatalf("right code after %d wrong ones: %q, want locked", maxCodeFailures, c)
	}
	f.clock.Add(codeLockout)
	if _, err := f.p.Authenticate(ctx, req("alice", scrv1("s3cret", code(f.clock.Now())))); err != nil {
		t.Fatalf("after the lockout: %v", err)
	}
}
