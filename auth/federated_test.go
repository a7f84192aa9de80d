package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/auth/sso"
	"github.com/cvpn/cvpn/auth/token"
	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/state"
	"github.com/cvpn/cvpn/tls/keymethod"
	"github.com/cvpn/cvpn/tunnel/session"
)

type ssoFixture struct {
	p      *Pipeline
	broker *sso.Broker
	clock  *clock
}

func newSSOFixture(t *testing.T) *ssoFixture {
	t.Helper()
	f := &ssoFixture{clock: &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}}
	f.broker = sso.New(sso.Options{Now: f.clock.Now})
	ring, err := token.NewKeyring(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	f.p, err = New(Config{Tokens: ring, TokenLifetime: 8 * time.Hour, Federation: &Federation{
		Broker: f.broker, LoginURL: func(code string) string { return "https://vpn.example.com/d/" + code }, Identities: state.NewMemory(),
	}}, testlog.New(t), f.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// notice parses a CRV1 notice: its state and text.
func notice(t *testing.T, err error) (state, text string) {
	t.Helper()
	code, msg := refusal(t, err)
	parts := strings.SplitN(msg, ":", 5)
	if code != CodeSSOLogin || len(parts) != 5 || parts[0] != "CRV1" || parts[1] != "E" {
		t.Fatalf("not a login notice: %q %q", code, msg)
	}
	return parts[2], parts[4]
}

// TestSSOStockClient: the stock client's first attempt gets a CRV1 notice with the link; Enter
// before the browser login sends it again; after it the client is admitted with the provider's
// groups and an auth-token that serves reconnects and renegotiations; the state is single use.
func TestSSOStockClient(t *testing.T) {
	f := newSSOFixture(t)
	ctx := context.Background()
	_, err := f.p.Authenticate(ctx, req("alice", "whatever"))
	state, text := notice(t, err)
	if !strings.HasPrefix(text, "Open https://vpn.example.com/d/") || !strings.HasSuffix(text, "in a browser, sign in, then press Enter") {
		t.Fatalf("notice text %q", text)
	}
	code := strings.Fields(strings.TrimPrefix(text, "Open https://vpn.example.com/d/"))[0]
	answer := req("alice", "CRV1::"+state+"::")

	again, againText := notice(t, func() error { _, err := f.p.Authenticate(ctx, answer); return err }())
	if again != state || againText != text {
		t.Errorf("the notice sent again is %q %q, want %q %q", again, againText, state, text)
	}
	login, err := f.broker.Lookup(context.Background(), code)
	if err != nil || login.Attempt.Hint != "alice" || login.Attempt.ConnectionID == "" {
		t.Fatalf("the portal's view of the login: %+v %v", login, err)
	}
	if err := f.broker.Complete(context.Background(), code, sso.Identity{Username: "alice@example.com", Groups: []string{"dev", "ops"}}); err != nil {
		t.Fatal(err)
	}
	u, err := f.p.Authenticate(ctx, answer)
	if err != nil {
		t.Fatal(err)
	}
	if u.Name != "alice@example.com" || u.Username != "alice@example.com" || strings.Join(u.Groups, ",") != "dev,ops" {
		t.Fatalf("user %+v", u)
	}
	tok, who := pushed(t, u)
	if who != "alice@example.com" {
		t.Errorf("auth-token-user %q", who)
	}
	_, err = f.p.Authenticate(ctx, answer)
	if c, _ := refusal(t, err); c != CodeSSOExpired {
		t.Errorf("the state used twice: %q", c)
	}

	// A reconnect with the token: no browser, the same groups.
	u2, err := f.p.Authenticate(ctx, req("alice@example.com", tok))
	if err != nil || strings.Join(u2.Groups, ",") != "dev,ops" {
		t.Fatalf("token reconnect: %+v %v", u2, err)
	}
	in := &session.Info{User: u.Name, Username: u.Username, Groups: u.Groups}
	if _, err := f.p.Reauthenticate(ctx, in, req("alice@example.com", tok)); err != nil {
		t.Errorf("renegotiation with the token: %v", err)
	}
	if _, err := f.p.Reauthenticate(ctx, in, req("alice@example.com", "a password")); err == nil {
		t.Error("renegotiation with a password accepted")
	}
	if _, err := f.p.Authenticate(ctx, req("bob@example.com", tok)); err == nil {
		t.Error("alice's token accepted for bob")
	}
	f.clock.Add(8*time.Hour + time.Second)
	if _, err := f.p.Authenticate(ctx, req("alice@example.com", tok)); err == nil {
		t.Error("a token past the session timeout accepted")
	}
}

// TestSSOExpiredState: a login not completed within its life is refused.
func TestSSOExpiredState(t *testing.T) {
	f := newSSOFixture(t)
	_, err := f.p.Authenticate(context.Background(), req("alice", "x"))
	state, _ := notice(t, err)
	f.clock.Add(sso.DefaultTTL)
	_, err = f.p.Authenticate(context.Background(), req("alice", "CRV1::"+state+"::"))
	if c, _ := refusal(t, err); c != CodeSSOExpired {
		t.Errorf("expired state: %q", c)
	}
}

// TestSSOWebAuthClient: a client announcing IV_SSO=webauth is told to wait (AUTH_PENDING) with
// the link as WEB_AUTH, and admitted when the browser login completes.
func TestSSOWebAuthClient(t *testing.T) {
	f := newSSOFixture(t)
	r := &session.AuthRequest{ConnectionID: "cvpn-connection-1", Peer: &keymethod.PeerInfo{Raw: map[string]string{"IV_SSO": "openurl,webauth,crtext"}}}
	_, err := f.p.Authenticate(context.Background(), r)
	var pend *session.Pending
	if !errors.As(err, &pend) || !strings.HasPrefix(pend.Extra, "WEB_AUTH::https://vpn.example.com/d/") || pend.Timeout <= 0 {
		t.Fatalf("IV_SSO client: %v", err)
	}
	code := strings.TrimPrefix(pend.Extra, "WEB_AUTH::https://vpn.example.com/d/")
	go func() {
		_ = f.broker.Complete(context.Background(), code, sso.Identity{Username: "carol", Groups: []string{"ops"}})
	}()
	u, err := pend.Wait(context.Background())
	if err != nil || u.Username != "carol" || len(u.Push) == 0 {
		t.Fatalf("after the browser: %+v %v", u, err)
	}
	r.Peer.Raw["IV_SSO"] = "openurl"
	_, err = f.p.Authenticate(context.Background(), r)
	if !errors.As(err, &pend) || !strings.HasPrefix(pend.Extra, "OPEN_URL:https://") {
		t.Errorf("openurl client: %v", err)
	}
}
