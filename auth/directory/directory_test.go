package directory

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/cvpn/cvpn/internal/testlog"
)

const (
	baseDN  = "dc=example,dc=com"
	svcDN   = "cn=svc,ou=services,dc=example,dc=com"
	aliceDN = "uid=alice,ou=people,dc=example,dc=com"
	bobDN   = "uid=bob,ou=people,dc=example,dc=com"
	carolDN = "uid=carol,ou=people,dc=example,dc=com"
	engDN   = "cn=eng,ou=groups,dc=example,dc=com"
	staffDN = "cn=all-staff,ou=groups,dc=example,dc=com"
	opsDN   = "cn=ops,ou=groups,dc=example,dc=com"
)

// sid encodes S-1-5-21-a-b-c-rid.
func sid(sub ...uint32) string {
	b := []byte{1, byte(len(sub)), 0, 0, 0, 0, 0, 5}
	for _, s := range sub {
		b = append(b, byte(s), byte(s>>8), byte(s>>16), byte(s>>24))
	}
	return string(b)
}

func fixture() []*fakeEntry {
	return []*fakeEntry{
		{dn: svcDN, password: "svc-pw", attrs: map[string][]string{"cn": {"svc"}}},
		{dn: aliceDN, password: "alice-pw", attrs: map[string][]string{"uid": {"alice"}, "memberOf": {engDN}}},
		{dn: bobDN, password: "bob-pw", attrs: map[string][]string{"uid": {"bob"}, "memberOf": {opsDN}}},
		{dn: carolDN, password: "carol-pw", attrs: map[string][]string{"uid": {"carol"}, "userAccountControl": {"514"}}},
		{dn: engDN, attrs: map[string][]string{"cn": {"eng"}, "member": {aliceDN}, "objectSid": {sid(21, 1, 2, 3, 1105)}}},
		{dn: staffDN, attrs: map[string][]string{"cn": {"all-staff"}, "member": {engDN}, "objectSid": {sid(21, 1, 2, 3, 1106)}}},
		{dn: opsDN, attrs: map[string][]string{"cn": {"ops"}, "member": {bobDN}, "memberUid": {"bob"}}},
	}
}

func baseConfig(urls ...string) Config {
	return Config{
		URLs:         urls,
		BindDN:       svcDN,
		BindPassword: "svc-pw",
		UserBaseDN:   "ou=people," + baseDN,
		Timeout:      5 * time.Second,
	}
}

func newDir(t *testing.T, cfg Config) *Directory {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = testlog.New(t)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func groupDNs(u *User) []string {
	var s []string
	for _, g := range u.Groups {
		s = append(s, g.DN)
	}
	return s
}

func TestAuthenticateReadsMemberOf(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	d := newDir(t, baseConfig(f.url()))
	for _, spelling := range []string{"ALICE", " alice  "} {
		u, err := d.Lookup(context.Background(), spelling)
		if err != nil {
			t.Fatal(err)
		}
		if u.Name != "alice" {
			t.Errorf("Lookup(%q).Name = %q, want alice (the directory's spelling)", spelling, u.Name)
		}
	}
	u, err := d.Authenticate(context.Background(), "ALICE", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	if u.DN != aliceDN || u.Name != "alice" {
		t.Errorf("user = %q %q, want %q alice (the directory's spelling)", u.DN, u.Name, aliceDN)
	}
	if len(u.Groups) != 1 || u.Groups[0].DN != engDN || u.Groups[0].CN != "eng" {
		t.Errorf("groups = %+v, want eng", u.Groups)
	}
	if binds := f.bindsSeen(); !contains(binds, aliceDN) {
		t.Errorf("binds %q: no bind as alice", binds)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestWrongPasswordAndUnknownUser(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	d := newDir(t, baseConfig(f.url()))
	ctx := context.Background()
	if _, err := d.Authenticate(ctx, "alice", "bob-pw"); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("wrong password: err = %v, want ErrInvalidCredentials", err)
	}
	if _, err := d.Authenticate(ctx, "mallory", "x"); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("unknown user: err = %v, want ErrInvalidCredentials", err)
	}
	if _, err := d.Lookup(ctx, "mallory"); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("Lookup unknown user: err = %v, want ErrNoSuchUser", err)
	}
	// The pool is still good after failures.
	if _, err := d.Authenticate(ctx, "bob", "bob-pw"); err != nil {
		t.Errorf("bob after failures: %v", err)
	}
}

func TestEmptyPasswordRefusedLocally(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	d := newDir(t, baseConfig(f.url()))
	_, err := d.Authenticate(context.Background(), "alice", "")
	if !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("err = %v, want ErrInvalidCredentials", err)
	}
	// The fake accepts unauthenticated binds, as real servers may: the refusal must be ours.
	if binds := f.bindsSeen(); contains(binds, aliceDN) {
		t.Errorf("an empty password reached the server as a bind: %q", binds)
	}
}

func TestUsernamesRefusedBeforeLDAP(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	d := newDir(t, baseConfig(f.url()))
	for _, name := range []string{"", strings.Repeat("a", MaxUsernameLen+1), "al\x00ice", "alice\n", "al\x7fice", "\xff\xfe"} {
		if _, err := d.Authenticate(context.Background(), name, "pw"); !errors.Is(err, ErrInvalidCredentials) {
			t.Errorf("Authenticate(%q): err = %v, want ErrInvalidCredentials", name, err)
		}
		if _, err := d.Lookup(context.Background(), name); !errors.Is(err, ErrInvalidCredentials) {
			t.Errorf("Lookup(%q): err = %v, want ErrInvalidCredentials", name, err)
		}
	}
	if s := f.filtersSeen(); len(s) != 0 {
		t.Errorf("refused usernames reached the server: %q", s)
	}
	if _, err := d.Authenticate(context.Background(), strings.Repeat("a", MaxUsernameLen), "pw"); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("longest allowed username: err = %v", err)
	}
	if len(f.filtersSeen()) != 1 {
		t.Errorf("a username of exactly %d bytes was not searched", MaxUsernameLen)
	}
}

func TestFilterEscaping(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	d := newDir(t, baseConfig(f.url()))
	evil := []string{"*", "*)(uid=*", "alice)(|(uid=*", `alice\2a`, "al*", "bob)(&"}
	for _, name := range evil {
		// Every password of the fixture: an injected filter matching alice or bob would let one through.
		for _, pw := range []string{"alice-pw", "bob-pw"} {
			if u, err := d.Authenticate(context.Background(), name, pw); !errors.Is(err, ErrInvalidCredentials) {
				t.Errorf("Authenticate(%q): user %+v, err %v; want ErrInvalidCredentials", name, u, err)
			}
		}
	}
	seen := f.filtersSeen()
	if len(seen) != 2*len(evil) {
		t.Fatalf("%d searches, want %d", len(seen), 2*len(evil))
	}
	for i, s := range seen {
		p, err := ldap.CompileFilter(s)
		if err != nil {
			t.Fatalf("filter %q: %v", s, err)
		}
		want := evil[i/2]
		if p.Tag != ldap.FilterEqualityMatch || str(p.Children[0]) != "uid" || str(p.Children[1]) != want {
			t.Errorf("filter %q is not (uid=<literal %q>)", s, want)
		}
	}
	for _, b := range f.bindsSeen() {
		if b == aliceDN || b == bobDN {
			t.Errorf("an injected username led to a bind as %s", b)
		}
	}
}

func TestAmbiguousUsername(t *testing.T) {
	entries := append(fixture(),
		&fakeEntry{dn: "uid=dup,ou=a,ou=people," + baseDN, password: "dup-pw", attrs: map[string][]string{"uid": {"dup"}}},
		&fakeEntry{dn: "uid=dup,ou=b,ou=people," + baseDN, password: "dup-pw", attrs: map[string][]string{"uid": {"dup"}}},
	)
	f := newFakeDir(t, svcDN, entries...)
	var logs testlog.Buffer
	cfg := baseConfig(f.url())
	cfg.Log = slog.New(slog.NewTextHandler(&logs, nil))
	d := newDir(t, cfg)
	if _, err := d.Authenticate(context.Background(), "dup", "dup-pw"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("err = %v, want ErrInvalidCredentials", err)
	}
	if !strings.Contains(logs.String(), "several entries") {
		t.Errorf("no log line names the ambiguity: %q", logs.String())
	}
	if strings.Contains(logs.String(), "dup-pw") {
		t.Errorf("the password was logged: %q", logs.String())
	}
	for _, b := range f.bindsSeen() {
		if strings.HasPrefix(b, "uid=dup") {
			t.Errorf("bound as %s although the username is ambiguous", b)
		}
	}
}

func TestDisabledAccount(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	d := newDir(t, baseConfig(f.url()))
	ctx := context.Background()
	if _, err := d.Authenticate(ctx, "carol", "carol-pw"); !errors.Is(err, ErrDisabled) {
		t.Errorf("right password: err = %v, want ErrDisabled", err)
	}
	if _, err := d.Authenticate(ctx, "carol", "wrong"); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("wrong password of a disabled account: err = %v, want ErrInvalidCredentials (no account state leaked)", err)
	}
	if _, err := d.Lookup(ctx, "carol"); !errors.Is(err, ErrDisabled) {
		t.Errorf("Lookup: err = %v, want ErrDisabled", err)
	}
}

func TestNestedGroupsInChain(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	cfg := baseConfig(f.url())
	cfg.NestedGroups = true
	d := newDir(t, cfg)
	u, err := d.Authenticate(context.Background(), "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Group{}
	for _, g := range u.Groups {
		got[g.CN] = g
	}
	if len(got) != 2 || got["eng"].DN != engDN || got["all-staff"].DN != staffDN {
		t.Fatalf("groups = %+v, want eng and (nested) all-staff", u.Groups)
	}
	if got["all-staff"].SID != "S-1-5-21-1-2-3-1106" {
		t.Errorf("all-staff SID = %q", got["all-staff"].SID)
	}
	var inChain string
	for _, s := range f.filtersSeen() {
		if strings.Contains(s, inChainRule) {
			inChain = s
		}
	}
	if inChain == "" {
		t.Fatalf("no in-chain search among %q", f.filtersSeen())
	}
	staff := got["all-staff"]
	for _, id := range []string{"ALL-STAFF", "S-1-5-21-1-2-3-1106", "CN=All-Staff, OU=Groups, DC=Example, DC=Com"} {
		if !staff.Matches(id) {
			t.Errorf("all-staff does not match %q", id)
		}
	}
	if staff.Matches("eng") || staff.Matches("S-1-5-21-1-2-3-1105") || staff.Matches(engDN) {
		t.Error("all-staff matches eng's identifiers")
	}
}

func TestNestedGroupsEscapeTheUserDN(t *testing.T) {
	weird := `uid=a\29\28x,ou=people,` + baseDN // a DN with ")(" in its value
	entries := append(fixture(),
		&fakeEntry{dn: weird, password: "w-pw", attrs: map[string][]string{"uid": {"a)(x"}}},
	)
	f := newFakeDir(t, svcDN, entries...)
	cfg := baseConfig(f.url())
	cfg.NestedGroups = true
	d := newDir(t, cfg)
	u, err := d.Authenticate(context.Background(), "a)(x", "w-pw")
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Groups) != 0 {
		t.Errorf("groups = %+v, want none", u.Groups)
	}
	for _, s := range f.filtersSeen() {
		if _, err := ldap.CompileFilter(s); err != nil {
			t.Errorf("filter %q does not compile: %v", s, err)
		}
	}
}

func TestGroupSearch(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	cfg := baseConfig(f.url())
	cfg.GroupBaseDN = "ou=groups," + baseDN
	cfg.GroupFilter = "(|(member={dn})(memberUid={username}))"
	d := newDir(t, cfg)
	u, err := d.Authenticate(context.Background(), "bob", "bob-pw")
	if err != nil {
		t.Fatal(err)
	}
	if got := groupDNs(u); len(got) != 1 || got[0] != opsDN || u.Groups[0].CN != "ops" {
		t.Errorf("bob's groups = %+v, want ops", u.Groups)
	}
	u, err = d.Lookup(context.Background(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if got := groupDNs(u); len(got) != 1 || got[0] != engDN || u.Groups[0].SID != "S-1-5-21-1-2-3-1105" {
		t.Errorf("alice's groups = %+v, want eng with its SID (nested all-staff is not direct)", u.Groups)
	}
}

func TestLookupSeesChanges(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	d := newDir(t, baseConfig(f.url()))
	ctx := context.Background()
	u, err := d.Lookup(ctx, "alice")
	if err != nil || len(u.Groups) != 1 {
		t.Fatalf("Lookup: %+v, %v", u, err)
	}
	f.mu.Lock()
	f.entries[1].attrs["memberOf"] = nil
	f.mu.Unlock()
	u, err = d.Lookup(ctx, "alice")
	if err != nil || len(u.Groups) != 0 {
		t.Fatalf("after removal from eng: %+v, %v; want no groups", u, err)
	}
	f.mu.Lock()
	f.entries = f.entries[:1:1]
	f.mu.Unlock()
	if _, err := d.Lookup(ctx, "alice"); !errors.Is(err, ErrNoSuchUser) {
		t.Fatalf("after deletion: err = %v, want ErrNoSuchUser", err)
	}
}

func TestFailoverToSecondURL(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	var logs testlog.Buffer
	cfg := baseConfig(refusedURL(t), f.url())
	cfg.Log = slog.New(slog.NewTextHandler(&logs, nil))
	d := newDir(t, cfg)
	for i := 0; i < 3; i++ {
		if _, err := d.Authenticate(context.Background(), "alice", "alice-pw"); err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
	}
	if !strings.Contains(logs.String(), cfg.URLs[0]) {
		t.Errorf("no log line names the failed server: %q", logs.String())
	}
}

func TestServiceBindFailure(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	var logs testlog.Buffer
	cfg := baseConfig(f.url())
	cfg.BindPassword = "wrong"
	cfg.Log = slog.New(slog.NewTextHandler(&logs, nil))
	d := newDir(t, cfg)
	_, err := d.Authenticate(context.Background(), "alice", "alice-pw")
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("err = %v, want ErrUnavailable (a configuration problem, not the user's credentials)", err)
	}
	if !strings.Contains(logs.String(), "service account cannot bind") || strings.Contains(logs.String(), "wrong") {
		t.Errorf("log: %q; want the service bind failure named, without its password", logs.String())
	}
	if _, ok := d.backoffUntil(f.url()); ok {
		t.Error("a service bind failure put the server in back-off")
	}
}

func TestAllServersDown(t *testing.T) {
	cfg := baseConfig(refusedURL(t), refusedURL(t))
	d := newDir(t, cfg)
	_, err := d.Authenticate(context.Background(), "alice", "alice-pw")
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("err = %v, want ErrUnavailable wrapping ECONNREFUSED", err)
	}
	// Both are in back-off now: the next attempt fails without dialling, still naming the cause.
	_, err = d.Lookup(context.Background(), "alice")
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("in back-off: err = %v, want ErrUnavailable wrapping the last failure", err)
	}
}

// fakeClock is a clock the test moves.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func TestRecoveryAfterBackoff(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	clk := &fakeClock{}
	clk.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	cfg := baseConfig(f.url())
	cfg.Now = clk.now
	cfg.Backoff = time.Minute
	d := newDir(t, cfg)
	ctx := context.Background()
	if _, err := d.Authenticate(ctx, "alice", "alice-pw"); err != nil {
		t.Fatal(err)
	}
	f.proxy.down()
	if _, err := d.Authenticate(ctx, "alice", "alice-pw"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("server down: err = %v, want ErrUnavailable", err)
	}
	clk.advance(30 * time.Second)
	if _, err := d.Authenticate(ctx, "alice", "alice-pw"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("within the back-off, still down: err = %v, want ErrUnavailable", err)
	}
	// Every server is in back-off: the one whose back-off ends first is still tried, so a
	// server that came back serves at once rather than after its back-off.
	f.proxy.up(t)
	clk.advance(10 * time.Second)
	if _, err := d.Authenticate(ctx, "alice", "alice-pw"); err != nil {
		t.Fatalf("within the back-off, server back: %v", err)
	}
	f.proxy.down()
	_, _ = d.Authenticate(ctx, "alice", "alice-pw")
	clk.advance(61 * time.Second)
	f.proxy.up(t)
	if _, err := d.Authenticate(ctx, "alice", "alice-pw"); err != nil {
		t.Fatalf("after the back-off, server back: %v", err)
	}
}

func TestPoolRedialsDroppedConnections(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	d := newDir(t, baseConfig(f.url()))
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := d.Authenticate(ctx, "alice", "alice-pw"); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		f.proxy.dropAll() // the server forgets every connection between logins
	}
	if _, err := d.Lookup(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.backoffUntil(f.url()); ok {
		t.Error("dropped pooled connections put the only server in back-off")
	}
}

func TestSilentServerTimesOut(t *testing.T) {
	cfg := baseConfig(silentServer(t))
	cfg.Timeout = 200 * time.Millisecond
	d := newDir(t, cfg)
	_, err := d.Authenticate(context.Background(), "alice", "alice-pw")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
}

func TestSilentSearchFailsOverAndHonoursContext(t *testing.T) {
	hung := newFakeDir(t, svcDN, fixture()...)
	hung.mu.Lock()
	hung.hang = true
	hung.mu.Unlock()
	good := newFakeDir(t, svcDN, fixture()...)
	cfg := baseConfig(hung.url(), good.url())
	cfg.Timeout = 300 * time.Millisecond
	d := newDir(t, cfg)
	if _, err := d.Authenticate(context.Background(), "alice", "alice-pw"); err != nil {
		t.Fatalf("a server hung in search did not fail over: %v", err)
	}

	cfg = baseConfig(hung.url())
	cfg.Timeout = time.Hour
	d = newDir(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := d.Authenticate(ctx, "alice", "alice-pw")
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrUnavailable wrapping the context's deadline", err)
	}
}

func TestResponseSizeBounded(t *testing.T) {
	entries := fixture()
	entries[1].attrs["description"] = []string{strings.Repeat("x", 64<<10)}
	f := newFakeDir(t, svcDN, entries...)
	cfg := baseConfig(f.url())
	cfg.UserFilter = "(&(uid={username})(description=*))"
	cfg.MaxResponseBytes = 16 << 10
	// The fake returns only the attributes asked for: ask for the large one as the group attribute.
	cfg.GroupAttribute = "description"
	d := newDir(t, cfg)
	_, err := d.Authenticate(context.Background(), "alice", "alice-pw")
	if !errors.Is(err, errResponseTooLarge) {
		t.Fatalf("err = %v, want the response size error", err)
	}
}

func TestPoolBoundedUnderConcurrency(t *testing.T) {
	f := newFakeDir(t, svcDN, fixture()...)
	cfg := baseConfig(f.url())
	cfg.PoolSize = 2
	d := newDir(t, cfg)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name, pw := "alice", "alice-pw"
			if i%2 == 1 {
				name, pw = "bob", "bob-pw"
			}
			_, err := d.Authenticate(context.Background(), name, pw)
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	d.search.mu.Lock()
	idle := len(d.search.idle)
	d.search.mu.Unlock()
	if idle > cfg.PoolSize {
		t.Errorf("%d idle service connections, pool size %d", idle, cfg.PoolSize)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	good := baseConfig("ldaps://dc1.example.com")
	for name, mut := range map[string]func(*Config){
		"no url":           func(c *Config) { c.URLs = nil },
		"bad scheme":       func(c *Config) { c.URLs = []string{"http://x"} },
		"no base":          func(c *Config) { c.UserBaseDN = "" },
		"no placeholder":   func(c *Config) { c.UserFilter = "(uid=alice)" },
		"bad filter":       func(c *Config) { c.UserFilter = "(uid={username}" },
		"bad group filter": func(c *Config) { c.GroupFilter = "(member=x)" },
		"starttls+ldaps":   func(c *Config) { c.StartTLS = true },
		"bad dn":           func(c *Config) { c.BindDN = "not a dn" },
	} {
		c := good
		mut(&c)
		if _, err := New(c); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	if _, err := New(good); err != nil {
		t.Errorf("good config: %v", err)
	}
}

func TestParentDN(t *testing.T) {
	for in, want := range map[string]string{
		"ou=people,dc=example,dc=com":        "dc=example,dc=com",
		"CN=Users,DC=corp,DC=example,DC=com": "DC=corp,DC=example,DC=com",
		"dc=example,dc=com":                  "dc=example,dc=com",
	} {
		got, _ := ldap.ParseDN(parentDN(in))
		w, _ := ldap.ParseDN(want)
		if got == nil || !got.EqualFold(w) {
			t.Errorf("parentDN(%q) = %q, want %q", in, parentDN(in), want)
		}
	}
}
