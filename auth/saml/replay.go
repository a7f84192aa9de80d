package saml

import (
	"context"
	"errors"
	"fmt"
	"time"

	crewsaml "github.com/crewjam/saml"

	"github.com/cvpn/cvpn/auth/expiry"
	"github.com/cvpn/cvpn/state"
)

// Buckets of the store the SP uses.
const (
	// LoginBucket: expiry.Key("saml state", Login.State) -> the AuthnRequest ID, until the
	// login expires.
	LoginBucket = "saml-login"
	// AssertionBucket: expiry.Key("saml assertion", ID) -> nothing, until the assertion
	// could no longer be accepted anyway.
	AssertionBucket = "saml-assertion"
	// BoundBucket holds the ledgers "login" and "assertion" (sharded: expiry.Shard).
	BoundBucket = "saml-bound"

	sweepEvery = 30 * time.Second
	sweepBatch = 256
)

// replayCache is the library's AssertionReplayCache: each accepted assertion ID once, across
// every node of the store, until the assertion could no longer be accepted anyway. The
// single-use pending logins already refuse a replayed response (its InResponseTo names a
// completed login); this is the second lock on the same door. Bounded by a ledger of
// MaxPendingLogins places: when full of unexpired IDs it refuses, which refuses the login
// rather than forgetting an ID. One is made per Complete, to carry its request's context.
type replayCache struct {
	ctx context.Context
	st  state.Store
	max int
	now func() time.Time
}

var errAssertionSeen = errors.New("saml: assertion ID seen")

// Consume implements crewsaml.AssertionReplayCache.
func (c *replayCache) Consume(id string, until time.Time) error {
	now := c.now()
	if !now.Before(until) {
		until = now.Add(time.Second) // the library refuses it anyway; keep the key valid
	}
	key := expiry.Key("saml assertion", id)
	if _, _, err := expiry.Get(c.ctx, c.st, AssertionBucket, key, now); err == nil {
		return crewsaml.ErrAssertionReplayed
	} else if !errors.Is(err, state.ErrNotFound) {
		return fmt.Errorf("replay cache: %v", err)
	}
	ledger, places := expiry.Shard("assertion", key, c.max)
	if err := expiry.Reserve(c.ctx, c.st, BoundBucket, ledger, now, until, places); err != nil {
		if errors.Is(err, expiry.ErrFull) {
			return fmt.Errorf("replay cache holds %d unexpired assertion IDs", c.max)
		}
		return fmt.Errorf("replay cache: %v", err)
	}
	err := expiry.Update(c.ctx, c.st, AssertionBucket, key, now, func(_ []byte, _ time.Time, ok bool) ([]byte, time.Time, error) {
		if ok {
			return nil, time.Time{}, errAssertionSeen
		}
		return nil, until, nil
	})
	switch {
	case errors.Is(err, errAssertionSeen):
		_ = expiry.Release(c.ctx, c.st, BoundBucket, ledger, now, until)
		return crewsaml.ErrAssertionReplayed
	case err != nil:
		return fmt.Errorf("replay cache: %v", err)
	}
	return nil
}
