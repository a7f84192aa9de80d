// Package cookie owns the stateless HMAC cookie of the OpenVPN 2.6 UDP 3-way
// handshake (docs/protocol.md §4): the server's session id in its reply to a client reset
// is a MAC of the client's address, its session id and a coarse time slot, so
// the server keeps no state until the client echoes the cookie back from the
// same address.
//
// It does not parse or send packets, rate-limit replies, or decide when the
// cookie path applies; the UDP listener does.
package cookie

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
)

// SlotSeconds is the cookie time slot: OpenVPN's (hand-window+1)/2 with the
// default 60 s hand-window.
const SlotSeconds = 30

// Valid accepts cookies made in slots now-2 .. now+1: a cookie lives 60-90 s,
// and a clock step of up to one slot backwards is tolerated.
const (
	slotsBack    = 2
	slotsForward = 1
)

// HMAC-SHA256 over a fixed-size message, computed with sha256.Sum256 on
// stack buffers so Make and Valid neither allocate nor share mutable state.
const (
	blockSize = 64 // SHA-256 block size
	// msg = slot(8) || ip(16) || port(2) || client sid(8)
	msgLen = 8 + 16 + 2 + 8
)

// Jar makes and checks cookies with one secret. It is immutable after
// NewJar and safe for concurrent use.
type Jar struct {
	ipad, opad [blockSize]byte // secret XOR 0x36.., secret XOR 0x5c.. (RFC 2104)
	now        func() time.Time
}

// NewJar returns a Jar keyed with secret (32 bytes from crypto/rand, chosen
// by the caller, per process) that reads the time from now (time.Now in
// production).
func NewJar(secret [32]byte, now func() time.Time) *Jar {
	j := &Jar{now: now}
	for i := range blockSize {
		var b byte
		if i < len(secret) {
			b = secret[i]
		}
		j.ipad[i] = b ^ 0x36
		j.opad[i] = b ^ 0x5c
	}
	return j
}

// Make returns the cookie for a client reset from addr with session id
// clientSID: the first 8 bytes of
// HMAC-SHA256(secret, slot || addr ip (16 bytes, IPv4 as ::ffff:a.b.c.d) || port || clientSID)
// with slot = unix time / 30. The result is used as the server session id,
// so it is never all-zero.
func (j *Jar) Make(addr netip.AddrPort, clientSID packet.SessionID) packet.SessionID {
	return j.make(j.slot(), addr, clientSID)
}

// Valid reports whether cookie was made by Make for addr and clientSID in
// the current slot, one of the two before it, or the one after it. The
// comparison is constant-time and checks every slot.
func (j *Jar) Valid(addr netip.AddrPort, clientSID, cookie packet.SessionID) bool {
	now := j.slot()
	ok := 0
	for s := now - slotsBack; s <= now+slotsForward; s++ {
		c := j.make(s, addr, clientSID)
		ok |= subtle.ConstantTimeCompare(c[:], cookie[:])
	}
	return ok == 1
}

func (j *Jar) slot() int64 {
	return j.now().Unix() / SlotSeconds
}

func (j *Jar) make(slot int64, addr netip.AddrPort, clientSID packet.SessionID) packet.SessionID {
	var inner [blockSize + msgLen]byte
	copy(inner[:], j.ipad[:])
	m := inner[blockSize:]
	binary.BigEndian.PutUint64(m[0:], uint64(slot))
	ip := addr.Addr().As16() // zero Addr gives all zeros; zone is ignored
	copy(m[8:], ip[:])
	binary.BigEndian.PutUint16(m[24:], addr.Port())
	copy(m[26:], clientSID[:])
	innerSum := sha256.Sum256(inner[:])

	var outer [blockSize + sha256.Size]byte
	copy(outer[:], j.opad[:])
	copy(outer[blockSize:], innerSum[:])
	mac := sha256.Sum256(outer[:])

	return truncate(mac[:])
}

// truncate returns the first 8 bytes of mac as a session id, mapping the
// all-zero value (which means "none" on the wire, protocol §3.2) to 00..01. The
// mapping is deterministic, so Valid recomputes the same value.
func truncate(mac []byte) packet.SessionID {
	var c packet.SessionID
	copy(c[:], mac)
	if c.IsZero() {
		c[len(c)-1] = 1
	}
	return c
}
