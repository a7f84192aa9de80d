package expiry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cvpn/cvpn/state"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestGetTakeExpire(t *testing.T) {
	ctx := context.Background()
	st := state.NewMemory()
	if err := Put(ctx, st, "b", "k", t0.Add(time.Minute), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if p, _, err := Get(ctx, st, "b", "k", t0); err != nil || string(p) != "v" {
		t.Fatalf("Get = %q, %v", p, err)
	}
	if _, _, err := Get(ctx, st, "b", "k", t0.Add(time.Minute)); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("Get after expiry: %v, want ErrNotFound", err)
	}
	if p, err := Take(ctx, st, "b", "k", t0); err != nil || string(p) != "v" {
		t.Fatalf("Take = %q, %v", p, err)
	}
	if _, err := Take(ctx, st, "b", "k", t0); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("second Take: %v, want ErrNotFound", err)
	}
}

func TestSweepDeletesOnlyExpired(t *testing.T) {
	ctx := context.Background()
	st := state.NewMemory()
	for i, d := range []time.Duration{time.Second, time.Hour, 2 * time.Second} {
		if err := Put(ctx, st, "b", string(rune('a'+i)), t0.Add(d), nil); err != nil {
			t.Fatal(err)
		}
	}
	n, err := Sweep(ctx, st, "b", t0.Add(time.Minute), 0)
	if err != nil || n != 2 {
		t.Fatalf("Sweep = %d, %v; want 2", n, err)
	}
	keys, _ := st.List(ctx, "b")
	if len(keys) != 1 || keys[0] != "b" {
		t.Fatalf("left %v, want [b]", keys)
	}
}

func TestLedgerBoundsAndFrees(t *testing.T) {
	ctx := context.Background()
	st := state.NewMemory()
	for i := 0; i < 3; i++ {
		if err := Reserve(ctx, st, "l", "src", t0, t0.Add(time.Duration(i+1)*time.Minute), 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := Reserve(ctx, st, "l", "src", t0, t0.Add(time.Hour), 3); !errors.Is(err, ErrFull) {
		t.Fatalf("fourth Reserve: %v, want ErrFull", err)
	}
	if err := Release(ctx, st, "l", "src", t0, t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n, _ := Places(ctx, st, "l", "src", t0); n != 2 {
		t.Fatalf("Places after Release = %d, want 2", n)
	}
	// The first place expires after a minute: room for one more.
	if n, _ := Places(ctx, st, "l", "src", t0.Add(time.Minute)); n != 1 {
		t.Fatalf("Places after a minute = %d, want 1", n)
	}
	if err := Reserve(ctx, st, "l", "src", t0.Add(time.Minute), t0.Add(time.Hour), 2); err != nil {
		t.Fatal(err)
	}
}

func TestSealOpensOnlyWithTheSecret(t *testing.T) {
	sealed := Seal("p", "secret", []byte("payload"))
	if p, err := Open("p", "secret", sealed); err != nil || string(p) != "payload" {
		t.Fatalf("Open = %q, %v", p, err)
	}
	if _, err := Open("p", "other", sealed); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with another secret: %v, want ErrCorrupt", err)
	}
	if _, err := Open("q", "secret", sealed); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with another purpose: %v, want ErrCorrupt", err)
	}
	if Key("p", "secret") == Key("q", "secret") {
		t.Fatal("Key ignores the purpose")
	}
}

func TestShardedLedgerBound(t *testing.T) {
	ctx := context.Background()
	st := state.NewMemory()
	const max = 2000
	admitted := 0
	for i := range 3 * max {
		key, places := Shard("all", string(rune(i))+"x", max)
		if places*((max+shardPlaces-1)/shardPlaces) < max {
			t.Fatalf("shards hold %d places each, fewer than %d in all", places, max)
		}
		if Reserve(ctx, st, "l", key, t0, t0.Add(time.Minute), places) == nil {
			admitted++
		}
	}
	n, err := ShardedPlaces(ctx, st, "l", "all", max, t0)
	if err != nil || n != admitted {
		t.Fatalf("ShardedPlaces = %d, %v; admitted %d", n, err, admitted)
	}
	if admitted < max || admitted >= max+(max+shardPlaces-1)/shardPlaces {
		t.Fatalf("admitted %d, want from %d to under %d plus the number of shards", admitted, max, max)
	}
	if key, places := Shard("small", "x", 100); key != "small" || places != 100 {
		t.Fatalf("a small ledger is sharded: %q %d", key, places)
	}
}
