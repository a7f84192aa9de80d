package sdnotify

import (
	"bytes"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeManager is the service manager's end of NOTIFY_SOCKET: a unixgram socket the test reads.
type fakeManager struct {
	t    *testing.T
	conn *net.UnixConn
}

// listenNotify binds a notify socket and points NOTIFY_SOCKET at it for the test.
func listenNotify(t *testing.T) *fakeManager {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return &fakeManager{t: t, conn: conn}
}

// next reads the next datagram (within 10 s) as its assignments.
func (m *fakeManager) next() map[string]string {
	m.t.Helper()
	buf := make([]byte, 4096)
	_ = m.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := m.conn.Read(buf)
	if err != nil {
		m.t.Fatalf("no notification: %v", err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(string(buf[:n]), "\n"), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			m.t.Fatalf("notification line %q is no assignment in %q", line, buf[:n])
		}
		if _, dup := out[k]; dup {
			m.t.Fatalf("%s twice in %q", k, buf[:n])
		}
		out[k] = v
	}
	return out
}

// expect reads the next datagram and checks that it holds exactly the keys of want, with want's
// values where they are not empty.
func (m *fakeManager) expect(want map[string]string) map[string]string {
	m.t.Helper()
	got := m.next()
	if len(got) != len(want) {
		m.t.Fatalf("notification %v, want the keys of %v", got, want)
	}
	for k, v := range want {
		g, ok := got[k]
		if !ok || (v != "" && g != v) {
			m.t.Fatalf("notification %v, want %s=%s", got, k, v)
		}
	}
	return got
}

func monotonicUsec(t *testing.T) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

// TestNotifications: each state arrives as one datagram with the assignments systemd expects, in
// the order sent; RELOADING carries the monotonic clock of its sending.
func TestNotifications(t *testing.T) {
	m := listenNotify(t)
	n := New(nil)
	if !n.Enabled() {
		t.Fatal("Enabled is false with NOTIFY_SOCKET set")
	}
	n.Ready("0 sessions, 0 B in, 0 B out")
	m.expect(map[string]string{"READY": "1", "MAINPID": strconv.Itoa(os.Getpid()), "STATUS": "0 sessions, 0 B in, 0 B out"})

	before := monotonicUsec(t)
	n.Reloading()
	after := monotonicUsec(t)
	got := m.expect(map[string]string{"RELOADING": "1", "MONOTONIC_USEC": ""})
	if usec, err := strconv.ParseInt(got["MONOTONIC_USEC"], 10, 64); err != nil || usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%s, want the monotonic clock between %d and %d", got["MONOTONIC_USEC"], before, after)
	}
	n.Reloaded()
	m.expect(map[string]string{"READY": "1"})

	n.Status("2 sessions,\nSTOPPING=1 injected") // a status cannot add an assignment
	m.expect(map[string]string{"STATUS": "2 sessions, STOPPING=1 injected"})
	n.Watchdog()
	m.expect(map[string]string{"WATCHDOG": "1"})
	n.Stopping()
	m.expect(map[string]string{"STOPPING": "1"})
}

// TestNoSocketNoop: without NOTIFY_SOCKET nothing is sent and nothing is logged.
func TestNoSocketNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	var log bytes.Buffer
	n := New(slog.New(slog.NewTextHandler(&log, nil)))
	if n.Enabled() {
		t.Fatal("Enabled is true without NOTIFY_SOCKET")
	}
	n.Ready("x")
	n.Reloading()
	n.Reloaded()
	n.Watchdog()
	n.Stopping()
	if log.Len() != 0 {
		t.Errorf("logged without a notify socket:\n%s", log.String())
	}
}

// TestSendFailureLoggedOnce: a notify socket that is gone is logged once, not at every status.
func TestSendFailureLoggedOnce(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone"))
	var log bytes.Buffer
	n := New(slog.New(slog.NewTextHandler(&log, nil)))
	for range 3 {
		n.Status("x")
	}
	if c := strings.Count(log.String(), "systemd notification failed"); c != 1 {
		t.Errorf("%d failure lines, want 1:\n%s", c, log.String())
	}
	if !strings.Contains(log.String(), `state="STATUS=x"`) {
		t.Errorf("the failure line does not name the state:\n%s", log.String())
	}
}

func TestSessionsStatus(t *testing.T) {
	for _, tc := range []struct {
		n       int
		in, out uint64
		want    string
	}{
		{0, 0, 0, "0 sessions, 0 B in, 0 B out"},
		{1, 1023, 1024, "1 session, 1023 B in, 1.0 KiB out"},
		{12, 3650722201, 10844792422, "12 sessions, 3.4 GiB in, 10.1 GiB out"},
		{2, 1 << 62, 5 << 40, "2 sessions, 4.0 EiB in, 5.0 TiB out"},
		{3, ^uint64(0), 1536 << 20, "3 sessions, 16.0 EiB in, 1.5 GiB out"},
	} {
		if got := SessionsStatus(tc.n, tc.in, tc.out); got != tc.want {
			t.Errorf("SessionsStatus(%d, %d, %d) = %q, want %q", tc.n, tc.in, tc.out, got, tc.want)
		}
	}
}
