// Package keymethod encodes and decodes the key-method-2 messages that client
// and server exchange as their first TLS application data
// (docs/protocol.md §6), parses the client's peer-info (protocol §6.3), builds
// the server's OCC options string (protocol §6.2), and splits the
// NUL-terminated text messages that follow on the control channel
// (protocol §10).
//
// It does not derive keys (tunnel/datacrypto does, from the randoms here),
// authenticate credentials, or negotiate ciphers; it only moves bytes to and
// from structured values.
package keymethod

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Limits on string fields, counted as on the wire: the length includes the
// trailing NUL.
const (
	// MaxOptionsLen is the largest OCC options string ParseClient accepts.
	// OpenVPN's own limit is 512 (TLS_OPTIONS_LEN); we are lenient because the
	// options string is advisory. A server must send at most 512.
	MaxOptionsLen = 1024
	// MaxUserPassLen bounds username and password: OpenVPN's USER_PASS_LEN
	// in builds with pkcs11 (Debian's), large enough for auth-tokens and
	// static-challenge "SCRV1:" passwords.
	MaxUserPassLen = 4096
	// MaxPeerInfoLen bounds peer-info: the whole message must fit in one TLS
	// record (16 KiB), and --push-peer-info with UV_ variables can be long.
	MaxPeerInfoLen = 16384
)

// keyMethod2 is the key-method byte; only its low nibble is checked, the
// upper one is reserved for flags.
const (
	keyMethod2    = 0x02
	keyMethodMask = 0x0f
)

// ClientMessage is the client's key-method-2 block (protocol §6.1):
//
//	[4]  00 00 00 00 (ignored)     [1]  key method 0x02
//	[48] pre_master                [32] random1       [32] random2
//	[2+n] options   [2+n] username   [2+n] password   [2+n] peer-info
//
// A string is a uint16 length that counts a trailing NUL, then the bytes and
// the NUL; 00 00 is an absent string. Username, password and peer-info may be
// missing altogether in messages from old peers.
type ClientMessage struct {
	PreMaster   [48]byte
	Random1     [32]byte
	Random2     [32]byte
	Options     string
	Username    string
	Password    string
	PeerInfo    string
	HasUserPass bool // username or password field was present (auth-user-pass or auth-token)
}

// ServerMessage is the server's key-method-2 block: no pre_master, and the
// username, password and peer-info fields are sent empty (00 00 each).
type ServerMessage struct {
	Random1 [32]byte
	Random2 [32]byte
	Options string
}

// reader walks a message, distinguishing "needs more bytes" from "invalid".
type reader struct {
	b   []byte
	off int
}

func (r *reader) done() bool { return r.off == len(r.b) }

func (r *reader) bytes(dst []byte) error {
	if len(r.b)-r.off < len(dst) {
		return ErrIncomplete
	}
	r.off += copy(dst, r.b[r.off:])
	return nil
}

// string reads one length-prefixed string of at most max bytes (NUL
// included). present is false for an absent (zero-length) string. The length
// is checked before its bytes arrive, so an oversize field fails at once.
func (r *reader) string(field string, max int) (s string, present bool, err error) {
	if len(r.b)-r.off < 2 {
		return "", false, ErrIncomplete
	}
	n := int(binary.BigEndian.Uint16(r.b[r.off:]))
	if n > max {
		return "", false, fmt.Errorf("%w: %s is %d bytes, limit %d", ErrFieldTooLong, field, n, max)
	}
	if len(r.b)-r.off-2 < n {
		return "", false, ErrIncomplete
	}
	data := r.b[r.off+2 : r.off+2+n]
	r.off += 2 + n
	if n == 0 {
		return "", false, nil
	}
	if data[n-1] != 0 {
		return "", false, fmt.Errorf("%w: %s is not NUL-terminated", ErrBadString, field)
	}
	if i := bytes.IndexByte(data[:n-1], 0); i >= 0 {
		return "", false, fmt.Errorf("%w: %s has a NUL at byte %d", ErrBadString, field, i)
	}
	return string(data[:n-1]), true, nil
}

// header reads the leading zero word (ignored, as OpenVPN does) and checks
// the key method.
func (r *reader) header() error {
	if len(r.b)-r.off < 5 {
		return ErrIncomplete
	}
	km := r.b[r.off+4]
	r.off += 5
	if km&keyMethodMask != keyMethod2 {
		return fmt.Errorf("%w: %d (only key method 2 exists since OpenVPN 2.5)", ErrKeyMethod, km&keyMethodMask)
	}
	return nil
}

// ParseClient parses the client's key-method-2 block. It returns
// ErrIncomplete, unwrapped, while b is a valid prefix; the caller appends the
// next TLS read and calls again.
//
// The message may end right after the options string or after the password
// (peers that send no credentials or no peer-info fields), so those two
// prefixes parse as complete messages. OpenVPN writes the whole block with one
// SSL_write, so the first TLS record normally holds all of it.
func ParseClient(b []byte) (ClientMessage, error) {
	var m ClientMessage
	r := reader{b: b}
	if err := r.header(); err != nil {
		return ClientMessage{}, err
	}
	for _, dst := range [][]byte{m.PreMaster[:], m.Random1[:], m.Random2[:]} {
		if err := r.bytes(dst); err != nil {
			return ClientMessage{}, err
		}
	}
	var err error
	if m.Options, _, err = r.string("options string", MaxOptionsLen); err != nil {
		return ClientMessage{}, err
	}
	if r.done() {
		return m, nil
	}
	var hasUser, hasPass bool
	if m.Username, hasUser, err = r.string("username", MaxUserPassLen); err != nil {
		return ClientMessage{}, err
	}
	if m.Password, hasPass, err = r.string("password", MaxUserPassLen); err != nil {
		return ClientMessage{}, err
	}
	m.HasUserPass = hasUser || hasPass
	if r.done() {
		return m, nil
	}
	if m.PeerInfo, _, err = r.string("peer-info", MaxPeerInfoLen); err != nil {
		return ClientMessage{}, err
	}
	if !r.done() {
		return ClientMessage{}, fmt.Errorf("%w: %d bytes after peer-info", ErrTrailingData, len(b)-r.off)
	}
	return m, nil
}

// ParseServer parses the server's key-method-2 block, as a client does. The
// message is complete once the options string is; whatever follows (the
// three empty strings OpenVPN sends) is ignored, as OpenVPN clients do.
func ParseServer(b []byte) (ServerMessage, error) {
	var m ServerMessage
	r := reader{b: b}
	if err := r.header(); err != nil {
		return ServerMessage{}, err
	}
	for _, dst := range [][]byte{m.Random1[:], m.Random2[:]} {
		if err := r.bytes(dst); err != nil {
			return ServerMessage{}, err
		}
	}
	var err error
	if m.Options, _, err = r.string("options string", MaxOptionsLen); err != nil {
		return ServerMessage{}, err
	}
	return m, nil
}

// appendString writes s in OpenVPN's string encoding: length including the
// NUL, the bytes, the NUL. s must be shorter than 65535 bytes and hold no NUL.
func appendString(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)+1))
	dst = append(dst, s...)
	return append(dst, 0)
}

// appendAbsent writes an absent string (00 00).
func appendAbsent(dst []byte) []byte { return append(dst, 0, 0) }

// Append appends the server's key-method-2 block to dst: 4 zero bytes, key
// method 2, random1, random2, the options string, and three absent strings.
// Options must be at most 511 bytes (OpenVPN clients reject more) and hold no
// NUL; Append does not check.
func (m *ServerMessage) Append(dst []byte) []byte {
	dst = append(dst, 0, 0, 0, 0, keyMethod2)
	dst = append(dst, m.Random1[:]...)
	dst = append(dst, m.Random2[:]...)
	dst = appendString(dst, m.Options)
	dst = appendAbsent(dst)  // username
	dst = appendAbsent(dst)  // password
	return appendAbsent(dst) // peer-info
}

// Append appends the client's key-method-2 block to dst, as an OpenVPN 2.6
// client writes it: username and password are written (even if empty) when
// HasUserPass is set and as absent strings otherwise (Username and Password
// are then ignored); an empty PeerInfo is written as an absent string. Strings
// must hold no NUL and fit the Max*Len limits; Append does not check.
func (m *ClientMessage) Append(dst []byte) []byte {
	dst = append(dst, 0, 0, 0, 0, keyMethod2)
	dst = append(dst, m.PreMaster[:]...)
	dst = append(dst, m.Random1[:]...)
	dst = append(dst, m.Random2[:]...)
	dst = appendString(dst, m.Options)
	if m.HasUserPass {
		dst = appendString(dst, m.Username)
		dst = appendString(dst, m.Password)
	} else {
		dst = appendAbsent(dst)
		dst = appendAbsent(dst)
	}
	if m.PeerInfo == "" {
		return appendAbsent(dst)
	}
	return appendString(dst, m.PeerInfo)
}
