package mfa

import (
	"fmt"
	"io"

	"github.com/mdp/qrterminal/v3"
	"rsc.io/qr"
)

// WriteQR draws uri as a QR code in half-block characters (two modules per
// character cell, so it fits an 80x24 terminal), for an authenticator app to
// scan. A URI too long for a QR code is written as a note instead.
func WriteQR(w io.Writer, uri string) {
	// qrterminal ignores encoding errors and would then dereference a nil
	// code; check first.
	if _, err := qr.Encode(uri, qr.M); err != nil {
		fmt.Fprintf(w, "(no QR code: %v)\n", err)
		return
	}
	qrterminal.GenerateHalfBlock(uri, qrterminal.M, w)
}
