package tlscrypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"sync"
)

// tls-crypt wire layout (protocol §3.6, tls_crypt.h offsets):
//
//	[1]  opcode|key_id   \
//	[8]  own session id   |  authenticated, clear
//	[4]  replay pid       |
//	[4]  replay time     /
//	[32] tag = HMAC-SHA256(Ka, opcode||sid||pid||time||plaintext)
//	[..] AES-256-CTR(Ke, IV = tag[0:16], plaintext)
//
// plaintext is the plain layout after the session id (ack count onwards).
const (
	tagLen            = sha256.Size
	tlsCryptPIDOff    = prefixLen                  // 9
	tlsCryptTagOff    = tlsCryptPIDOff + replayLen // 17
	tlsCryptHeaderLen = tlsCryptTagOff + tagLen    // 49: minimum wire length
	tlsCryptOverhead  = replayLen + tagLen         // 40
	keyLen            = 32                         // AES-256 and HMAC-SHA256 key bytes taken from a slot
)

// NewTLSCrypt returns the --tls-crypt Wrapper for k (protocol §3.6). Roles are
// fixed: the server encrypts with Ke=k[0:32], Ka=k[64:96] and decrypts with
// Ke=k[128:160], Ka=k[192:224]; the client uses the inverse. A nil k yields a
// Wrapper whose methods return ErrNilKey.
func NewTLSCrypt(k *StaticKey, server bool) Wrapper {
	if k == nil {
		return errWrapper{ErrNilKey}
	}
	send, recv := slotCipher0, slotCipher1
	if !server {
		send, recv = recv, send
	}
	// Cipher slot i is followed by its HMAC slot at i+64.
	const toHMAC = slotHMAC0 - slotCipher0
	w := &tlsCrypt{
		encBlock: mustAES(k[send : send+keyLen]),
		decBlock: mustAES(k[recv : recv+keyLen]),
		encMAC:   hmac.New(sha256.New, k[send+toHMAC:send+toHMAC+keyLen]),
		decMAC:   hmac.New(sha256.New, k[recv+toHMAC:recv+toHMAC+keyLen]),
	}
	return w
}

// mustAES builds an AES block cipher from a key slice that is 32 bytes by
// construction; aes.NewCipher fails only on a bad key length.
func mustAES(key []byte) cipher.Block {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic("tlscrypt: aes key is not 32 bytes: " + err.Error())
	}
	return b
}

type tlsCrypt struct {
	encBlock, decBlock cipher.Block // immutable

	mu      sync.Mutex // guards the fields below
	encMAC  hash.Hash
	decMAC  hash.Hash
	replay  [replayLen]byte
	tag     [tagLen]byte
	wantTag [tagLen]byte
	ctr, ks [aes.BlockSize]byte
}

func (w *tlsCrypt) Overhead() int { return tlsCryptOverhead }

func (w *tlsCrypt) Wrap(dst, plain []byte, pid, ts uint32) ([]byte, error) {
	if len(plain) < prefixLen {
		return dst, ErrPlainTooShort
	}
	w.mu.Lock()
	defer w.mu.Unlock()

	binary.BigEndian.PutUint32(w.replay[0:], pid)
	binary.BigEndian.PutUint32(w.replay[4:], ts)
	w.encMAC.Reset()
	w.encMAC.Write(plain[:prefixLen])
	w.encMAC.Write(w.replay[:])
	w.encMAC.Write(plain[prefixLen:])
	w.encMAC.Sum(w.tag[:0])

	n := len(dst)
	dst = grow(dst, len(plain)+tlsCryptOverhead)
	out := dst[n:]
	copy(out, plain[:prefixLen])
	copy(out[tlsCryptPIDOff:], w.replay[:])
	copy(out[tlsCryptTagOff:], w.tag[:])
	w.xorCTR(w.encBlock, out[tlsCryptHeaderLen:], plain[prefixLen:])
	return dst, nil
}

func (w *tlsCrypt) Unwrap(dst, wire []byte) ([]byte, uint32, uint32, error) {
	if len(wire) < tlsCryptHeaderLen {
		return dst, 0, 0, ErrPacketTooShort
	}
	w.mu.Lock()
	defer w.mu.Unlock()

	// Save the fields in front of the ciphertext first: an in-place unwrap
	// writes the plaintext over them.
	copy(w.replay[:], wire[tlsCryptPIDOff:tlsCryptTagOff])
	copy(w.tag[:], wire[tlsCryptTagOff:tlsCryptHeaderLen])
	pid := binary.BigEndian.Uint32(w.replay[0:])
	ts := binary.BigEndian.Uint32(w.replay[4:])

	// The tag covers the plaintext, so it can only be checked after
	// decrypting (the IV is the received tag, as in SIV). Nothing decrypted
	// leaves this function unless the tag matches.
	orig, n := dst, len(dst)
	dst = grow(dst, len(wire)-tlsCryptOverhead)
	out := dst[n:]
	copy(out, wire[:prefixLen])
	w.xorCTR(w.decBlock, out[prefixLen:], wire[tlsCryptHeaderLen:])

	w.decMAC.Reset()
	w.decMAC.Write(out[:prefixLen])
	w.decMAC.Write(w.replay[:])
	w.decMAC.Write(out[prefixLen:])
	w.decMAC.Sum(w.wantTag[:0])
	if !hmac.Equal(w.tag[:], w.wantTag[:]) {
		clear(out)
		return orig, 0, 0, ErrAuthFailed
	}
	return dst, pid, ts, nil
}

// xorCTR sets dst = src XOR AES-CTR keystream with IV w.tag[0:16], the counter
// being the whole 16-byte block incremented big-endian (as cipher.NewCTR).
// It works front to back, loading each word before storing it, so dst may
// start at src or at least 8 bytes before it in the same buffer (in-place
// unwrap puts it 40 bytes before). cipher.NewCTR is not used because
// it allocates a Stream per packet.
func (w *tlsCrypt) xorCTR(b cipher.Block, dst, src []byte) {
	copy(w.ctr[:], w.tag[:aes.BlockSize])
	for off := 0; off < len(src); off += aes.BlockSize {
		b.Encrypt(w.ks[:], w.ctr[:])
		d, s := dst[off:], src[off:]
		if len(s) >= aes.BlockSize {
			// Each word is loaded before it is stored, which keeps the
			// forward in-place case correct.
			le := binary.LittleEndian
			le.PutUint64(d[0:], le.Uint64(s[0:])^le.Uint64(w.ks[0:]))
			le.PutUint64(d[8:], le.Uint64(s[8:])^le.Uint64(w.ks[8:]))
		} else {
			for i := range s {
				d[i] = s[i] ^ w.ks[i]
			}
		}
		for i := aes.BlockSize - 1; i >= 0; i-- {
			w.ctr[i]++
			if w.ctr[i] != 0 {
				break
			}
		}
	}
}
