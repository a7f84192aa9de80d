package host

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/testlog"
)

// fakeAddrs is an addrSource under the test's control.
type fakeAddrs struct {
	mu      sync.Mutex
	cur     []netip.Prefix
	listErr error
	subErr  error
	subs    []*fakeSub
	lists   int
}

// fakeSub is one subscription: its events channel, closed when its done is (as netlink's is)
// or when the test ends it.
type fakeSub struct {
	ch     chan struct{}
	done   <-chan struct{}
	closed bool // guarded by fakeAddrs.mu
}

func (f *fakeAddrs) set(p ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cur = nil
	for _, s := range p {
		f.cur = append(f.cur, netip.MustParsePrefix(s))
	}
}

func (f *fakeAddrs) list() ([]netip.Prefix, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	if f.listErr != nil {
		return nil, f.listErr
	}
	return slices.Clone(f.cur), nil
}

func (f *fakeAddrs) subscribe(done <-chan struct{}) (<-chan struct{}, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.subErr != nil {
		return nil, f.subErr
	}
	sub := &fakeSub{ch: make(chan struct{}, 1), done: done}
	f.subs = append(f.subs, sub)
	go func() { <-done; f.end(sub) }()
	return sub.ch, nil
}

// end closes a subscription's channel, as a failing netlink subscription does.
func (f *fakeAddrs) end(sub *fakeSub) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !sub.closed {
		sub.closed = true
		close(sub.ch)
	}
}

// announce sends an announcement on the newest subscription.
func (f *fakeAddrs) announce() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case f.subs[len(f.subs)-1].ch <- struct{}{}:
	default:
	}
}

// sub returns subscription i.
func (f *fakeAddrs) sub(i int) *fakeSub {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.subs[i]
}

func (f *fakeAddrs) source(refresh time.Duration) addrSource {
	return addrSource{list: f.list, subscribe: f.subscribe, refresh: refresh, settle: time.Millisecond, resubscribe: 20 * time.Millisecond}
}

// recorder collects what a watch reports.
type recorder struct {
	mu  sync.Mutex
	got [][]netip.Prefix
}

func (r *recorder) changed(p []netip.Prefix) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, p)
}

func (r *recorder) calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// waitFor waits until the recorder has n calls, the last of them want.
func (r *recorder) waitFor(t *testing.T, n int, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && r.calls() < n {
		time.Sleep(time.Millisecond)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.got) != n {
		t.Fatalf("changed called %d times, want %d: %v", len(r.got), n, r.got)
	}
	var w []netip.Prefix
	for _, s := range want {
		w = append(w, netip.MustParsePrefix(s))
	}
	if last := r.got[n-1]; !slices.Equal(last, w) {
		t.Fatalf("changed(%v), want %v", last, w)
	}
}

func testLog() (*slog.Logger, *syncBuffer) {
	var b syncBuffer
	return slog.New(slog.NewTextHandler(&b, nil)), &b
}

// syncBuffer collects the log of the goroutines under test.
type syncBuffer = testlog.Buffer

// TestWatchAnnouncedChange: the watch returns the list as it is, reports a change the kernel
// announces with the whole new list, reports nothing when an announcement changed nothing, and
// nothing after Close, which ends the subscription.
func TestWatchAnnouncedChange(t *testing.T) {
	f := &fakeAddrs{}
	f.set("10.0.1.1/32", "127.0.0.0/8")
	var r recorder
	first, w, err := f.source(time.Hour).watch(r.changed, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.0.1.1/32"), netip.MustParsePrefix("127.0.0.0/8")}; !slices.Equal(first, want) {
		t.Fatalf("first list %v, want %v", first, want)
	}
	f.set("10.0.1.1/32", "10.0.1.3/32", "127.0.0.0/8")
	f.announce()
	r.waitFor(t, 1, "10.0.1.1/32", "10.0.1.3/32", "127.0.0.0/8")

	lists := func() int { f.mu.Lock(); defer f.mu.Unlock(); return f.lists }
	before := lists()
	f.announce() // nothing changed
	for deadline := time.Now().Add(5 * time.Second); lists() == before && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if lists() == before {
		t.Fatal("an announcement was not read")
	}
	time.Sleep(20 * time.Millisecond)
	if n := r.calls(); n != 1 {
		t.Fatalf("changed called %d times for an unchanged list", n)
	}

	w.Close()
	w.Close() // again: nothing
	f.set("10.0.1.1/32")
	select {
	case <-f.sub(0).done:
	default:
		t.Fatal("Close did not end the subscription")
	}
	time.Sleep(20 * time.Millisecond)
	if n := r.calls(); n != 1 {
		t.Fatalf("changed called after Close (%d calls)", n)
	}
	var nilWatch *AddrWatch
	nilWatch.Close()
}

// TestWatchRefreshes: without any announcement, the list is read every refresh interval; a
// subscription that ends by itself is read at once and replaced.
func TestWatchRefreshes(t *testing.T) {
	f := &fakeAddrs{}
	f.set("10.0.1.1/32")
	var r recorder
	_, w, err := f.source(30*time.Millisecond).watch(r.changed, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	f.set("10.0.1.1/32", "10.0.1.4/32")
	r.waitFor(t, 1, "10.0.1.1/32", "10.0.1.4/32")

	// The subscription ends (as an overflowing netlink socket's does): read at once, and
	// subscribed again.
	f.set("10.0.1.4/32")
	f.end(f.sub(0))
	r.waitFor(t, 2, "10.0.1.4/32")
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		n := len(f.subs)
		f.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d subscriptions after the first ended, want 2", n)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case <-f.sub(0).done:
	default:
		t.Error("the subscription that ended was not told done (netlink's would leak its socket)")
	}
	f.set("10.0.1.5/32")
	f.announce()
	r.waitFor(t, 3, "10.0.1.5/32")
}

// TestWatchWithoutAnnouncements: when the kernel will not announce changes, the watch says so
// once and reads every interval.
func TestWatchWithoutAnnouncements(t *testing.T) {
	f := &fakeAddrs{subErr: errors.New("no netlink here")}
	f.set("10.0.1.1/32")
	log, out := testLog()
	var r recorder
	_, w, err := f.source(10*time.Millisecond).watch(r.changed, log)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	f.set("10.0.1.6/32")
	r.waitFor(t, 1, "10.0.1.6/32")
	time.Sleep(50 * time.Millisecond) // several refreshes, each trying to subscribe again
	if n := strings.Count(out.String(), "does not announce address changes"); n != 1 {
		t.Fatalf("the missing announcements logged %d times, want once:\n%s", n, out.String())
	}
}

// TestWatchListErrors: a list that cannot be read at start is an error naming what failed; one
// that cannot be read later leaves the last list in force and is logged once.
func TestWatchListErrors(t *testing.T) {
	f := &fakeAddrs{listErr: errors.New("netlink: operation not permitted")}
	_, w, err := f.source(time.Hour).watch(func([]netip.Prefix) { t.Error("changed called") }, nil)
	if err == nil || w != nil {
		t.Fatalf("watch = %v, %v; want an error", w, err)
	}
	if want := "list the host's own addresses (local routing table): netlink: operation not permitted"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if len(f.subs) != 1 {
		t.Fatalf("%d subscriptions", len(f.subs))
	}
	select {
	case <-f.sub(0).done:
	default:
		t.Error("a failed start left its subscription running")
	}

	f = &fakeAddrs{}
	f.set("10.0.1.1/32")
	log, out := testLog()
	var r recorder
	_, w, err = f.source(5*time.Millisecond).watch(r.changed, log)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	f.mu.Lock()
	f.listErr = errors.New("dump failed")
	f.mu.Unlock()
	time.Sleep(50 * time.Millisecond)
	if n := strings.Count(out.String(), "reading the host's own addresses failed"); n != 1 || r.calls() != 0 {
		t.Fatalf("a failing list logged %d times (want 1) and reported %d changes (want 0):\n%s", n, r.calls(), out.String())
	}
	f.mu.Lock()
	f.listErr = nil
	f.mu.Unlock()
	f.set("10.0.1.7/32")
	r.waitFor(t, 1, "10.0.1.7/32")
}
