package auth

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"sync"
	"time"

	"github.com/cvpn/cvpn/auth/directory"
)

// Bounds of the dynamic challenges waiting for an answer. A challenge is issued only after a
// correct password, so only holders of a password can fill the table; the bounds keep even
// them from growing it without limit.
const (
	challengeTTL     = 3 * time.Minute
	maxChallenges    = 4096
	maxUserChallenge = 4
)

var (
	errChallengeUnknown = errors.New("no such challenge (expired, answered already, or never issued)")
	errChallengeUser    = errors.New("the challenge was issued to another user")
	errChallengesFull   = errors.New("too many challenges pending")
)

// challenges are the CRV1 challenges issued and not yet answered, by state id. Each is
// answered at most once.
type challenges struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[string]challengeEntry
}

type challengeEntry struct {
	user    *directory.User
	expires time.Time
}

func newChallenges(now func() time.Time) *challenges {
	return &challenges{now: now, m: make(map[string]challengeEntry)}
}

// put records a challenge for u, whose password was verified, and returns its state id.
func (c *challenges) put(u *directory.User) (string, error) {
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := base64.RawURLEncoding.EncodeToString(b[:])
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	mine := 0
	for k, e := range c.m {
		switch {
		case !now.Before(e.expires):
			delete(c.m, k)
		case e.user.Name == u.Name:
			mine++
		}
	}
	if len(c.m) >= maxChallenges || mine >= maxUserChallenge {
		return "", errChallengesFull
	}
	c.m[id] = challengeEntry{user: u, expires: now.Add(challengeTTL)}
	return id, nil
}

// take removes and returns the user a live challenge was issued to; user must be that user.
func (c *challenges) take(id, user string) (*directory.User, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || !c.now().Before(e.expires) {
		delete(c.m, id)
		return nil, errChallengeUnknown
	}
	if e.user.Name != user {
		return nil, errChallengeUser
	}
	delete(c.m, id)
	return e.user, nil
}

// randRead fills b with random bytes.
func randRead(b []byte) (int, error) { return rand.Read(b) }

// Wrong one-time codes a user may enter before codes are refused unchecked for a while: a
// six-digit code with a window of three steps falls to about one guess in 333,333, so
// unlimited guessing by someone who holds the password would beat the second factor.
const (
	maxCodeFailures = 5
	codeLockout     = 5 * time.Minute
	maxLockedUsers  = 16384
)

var errTooManyCodes = errors.New("too many wrong codes")

// codeGuard counts wrong codes per user over a sliding lockout window.
type codeGuard struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[string]codeFailures
}

type codeFailures struct {
	n    int
	last time.Time
}

func newCodeGuard(now func() time.Time) *codeGuard {
	return &codeGuard{now: now, m: make(map[string]codeFailures)}
}

// allow reports whether user may try a code now.
func (g *codeGuard) allow(user string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	f, ok := g.m[user]
	if !ok {
		return nil
	}
	if g.now().Sub(f.last) >= codeLockout {
		delete(g.m, user)
		return nil
	}
	if f.n >= maxCodeFailures {
		return errTooManyCodes
	}
	return nil
}

// failed records a wrong code of user.
func (g *codeGuard) failed(user string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	if len(g.m) >= maxLockedUsers {
		for k, f := range g.m {
			if now.Sub(f.last) >= codeLockout {
				delete(g.m, k)
			}
		}
		if len(g.m) >= maxLockedUsers {
			return // every entry is live: new users are not tracked until one expires
		}
	}
	f := g.m[user]
	if now.Sub(f.last) >= codeLockout {
		f.n = 0
	}
	f.n++
	f.last = now
	g.m[user] = f
}

// succeeded forgets user's wrong codes.
func (g *codeGuard) succeeded(user string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.m, user)
}
