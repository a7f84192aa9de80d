package host

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// procSys writes a fake /proc/sys with the given files (path below the root: contents).
func procSys(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, value := range files {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func readSysctl(t *testing.T, root, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestCloseNilAndTwice(t *testing.T) {
	var nilHost *Host
	if err := nilHost.Close(); err != nil {
		t.Errorf("nil Host: Close = %v", err)
	}
	if d := nilHost.Device(); d != nil {
		t.Errorf("nil Host: Device = %v", d)
	}

	h := newHost(Config{}, nil)
	var order []string
	for _, name := range []string{"tun", "route", "neigh"} {
		h.added(name, func() error { order = append(order, name); return nil })
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"neigh", "route", "tun"}; !slices.Equal(order, want) {
		t.Errorf("undone %v, want %v (newest first, once)", order, want)
	}
}

// TestCloseReportsEveryFailure: a failing undo step does not stop the others, and the error names
// each failed step on one line.
func TestCloseReportsEveryFailure(t *testing.T) {
	h := newHost(Config{}, nil)
	ran := 0
	h.added("close TUN", func() error { ran++; return nil })
	h.added("delete route", func() error { ran++; return unix.EPERM })
	h.added("delete neigh", func() error { ran++; return errors.New("two\nlines") })
	err := h.Close()
	if ran != 3 {
		t.Errorf("%d undo steps ran, want 3", ran)
	}
	if err == nil || !errors.Is(err, unix.EPERM) {
		t.Fatalf("Close = %v, want an error wrapping EPERM", err)
	}
	e := &Error{Op: "add something", Err: unix.EBUSY, Fix: "do this", Cleanup: err}
	msg := e.Error()
	for _, want := range []string{"add something: device or resource busy: do this", "delete route: operation not permitted", "delete neigh: two"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("message is not one line: %q", msg)
	}
}

// v4only is the families of an endpoint that carries IPv4 alone.
var v4only = families{v4: true}

// asRoot and asUser stand in for os.Geteuid.
func asRoot() int { return 0 }
func asUser() int { return 998 }

func TestSysctlsSetAndRestored(t *testing.T) {
	root := procSys(t, map[string]string{
		"net/ipv4/ip_forward":             "0\n",
		"net/ipv4/neigh/eth1/proxy_delay": "80\n",
	})
	h := newHost(Config{procSys: root, euid: asRoot}, nil)
	if err := h.setSysctls("eth1", v4only); err != nil {
		t.Fatal(err)
	}
	if got := readSysctl(t, root, "net/ipv4/ip_forward"); got != "1" {
		t.Errorf("ip_forward = %q, want 1", got)
	}
	if got := readSysctl(t, root, "net/ipv4/neigh/eth1/proxy_delay"); got != "0" {
		t.Errorf("proxy_delay = %q, want 0", got)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readSysctl(t, root, "net/ipv4/ip_forward"); got != "0" {
		t.Errorf("after Close: ip_forward = %q, want 0 back", got)
	}
	if got := readSysctl(t, root, "net/ipv4/neigh/eth1/proxy_delay"); got != "80" {
		t.Errorf("after Close: proxy_delay = %q, want 80 back", got)
	}
}

// TestSysctlAlreadySet: a sysctl that already has the value is neither written nor restored, so an
// operator can set it beforehand where /proc/sys is read-only.
func TestSysctlAlreadySet(t *testing.T) {
	root := procSys(t, map[string]string{"net/ipv4/ip_forward": "1\n"})
	h := newHost(Config{procSys: root}, nil)
	// A write would leave "1" without the newline.
	path := filepath.Join(root, "net/ipv4/ip_forward")
	if err := h.setSysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if len(h.undo) != 0 {
		t.Errorf("%d undo steps recorded for a sysctl left alone", len(h.undo))
	}
	if b, _ := os.ReadFile(path); string(b) != "1\n" {
		t.Errorf("file rewritten: %q", b)
	}
}

// TestFailureRestoresEverything is the shape of every failed Setup: state added by earlier steps
// (here a stand-in for the TUN and the neighbour entry, and ip_forward) is removed again when a
// later step (here the proxy_delay sysctl of an interface the kernel does not have) fails.
func TestFailureRestoresEverything(t *testing.T) {
	root := procSys(t, map[string]string{"net/ipv4/ip_forward": "0\n"})
	h := newHost(Config{procSys: root, euid: asRoot}, nil)
	removed := false
	h.added("stand-in for the TUN", func() error { removed = true; return nil })
	err := h.setSysctls("eth1", v4only)
	if err == nil {
		t.Fatal("setSysctls succeeded without a proxy_delay file")
	}
	if got := readSysctl(t, root, "net/ipv4/ip_forward"); got != "1" {
		t.Fatalf("ip_forward = %q before the failure was handled, want 1 (set by the first step)", got)
	}
	err = h.abandon(err)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("abandon returned %T, want *Error", err)
	}
	if !strings.Contains(err.Error(), "net.ipv4.neigh.eth1.proxy_delay") || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %q does not name the sysctl and its cause", err)
	}
	if got := readSysctl(t, root, "net/ipv4/ip_forward"); got != "0" {
		t.Errorf("ip_forward = %q after the failure, want 0 restored", got)
	}
	if !removed {
		t.Error("the earlier step's state was not removed")
	}
	if e.Cleanup != nil {
		t.Errorf("Cleanup = %v, want nil", e.Cleanup)
	}
}

// TestSysctlWriteErrors: each reason a sysctl cannot be written gives the name, the value wanted
// and a way to set it beforehand.
func TestSysctlWriteErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want []string
	}{
		{&fs.PathError{Op: "open", Path: "/proc/sys/net/ipv4/ip_forward", Err: unix.EROFS},
			[]string{"set sysctl net.ipv4.ip_forward=1 (it is 0): read-only file system: /proc/sys is read-only", "beforehand", "service manager", "/usr/lib/sysctl.d/60-cvpn.conf"}},
		{&fs.PathError{Op: "open", Path: "/proc/sys/net/ipv4/ip_forward", Err: unix.EACCES},
			[]string{"permission denied: run cvpn serve as root, or set net.ipv4.ip_forward=1 beforehand"}},
		{unix.EIO, []string{"input/output error: set net.ipv4.ip_forward=1 beforehand"}},
	} {
		e := sysctlError("set sysctl net.ipv4.ip_forward=1 (it is 0)", "net.ipv4.ip_forward", "1", tc.err)
		msg := e.Error()
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%v: %q does not contain %q", tc.err, msg, w)
			}
		}
		if !errors.Is(e, tc.err) {
			t.Errorf("%v: errors.Is fails on %q", tc.err, msg)
		}
		if strings.Count(msg, "/proc/sys/net") != 0 {
			t.Errorf("%v: the path is repeated in %q", tc.err, msg)
		}
	}
}

func TestSysctlName(t *testing.T) {
	for key, want := range map[string]string{
		"net/ipv4/ip_forward":               "net.ipv4.ip_forward",
		"net/ipv4/neigh/eth1/proxy_delay":   "net.ipv4.neigh.eth1.proxy_delay",
		"net/ipv4/neigh/eth0.5/proxy_delay": "net/ipv4/neigh/eth0.5/proxy_delay",
	} {
		if got := sysctlName(key); got != want {
			t.Errorf("sysctlName(%q) = %q, want %q", key, got, want)
		}
	}
}

// TestSysctlsCheckedWhenNotRoot: a cvpn serve that is not root (systemd's User= with ambient
// capabilities) writes no sysctl and records nothing to restore; one without its value fails
// with the sysctl.d line to add and the package's file.
func TestSysctlsCheckedWhenNotRoot(t *testing.T) {
	files := map[string]string{"net/ipv4/ip_forward": "0\n", "net/ipv4/neigh/eth1/proxy_delay": "80\n"}
	root := procSys(t, files)
	h := newHost(Config{procSys: root, euid: asUser}, nil)
	err := h.setSysctls("eth1", v4only)
	if !errors.Is(err, ErrSysctlNotSet) {
		t.Fatalf("setSysctls = %v, want ErrSysctlNotSet", err)
	}
	for _, w := range []string{"sysctl net.ipv4.ip_forward is 0, want 1", "runs as uid 998, not root", "`net.ipv4.ip_forward = 1`",
		"/usr/lib/sysctl.d/60-cvpn.conf", "sysctl --system"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q does not contain %q", err, w)
		}
	}
	for name, value := range files {
		if b, _ := os.ReadFile(filepath.Join(root, name)); string(b) != value {
			t.Errorf("%s rewritten: %q", name, b)
		}
	}
	// The second one is named as well.
	if err := os.WriteFile(filepath.Join(root, "net/ipv4/ip_forward"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = h.setSysctls("eth1", v4only)
	if err == nil || !strings.Contains(err.Error(), "`net.ipv4.neigh.eth1.proxy_delay = 0`") {
		t.Errorf("setSysctls = %v, want proxy_delay named", err)
	}
	if err := os.WriteFile(filepath.Join(root, "net/ipv4/neigh/eth1/proxy_delay"), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.setSysctls("eth1", v4only); err != nil {
		t.Errorf("setSysctls with both set = %v", err)
	}
	if len(h.undo) != 0 {
		t.Errorf("%d undo steps recorded by checks", len(h.undo))
	}
	// An interface the kernel does not have: its sysctl cannot be read.
	if err := h.setSysctls("eth9", v4only); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "read sysctl net.ipv4.neigh.eth9.proxy_delay") {
		t.Errorf("setSysctls(eth9) = %v", err)
	}
}
