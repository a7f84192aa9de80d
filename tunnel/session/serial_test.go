package session

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
)

// TestRevokedErrorSerialHex: a refused certificate's serial is printed in hex, as cvpn client
// list and openssl x509 -serial print it, never in decimal.
func TestRevokedErrorSerialHex(t *testing.T) {
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "bob"}, SerialNumber: big.NewInt(0xABCDEF12)}
	for _, e := range []*revokedError{{cert: cert}, {cert: cert, reason: errors.New("CRL expired")}} {
		msg := e.Error()
		if !strings.Contains(msg, "(serial ABCDEF12)") || strings.Contains(msg, "2882400018") {
			t.Errorf("%q does not give the serial as ABCDEF12", msg)
		}
	}
}
