package portal

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/cvpn/cvpn/auth/expiry"
	"github.com/cvpn/cvpn/state"
)

// limiter counts failures by key (a username or a client address) over a sliding window, in
// a state.Store, so that every node of a cluster sharing it counts the same failures. A key's
// record (at most max failure times) is kept under the SHA-256 of the key.
//
// It keeps at most entries keys: an index of the keys, sharded (indexShard keys a shard),
// lists each key with the end of its window; when a shard is full, the key whose window ends
// first is forgotten. Filling it takes entries distinct keys of failures within the window,
// which the per-address limit makes need thousands of addresses; so the bound costs an
// attacker far more than the attempts it could regain. A failure costs two compare-and-swaps
// (the shard, at most indexShard*40 bytes, and the key); a check one read. Two nodes failing
// the same key while a shard evicts it can leave its record without an index entry: it
// expires with its window.
type limiter struct {
	st      state.Store
	bucket  string // records: hex key hash -> failure times; index shards: "index#<n>"
	max     int
	window  time.Duration
	entries int
	shards  int
}

// indexShard is the most keys one shard of a limiter's index lists.
const indexShard = 128

func newLimiter(st state.Store, bucket string, max int, window time.Duration, entries int) *limiter {
	n := (entries + indexShard - 1) / indexShard
	if n < 1 {
		n = 1
	}
	return &limiter{st: st, bucket: bucket, max: max, window: window, entries: entries, shards: n}
}

func (l *limiter) recordKey(key string) (string, [32]byte) {
	h := sha256.Sum256([]byte("portal failures\x00" + key))
	return hex.EncodeToString(h[:]), h
}

// live returns the failures of p (8-byte Unix nanoseconds, oldest first) still in the window.
func (l *limiter) live(p []byte, now time.Time) []time.Time {
	var ts []time.Time
	for i := 0; i+8 <= len(p); i += 8 {
		t := time.Unix(0, int64(binary.BigEndian.Uint64(p[i:])))
		if now.Sub(t) < l.window {
			ts = append(ts, t)
		}
	}
	return ts
}

// limited reports whether key has used up its failures, and when the oldest expires. A
// store that cannot be read does not limit (the directory's own lockout still does).
func (l *limiter) limited(ctx context.Context, key string, now time.Time) (bool, time.Duration) {
	k, _ := l.recordKey(key)
	p, _, err := expiry.Get(ctx, l.st, l.bucket, k, now)
	if err != nil {
		return false, 0
	}
	ts := l.live(p, now)
	if len(ts) < l.max {
		return false, 0
	}
	return true, l.window - now.Sub(ts[0])
}

// fail records a failure of key.
func (l *limiter) fail(ctx context.Context, key string, now time.Time) {
	k, h := l.recordKey(key)
	until := now.Add(l.window)
	shard := fmt.Sprintf("index#%d", binary.BigEndian.Uint32(h[:4])%uint32(l.shards))
	per := (l.entries + l.shards - 1) / l.shards
	var evict []string
	_ = expiry.Update(ctx, l.st, l.bucket, shard, now, func(p []byte, _ time.Time, ok bool) ([]byte, time.Time, error) {
		evict = nil
		// Entries of 40 bytes: the key hash, then the end of its window; kept in order of
		// that end, so the first is evicted first.
		out := make([]byte, 0, len(p)+40)
		for i := 0; i+40 <= len(p); i += 40 {
			end := int64(binary.BigEndian.Uint64(p[i+32:]))
			if end > now.UnixNano() && string(p[i:i+32]) != string(h[:]) {
				out = append(out, p[i:i+40]...)
			}
		}
		for len(out)/40 >= per {
			evict = append(evict, hex.EncodeToString(out[:32]))
			out = out[40:]
		}
		out = append(out, h[:]...)
		out = binary.BigEndian.AppendUint64(out, uint64(until.UnixNano()))
		return out, until, nil
	})
	for _, e := range evict {
		_ = l.st.Delete(ctx, l.bucket, e)
	}
	_ = expiry.Update(ctx, l.st, l.bucket, k, now, func(p []byte, _ time.Time, ok bool) ([]byte, time.Time, error) {
		ts := l.live(p, now)
		if len(ts) >= l.max {
			ts = ts[len(ts)-l.max+1:]
		}
		out := make([]byte, 0, 8*(len(ts)+1))
		for _, t := range ts {
			out = binary.BigEndian.AppendUint64(out, uint64(t.UnixNano()))
		}
		out = binary.BigEndian.AppendUint64(out, uint64(now.UnixNano()))
		return out, until, nil
	})
}

// throttled reports whether key is over its limit, and if not counts one more: a limiter of
// max 1 lets one event a window through.
func (l *limiter) throttled(ctx context.Context, key string, now time.Time) bool {
	if over, _ := l.limited(ctx, key, now); over {
		return true
	}
	l.fail(ctx, key, now)
	return false
}

// forget clears key's failures (a user who signed in).
func (l *limiter) forget(ctx context.Context, key string) {
	k, _ := l.recordKey(key)
	_ = l.st.Delete(ctx, l.bucket, k)
}

// len is the number of keys with a record: for tests.
func (l *limiter) len() int {
	keys, _ := l.st.List(context.Background(), l.bucket)
	n := 0
	for _, k := range keys {
		if !strings.HasPrefix(k, "index#") {
			n++
		}
	}
	return n
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
