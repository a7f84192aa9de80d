package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/internal/privdrop"
)

// TestServeUserNobody is `cvpn serve --user nobody`, the stock server's `user nobody`: once set
// up, every thread of the serving process runs as nobody with exactly CAP_NET_ADMIN and
// CAP_NET_BIND_SERVICE (none inheritable or ambient, no_new_privs). A stock client connects and
// reaches the private network; a reload then opens a new listener on port 443/tcp (a port below
// 1024, after the drop) and a TCP client connects through it; SIGUSR1 reopens the connection
// log, which cvpn created as root and handed to nobody; and at stop the process, still nobody, removes
// the TUN, route and neighbour entry, restores both sysctls it had set as root, and removes the
// admin socket from the directory it created for it.
//
// The endpoint's directory is given to nobody first, as an operator would, since a reload
// re-reads the file and the keys. The binary is built without cgo: only then can Go change the
// credentials of every thread (package privdrop).
func TestServeUserNobody(t *testing.T) {
	t.Parallel()
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	dir, err := os.MkdirTemp("", "cvpn-privdrop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := buildWithoutCgo(t, dir)
	epDir := filepath.Join(dir, "ep")
	socket := filepath.Join(dir, "run", "cvpn", "admin.sock") // its directories do not exist yet
	connLog := filepath.Join(epDir, "connections.log")
	if err := os.Mkdir(epDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ep, err := netlab.WriteEndpoint(epDir, netlab.EndpointOptions{TLSCrypt: true, Transport: "[{protocol: udp, port: 443}]",
		Extra: fmt.Sprintf("admin: {socket: %s}\nconnection_log: {enabled: true, file: %s}\n", socket, connLog)})
	if err != nil {
		t.Fatal(err)
	}
	runOrFail(t, "chown", "-R", nobody.Uid+":"+nobody.Gid, epDir)

	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	s := &setup{t: t, lab: lab, ep: ep}
	t.Cleanup(func() {
		lab.Close()
		if t.Failed() && s.srv != nil {
			t.Logf("cvpn output:\n%s", s.srv.Output())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Values cvpn sets as root, before it drops, and must restore as nobody at stop.
	serverOutput(ctx, t, lab, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward && echo 80 > /proc/sys/net/ipv4/neigh/eth1/proxy_delay")
	before := serverState(ctx, t, lab)

	s.srv, err = lab.Start("cvpn", lab.Server, bin, "serve", "--config", ep.Config, "--user", "nobody")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.srv.WaitFor("privileges dropped", 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if out := s.srv.Output(); !strings.Contains(out, "capabilities=cap_net_bind_service,cap_net_admin") || strings.Contains(out, "give it to that user") {
		t.Errorf("cvpn's log does not show the drop, or warns about a file nobody cannot use:\n%s", out)
	}

	// Every thread: nobody, the two capabilities, nothing to pass on.
	want := privdrop.SetOf(privdrop.NetAdmin, privdrop.NetBindService)
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", s.srv.PID()))
	if err != nil || len(tasks) < 2 {
		t.Fatalf("threads of cvpn: %v, %v", tasks, err)
	}
	for _, task := range tasks {
		st, err := privdrop.ReadStatusFile(task)
		if err != nil {
			t.Fatal(err)
		}
		if st.UID != [4]int{uid, uid, uid, uid} || st.CapEff != want || st.CapPrm != want || st.CapInh != 0 || st.CapAmb != 0 || !st.NoNewPrivs {
			t.Errorf("%s: uids %v, effective %s, permitted %s, inheritable %s, ambient %s, no_new_privs %v; want nobody (%d) with exactly %s",
				task, st.UID, st.CapEff, st.CapPrm, st.CapInh, st.CapAmb, st.NoNewPrivs, uid, want)
		}
	}

	vpc := netlab.VPCHost.String()
	first := s.connect("first", netlab.ProfileOptions{})
	s.ping(first, vpc)

	// A reload adds a TCP listener on port 443, which needs CAP_NET_BIND_SERVICE.
	s.reload(replaceInFile(t, s.endpointFile(), "transport: [{protocol: udp, port: 443}]", "transport: [{protocol: udp, port: 443}, {protocol: tcp, port: 443}]"))
	if err := s.srv.WaitFor("reload applied", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	overTCP := s.connect("tcp", netlab.ProfileOptions{Proto: "tcp"})
	if !regexp.MustCompile(`TCP connection established with \[AF_INET\]172\.31\.\d+\.1:443`).MatchString(overTCP.proc.Output()) {
		t.Errorf("the TCP client's log shows no TCP connection to port 443:\n%s", overTCP.proc.Output())
	}
	s.ping(overTCP, vpc)
	s.ping(first, vpc)

	// The connection log, created by cvpn as root and handed to nobody, reopens (SIGUSR1).
	if err := s.srv.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if err := s.srv.WaitFor("connection log reopened", 10*time.Second); err != nil {
		t.Fatal(err)
	}

	if err := s.srv.Stop(); err != nil {
		t.Errorf("cvpn serve: %v", err)
	}
	out := s.srv.Output()
	for _, bad := range []string{"removing host state", "level=ERROR", "level=WARN"} {
		if strings.Contains(out, bad) {
			t.Errorf("cvpn logged %q:\n%s", bad, out)
		}
	}
	sameHostState(t, before, serverState(ctx, t, lab))
	if _, err := os.Lstat(socket); err == nil {
		t.Errorf("the admin socket %s is left behind", socket)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Dir(socket), &st); err != nil || int(st.Uid) != uid {
		t.Errorf("the admin socket's directory, which cvpn created: owner %d, %v; want nobody", st.Uid, err)
	}
	if err := syscall.Stat(connLog, &st); err != nil || int(st.Uid) != uid {
		t.Errorf("the connection log, which cvpn created: owner %d, %v; want nobody", st.Uid, err)
	}
}

// TestServeAmbientCapabilities runs cvpn serve the way the systemd unit does: as an unprivileged
// user from the start, with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE as ambient capabilities
// (setpriv stands in for User= and AmbientCapabilities=). Not being root, cvpn leaves the
// sysctls to the system. With ip_forward off it refuses on one line that names the sysctl and
// the package's sysctl.d file, and changes nothing. With both set, as 60-cvpn.conf sets them, it
// starts on port 443 with only those capabilities, a stock client reaches the private network
// through it, and at stop it removes the TUN, route and neighbour entry and leaves the sysctls
// as they were.
func TestServeAmbientCapabilities(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "cvpn-ambient-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "cvpn")
	copyExecutable(t, cvpnBin, bin)
	if err := os.Mkdir(filepath.Join(dir, "ep"), 0o755); err != nil {
		t.Fatal(err)
	}
	ep, err := netlab.WriteEndpoint(filepath.Join(dir, "ep"), netlab.EndpointOptions{TLSCrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	runOrFail(t, "chown", "-R", nobodyID+":"+nobodyID, filepath.Join(dir, "ep"))
	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	s := &setup{t: t, lab: lab, ep: ep}
	t.Cleanup(func() {
		lab.Close()
		if t.Failed() && s.srv != nil {
			t.Logf("cvpn output:\n%s", s.srv.Output())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A mount namespace of cvpn's own with a /dev/net/tun that anyone may open, as Debian's is
	// and as systemd's PrivateDevices= with DeviceAllow=/dev/net/tun gives (this machine's is
	// root's alone), then setpriv.
	tunNode := `rm -f "$0" && mknod "$0" c 10 200 && chmod 666 "$0" && mount --bind "$0" /dev/net/tun && exec "$@"`
	serve := []string{"unshare", "--mount", "--propagation", "private", "sh", "-c", tunNode, filepath.Join(dir, "tun"),
		"setpriv", "--reuid=" + nobodyID, "--regid=" + nobodyID, "--clear-groups",
		"--inh-caps=+net_admin,+net_bind_service", "--ambient-caps=+net_admin,+net_bind_service",
		bin, "serve", "--config", ep.Config}
	state := func() map[string]string {
		m := map[string]string{}
		for _, k := range serverStateKeys {
			m[k] = serverOutput(ctx, t, lab, strings.Fields(k)...)
		}
		return m
	}

	// ip_forward off: refused, nothing changed.
	serverOutput(ctx, t, lab, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward && echo 0 > /proc/sys/net/ipv4/neigh/eth1/proxy_delay")
	before := state()
	var stderr strings.Builder
	cmd := lab.Command(ctx, lab.Server, serve...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 1 {
		t.Errorf("cvpn serve with ip_forward off: %v, want exit status 1", err)
	}
	msg := stderr.String()
	if strings.Count(msg, "\n") != 1 {
		t.Errorf("stderr is not one line:\n%s", msg)
	}
	for _, w := range []string{"cvpn serve: sysctl net.ipv4.ip_forward is 0, want 1: ", "runs as uid " + nobodyID + ", not root",
		"`net.ipv4.ip_forward = 1`", "/usr/lib/sysctl.d/60-cvpn.conf", "sysctl --system"} {
		if !strings.Contains(msg, w) {
			t.Errorf("stderr %q does not contain %q", msg, w)
		}
	}
	sameHostState(t, before, state())

	// Both set: it serves, with the two capabilities only.
	serverOutput(ctx, t, lab, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
	before = state()
	if s.srv, err = lab.Start("cvpn", lab.Server, serve...); err != nil {
		t.Fatal(err)
	}
	if err := s.srv.WaitFor("cvpn listening", 15*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := privdrop.ReadStatus(s.srv.PID())
	if err != nil {
		t.Fatal(err)
	}
	want := privdrop.SetOf(privdrop.NetAdmin, privdrop.NetBindService)
	if fmt.Sprint(st.UID[1]) != nobodyID || st.CapEff != want {
		t.Errorf("cvpn runs as uid %d with %s, want %s with %s", st.UID[1], st.CapEff, nobodyID, want)
	}
	c := s.connect("first", netlab.ProfileOptions{})
	s.ping(c, netlab.VPCHost.String())
	if err := s.srv.Stop(); err != nil {
		t.Errorf("cvpn serve: %v", err)
	}
	if out := s.srv.Output(); strings.Contains(out, "level=ERROR") {
		t.Errorf("cvpn logged an error:\n%s", out)
	}
	sameHostState(t, before, state())
}

// sameHostState compares the server namespace's state before cvpn started and after it
// stopped: the sysctls and proxy neighbour entries must be as they were, and no link or route
// of cvpn's may be left (the clients' namespaces add links and routes of their own meanwhile).
func sameHostState(t *testing.T, before, after map[string]string) {
	t.Helper()
	for _, k := range serverStateKeys {
		switch {
		case k == "ip -d link" || k == "ip route":
			for _, left := range []string{"cvpn0", netlab.SNATAddress.String()} {
				if strings.Contains(after[k], left) {
					t.Errorf("%s shows %s after cvpn stopped:\n%s", k, left, after[k])
				}
			}
		case before[k] != after[k]:
			t.Errorf("%s changed:\nbefore:\n%s\nafter:\n%s", k, before[k], after[k])
		}
	}
}

// TestServeUserWarnsWhatItCannotUse: with --user, an endpoint whose files were not given to
// that user still starts (everything is open by then), but cvpn names each file a reload or the
// stop would need and the user cannot use: here the server key (root's, mode 0600) and the
// directory of the admin socket (root's).
func TestServeUserWarnsWhatItCannotUse(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "cvpn-privdrop-warn-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := buildWithoutCgo(t, dir)
	epDir := filepath.Join(dir, "ep")
	if err := os.Mkdir(epDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ep, err := netlab.WriteEndpoint(epDir, netlab.EndpointOptions{TLSCrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	srv, err := lab.Start("cvpn", lab.Server, bin, "serve", "--config", ep.Config, "--user", "nobody")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitFor("privileges dropped", 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Errorf("cvpn serve: %v\n%s", err, srv.Output())
	}
	out := srv.Output()
	for _, want := range []string{
		"--user nobody cannot read " + filepath.Join(epDir, "server.key") + ": SIGHUP re-reads the server key",
		"--user nobody cannot write " + epDir + ": the admin socket is removed from it at stop",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("cvpn's log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "cannot read "+ep.Config) {
		t.Errorf("cvpn warns about the endpoint file, which anyone may read:\n%s", out)
	}
}

// buildWithoutCgo builds cvpn into dir with CGO_ENABLED=0, the only build in which --user can
// change every thread.
func buildWithoutCgo(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "cvpn")
	build := exec.Command("go", "build", "-o", bin, "../cmd/cvpn")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building cvpn without cgo: %v\n%s", err, out)
	}
	return bin
}
