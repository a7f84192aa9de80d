// Package expiry keeps short-lived entries in a state.Store: pending logins, challenges and
// the like, which must expire on their own and be seen alike by every node sharing the store.
//
// Every value it writes starts with its absolute expiry time:
//
//	+---------------------------------+-------------+
//	| until (8 bytes, big-endian Unix | payload     |
//	| nanoseconds)                    |             |
//	+---------------------------------+-------------+
//
// so an expired entry reads as absent without its owner decoding the payload, and Sweep can
// delete expired keys of any bucket. Entries keyed by a bearer secret are keyed by Key (a
// hash), never the secret; Seal encrypts a payload under a key derived from the secret, so
// only the holder of the secret can read it back, not whoever reads the store.
//
// Ledgers (Reserve, Release) bound how many entries live at once, per key (a source address,
// a user) or in all, with one compare-and-swap per reservation, so a bound holds across nodes.
//
// It owns no bucket and no policy: callers choose buckets, lifetimes and bounds.
package expiry

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/cvpn/cvpn/state"
)

// Errors of the package.
var (
	ErrFull    = errors.New("expiry: bound reached")
	ErrCorrupt = errors.New("expiry: malformed value")
)

const headerLen = 8

// Key returns the store key of a bearer secret: hex SHA-256 of the purpose and the secret.
// The purpose keeps the same secret from keying two kinds of entries alike.
func Key(purpose, secret string) string {
	h := sha256.New()
	h.Write([]byte(purpose))
	h.Write([]byte{0})
	h.Write([]byte(secret))
	return hex.EncodeToString(h.Sum(nil))
}

// Encode lays out a value: until, then payload.
func Encode(until time.Time, payload []byte) []byte {
	v := make([]byte, headerLen+len(payload))
	binary.BigEndian.PutUint64(v, uint64(until.UnixNano()))
	copy(v[headerLen:], payload)
	return v
}

// Decode splits a value written by Encode; payload aliases v.
func Decode(v []byte) (until time.Time, payload []byte, err error) {
	if len(v) < headerLen {
		return time.Time{}, nil, ErrCorrupt
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v))), v[headerLen:], nil
}

// live reports whether an entry until is live at now.
func live(until, now time.Time) bool { return now.Before(until) }

// Get returns the payload of the live entry of key and its expiry; an expired entry is
// state.ErrNotFound.
func Get(ctx context.Context, st state.Store, bucket, key string, now time.Time) ([]byte, time.Time, error) {
	v, err := st.Get(ctx, bucket, key)
	if err != nil {
		return nil, time.Time{}, err
	}
	until, payload, err := Decode(v)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("%w: %s/%s", err, bucket, key)
	}
	if !live(until, now) {
		return nil, time.Time{}, state.ErrNotFound
	}
	return payload, until, nil
}

// Put sets key to payload until then.
func Put(ctx context.Context, st state.Store, bucket, key string, until time.Time, payload []byte) error {
	return st.Put(ctx, bucket, key, Encode(until, payload))
}

// Update atomically applies fn to the entry of key: fn(nil, zero, false) if it is absent or
// expired. fn returns the new payload and expiry; a zero until deletes the key. As with
// state.Store.Update, fn may run more than once and must have no side effects beyond its
// result and variables it sets afresh on every run.
func Update(ctx context.Context, st state.Store, bucket, key string, now time.Time,
	fn func(payload []byte, until time.Time, ok bool) ([]byte, time.Time, error)) error {
	return st.Update(ctx, bucket, key, func(old []byte, ok bool) ([]byte, error) {
		var (
			payload []byte
			until   time.Time
		)
		if ok {
			u, p, err := Decode(old)
			if err == nil && live(u, now) {
				payload, until = p, u
			} else {
				ok = false
			}
		}
		p, u, err := fn(payload, until, ok)
		if err != nil {
			return nil, err
		}
		if u.IsZero() {
			return nil, nil
		}
		return Encode(u, p), nil
	})
}

// Take atomically deletes key and returns its payload if it was live: the single use of an
// entry, across every node of the store.
func Take(ctx context.Context, st state.Store, bucket, key string, now time.Time) ([]byte, error) {
	var got []byte
	err := Update(ctx, st, bucket, key, now, func(p []byte, _ time.Time, ok bool) ([]byte, time.Time, error) {
		got = nil
		if !ok {
			return nil, time.Time{}, state.ErrNotFound
		}
		got = append([]byte(nil), p...)
		return nil, time.Time{}, nil
	})
	if err != nil {
		return nil, err
	}
	return got, nil
}

// Sweep deletes the expired keys of bucket, looking at no more than limit keys (all if
// limit <= 0), and returns how many it deleted. A key is deleted by a compare-and-swap that
// checks it is still expired, so an entry renewed meanwhile by another node stays.
func Sweep(ctx context.Context, st state.Store, bucket string, now time.Time, limit int) (int, error) {
	keys, err := st.List(ctx, bucket)
	if err != nil {
		return 0, err
	}
	if limit > 0 && len(keys) > limit {
		// Start at a random key, so that live keys at the front of the order do not hide
		// expired ones behind them from every sweep.
		var r [4]byte
		_, _ = rand.Read(r[:])
		start := int(binary.BigEndian.Uint32(r[:]) % uint32(len(keys)))
		keys = append(keys[start:], keys[:start]...)[:limit]
	}
	n := 0
	for _, k := range keys {
		v, err := st.Get(ctx, bucket, k)
		if errors.Is(err, state.ErrNotFound) {
			continue
		}
		if err != nil {
			return n, err
		}
		if until, _, err := Decode(v); err == nil && live(until, now) {
			continue
		}
		deleted := false
		err = st.Update(ctx, bucket, k, func(old []byte, ok bool) ([]byte, error) {
			deleted = false
			if !ok {
				return nil, nil
			}
			if until, _, err := Decode(old); err == nil && live(until, now) {
				return old, nil
			}
			deleted = true
			return nil, nil
		})
		if err != nil {
			return n, err
		}
		if deleted {
			n++
		}
	}
	return n, nil
}

// Reserve takes one of max places in the ledger of key until then: the ledger's value lists
// the expiry of every live place, so places free themselves when they expire, and Release
// frees one early. It returns ErrFull when max places are live. A ledger is one key changed
// by compare-and-swap, so its bound holds across nodes; its value grows to 8 bytes a place.
func Reserve(ctx context.Context, st state.Store, bucket, key string, now, until time.Time, max int) error {
	if max > (state.MaxValueLen-headerLen)/8 {
		max = (state.MaxValueLen - headerLen) / 8
	}
	return Update(ctx, st, bucket, key, now, func(p []byte, last time.Time, ok bool) ([]byte, time.Time, error) {
		places := livePlaces(p, now)
		if len(places)/8 >= max {
			return nil, time.Time{}, ErrFull
		}
		places = binary.BigEndian.AppendUint64(places, uint64(until.UnixNano()))
		if until.After(last) {
			last = until
		}
		return places, last, nil
	})
}

// Release frees the place of the ledger of key that Reserve took until then, if it is there.
func Release(ctx context.Context, st state.Store, bucket, key string, now, until time.Time) error {
	want := uint64(until.UnixNano())
	return Update(ctx, st, bucket, key, now, func(p []byte, last time.Time, ok bool) ([]byte, time.Time, error) {
		places := livePlaces(p, now)
		for i := 0; i+8 <= len(places); i += 8 {
			if binary.BigEndian.Uint64(places[i:]) == want {
				places = append(places[:i:i], places[i+8:]...)
				break
			}
		}
		if len(places) == 0 {
			return nil, time.Time{}, nil
		}
		return places, last, nil
	})
}

// shardPlaces is the most places one shard of a ledger holds: 4 KiB, so that a reservation
// reads and writes a few KiB whatever the bound.
const shardPlaces = 512

// Shard spreads a large ledger over keys of at most shardPlaces places: it returns the key of
// the shard of name that the entry id (any string that names the entry, such as its store
// key) falls in, and the places of each shard. The shards' places add up to at least max and
// less than max plus the number of shards; an entry may be refused while another shard has
// room, which under load near the bound refuses a little early, never late. Release with
// the same key.
func Shard(name, id string, max int) (key string, places int) {
	n := (max + shardPlaces - 1) / shardPlaces
	if n <= 1 {
		return name, max
	}
	h := sha256.Sum256([]byte(id))
	return fmt.Sprintf("%s#%d", name, binary.BigEndian.Uint32(h[:4])%uint32(n)), (max + n - 1) / n
}

// ShardedPlaces returns how many places of every shard of the ledger name are live.
func ShardedPlaces(ctx context.Context, st state.Store, bucket, name string, max int, now time.Time) (int, error) {
	n := (max + shardPlaces - 1) / shardPlaces
	if n <= 1 {
		return Places(ctx, st, bucket, name, now)
	}
	total := 0
	for i := 0; i < n; i++ {
		c, err := Places(ctx, st, bucket, fmt.Sprintf("%s#%d", name, i), now)
		if err != nil {
			return 0, err
		}
		total += c
	}
	return total, nil
}

// Places returns how many places of the ledger of key are live.
func Places(ctx context.Context, st state.Store, bucket, key string, now time.Time) (int, error) {
	p, _, err := Get(ctx, st, bucket, key, now)
	if errors.Is(err, state.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return len(livePlaces(p, now)) / 8, nil
}

// livePlaces returns a new slice of the places of p still live at now.
func livePlaces(p []byte, now time.Time) []byte {
	out := make([]byte, 0, len(p)+8)
	for i := 0; i+8 <= len(p); i += 8 {
		if now.UnixNano() < int64(binary.BigEndian.Uint64(p[i:])) {
			out = append(out, p[i:i+8]...)
		}
	}
	return out
}

// Seal encrypts payload under a key derived from secret and purpose (XChaCha20-Poly1305,
// random nonce): a reader of the store, who sees only Key(purpose, secret), cannot open it.
func Seal(purpose, secret string, payload []byte) []byte {
	aead := sealKey(purpose, secret)
	out := make([]byte, chacha20poly1305.NonceSizeX, chacha20poly1305.NonceSizeX+len(payload)+aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		panic("expiry: crypto/rand failed: " + err.Error()) // rand.Read does not fail on Linux
	}
	return aead.Seal(out, out, payload, []byte(purpose))
}

// Open reverses Seal.
func Open(purpose, secret string, sealed []byte) ([]byte, error) {
	aead := sealKey(purpose, secret)
	if len(sealed) < chacha20poly1305.NonceSizeX {
		return nil, ErrCorrupt
	}
	p, err := aead.Open(nil, sealed[:chacha20poly1305.NonceSizeX], sealed[chacha20poly1305.NonceSizeX:], []byte(purpose))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return p, nil
}

func sealKey(purpose, secret string) cipher.AEAD {
	// A different label from Key's, so the store key does not reveal the sealing key.
	k := sha256.Sum256([]byte("cvpn expiry seal\x00" + purpose + "\x00" + secret))
	aead, err := chacha20poly1305.NewX(k[:])
	if err != nil {
		panic("expiry: " + err.Error()) // the key is always KeySize bytes
	}
	return aead
}
