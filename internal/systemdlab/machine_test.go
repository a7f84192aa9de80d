package systemdlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// helloScript is a Type=notify service: it says READY=1 once it has printed its greeting, and
// answers SIGHUP (ExecReload) by printing that it reloaded.
const helloScript = `#!/bin/sh
trap 'echo "hello reloaded"' HUP
echo "hello from $(hostname) as $(id -un)"
systemd-notify --pid=$$ --ready --status="greeted"
while :; do sleep 0.1; done
`

const helloUnit = `[Unit]
Description=systemdlab hello

[Service]
Type=notify
NotifyAccess=all
ExecStart=/usr/local/bin/hello
ExecReload=/bin/kill -HUP $MAINPID
`

// watchdogScript pings the watchdog three times, then wedges: systemd must kill and restart it.
const watchdogScript = `#!/bin/sh
echo "wedge starting"
systemd-notify --pid=$$ --ready
for i in 1 2 3; do systemd-notify --pid=$$ WATCHDOG=1; sleep 0.3; done
echo "wedge stops pinging"
while :; do sleep 1; done
`

const watchdogUnit = `[Unit]
Description=systemdlab watchdog
StartLimitIntervalSec=0

[Service]
Type=notify
NotifyAccess=all
ExecStart=/usr/local/bin/wedge
WatchdogSec=2
Restart=on-watchdog
RestartSec=100ms
`

// sandboxUnit runs as nobody with one ambient capability and the hardening cvpn's unit uses, and
// prints what the process ended up with.
const sandboxUnit = `[Service]
Type=oneshot
RemainAfterExit=yes
User=nobody
AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
DeviceAllow=/dev/net/tun rw
StateDirectory=sandbox
ExecStart=/bin/sh -c 'echo "user=$(id -un)"; grep -E "^Cap(Eff|Amb):" /proc/self/status; touch /usr/x 2>/dev/null && echo usr-writable || echo usr-read-only; touch /var/lib/sandbox/ok && echo state-writable; test -c /dev/net/tun && echo tun-present'
`

func TestBootUnitLifecycle(t *testing.T) {
	t.Parallel()
	start := time.Now()
	m := Boot(t,
		WithFile("/usr/local/bin/hello", []byte(helloScript), 0o755),
		WithFile("/etc/systemd/system/hello.service", []byte(helloUnit), 0o644))
	t.Logf("%s booted in %v", m.Name, time.Since(start))

	state, _ := m.Systemctl("is-system-running")
	if s := strings.TrimSpace(state); s != "running" && s != "degraded" {
		t.Fatalf("is-system-running = %q", s)
	}
	if s := strings.TrimSpace(state); s == "degraded" {
		failed, _ := m.Systemctl("--failed", "--no-legend")
		t.Errorf("a fresh machine is degraded; failed units:\n%s", failed)
	}
	if host, err := m.Exec(context.Background(), "hostname"); err != nil || strings.TrimSpace(host) != m.Name {
		t.Errorf("hostname in the machine = %q, %v; want %s", host, err, m.Name)
	}
	if pid1, err := m.Exec(context.Background(), "cat", "/proc/1/comm"); err != nil || strings.TrimSpace(pid1) != "systemd" {
		t.Errorf("PID 1 in the machine = %q, %v", pid1, err)
	}
	// container=cvpn-systemdlab is no name systemd knows, so it says "container-other".
	if virt, _ := m.Exec(context.Background(), "systemd-detect-virt", "--container"); strings.TrimSpace(virt) != "container-other" {
		t.Errorf("systemd-detect-virt --container = %q", virt)
	}

	if _, err := m.Systemctl("start", "hello"); err != nil {
		t.Fatal(err)
	}
	// Type=notify: start returns only after READY=1, so the unit is active right away.
	if st, err := m.Show("hello", "ActiveState"); err != nil || st != "active" {
		t.Fatalf("hello after start: ActiveState=%q, %v", st, err)
	}
	if st, _ := m.Show("hello", "StatusText"); st != "greeted" {
		t.Errorf("hello StatusText = %q, want greeted", st)
	}
	waitJournal(t, m, "hello", "hello from "+m.Name+" as root")

	if _, err := m.Systemctl("reload", "hello"); err != nil {
		t.Fatal(err)
	}
	waitJournal(t, m, "hello", "hello reloaded")
	entries, err := m.JournalEntries("hello")
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, e := range entries {
		if e["MESSAGE"] == "hello reloaded" {
			found = true
			if e["_SYSTEMD_UNIT"] != "hello.service" || e["_HOSTNAME"] != m.Name || e["PRIORITY"] != "6" {
				t.Errorf("journal entry fields: unit %q host %q priority %q", e["_SYSTEMD_UNIT"], e["_HOSTNAME"], e["PRIORITY"])
			}
		}
	}
	if !found {
		t.Errorf("JournalEntries(hello) has no \"hello reloaded\" among %d entries", len(entries))
	}

	if _, err := m.Systemctl("stop", "hello"); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.Show("hello", "ActiveState"); st != "inactive" {
		t.Errorf("hello after stop: ActiveState=%q", st)
	}
	if out, err := m.Exec(context.Background(), "pgrep", "-f", "/usr/local/bin/hello"); err == nil {
		t.Errorf("hello still runs after stop: %s", out)
	}
}

func TestWatchdogRestart(t *testing.T) {
	t.Parallel()
	m := Boot(t,
		WithFile("/usr/local/bin/wedge", []byte(watchdogScript), 0o755),
		WithFile("/etc/systemd/system/wedge.service", []byte(watchdogUnit), 0o644))
	if _, err := m.Systemctl("start", "wedge"); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitState("wedge", "NRestarts", "1", 15*time.Second); err != nil {
		j, _ := m.Journal("-u", "wedge")
		t.Fatalf("%v\njournal:\n%s", err, j)
	}
	waitJournal(t, m, "wedge", "Watchdog timeout")
	if err := m.WaitActive("wedge", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	j, _ := m.Journal("-u", "wedge", "-o", "cat")
	if n := strings.Count(j, "wedge starting"); n < 2 {
		t.Errorf("the service started %d times, want 2 or more (once more after the watchdog):\n%s", n, j)
	}
}

func TestSandboxedUnit(t *testing.T) {
	t.Parallel()
	m := Boot(t, WithFile("/etc/systemd/system/sandbox.service", []byte(sandboxUnit), 0o644))
	if _, err := m.Systemctl("start", "sandbox"); err != nil {
		j, _ := m.Journal("-u", "sandbox")
		t.Fatalf("%v\n%s", err, j)
	}
	out := waitJournal(t, m, "sandbox", "tun-present")
	// CAP_NET_BIND_SERVICE is bit 10, CAP_NET_ADMIN bit 12: 0x1400.
	for _, want := range []string{"user=nobody", "CapEff:\t0000000000001400", "CapAmb:\t0000000000001400", "usr-read-only", "state-writable"} {
		if !strings.Contains(out, want) {
			t.Errorf("sandbox output lacks %q:\n%s", want, out)
		}
	}
	if mode, err := m.Exec(context.Background(), "stat", "-c", "%a %t:%T", "/dev/net/tun"); err != nil || strings.TrimSpace(mode) != "666 a:c8" {
		t.Errorf("/dev/net/tun: %q, %v; want mode 666, device 10:200", mode, err)
	}
}

func TestLinkAndCleanup(t *testing.T) {
	t.Parallel()
	var b [3]byte
	_, _ = rand.Read(b[:])
	peer := "sdpeer" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", peer).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", peer).Run() })

	m := Boot(t)
	err := m.Link(peer, "veth0", netip.MustParsePrefix("192.0.2.2/24"), "eth0", netip.MustParsePrefix("192.0.2.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := m.Exec(context.Background(), "ping", "-c", "1", "-W", "5", "192.0.2.2"); err != nil {
		t.Fatalf("ping from the machine to its peer: %v\n%s", err, out)
	}
	if out, err := exec.Command("ip", "-n", m.NetNS(), "-br", "addr", "show", "eth0").CombinedOutput(); err != nil || !strings.Contains(string(out), "192.0.2.1/24") {
		t.Errorf("ip -n %s addr: %v: %s", m.NetNS(), err, out)
	}
	// The host's interfaces are not in the machine.
	if out, _ := m.Exec(context.Background(), "ip", "-br", "link"); strings.Count(strings.TrimSpace(out), "\n") != 1 {
		t.Errorf("links in the machine, want lo and eth0:\n%s", out)
	}

	// systemd built its tree below the machine's own cgroups; Close must remove it.
	var tree bool
	for _, d := range m.CgroupDirs() {
		if _, err := os.Stat(d + "/init.scope"); err == nil {
			tree = true
		}
	}
	if !tree {
		t.Errorf("no init.scope below the machine's cgroups %v: the cgroup namespace is not rooted there", m.CgroupDirs())
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Exited():
	default:
		t.Fatal("Close returned before the machine ended")
	}
	if left := m.LeftOver(); len(left) != 0 {
		t.Errorf("left on the host after Close:\n%s", strings.Join(left, "\n"))
	}
	if c := m.Console(); !strings.Contains(c, "running in system mode") || !strings.Contains(c, "Powering off.") {
		t.Errorf("console does not show the boot:\n%s", tail(m.Console(), 2000))
	}
	// The peer's end went with the machine's namespace.
	if out, err := exec.Command("ip", "-n", peer, "link", "show", "veth0").CombinedOutput(); err == nil {
		t.Errorf("veth0 still in %s after Close: %s", peer, out)
	}
}

// waitJournal waits until unit's journal (-o cat) contains want and returns it.
func waitJournal(t *testing.T, m *Machine, unit, want string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := m.Journal("-u", unit, "-o", "cat")
		if err == nil && strings.Contains(out, want) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal of %s lacks %q (%v):\n%s", unit, want, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSweepStale: the cgroups of a machine whose test process was killed are removed by a later
// Boot once they are old enough; a machine being set up right now is left alone.
func TestSweepStale(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("cgroups need root")
	}
	stale, err := makeCgroups("cvsd" + "5da1e0")
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := makeCgroups("cvsd" + "f4e540")
	t.Cleanup(func() { _ = removeCgroups(append(stale, fresh...)) })
	if err != nil {
		t.Fatal(err)
	}
	// A tree below the stale one, as systemd leaves it.
	for _, d := range stale {
		if err := os.MkdirAll(d+"/system.slice/x.service", 0o755); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-time.Hour)
		if err := os.Chtimes(d, old, old); err != nil {
			t.Skipf("cannot age a cgroup directory here: %v", err)
		}
	}
	if err := sweepStale(); err != nil {
		t.Fatal(err)
	}
	for _, d := range stale {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("stale %s survived the sweep", d)
		}
	}
	for _, d := range fresh {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("fresh %s was swept: %v", d, err)
		}
	}
}
