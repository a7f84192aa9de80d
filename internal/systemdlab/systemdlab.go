// Package systemdlab boots a real systemd (Debian 12's systemd 252) as PID 1 of throwaway
// namespaces, so tests can install a package, start, reload, watch and stop units the way an
// operator does on a systemd machine, and read their journal.
//
// A machine is `unshare --pid --fork --mount --cgroup --uts --ipc --net` around
// /lib/systemd/systemd, over an overlay of the host's root file system (the host's files below,
// a tmpfs above: whatever the machine writes vanishes with it). It has its own /dev (with a 0666
// /dev/net/tun), tmpfs /run and /tmp, /proc with a read-only /proc/sys (net excepted), a
// read-only /sys, a fresh machine-id, and boots basic.target with the units that cannot run
// in a container masked. It boots in about half a second.
//
//	m := systemdlab.Boot(t)
//	m.WriteFile("/etc/systemd/system/hello.service", unit, 0o644)
//	m.Systemctl("start", "hello")
//	m.WaitActive("hello", 5*time.Second)
//	out, _ := m.Journal("-u", "hello")
//
// Commands run in the machine through nsenter into all its namespaces; systemctl talks to
// systemd over its private socket (/run/systemd/private), so no D-Bus is needed. The machine's
// network namespace is also registered as a named netns (NetNS), so `ip -n`, `ip link set ...
// netns` and netlab's helpers reach it; Link wires it to another namespace with a veth pair.
//
// Cgroups: the machine starts in cgroups of its own (named after it, below the test process's
// cgroup in every hierarchy) and its cgroup namespace is rooted there, so systemd's tree sits
// below them and Close can remove it: systemd leaves its empty directories behind when it powers
// off. On a host with hybrid cgroups systemd runs hybrid too, with the v1 controllers it can
// mount (memory, pids, devices: DeviceAllow= is enforced). Commands run with Command stay in the
// test process's cgroups, outside the machine's tree. Boot also removes what machines of killed
// test processes left (their PID 1 dies with the test process; their cgroups and netns name stay).
//
// Close (registered with t.Cleanup) powers the machine off (SIGRTMIN+4 to PID 1), kills what is
// left, and removes the netns name and the cgroup directories; its mounts die with its mount
// namespace. The package does not fake anything and skips nothing but a non-root run: booting
// needs root.
package systemdlab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

// SystemdPath is Debian's systemd binary, booted as the machine's PID 1.
const SystemdPath = "/lib/systemd/systemd"

//go:embed boot.sh
var bootScript []byte

// DefaultMasked are the units masked in every machine: they need real hardware, a real console
// or the host's kernel state, or run host jobs (timers) that only slow a boot down.
var DefaultMasked = []string{
	"systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
	"systemd-udev-trigger.service", "systemd-udev-settle.service",
	"getty@.service", "serial-getty@.service", "console-getty.service", "getty-static.service",
	"systemd-modules-load.service", "modprobe@.service", "kmod-static-nodes.service", "systemd-random-seed.service",
	"systemd-remount-fs.service", "systemd-firstboot.service", "systemd-hwdb-update.service",
	"systemd-timesyncd.service", "systemd-pstore.service", "systemd-binfmt.service",
	"proc-sys-fs-binfmt_misc.automount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
	"sys-kernel-config.mount", "sys-fs-fuse-connections.mount", "dev-hugepages.mount",
	"systemd-journald-audit.socket", "keyboard-setup.service", "console-setup.service",
	"systemd-ask-password-console.path", "systemd-ask-password-wall.path",
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
	"e2scrub_reap.service", "fstrim.timer", "man-db.timer",
}

// Timeouts of the machine's life cycle.
const (
	defaultBootTimeout = 20 * time.Second
	powerOffTimeout    = 15 * time.Second
	commandTimeout     = 30 * time.Second
	maxConsole         = 1 << 20
)

// guestPATH is the PATH of commands run in the machine.
const guestPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Option changes how Boot prepares a machine.
type Option func(*config)

type config struct {
	target      string
	masked      []string
	files       map[string]seedFile
	bootTimeout time.Duration
	rwSize      string
}

type seedFile struct {
	data []byte
	mode os.FileMode
}

// WithTarget boots unit (default basic.target) instead.
func WithTarget(unit string) Option { return func(c *config) { c.target = unit } }

// WithMasked masks more units, on top of DefaultMasked.
func WithMasked(units ...string) Option {
	return func(c *config) { c.masked = append(c.masked, units...) }
}

// WithFile puts a file into the machine's root before it boots (a unit, a drop-in, a config).
// path is absolute in the machine.
func WithFile(path string, data []byte, mode os.FileMode) Option {
	return func(c *config) { c.files[path] = seedFile{data: data, mode: mode} }
}

// WithBootTimeout bounds the boot (default 20 s): Boot fails if `systemctl is-system-running
// --wait` has not returned by then.
func WithBootTimeout(d time.Duration) Option { return func(c *config) { c.bootTimeout = d } }

// upperSizeRE matches the tmpfs sizes WithUpperSize accepts.
var upperSizeRE = regexp.MustCompile(`^[1-9][0-9]{0,9}[kmg]?$`)

// WithUpperSize sets the size of the tmpfs that holds what the machine writes (default 1g; it is
// only ever as large as what was written).
func WithUpperSize(size string) Option { return func(c *config) { c.rwSize = size } }

// Machine is one booted systemd. Its methods may be called from any goroutine.
type Machine struct {
	// Name is the machine's hostname, the name of its netns, and of its cgroups.
	Name string

	dir     string
	cmd     *exec.Cmd
	pid     int // systemd, as the host sees it
	pidNS   string
	cgroups []string // the machine's own cgroup directories, one per hierarchy
	ptm     *os.File
	console *capped
	// consoleDone is closed once the console's last output has been read.
	consoleDone chan struct{}
	exited      chan struct{}
	netns       bool

	closeOnce sync.Once
	closeErr  error
}

// Boot boots a machine and registers its Close with t.Cleanup. It calls t.Fatal if the machine
// does not reach a booted state (running or degraded) in time, logging its console and failed
// units. It skips the test when not run as root.
func Boot(t testing.TB, opts ...Option) *Machine {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("systemdlab: booting systemd in namespaces needs root (make test runs as root)")
	}
	c := &config{target: "basic.target", files: map[string]seedFile{}, bootTimeout: defaultBootTimeout, rwSize: "1g"}
	for _, o := range opts {
		o(c)
	}
	m, err := start(t, c)
	if err != nil {
		t.Fatalf("systemdlab: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("systemdlab: close %s: %v", m.Name, err)
		}
	})
	if err := m.waitBooted(c.bootTimeout); err != nil {
		t.Logf("systemdlab: %s console:\n%s", m.Name, tail(m.Console(), 8000))
		if m.pid != 0 {
			out, _ := m.Systemctl("--failed", "--no-legend")
			t.Logf("systemdlab: %s failed units:\n%s", m.Name, out)
		}
		t.Fatalf("systemdlab: boot %s: %v", m.Name, err)
	}
	return m
}

func start(t testing.TB, c *config) (*Machine, error) {
	if _, err := os.Stat(SystemdPath); err != nil {
		return nil, fmt.Errorf("%s: %w (Debian's systemd package: apt-get install systemd)", SystemdPath, err)
	}
	if err := validUnitName(c.target); err != nil {
		return nil, err
	}
	if !upperSizeRE.MatchString(c.rwSize) { // it goes into the tmpfs's mount options
		return nil, fmt.Errorf("upper size %q: want a tmpfs size such as 512m or 2g", c.rwSize)
	}
	if err := sweepStale(); err != nil {
		t.Logf("systemdlab: removing what earlier machines left: %v", err)
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	m := &Machine{
		Name:        "cvsd" + hex.EncodeToString(b[:]),
		dir:         t.TempDir(),
		console:     &capped{},
		consoleDone: make(chan struct{}),
		exited:      make(chan struct{}),
	}
	// seed's own mode becomes the machine's / (cp -a seed/. root/): 0755.
	for d, mode := range map[string]os.FileMode{"seed": 0o755, "root": 0o700, "rw": 0o700} {
		if err := os.Mkdir(filepath.Join(m.dir, d), mode); err != nil {
			return nil, err
		}
		if err := os.Chmod(filepath.Join(m.dir, d), mode); err != nil {
			return nil, err
		}
	}
	if err := m.writeSeed(c); err != nil {
		return nil, err
	}
	script := filepath.Join(m.dir, "boot.sh")
	if err := os.WriteFile(script, bootScript, 0o700); err != nil {
		return nil, err
	}
	cgroups, err := makeCgroups(m.Name)
	m.cgroups = cgroups
	if err != nil {
		_ = removeCgroups(cgroups)
		return nil, err
	}
	var procs []string
	for _, d := range cgroups {
		procs = append(procs, filepath.Join(d, "cgroup.procs"))
	}

	ptm, pts, err := pty.Open()
	if err != nil {
		_ = removeCgroups(cgroups)
		return nil, fmt.Errorf("console pty: %w", err)
	}
	m.ptm = ptm
	m.cmd = exec.Command("/bin/sh", script, "outer")
	m.cmd.Env = []string{
		"PATH=" + guestPATH,
		"SDLAB_DIR=" + m.dir,
		"SDLAB_NAME=" + m.Name,
		"SDLAB_CGROUPS=" + strings.Join(procs, " "),
		"SDLAB_TARGET=" + c.target,
		"SDLAB_RWSIZE=" + c.rwSize,
	}
	m.cmd.Stdin, m.cmd.Stdout, m.cmd.Stderr = pts, pts, pts
	// Setsid: no controlling terminal is shared with the test. Pdeathsig with unshare's
	// --kill-child: if the test process dies, the whole machine dies with it.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		_ = pts.Close()
		_ = ptm.Close()
		_ = removeCgroups(cgroups)
		return nil, fmt.Errorf("start boot.sh: %w", err)
	}
	_ = pts.Close()
	go func() { // ends with EIO once every slave is closed: the machine has ended
		_, _ = io.Copy(m.console, ptm)
		close(m.consoleDone)
	}()
	go func() { _ = m.cmd.Wait(); close(m.exited) }()
	return m, nil
}

// writeSeed stages what boot.sh copies over the machine's root: a machine-id, the hostname, the
// default target, the masks, and the test's own files.
func (m *Machine) writeSeed(c *config) error {
	var id [16]byte
	_, _ = rand.Read(id[:])
	files := map[string]seedFile{
		"/etc/machine-id": {data: []byte(hex.EncodeToString(id[:]) + "\n"), mode: 0o444},
		"/etc/hostname":   {data: []byte(m.Name + "\n"), mode: 0o644},
	}
	for p, f := range c.files {
		files[p] = f
	}
	seed := filepath.Join(m.dir, "seed")
	for p, f := range files {
		dst, err := seedPath(seed, p)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, f.data, f.mode.Perm()); err != nil {
			return err
		}
		if err := os.Chmod(dst, f.mode.Perm()); err != nil { // WriteFile's mode is masked by umask
			return err
		}
	}
	units := filepath.Join(seed, "etc/systemd/system")
	if err := os.MkdirAll(units, 0o755); err != nil {
		return err
	}
	for _, u := range append(slices.Clone(DefaultMasked), c.masked...) {
		if err := validUnitName(u); err != nil {
			return err
		}
		if err := os.Symlink("/dev/null", filepath.Join(units, u)); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	return os.Symlink("/lib/systemd/system/"+c.target, filepath.Join(units, "default.target"))
}

// seedPath maps a machine path to its place under seed, refusing paths that climb out.
func seedPath(seed, p string) (string, error) {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
		return "", fmt.Errorf("file path %q: want a clean absolute path to a file", p)
	}
	return filepath.Join(seed, p), nil
}

// validUnitName accepts the characters systemd allows in unit names (unit_name_is_valid), so a
// name can go into a path or an argument list without surprises.
func validUnitName(u string) error {
	if u == "" || len(u) > 255 || strings.HasPrefix(u, "-") || !strings.Contains(u, ".") {
		return fmt.Errorf("unit name %q: not a unit name", u)
	}
	for _, r := range u {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune(":-_.\\@", r):
		default:
			return fmt.Errorf("unit name %q: character %q not allowed", u, r)
		}
	}
	return nil
}

// waitBooted finds systemd among the namespace's processes, registers its netns, and waits until
// `systemctl is-system-running --wait` reports running or degraded.
func (m *Machine) waitBooted(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for m.pid == 0 {
		select {
		case <-m.exited:
			return fmt.Errorf("boot.sh exited before systemd started: %v", m.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return errors.New("systemd did not start as the namespace's PID 1")
		}
		if pid := childOf(m.cmd.Process.Pid); pid != 0 && procComm(pid) == "systemd" {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/run/systemd/private", pid)); err == nil {
				m.pid = pid
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", m.pid))
	if err != nil {
		return err
	}
	m.pidNS = ns
	if err := run("ip", "netns", "attach", m.Name, strconv.Itoa(m.pid)); err != nil {
		return err
	}
	m.netns = true
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	out, err := m.Command(ctx, "systemctl", "is-system-running", "--wait").Output()
	state := strings.TrimSpace(string(out))
	if state == "running" || state == "degraded" {
		return nil
	}
	return fmt.Errorf("is-system-running: %q: %v", state, err)
}

// childOf returns a child of pid (unshare has exactly one: the namespace's PID 1), or 0.
func childOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	c, _ := strconv.Atoi(f[0])
	return c
}

func procComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// PID is systemd's process id as the host sees it (`ip link set DEV netns PID` takes it too).
func (m *Machine) PID() int { return m.pid }

// NetNS is the name of the machine's network namespace under /run/netns: `ip -n NAME ...`,
// `ip link set DEV netns NAME`, `ip netns exec NAME` and netlab's helpers that take a namespace
// name all reach it.
func (m *Machine) NetNS() string { return m.Name }

// Console is what systemd wrote to its console so far (boot messages, unit failures).
func (m *Machine) Console() string { return m.console.String() }

// CgroupDirs are the machine's own cgroup directories on the host, one per hierarchy; systemd's
// tree sits below them. Close removes them.
func (m *Machine) CgroupDirs() []string { return slices.Clone(m.cgroups) }

// Command returns a command that runs args in the machine: nsenter into all its namespaces
// (mount, UTS, IPC, net, pid, cgroup), with a clean environment.
func (m *Machine) Command(ctx context.Context, args ...string) *exec.Cmd {
	ns := []string{"--target", strconv.Itoa(m.pid), "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--root", "--wd", "--"}
	cmd := exec.CommandContext(ctx, "nsenter", append(ns, args...)...)
	cmd.Env = []string{"PATH=" + guestPATH, "LANG=C.UTF-8", "TERM=dumb", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}
	select {
	case <-m.exited:
		cmd.Err = fmt.Errorf("%s: the machine has powered off", m.Name) // Start returns it
	default:
		if m.pid == 0 {
			cmd.Err = fmt.Errorf("%s: systemd has not started", m.Name)
		}
	}
	return cmd
}

// Exec runs args in the machine and returns their combined output; the error carries it too.
func (m *Machine) Exec(ctx context.Context, args ...string) (string, error) {
	out, err := m.Command(ctx, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), m.Name, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func (m *Machine) exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	return m.Exec(ctx, args...)
}

// Systemctl runs systemctl in the machine (30 s at most) and returns its output.
func (m *Machine) Systemctl(args ...string) (string, error) {
	return m.exec(append([]string{"systemctl", "--no-pager"}, args...)...)
}

// Journal runs journalctl in the machine (30 s at most) and returns its output: e.g.
// Journal("-u", "cvpn", "-o", "cat").
func (m *Machine) Journal(args ...string) (string, error) {
	return m.exec(append([]string{"journalctl", "--no-pager"}, args...)...)
}

// JournalEntries returns unit's journal entries, each a map of field to value (binary fields
// are left out). The journal is synced first, so it includes everything logged so far.
func (m *Machine) JournalEntries(unit string) ([]map[string]string, error) {
	if err := validUnitName(withSuffix(unit)); err != nil {
		return nil, err
	}
	if _, err := m.exec("journalctl", "--sync"); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := m.Command(ctx, "journalctl", "--no-pager", "-u", unit, "-o", "json")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("journalctl -u %s in %s: %w: %s", unit, m.Name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var entries []map[string]string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var raw map[string]any
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil {
			return nil, fmt.Errorf("journalctl -u %s: entry %q: %w", unit, tail(sc.Text(), 200), err)
		}
		e := make(map[string]string, len(raw))
		for k, v := range raw {
			if s, ok := v.(string); ok { // binary or repeated fields are arrays: not kept
				e[k] = s
			}
		}
		entries = append(entries, e)
	}
	return entries, sc.Err()
}

// withSuffix adds .service to a bare unit name, as systemctl does.
func withSuffix(unit string) string {
	if strings.Contains(unit, ".") {
		return unit
	}
	return unit + ".service"
}

// Show returns one property of unit (`systemctl show -p PROP --value UNIT`).
func (m *Machine) Show(unit, prop string) (string, error) {
	out, err := m.Systemctl("show", "-p", prop, "--value", "--", unit)
	return strings.TrimSpace(out), err
}

// WaitActive waits until unit is active, or fails with its state once it has failed or timeout
// has passed.
func (m *Machine) WaitActive(unit string, timeout time.Duration) error {
	return m.WaitState(unit, "ActiveState", "active", timeout)
}

// WaitState waits until unit's property prop is want. It gives up early, saying so, when an
// ActiveState wait sees the unit failed.
func (m *Machine) WaitState(unit, prop, want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := m.Show(unit, prop)
		if err != nil {
			return err
		}
		if got == want {
			return nil
		}
		if prop == "ActiveState" && got == "failed" && want != "failed" {
			return fmt.Errorf("%s in %s: failed while waiting for %s=%s", unit, m.Name, prop, want)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s in %s: %s=%s after %v, want %s", unit, m.Name, prop, got, timeout, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WriteFile writes data to path in the machine (creating its directory), with mode. It writes
// from inside the machine, so symlinks in path resolve within the machine's root.
func (m *Machine) WriteFile(path string, data []byte, mode os.FileMode) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return fmt.Errorf("write %q in %s: want a clean absolute path", path, m.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	// The path and mode are arguments, never part of the script.
	cmd := m.Command(ctx, "/bin/sh", "-c", `mkdir -p -- "$(dirname -- "$1")" && cat >"$1" && chmod "$2" -- "$1"`,
		"sh", path, strconv.FormatUint(uint64(mode.Perm()), 8))
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("write %s in %s: %w: %s", path, m.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// CopyIn copies the host file hostPath to guestPath in the machine, keeping its permissions.
func (m *Machine) CopyIn(hostPath, guestPath string) error {
	fi, err := os.Stat(hostPath)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("copy %s into %s: not a regular file", hostPath, m.Name)
	}
	data, err := os.ReadFile(hostPath)
	if err != nil {
		return err
	}
	return m.WriteFile(guestPath, data, fi.Mode())
}

// ReadFile reads path in the machine.
func (m *Machine) ReadFile(path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := m.Command(ctx, "cat", "--", path)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("read %s in %s: %w: %s", path, m.Name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// Link connects the machine to namespace peerNS with a veth pair: machineIf (with address
// machineAddr) in the machine, peerIf (with peerAddr) in peerNS, both up.
func (m *Machine) Link(peerNS, peerIf string, peerAddr netip.Prefix, machineIf string, machineAddr netip.Prefix) error {
	steps := [][]string{
		{"ip", "-n", peerNS, "link", "add", peerIf, "type", "veth", "peer", "name", machineIf, "netns", m.Name},
		{"ip", "-n", peerNS, "addr", "add", peerAddr.String(), "dev", peerIf},
		{"ip", "-n", peerNS, "link", "set", peerIf, "up"},
		{"ip", "-n", m.Name, "addr", "add", machineAddr.String(), "dev", machineIf},
		{"ip", "-n", m.Name, "link", "set", machineIf, "up"},
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return err
		}
	}
	return nil
}

// Exited is closed once the machine's PID 1 (and so every process in it) has ended.
func (m *Machine) Exited() <-chan struct{} { return m.exited }

// Close powers the machine off: SIGRTMIN+4 to systemd (its poweroff request), then SIGKILL if it
// has not ended within 15 s. It then removes the netns name and the machine's cgroup directories,
// bottom-up. Boot registers it with t.Cleanup; calling it again returns the first result.
func (m *Machine) Close() error {
	m.closeOnce.Do(func() { m.closeErr = m.close() })
	return m.closeErr
}

// sigRTMin4 is SIGRTMIN+4 as glibc (and so systemd) counts: glibc keeps the kernel's first two
// real-time signals for itself, so its SIGRTMIN is 34.
const sigRTMin4 = syscall.Signal(34 + 4)

func (m *Machine) close() error {
	var errs []error
	if m.pid != 0 {
		_ = syscall.Kill(m.pid, sigRTMin4)
	} else {
		_ = m.cmd.Process.Kill()
	}
	select {
	case <-m.exited:
	case <-time.After(powerOffTimeout):
		errs = append(errs, fmt.Errorf("systemd did not power off within %v; killed", powerOffTimeout))
		if m.pid != 0 {
			_ = syscall.Kill(m.pid, syscall.SIGKILL)
		}
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
	if m.netns {
		if err := run("ip", "netns", "delete", m.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeCgroups(m.cgroups); err != nil {
		errs = append(errs, err)
	}
	// The console's last lines (the poweroff) are read before Close returns.
	select {
	case <-m.consoleDone:
	case <-time.After(2 * time.Second):
	}
	_ = m.ptm.Close()
	return errors.Join(errs...)
}

// LeftOver lists what the machine left on the host after Close: processes in its pid namespace,
// mounts of its directory or netns, and cgroup directories. Tests assert it is empty.
func (m *Machine) LeftOver() []string {
	var left []string
	if m.pidNS != "" {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			if ns, err := os.Readlink("/proc/" + e.Name() + "/ns/pid"); err == nil && ns == m.pidNS {
				left = append(left, "process "+e.Name()+" ("+procComm(mustAtoi(e.Name()))+")")
			}
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, m.dir) || strings.Contains(l, "/run/netns/"+m.Name+" ") {
				left = append(left, "mount "+l)
			}
		}
	}
	if _, err := os.Stat("/run/netns/" + m.Name); err == nil {
		left = append(left, "netns /run/netns/"+m.Name)
	}
	for _, d := range m.cgroups {
		if _, err := os.Stat(d); err == nil {
			left = append(left, "cgroup "+d)
		}
	}
	return left
}

func mustAtoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// capped keeps the first maxConsole bytes written to it and drops the rest, so a chatty console
// never blocks systemd.
type capped struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := maxConsole - c.b.Len(); room < len(p) {
		c.b.Write(p[:max(room, 0)])
	} else {
		c.b.Write(p)
	}
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}
