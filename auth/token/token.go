// Package token mints and verifies cvpn's auth-tokens: the opaque strings the
// server pushes with "auth-token" after a successful login, which the client
// then sends as its password on renegotiation and reconnect instead of the
// user's (possibly one-time) credentials.
//
// A token is Prefix followed by the unpadded base64url encoding of
//
//	 0               8               16                              32
//	+---------------+---------------+-------------------------------+
//	| login (int64) | expires(int64)| login id (16 bytes)           |
//	+---------------+---------------+-------------------------------+
//	| HMAC-SHA256 (32 bytes)                                        |
//	+---------------------------------------------------------------+
//
// Times are Unix seconds, big-endian. The MAC covers Prefix, the 32-byte
// payload and the user name, so a token is bound to its user without carrying
// the name: it stays 95 characters long, under the 127 a client built without
// PKCS#11 can hold (USER_PASS_LEN in OpenVPN's src/openvpn/misc.h).
//
// The package owns the format and the key ring; it does not decide token
// lifetimes or revocation, which are the admission pipeline's.
package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
)

// Prefix starts every token, so a password can be recognised as one.
const Prefix = "CVPN-AT1:"

const (
	payloadLen = 8 + 8 + 16
	macLen     = sha256.Size
	// Len is the length of every token this package mints.
	Len = len(Prefix) + 86 // payload and MAC: 64 bytes, 86 unpadded base64url characters

	// MinKeyLen is the shortest HMAC key NewKeyring accepts.
	MinKeyLen = 32
	// MaxUserLen bounds the user name a token can be bound to.
	MaxUserLen = 1024
)

var b64 = base64.RawURLEncoding

// Claims is what a token asserts.
type Claims struct {
	User    string    // the user the token was minted for; not carried in the token
	Login   time.Time // when the user authenticated with full credentials
	Expires time.Time // the token is refused at and after this instant
	ID      [16]byte  // the login's identifier, shared by every renewal
}

// Keyring holds the HMAC-SHA256 keys: the first mints and verifies, the
// others (retired keys) only verify, so a key can be rotated without
// logging everyone out. A Keyring is immutable and safe for concurrent use.
type Keyring struct {
	keys [][]byte
}

// NewKeyring returns a Keyring that mints with key and also accepts tokens
// minted with any of old. Every key must be at least MinKeyLen bytes.
func NewKeyring(key []byte, old ...[]byte) (*Keyring, error) {
	k := &Keyring{}
	for i, key := range append([][]byte{key}, old...) {
		if len(key) < MinKeyLen {
			return nil, fmt.Errorf("token: key %d is %d bytes, want at least %d", i, len(key), MinKeyLen)
		}
		k.keys = append(k.keys, append([]byte(nil), key...))
	}
	return k, nil
}

func mac(key []byte, payload []byte, user string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(Prefix))
	h.Write(payload)
	h.Write([]byte(user))
	return h.Sum(nil)
}

// Mint returns the token for c. Sub-second parts of the times are dropped.
func (k *Keyring) Mint(c Claims) string {
	buf := make([]byte, payloadLen, payloadLen+macLen)
	binary.BigEndian.PutUint64(buf[0:], uint64(c.Login.Unix()))
	binary.BigEndian.PutUint64(buf[8:], uint64(c.Expires.Unix()))
	copy(buf[16:], c.ID[:])
	buf = append(buf, mac(k.keys[0], buf, c.User)...)
	return Prefix + b64.EncodeToString(buf)
}

// Verify checks that tok is a token this Keyring minted for user and that it
// has not expired at now, and returns its claims. Errors wrap ErrMalformed,
// ErrInvalid (bad MAC, which includes a token of another user), or ErrExpired.
//
// The MAC is checked before anything the token claims is believed; every
// comparison of secret material is constant-time.
func (k *Keyring) Verify(tok, user string, now time.Time) (Claims, error) {
	if len(tok) != Len {
		return Claims{}, fmt.Errorf("%w: %d characters, want %d", ErrMalformed, len(tok), Len)
	}
	if !strings.HasPrefix(tok, Prefix) {
		return Claims{}, fmt.Errorf("%w: no %s prefix", ErrMalformed, Prefix)
	}
	if len(user) > MaxUserLen {
		return Claims{}, fmt.Errorf("%w: user name of %d bytes", ErrInvalid, len(user))
	}
	raw, err := b64.Strict().DecodeString(tok[len(Prefix):])
	if err != nil || len(raw) != payloadLen+macLen {
		return Claims{}, fmt.Errorf("%w: not base64url of %d bytes", ErrMalformed, payloadLen+macLen)
	}
	payload, got := raw[:payloadLen], raw[payloadLen:]
	ok := false
	for _, key := range k.keys {
		// Check every key, so timing does not tell which one matched.
		if hmac.Equal(mac(key, payload, user), got) {
			ok = true
		}
	}
	if !ok {
		return Claims{}, ErrInvalid
	}
	c := Claims{
		User:    user,
		Login:   time.Unix(int64(binary.BigEndian.Uint64(payload[0:])), 0),
		Expires: time.Unix(int64(binary.BigEndian.Uint64(payload[8:])), 0),
	}
	copy(c.ID[:], payload[16:])
	if !now.Before(c.Expires) {
		return Claims{}, fmt.Errorf("%w at %s", ErrExpired, c.Expires.UTC().Format(time.RFC3339))
	}
	return c, nil
}
