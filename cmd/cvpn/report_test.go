package main

import (
	"encoding/json"
	"os"
	"path/filepath"
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
