package main

import (
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// notifySocket is the service manager's end of NOTIFY_SOCKET for a test: the datagrams serve
// sends, as lines of assignments.
func notifySocket(t *testing.T) <-chan []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	out := make(chan []string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			out <- strings.Split(strings.TrimSuffix(string(buf[:n]), "\n"), "\n")
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return out
}

// TestServeNotifiesSystemd runs serve as systemd would start a Type=notify unit with a watchdog:
// READY=1 (with MAINPID and a status line) comes once the endpoint listens, a keep-alive follows
// while the data plane goes round, SIGHUP brings RELOADING=1 with MONOTONIC_USEC and then
// READY=1, and SIGTERM brings STOPPING=1 before serve stops.
func TestServeNotifiesSystemd(t *testing.T) {
	notes := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", strconv.Itoa(int((10 * time.Second).Microseconds())))
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	f := &fakeHost{dev: tuntest.NewChannelTUN().TUN()}
	useFakeHost(t, f)
	free, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := free.LocalAddr().(*net.UDPAddr).Port
	free.Close()
	path := newEndpoint(t, "--transport", "udp/"+strconv.Itoa(port))
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(slices.Clip(orig), "listen_address: 127.0.0.1\nadmin: {socket: admin.sock}\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	var log lockedBuffer
	code := make(chan int, 1)
	go func() { code <- run([]string{"serve", "--config", path}, io.Discard, &log) }()

	// next returns the next lifecycle notification (not a keep-alive or a status refresh),
	// and counts the keep-alives on the way.
	keepAlives := 0
	next := func() []string {
		t.Helper()
		for {
			select {
			case n := <-notes:
				switch {
				case slices.Equal(n, []string{"WATCHDOG=1"}):
					keepAlives++
					continue
				case len(n) == 1 && strings.HasPrefix(n[0], "STATUS="):
					continue
				}
				return n
			case <-time.After(10 * time.Second):
				t.Fatalf("no notification; log:\n%s", log.String())
			}
		}
	}

	ready := next()
	if !strings.Contains(log.String(), "cvpn listening") {
		t.Errorf("READY=1 came before the endpoint listened; log:\n%s", log.String())
	}
	want := []string{"READY=1", "MAINPID=" + strconv.Itoa(os.Getpid()), "STATUS=0 sessions, 0 B in, 0 B out"}
	if !slices.Equal(ready, want) {
		t.Fatalf("first notification %q, want %q", ready, want)
	}
	waitLog(t, &log, "systemd watchdog armed")

	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	reloading := next()
	if len(reloading) != 2 || reloading[0] != "RELOADING=1" || !strings.HasPrefix(reloading[1], "MONOTONIC_USEC=") {
		t.Fatalf("notification at SIGHUP %q, want RELOADING=1 and MONOTONIC_USEC", reloading)
	}
	if usec, err := strconv.ParseInt(strings.TrimPrefix(reloading[1], "MONOTONIC_USEC="), 10, 64); err != nil || usec <= 0 {
		t.Errorf("MONOTONIC_USEC %q is not a positive number", reloading[1])
	}
	if n := next(); !slices.Equal(n, []string{"READY=1"}) {
		t.Fatalf("notification after the reload %q, want READY=1", n)
	}
	waitLog(t, &log, "reload")

	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if n := next(); !slices.Equal(n, []string{"STOPPING=1"}) {
		t.Fatalf("notification at SIGTERM %q, want STOPPING=1", n)
	}
	select {
	case c := <-code:
		if c != 0 {
			t.Errorf("serve exited with %d, want 0:\n%s", c, log.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop after SIGTERM")
	}
	if keepAlives == 0 {
		t.Error("no WATCHDOG=1 while the endpoint served")
	}
	if f.closed != 1 {
		t.Errorf("host state closed %d times, want 1", f.closed)
	}
}

// TestServeWithoutSystemd: without NOTIFY_SOCKET there is no lifecycle to tell.
func TestServeWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if lc := startServiceManager(slog.New(slog.DiscardHandler)).lifecycle(); lc != nil {
		t.Fatalf("lifecycle %v without NOTIFY_SOCKET, want nil", lc)
	}
}

// TestServeLoggerJournal: --log-format journal needs the journal's socket and names it when it
// is missing; a JOURNAL_STREAM that names stderr does not switch a serve to the journal when the
// journal's socket does not answer, and an explicit format always wins.
func TestServeLoggerJournal(t *testing.T) {
	if _, err := os.Stat("/run/systemd/journal/socket"); err == nil {
		t.Skip("this host has a systemd journal")
	}
	if _, err := serveLogger("journal", true, os.Stderr); err == nil || !strings.Contains(err.Error(), "journal's socket does not answer") {
		t.Errorf("--log-format journal without a journal: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JOURNAL_STREAM", strconv.FormatUint(st.Dev, 10)+":"+strconv.FormatUint(st.Ino, 10))
	log, err := serveLogger("text", false, os.Stderr)
	if err != nil || log == nil {
		t.Fatalf("serveLogger on a journal stream without a journal: %v", err)
	}
	if _, ok := log.Handler().(*slog.TextHandler); !ok {
		t.Errorf("handler %T, want the text handler", log.Handler())
	}
	if _, err := serveLogger("yaml", true, os.Stderr); err == nil {
		t.Error("an unknown --log-format was accepted")
	}
}
