package session

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/bench/client"
)

// ssoHooks defer every login of a client announcing IV_SSO to a "browser" the test plays: the
// client is sent a WEB_AUTH URL, and the login completes (or fails) when the test says so.
type ssoHooks struct {
	mu      sync.Mutex
	logins  map[string]chan error // by URL
	timeout time.Duration
}

func (h *ssoHooks) Authenticate(_ context.Context, r *AuthRequest) (*User, error) {
	if r.Peer.Raw["IV_SSO"] == "" {
		return nil, &Refusal{Message: "this endpoint needs a single sign-on client"}
	}
	url := "https://portal.test/d/" + r.ConnectionID
	done := make(chan error, 1)
	h.mu.Lock()
	h.logins[url] = done
	h.mu.Unlock()
	return nil, &Pending{Extra: "WEB_AUTH::" + url, Timeout: h.timeout, Wait: func(ctx context.Context) (*User, error) {
		select {
		case err := <-done:
			if err != nil {
				return nil, err
			}
			return &User{Name: "sso-user", Username: "sso-user", Groups: []string{"dev"}}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}}
}

func (h *ssoHooks) Reauthenticate(_ context.Context, info *Info, _ *AuthRequest) (*User, error) {
	return &User{Name: info.User, Username: info.Username, Groups: info.Groups}, nil
}
func (h *ssoHooks) OnConnect(context.Context, *Info) error { return nil }
func (h *ssoHooks) OnDisconnect(*Info, string)             {}

// browser completes the login at url with err (nil: success) once the client was sent it.
func (h *ssoHooks) browser(t *testing.T, urls <-chan string, err error) {
	t.Helper()
	select {
	case u := <-urls:
		h.mu.Lock()
		done := h.logins[strings.TrimPrefix(u, "WEB_AUTH::")]
		h.mu.Unlock()
		if done == nil {
			t.Errorf("the client was sent %q, which no login is waiting on", u)
			return
		}
		done <- err
	case <-time.After(10 * time.Second):
		t.Error("the client was never told where to log in")
	}
}

func ssoClient(e *testEngine, t *testing.T, from string) (client.Config, chan string) {
	cfg := e.clientConfig(t, "laptop", netip.MustParseAddrPort(from), port443)
	cfg.PeerInfo = map[string]string{"IV_SSO": "webauth,openurl"}
	urls := make(chan string, 4)
	cfg.OnInfoPre = func(text string) { urls <- text }
	return cfg, urls
}

// TestDeferredLogin: a login the hooks defer tells the client AUTH_PENDING and where to log
// in (INFO_PRE,WEB_AUTH::...), keeps the session pending beyond the hand window while the user
// is in the browser, and admits it when the login completes.
func TestDeferredLogin(t *testing.T) {
	h := &ssoHooks{logins: map[string]chan error{}, timeout: 5 * time.Second}
	e := newTestEngine(t, engineOptions{hooks: h, handWindow: 2 * time.Second})
	cfg, urls := ssoClient(e, t, "203.0.113.70:40000")
	go func() {
		time.Sleep(3 * time.Second) // the user takes longer than the hand window
		h.browser(t, urls, nil)
	}()
	s := connect(t, cfg)
	e.ping(t, s, 1)
	st := e.established()["sso-user"]
	if st.Info == nil || st.Username != "sso-user" {
		t.Fatalf("established %+v", e.established())
	}
}

// TestDeferredLoginFailsOrExpires: a login that fails refuses the client with the reason; one
// never completed ends when its timeout passes.
func TestDeferredLoginFailsOrExpires(t *testing.T) {
	h := &ssoHooks{logins: map[string]chan error{}, timeout: 2 * time.Second}
	e := newTestEngine(t, engineOptions{hooks: h, handWindow: time.Second})
	cfg, urls := ssoClient(e, t, "203.0.113.71:40000")
	go h.browser(t, urls, &Refusal{Message: "the identity provider refused the login"})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := client.Connect(ctx, cfg); !errors.Is(err, client.ErrAuthFailed) || !strings.Contains(err.Error(), "identity provider refused") {
		t.Fatalf("failed login: %v", err)
	}

	cfg2, urls2 := ssoClient(e, t, "203.0.113.72:40000")
	go func() { <-urls2 }() // the user never logs in
	ctx2, cancel2 := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel2()
	start := time.Now()
	_, err := client.Connect(ctx2, cfg2)
	if err == nil || time.Since(start) > 12*time.Second {
		t.Fatalf("an abandoned login: %v after %v", err, time.Since(start))
	}
	waitFor(t, "no session is left pending", func() bool { return len(e.m.all()) == 0 })
}
