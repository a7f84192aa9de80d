// Package datacrypto owns the data-channel keys of one OpenVPN key_state and
// the AEAD protection of data packets (docs/protocol.md §7, §8.2).
//
// It derives the 256-byte key2 block either from the TLS exporter (EKM,
// protocol §7.1) or from the legacy OpenVPN PRF (protocol §7.2), selects the
// per-direction cipher key and implicit IV for a role, and seals/opens
// P_DATA_V1 and P_DATA_V2 packets in place without allocating.
//
// It does not own the replay window (package tunnel/replay), packet-id
// allocation, key_id selection, compression framing or the CBC+HMAC ciphers
// (protocol §8.3), which cvpn does not support.
package datacrypto

import (
	"fmt"
	"strconv"
	"strings"
)

// Cipher is a negotiable AEAD data-channel cipher. The zero value is not a
// valid cipher.
type Cipher uint8

// The AEAD ciphers a 2.6 client offers by default (IV_CIPHERS, protocol §11).
const (
	AES128GCM Cipher = iota + 1
	AES256GCM
	ChaCha20Poly1305
)

// ParseCipher maps an OpenVPN cipher name ("AES-256-GCM", ...), compared
// case-insensitively as OpenVPN does, to a Cipher.
func ParseCipher(name string) (Cipher, error) {
	for c := AES128GCM; c <= ChaCha20Poly1305; c++ {
		if strings.EqualFold(name, c.String()) {
			return c, nil
		}
	}
	return 0, fmt.Errorf("%w %q (supported: AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305)", ErrUnsupportedCipher, name)
}

// String returns the OpenVPN spelling of the cipher name, as used in
// IV_CIPHERS, data-ciphers and the pushed "cipher" option.
func (c Cipher) String() string {
	switch c {
	case AES128GCM:
		return "AES-128-GCM"
	case AES256GCM:
		return "AES-256-GCM"
	case ChaCha20Poly1305:
		return "CHACHA20-POLY1305"
	}
	return "Cipher(" + strconv.Itoa(int(c)) + ")"
}

// KeySize is the cipher key length in bytes (the prefix of a key2 cipher slot
// it uses), or 0 for an invalid Cipher.
func (c Cipher) KeySize() int {
	switch c {
	case AES128GCM:
		return 16
	case AES256GCM, ChaCha20Poly1305:
		return 32
	}
	return 0
}

func (c Cipher) valid() bool { return c >= AES128GCM && c <= ChaCha20Poly1305 }
