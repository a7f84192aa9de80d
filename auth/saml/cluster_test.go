package saml

import (
	"errors"
	"testing"

	"github.com/cvpn/cvpn/internal/samllab"
	"github.com/cvpn/cvpn/state"
)

// TestClusterACSOnOtherNode: two SPs sharing one store are two nodes of a cluster: a login
// begun on A completes on B, once; its assertion ID is spent on both; the bound counts both.
func TestClusterACSOnOtherNode(t *testing.T) {
	lab := samllab.Start(t)
	lab.AddUser("alice", "pw")
	st := state.NewMemory()
	a, clk := newSP(t, lab, "portal", func(c *Config) { c.Store = st; c.MaxPendingLogins = 3 })
	b, err := New(Config{IdPMetadata: lab.Metadata, EntityID: testEntityID, ACSURL: testACS, Now: clk.Now,
		Store: st, MaxPendingLogins: 3})
	if err != nil {
		t.Fatal(err)
	}
	redirect, login := begin(t, a)
	form := lab.Login(t, redirect, "alice", "pw")
	id, err := b.Complete(acsRequest(form))
	if err != nil || id.Username != "alice" || id.State != login.State {
		t.Fatalf("ACS on the other node: %+v, %v", id, err)
	}
	_, err = a.Complete(acsRequest(form))
	wantErr(t, err, ErrUnknownLogin)

	// Were the pending login restored on A, the assertion ID spent on B still refuses it.
	if err := a.putPending(t.Context(), login.State, pendingLogin{requestID: login.RequestID, expires: clk.Now().Add(DefaultLoginTTL)}); err != nil {
		t.Fatal(err)
	}
	_, err = a.Complete(acsRequest(form))
	wantErr(t, err, ErrReplayed)

	// Two more logins fill the bound of 3 logins per TTL, whichever node begins them.
	begin(t, b)
	begin(t, a)
	if _, _, err := b.Begin(); !errors.Is(err, ErrTooManyLogins) {
		t.Fatalf("a fourth login across nodes: %v, want ErrTooManyLogins", err)
	}
}
