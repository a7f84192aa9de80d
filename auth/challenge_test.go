package auth

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/state"
)

// twoNodes returns a fixture whose pipeline is node A, and node B: another pipeline with the
// same configuration and the same store, as two nodes of a cluster have.
func twoNodes(t *testing.T) (*fixture, *Pipeline) {
	t.Helper()
	f := newFixture(t, true, func(c *Config) { c.State = state.NewMemory() })
	b, err := New(f.cfg, testlog.New(t), f.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return f, b
}

// TestClusterChallengeAnsweredOnOtherNode: a challenge issued on A is answered on B, once;
// the per-user bound counts both nodes; a challenge expires on every node.
func TestClusterChallengeAnsweredOnOtherNode(t *testing.T) {
	f, b := twoNodes(t)
	code := f.enroll(t, "alice")
	ctx := context.Background()
	issue := func(p *Pipeline) (string, bool) {
		_, err := p.Authenticate(ctx, req("alice", "s3cret"))
		c, msg := refusal(t, err)
		if c != CodeMFAChallenge || !strings.HasPrefix(msg, "CRV1:") {
			return "", false
		}
		return strings.Split(msg, ":")[2], true
	}
	id, ok := issue(f.p)
	if !ok {
		t.Fatal("no challenge issued")
	}
	if _, err := b.Authenticate(ctx, req("alice", "CRV1::"+id+"::"+code(f.clock.Now()))); err != nil {
		t.Fatalf("answer on the other node: %v", err)
	}
	f.clock.Add(30 * time.Second)
	_, err := f.p.Authenticate(ctx, req("alice", "CRV1::"+id+"::"+code(f.clock.Now())))
	if c, _ := refusal(t, err); c != CodeChallengeUnknown {
		t.Fatalf("the challenge answered again on the first node: %q", c)
	}
	for i := range maxUserChallenge {
		if _, ok := issue([]*Pipeline{f.p, b}[i%2]); !ok {
			t.Fatalf("challenge %d not issued", i)
		}
	}
	if _, ok := issue(b); ok {
		t.Fatal("a challenge beyond the per-user bound was issued across nodes")
	}
	f.clock.Add(challengeTTL)
	if _, ok := issue(b); !ok {
		t.Fatal("the expired challenges still count against the bound")
	}
}

// TestClusterCodeLockout: wrong codes on A lock the user out on B.
func TestClusterCodeLockout(t *testing.T) {
	f, b := twoNodes(t)
	code := f.enroll(t, "alice")
	ctx := context.Background()
	wrong := func() string { return fmt.Sprintf("%06d", (atoi(code(f.clock.Now()))+500000)%1000000) }
	for i := range maxCodeFailures {
		_, err := []*Pipeline{f.p, b}[i%2].Authenticate(ctx, req("alice", scrv1("s3cret", wrong())))
		if c, _ := refusal(t, err); c != CodeMFAInvalid {
			t.Fatalf("guess %d: %q", i, c)
		}
	}
	for _, p := range []*Pipeline{f.p, b} {
		_, err := p.Authenticate(ctx, req("alice", scrv1("s3cret", code(f.clock.Now()))))
		if c, _ := refusal(t, err); c != CodeMFALocked {
			t.Fatalf("right code after %d wrong ones across nodes: %q, want locked", maxCodeFailures, c)
		}
	}
	f.clock.Add(codeLockout)
	if _, err := b.Authenticate(ctx, req("alice", scrv1("s3cret", code(f.clock.Now())))); err != nil {
		t.Fatalf("after the lockout: %v", err)
	}
}
