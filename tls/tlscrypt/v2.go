package tlscrypt

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"
)

// tls-crypt-v2 (protocol §3.7, OpenVPN doc/tls-crypt-v2.txt) gives every client
// its own tls-crypt key Kc. The server keeps no per-client state: the client
// sends Kc wrapped with the server key after its first packets, and the
// server unwraps it.
//
// Server key: one OpenVPN struct key, 128 bytes.
//
//	[0:64]   cipher slot: Ke = [0:32]  AES-256-CTR key
//	[64:128] HMAC slot:   Ka = [64:96] HMAC-SHA256 key
//
// Wrapped client key (WKc), with L = len(WKc) as uint16 big-endian:
//
//	[32]    T = HMAC-SHA256(Ka, L || Kc || metadata)
//	[256+m] AES-256-CTR(Ke, IV = T[0:16], Kc || metadata)
//	[2]     L
//
// The construction is SIV-like: the tag is the IV, so the WKc for a given
// (Kc, metadata, server key) is deterministic.
const (
	// V2ServerKeySize is the size of a tls-crypt-v2 server key.
	V2ServerKeySize = 128
	// V2MaxWKcLen is the largest WKc OpenVPN reads (TLS_CRYPT_V2_MAX_WKC_LEN).
	V2MaxWKcLen = 1024
	// V2MinWKcLen is the length of a WKc with empty metadata: tag, Kc and
	// the length field.
	V2MinWKcLen = tagLen + StaticKeySize + 2
	// V2MaxMetadataLen is the longest metadata, type byte included, that
	// keeps WKc within V2MaxWKcLen (TLS_CRYPT_V2_MAX_METADATA_LEN).
	V2MaxMetadataLen = V2MaxWKcLen - V2MinWKcLen // 734
)

// Metadata types: the first byte of the metadata wrapped with Kc. OpenVPN
// hands the type and the rest to --tls-crypt-v2-verify.
const (
	// V2MetadataUser is free-form metadata (openvpn --genkey
	// tls-crypt-v2-client FILE BASE64).
	V2MetadataUser byte = 0x00
	// V2MetadataTimestamp is followed by the key's creation time as 8-byte
	// big-endian unix seconds; openvpn --genkey writes it when given no
	// metadata.
	V2MetadataTimestamp byte = 0x01
)

const (
	v2ServerPEMType = "OpenVPN tls-crypt-v2 server key"
	v2ClientPEMType = "OpenVPN tls-crypt-v2 client key"
)

// Opcodes whose packets carry a WKc after the tls-crypt wrapped part
// (protocol §2, ssl_pkt.h).
const (
	opHardResetClientV3 = 10 // P_CONTROL_HARD_RESET_CLIENT_V3
	opControlWKCV1      = 11 // P_CONTROL_WKC_V1
)

// Early negotiation (protocol §3.7 and §4 step 5, ssl_pkt.h EARLY_NEG_*). A
// tls-crypt-v2 client that can resend its WKc starts its tls-crypt replay
// counter at EarlyNegStart, so its V3 reset carries replay pid
// EarlyNegStart+1 (retransmissions +2, +3, ...). A server that answers with
// a stateless cookie reset appends EarlyNegTLV to that reset's payload (after
// the message packet-id); the client then sends its next reliable packet as
// P_CONTROL_WKC_V1 so that the server can recover Kc without having kept it.
const (
	EarlyNegStart uint32 = 0x0F000000
	earlyNegMask  uint32 = 0xFF000000

	// TLVTypeEarlyNegFlags is the TLV type of the early negotiation flags
	// (TLV_TYPE_EARLY_NEG_FLAGS); its value is a uint16 of flags.
	TLVTypeEarlyNegFlags uint16 = 0x0001
	// EarlyNegFlagResendWKc asks the client to send its WKc again with its
	// next packet (EARLY_NEG_FLAG_RESEND_WKC).
	EarlyNegFlagResendWKc uint16 = 0x0001
)

// EarlyNegTLV is the payload a server appends to its
// P_CONTROL_HARD_RESET_SERVER_V2 answering an early-negotiation V3 reset:
//
//	00 01  type   TLVTypeEarlyNegFlags
//	00 02  length 2
//	00 01  flags  EarlyNegFlagResendWKc
//
// Treat it as read-only.
var EarlyNegTLV = []byte{0x00, 0x01, 0x00, 0x02, 0x00, 0x01}

// EarlyNegotiation reports whether a client's replay packet-id pid (from its
// V3 reset) says it supports early negotiation: the top byte is 0x0F.
func EarlyNegotiation(pid uint32) bool { return pid&earlyNegMask == EarlyNegStart }

// V2ServerKey is a tls-crypt-v2 server key: Ke = [0:32] for AES-256-CTR and
// Ka = [64:96] for HMAC-SHA256 of the 128-byte key. Its methods are safe for
// concurrent use; a mutex guards the HMAC and scratch state so that
// rejecting a forged WKc does not allocate.
type V2ServerKey struct {
	raw   [V2ServerKeySize]byte // immutable
	block cipher.Block          // AES-256 with Ke; immutable

	mu      sync.Mutex // guards the fields below
	mac     hash.Hash  // HMAC-SHA256 with Ka
	tag     [tagLen]byte
	ctr, ks [aes.BlockSize]byte
	plain   [V2MaxWKcLen]byte
}

// Offsets of Ke and Ka in a server key (tls_crypt.c: one struct key, the
// first 32 bytes of its cipher and HMAC slots).
const (
	v2KeOff = 0
	v2KaOff = 64
)

func newV2ServerKey(raw []byte) *V2ServerKey {
	k := &V2ServerKey{}
	copy(k.raw[:], raw)
	k.block = mustAES(k.raw[v2KeOff : v2KeOff+keyLen])
	k.mac = hmac.New(sha256.New, k.raw[v2KaOff:v2KaOff+keyLen])
	return k
}

// ParseV2ServerKey parses a server key file as openvpn --genkey
// tls-crypt-v2-server writes it: a "-----BEGIN OpenVPN tls-crypt-v2 server
// key-----" PEM block holding exactly 128 bytes. Text around the block is
// ignored. Errors wrap ErrV2KeyPEM or ErrV2KeyLength.
func ParseV2ServerKey(data []byte) (*V2ServerKey, error) {
	raw, err := decodeV2PEM(data, v2ServerPEMType)
	if err != nil {
		return nil, fmt.Errorf("tlscrypt: tls-crypt-v2 server key: %w", err)
	}
	if len(raw) != V2ServerKeySize {
		return nil, fmt.Errorf("tlscrypt: tls-crypt-v2 server key: %w: %d bytes, want %d",
			ErrV2KeyLength, len(raw), V2ServerKeySize)
	}
	return newV2ServerKey(raw), nil
}

// GenerateV2ServerKey returns a new server key filled from rand (normally
// crypto/rand.Reader).
func GenerateV2ServerKey(rand io.Reader) (*V2ServerKey, error) {
	var raw [V2ServerKeySize]byte
	if _, err := io.ReadFull(rand, raw[:]); err != nil {
		return nil, fmt.Errorf("tlscrypt: generate tls-crypt-v2 server key: %w", err)
	}
	return newV2ServerKey(raw[:]), nil
}

// Marshal returns k in the PEM format openvpn --genkey tls-crypt-v2-server
// writes (base64 in 64-column lines, each line ending in "\n").
func (k *V2ServerKey) Marshal() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: v2ServerPEMType, Bytes: k.raw[:]})
}

// V2ClientKey is what a tls-crypt-v2 client holds: its own tls-crypt key Kc,
// used exactly like a --tls-crypt key (client side: NewTLSCrypt(&k.Key,
// false); the server uses NewTLSCrypt(kc, true)), and the wrapped key WKc it
// appends to its V3 reset and WKC_V1 packets.
type V2ClientKey struct {
	Key StaticKey
	WKc []byte
}

// ParseV2ClientKey parses a client key file as openvpn --genkey
// tls-crypt-v2-client writes it: a "-----BEGIN OpenVPN tls-crypt-v2 client
// key-----" PEM block holding Kc (256 bytes) followed by WKc. The WKc is
// opaque to a client, but it must end in its own length as a big-endian
// uint16 and be at most 1024 bytes, or no server can find it in a packet.
// Errors wrap ErrV2KeyPEM or ErrV2KeyLength.
func ParseV2ClientKey(data []byte) (*V2ClientKey, error) {
	raw, err := decodeV2PEM(data, v2ClientPEMType)
	if err != nil {
		return nil, fmt.Errorf("tlscrypt: tls-crypt-v2 client key: %w", err)
	}
	if len(raw) < StaticKeySize+2 || len(raw) > StaticKeySize+V2MaxWKcLen {
		return nil, fmt.Errorf("tlscrypt: tls-crypt-v2 client key: %w: %d bytes, want %d to %d",
			ErrV2KeyLength, len(raw), StaticKeySize+2, StaticKeySize+V2MaxWKcLen)
	}
	k := &V2ClientKey{WKc: raw[StaticKeySize:]}
	copy(k.Key[:], raw)
	if l := int(binary.BigEndian.Uint16(k.WKc[len(k.WKc)-2:])); l != len(k.WKc) {
		return nil, fmt.Errorf("tlscrypt: tls-crypt-v2 client key: %w: wrapped key is %d bytes but ends in length %d",
			ErrV2KeyLength, len(k.WKc), l)
	}
	return k, nil
}

// Marshal returns k in the PEM format openvpn --genkey tls-crypt-v2-client
// writes.
func (k *V2ClientKey) Marshal() []byte {
	b := make([]byte, 0, StaticKeySize+len(k.WKc))
	b = append(append(b, k.Key[:]...), k.WKc...)
	return pem.EncodeToMemory(&pem.Block{Type: v2ClientPEMType, Bytes: b})
}

// decodeV2PEM returns the bytes of the first PEM block of type typ in data.
// The errors name what was found instead.
func decodeV2PEM(data []byte, typ string) ([]byte, error) {
	var other string
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == typ {
			return b.Bytes, nil
		}
		if other == "" {
			other = b.Type
		}
	}
	begin := "-----BEGIN " + typ + "-----"
	switch {
	case bytes.Contains(data, []byte(begin)):
		return nil, fmt.Errorf("%w: %s block is not valid PEM (bad base64 or no END line)", ErrV2KeyPEM, begin)
	case other != "":
		return nil, fmt.Errorf("%w: found a %q block, want %q", ErrV2KeyPEM, other, typ)
	}
	return nil, fmt.Errorf("%w: no %s line", ErrV2KeyPEM, begin)
}

// V2TimestampMetadata returns timestamp metadata for t: V2MetadataTimestamp
// followed by t as 8-byte big-endian unix seconds. This is what openvpn
// --genkey tls-crypt-v2-client wraps when given no metadata.
func V2TimestampMetadata(t time.Time) []byte {
	return binary.BigEndian.AppendUint64([]byte{V2MetadataTimestamp}, uint64(t.Unix()))
}

// V2UserMetadata returns user metadata: V2MetadataUser followed by user.
func V2UserMetadata(user []byte) []byte {
	return append([]byte{V2MetadataUser}, user...)
}

// V2MetadataTime returns the time carried by timestamp metadata. ok is false
// if md is not of type V2MetadataTimestamp or too short. Like OpenVPN, bytes
// after the 8-byte timestamp are ignored.
func V2MetadataTime(md []byte) (t time.Time, ok bool) {
	if len(md) < 1+8 || md[0] != V2MetadataTimestamp {
		return time.Time{}, false
	}
	return time.Unix(int64(binary.BigEndian.Uint64(md[1:])), 0), true
}

// NewV2ClientKey generates a client key Kc from rand and wraps it, with
// metadata, under server. metadata starts with its type byte
// (V2MetadataUser, V2MetadataTimestamp); nil or empty metadata means
// V2TimestampMetadata(time.Now()), as openvpn --genkey does. Metadata longer
// than V2MaxMetadataLen is refused with ErrV2MetadataTooLong.
func NewV2ClientKey(rand io.Reader, server *V2ServerKey, metadata []byte) (*V2ClientKey, error) {
	if server == nil {
		return nil, fmt.Errorf("tlscrypt: new tls-crypt-v2 client key: %w", ErrNilKey)
	}
	if len(metadata) == 0 {
		metadata = V2TimestampMetadata(time.Now())
	}
	if len(metadata) > V2MaxMetadataLen {
		return nil, fmt.Errorf("tlscrypt: new tls-crypt-v2 client key: %w (%d bytes)", ErrV2MetadataTooLong, len(metadata))
	}
	k := new(V2ClientKey)
	if _, err := io.ReadFull(rand, k.Key[:]); err != nil {
		return nil, fmt.Errorf("tlscrypt: new tls-crypt-v2 client key: %w", err)
	}
	k.WKc = server.wrapClientKey(&k.Key, metadata)
	return k, nil
}

// wrapClientKey returns WKc for kc and metadata; len(metadata) must be at
// most V2MaxMetadataLen.
func (k *V2ServerKey) wrapClientKey(kc *StaticKey, metadata []byte) []byte {
	n := V2MinWKcLen + len(metadata)
	wkc := make([]byte, n)
	body := wkc[tagLen : n-2]
	copy(body, kc[:])
	copy(body[StaticKeySize:], metadata)
	binary.BigEndian.PutUint16(wkc[n-2:], uint16(n))

	k.mu.Lock()
	defer k.mu.Unlock()
	k.mac.Reset()
	k.mac.Write(wkc[n-2:])
	k.mac.Write(body)
	k.mac.Sum(wkc[:0])
	k.xorCTR(body, body, wkc[:aes.BlockSize])
	return wkc
}

// UnwrapClientKey authenticates and decrypts wkc (as SplitWKc returns it)
// and returns the client's key Kc and the metadata wrapped with it (type byte
// first; empty if the WKc carried none). The metadata check (age, revocation)
// is the caller's. On failure it returns ErrWKcLength or ErrWKcAuth as is and
// does not allocate. wkc is not modified.
func (k *V2ServerKey) UnwrapClientKey(wkc []byte) (kc *StaticKey, metadata []byte, err error) {
	n := len(wkc)
	if n < V2MinWKcLen || n > V2MaxWKcLen || int(binary.BigEndian.Uint16(wkc[n-2:])) != n {
		return nil, nil, ErrWKcLength
	}
	k.mu.Lock()
	defer k.mu.Unlock()

	// The tag covers the plaintext, so decrypt into scratch first and let
	// nothing out unless the tag matches.
	plain := k.plain[:n-tagLen-2]
	k.xorCTR(plain, wkc[tagLen:n-2], wkc[:aes.BlockSize])
	k.mac.Reset()
	k.mac.Write(wkc[n-2:])
	k.mac.Write(plain)
	k.mac.Sum(k.tag[:0])
	if !hmac.Equal(k.tag[:], wkc[:tagLen]) {
		clear(plain)
		return nil, nil, ErrWKcAuth
	}
	kc = new(StaticKey)
	copy(kc[:], plain)
	metadata = make([]byte, len(plain)-StaticKeySize)
	copy(metadata, plain[StaticKeySize:])
	clear(plain)
	return kc, metadata, nil
}

// xorCTR sets dst = src XOR the AES-256-CTR(Ke) keystream starting at iv,
// the whole 16-byte counter block incremented big-endian (as cipher.NewCTR
// and OpenSSL's AES-256-CTR). dst and src must be equal or not overlap.
// cipher.NewCTR is not used because it allocates a Stream per call.
// k.mu must be held.
func (k *V2ServerKey) xorCTR(dst, src, iv []byte) {
	copy(k.ctr[:], iv)
	for off := 0; off < len(src); off += aes.BlockSize {
		k.block.Encrypt(k.ks[:], k.ctr[:])
		s := src[off:min(off+aes.BlockSize, len(src))]
		for i, c := range s {
			dst[off+i] = c ^ k.ks[i]
		}
		for i := aes.BlockSize - 1; i >= 0; i-- {
			k.ctr[i]++
			if k.ctr[i] != 0 {
				break
			}
		}
	}
}

// SplitWKc splits a P_CONTROL_HARD_RESET_CLIENT_V3 or P_CONTROL_WKC_V1 packet
// (protocol §3.7) into the tls-crypt wrapped packet in front, to be unwrapped
// with Kc, and the WKc appended to it in the clear:
//
//	[..] opcode|key_id, sid, replay pid/time, tag, ciphertext  (tls-crypt, protocol §3.6)
//	[L]  WKc, whose last 2 bytes are L (uint16 big-endian)
//
// Both results alias pkt; wrapped has its capacity cut at its length, so an
// append or in-place unwrap of it cannot overwrite wkc. It checks only the
// framing: the opcode, V2MinWKcLen <= L <= V2MaxWKcLen, and at least the
// 49-byte tls-crypt header in front of the WKc. Errors (ErrPacketTooShort,
// ErrNotWKcPacket, ErrWKcSplit) are returned as is.
func SplitWKc(pkt []byte) (wrapped, wkc []byte, err error) {
	if len(pkt) == 0 {
		return nil, nil, ErrPacketTooShort
	}
	if op := pkt[0] >> 3; op != opHardResetClientV3 && op != opControlWKCV1 {
		return nil, nil, ErrNotWKcPacket
	}
	if len(pkt) < tlsCryptHeaderLen+V2MinWKcLen {
		return nil, nil, ErrWKcSplit
	}
	l := int(binary.BigEndian.Uint16(pkt[len(pkt)-2:]))
	if l < V2MinWKcLen || l > V2MaxWKcLen || l > len(pkt)-tlsCryptHeaderLen {
		return nil, nil, ErrWKcSplit
	}
	cut := len(pkt) - l
	return pkt[:cut:cut], pkt[cut:], nil
}
