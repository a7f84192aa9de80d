package portal

import (
	"sync"
	"time"
)

// federatedLogin is a login at an identity provider that this portal began: by the
// provider's state while the browser is at the provider, then by a finish token once the
// provider answered and the answer waits for the browser's /login/finish.
type federatedLogin struct {
	provider string
	session  sessionKey // the browser session that began it
	expires  time.Time
	id       Identity // set once the provider's answer was verified
}

// federatedTable keeps the federated logins in progress, bounded.
type federatedTable struct {
	max int

	mu       sync.Mutex
	byState  map[string]*federatedLogin
	byFinish map[string]*federatedLogin
}

func newFederatedTable(max int) *federatedTable {
	return &federatedTable{max: max, byState: map[string]*federatedLogin{}, byFinish: map[string]*federatedLogin{}}
}

// perSession bounds the logins one browser session may have at providers (a user clicking
// twice, or in two tabs), so one session cannot fill the table.
const perSession = 4

func (t *federatedTable) sweepLocked(now time.Time) {
	for k, l := range t.byState {
		if !now.Before(l.expires) {
			delete(t.byState, k)
		}
	}
	for k, l := range t.byFinish {
		if !now.Before(l.expires) {
			delete(t.byFinish, k)
		}
	}
}

// begin records a login the provider will answer with state.
func (t *federatedTable) begin(state, provider string, sess sessionKey, now time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.byState)+len(t.byFinish) >= t.max {
		t.sweepLocked(now)
	}
	if len(t.byState)+len(t.byFinish) >= t.max {
		return ErrBusy
	}
	var mine []string
	for k, l := range t.byState {
		if l.session == sess {
			mine = append(mine, k)
		}
	}
	if len(mine) >= perSession {
		oldest := mine[0]
		for _, k := range mine {
			if t.byState[k].expires.Before(t.byState[oldest].expires) {
				oldest = k
			}
		}
		delete(t.byState, oldest)
	}
	t.byState[state] = &federatedLogin{provider: provider, session: sess, expires: now.Add(federatedTTL)}
	return nil
}

// take removes and returns the live login of state.
func (t *federatedTable) take(state string, now time.Time) (federatedLogin, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byState[state]
	if l == nil {
		return federatedLogin{}, false
	}
	delete(t.byState, state)
	return *l, now.Before(l.expires)
}

// answered keeps a verified login for its browser's /login/finish and returns its token.
func (t *federatedTable) answered(l federatedLogin, now time.Time) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	tok := randomID()
	l.expires = now.Add(finishTTL)
	t.byFinish[tok] = &l
	return tok
}

// finish removes and returns the live answered login of token.
func (t *federatedTable) finish(token string, now time.Time) (federatedLogin, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byFinish[token]
	if l == nil {
		return federatedLogin{}, false
	}
	delete(t.byFinish, token)
	return *l, now.Before(l.expires)
}

func (t *federatedTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byState) + len(t.byFinish)
}
