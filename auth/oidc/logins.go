package oidc

import (
	"fmt"
	"sync"
	"time"
)

// pendingLogin is what a login keeps between Begin and Complete.
type pendingLogin struct {
	nonce    string
	verifier string
	expires  time.Time
}

// loginTable holds the pending logins by state, and the states already used until their login
// would have expired (to tell a replay from a forgery). Both maps are bounded by max.
type loginTable struct {
	max int

	mu      sync.Mutex // guards the maps
	pending map[string]pendingLogin
	used    map[string]time.Time // state -> the expiry of its login
}

func newLoginTable(max int) *loginTable {
	return &loginTable{max: max, pending: map[string]pendingLogin{}, used: map[string]time.Time{}}
}

// add records a new login, first dropping expired ones if the table is full.
func (t *loginTable) add(state string, pl pendingLogin, now time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.pending) >= t.max {
		t.sweep(now)
		if len(t.pending) >= t.max {
			return fmt.Errorf("%w: %d logins are waiting for their callback", ErrTooManyLogins, len(t.pending))
		}
	}
	t.pending[state] = pl
	return nil
}

// take removes and returns the login for state. An expired login is removed too.
func (t *loginTable) take(state string, now time.Time) (pendingLogin, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pl, ok := t.pending[state]
	if !ok {
		if _, used := t.used[state]; used {
			return pendingLogin{}, ErrStateReplayed
		}
		return pendingLogin{}, ErrUnknownState
	}
	delete(t.pending, state)
	if len(t.used) >= t.max {
		t.sweep(now)
		for s := range t.used { // still full: forget one; its replay then reads as unknown
			if len(t.used) < t.max {
				break
			}
			delete(t.used, s)
		}
	}
	t.used[state] = pl.expires
	if !now.Before(pl.expires) {
		return pendingLogin{}, fmt.Errorf("%w: it expired at %s", ErrLoginExpired, pl.expires.UTC().Format(time.RFC3339))
	}
	return pl, nil
}

// sweep drops expired logins and the records of used states whose login has expired.
func (t *loginTable) sweep(now time.Time) {
	for s, pl := range t.pending {
		if !now.Before(pl.expires) {
			delete(t.pending, s)
		}
	}
	for s, exp := range t.used {
		if !now.Before(exp) {
			delete(t.used, s)
		}
	}
}

// len returns the number of pending logins.
func (t *loginTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending)
}
