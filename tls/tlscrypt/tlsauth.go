package tlscrypt

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"
	"slices"
	"strings"
	"sync"
)

// Key directions for NewTLSAuth (--tls-auth file [dir], --key-direction).
const (
	// DirectionNormal (0): send with keys[0].hmac, receive with keys[1].hmac.
	// The usual server setting.
	DirectionNormal = 0
	// DirectionInverse (1): send with keys[1].hmac, receive with keys[0].hmac.
	// The usual client setting.
	DirectionInverse = 1
	// DirectionBidirectional (-1, direction absent): keys[0].hmac both ways.
	DirectionBidirectional = -1
)

// AuthDigest returns the tls-auth HMAC hash OpenVPN's --auth names: SHA1 (also for ""), SHA256
// or SHA512, in any case.
func AuthDigest(name string) (func() hash.Hash, error) {
	switch strings.ToUpper(name) {
	case "", "SHA1":
		return sha1.New, nil
	case "SHA256":
		return sha256.New, nil
	case "SHA512":
		return sha512.New, nil
	}
	return nil, fmt.Errorf("tlscrypt: tls-auth digest %q is not SHA1, SHA256 or SHA512", name)
}

// tls-auth wire layout (protocol §3.5), H = digest size:
//
//	[1]  opcode|key_id
//	[8]  own session id
//	[H]  HMAC(pid||time||opcode||sid||rest)
//	[4]  replay pid
//	[4]  replay time
//	[..] rest: ack count onwards, as in the plain layout
const maxDigest = 64 // size of the .hmac slot in struct key

// NewTLSAuth returns the --tls-auth Wrapper for k (protocol §3.5). direction is
// DirectionNormal, DirectionInverse or DirectionBidirectional; h is the
// --auth digest (sha1.New, sha256.New, sha512.New; nil means SHA1, OpenVPN's
// default). The HMAC key is the first digest-size bytes of the chosen .hmac
// slot. An invalid configuration yields a Wrapper whose methods return
// ErrNilKey, ErrBadDirection or ErrDigestTooLong.
func NewTLSAuth(k *StaticKey, direction int, h func() hash.Hash) Wrapper {
	if k == nil {
		return errWrapper{ErrNilKey}
	}
	if h == nil {
		h = sha1.New
	}
	size := h().Size()
	if size > maxDigest {
		return errWrapper{ErrDigestTooLong}
	}
	var send, recv int
	switch direction {
	case DirectionNormal:
		send, recv = slotHMAC0, slotHMAC1
	case DirectionInverse:
		send, recv = slotHMAC1, slotHMAC0
	case DirectionBidirectional:
		send, recv = slotHMAC0, slotHMAC0
	default:
		return errWrapper{ErrBadDirection}
	}
	return &tlsAuth{
		size:    size,
		sendMAC: hmac.New(h, k[send:send+size]),
		recvMAC: hmac.New(h, k[recv:recv+size]),
	}
}

type tlsAuth struct {
	size int // digest size H; immutable

	mu      sync.Mutex // guards the fields below
	sendMAC hash.Hash
	recvMAC hash.Hash
	replay  [replayLen]byte
	sum     [maxDigest]byte
}

func (w *tlsAuth) Overhead() int { return w.size + replayLen }

func (w *tlsAuth) Wrap(dst, plain []byte, pid, ts uint32) ([]byte, error) {
	if len(plain) < prefixLen {
		return dst, ErrPlainTooShort
	}
	w.mu.Lock()
	defer w.mu.Unlock()

	binary.BigEndian.PutUint32(w.replay[0:], pid)
	binary.BigEndian.PutUint32(w.replay[4:], ts)
	w.sendMAC.Reset()
	w.sendMAC.Write(w.replay[:])
	w.sendMAC.Write(plain)
	mac := w.sendMAC.Sum(w.sum[:0])

	dst = slices.Grow(dst, len(plain)+w.size+replayLen)
	dst = append(dst, plain[:prefixLen]...)
	dst = append(dst, mac...)
	dst = append(dst, w.replay[:]...)
	return append(dst, plain[prefixLen:]...), nil
}

func (w *tlsAuth) Unwrap(dst, wire []byte) ([]byte, uint32, uint32, error) {
	replayOff := prefixLen + w.size
	restOff := replayOff + replayLen
	if len(wire) < restOff {
		return dst, 0, 0, ErrPacketTooShort
	}
	w.mu.Lock()
	defer w.mu.Unlock()

	// Authenticate before touching dst (which may alias wire).
	w.recvMAC.Reset()
	w.recvMAC.Write(wire[replayOff:restOff])
	w.recvMAC.Write(wire[:prefixLen])
	w.recvMAC.Write(wire[restOff:])
	if !hmac.Equal(w.recvMAC.Sum(w.sum[:0]), wire[prefixLen:replayOff]) {
		return dst, 0, 0, ErrAuthFailed
	}
	pid := binary.BigEndian.Uint32(wire[replayOff:])
	ts := binary.BigEndian.Uint32(wire[replayOff+4:])

	n := len(dst)
	dst = grow(dst, len(wire)-w.size-replayLen)
	out := dst[n:]
	copy(out, wire[:prefixLen])
	copy(out[prefixLen:], wire[restOff:]) // memmove: safe for dst == wire[:0]
	return dst, pid, ts, nil
}
