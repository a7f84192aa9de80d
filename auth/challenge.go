package auth

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cvpn/cvpn/auth/directory"
	"github.com/cvpn/cvpn/auth/expiry"
	"github.com/cvpn/cvpn/state"
)

// Bounds of the dynamic challenges waiting for an answer. A challenge is issued only after a
// correct password, so only holders of a password can fill the table; the bounds keep even
// them from growing it without limit. They hold across every node of the store, by ledgers
// changed with compare-and-swap (expiry.Reserve).
const (
	challengeTTL     = 3 * time.Minute
	maxChallenges    = 4096
	maxUserChallenge = 4
	// sweepEvery and sweepBatch bound the deleting of challenges never answered.
	sweepEvery = 30 * time.Second
	sweepBatch = 256
)

// Buckets of the store the pipeline uses.
const (
	// ChallengeBucket: expiry.Key("crv1 challenge", state id) -> the user (JSON).
	ChallengeBucket = "auth-challenge"
	// ChallengeBoundBucket: ledgers "all" (sharded: expiry.Shard) and "user/<Key of the name>".
	ChallengeBoundBucket = "auth-challenge-bound"
	// CodeFailureBucket: expiry.Key("mfa failures", user) -> wrong codes (8 bytes).
	CodeFailureBucket = "auth-code-failures"
)

var (
	errChallengeUnknown = errors.New("no such challenge (expired, answered already, or never issued)")
	errChallengeUser    = errors.New("the challenge was issued to another user")
	errChallengesFull   = errors.New("too many challenges pending")
)

// challenges are the CRV1 challenges issued and not yet answered, kept in a state.Store by
// the SHA-256 of their state id (the id is a bearer secret: it and the password's user make
// a login with a code). Each is answered at most once across every node of the store. The
// store is passed to each call, since a reload may change it.
type challenges struct {
	now     func() time.Time
	sweeper sweeper
}

func newChallenges(now func() time.Time) *challenges {
	return &challenges{now: now}
}

func challengeUserLedger(name string) string { return "user/" + expiry.Key("crv1 user", name) }

// put records a challenge for u, whose password was verified, and returns its state id.
func (c *challenges) put(ctx context.Context, st state.Store, u *directory.User) (string, error) {
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := base64.RawURLEncoding.EncodeToString(b[:])
	now := c.now()
	if c.sweeper.due(now) {
		for _, bucket := range []string{ChallengeBucket, ChallengeBoundBucket} {
			_, _ = expiry.Sweep(ctx, st, bucket, now, sweepBatch)
		}
	}
	until := now.Add(challengeTTL)
	// As in sso.Broker.Start: between the two reservations a user's place may be held and
	// given back, refusing a concurrent challenge early, never admitting one over a bound.
	key := expiry.Key("crv1 challenge", id)
	all, allPlaces := expiry.Shard("all", key, maxChallenges)
	mine := challengeUserLedger(u.Name)
	if err := expiry.Reserve(ctx, st, ChallengeBoundBucket, mine, now, until, maxUserChallenge); err != nil {
		return "", challengeFull(err)
	}
	if err := expiry.Reserve(ctx, st, ChallengeBoundBucket, all, now, until, allPlaces); err != nil {
		_ = expiry.Release(ctx, st, ChallengeBoundBucket, mine, now, until)
		return "", challengeFull(err)
	}
	v, err := json.Marshal(u)
	if err == nil {
		err = expiry.Put(ctx, st, ChallengeBucket, key, until, v)
	}
	if err != nil {
		c.release(ctx, st, key, u.Name, now, until)
		return "", fmt.Errorf("record the challenge: %w", err)
	}
	return id, nil
}

func challengeFull(err error) error {
	if errors.Is(err, expiry.ErrFull) {
		return errChallengesFull
	}
	return fmt.Errorf("record the challenge: %w", err)
}

func (c *challenges) release(ctx context.Context, st state.Store, key, user string, now, until time.Time) {
	all, _ := expiry.Shard("all", key, maxChallenges)
	_ = expiry.Release(ctx, st, ChallengeBoundBucket, challengeUserLedger(user), now, until)
	_ = expiry.Release(ctx, st, ChallengeBoundBucket, all, now, until)
}

// take removes and returns the user a live challenge was issued to; user must be that user
// (a mismatch leaves the challenge to its user).
func (c *challenges) take(ctx context.Context, st state.Store, id, user string) (*directory.User, error) {
	now := c.now()
	var (
		u     *directory.User
		until time.Time
	)
	key := expiry.Key("crv1 challenge", id)
	err := expiry.Update(ctx, st, ChallengeBucket, key, now,
		func(p []byte, t time.Time, ok bool) ([]byte, time.Time, error) {
			u, until = nil, t
			if !ok {
				return nil, time.Time{}, errChallengeUnknown
			}
			var got directory.User
			if err := json.Unmarshal(p, &got); err != nil {
				return nil, time.Time{}, err
			}
			if got.Name != user {
				return nil, time.Time{}, errChallengeUser
			}
			u = &got
			return nil, time.Time{}, nil
		})
	if err != nil {
		return nil, err
	}
	c.release(ctx, st, key, u.Name, now, until)
	return u, nil
}

// sweeper says when this node's periodic sweep is due.
type sweeper struct {
	mu   sync.Mutex // guards last
	last time.Time
}

func (s *sweeper) due(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.last) < sweepEvery {
		return false
	}
	s.last = now
	return true
}

// randRead fills b with random bytes.
func randRead(b []byte) (int, error) { return rand.Read(b) }

// Wrong one-time codes a user may enter before codes are refused unchecked for a while: a
// six-digit code with a window of three steps falls to about one guess in 333,333, so
// unlimited guessing by someone who holds the password would beat the second factor. The
// counts live in the store, so a lockout holds on every node: spreading guesses over nodes
// gains nothing. Only a user whose password was accepted gets a count, so the counts are
// bounded by the directory's users; the store's copy expires codeLockout after the last
// wrong code and is swept with the challenges.
const (
	maxCodeFailures = 5
	codeLockout     = 5 * time.Minute
)

var errTooManyCodes = errors.New("too many wrong codes")

// codeGuard counts wrong codes per user over a sliding lockout window.
type codeGuard struct {
	now     func() time.Time
	sweeper sweeper
}

func newCodeGuard(now func() time.Time) *codeGuard {
	return &codeGuard{now: now}
}

func failureKey(user string) string { return expiry.Key("mfa failures", user) }

// allow reports whether user may try a code now. A store that cannot be read refuses.
func (g *codeGuard) allow(ctx context.Context, st state.Store, user string) error {
	p, _, err := expiry.Get(ctx, st, CodeFailureBucket, failureKey(user), g.now())
	switch {
	case errors.Is(err, state.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("read wrong codes: %w", err)
	case len(p) == 8 && binary.BigEndian.Uint64(p) >= maxCodeFailures:
		return errTooManyCodes
	}
	return nil
}

// failed records a wrong code of user.
func (g *codeGuard) failed(ctx context.Context, st state.Store, user string) {
	now := g.now()
	if g.sweeper.due(now) {
		_, _ = expiry.Sweep(ctx, st, CodeFailureBucket, now, sweepBatch)
	}
	_ = expiry.Update(ctx, st, CodeFailureBucket, failureKey(user), now, func(p []byte, _ time.Time, ok bool) ([]byte, time.Time, error) {
		var n uint64
		if ok && len(p) == 8 {
			n = binary.BigEndian.Uint64(p)
		}
		return binary.BigEndian.AppendUint64(nil, n+1), now.Add(codeLockout), nil
	})
}

// succeeded forgets user's wrong codes.
func (g *codeGuard) succeeded(ctx context.Context, st state.Store, user string) {
	_ = st.Delete(ctx, CodeFailureBucket, failureKey(user))
}
