package main

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/tunnel/host"
)

// fakeHost stands in for the host state so that serve runs without root.
type fakeHost struct {
	dev      tun.Device
	closed   int
	closeErr error
}

func (f *fakeHost) Device() tun.Device { return f.dev }
func (f *fakeHost) Close() error       { f.closed++; return f.closeErr }

// useFakeHost makes serve's host setup return f for the rest of the test.
func useFakeHost(t *testing.T, f *fakeHost) {
	t.Helper()
	saved := setupHost
	setupHost = func(host.Config, *slog.Logger) (endpoint.Host, error) { return f, nil }
	t.Cleanup(func() { setupHost = saved })
}

// oneLine checks that a failed serve printed exactly one line, starting with want, and no panic.
func oneLine(t *testing.T, code int, stderr, want string) {
	t.Helper()
	if code != exitRuntime {
		t.Errorf("exit status %d, want %d", code, exitRuntime)
	}
	if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Errorf("stderr is not exactly one line:\n%s", stderr)
	}
	if !strings.HasPrefix(stderr, want) {
		t.Errorf("stderr %q\ndoes not start with %q", stderr, want)
	}
	if strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine") {
		t.Errorf("stderr shows a panic:\n%s", stderr)
	}
}

// TestServeMissingInterface runs the real host setup: a target interface that does not exist is
// found before anything on the host is changed, so this needs no root.
func TestServeMissingInterface(t *testing.T) {
	path := newEndpoint(t, "--target-interface", "cvpnnone0")
	code, _, stderr := runCmd(t, "serve", "--config", path)
	oneLine(t, code, stderr, `cvpn serve: target_network.interface "cvpnnone0": no such network interface: list the interfaces with `)
}

// busyEndpoint writes an endpoint whose UDP listener's address is already taken by the test.
func busyEndpoint(t *testing.T) string {
	t.Helper()
	taken, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	port := taken.LocalAddr().(*net.UDPAddr).Port
	path := newEndpoint(t, "--transport", "udp/"+strconv.Itoa(port))
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("listen_address: 127.0.0.1\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestServeListenerBusy: when the engine cannot bind its listener, serve says so on one line with
// what to do, exits 1, and removes the host state it had set up.
func TestServeListenerBusy(t *testing.T) {
	f := &fakeHost{dev: tuntest.NewChannelTUN().TUN()}
	useFakeHost(t, f)
	code, _, stderr := runCmd(t, "serve", "--config", busyEndpoint(t))
	oneLine(t, code, stderr, "cvpn serve: ")
	for _, want := range []string{"127.0.0.1:", "address already in use", "another process", "change transport or listen_address"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q does not contain %q", stderr, want)
		}
	}
	if f.closed != 1 {
		t.Errorf("host state closed %d times, want 1", f.closed)
	}
}

// TestServeCleanupFailureSameLine: if removing the host state fails as well, the operator still
// reads one line, which says both.
func TestServeCleanupFailureSameLine(t *testing.T) {
	f := &fakeHost{dev: tuntest.NewChannelTUN().TUN(), closeErr: errors.New("host: delete route 10.0.1.2/32 dev cvpn0: operation not permitted")}
	useFakeHost(t, f)
	code, _, stderr := runCmd(t, "serve", "--config", busyEndpoint(t))
	oneLine(t, code, stderr, "cvpn serve: ")
	for _, want := range []string{"address already in use", "removing the host state failed too: host: delete route 10.0.1.2/32 dev cvpn0"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q does not contain %q", stderr, want)
		}
	}
}

func TestPrintServeErrorIsOneLine(t *testing.T) {
	var b strings.Builder
	printServeError(&b, errors.Join(errors.New("first"), errors.New("second")))
	if got, want := b.String(), "cvpn serve: first; second\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// lockedBuffer collects the log of the goroutines under test.
type lockedBuffer = testlog.Buffer

// waitLog waits until the log holds want.
func waitLog(t *testing.T, log *lockedBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the log lacks %q:\n%s", want, log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServeSignals: SIGHUP reloads the endpoint file (a live key applies, a refused one is named
// and nothing applies), and SIGTERM stops serve with status 0 after removing the host state.
func TestServeSignals(t *testing.T) {
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
	write := func(extra string) {
		t.Helper()
		if err := os.WriteFile(path, append(slices.Clip(orig), "listen_address: 127.0.0.1\nadmin: {socket: admin.sock}\n"+extra...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	var log lockedBuffer
	code := make(chan int, 1)
	go func() { code <- run([]string{"serve", "--config", path}, io.Discard, &log) }()
	waitLog(t, &log, "cvpn listening")

	write("client_login_banner: hello\n")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, &log, `msg="reload applied" changed=client_login_banner`)

	write("client_login_banner: bye\ntun: {name: vpn1}\n")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, &log, `refused=tun.name`)
	if !strings.Contains(log.String(), "the running configuration stays") {
		t.Errorf("the refusal does not say the running configuration stays:\n%s", log.String())
	}

	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-code:
		if c != 0 {
			t.Errorf("serve exited with %d after SIGTERM, want 0:\n%s", c, log.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop after SIGTERM")
	}
	if f.closed != 1 {
		t.Errorf("host state closed %d times, want 1", f.closed)
	}
	for _, want := range []string{`msg=stopping signal=terminated`, "cvpn stopped"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, log.String())
		}
	}
}
