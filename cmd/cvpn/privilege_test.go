package main

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/internal/privdrop"
	"github.com/cvpn/cvpn/tunnel/host"
)

// TestServeUserRefusals: --user and --group that cannot work are refused on one line, with
// exit status 2, before anything is set up.
func TestServeUserRefusals(t *testing.T) {
	path := newEndpoint(t)
	type tc struct {
		args []string
		want string
	}
	cases := []tc{{[]string{"--group", "nogroup"}, "cvpn serve: --group needs --user\n"}}
	switch {
	case os.Geteuid() != 0:
		cases = append(cases, tc{[]string{"--user", "nobody"}, "cvpn serve: --user nobody: cvpn serve runs as uid "})
	case privdrop.Supported() != nil: // built with cgo, as go test -race is
		cases = append(cases, tc{[]string{"--user", "nobody"}, "cvpn serve: --user nobody: privdrop: this binary is built with cgo"})
	default:
		cases = append(cases, tc{[]string{"--user", "cvpn-no-such-user"}, `cvpn serve: --user: no user "cvpn-no-such-user" in the user database`},
			tc{[]string{"--user", "root"}, `cvpn serve: --user: user "root" is root`})
	}
	for _, c := range cases {
		code, _, stderr := runCmd(t, append([]string{"serve", "--config", path}, c.args...)...)
		if code != exitInvalid || !strings.HasPrefix(stderr, c.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("serve %v: exit %d, stderr %q; want %d and %q", c.args, code, stderr, exitInvalid, c.want)
		}
	}
}

// TestServeStartedFailure: when the step after start (the drop) fails, the endpoint is stopped,
// its host state removed, and the error returned.
func TestServeStartedFailure(t *testing.T) {
	f := &fakeHost{dev: tuntest.NewChannelTUN().TUN()}
	free, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := free.LocalAddr().(*net.UDPAddr).Port
	free.Close()
	path := newEndpoint(t, "--transport", "udp/"+strconv.Itoa(port))
	ep, err := loadEndpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	ep.Config.ListenAddress = netip.MustParseAddr("127.0.0.1")
	ep.Config.Admin.Socket = filepath.Join(t.TempDir(), "admin.sock")
	opts := endpoint.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Host: func(host.Config, *slog.Logger) (endpoint.Host, error) { return f, nil }}
	var ran bool
	boom := errors.New("boom")
	opts.Started = func(r *endpoint.Running) error {
		ran = r.Server() != nil
		return boom
	}
	err = endpoint.Serve(t.Context(), path, ep, nil, opts)
	if !errors.Is(err, boom) || !ran {
		t.Errorf("Serve = %v (Started ran with a server: %v), want boom", err, ran)
	}
	if f.closed != 1 {
		t.Errorf("host state closed %d times, want 1", f.closed)
	}
	if _, err := os.Stat(ep.Config.Admin.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the admin socket is left behind: %v", err)
	}
}

// TestHandOver: what a start creates (admin socket directories, state directories with their
// files, a new connection log) goes to the target user; what existed before does not.
func TestHandOver(t *testing.T) {
	root := t.TempDir()
	existing := filepath.Join(root, "existing")
	if err := os.Mkdir(existing, 0o755); err != nil {
		t.Fatal(err)
	}
	oldLog := filepath.Join(existing, "old.log")
	if err := os.WriteFile(oldLog, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Endpoint{StateDir: filepath.Join(root, "lib", "cvpn")}
	cfg.Admin.Socket = filepath.Join(root, "run", "cvpn", "admin.sock")
	cfg.ConnectionLog.Enabled, cfg.ConnectionLog.File = true, filepath.Join(existing, "connections.log")
	c := willCreate(cfg)
	if want := []string{filepath.Join(root, "run", "cvpn"), filepath.Join(root, "run")}; !slices.Equal(c.adminDirs, want) {
		t.Errorf("admin dirs %v, want %v", c.adminDirs, want)
	}
	if c.connLog != cfg.ConnectionLog.File || len(c.stateDirs) != 2 {
		t.Errorf("willCreate = %+v", c)
	}
	cfg.ConnectionLog.File = oldLog
	if c := willCreate(cfg); c.connLog != "" {
		t.Errorf("an existing log is to be handed over: %+v", c)
	}
	cfg.ConnectionLog.File = filepath.Join(existing, "connections.log")

	// What a start makes.
	for _, d := range []string{filepath.Dir(cfg.Admin.Socket), cfg.StateDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{cfg.Admin.Socket, filepath.Join(cfg.StateDir, "state.db"), filepath.Join(cfg.StateDir, "seal.key"), cfg.ConnectionLog.File} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("handing files over needs root")
	}
	target := privdrop.Target{User: "test", UID: 65533, GID: 65532}
	handOver(c, target, slog.New(slog.NewTextHandler(io.Discard, nil)))
	owner := func(path string) [2]uint32 {
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			t.Fatal(err)
		}
		return [2]uint32{st.Uid, st.Gid}
	}
	handed := [2]uint32{65533, 65532}
	for _, p := range []string{filepath.Join(root, "run"), filepath.Join(root, "run", "cvpn"), cfg.Admin.Socket, filepath.Join(root, "lib"),
		cfg.StateDir, filepath.Join(cfg.StateDir, "state.db"), filepath.Join(cfg.StateDir, "seal.key"), cfg.ConnectionLog.File} {
		if got := owner(p); got != handed {
			t.Errorf("%s is owned by %v, want %v", p, got, handed)
		}
	}
	for _, p := range []string{root, existing, oldLog} {
		if got := owner(p); got == handed {
			t.Errorf("%s, which existed before, was handed over", p)
		}
	}
}

// heardLifecycle records the calls it hears.
type heardLifecycle struct{ calls []string }

func (h *heardLifecycle) Started(*endpoint.Running) { h.calls = append(h.calls, "started") }
func (h *heardLifecycle) Reloading()                { h.calls = append(h.calls, "reloading") }
func (h *heardLifecycle) Reloaded()                 { h.calls = append(h.calls, "reloaded") }
func (h *heardLifecycle) Stopping()                 { h.calls = append(h.calls, "stopping") }

// TestStartedLater: with --user, Start's own Started is swallowed (serveAs tells the service
// manager after the drop); the other notifications pass.
func TestStartedLater(t *testing.T) {
	h := &heardLifecycle{}
	var l endpoint.Lifecycle = startedLater{h}
	l.Started(nil)
	l.Reloading()
	l.Reloaded()
	l.Stopping()
	if want := []string{"reloading", "reloaded", "stopping"}; !slices.Equal(h.calls, want) {
		t.Errorf("heard %v, want %v", h.calls, want)
	}
}
