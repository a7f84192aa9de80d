package tlscrypt

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
)

// StaticKeySize is the size of an OpenVPN static key (struct key2).
const StaticKeySize = 256

// StaticKey is an OpenVPN static key in the struct key2 layout (protocol §3.5),
// as read from a --tls-auth, --tls-crypt or --secret key file:
//
//	[0:64]    keys[0].cipher
//	[64:128]  keys[0].hmac
//	[128:192] keys[1].cipher
//	[192:256] keys[1].hmac
type StaticKey [StaticKeySize]byte

// Byte offsets of the four 64-byte slots of a StaticKey.
const (
	slotCipher0 = 0
	slotHMAC0   = 64
	slotCipher1 = 128
	slotHMAC1   = 192
)

const (
	keyBeginMarker = "-----BEGIN OpenVPN Static key V1-----"
	keyEndMarker   = "-----END OpenVPN Static key V1-----"
)

// ParseStaticKey parses the OpenVPN static key file format: 256 bytes as hex
// between the BEGIN and END markers. Hex may be split over lines of any
// length; text outside the markers (such as the "#" comment header openvpn
// --genkey writes, or a surrounding inline <tls-crypt> block) is ignored.
// Errors wrap ErrKeyBeginMarker, ErrKeyEndMarker, ErrKeyNotHex or ErrKeyLength.
func ParseStaticKey(data []byte) (*StaticKey, error) {
	begin := bytes.Index(data, []byte(keyBeginMarker))
	if begin < 0 {
		if i := bytes.Index(data, []byte("-----BEGIN ")); i >= 0 {
			line, _, _ := bytes.Cut(data[i:], []byte("\n"))
			return nil, fmt.Errorf("tlscrypt: static key: %w (found %q)", ErrKeyBeginMarker, bytes.TrimSpace(line))
		}
		return nil, fmt.Errorf("tlscrypt: static key: %w", ErrKeyBeginMarker)
	}
	bodyStart := begin + len(keyBeginMarker)
	bodyLen := bytes.Index(data[bodyStart:], []byte(keyEndMarker))
	if bodyLen < 0 {
		return nil, fmt.Errorf("tlscrypt: static key: %w", ErrKeyEndMarker)
	}
	body := data[bodyStart : bodyStart+bodyLen]
	line := 1 + bytes.Count(data[:bodyStart], []byte("\n"))

	k := new(StaticKey)
	nibbles := 0
	for _, c := range body {
		var v byte
		switch {
		case c == '\n':
			line++
			continue
		case c == ' ' || c == '\t' || c == '\r':
			continue
		case '0' <= c && c <= '9':
			v = c - '0'
		case 'a' <= c && c <= 'f':
			v = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			v = c - 'A' + 10
		default:
			return nil, fmt.Errorf("tlscrypt: static key: line %d: %w: %q", line, ErrKeyNotHex, c)
		}
		if nibbles < 2*StaticKeySize {
			if nibbles%2 == 0 {
				k[nibbles/2] = v << 4
			} else {
				k[nibbles/2] |= v
			}
		}
		nibbles++
	}
	if nibbles != 2*StaticKeySize {
		if nibbles%2 != 0 {
			return nil, fmt.Errorf("tlscrypt: static key: %w: odd number of hex digits (%d)", ErrKeyLength, nibbles)
		}
		return nil, fmt.Errorf("tlscrypt: static key: %w: %d bytes, want %d", ErrKeyLength, nibbles/2, StaticKeySize)
	}
	return k, nil
}

// GenerateStaticKey returns a new key filled from rand (normally
// crypto/rand.Reader).
func GenerateStaticKey(rand io.Reader) (*StaticKey, error) {
	k := new(StaticKey)
	if _, err := io.ReadFull(rand, k[:]); err != nil {
		return nil, fmt.Errorf("tlscrypt: generate static key: %w", err)
	}
	return k, nil
}

// Marshal returns k in the file format openvpn --genkey writes: a three-line
// "#" comment header, the BEGIN marker, 16 lines of 32 lowercase hex digits
// and the END marker, each line ending in "\n".
func (k *StaticKey) Marshal() []byte {
	const header = "#\n# 2048 bit OpenVPN static key\n#\n"
	const perLine = 16 // bytes per line
	b := make([]byte, 0, len(header)+len(keyBeginMarker)+1+StaticKeySize/perLine*(2*perLine+1)+len(keyEndMarker)+1)
	b = append(b, header...)
	b = append(b, keyBeginMarker+"\n"...)
	for i := 0; i < StaticKeySize; i += perLine {
		b = hex.AppendEncode(b, k[i:i+perLine])
		b = append(b, '\n')
	}
	b = append(b, keyEndMarker+"\n"...)
	return b
}
