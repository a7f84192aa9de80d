package qrtest

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"strings"
	"testing"

	"rsc.io/qr"
)

// TestDecodeQRRoundTrip decodes codes that rsc.io/qr made, as the portal
// makes its TOTP enrolment codes, at each error-correction level.
func TestDecodeQRRoundTrip(t *testing.T) {
	texts := []string{
		"otpauth://totp/cvpn:alice@example.test?secret=JBSWY3DPEHPK3PXP&issuer=cvpn&algorithm=SHA1&digits=6&period=30",
		"x",
		strings.Repeat("0123456789abcdef", 40), // a large code
		"unicode: héllo wörld ✓",
	}
	for _, text := range texts {
		for _, level := range []qr.Level{qr.L, qr.M, qr.Q, qr.H} {
			code, err := qr.Encode(text, level)
			if err != nil {
				t.Fatalf("encode %q at %v: %v", text, level, err)
			}
			got, err := DecodeQR(code.PNG())
			if err != nil {
				t.Fatalf("decode %q at level %v: %v", text, level, err)
			}
			if got != text {
				t.Fatalf("decoded %q, want %q", got, text)
			}
		}
	}
}

// TestDecodeQRInPicture finds a code that is not the whole image: scaled,
// offset on a larger background, as in a screenshot.
func TestDecodeQRInPicture(t *testing.T) {
	const text = "otpauth://totp/cvpn:bob?secret=GEZDGNBVGY3TQOJQ&issuer=cvpn"
	code, err := qr.Encode(text, qr.M)
	if err != nil {
		t.Fatal(err)
	}
	code.Scale = 3
	small, err := png.Decode(bytes.NewReader(code.PNG()))
	if err != nil {
		t.Fatal(err)
	}
	big := image.NewRGBA(image.Rect(0, 0, 600, 400))
	draw.Draw(big, big.Bounds(), &image.Uniform{color.RGBA{240, 240, 250, 255}}, image.Point{}, draw.Src)
	at := image.Pt(170, 90)
	draw.Draw(big, small.Bounds().Add(at), small, image.Point{}, draw.Src)
	var buf bytes.Buffer
	if err := png.Encode(&buf, big); err != nil {
		t.Fatal(err)
	}
	got, err := DecodeQR(buf.Bytes())
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if got != text {
		t.Fatalf("decoded %q, want %q", got, text)
	}
}

// TestDecodeQRRefuses names what is wrong with images that hold no code.
func TestDecodeQRRefuses(t *testing.T) {
	blank := image.NewGray(image.Rect(0, 0, 200, 200))
	draw.Draw(blank, blank.Bounds(), image.White, image.Point{}, draw.Src)
	var buf bytes.Buffer
	if err := png.Encode(&buf, blank); err != nil {
		t.Fatal(err)
	}
	// A PNG header that declares a 100000x100000 image.
	huge := hugePNGHeader(t)
	for _, tc := range []struct {
		name, want string
		data       []byte
	}{
		{"not PNG", "not a PNG", []byte("GIF89a....")},
		{"empty", "not a PNG", nil},
		{"blank", "no QR code", buf.Bytes()},
		{"huge", "outside", huge},
	} {
		_, err := DecodeQR(tc.data)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

// hugePNGHeader encodes a 1x1 PNG and rewrites its IHDR to declare
// 100000x100000 pixels, with the chunk's CRC fixed.
func hugePNGHeader(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, 1, 1))); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	// 8-byte signature, 4-byte length, "IHDR", then width and height.
	copy(b[16:20], []byte{0, 1, 0x86, 0xa0})
	copy(b[20:24], []byte{0, 1, 0x86, 0xa0})
	binary.BigEndian.PutUint32(b[29:33], crc32.ChecksumIEEE(b[12:29]))
	if cfg, err := png.DecodeConfig(bytes.NewReader(b)); err != nil || cfg.Width != 100000 {
		t.Fatalf("forged PNG header: %+v, %v", cfg, err)
	}
	return b
}

// FuzzDecodeQR feeds arbitrary bytes to DecodeQR: it must return, not
// panic or hang, whatever a page serves.
func FuzzDecodeQR(f *testing.F) {
	code, err := qr.Encode("otpauth://totp/x?secret=AAAA", qr.L)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(code.PNG())
	f.Add([]byte("\x89PNG\r\n\x1a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		text, err := DecodeQR(data)
		if err == nil && text == "" {
			t.Fatal("no error and no text")
		}
	})
}
