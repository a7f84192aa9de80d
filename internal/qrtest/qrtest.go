// Package qrtest reads QR codes for tests: the TOTP enrolment code that the
// portal shows is decoded from its PNG, as a phone's authenticator app would
// scan it. It only decodes; cvpn makes its codes elsewhere (rsc.io/qr).
package qrtest

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/png"

	"github.com/makiuchi-d/gozxing"
	"github.com/makiuchi-d/gozxing/qrcode"
)

// maxQRPixels bounds the images that DecodeQR decodes, against a small PNG
// that declares a huge image.
const maxQRPixels = 4096 * 4096

// DecodeQR returns the text of the QR code in a PNG image, such as the TOTP
// enrolment code that the portal shows (browser.ImageBytes reads it from the page).
// It reads a clean, generated code first, and then looks for a code
// anywhere in the image (a screenshot, a scaled or padded code).
func DecodeQR(data []byte) (text string, err error) {
	cfg, err := png.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return "", fmt.Errorf("qr: not a PNG: %w", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || cfg.Width*cfg.Height > maxQRPixels {
		return "", fmt.Errorf("qr: a %dx%d image is outside 1..%d pixels", cfg.Width, cfg.Height, maxQRPixels)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		return "", fmt.Errorf("qr: decode PNG: %w", err)
	}
	return decodeQRImage(img)
}

// decodeQRImage reads the QR code in img with gozxing, a Go port of ZXing.
func decodeQRImage(img image.Image) (text string, err error) {
	// The image comes from a page under test: a decoder bug it triggers
	// must fail that test, not the test binary.
	defer func() {
		if r := recover(); r != nil {
			text, err = "", fmt.Errorf("qr: decoder panicked: %v", r)
		}
	}()
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		return "", fmt.Errorf("qr: binarize: %w", err)
	}
	var errs []error
	for _, hints := range []map[gozxing.DecodeHintType]any{
		{gozxing.DecodeHintType_PURE_BARCODE: true},
		{gozxing.DecodeHintType_TRY_HARDER: true},
	} {
		res, err := qrcode.NewQRCodeReader().Decode(bmp, hints)
		if err == nil {
			if res.GetText() == "" {
				return "", errors.New("qr: the code holds no text")
			}
			return res.GetText(), nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("qr: no QR code found: %w", errors.Join(errs...))
}
