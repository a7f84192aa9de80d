package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/endpoint/connlog"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/session"
)

func TestReportUsage(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	setClock(t, now)
	cfg := newEndpoint(t)
	f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("connection_log: {enabled: true, file: connections.log}\n")
	f.Close()
	code, _, stderr := runCmd(t, "report", "usage", "--config", cfg)
	if code != exitRuntime || !strings.Contains(stderr, "no connection log") {
		t.Errorf("before any log: exit %d, stderr %q", code, stderr)
	}

	st := func(id, cn string, at time.Time, rx, tx uint64) session.Status {
		return session.Status{Info: &session.Info{ConnectionID: id, User: cn, CommonName: cn, Since: at, Established: at},
			Traffic: counters.TrafficSnapshot{RxBytes: rx, TxBytes: tx}}
	}
	var log []byte
	start := now.Add(-3 * time.Hour)
	end := session.End{Time: start.Add(90 * time.Minute)}
	log = connlog.ConnectionRecord(st("c-1", "alice", start, 0, 0), "", start, nil).Append(log)
	log = connlog.ConnectionRecord(st("c-1", "alice", start, 3<<20, 1<<30), "", end.Time, &end).Append(log)
	log = connlog.ConnectionRecord(st("c-2", "bob", now.Add(-48*time.Hour), 1, 1), "", now.Add(-48*time.Hour), nil).Append(log)
	log = connlog.AttemptRecord(session.Attempt{Time: now.Add(-time.Minute), CommonName: "mallory", Code: session.RefusedUnknownCA, Reason: "unknown CA"}, "").Append(log)
	if err := os.WriteFile(filepath.Join(filepath.Dir(cfg), "connections.log"), log, 0o640); err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := runCmd(t, "report", "usage", "--config", cfg)
	if code != 0 {
		t.Fatalf("report usage: exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"USER", "alice", "1h30m0s", "3.0 MiB", "1.0 GiB", end.Time.Format(connlog.TimeLayout), "mallory"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("table lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "bob") {
		t.Errorf("bob's session two days ago is in the last 24 hours:\n%s", stdout)
	}

	code, stdout, stderr = runCmd(t, "report", "usage", "--config", cfg, "--since", "3d", "--json")
	if code != 0 {
		t.Fatalf("report usage --json: exit %d, stderr %q", code, stderr)
	}
	var rep connlog.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, stdout)
	}
	if len(rep.Users) != 3 || rep.Users[0].User != "alice" || rep.Users[0].IngressBytes != 3<<20 || rep.Users[0].EgressBytes != 1<<30 ||
		rep.Users[0].ConnectedSeconds != 5400 || rep.Users[1].User != "bob" || rep.Users[1].Active != 1 || rep.Users[2].Failed != 1 {
		t.Errorf("report %+v", rep.Users)
	}

	for _, args := range [][]string{{"report"}, {"report", "usage", "--since", "yesterday", "--config", cfg}, {"report", "usage", "extra"}} {
		if code, _, _ := runCmd(t, args...); code != exitInvalid {
			t.Errorf("cvpn %v: exit %d, want %d", args, code, exitInvalid)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"24h":                 now.Add(-24 * time.Hour),
		"7d":                  now.Add(-7 * 24 * time.Hour),
		"90m":                 now.Add(-90 * time.Minute),
		"2026-04-01":          time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC),
		"2026-04-01 10:20:30": time.Date(2026, 4, 1, 10, 20, 30, 0, time.UTC),
	} {
		got, err := parseSince(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"-1h", "x", "7dd", "d"} {
		if _, err := parseSince(bad, now); err == nil {
			t.Errorf("parseSince(%q) succeeded", bad)
		}
	}
}

// TestReportUsageNodes: --log reads several cluster nodes' logs (files, globs, directories)
// without an endpoint file, and breaks each user's use down by node.
func TestReportUsageNodes(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	setClock(t, now)
	dir := t.TempDir()
	st := func(id, cn string, at time.Time, rx, tx uint64) session.Status {
		return session.Status{Info: &session.Info{ConnectionID: id, User: cn, CommonName: cn, Since: at, Established: at},
			Traffic: counters.TrafficSnapshot{RxBytes: rx, TxBytes: tx}}
	}
	start := now.Add(-time.Hour)
	end := session.End{Time: start.Add(30 * time.Minute)}
	write := func(node string, recs ...connlog.Record) {
		t.Helper()
		var log []byte
		for _, r := range recs {
			r.Node = node
			log = r.Append(log)
		}
		if err := os.MkdirAll(filepath.Join(dir, node), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, node, "connections.log"), log, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	write("node-a", connlog.ConnectionRecord(st("c-1", "alice", start, 1<<20, 2<<20), "", end.Time, &end))
	write("node-b", connlog.ConnectionRecord(st("c-1", "alice", start, 1<<20, 1<<20), "", now, nil),
		connlog.ConnectionRecord(st("c-2", "bob", start, 5, 5), "", now, nil))
	write("node-c", connlog.AttemptRecord(session.Attempt{Time: now.Add(-time.Minute), CommonName: "mallory", Code: session.RefusedUnknownCA, Reason: "unknown CA"}, ""))

	code, stdout, stderr := runCmd(t, "report", "usage", "--log", filepath.Join(dir, "node-a", "connections.log"),
		"--log", filepath.Join(dir, "node-[bc]", "*.log"))
	if code != 0 {
		t.Fatalf("report usage --log: exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"(3 file(s))", "by node (node-a, node-b, node-c)", "USER     NODE", "alice    node-a", "alice    node-b", "bob      node-b", "mallory  node-c"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, stdout)
		}
	}
	// alice's two sessions, one per node, add up in the users table: 2 MiB in, 3 MiB out.
	if !regexp.MustCompile(`(?m)^alice\s+2\s+1\s+0\s+1h30m0s\s+2\.0 MiB\s+3\.0 MiB`).MatchString(stdout) {
		t.Errorf("alice's total over both nodes is not in the users table:\n%s", stdout)
	}

	code, stdout, stderr = runCmd(t, "report", "usage", "--json", "--log", filepath.Join(dir, "node-a"), "--log", filepath.Join(dir, "node-b"))
	if code != 0 {
		t.Fatalf("report usage --json --log DIR: exit %d, stderr %q", code, stderr)
	}
	var rep connlog.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, stdout)
	}
	if len(rep.Nodes) != 2 || len(rep.ByNode) != 3 || rep.ByNode[1].Node != "node-b" || rep.ByNode[1].Active != 1 || rep.Users[0].Sessions != 2 {
		t.Errorf("report %+v", rep)
	}

	if code, _, stderr := runCmd(t, "report", "usage", "--log", filepath.Join(dir, "none*")); code != exitRuntime || !strings.Contains(stderr, "no connection log") {
		t.Errorf("--log matching nothing: exit %d, stderr %q", code, stderr)
	}
	if code, _, _ := runCmd(t, "report", "usage", "--config", "x.yaml", "--log", dir); code != exitInvalid {
		t.Errorf("--config with --log: exit %d, want %d", code, exitInvalid)
	}
}
