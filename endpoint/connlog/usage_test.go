package connlog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/session"
)

func status(id, cn string, since time.Time, rx, tx uint64) session.Status {
	return session.Status{
		Info:    &session.Info{ConnectionID: id, User: cn, CommonName: cn, Transport: "udp", Since: since, Established: since},
		Traffic: counters.TrafficSnapshot{RxBytes: rx, TxBytes: tx},
	}
}

func lines(recs ...Record) string {
	var b []byte
	for _, r := range recs {
		b = r.Append(b)
	}
	return string(b)
}

func TestReadUsage(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "connections.log")
	old := t0.Add(-48 * time.Hour)
	end := func(d time.Duration) *session.End { return &session.End{Time: t0.Add(d)} }
	// Rotated: alice's first session, and one two days old.
	rotated := lines(
		ConnectionRecord(status("c-old", "alice", old, 5, 5), "", old, nil),
		ConnectionRecord(status("c-old", "alice", old, 7, 9), "", old, &session.End{Time: old.Add(time.Minute)}),
		ConnectionRecord(status("c-1", "alice", t0, 0, 0), "", t0, nil),
	)
	// Current: alice's first session ends, her second is live (two updates, the later wins), bob
	// is refused twice and connects once, and the last line was cut short by a crash.
	current := lines(
		ConnectionRecord(status("c-1", "alice", t0, 100, 200), "", t0, end(10*time.Minute)),
		ConnectionRecord(status("c-2", "alice", t0.Add(time.Hour), 10, 20), "", t0.Add(time.Hour+5*time.Minute), nil),
		ConnectionRecord(status("c-2", "alice", t0.Add(time.Hour), 30, 40), "", t0.Add(time.Hour+10*time.Minute), nil),
		AttemptRecord(session.Attempt{Time: t0, CommonName: "bob", Code: session.RefusedRevoked, Reason: "revoked"}, ""),
		AttemptRecord(session.Attempt{Time: t0.Add(time.Second), CommonName: "bob", Code: session.RefusedRevoked, Reason: "revoked"}, ""),
		ConnectionRecord(status("c-3", "bob", t0, 1, 2), "", t0, end(time.Minute)),
	) + `{"connection-log-type":"connection-attempt","connection-attem`
	if err := os.WriteFile(path+".1", []byte(rotated), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".2.gz", []byte("not a log"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(current), 0o640); err != nil {
		t.Fatal(err)
	}
	files, err := LogFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Fatalf("files %v, want the log and its .1", files)
	}
	rep, err := ReadUsage(files, t0.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Skipped != 1 {
		t.Errorf("skipped %d lines, want the torn one", rep.Skipped)
	}
	if len(rep.Users) != 2 {
		t.Fatalf("users %+v", rep.Users)
	}
	alice, bob := rep.Users[0], rep.Users[1]
	wantAlice := Usage{User: "alice", Sessions: 2, Active: 1, ConnectedSeconds: 600 + 600,
		IngressBytes: 130, EgressBytes: 240, LastSeen: t0.Add(time.Hour + 10*time.Minute)}
	if alice != wantAlice {
		t.Errorf("alice %+v, want %+v", alice, wantAlice)
	}
	wantBob := Usage{User: "bob", Sessions: 1, Failed: 2, ConnectedSeconds: 60, IngressBytes: 1, EgressBytes: 2, LastSeen: t0.Add(time.Minute)}
	if bob != wantBob {
		t.Errorf("bob %+v, want %+v", bob, wantBob)
	}
	// A window from before the old session counts it too.
	rep, _ = ReadUsage(files, old.Add(-time.Hour))
	if rep.Users[0].Sessions != 3 || rep.Users[0].IngressBytes != 137 {
		t.Errorf("with the old session: %+v", rep.Users[0])
	}
	if _, err := LogFiles(filepath.Join(dir, "none.log")); err == nil || !strings.Contains(err.Error(), "no connection log") {
		t.Errorf("LogFiles of a missing log: %v", err)
	}
}
