package session

import (
	"context"
	"crypto/x509"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cvpn/cvpn/bench/client"
)

// crlGate is a RevocationChecker that lists nobody but, while shut, refuses every handshake
// with a reason of its own, as a CRL past its next update does.
type crlGate struct{ shut atomic.Bool }

var errGateShut = errors.New("the CRL of the test CA expired")

func (g *crlGate) IsRevoked(*x509.Certificate) bool { return false }

func (g *crlGate) CheckRevocation(*x509.Certificate) error {
	if g.shut.Load() {
		return errGateShut
	}
	return nil
}

// TestRevocationCheckerDecidesEachHandshake: a RevocationChecker's refusal refuses new
// handshakes with its reason, and the renegotiations of connected clients, which then end
// when the hand window passes without a new key (RESTART); putting it in force cuts nobody off, since it
// lists nobody; once it admits again, new clients connect.
func TestRevocationCheckerDecidesEachHandshake(t *testing.T) {
	var logs lockedBuffer
	e := newTestEngine(t, engineOptions{reneg: time.Second, handWindow: 3 * time.Second, serverLog: &logs})
	gate := &crlGate{}
	e.m.SetRevoker(gate)
	alice := connect(t, e.clientConfig(t, "alice", netip.MustParseAddrPort("203.0.113.70:40000"), port443))

	gate.shut.Store(true)
	e.m.SetRevoker(gate)
	select {
	case <-alice.Done():
		t.Fatalf("putting a checker that lists nobody in force ended alice: %v", alice.Err())
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	bob, err := client.Connect(ctx, e.clientConfig(t, "bob", netip.MustParseAddrPort("203.0.113.71:40000"), port443))
	cancel()
	if err == nil {
		bob.Close()
		t.Fatal("bob connected while the checker refuses")
	}
	defer func() {
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	}()
	waitFor(t, "the refusal is logged with the checker's reason", func() bool {
		return strings.Contains(logs.String(), `client certificate \"bob\"`) && strings.Contains(logs.String(), "refused: "+errGateShut.Error())
	})
	waitFor(t, "alice's renegotiation is refused", func() bool {
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, `msg="authentication refused"`) && strings.Contains(line, `\"alice\"`) && !strings.Contains(line, "key_id=0") {
				return true
			}
		}
		return false
	})
	deadline := time.Now().Add(15 * time.Second)
	for _, ok := e.established()["alice"]; ok; _, ok = e.established()["alice"] {
		if time.Now().After(deadline) {
			t.Fatal("alice was kept although every renegotiation is refused")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The session leaves the established list as it ends; its log line can follow a moment later.
	waitFor(t, "alice's session ends for want of a new key", func() bool {
		return strings.Contains(logs.String(), "renegotiation did not finish within the hand window")
	})

	gate.shut.Store(false)
	connect(t, e.clientConfig(t, "carol", netip.MustParseAddrPort("203.0.113.72:40000"), port443))
}
