package packet

import (
	"encoding/binary"
	"encoding/hex"
)

// SessionID is the 8-byte random identifier each side picks for a session
// (protocol §3.2). It is never all-zero on the wire.
type SessionID [8]byte

// IsZero reports whether s is all-zero, which no valid peer sends.
func (s SessionID) IsZero() bool { return s == SessionID{} }

// String returns s as 16 lowercase hex digits.
func (s SessionID) String() string { return hex.EncodeToString(s[:]) }

// MaxAcks is the largest ack count a control packet may carry
// (RELIABLE_ACK_SIZE in OpenVPN).
const MaxAcks = 8

// Sizes of the plain layout fields (protocol §3.1).
const (
	headerLen    = 1 // opcode|key_id
	sessionIDLen = 8
	ackCountLen  = 1
	ackLen       = 4
	packetIDLen  = 4
	fixedLen     = headerLen + sessionIDLen + ackCountLen // present in every control packet
)

// Control is a control packet in the plain layout (protocol §3.1), i.e. after
// tls-auth/tls-crypt is removed:
//
//	[1]  opcode<<3 | key_id
//	[8]  SessionID           sender's own session id
//	[1]  NumAcks n           0..8
//	[4n] Acks                acked message packet-ids
//	[8]  RemoteSessionID     only if n > 0
//	[4]  PacketID            message packet-id, absent for P_ACK_V1
//	[..] Payload             TLS ciphertext, TLVs on resets, or empty
type Control struct {
	Opcode          Opcode
	KeyID           uint8
	SessionID       SessionID // sender's own session id
	NumAcks         int       // valid range 0..MaxAcks
	Acks            [MaxAcks]uint32
	RemoteSessionID SessionID // present on the wire only when NumAcks > 0
	PacketID        uint32    // message packet-id; absent for AckV1
	Payload         []byte    // aliases the parsed buffer
}

// ParseControl parses a control packet in the plain layout. b starts at the
// opcode byte. It rejects data and unknown opcodes, ack counts above MaxAcks
// and truncated packets. Payload aliases b. ParseControl never allocates.
//
// For P_ACK_V1 any bytes after the acks are returned as Payload (OpenVPN
// ignores them); the caller decides whether to drop such packets.
func ParseControl(b []byte) (Control, error) {
	var c Control
	if len(b) < headerLen {
		return c, ErrTruncated
	}
	c.Opcode, c.KeyID = SplitHeader(b[0])
	if !c.Opcode.IsControl() {
		return c, ErrNotControl
	}
	if len(b) < fixedLen {
		return c, ErrTruncated
	}
	copy(c.SessionID[:], b[headerLen:])
	n := int(b[headerLen+sessionIDLen])
	if n > MaxAcks {
		return c, ErrTooManyAcks
	}
	off := fixedLen
	if n > 0 {
		if len(b) < off+n*ackLen+sessionIDLen {
			return c, ErrTruncated
		}
		for i := range n {
			c.Acks[i] = binary.BigEndian.Uint32(b[off:])
			off += ackLen
		}
		c.NumAcks = n
		copy(c.RemoteSessionID[:], b[off:])
		off += sessionIDLen
	}
	if c.Opcode != AckV1 {
		if len(b) < off+packetIDLen {
			return c, ErrTruncated
		}
		c.PacketID = binary.BigEndian.Uint32(b[off:])
		off += packetIDLen
	}
	c.Payload = b[off:len(b):len(b)]
	return c, nil
}

// numAcks is NumAcks clamped to 0..MaxAcks, so that Append and Len never index
// out of range on a malformed value.
func (c *Control) numAcks() int {
	return min(max(c.NumAcks, 0), MaxAcks)
}

// Len returns the length of the plain-layout encoding of c.
func (c *Control) Len() int {
	n := fixedLen
	if a := c.numAcks(); a > 0 {
		n += a*ackLen + sessionIDLen
	}
	if c.Opcode != AckV1 {
		n += packetIDLen
	}
	return n + len(c.Payload)
}

// Append appends the plain-layout encoding of c to dst and returns the
// extended slice. NumAcks outside 0..MaxAcks is clamped into that range.
// RemoteSessionID is written only when there are acks and PacketID only when
// the opcode is not P_ACK_V1.
func (c *Control) Append(dst []byte) []byte {
	dst = append(dst, Header(c.Opcode, c.KeyID))
	dst = append(dst, c.SessionID[:]...)
	a := c.numAcks()
	dst = append(dst, byte(a))
	for i := range a {
		dst = binary.BigEndian.AppendUint32(dst, c.Acks[i])
	}
	if a > 0 {
		dst = append(dst, c.RemoteSessionID[:]...)
	}
	if c.Opcode != AckV1 {
		dst = binary.BigEndian.AppendUint32(dst, c.PacketID)
	}
	return append(dst, c.Payload...)
}
