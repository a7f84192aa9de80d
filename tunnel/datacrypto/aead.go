package datacrypto

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// Sizes of the AEAD data packet fields (protocol §8.2).
const (
	packetIDSize   = 4
	tagSize        = 16
	implicitIVSize = 8
	nonceSize      = packetIDSize + implicitIVSize

	// Overhead is what Seal adds beyond the opcode header: the packet-id and
	// the tag.
	Overhead = packetIDSize + tagSize

	// HeaderV1 and HeaderV2 are the opcode header lengths of P_DATA_V1
	// (opcode|key_id) and P_DATA_V2 (opcode|key_id, 24-bit peer-id).
	HeaderV1 = 1
	HeaderV2 = 4
)

// Role says which side of the session a Keys is for, which selects the
// key2 direction used to send and to receive (protocol §7).
type Role uint8

const (
	// Server sends with the server→client keys and receives with the
	// client→server keys (OpenVPN KEY_DIRECTION_INVERSE).
	Server Role = iota + 1
	// Client sends with client→server and receives with server→client
	// (KEY_DIRECTION_NORMAL).
	Client
)

// Keys holds one key_state's data-channel keys for both directions.
//
// Keys is immutable after NewKeys; Seal and Open may be called concurrently
// from any number of goroutines. Packet-id allocation and the replay window are
// the caller's.
type Keys struct {
	cipher Cipher
	send   cipher.AEAD
	recv   cipher.AEAD
	sendIV [implicitIVSize]byte
	recvIV [implicitIVSize]byte
}

// NewKeys builds the data-channel keys of role r from key2 for cipher c.
// k is copied, so the caller may wipe it afterwards.
func NewKeys(c Cipher, k *Key2, r Role) (*Keys, error) {
	if !c.valid() {
		return nil, fmt.Errorf("%w: %v", ErrUnsupportedCipher, c)
	}
	if k == nil {
		return nil, fmt.Errorf("datacrypto: new keys: nil key2")
	}
	sendCipher, sendHMAC, recvCipher, recvHMAC := s2cCipher, s2cHMAC, c2sCipher, c2sHMAC
	switch r {
	case Server:
	case Client:
		sendCipher, sendHMAC, recvCipher, recvHMAC = recvCipher, recvHMAC, sendCipher, sendHMAC
	default:
		return nil, fmt.Errorf("datacrypto: new keys: invalid role %d", r)
	}
	ks := &Keys{cipher: c}
	var err error
	if ks.send, err = newAEAD(c, k[sendCipher:sendCipher+c.KeySize()]); err != nil {
		return nil, fmt.Errorf("datacrypto: new keys: send %v: %w", c, err)
	}
	if ks.recv, err = newAEAD(c, k[recvCipher:recvCipher+c.KeySize()]); err != nil {
		return nil, fmt.Errorf("datacrypto: new keys: receive %v: %w", c, err)
	}
	copy(ks.sendIV[:], k[sendHMAC:])
	copy(ks.recvIV[:], k[recvHMAC:])
	return ks, nil
}

func newAEAD(c Cipher, key []byte) (cipher.AEAD, error) {
	if c == ChaCha20Poly1305 {
		return chacha20poly1305.New(key)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// Cipher reports the cipher the keys were built for.
func (k *Keys) Cipher() Cipher { return k.cipher }

// Seal protects one data packet in place and returns it (protocol §8.2).
//
// On entry buf[:hdr] holds the opcode header the caller wrote (hdr is HeaderV1
// or HeaderV2), buf[hdr:hdr+Overhead] is scratch, and buf[hdr+Overhead:] is the
// plaintext. cap(buf) must leave 16 bytes of tail room past len(buf); Seal
// writes the AEAD tag there before moving it to its wire position, so the
// result is built without copying the payload:
//
//	V2: [0]=0x48|kid [1..3]=peer-id [4..7]=packet-id [8..23]=tag [24..]=ciphertext
//	V1: [0]=0x30|kid                [1..4]=packet-id [5..20]=tag [21..]=ciphertext
//	nonce = packet-id (BE) || implicit IV;  AAD = V2: header || packet-id, V1: packet-id
//
// The returned slice aliases buf and has length len(buf). If buf lacks the
// tail room, Seal copies it into a new buffer (one allocation) rather than
// fail. packetID must be non-zero for the peer to accept the packet, and the
// plaintext should be non-empty (OpenVPN rejects empty ciphertext).
//
// Seal panics if hdr is not HeaderV1 or HeaderV2 or len(buf) < hdr+Overhead:
// both are the caller's programming errors, never properties of network input.
func (k *Keys) Seal(buf []byte, hdr int, packetID uint32) []byte {
	if hdr != HeaderV1 && hdr != HeaderV2 {
		panic("datacrypto: Seal: header length must be 1 or 4")
	}
	if len(buf) < hdr+Overhead {
		panic("datacrypto: Seal: buffer shorter than header+Overhead")
	}
	if cap(buf)-len(buf) < tagSize {
		nb := make([]byte, len(buf), len(buf)+tagSize)
		copy(nb, buf)
		buf = nb
	}
	pid := buf[hdr : hdr+packetIDSize]
	binary.BigEndian.PutUint32(pid, packetID)

	// The tag slot is free until the end, so it hosts the nonce: passing a
	// stack array through the cipher.AEAD interface would make it escape.
	tagSlot := buf[hdr+packetIDSize : hdr+Overhead]
	nonce := tagSlot[tagSize-nonceSize:]
	copy(nonce, pid)
	copy(nonce[packetIDSize:], k.sendIV[:])

	plaintext := buf[hdr+Overhead:]
	sealed := k.send.Seal(plaintext[:0], nonce, plaintext, aad(buf, hdr))
	// sealed = ciphertext || tag, the tag in the tail room; move the tag in
	// front of the ciphertext where OpenVPN expects it.
	copy(tagSlot, sealed[len(plaintext):])
	return buf[:hdr+Overhead+len(plaintext)]
}

// Open authenticates and decrypts one data packet in place (protocol §8.2). pkt
// starts at the opcode byte and hdr is HeaderV1 or HeaderV2. It returns the
// packet-id (for the caller's replay window, checked after authentication) and
// the plaintext, which aliases pkt.
//
// Open overwrites pkt (and, when present, 16 bytes of tail room past len(pkt));
// on error the contents of pkt are unspecified. With cap(pkt) >= len(pkt)+16 it
// does not allocate; otherwise it shifts the ciphertext to make room and
// allocates once. Errors are the package sentinels, unwrapped.
func (k *Keys) Open(pkt []byte, hdr int) (packetID uint32, plaintext []byte, err error) {
	if hdr != HeaderV1 && hdr != HeaderV2 {
		return 0, nil, ErrHeader
	}
	if len(pkt) < hdr+Overhead+1 {
		return 0, nil, ErrShortPacket
	}
	pid := pkt[hdr : hdr+packetIDSize]
	packetID = binary.BigEndian.Uint32(pid)
	if cap(pkt)-len(pkt) < tagSize {
		return k.openShifted(pkt, hdr, packetID)
	}

	// Make ciphertext || tag contiguous by copying the tag into the tail
	// room, then reuse the vacated tag slot for the nonce.
	n := len(pkt) - hdr - Overhead
	tagSlot := pkt[hdr+packetIDSize : hdr+Overhead]
	ct := pkt[hdr+Overhead : len(pkt)+tagSize]
	copy(ct[n:], tagSlot)
	nonce := tagSlot[tagSize-nonceSize:]
	copy(nonce, pid)
	copy(nonce[packetIDSize:], k.recvIV[:])

	plaintext, err = k.recv.Open(ct[:0], nonce, ct, aad(pkt, hdr))
	if err != nil {
		return 0, nil, ErrAuth
	}
	return packetID, plaintext, nil
}

// openShifted is Open for a packet without tail room: it moves the
// ciphertext back over the tag slot and appends the tag, so the plaintext
// starts Overhead-tagSize bytes after the header.
func (k *Keys) openShifted(pkt []byte, hdr int, packetID uint32) (uint32, []byte, error) {
	var tag [tagSize]byte
	tagSlot := pkt[hdr+packetIDSize : hdr+Overhead]
	copy(tag[:], tagSlot)
	ct := pkt[hdr+packetIDSize:]
	n := copy(ct, pkt[hdr+Overhead:])
	copy(ct[n:], tag[:])

	nonce := make([]byte, nonceSize)
	copy(nonce, pkt[hdr:hdr+packetIDSize])
	copy(nonce[packetIDSize:], k.recvIV[:])

	plaintext, err := k.recv.Open(ct[:0], nonce, ct, aad(pkt, hdr))
	if err != nil {
		return 0, nil, ErrAuth
	}
	return packetID, plaintext, nil
}

// aad returns the additional authenticated data of a packet: for P_DATA_V2 the
// four header bytes and the packet-id, for P_DATA_V1 the packet-id alone (the
// opcode byte is not authenticated, protocol §8.2). Both are contiguous in the
// packet.
func aad(pkt []byte, hdr int) []byte {
	if hdr == HeaderV2 {
		return pkt[:HeaderV2+packetIDSize]
	}
	return pkt[hdr : hdr+packetIDSize]
}
