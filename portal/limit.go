package portal

import (
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// limiter counts failures by key (a username or a client address) over a sliding window.
// It keeps at most entries keys: when full it forgets keys whose failures all expired, and
// if none did, an arbitrary key (map order). Filling it takes entries distinct keys of
// failures within the window, which the per-address limit makes need thousands of
// addresses; so the bound costs an attacker far more than the attempts it could regain.
type limiter struct {
	max     int
	window  time.Duration
	entries int

	mu sync.Mutex
	m  map[string][]time.Time // failure times, oldest first, at most max

	lastSweep time.Time
}

func newLimiter(max int, window time.Duration, entries int) *limiter {
	return &limiter{max: max, window: window, entries: entries, m: map[string][]time.Time{}}
}

// liveLocked returns key's failures still in the window.
func (l *limiter) liveLocked(key string, now time.Time) []time.Time {
	ts := l.m[key]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) >= l.window {
		i++
	}
	if i == len(ts) {
		delete(l.m, key)
		return nil
	}
	if i > 0 {
		ts = append(ts[:0], ts[i:]...)
		l.m[key] = ts
	}
	return ts
}

// limited reports whether key has used up its failures, and when the oldest expires.
func (l *limiter) limited(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ts := l.liveLocked(key, now)
	if len(ts) < l.max {
		return false, 0
	}
	return true, l.window - now.Sub(ts[0])
}

// fail records a failure of key.
func (l *limiter) fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ts := l.liveLocked(key, now)
	if ts == nil && len(l.m) >= l.entries {
		if now.Sub(l.lastSweep) >= time.Second {
			l.lastSweep = now
			for k := range l.m {
				l.liveLocked(k, now) // forgets k if its failures expired
			}
		}
		for k := range l.m {
			if len(l.m) < l.entries {
				break
			}
			delete(l.m, k)
		}
	}
	if len(ts) >= l.max {
		ts = ts[1:]
	}
	l.m[key] = append(ts, now)
}

// throttled reports whether key is over its limit, and if not counts one more: a limiter of
// max 1 lets one event a window through.
func (l *limiter) throttled(key string, now time.Time) bool {
	if over, _ := l.limited(key, now); over {
		return true
	}
	l.fail(key, now)
	return false
}

// forget clears key's failures (a user who signed in).
func (l *limiter) forget(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.m, key)
}

func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// clientAddr is the request's client address as the limits count it: an IPv4 address, or
// the /64 of an IPv6 address (one host usually holds a whole /64). The portal is reached
// directly, so RemoteAddr is the client; forwarded headers are not trusted.
func clientAddr(r *http.Request) string {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return "unknown"
	}
	return addrKey(ap.Addr())
}

// addrKey is an address as the limits count it (see clientAddr).
func addrKey(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// userKey is how a username is counted: case-folded, as directories compare names.
func userKey(u string) string { return strings.ToLower(strings.TrimSpace(u)) }
