package saml

import (
	"fmt"
	"sync"
	"time"

	crewsaml "github.com/crewjam/saml"
)

// replayCache is the library's AssertionReplayCache: each accepted assertion ID once, until
// the assertion could no longer be accepted anyway. The single-use pending logins already
// refuse a replayed response (its InResponseTo names a completed login); this is the second
// lock on the same door. Bounded: when full of unexpired IDs it refuses, which refuses the
// login rather than forgetting an ID.
type replayCache struct {
	max int
	now func() time.Time

	mu   sync.Mutex
	seen map[string]time.Time // assertion ID -> until; guarded by mu
}

func newReplayCache(max int, now func() time.Time) *replayCache {
	return &replayCache{max: max, now: now, seen: make(map[string]time.Time)}
}

// Consume implements crewsaml.AssertionReplayCache.
func (c *replayCache) Consume(id string, until time.Time) error {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.seen[id]; ok && now.Before(t) {
		return crewsaml.ErrAssertionReplayed
	}
	if len(c.seen) >= c.max {
		for k, t := range c.seen {
			if !now.Before(t) {
				delete(c.seen, k)
			}
		}
		if len(c.seen) >= c.max {
			return fmt.Errorf("replay cache holds %d unexpired assertion IDs", len(c.seen))
		}
	}
	c.seen[id] = until
	return nil
}
