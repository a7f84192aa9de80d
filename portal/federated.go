package portal

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cvpn/cvpn/auth/expiry"
	"github.com/cvpn/cvpn/state"
)

// Buckets of the store the federated logins use.
const (
	// FederatedBucket: "s/" + hash of the provider's state, or "f/" + hash of the finish
	// token -> federatedLogin (JSON).
	FederatedBucket = "portal-federated"
	// FederatedBoundBucket holds the ledger "all" (sharded: expiry.Shard) and, for each
	// session, "sess/<hash>": the states it began (JSON, with their expiry).
	FederatedBoundBucket = "portal-federated-bound"
)

// federatedLogin is a login at an identity provider that this portal began: by the
// provider's state while the browser is at the provider, then by a finish token once the
// provider answered and the answer waits for the browser's /login/finish.
type federatedLogin struct {
	Provider string
	Session  [32]byte  // sessionKey.hash of the browser session that began it
	Expires  time.Time // of this stage
	ID       *Identity `json:",omitempty"` // set once the provider's answer was verified
}

// federatedTable keeps the federated logins in progress in a state.Store, so that the
// provider's answer and the finish step may reach any node of a cluster. Bounded: a ledger
// admits max logins begun within federatedTTL across every node, and one session keeps
// at most perSession of them (its oldest is dropped). Each state and finish token is taken
// once (compare-and-swap).
type federatedTable struct {
	st  state.Store
	log *slog.Logger
	max int

	mu        sync.Mutex // guards lastSweep
	lastSweep time.Time
}

func newFederatedTable(st state.Store, log *slog.Logger, max int) *federatedTable {
	if st == nil {
		st = state.NewMemory()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &federatedTable{st: st, log: log, max: max}
}

// perSession bounds the logins one browser session may have at providers (a user clicking
// twice, or in two tabs), so one session cannot fill the table.
const perSession = 4

func stateKey(state string) string { return "s/" + expiry.Key("portal federated state", state) }
func finishKey(tok string) string  { return "f/" + expiry.Key("portal federated finish", tok) }

// sessionStates is the value of a session's "sess/<hash>" key.
type sessionStates []struct {
	Key     string
	Expires time.Time
}

// begin records a login the provider will answer with state.
func (t *federatedTable) begin(ctx context.Context, state, provider string, sess [32]byte, now time.Time) error {
	t.sweep(ctx, now)
	expires := now.Add(federatedTTL)
	key := stateKey(state)
	all, places := expiry.Shard("all", key, t.max)
	if err := expiry.Reserve(ctx, t.st, FederatedBoundBucket, all, now, expires, places); err != nil {
		if !errors.Is(err, expiry.ErrFull) {
			t.log.Error("portal: recording a federated login failed", "err", err)
		}
		return ErrBusy
	}
	var evict []string
	err := expiry.Update(ctx, t.st, FederatedBoundBucket, "sess/"+hex.EncodeToString(sess[:]), now,
		func(p []byte, until time.Time, ok bool) ([]byte, time.Time, error) {
			evict = nil
			var mine sessionStates
			if ok {
				if err := json.Unmarshal(p, &mine); err != nil {
					mine = nil
				}
			}
			live := mine[:0]
			for _, m := range mine {
				if now.Before(m.Expires) {
					live = append(live, m)
				}
			}
			// Oldest first: they were appended in order of expiry.
			for len(live) >= perSession {
				evict = append(evict, live[0].Key)
				live = live[1:]
			}
			live = append(live, struct {
				Key     string
				Expires time.Time
			}{key, expires})
			v, err := json.Marshal(live)
			return v, expires, err
		})
	if err == nil {
		var v []byte
		if v, err = json.Marshal(federatedLogin{Provider: provider, Session: sess, Expires: expires}); err == nil {
			err = expiry.Put(ctx, t.st, FederatedBucket, key, expires, v)
		}
	}
	if err != nil {
		t.log.Error("portal: recording a federated login failed", "err", err)
		return ErrBusy
	}
	for _, k := range evict {
		_ = t.st.Delete(ctx, FederatedBucket, k)
	}
	return nil
}

// takeKey removes and returns the live login of key.
func (t *federatedTable) takeKey(ctx context.Context, key string, now time.Time) (federatedLogin, bool) {
	p, err := expiry.Take(ctx, t.st, FederatedBucket, key, now)
	if err != nil {
		if !errors.Is(err, state.ErrNotFound) {
			t.log.Error("portal: reading a federated login failed", "err", err)
		}
		return federatedLogin{}, false
	}
	var l federatedLogin
	if err := json.Unmarshal(p, &l); err != nil {
		t.log.Error("portal: reading a federated login failed", "err", err)
		return federatedLogin{}, false
	}
	return l, now.Before(l.Expires)
}

// take removes and returns the live login of state.
func (t *federatedTable) take(ctx context.Context, state string, now time.Time) (federatedLogin, bool) {
	return t.takeKey(ctx, stateKey(state), now)
}

// answered keeps a verified login for its browser's /login/finish and returns its token.
func (t *federatedTable) answered(ctx context.Context, l federatedLogin, now time.Time) (string, error) {
	tok := randomID()
	l.Expires = now.Add(finishTTL)
	v, err := json.Marshal(l)
	if err == nil {
		err = expiry.Put(ctx, t.st, FederatedBucket, finishKey(tok), l.Expires, v)
	}
	if err != nil {
		return "", fmt.Errorf("portal: recording a federated answer: %w", err)
	}
	return tok, nil
}

// finish removes and returns the live answered login of token.
func (t *federatedTable) finish(ctx context.Context, token string, now time.Time) (federatedLogin, bool) {
	if token == "" {
		return federatedLogin{}, false
	}
	return t.takeKey(ctx, finishKey(token), now)
}

// sweep deletes a batch of expired keys, at most every sweepEvery on this node.
func (t *federatedTable) sweep(ctx context.Context, now time.Time) {
	t.mu.Lock()
	due := now.Sub(t.lastSweep) >= sweepEvery
	if due {
		t.lastSweep = now
	}
	t.mu.Unlock()
	if due {
		for _, b := range []string{FederatedBucket, FederatedBoundBucket} {
			_, _ = expiry.Sweep(ctx, t.st, b, now, sweepBatch)
		}
	}
}

// len is the number of logins kept: for tests.
func (t *federatedTable) len() int {
	keys, _ := t.st.List(context.Background(), FederatedBucket)
	return len(keys)
}
