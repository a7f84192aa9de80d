package connlog

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/session"
)

// awsKeys are the keys of AWS Client VPN's connection log, every one of them.
var awsKeys = []string{
	"connection-log-type", "connection-attempt-status", "connection-reset-status",
	"connection-attempt-failure-reason", "connection-id", "client-vpn-endpoint-id",
	"transport-protocol", "connection-start-time", "connection-last-update-time", "client-ip",
	"common-name", "device-type", "device-ip", "port", "ingress-bytes", "egress-bytes",
	"ingress-packets", "egress-packets", "connection-end-time", "connection-duration-seconds",
	"posture-compliance-statuses", "username",
}

var t0 = time.Date(2026, 3, 26, 20, 37, 15, 0, time.UTC)

func testStatus() session.Status {
	return session.Status{
		Info: &session.Info{ConnectionID: "cvpn-connection-0123456789abcdef0", User: "alice", CommonName: "alice",
			Address: netip.MustParseAddr("10.2.0.5"), Transport: "udp", Platform: "win",
			Since: t0, Established: t0.Add(2 * time.Second)},
		Remote:  netip.MustParseAddrPort("198.51.100.7:50096"),
		Traffic: counters.TrafficSnapshot{RxBytes: 1000, RxPackets: 10, TxBytes: 2000, TxPackets: 20},
	}
}

// decode parses one line into its keys, failing unless it has exactly AWS's keys, all strings.
func decode(t *testing.T, line []byte) map[string]string {
	t.Helper()
	var raw map[string]any
	if err := json.Unmarshal(line, &raw); err != nil {
		t.Fatalf("line %q: %v", line, err)
	}
	out := map[string]string{}
	for k, v := range raw {
		s, ok := v.(string)
		if !ok {
			t.Errorf("%s: %v is not a string", k, v)
		}
		out[k] = s
	}
	var keys []string
	for k := range out {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := slices.Clone(awsKeys)
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		t.Errorf("keys %v, want AWS's %v", keys, want)
	}
	return out
}

func TestConnectionRecordSchema(t *testing.T) {
	s := testStatus()
	line := ConnectionRecord(s, "cvpn-endpoint-aaa", t0.Add(62*time.Second), nil)
	got := decode(t, line.Append(nil))
	want := map[string]string{
		"connection-log-type": "connection-attempt", "connection-attempt-status": "successful",
		"connection-reset-status": "NA", "connection-attempt-failure-reason": "NA",
		"connection-id": "cvpn-connection-0123456789abcdef0", "client-vpn-endpoint-id": "cvpn-endpoint-aaa",
		"transport-protocol": "udp", "connection-start-time": "2026-03-26 20:37:15",
		"connection-last-update-time": "2026-03-26 20:38:17", "client-ip": "10.2.0.5", "common-name": "alice",
		"device-type": "windows", "device-ip": "198.51.100.7", "port": "50096",
		"ingress-bytes": "1000", "egress-bytes": "2000", "ingress-packets": "10", "egress-packets": "20",
		"connection-end-time": "NA", "connection-duration-seconds": "60",
		"posture-compliance-statuses": "NA", "username": "NA",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if line.Final() {
		t.Error("a live connection's record is final")
	}

	end := session.End{Time: t0.Add(time.Hour + 2*time.Second), Reason: "client exited"}
	final := ConnectionRecord(s, "cvpn-endpoint-aaa", end.Time, &end)
	got = decode(t, final.Append(nil))
	if got["connection-end-time"] != "2026-03-26 21:37:17" || got["connection-last-update-time"] != "2026-03-26 21:37:17" ||
		got["connection-duration-seconds"] != "3600" {
		t.Errorf("final record: end %q, update %q, duration %q", got["connection-end-time"],
			got["connection-last-update-time"], got["connection-duration-seconds"])
	}
	if !final.Final() || final.User() != "alice" {
		t.Errorf("final record: Final %v, User %q", final.Final(), final.User())
	}
}

func TestAttemptRecordSchema(t *testing.T) {
	a := session.Attempt{ConnectionID: "cvpn-connection-fffffffffffffffff", Time: t0.In(time.FixedZone("X", 3600)),
		Remote: netip.MustParseAddrPort("[::ffff:198.51.100.9]:1194"), Transport: "tcp", CommonName: "mallory",
		Code: session.RefusedUnknownCA, Reason: "certificate signed by unknown authority"}
	got := decode(t, AttemptRecord(a, "cvpn-endpoint-aaa").Append(nil))
	want := map[string]string{
		"connection-attempt-status": "failed", "connection-attempt-failure-reason": "unknown_ca: certificate signed by unknown authority",
		"connection-start-time": "2026-03-26 20:37:15", "device-ip": "198.51.100.9", "port": "1194",
		"transport-protocol": "tcp", "common-name": "mallory", "username": "NA",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for _, k := range []string{"client-ip", "device-type", "ingress-bytes", "egress-bytes", "ingress-packets",
		"egress-packets", "connection-end-time", "connection-duration-seconds", "posture-compliance-statuses", "connection-reset-status"} {
		if got[k] != NA {
			t.Errorf("%s = %q, want NA in a refused attempt", k, got[k])
		}
	}
	// Nothing known of a client: NA, never "".
	got = decode(t, AttemptRecord(session.Attempt{Time: t0}, "").Append(nil))
	for k, v := range got {
		if v == "" {
			t.Errorf("%s is empty, want NA", k)
		}
	}
	if got["common-name"] != NA || got["connection-attempt-failure-reason"] != NA || got["device-ip"] != NA {
		t.Errorf("unknown client: %v", got)
	}
	// A username that is not the certificate's name is the username.
	got = decode(t, AttemptRecord(session.Attempt{Time: t0, User: "bob", CommonName: "laptop-7"}, "").Append(nil))
	if got["username"] != "bob" {
		t.Errorf("username %q, want bob", got["username"])
	}
}

// fakeFile records each write and sync with the time it happened.
type fakeFile struct {
	mu     sync.Mutex
	writes [][]byte
	wrote  []time.Time
	synced []time.Time
	closed bool
	gate   chan struct{} // when set, each Write waits for a value
}

func (f *fakeFile) Write(b []byte) (int, error) {
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = append(f.writes, slices.Clone(b))
	f.wrote = append(f.wrote, time.Now())
	return len(b), nil
}

func (f *fakeFile) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.synced = append(f.synced, time.Now())
	return nil
}

func (f *fakeFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeFile) lines(t *testing.T) []map[string]string {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []map[string]string
	for _, w := range f.writes {
		if len(w) == 0 || w[len(w)-1] != '\n' {
			t.Fatalf("a write that does not end a line: %q", w)
		}
		for _, l := range bytes.Split(bytes.TrimSuffix(w, []byte("\n")), []byte("\n")) {
			out = append(out, decode(t, l))
		}
	}
	return out
}

func openFake(t *testing.T, f *fakeFile, o Options) *Log {
	t.Helper()
	o.Path = "fake"
	o.Open = func(string) (File, error) { return f, nil }
	if o.Log == nil {
		o.Log = testlog.New(t)
	}
	l, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// The first write after an fsync arms the commit timer for Commit, later writes join that
// fsync (group commit), and the timer firing syncs them all: no record waits longer than Commit
// for its fsync. The timer is the test's, so the scheduler's delays do not enter.
func TestGroupCommit(t *testing.T) {
	type arm struct {
		d    time.Duration
		fire chan time.Time
	}
	arms := make(chan arm, 16)
	f := &fakeFile{}
	l := openFake(t, f, Options{after: func(d time.Duration) <-chan time.Time {
		a := arm{d, make(chan time.Time, 1)}
		arms <- a
		return a.fire
	}})
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s", what)
			}
		}
	}
	synced := func() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.synced) }
	noArm := func(when string) {
		t.Helper()
		select {
		case a := <-arms:
			t.Fatalf("%s: the commit timer armed again (%v)", when, a.d)
		case <-time.After(30 * time.Millisecond):
		}
	}
	for round := range 3 {
		for range 3 {
			l.Connected(testStatus())
		}
		var a arm
		select {
		case a = <-arms:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: no commit timer after a write", round)
		}
		if a.d != DefaultCommit {
			t.Fatalf("commit timer of %v, want %v", a.d, DefaultCommit)
		}
		waitFor("3 records", func() bool { return len(f.lines(t)) == 6*round+3 })
		for range 3 { // more records before the fsync join it
			l.Connected(testStatus())
		}
		waitFor("6 records", func() bool { return len(f.lines(t)) == 6*round+6 })
		noArm("writes before the fsync")
		if n := synced(); n != round {
			t.Fatalf("round %d: %d fsyncs before the timer fired", round, n)
		}
		a.fire <- time.Now()
		waitFor("the fsync", func() bool { return synced() == round+1 })
		noArm("idle after the fsync")
	}
}

// Under a burst from many goroutines, with the real timer, every write is synced soon and a
// burst costs far fewer fsyncs than records.
func TestGroupCommitBurst(t *testing.T) {
	f := &fakeFile{}
	l := openFake(t, f, Options{})
	var wg sync.WaitGroup
	const writers, each = 8, 100
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				l.Connected(testStatus())
				if i%10 == 0 {
					time.Sleep(time.Duration(w+1) * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	time.Sleep(DefaultCommit + 400*time.Millisecond) // the last fsync comes by itself, not from Close
	f.mu.Lock()
	wrote, synced := slices.Clone(f.wrote), slices.Clone(f.synced)
	f.mu.Unlock()
	if n := len(f.lines(t)); n != writers*each {
		t.Fatalf("%d records written, want %d", n, writers*each)
	}
	for i, w := range wrote {
		j, _ := slices.BinarySearchFunc(synced, w, func(s, w time.Time) int { return s.Compare(w) })
		if j == len(synced) {
			t.Fatalf("write %d at %v never synced", i, w)
		}
		// TestGroupCommit checks the bound exactly; here a loaded machine's scheduler adds its
		// delays to the timer's.
		if d := synced[j].Sub(w); d > DefaultCommit+400*time.Millisecond {
			t.Errorf("write %d synced after %v", i, d)
		}
	}
	if len(synced) >= writers*each/4 {
		t.Errorf("%d fsyncs for %d records: no group commit", len(synced), writers*each)
	}
	t.Logf("%d records, %d writes, %d fsyncs", writers*each, len(wrote), len(synced))
}

// Close writes what is queued and syncs it before closing the file.
func TestCloseFlushes(t *testing.T) {
	f := &fakeFile{}
	l := openFake(t, f, Options{Commit: time.Hour})
	for range 50 {
		l.Refused(session.Attempt{Time: t0, Code: session.RefusedRevoked, Reason: "revoked"})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(f.lines(t)); n != 50 {
		t.Errorf("%d records after Close, want 50", n)
	}
	if len(f.synced) == 0 || !f.closed {
		t.Errorf("after Close: %d fsyncs, closed %v", len(f.synced), f.closed)
	}
	l.Refused(session.Attempt{Time: t0}) // after Close: dropped, no panic
	if err := l.Reopen(); err != ErrClosed {
		t.Errorf("Reopen after Close: %v, want ErrClosed", err)
	}
}

// A writer that cannot keep up makes events drop records, counted and logged, never block.
func TestQueueBound(t *testing.T) {
	f := &fakeFile{gate: make(chan struct{})}
	var logs testlog.Buffer
	l := openFake(t, f, Options{Queue: 4, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 1000 {
			l.Refused(session.Attempt{Time: t0})
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("events blocked on a stuck writer")
	}
	// Held back: the queue's 4 and the one batch (at most maxBatch bytes) the stuck write holds.
	held := 4 + maxBatch/len(AttemptRecord(session.Attempt{Time: t0}, "").Append(nil)) + 1
	if d := l.Dropped(); d < uint64(1000-held) || d > 1000-4 {
		t.Errorf("dropped %d of 1000 with a queue of 4 and a batch of %d bytes", d, maxBatch)
	}
	close(f.gate) // the file is back
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "records dropped") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "connection log: queue full, records dropped") {
		t.Errorf("no log line about the drops: %q", logs.String())
	}
	l.Close()
	if n := uint64(len(f.lines(t))); n+l.Dropped() != 1000 {
		t.Errorf("%d written + %d dropped != 1000", n, l.Dropped())
	}
}

// Each live connection gets a record every update interval, with its counters then.
func TestUpdates(t *testing.T) {
	f := &fakeFile{}
	now := t0.Add(5 * time.Minute)
	l := openFake(t, f, Options{Update: 20 * time.Millisecond, Now: func() time.Time { return now }})
	var mu sync.Mutex
	s := testStatus()
	l.Track(func() []session.Status {
		mu.Lock()
		defer mu.Unlock()
		return []session.Status{s}
	})
	deadline := time.Now().Add(5 * time.Second)
	for len(f.lines(t)) < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	l.Close()
	lines := f.lines(t)
	if len(lines) < 3 {
		t.Fatalf("%d update records in 5 s at an interval of 20 ms", len(lines))
	}
	for _, r := range lines {
		if r["connection-last-update-time"] != "2026-03-26 20:42:15" || r["connection-end-time"] != NA ||
			r["ingress-bytes"] != "1000" || r["connection-duration-seconds"] != "298" {
			t.Errorf("update record %v", r)
		}
	}
}

// Reopen (SIGUSR1) writes to a new file at the same path once logrotate moved the old one.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "connections.log")
	l, err := Open(Options{Path: path, Log: testlog.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Refused(session.Attempt{Time: t0, CommonName: "before"})
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil { // the queued record goes to the old file
		t.Fatal(err)
	}
	l.Refused(session.Attempt{Time: t0, CommonName: "after"})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for file, cn := range map[string]string{path + ".1": "before", path: "after"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		if len(lines) != 1 || decode(t, []byte(lines[0]))["common-name"] != cn {
			t.Errorf("%s: %q, want one record of %s", file, b, cn)
		}
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("new file: %v %v, want mode 0640", st.Mode(), err)
	}
}

// A path that cannot open leaves the log writing where it did; "" stops it.
func TestSetPath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.log")
	l, err := Open(Options{Path: path, Log: testlog.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.SetPath(filepath.Join(dir, "missing", "b.log")); err == nil {
		t.Fatal("SetPath to a missing directory succeeded")
	}
	l.Refused(session.Attempt{Time: t0, CommonName: "kept"})
	if err := l.SetPath(""); err != nil {
		t.Fatal(err)
	}
	l.Refused(session.Attempt{Time: t0, CommonName: "off"})
	if err := l.SetPath(filepath.Join(dir, "b.log")); err != nil {
		t.Fatal(err)
	}
	l.Refused(session.Attempt{Time: t0, CommonName: "b"})
	l.Close()
	a, _ := os.ReadFile(path)
	b, _ := os.ReadFile(filepath.Join(dir, "b.log"))
	if strings.Count(string(a), "\n") != 1 || !strings.Contains(string(a), `"kept"`) ||
		strings.Count(string(b), "\n") != 1 || !strings.Contains(string(b), `"b"`) {
		t.Errorf("a.log %q, b.log %q", a, b)
	}
}

// A file whose last line a crash cut short gets a newline before the next record.
func TestOpenAfterTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	if err := os.WriteFile(path, []byte(`{"connection-log-type":"conn`), 0o640); err != nil {
		t.Fatal(err)
	}
	l, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	l.Refused(session.Attempt{Time: t0})
	l.Close()
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("%q", b)
	}
	decode(t, []byte(lines[1]))
}

func TestEndpointID(t *testing.T) {
	a, b := EndpointID("10.2.0.0/22 10.0.1.2"), EndpointID("10.2.0.0/22 10.0.1.3")
	if a == b || a != EndpointID("10.2.0.0/22 10.0.1.2") || len(a) != len("cvpn-endpoint-")+17 || !strings.HasPrefix(a, "cvpn-endpoint-") {
		t.Errorf("EndpointID: %q, %q", a, b)
	}
}

// failingFile fails its writes while full is set, keeping half of what it was given, as a disk
// that fills up mid-write does.
type failingFile struct {
	fakeFile
	full bool
}

func (f *failingFile) Write(b []byte) (int, error) {
	f.mu.Lock()
	full := f.full
	f.mu.Unlock()
	if full {
		f.fakeFile.Write(b[:len(b)/2])
		return len(b) / 2, syscall.ENOSPC
	}
	return f.fakeFile.Write(b)
}

// A write that fails part way leaves a torn line; the next record starts a new line, and the
// failures are logged, not once per record.
func TestWriteFailure(t *testing.T) {
	f := &failingFile{full: true}
	var logs testlog.Buffer
	l, err := Open(Options{Path: "x", Open: func(string) (File, error) { return f, nil },
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 5 { // one write per record
		l.Refused(session.Attempt{Time: t0, CommonName: "lost"})
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			f.mu.Lock()
			n := len(f.writes)
			f.mu.Unlock()
			if n == i+1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("write %d never came", i+1)
			}
		}
	}
	f.mu.Lock()
	f.full = false
	f.mu.Unlock()
	l.Refused(session.Attempt{Time: t0, CommonName: "kept"})
	l.Close()
	var all []byte
	for _, w := range f.writes {
		all = append(all, w...)
	}
	lines := strings.Split(strings.TrimSuffix(string(all), "\n"), "\n")
	if last := decode(t, []byte(lines[len(lines)-1])); last["common-name"] != "kept" {
		t.Errorf("the record after the failures is not whole on its own line: %q", all)
	}
	if n := strings.Count(logs.String(), "connection log: write"); n != 1 || !strings.Contains(logs.String(), "failed_writes=1") {
		t.Errorf("%d log lines of failed writes, want 1:\n%s", n, logs.String())
	}
}

// TestDirectoryUserRecord: a directory user without a certificate is logged with its username
// as username and common name (as AWS does), and a client-connect handler's posture statuses
// are kept.
func TestDirectoryUserRecord(t *testing.T) {
	s := testStatus()
	info := *s.Info
	info.User, info.Username, info.CommonName = "bob", "bob", ""
	info.Posture = []string{"compliant", "disk-encrypted"}
	s.Info = &info
	got := decode(t, ConnectionRecord(s, "cvpn-endpoint-1", t0.Add(time.Minute), nil).Append(nil))
	if got["username"] != "bob" || got["common-name"] != "bob" || got["posture-compliance-statuses"] != "compliant,disk-encrypted" {
		t.Errorf("username %q, common-name %q, posture %q", got["username"], got["common-name"], got["posture-compliance-statuses"])
	}
	info.CommonName = "bob-laptop" // certificate and directory both
	got = decode(t, ConnectionRecord(s, "cvpn-endpoint-1", t0.Add(time.Minute), nil).Append(nil))
	if got["username"] != "bob" || got["common-name"] != "bob-laptop" {
		t.Errorf("both: username %q, common-name %q", got["username"], got["common-name"])
	}
}

// An IPv6 session's record carries its IPv6 address beside the IPv4 one; AWS's keys stay as
// they are, the new one is only there when the session has an IPv6 address.
func TestIPv6Record(t *testing.T) {
	s := testStatus()
	info := *s.Info
	info.Address6 = netip.MustParseAddr("fd00:10:1::1:2")
	s.Info = &info
	line := ConnectionRecord(s, "cvpn-endpoint-1", t0.Add(time.Minute), nil).Append(nil)
	var raw map[string]any
	if err := json.Unmarshal(line, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["client-ipv6"] != "fd00:10:1::1:2" || raw["client-ip"] != info.Address.String() {
		t.Errorf("client-ipv6 %v, client-ip %v in %s", raw["client-ipv6"], raw["client-ip"], line)
	}
	var back Record
	if err := json.Unmarshal(line, &back); err != nil || back.ClientIPv6 != "fd00:10:1::1:2" {
		t.Errorf("read back: %+v, %v", back, err)
	}
}

// TestNodeRecords: a cluster node's log stamps every record (admitted, refused, updated, ended)
// with its node-name, which reads back; a single node's records have AWS's keys alone (the
// other tests decode them with decode, which checks that).
func TestNodeRecords(t *testing.T) {
	f := &fakeFile{}
	l := openFake(t, f, Options{Node: "node-a", Update: 10 * time.Millisecond, Now: func() time.Time { return t0 }})
	s := testStatus()
	l.Connected(s)
	l.Refused(session.Attempt{Time: t0, CommonName: "mallory"})
	l.Track(func() []session.Status { return []session.Status{s} })
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		n := len(f.writes)
		f.mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	l.Track(func() []session.Status { return nil })
	l.Disconnected(s, session.End{Time: t0.Add(time.Minute)})
	l.Close()
	var all []byte
	f.mu.Lock()
	for _, w := range f.writes {
		all = append(all, w...)
	}
	f.mu.Unlock()
	recs, skipped, err := ReadRecords(bytes.NewReader(all))
	if err != nil || skipped != 0 || len(recs) < 4 {
		t.Fatalf("read back %d records (%d skipped, %v):\n%s", len(recs), skipped, err, all)
	}
	final, update := false, false
	for i, r := range recs {
		if r.Node != "node-a" {
			t.Errorf("record %d has node %q:\n%s", i, r.Node, all)
		}
		final = final || r.Final()
		update = update || (i >= 2 && !r.Final())
	}
	if !final || !update || recs[1].AttemptStatus != StatusFailed {
		t.Errorf("want an admitted, a refused, an update and a final record:\n%s", all)
	}
	for line := range bytes.SplitSeq(bytes.TrimSuffix(all, []byte("\n")), []byte("\n")) {
		var raw map[string]any
		if err := json.Unmarshal(line, &raw); err != nil || raw["node-name"] != "node-a" || len(raw) != len(awsKeys)+1 {
			t.Errorf("line %s: %d keys, node-name %v (%v)", line, len(raw), raw["node-name"], err)
		}
	}
}
