package oidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cvpn/cvpn/auth/expiry"
	"github.com/cvpn/cvpn/state"
)

// Buckets of the store the login table uses.
const (
	// LoginBucket: expiry.Key("oidc state", state) -> loginRecord (JSON), kept until its login
	// expires plus the login TTL, so that a replayed state reads as replayed.
	LoginBucket = "oidc-login"
	// LoginBoundBucket holds the ledger "all" (sharded: expiry.Shard) of logins begun within
	// the login TTL.
	LoginBoundBucket = "oidc-login-bound"

	sweepEvery = 30 * time.Second
	sweepBatch = 256
)

// pendingLogin is what a login keeps between Begin and Complete.
type pendingLogin struct {
	nonce    string
	verifier string
	expires  time.Time
}

// loginRecord is a login as the store keeps it. The nonce and verifier are sealed under the
// state (expiry.Seal): the store holds neither them nor the state in the clear.
type loginRecord struct {
	Sealed  []byte
	Expires time.Time
	Used    bool `json:",omitempty"`
}

type loginSecrets struct {
	Nonce, Verifier string
}

// loginTable holds the pending logins in a state.Store by the SHA-256 of the state, and the
// states already used until their login's TTL passes once more (to tell a replay from a
// forgery). Every node of a cluster sharing the store sees the same logins, and a state is
// taken once across them (compare-and-swap). Begin takes a place in a ledger of max places,
// each freed when its login expires (not when it completes: a used record stays): so at most
// max logins are begun within a TTL, and the store holds at most 2*max records.
type loginTable struct {
	st  state.Store
	max int
	ttl time.Duration

	mu        sync.Mutex // guards lastSweep
	lastSweep time.Time
}

func newLoginTable(st state.Store, max int, ttl time.Duration) *loginTable {
	if st == nil {
		st = state.NewMemory()
	}
	return &loginTable{st: st, max: max, ttl: ttl}
}

func loginKey(state string) string { return expiry.Key("oidc state", state) }

// add records a new login.
func (t *loginTable) add(ctx context.Context, state string, pl pendingLogin, now time.Time) error {
	t.sweep(ctx, now)
	all, places := expiry.Shard("all", loginKey(state), t.max)
	if err := expiry.Reserve(ctx, t.st, LoginBoundBucket, all, now, pl.expires, places); err != nil {
		if errors.Is(err, expiry.ErrFull) {
			return fmt.Errorf("%w: %d logins were begun in the last %s", ErrTooManyLogins, t.max, t.ttl)
		}
		return fmt.Errorf("oidc: record the login: %w", err)
	}
	secrets, err := json.Marshal(loginSecrets{Nonce: pl.nonce, Verifier: pl.verifier})
	if err != nil {
		return err
	}
	v, err := json.Marshal(loginRecord{Sealed: expiry.Seal("oidc login", state, secrets), Expires: pl.expires})
	if err != nil {
		return err
	}
	if err := expiry.Put(ctx, t.st, LoginBucket, loginKey(state), pl.expires.Add(t.ttl), v); err != nil {
		return fmt.Errorf("oidc: record the login: %w", err)
	}
	return nil
}

// take marks the login of state used and returns it. An expired login is used up too.
func (t *loginTable) take(ctx context.Context, state string, now time.Time) (pendingLogin, error) {
	var rec loginRecord
	err := expiry.Update(ctx, t.st, LoginBucket, loginKey(state), now, func(p []byte, until time.Time, ok bool) ([]byte, time.Time, error) {
		rec = loginRecord{}
		if !ok {
			return nil, time.Time{}, ErrUnknownState
		}
		if err := json.Unmarshal(p, &rec); err != nil {
			return nil, time.Time{}, err
		}
		if rec.Used {
			return nil, time.Time{}, ErrStateReplayed
		}
		used := loginRecord{Expires: rec.Expires, Used: true} // the secrets are not kept
		v, err := json.Marshal(used)
		return v, until, err
	})
	switch {
	case errors.Is(err, ErrUnknownState) || errors.Is(err, ErrStateReplayed):
		return pendingLogin{}, err
	case err != nil:
		return pendingLogin{}, fmt.Errorf("oidc: take the login: %w", err)
	}
	if !now.Before(rec.Expires) {
		return pendingLogin{}, fmt.Errorf("%w: it expired at %s", ErrLoginExpired, rec.Expires.UTC().Format(time.RFC3339))
	}
	p, err := expiry.Open("oidc login", state, rec.Sealed)
	if err != nil {
		return pendingLogin{}, fmt.Errorf("oidc: take the login: %w", err)
	}
	var s loginSecrets
	if err := json.Unmarshal(p, &s); err != nil {
		return pendingLogin{}, fmt.Errorf("oidc: take the login: %w", err)
	}
	return pendingLogin{nonce: s.Nonce, verifier: s.Verifier, expires: rec.Expires}, nil
}

// sweep deletes a batch of expired records, at most every sweepEvery on this node.
func (t *loginTable) sweep(ctx context.Context, now time.Time) {
	t.mu.Lock()
	due := now.Sub(t.lastSweep) >= sweepEvery
	if due {
		t.lastSweep = now
	}
	t.mu.Unlock()
	if due {
		_, _ = expiry.Sweep(ctx, t.st, LoginBucket, now, sweepBatch)
	}
}

// len returns the number of pending logins (unused and unexpired): for tests.
func (t *loginTable) len(ctx context.Context, now time.Time) int {
	keys, _ := t.st.List(ctx, LoginBucket)
	n := 0
	for _, k := range keys {
		p, _, err := expiry.Get(ctx, t.st, LoginBucket, k, now)
		var rec loginRecord
		if err == nil && json.Unmarshal(p, &rec) == nil && !rec.Used && now.Before(rec.Expires) {
			n++
		}
	}
	return n
}
