package tlscrypt

import "slices"

// Wrapper converts control packets between the plain layout (opcode|sid|rest,
// see tls/packet) and the wire.
//
// Implementations are safe for concurrent use: a mutex guards the hash and
// cipher scratch state so that Unwrap needs no allocation. Goroutines that
// unwrap at high rates (a listener under a reset flood) should each own a
// Wrapper to avoid contending on it; construction is cheap.
type Wrapper interface {
	// Wrap appends the wire form of plain to dst, using replay packet-id
	// pid and timestamp ts. dst must not overlap plain.
	Wrap(dst, plain []byte, pid, ts uint32) ([]byte, error)
	// Unwrap authenticates (and decrypts) wire and appends the plain layout
	// to dst; returns the replay pid and ts it carried. The replay check is
	// the caller's (see ReplayWindow), after Unwrap succeeds. dst may be
	// wire[:0] to unwrap in place (wire is then clobbered even on error);
	// otherwise dst's spare capacity must not overlap wire. On error dst is
	// returned unextended.
	Unwrap(dst, wire []byte) (plain []byte, pid, ts uint32, err error)
	// Overhead is the number of bytes the wire form adds to the plain layout.
	Overhead() int
}

// Plain layout prefix shared by every wrapping: opcode|key_id and the
// sender's session id stay in the clear at the front (protocol §3.1).
const prefixLen = 1 + 8

// replayLen is the long-form replay packet-id plus timestamp.
const replayLen = 4 + 4

// NewPlain returns the identity Wrapper used without --tls-auth/--tls-crypt.
// It only checks that packets hold an opcode and session id; pid and ts are
// ignored on Wrap and returned as 0 by Unwrap.
func NewPlain() Wrapper { return plainWrapper{} }

type plainWrapper struct{}

func (plainWrapper) Wrap(dst, plain []byte, _, _ uint32) ([]byte, error) {
	if len(plain) < prefixLen {
		return dst, ErrPlainTooShort
	}
	return append(dst, plain...), nil
}

func (plainWrapper) Unwrap(dst, wire []byte) ([]byte, uint32, uint32, error) {
	if len(wire) < prefixLen {
		return dst, 0, 0, ErrPacketTooShort
	}
	// copy, not append: append would not handle dst == wire[:0].
	n := len(dst)
	dst = slices.Grow(dst, len(wire))[:n+len(wire)]
	copy(dst[n:], wire)
	return dst, 0, 0, nil
}

func (plainWrapper) Overhead() int { return 0 }

// errWrapper is returned by constructors given an invalid configuration, so
// that a bad config surfaces as an error on first use rather than a panic.
type errWrapper struct{ err error }

func (w errWrapper) Wrap(dst, _ []byte, _, _ uint32) ([]byte, error) { return dst, w.err }
func (w errWrapper) Unwrap(dst, _ []byte) ([]byte, uint32, uint32, error) {
	return dst, 0, 0, w.err
}
func (errWrapper) Overhead() int { return 0 }

// grow extends dst by n bytes, reallocating only when capacity is short, and
// returns the extended slice.
func grow(dst []byte, n int) []byte {
	return slices.Grow(dst, n)[:len(dst)+n]
}
