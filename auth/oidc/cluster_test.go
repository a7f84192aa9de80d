package oidc

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/cvpn/cvpn/state"
)

// TestClusterCallbackOnOtherNode: two providers sharing one store are two nodes of a
// cluster: a login begun on A completes on B, once; the bound counts both; the store holds
// neither the state nor the login's secrets.
func TestClusterCallbackOnOtherNode(t *testing.T) {
	lab := startLab(t)
	st := state.NewMemory()
	a := newRP(t, lab, "cvpn", "cvpn-secret", redirectA, func(c *Config) { c.Store = st; c.MaxPendingLogins = 3 })
	b := newRP(t, lab, "cvpn", "cvpn-secret", redirectA, func(c *Config) { c.Store = st; c.MaxPendingLogins = 3; c.Now = a.clk.Now })
	login, cb := a.signIn(t, "alice", "alice-pw")
	keys, _ := st.List(context.Background(), LoginBucket)
	for _, k := range keys {
		v, _ := st.Get(context.Background(), LoginBucket, k)
		if k == login.State || bytes.Contains(v, []byte(login.State)) {
			t.Errorf("the store holds the state in the clear")
		}
	}
	id, err := b.complete(t, cb)
	if err != nil || id.Username != "alice" {
		t.Fatalf("callback on the other node: %+v, %v", id, err)
	}
	if _, err := a.complete(t, cb); !errors.Is(err, ErrStateReplayed) {
		t.Errorf("the callback again on the first node: %v, want ErrStateReplayed", err)
	}
	if _, _, err := b.Begin(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Begin(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Begin(context.Background()); !errors.Is(err, ErrTooManyLogins) {
		t.Errorf("a fourth login within the TTL across nodes: %v, want ErrTooManyLogins", err)
	}
}
