package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/internal/systemdlab"
)

// systemdDropIn shortens what the scenario waits for: the watchdog (30 s in the package; cvpn
// warns that under 4 s an idle but healthy endpoint may miss it) and the abort after it
// (TimeoutStopSec otherwise). Everything else is the package's unit as shipped.
const systemdDropIn = `[Service]
WatchdogSec=5s
TimeoutAbortSec=5s
`

// Addresses of the systemd scenario: the machine is the endpoint's host.
const (
	sdRemote   = "172.31.1.1" // the machine's client-facing address
	sdClient   = "172.31.1.2/24"
	sdVPCHost  = "10.0.1.10"  // stays authorized after the reload
	sdVPCOther = "10.0.1.200" // loses its authorization on reload
)

// TestSystemdAppliance is issue 15's scenario on a real systemd: the built .deb installed with
// dpkg -i into a booted machine, cvpn init, systemctl enable --now; the service is active only
// once it is ready and runs as cvpn with exactly CAP_NET_ADMIN and CAP_NET_BIND_SERVICE; a stock
// client connects through it; systemctl reload narrows an authorization rule without dropping
// the client; a stopped (SIGSTOP) cvpn makes systemd log a watchdog timeout and restart it, and
// the client reconnects by itself; journalctl -u cvpn shows the session's fields; systemctl stop
// leaves no TUN, route or proxy neighbour entry. The machine, namespaces and cgroups go away.
func TestSystemdAppliance(t *testing.T) {
	t.Parallel()
	deb := buildDeb(t)
	m := systemdlab.Boot(t, systemdlab.WithFile("/etc/systemd/system/cvpn.service.d/lab.conf", []byte(systemdDropIn), 0o644))
	logged := false
	logJournal := func() {
		if t.Failed() && !logged {
			logged = true
			j, err := m.Journal("-u", "cvpn", "-o", "short-monotonic")
			t.Logf("journalctl -u cvpn, goroutine dumps left out (%v):\n%s", err, netlab.Tail(withoutStacks(j), 12000))
		}
	}
	t.Cleanup(logJournal) // before the machine's own Close, registered earlier
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sh := func(script string) string {
		t.Helper()
		out, err := m.Exec(ctx, "/bin/sh", "-ec", script)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	// The network: a client namespace and a VPC host, each wired to the machine.
	var b [3]byte
	_, _ = rand.Read(b[:])
	clientNS, vpcNS := "sdc"+hex.EncodeToString(b[:]), "sdv"+hex.EncodeToString(b[:])
	for _, ns := range []string{clientNS, vpcNS} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("lo up in %s: %v: %s", ns, err, out)
		}
	}
	if err := m.Link(clientNS, "eth0", netip.MustParsePrefix(sdClient), "c1", netip.MustParsePrefix(sdRemote+"/24")); err != nil {
		t.Fatal(err)
	}
	if err := m.Link(vpcNS, "eth0", netip.MustParsePrefix(sdVPCHost+"/24"), "eth1", netip.MustParsePrefix(netlab.ServerVPC.String()+"/24")); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "-n", vpcNS, "addr", "add", sdVPCOther+"/24", "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}

	// Install, as an operator does.
	if err := m.CopyIn(deb, "/root/cvpn.deb"); err != nil {
		t.Fatal(err)
	}
	sh("DEBIAN_FRONTEND=noninteractive dpkg -i /root/cvpn.deb")
	if st, _ := m.Show("cvpn", "UnitFileState"); st != "disabled" {
		t.Errorf("after dpkg -i cvpn.service is %q, want disabled (nothing starts unconfigured)", st)
	}
	sh(`runuser -u cvpn -- cvpn init --dir /etc/cvpn --remote ` + sdRemote + ` --target-interface eth1 --snat-address ` + netlab.SNATAddress.String() + `
runuser -u cvpn -- cvpn client issue alice --config /etc/cvpn/endpoint.yaml
# Short keepalives, so that the client notices the restarted endpoint in seconds.
printf 'keepalive: {ping_seconds: 1, ping_restart_seconds: 4}\n' >>/etc/cvpn/endpoint.yaml`)
	profile := sh("runuser -u cvpn -- cvpn export-client-config --config /etc/cvpn/endpoint.yaml --client alice --protocol udp")
	profilePath := filepath.Join(t.TempDir(), "alice.ovpn")
	if err := os.WriteFile(profilePath, []byte(profile), 0o600); err != nil {
		t.Fatal(err)
	}

	// enable --now returns once the unit is active, and a Type=notify unit is active only after
	// READY=1: by then the listener is bound and the TUN device is up.
	if _, err := m.Systemctl("enable", "--now", "cvpn"); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.Show("cvpn", "ActiveState"); st != "active" {
		t.Fatalf("cvpn after enable --now: ActiveState=%s", st)
	}
	if out := sh("ss -Hlun 'sport = :443'; ip -br link show type tun"); !strings.Contains(out, ":443") || !strings.Contains(out, "UP") {
		t.Errorf("when systemctl start returned, want the UDP listener bound and the TUN up:\n%s", out)
	}
	checkReadyBeforeActive(t, m)
	checkPrivileges(t, m, sh)

	// A stock client connects through it.
	client, err := netlab.StartProc("openvpn alice", clientNS, "openvpn", "--config", profilePath, "--connect-retry", "1", "--connect-retry-max", "1000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = client.Stop()
		if t.Failed() {
			t.Logf("openvpn output:\n%s", netlab.Tail(client.Output(), 8000))
		}
	})
	if err := client.WaitFor("Initialization Sequence Completed", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	sdPingFrom(t, clientNS, sdVPCHost, true)
	sdPingFrom(t, clientNS, sdVPCOther, true)

	// Reload with a narrower rule: 10.0.1.200 loses access, 10.0.1.10 keeps it, the client stays.
	sh(`runuser -u cvpn -- sed -i 's|target_network_cidr: 10.0.0.0/16|target_network_cidr: 10.0.1.0/25|' /etc/cvpn/endpoint.yaml`)
	mainPID, _ := m.Show("cvpn", "MainPID")
	if _, err := m.Systemctl("reload", "cvpn"); err != nil {
		t.Fatal(err)
	}
	if pid, _ := m.Show("cvpn", "MainPID"); pid != mainPID {
		t.Errorf("reload replaced the process: MainPID %s, then %s", mainPID, pid)
	}
	sdWaitFor(t, 10*time.Second, "the narrower rule applied", func() bool { return !sdPing(clientNS, sdVPCOther) })
	sdPingFrom(t, clientNS, sdVPCHost, true)
	if n := strings.Count(client.Output(), "Initialization Sequence Completed"); n != 1 {
		t.Errorf("the client connected %d times across the reload, want once", n)
	}
	if j, _ := m.Journal("-u", "cvpn", "-o", "cat"); strings.Contains(j, "client disconnected") {
		t.Errorf("the reload dropped the client:\n%s", netlab.Tail(j, 4000))
	}

	// Wedge it: a stopped process sends no WATCHDOG=1. systemd times out, restarts it, and the
	// client reconnects by itself.
	sh("kill -STOP " + mainPID)
	if err := m.WaitState("cvpn", "NRestarts", "1", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitActive("cvpn", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if j, _ := m.Journal("-u", "cvpn", "-o", "cat"); !strings.Contains(j, "Watchdog timeout") {
		t.Errorf("systemd logged no watchdog timeout:\n%s", netlab.Tail(j, 4000))
	}
	if pid, _ := m.Show("cvpn", "MainPID"); pid == mainPID {
		t.Errorf("after the watchdog restart MainPID is still %s", pid)
	}
	sdWaitFor(t, 40*time.Second, "the client to reconnect", func() bool {
		return strings.Count(client.Output(), "Initialization Sequence Completed") >= 2
	})
	sdPingFrom(t, clientNS, sdVPCHost, true)

	checkSessionInJournal(t, m)

	// Stop: no TUN device, route or proxy neighbour entry left in the machine, also after the
	// watchdog killed an instance: the instance that follows must not leave the proxy entry the
	// killed one added as if it were the operator's.
	if _, err := m.Systemctl("stop", "cvpn"); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.Show("cvpn", "ActiveState"); st != "inactive" {
		t.Errorf("after stop: ActiveState=%s", st)
	}
	if out := sh("ip -br link show type tun; ip route show 10.2.0.0/22; ip neigh show proxy"); strings.TrimSpace(out) != "" {
		t.Errorf("left in the machine after systemctl stop:\n%s", out)
	}

	_ = client.Stop()
	logJournal()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if left := m.LeftOver(); len(left) != 0 {
		t.Errorf("left on the host after the machine's poweroff:\n%s", strings.Join(left, "\n"))
	}
}

// buildDeb returns the package under test: CVPN_DEB if set, else one built now by `make deb`'s
// script into a temporary directory.
func buildDeb(t *testing.T) string {
	t.Helper()
	if deb := os.Getenv("CVPN_DEB"); deb != "" {
		return deb
	}
	dist := t.TempDir()
	cmd := exec.Command("deploy/debian/build.sh", "0.0.0+systemdtest")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "DIST="+dist)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("building the .deb: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "cvpn_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("build.sh made %v, want one .deb\n%s", debs, out)
	}
	return debs[0]
}

// checkReadyBeforeActive: systemd's "Started" comes after cvpn logged its listeners bound.
func checkReadyBeforeActive(t *testing.T, m *systemdlab.Machine) {
	t.Helper()
	entries, err := m.JournalEntries("cvpn")
	if err != nil {
		t.Fatal(err)
	}
	var listening, started uint64
	for _, e := range entries {
		ts, _ := strconv.ParseUint(e["__MONOTONIC_TIMESTAMP"], 10, 64)
		switch {
		case strings.HasPrefix(e["MESSAGE"], "cvpn listening") && listening == 0:
			listening = ts
		case strings.HasPrefix(e["MESSAGE"], "Started cvpn.service") && started == 0:
			started = ts
		}
	}
	if listening == 0 || started == 0 || started < listening {
		t.Errorf("journal order: cvpn listening at %d, systemd's Started at %d; want listening first", listening, started)
	}
}

// checkPrivileges: the main process and each of its threads run as cvpn with exactly
// CAP_NET_ADMIN (12) and CAP_NET_BIND_SERVICE (10) and nothing else.
func checkPrivileges(t *testing.T, m *systemdlab.Machine, sh func(string) string) {
	t.Helper()
	pid, err := m.Show("cvpn", "MainPID")
	if err != nil || pid == "0" {
		t.Fatalf("MainPID %q: %v", pid, err)
	}
	uid := strings.TrimSpace(sh("id -u cvpn"))
	status := sh("for s in /proc/" + pid + "/task/*/status; do grep -E '^(Uid|Gid|Cap(Inh|Prm|Eff|Bnd|Amb)):' $s; done")
	const two = "0000000000001400"
	want := map[string]string{
		"Uid": strings.Repeat(uid+"\t", 3) + uid, "CapPrm": two, "CapEff": two, "CapBnd": two, "CapAmb": two, "CapInh": two,
	}
	lines := 0
	for _, l := range strings.Split(strings.TrimSpace(status), "\n") {
		k, v, _ := strings.Cut(l, ":")
		v = strings.TrimSpace(v)
		if w, ok := want[k]; ok {
			lines++
			if v != w {
				t.Errorf("cvpn's %s: %q, want %q", k, v, w)
			}
		}
	}
	if lines < len(want) {
		t.Errorf("read %d of cvpn's privilege lines:\n%s", lines, status)
	}
}

// checkSessionInJournal: the connect is in cvpn's journal as fields, not only as text.
func checkSessionInJournal(t *testing.T, m *systemdlab.Machine) {
	t.Helper()
	entries, err := m.JournalEntries("cvpn")
	if err != nil {
		t.Fatal(err)
	}
	var found int
	for _, e := range entries {
		if !strings.HasPrefix(e["MESSAGE"], "client connected") {
			continue
		}
		found++
		if e["USER"] != "alice" || e["CONNECTION_ID"] == "" || e["PRIORITY"] != "6" || e["_SYSTEMD_UNIT"] != "cvpn.service" {
			t.Errorf("client connected entry: USER=%q CONNECTION_ID=%q PRIORITY=%q _SYSTEMD_UNIT=%q", e["USER"], e["CONNECTION_ID"], e["PRIORITY"], e["_SYSTEMD_UNIT"])
		}
	}
	if found < 2 {
		t.Errorf("journal has %d \"client connected\" entries, want 2 (before and after the restart)", found)
	}
}

// ping reports whether addr answers from namespace ns.
func sdPing(ns, addr string) bool {
	return exec.Command("ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", addr).Run() == nil
}

func sdPingFrom(t *testing.T, ns, addr string, want bool) {
	t.Helper()
	if got := sdPing(ns, addr); got != want {
		t.Fatalf("ping %s from %s: answered %v, want %v", addr, ns, got, want)
	}
}

func sdWaitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stackFrame matches a function line of a goroutine dump, "pkg.Func(0x1, ...)", and a register line.
var stackFrame = regexp.MustCompile(`^\S+\(.*\)$|^r[a-z0-9]+ +0x[0-9a-f]+$`)

// withoutStacks drops the lines of Go's goroutine dumps (a watchdog abort prints one) from a
// journal text, so that a failure's log shows what systemd and cvpn said.
func withoutStacks(journal string) string {
	var b strings.Builder
	for _, l := range strings.Split(journal, "\n") {
		_, msg, _ := strings.Cut(l, "]: ")
		if strings.HasPrefix(msg, "\t") || strings.HasPrefix(msg, "  ") || strings.HasPrefix(msg, "goroutine ") ||
			strings.HasPrefix(msg, "created by ") || stackFrame.MatchString(msg) {
			continue
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}
