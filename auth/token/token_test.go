package token

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/state"
)

var (
	testKey = bytes.Repeat([]byte{0x42}, 32)
	t0      = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
)

func testClaims() Claims {
	return Claims{
		User:    "alice",
		Login:   t0,
		Expires: t0.Add(8 * time.Hour),
		ID:      [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
	}
}

func mustKeyring(t testing.TB, key []byte, old ...[]byte) *Keyring {
	t.Helper()
	k, err := NewKeyring(key, old...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestMintVerify(t *testing.T) {
	k := mustKeyring(t, testKey)
	c := testClaims()
	c.Login = c.Login.Add(300 * time.Millisecond) // dropped by Mint
	tok := k.Mint(c)
	if len(tok) != Len || !strings.HasPrefix(tok, Prefix) {
		t.Fatalf("token %q: length %d, want %d with prefix %s", tok, len(tok), Len, Prefix)
	}
	if len(tok) > 127 {
		t.Fatalf("token is %d characters, over a non-PKCS#11 client's 127", len(tok))
	}
	if strings.Contains(tok, "alice") {
		t.Fatal("token carries the user name")
	}
	got, err := k.Verify(tok, "alice", t0.Add(time.Hour))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	want := testClaims()
	if got.User != want.User || !got.Login.Equal(want.Login) || !got.Expires.Equal(want.Expires) || got.ID != want.ID {
		t.Fatalf("Verify = %+v, want %+v", got, want)
	}
	// Two logins give two tokens.
	c2 := testClaims()
	c2.ID[0] ^= 1
	if k.Mint(c2) == tok {
		t.Fatal("tokens of two logins are equal")
	}
}

func TestVerifyRefuses(t *testing.T) {
	k := mustKeyring(t, testKey)
	tok := k.Mint(testClaims())
	now := t0.Add(time.Hour)
	expires := testClaims().Expires

	// swap returns tok with character i changed to another base64url one.
	swap := func(i int) string {
		b := []byte(tok)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	cases := []struct {
		name, tok, user string
		now             time.Time
		want            error
	}{
		{"wrong user", tok, "bob", now, ErrInvalid},
		{"user differs in case", tok, "Alice", now, ErrInvalid},
		{"user with suffix", tok, "alice\x00", now, ErrInvalid},
		{"other key", mustKeyring(t, bytes.Repeat([]byte{1}, 32)).Mint(testClaims()), "alice", now, ErrInvalid},
		{"tampered payload", swap(len(Prefix) + 3), "alice", now, ErrInvalid},
		{"tampered mac", swap(len(tok) - 10), "alice", now, ErrInvalid},
		{"expired at the instant", tok, "alice", expires, ErrExpired},
		{"expired later", tok, "alice", expires.Add(time.Hour), ErrExpired},
		{"truncated", tok[:len(tok)-1], "alice", now, ErrMalformed},
		{"extended", tok + "A", "alice", now, ErrMalformed},
		{"empty", "", "alice", now, ErrMalformed},
		{"prefix only", Prefix, "alice", now, ErrMalformed},
		{"other prefix", "CVPN-AT2:" + tok[len(Prefix):], "alice", now, ErrMalformed},
		{"not base64url", tok[:len(tok)-1] + "+", "alice", now, ErrMalformed},
		{"huge", Prefix + strings.Repeat("A", 1<<16), "alice", now, ErrMalformed},
		{"huge user", tok, strings.Repeat("a", MaxUserLen+1), now, ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := k.Verify(c.tok, c.user, c.now)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
	for i := len(Prefix); i < len(tok)-1; i++ {
		if _, err := k.Verify(swap(i), "alice", now); !errors.Is(err, ErrInvalid) {
			t.Fatalf("token with character %d changed: err = %v, want ErrInvalid", i, err)
		}
	}
	// The last base64 character carries 2 unused bits: a non-canonical
	// encoding of the same bytes is refused, so each token has one spelling.
	last := tok[len(tok)-1]
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, last)
	alt := tok[:len(tok)-1] + string(alphabet[i^1])
	if _, err := k.Verify(alt, "alice", now); err == nil {
		t.Fatal("a token with changed padding bits verified")
	}
}

func TestKeyRotation(t *testing.T) {
	oldKey := bytes.Repeat([]byte{9}, 32)
	old := mustKeyring(t, oldKey)
	rotated := mustKeyring(t, testKey, oldKey)
	now := t0.Add(time.Hour)
	if _, err := rotated.Verify(old.Mint(testClaims()), "alice", now); err != nil {
		t.Fatalf("rotated keyring refuses a token of its old key: %v", err)
	}
	if _, err := old.Verify(rotated.Mint(testClaims()), "alice", now); !errors.Is(err, ErrInvalid) {
		t.Fatalf("new token verified under the old key only: err = %v", err)
	}
	if _, err := mustKeyring(t, testKey).Verify(old.Mint(testClaims()), "alice", now); !errors.Is(err, ErrInvalid) {
		t.Fatalf("retired key still accepted after removal: err = %v", err)
	}
}

func TestNewKeyringShortKey(t *testing.T) {
	if _, err := NewKeyring(make([]byte, MinKeyLen-1)); err == nil {
		t.Fatal("short key accepted")
	}
	if _, err := NewKeyring(testKey, make([]byte, 8)); err == nil {
		t.Fatal("short old key accepted")
	}
	key := bytes.Clone(testKey)
	k := mustKeyring(t, key)
	tok := k.Mint(testClaims())
	key[0] ^= 1 // the keyring keeps its own copy
	if _, err := k.Verify(tok, "alice", t0); err != nil {
		t.Fatalf("keyring shares the caller's key slice: %v", err)
	}
}

func TestLoadOrCreateKeyring(t *testing.T) {
	ctx := context.Background()
	st := state.NewMemory()
	sealer, err := state.NewSealer(bytes.Repeat([]byte{3}, state.SealKeySize))
	if err != nil {
		t.Fatal(err)
	}
	a, err := LoadOrCreateKeyring(ctx, st, sealer)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateKeyring(ctx, st, sealer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Verify(a.Mint(testClaims()), "alice", t0); err != nil {
		t.Fatalf("second load has another key: %v", err)
	}
	raw, err := st.Get(ctx, KeyBucket, KeyName)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, a.keys[0]) {
		t.Fatal("key stored unsealed")
	}
	otherSealer, _ := state.NewSealer(bytes.Repeat([]byte{4}, state.SealKeySize))
	if _, err := LoadOrCreateKeyring(ctx, st, otherSealer); !errors.Is(err, state.ErrUnseal) {
		t.Fatalf("load with another seal key: err = %v, want ErrUnseal", err)
	}
}

func FuzzVerify(f *testing.F) {
	k := mustKeyring(f, testKey)
	tok := k.Mint(testClaims())
	f.Add(tok, "alice")
	f.Add(tok[:40], "alice")
	f.Add(Prefix+strings.Repeat("_", Len-len(Prefix)), "")
	f.Add("", "alice")
	f.Fuzz(func(t *testing.T, s, user string) {
		c, err := k.Verify(s, user, t0)
		if err != nil {
			return
		}
		// Whatever verifies must be exactly the minted token for alice:
		// nobody without the key can produce another.
		if s != tok || user != "alice" {
			t.Fatalf("Verify accepted %q for %q", s, user)
		}
		if k.Mint(c) != s {
			t.Fatalf("claims %+v do not mint back to %q", c, s)
		}
	})
}
