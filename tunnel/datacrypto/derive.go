package datacrypto

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"fmt"
	"hash"
)

// Key2 is OpenVPN's struct key2: two directions of {cipher[64], hmac[64]}
// (protocol §7). Keys take the first KeySize bytes of a cipher slot; AEAD
// ciphers take their 8-byte implicit IV from the first bytes of the hmac slot
// of the same direction.
//
//	[  0: 64] client→server cipher   [ 64:128] client→server hmac
//	[128:192] server→client cipher   [192:256] server→client hmac
type Key2 [256]byte

// Offsets of the slots in Key2.
const (
	c2sCipher = 0
	c2sHMAC   = 64
	s2cCipher = 128
	s2cHMAC   = 192
)

// ekmLabel is the RFC 5705 exporter label for data-channel keys
// (protocol §7.1).
const ekmLabel = "EXPORTER-OpenVPN-datakeys"

// DeriveEKM derives key2 from the TLS keying-material exporter of the
// key_state's own TLS session: label "EXPORTER-OpenVPN-datakeys", no context,
// 256 bytes (protocol §7.1). export is typically
// (*tls.ConnectionState).ExportKeyingMaterial; nil context means "no context".
// The exporter's output is wiped after it is copied.
func DeriveEKM(export func(label string, context []byte, length int) ([]byte, error)) (*Key2, error) {
	b, err := export(ekmLabel, nil, len(Key2{}))
	if err != nil {
		return nil, fmt.Errorf("datacrypto: derive EKM key2: %w", err)
	}
	defer clear(b)
	if len(b) != len(Key2{}) {
		return nil, fmt.Errorf("%w: got %d bytes, want %d", ErrExportLength, len(b), len(Key2{}))
	}
	k := new(Key2)
	copy(k[:], b)
	return k, nil
}

// PRF labels (protocol §7.2). No trailing space or NUL.
const (
	masterLabel    = "OpenVPN master secret"
	expansionLabel = "OpenVPN key expansion"
)

// DerivePRF derives key2 with the legacy OpenVPN PRF (protocol §7.2), used when
// the server does not push tls-ekm:
//
//	master = PRF(preMaster, "OpenVPN master secret" || clientRandom1 || serverRandom1)        48 bytes
//	key2   = PRF(master, "OpenVPN key expansion" || clientRandom2 || serverRandom2
//	             || clientSID || serverSID)                                                    256 bytes
//
// where PRF is the TLS 1.0/1.1 PRF (RFC 2246 §5, P_MD5 xor P_SHA1). preMaster
// and the randoms come from the key-method-2 exchange of this key_state; the
// session ids are the control-channel session ids (client's own, server's
// own).
func DerivePRF(preMaster *[48]byte, clientRandom1, serverRandom1, clientRandom2, serverRandom2 *[32]byte, clientSID, serverSID [8]byte) *Key2 {
	var master [48]byte
	seed := make([]byte, 0, len(expansionLabel)+32+32+8+8)
	seed = append(seed, masterLabel...)
	seed = append(seed, clientRandom1[:]...)
	seed = append(seed, serverRandom1[:]...)
	tls10PRF(master[:], preMaster[:], seed)

	seed = append(seed[:0], expansionLabel...)
	seed = append(seed, clientRandom2[:]...)
	seed = append(seed, serverRandom2[:]...)
	seed = append(seed, clientSID[:]...)
	seed = append(seed, serverSID[:]...)
	k := new(Key2)
	tls10PRF(k[:], master[:], seed)
	clear(master[:])
	return k
}

// tls10PRF fills out with the TLS 1.0 PRF of secret over labelAndSeed: the
// secret is split into two halves (overlapping by one byte when its length is
// odd), P_MD5 runs on the first and P_SHA1 on the second, and the two streams
// are XORed (RFC 2246 §5). This is what OpenSSL calls TLS1-PRF with the
// MD5-SHA1 digest.
func tls10PRF(out, secret, labelAndSeed []byte) {
	half := (len(secret) + 1) / 2
	s1 := secret[:half]
	s2 := secret[len(secret)-half:]
	clear(out)
	pHashXOR(out, md5.New, s1, labelAndSeed)
	pHashXOR(out, sha1.New, s2, labelAndSeed)
}

// pHashXOR XORs P_hash(secret, seed) (RFC 2246 §5) into out:
//
//	A(0) = seed, A(i) = HMAC(secret, A(i-1))
//	P_hash = HMAC(secret, A(1) || seed) || HMAC(secret, A(2) || seed) || ...
func pHashXOR(out []byte, h func() hash.Hash, secret, seed []byte) {
	mac := hmac.New(h, secret)
	mac.Write(seed)
	a := mac.Sum(nil)
	var block []byte
	for len(out) > 0 {
		mac.Reset()
		mac.Write(a)
		mac.Write(seed)
		block = mac.Sum(block[:0])
		n := min(len(out), len(block))
		for i := range n {
			out[i] ^= block[i]
		}
		out = out[n:]

		mac.Reset()
		mac.Write(a)
		a = mac.Sum(a[:0])
	}
}
