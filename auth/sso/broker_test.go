package sso

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var ctx = context.Background()

var from = netip.MustParseAddr("198.51.100.7")

func TestLoginCompletesOnce(t *testing.T) {
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	b := New(Options{Now: c.now})
	l, err := b.Start(ctx, Attempt{ConnectionID: "cvpn-connection-1", Remote: from, Hint: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.State) < 40 || len(l.Code) != codeLen || strings.ContainsAny(l.Code, "01OIL") {
		t.Fatalf("login %+v", l)
	}
	if _, err := b.Take(ctx, l.State); !errors.Is(err, ErrPending) {
		t.Fatalf("before the browser: %v", err)
	}
	got, err := b.Lookup(ctx, strings.ToLower(FormatCode(l.Code)))
	if err != nil || got.Attempt.ConnectionID != "cvpn-connection-1" {
		t.Fatalf("lookup by the typed code: %+v %v", got, err)
	}
	if _, err := b.Lookup(ctx, l.State); !errors.Is(err, ErrUnknown) {
		t.Errorf("the state opened a login as a code: %v", err)
	}
	if err := b.Complete(ctx, l.Code, Identity{Username: "alice@example.com", Groups: []string{"dev"}}); err != nil {
		t.Fatal(err)
	}
	if err := b.Complete(ctx, l.Code, Identity{Username: "mallory"}); !errors.Is(err, ErrDone) {
		t.Errorf("second completion: %v", err)
	}
	if _, err := b.Take(ctx, l.Code); !errors.Is(err, ErrUnknown) {
		t.Errorf("the code taken as a state: %v", err)
	}
	id, err := b.Take(ctx, l.State)
	if err != nil || id.Username != "alice@example.com" {
		t.Fatalf("take: %+v %v", id, err)
	}
	if _, err := b.Take(ctx, l.State); !errors.Is(err, ErrUnknown) {
		t.Errorf("reused state: %v", err)
	}
}

func TestLoginExpiresAndFails(t *testing.T) {
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	b := New(Options{Now: c.now, TTL: time.Minute})
	l, _ := b.Start(ctx, Attempt{Remote: from})
	c.add(time.Minute)
	if err := b.Complete(ctx, l.Code, Identity{Username: "late"}); !errors.Is(err, ErrUnknown) {
		t.Errorf("completing an expired login: %v", err)
	}
	if _, err := b.Take(ctx, l.State); !errors.Is(err, ErrUnknown) {
		t.Errorf("taking an expired login: %v", err)
	}
	l2, _ := b.Start(ctx, Attempt{Remote: from})
	why := errors.New("the identity provider refused")
	if err := b.Fail(ctx, l2.Code, why); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Take(ctx, l2.State); !errors.Is(err, ErrFailed) || err.Error() != why.Error() {
		t.Errorf("failed login: %v", err)
	}
	if n, _ := b.Len(ctx); n != 0 {
		t.Errorf("%d logins left", n)
	}
}

func TestLoginsBounded(t *testing.T) {
	b := New(Options{Max: 10, PerSource: 3})
	for i := range 3 {
		if _, err := b.Start(ctx, Attempt{Remote: from}); err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
	}
	if _, err := b.Start(ctx, Attempt{Remote: from}); !errors.Is(err, ErrFull) {
		t.Errorf("fourth login from one address: %v", err)
	}
	for i := range 7 {
		if _, err := b.Start(ctx, Attempt{Remote: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Start(ctx, Attempt{Remote: netip.MustParseAddr("203.0.113.1")}); !errors.Is(err, ErrFull) {
		t.Errorf("login beyond the total: %v", err)
	}
}

func TestAwait(t *testing.T) {
	b := New(Options{TTL: 200 * time.Millisecond})
	l, _ := b.Start(ctx, Attempt{Remote: from})
	go func() {
		time.Sleep(20 * time.Millisecond)
		_ = b.Complete(ctx, l.Code, Identity{Username: "alice"})
	}()
	id, err := b.Await(context.Background(), l.State)
	if err != nil || id.Username != "alice" {
		t.Fatalf("await: %+v %v", id, err)
	}
	l2, _ := b.Start(ctx, Attempt{Remote: from})
	if _, err := b.Await(context.Background(), l2.State); !errors.Is(err, ErrUnknown) {
		t.Errorf("await of a login never completed: %v", err)
	}
	l3, _ := b.Start(ctx, Attempt{Remote: from})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Await(ctx, l3.State); !errors.Is(err, context.Canceled) {
		t.Errorf("await with a cancelled context: %v", err)
	}
}
