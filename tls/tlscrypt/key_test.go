package tlscrypt

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"testing/iotest"
)

// testdata/openvpn-genkey.key was written by `openvpn --genkey secret` (OpenVPN 2.6.14).
const genkeyFile = "testdata/openvpn-genkey.key"

func readFixtureKey(t testing.TB) (*StaticKey, []byte) {
	t.Helper()
	data, err := os.ReadFile(genkeyFile)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseStaticKey(data)
	if err != nil {
		t.Fatalf("ParseStaticKey(%s): %v", genkeyFile, err)
	}
	return k, data
}

func TestParseStaticKeyOpenVPNFixture(t *testing.T) {
	k, data := readFixtureKey(t)
	// First and last lines of the hex block in the fixture.
	if got, want := hex.EncodeToString(k[:16]), "6f1e6bbbcd1e199663a757b62a09b2b4"; got != want {
		t.Errorf("key[0:16] = %s, want %s", got, want)
	}
	if got, want := hex.EncodeToString(k[240:]), "ac07d61f9a2d4637b1fa527a8f45d2d3"; got != want {
		t.Errorf("key[240:256] = %s, want %s", got, want)
	}
	if m := k.Marshal(); !bytes.Equal(m, data) {
		t.Errorf("Marshal differs from openvpn --genkey output:\n%s\nwant:\n%s", m, data)
	}
}

// keyHex is a 256-byte test key as 512 hex digits: bytes 0..255.
func keyHex() string {
	b := make([]byte, StaticKeySize)
	for i := range b {
		b[i] = byte(i)
	}
	return hex.EncodeToString(b)
}

func wrapMarkers(body string) string {
	return keyBeginMarker + "\n" + body + "\n" + keyEndMarker + "\n"
}

func TestParseStaticKeyFormats(t *testing.T) {
	h := keyHex()
	var lines64 strings.Builder
	for i := 0; i < len(h); i += 64 {
		lines64.WriteString(h[i:i+64] + "\n")
	}
	tests := map[string]string{
		"one long line":       wrapMarkers(h),
		"64-char lines":       wrapMarkers(lines64.String()),
		"uppercase":           wrapMarkers(strings.ToUpper(h)),
		"crlf":                strings.ReplaceAll(wrapMarkers(lines64.String()), "\n", "\r\n"),
		"spaces and tabs":     wrapMarkers(strings.Join(strings.SplitAfterN(h, "", 512), " \t")),
		"no trailing newline": keyBeginMarker + h + keyEndMarker,
		"inline block with text around": "# comment\nsome text -----BEGIN nothing\n<tls-crypt>\n" +
			wrapMarkers(h) + "</tls-crypt>\ntrailing junk zz\n",
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			k, err := ParseStaticKey([]byte(in))
			if err != nil {
				t.Fatalf("ParseStaticKey: %v", err)
			}
			for i := range k {
				if k[i] != byte(i) {
					t.Fatalf("key[%d] = %d, want %d", i, k[i], i)
				}
			}
		})
	}
}

func TestParseStaticKeyErrors(t *testing.T) {
	h := keyHex()
	tests := []struct {
		name    string
		in      string
		want    error
		mention string // substring the message must contain
	}{
		{"empty", "", ErrKeyBeginMarker, "BEGIN"},
		{"bare hex", h, ErrKeyBeginMarker, "BEGIN"},
		{"tls-crypt-v2 client key", "-----BEGIN OpenVPN tls-crypt-v2 client key-----\nAAAA\n-----END OpenVPN tls-crypt-v2 client key-----\n",
			ErrKeyBeginMarker, "tls-crypt-v2 client key"},
		{"V2 marker", "-----BEGIN OpenVPN Static key V2-----\n" + h + "\n-----END OpenVPN Static key V2-----\n", ErrKeyBeginMarker, "V2"},
		{"no end marker", keyBeginMarker + "\n" + h + "\n", ErrKeyEndMarker, "END"},
		{"end before begin", keyEndMarker + "\n" + keyBeginMarker + "\n" + h, ErrKeyEndMarker, "END"},
		{"short by one byte", wrapMarkers(h[:510]), ErrKeyLength, "255 bytes"},
		{"long by one byte", wrapMarkers(h + "00"), ErrKeyLength, "257 bytes"},
		{"odd digits", wrapMarkers(h + "0"), ErrKeyLength, "odd"},
		{"empty body", wrapMarkers(""), ErrKeyLength, "0 bytes"},
		{"non-hex", wrapMarkers(h[:64] + "\n" + h[64:100] + "g" + h[101:]), ErrKeyNotHex, "line 3"},
		{"comment inside", wrapMarkers("# key\n" + h), ErrKeyNotHex, "line 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseStaticKey([]byte(tt.in))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if k != nil {
				t.Fatal("non-nil key with error")
			}
			if !strings.Contains(err.Error(), tt.mention) || !strings.HasPrefix(err.Error(), "tlscrypt: static key: ") {
				t.Fatalf("error %q does not name the problem (want prefix and %q)", err, tt.mention)
			}
		})
	}
}

func TestGenerateStaticKey(t *testing.T) {
	k, err := GenerateStaticKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if *k == (StaticKey{}) {
		t.Fatal("generated all-zero key")
	}
	m := k.Marshal()
	if n := bytes.Count(m, []byte("\n")); n != 3+1+16+1 {
		t.Errorf("Marshal has %d lines, want 21", n)
	}
	k2, err := ParseStaticKey(m)
	if err != nil {
		t.Fatalf("ParseStaticKey(Marshal()): %v", err)
	}
	if *k2 != *k {
		t.Fatal("Marshal/Parse round trip differs")
	}
	if _, err := GenerateStaticKey(iotest.TimeoutReader(bytes.NewReader(make([]byte, 100)))); err == nil {
		t.Fatal("GenerateStaticKey with a short reader succeeded")
	}
}
