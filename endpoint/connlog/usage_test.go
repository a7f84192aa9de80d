package connlog

import (
	"os"
	"path/filepath"
	"slices"
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

// onNode stamps records as a cluster node's log writes them.
func onNode(node string, recs ...Record) []Record {
	for i := range recs {
		recs[i].Node = node
	}
	return recs
}

// TestReadUsageNodes: several nodes' logs merge; the same connection id on two nodes is two
// connections; each user's use is broken down by node.
func TestReadUsageNodes(t *testing.T) {
	dir := t.TempDir()
	a := lines(onNode("node-a",
		ConnectionRecord(status("c-1", "alice", t0, 10, 20), "", t0, end(t0, time.Minute)),
		AttemptRecord(session.Attempt{Time: t0, CommonName: "bob", Code: session.RefusedRevoked, Reason: "revoked"}, ""),
	)...)
	b := lines(onNode("node-b",
		ConnectionRecord(status("c-1", "alice", t0, 1, 2), "", t0, nil), // the same id, another node's
		ConnectionRecord(status("c-1", "alice", t0, 3, 4), "", t0.Add(time.Minute), nil),
		ConnectionRecord(status("c-2", "bob", t0, 5, 6), "", t0, end(t0, 2*time.Minute)),
	)...)
	for name, data := range map[string]string{"node-a/connections.log": a, "node-b/connections.log": b} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	files, err := LogInputs([]string{filepath.Join(dir, "node-*", "connections.log")})
	if err != nil || len(files) != 2 {
		t.Fatalf("LogInputs of a glob: %v, %v", files, err)
	}
	rep, err := ReadUsage(files, t0.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Nodes, []string{"node-a", "node-b"}) {
		t.Errorf("nodes %v", rep.Nodes)
	}
	wantUsers := []Usage{
		{User: "alice", Sessions: 2, Active: 1, ConnectedSeconds: 60 + 60, IngressBytes: 13, EgressBytes: 24, LastSeen: t0.Add(time.Minute)},
		{User: "bob", Sessions: 1, Failed: 1, ConnectedSeconds: 120, IngressBytes: 5, EgressBytes: 6, LastSeen: t0.Add(2 * time.Minute)},
	}
	if !slices.Equal(rep.Users, wantUsers) {
		t.Errorf("users\n%+v\nwant\n%+v", rep.Users, wantUsers)
	}
	wantByNode := []Usage{
		{User: "alice", Node: "node-a", Sessions: 1, ConnectedSeconds: 60, IngressBytes: 10, EgressBytes: 20, LastSeen: t0.Add(time.Minute)},
		{User: "alice", Node: "node-b", Sessions: 1, Active: 1, ConnectedSeconds: 60, IngressBytes: 3, EgressBytes: 4, LastSeen: t0.Add(time.Minute)},
		{User: "bob", Node: "node-a", Failed: 1, LastSeen: t0},
		{User: "bob", Node: "node-b", Sessions: 1, ConnectedSeconds: 120, IngressBytes: 5, EgressBytes: 6, LastSeen: t0.Add(2 * time.Minute)},
	}
	if !slices.Equal(rep.ByNode, wantByNode) {
		t.Errorf("by node\n%+v\nwant\n%+v", rep.ByNode, wantByNode)
	}

	// A directory gives its files; a single node's logs have no breakdown.
	if files, err := LogInputs([]string{filepath.Join(dir, "node-a"), filepath.Join(dir, "node-a", "connections.log")}); err != nil || len(files) != 1 {
		t.Errorf("LogInputs of a directory and its file: %v, %v", files, err)
	}
	single := filepath.Join(dir, "single.log")
	if err := os.WriteFile(single, []byte(lines(ConnectionRecord(status("c-9", "carol", t0, 1, 1), "", t0, nil))), 0o640); err != nil {
		t.Fatal(err)
	}
	if rep, err := ReadUsage([]string{single}, t0.Add(-time.Hour)); err != nil || rep.Nodes != nil || rep.ByNode != nil || len(rep.Users) != 1 {
		t.Errorf("a single node's log: %+v, %v", rep, err)
	}
	for _, bad := range []string{filepath.Join(dir, "none-*.log"), filepath.Join(dir, "none.log")} {
		if _, err := LogInputs([]string{bad}); err == nil || !strings.Contains(err.Error(), "no connection log") {
			t.Errorf("LogInputs(%s): %v", bad, err)
		}
	}
}

func end(at time.Time, d time.Duration) *session.End { return &session.End{Time: at.Add(d)} }
