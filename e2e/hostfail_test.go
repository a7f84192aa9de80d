package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

// nobodyID is the unprivileged user the non-root case runs cvpn as.
const nobodyID = "65534"

// TestServeHostFailures starts `cvpn serve` where host setup cannot succeed: each case must print
// one line naming the failure, exit with status 1, not panic, and leave the server namespace as it
// found it (links, routes, proxy neighbour entries and the two sysctls cvpn sets).
func TestServeHostFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		// edit changes endpoint.yaml; nil leaves it valid.
		edit func(yaml string) string
		// command wraps cvpn's command line (run in the server namespace).
		command func(t *testing.T, dir string, serve []string) []string
		want    []string // on stderr
	}{
		{
			name: "missing interface",
			edit: func(y string) string { return strings.Replace(y, "interface: eth1", "interface: eth9", 1) },
			want: []string{`cvpn serve: target_network.interface "eth9": no such network interface: `, "ip link show"},
		},
		{
			name: "non-root",
			command: func(t *testing.T, dir string, serve []string) []string {
				// The files, and a copy of the binary, readable by nobody.
				bin := filepath.Join(dir, "cvpn")
				copyExecutable(t, cvpnBin, bin)
				runOrFail(t, "chown", "-R", nobodyID+":"+nobodyID, dir)
				serve[0] = bin
				return append([]string{"setpriv", "--reuid=" + nobodyID, "--regid=" + nobodyID, "--clear-groups"}, serve...)
			},
			want: []string{`cvpn serve: create TUN device "cvpn0"`, "needs root"},
		},
		{
			name: "read-only proc sys",
			command: func(t *testing.T, dir string, serve []string) []string {
				// A mount namespace of its own in which /proc/sys is a read-only bind mount, as in
				// many containers. The TUN, route and neighbour entry are added before the sysctls,
				// so they must be removed again.
				script := `mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"`
				return append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"}, serve...)
			},
			want: []string{"cvpn serve: set sysctl net.ipv4.ip_forward=1 (it is 0): read-only file system: ", "beforehand"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lab, err := netlab.New()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(lab.Close)
			// A directory that the non-root case can hand to nobody (t.TempDir's parents are
			// root's alone).
			dir, err := os.MkdirTemp("", "cvpn-hostfail-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			ep, err := netlab.WriteEndpoint(dir, netlab.EndpointOptions{TLSCrypt: true})
			if err != nil {
				t.Fatal(err)
			}
			if tc.edit != nil {
				b, err := os.ReadFile(ep.Config)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(ep.Config, []byte(tc.edit(string(b))), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// Values cvpn would change, so that a failure after a write would show.
			serverOutput(ctx, t, lab, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward && echo 80 > /proc/sys/net/ipv4/neigh/eth1/proxy_delay")
			before := serverState(ctx, t, lab)

			args := []string{cvpnBin, "serve", "--config", ep.Config}
			if tc.command != nil {
				args = tc.command(t, dir, args)
			}
			var stdout, stderr bytes.Buffer
			cmd := lab.Command(ctx, lab.Server, args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err = cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Errorf("cvpn serve: %v, want exit status 1", err)
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.HasSuffix(msg, "\n") {
				t.Errorf("stderr is not one line:\n%s", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("stderr %q does not contain %q", msg, w)
				}
			}
			if all := stdout.String() + msg; strings.Contains(all, "panic") || strings.Contains(all, "goroutine") {
				t.Errorf("output shows a panic:\n%s", all)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout: %q, want nothing", stdout.String())
			}
			t.Logf("stderr: %s", msg)

			after := serverState(ctx, t, lab)
			for _, k := range serverStateKeys {
				if before[k] != after[k] {
					t.Errorf("%s changed:\nbefore:\n%s\nafter:\n%s", k, before[k], after[k])
				}
			}
		})
	}
}

// serverStateKeys are what serverState records, each the command that shows it.
var serverStateKeys = []string{
	"ip -d link",
	"ip route",
	"ip neigh show proxy",
	"cat /proc/sys/net/ipv4/ip_forward",
	"cat /proc/sys/net/ipv4/neigh/eth1/proxy_delay",
}

// serverState is what cvpn's host setup may change in the server namespace.
func serverState(ctx context.Context, t *testing.T, lab *netlab.Lab) map[string]string {
	t.Helper()
	state := map[string]string{}
	for _, k := range serverStateKeys {
		state[k] = serverOutput(ctx, t, lab, strings.Fields(k)...)
	}
	state["ip -d link"] = withoutPeerNetns(state["ip -d link"])
	if !strings.Contains(state["ip -d link"], "eth1") || state["cat /proc/sys/net/ipv4/ip_forward"] != "0\n" {
		t.Fatalf("unexpected server namespace state: %v", state)
	}
	return state
}

// peerNetns is how `ip -d link` names a veth peer's namespace. It is not the server's state:
// ip resolves it by walking /run/netns, where other tests running at the same time add and
// remove namespaces, and then sometimes prints "Peer netns reference is invalid" instead.
var peerNetns = regexp.MustCompile(`(?m) link-netns(id)? \S+|^Error: Peer netns reference is invalid\.\n`)

// withoutPeerNetns is `ip -d link` output without the peer namespaces' names.
func withoutPeerNetns(s string) string { return peerNetns.ReplaceAllString(s, "") }

// serverOutput runs a command in the server namespace and returns its output.
func serverOutput(ctx context.Context, t *testing.T, lab *netlab.Lab, args ...string) string {
	t.Helper()
	out, err := lab.Output(ctx, lab.Server, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runOrFail runs a command here (not in a namespace).
func runOrFail(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// copyExecutable copies a file and makes the copy executable by anyone.
func copyExecutable(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestServeRestoresHostState: a cvpn that starts and stops leaves the server namespace as it found
// it, including a proxy neighbour entry for the SNAT address that was there before it started
// (the kernel accepts adding it again, so cvpn must not take it for its own and delete it).
func TestServeRestoresHostState(t *testing.T) {
	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	ep, err := netlab.WriteEndpoint(t.TempDir(), netlab.EndpointOptions{TLSCrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	serverOutput(ctx, t, lab, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward && echo 80 > /proc/sys/net/ipv4/neigh/eth1/proxy_delay")
	serverOutput(ctx, t, lab, "ip", "neigh", "add", "proxy", netlab.SNATAddress.String(), "dev", "eth1")
	before := serverState(ctx, t, lab)

	srv, err := lab.Start("cvpn", lab.Server, cvpnBin, "serve", "--config", ep.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitFor("cvpn listening", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	running := map[string]string{}
	for _, k := range serverStateKeys {
		running[k] = serverOutput(ctx, t, lab, strings.Fields(k)...)
	}
	if !strings.Contains(running["ip -d link"], "cvpn0") || running["cat /proc/sys/net/ipv4/ip_forward"] != "1\n" ||
		running["cat /proc/sys/net/ipv4/neigh/eth1/proxy_delay"] != "0\n" {
		t.Errorf("the running endpoint has not set the host up: %v", running)
	}
	if err := srv.Stop(); err != nil {
		t.Errorf("cvpn serve: %v\n%s", err, srv.Output())
	}
	after := serverState(ctx, t, lab)
	for _, k := range serverStateKeys {
		if before[k] != after[k] {
			t.Errorf("%s changed:\nbefore:\n%s\nafter:\n%s", k, before[k], after[k])
		}
	}
	if !strings.Contains(after["ip neigh show proxy"], netlab.SNATAddress.String()) {
		t.Errorf("the proxy neighbour entry that was there before is gone:\n%s", after["ip neigh show proxy"])
	}
}
