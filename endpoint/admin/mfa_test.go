package admin

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/cvpn/cvpn/tunnel"
)

// fakeEnrolments keeps secrets in a map.
type fakeEnrolments struct {
	mu      sync.Mutex
	secrets map[string]int
	n       int
}

func (f *fakeEnrolments) Enroll(_ context.Context, user string, force bool) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.secrets[user]; ok && !force {
		return "", ErrEnrolled
	}
	f.n++
	f.secrets[user] = f.n
	return "otpauth://totp/test:" + user + "?secret=S" + string(rune('A'+f.n)), nil
}

func (f *fakeEnrolments) Reset(_ context.Context, user string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.secrets, user)
	return nil
}

// TestEnrolUserMFA: enrolment answers the URI, refuses to replace a secret without Force, and
// reset removes it; an endpoint without a second factor says so.
func TestEnrolUserMFA(t *testing.T) {
	l := newAPILab(t)
	ctx := context.Background()
	if _, err := l.client.EnrollUserMFA(ctx, EnrollUserMfaInput{Username: "alice"}); !isCode(err, "InvalidConfiguration") {
		t.Errorf("without a second factor: %v", err)
	}
	f := &fakeEnrolments{secrets: map[string]int{}}
	l.handler.src.MFA = func() (Enrolments, error) { return f, nil }
	out, err := l.client.EnrollUserMFA(ctx, EnrollUserMfaInput{Username: "alice"})
	if err != nil || out.Username != "alice" || out.OtpauthURI == "" {
		t.Fatalf("enroll: %+v %v", out, err)
	}
	if _, err := l.client.EnrollUserMFA(ctx, EnrollUserMfaInput{Username: "alice"}); !isCode(err, "IncorrectState") {
		t.Errorf("second enrolment: %v", err)
	}
	again, err := l.client.EnrollUserMFA(ctx, EnrollUserMfaInput{Username: "alice", Force: true})
	if err != nil || again.OtpauthURI == out.OtpauthURI {
		t.Errorf("forced enrolment: %+v %v", again, err)
	}
	if _, err := l.client.EnrollUserMFA(ctx, EnrollUserMfaInput{}); !isCode(err, "MissingParameter") {
		t.Errorf("no username: %v", err)
	}
	if _, err := l.client.ResetUserMFA(ctx, ResetUserMfaInput{Username: "alice"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.secrets["alice"]; ok {
		t.Error("reset left the secret")
	}
}

// TestDirectoryUserListed: a directory user without a certificate is listed with the username
// as CommonName, as AWS does, with the handler's posture statuses.
func TestDirectoryUserListed(t *testing.T) {
	l := newAPILab(t)
	st := status(idAlice, "carol", "", "10.2.0.4", "192.0.2.12:50003", 10)
	st.Info.Username = "carol"
	st.Info.Posture = []string{"compliant"}
	l.engine.sessions = []tunnel.Status{st}
	out, err := l.client.DescribeClientVpnConnections(context.Background(), DescribeClientVpnConnectionsInput{})
	if err != nil || len(out.Connections) != 1 {
		t.Fatalf("%+v %v", out, err)
	}
	c := out.Connections[0]
	if c.Username != "carol" || c.CommonName != "carol" || !slices.Equal(c.PostureComplianceStatuses, []string{"compliant"}) {
		t.Errorf("listed %+v", c)
	}
}

func isCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
