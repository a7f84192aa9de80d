package session

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/tunnel/dataplane"
)

// loginHooks authenticate a username and password, push an auth-token, and on renegotiation
// accept only the newest token, with the user's groups as they are then.
type loginHooks struct {
	mu       sync.Mutex
	groups   map[string][]string
	tokens   int
	current  map[string]string // user -> newest token
	refuse   string            // a non-empty refusal for renegotiations
	reauths  []string          // the passwords renegotiations presented
	password string
}

func (h *loginHooks) mint(user string) string {
	h.tokens++
	tok := "tok-" + strconv.Itoa(h.tokens)
	h.current[user] = tok
	return tok
}

func (h *loginHooks) Authenticate(_ context.Context, r *AuthRequest) (*User, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !r.HasUserPass || r.Password != h.password || r.ConnectionID == "" {
		return nil, &Refusal{Message: "wrong password", Code: "invalid_credentials"}
	}
	return &User{Name: r.Username, Username: r.Username, Groups: h.groups[r.Username],
		Push: []string{"auth-token " + h.mint(r.Username)}}, nil
}

func (h *loginHooks) Reauthenticate(_ context.Context, info *Info, r *AuthRequest) (*User, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reauths = append(h.reauths, r.Password)
	if h.refuse != "" {
		return nil, &Refusal{Message: h.refuse, Code: "disabled"}
	}
	if r.Username != info.Username || r.Password != h.current[info.Username] {
		return nil, &Refusal{Message: "stale token"}
	}
	return &User{Name: info.User, Username: info.Username, Groups: h.groups[info.Username],
		Push: []string{"auth-token " + h.mint(info.Username)}}, nil
}

func (h *loginHooks) OnConnect(context.Context, *Info) error { return nil }
func (h *loginHooks) OnDisconnect(*Info, string)             {}

func (h *loginHooks) setGroups(user string, groups ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.groups[user] = groups
}

// rekey starts a renegotiation of user's session and waits until the client holds a key
// newer than it had.
func (e *testEngine) rekey(t *testing.T, user string) {
	t.Helper()
	s := e.sessionOfUser(t, user)
	before := slices.Max(s.peer.Keys())
	s.PeerEvent(dataplane.EventRekey)
	waitFor(t, "a new key is installed", func() bool { return slices.Max(s.peer.Keys()) != before })
}

// TestRenegotiationReauthenticates: a login's auth-token is pushed with the configuration; a
// renegotiation presents it, is asked of the hooks, gets a renewed token pushed alone, and
// takes the user's groups as they are now, which the data plane enforces from its next packet.
func TestRenegotiationReauthenticates(t *testing.T) {
	h := &loginHooks{groups: map[string][]string{"alice": {"dev"}}, current: map[string]string{}, password: "pw"}
	e := newTestEngine(t, engineOptions{hooks: h, rules: []authz.Rule{{Network: netip.MustParsePrefix("10.0.0.0/16"), Group: "dev"}}})
	cfg := e.clientConfig(t, "alice-laptop", netip.MustParseAddrPort("203.0.113.60:40000"), port443)
	cfg.Username, cfg.Password = "alice", "pw"
	alice := connect(t, cfg)
	if got := alice.AuthToken(); got != "tok-1" {
		t.Fatalf("auth-token after login = %q, want tok-1", got)
	}
	if !slices.Contains(alice.Push().Options, "auth-token tok-1") {
		t.Errorf("push reply %q lacks the auth-token", alice.Push().Options)
	}
	st := e.established()["alice"]
	if st.Username != "alice" || st.CommonName != "alice-laptop" || !slices.Equal(st.Groups, []string{"dev"}) {
		t.Fatalf("listing: username %q, cn %q, groups %v", st.Username, st.CommonName, st.Groups)
	}
	e.ping(t, alice, 1)

	h.setGroups("alice", "sales")
	e.rekey(t, "alice")
	waitFor(t, "the renewed token reaches the client", func() bool { return alice.AuthToken() == "tok-2" })
	h.mu.Lock()
	reauths := slices.Clone(h.reauths)
	h.mu.Unlock()
	if !slices.Equal(reauths, []string{"tok-1"}) {
		t.Fatalf("renegotiations presented %q, want the pushed token", reauths)
	}
	if got := e.established()["alice"].Groups; !slices.Equal(got, []string{"sales"}) {
		t.Fatalf("groups after renegotiation = %v, want [sales]", got)
	}
	// dev reached the VPC; sales reaches nothing: the next packet is dropped.
	self := alice.Address().Addr()
	if err := alice.WritePacket(ipv4UDP(self, vpcHost, 2)); err != nil {
		t.Fatal(err)
	}
	select {
	case out := <-e.tun.Inbound:
		t.Fatalf("a packet of a user who lost its group left the TUN: % x", out[:20])
	case <-time.After(300 * time.Millisecond):
	}
	h.setGroups("alice", "dev")
	e.rekey(t, "alice")
	waitFor(t, "groups restored", func() bool { return slices.Equal(e.established()["alice"].Groups, []string{"dev"}) })
	e.ping(t, alice, 3)
}

// TestRenegotiationRefusedEndsSession: a user the hooks no longer admit at renegotiation (a
// directory account disabled) is told AUTH_FAILED and the session ends.
func TestRenegotiationRefusedEndsSession(t *testing.T) {
	h := &loginHooks{groups: map[string][]string{"bob": {"dev"}}, current: map[string]string{}, password: "pw"}
	e := newTestEngine(t, engineOptions{hooks: h})
	cfg := e.clientConfig(t, "bob-laptop", netip.MustParseAddrPort("203.0.113.61:40000"), port443)
	cfg.Username, cfg.Password = "bob", "pw"
	bob := connect(t, cfg)
	e.ping(t, bob, 1)
	h.mu.Lock()
	h.refuse = "account disabled"
	h.mu.Unlock()
	e.sessionOfUser(t, "bob").PeerEvent(dataplane.EventRekey)
	waitFor(t, "bob's session ends", func() bool { _, ok := e.established()["bob"]; return !ok })
	select {
	case <-bob.Done():
		if err := bob.Err(); err == nil || !strings.Contains(err.Error(), "account disabled") {
			t.Fatalf("client ended with %v, want AUTH_FAILED naming the reason", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the client was not told")
	}
}

// TestWrongPasswordRefused: a login the hooks refuse never gets an address, and the client
// reads the hook's reason.
func TestWrongPasswordRefused(t *testing.T) {
	h := &loginHooks{groups: map[string][]string{}, current: map[string]string{}, password: "pw"}
	e := newTestEngine(t, engineOptions{hooks: h})
	cfg := e.clientConfig(t, "carol-laptop", netip.MustParseAddrPort("203.0.113.62:40000"), port443)
	cfg.Username, cfg.Password = "carol", "nope"
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := client.Connect(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "wrong password") {
		t.Fatalf("Connect = %v, want AUTH_FAILED with the reason", err)
	}
	if n := len(e.established()); n != 0 {
		t.Fatalf("%d sessions established", n)
	}
}
