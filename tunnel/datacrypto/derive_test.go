package datacrypto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// seq returns n bytes counting up from start (mod 256).
func seq(start, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(start + i)
	}
	return b
}

// The expected values below come from OpenSSL 3.0's TLS1-PRF (what OpenVPN's
// crypto_openssl.c:ssl_tls1_PRF calls) with inputs
//
//	pre_master = 00 01 .. 2f        client random1 = 30 .. 4f   server random1 = 50 .. 6f
//	client random2 = 70 .. 8f       server random2 = 90 .. af
//	client sid = 01 02 .. 08        server sid = a1 a2 .. a8
//
// produced by:
//
//	openssl kdf -keylen 48 -kdfopt digest:MD5-SHA1 -kdfopt hexsecret:000102..2f \
//	    -kdfopt hexseed:<hex "OpenVPN master secret">3031..4f5051..6f TLS1-PRF
//	openssl kdf -keylen 256 -kdfopt digest:MD5-SHA1 -kdfopt hexsecret:<master> \
//	    -kdfopt hexseed:<hex "OpenVPN key expansion">7071..8f9091..af0102..08a1a2..a8 TLS1-PRF
const (
	prfMasterHex = "326bae7a6685734d8d5b05e10eef57f046d7678ab1fe3a61716e237ca0d74c1b3d0d72cb5f1b30c2ae5aaf7fd091f857"
	prfKey2Hex   = "ee27f0ee28975fda01447f734614dcb183ffe11ea894fc3e6bcc4a39b232758bb2d1c1a86f83d57fab21ff7dbe20ccf0" +
		"48bb851fed79f7a9f77605fa8de52c40f28bd78dcf77a9ddd186acd168fc30738d185544acdf62e15abb20851d6c44e9" +
		"4e3516d68a1ee19ba6450410bfc6a889fd3f599e529ab37e6788c5f3a138b36d844e0a2bd406d0311e6c11db5563ec50" +
		"deb866a86e2b0edb9273c82684bec09c1757f3e17c1430f4acce58c731ebbe80e4a6e2a0b836d43071ed9ef59a86ec0e" +
		"1baa8893ba2d560e0a791770d44c63bffb6b4ec3e85ab7c3e59a7eacd2cab3dc2b3f325137afafc77bef5e8ba5d26eba" +
		"b4901655e44662ed49cdb72b4ccbbee8"
)

func TestTLS10PRFMaster(t *testing.T) {
	seed := append([]byte(masterLabel), seq(0x30, 64)...)
	got := make([]byte, 48)
	tls10PRF(got, seq(0, 48), seed)
	if want := mustHex(t, prfMasterHex); !bytes.Equal(got, want) {
		t.Fatalf("master secret\n got %x\nwant %x", got, want)
	}
}

// TestTLS10PRFOddSecret covers the overlapping split of an odd-length secret.
// openssl kdf -keylen 40 -kdfopt digest:MD5-SHA1 -kdfopt hexsecret:0102030405 \
//
//	-kdfopt hexseed:<hex "test label">00ff TLS1-PRF
func TestTLS10PRFOddSecret(t *testing.T) {
	got := make([]byte, 40)
	tls10PRF(got, []byte{1, 2, 3, 4, 5}, append([]byte("test label"), 0x00, 0xff))
	want := mustHex(t, "c662bd0cb78c190da873598ffdf7a2dc279e2a6085ef2330016652de9e1275f654e1f210648eb781")
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x\nwant %x", got, want)
	}
}

func TestDerivePRF(t *testing.T) {
	var pm [48]byte
	var cr1, sr1, cr2, sr2 [32]byte
	copy(pm[:], seq(0, 48))
	copy(cr1[:], seq(0x30, 32))
	copy(sr1[:], seq(0x50, 32))
	copy(cr2[:], seq(0x70, 32))
	copy(sr2[:], seq(0x90, 32))
	csid := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	ssid := [8]byte{0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8}
	k := DerivePRF(&pm, &cr1, &sr1, &cr2, &sr2, csid, ssid)
	if want := mustHex(t, prfKey2Hex); !bytes.Equal(k[:], want) {
		t.Fatalf("key2\n got %x\nwant %x", k[:], want)
	}
	// Swapping the session ids must change the keys: they are part of the seed.
	if k2 := DerivePRF(&pm, &cr1, &sr1, &cr2, &sr2, ssid, csid); *k2 == *k {
		t.Fatal("key2 does not depend on session-id order")
	}
}

func TestDeriveEKM(t *testing.T) {
	want := seq(7, 256)
	var gotLabel string
	var gotCtx []byte = []byte("sentinel")
	k, err := DeriveEKM(func(label string, context []byte, length int) ([]byte, error) {
		gotLabel, gotCtx = label, context
		if length != 256 {
			t.Errorf("length = %d, want 256", length)
		}
		return bytes.Clone(want), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if gotLabel != "EXPORTER-OpenVPN-datakeys" || gotCtx != nil {
		t.Errorf("exporter called with label %q context %v, want EXPORTER-OpenVPN-datakeys and nil", gotLabel, gotCtx)
	}
	if !bytes.Equal(k[:], want) {
		t.Errorf("key2 = %x, want %x", k[:], want)
	}

	boom := errors.New("boom")
	if _, err := DeriveEKM(func(string, []byte, int) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Errorf("exporter error: got %v", err)
	}
	if _, err := DeriveEKM(func(string, []byte, int) ([]byte, error) { return make([]byte, 32), nil }); !errors.Is(err, ErrExportLength) {
		t.Errorf("short export: got %v, want ErrExportLength", err)
	}
}

func TestParseCipher(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Cipher
		size int
	}{
		{"AES-128-GCM", AES128GCM, 16},
		{"aes-256-gcm", AES256GCM, 32},
		{"ChaCha20-Poly1305", ChaCha20Poly1305, 32},
	} {
		c, err := ParseCipher(tc.name)
		if err != nil || c != tc.want || c.KeySize() != tc.size {
			t.Errorf("ParseCipher(%q) = %v (%d), %v; want %v (%d)", tc.name, c, c.KeySize(), err, tc.want, tc.size)
		}
		if !bytes.EqualFold([]byte(c.String()), []byte(tc.name)) {
			t.Errorf("%v.String() = %q", c, c.String())
		}
	}
	for _, name := range []string{"AES-256-CBC", "BF-CBC", "none", "", "AES-192-GCM"} {
		if _, err := ParseCipher(name); !errors.Is(err, ErrUnsupportedCipher) {
			t.Errorf("ParseCipher(%q) err = %v, want ErrUnsupportedCipher", name, err)
		}
	}
	if s := Cipher(0).String(); s != "Cipher(0)" {
		t.Errorf("Cipher(0).String() = %q", s)
	}
}
