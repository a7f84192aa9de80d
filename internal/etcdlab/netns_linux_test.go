package etcdlab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// TestNetNS runs three members in one network namespace of their own, on its loopback: each
// gets ports of its own there, the test reaches them only through Options.Dial, and a killed
// member (started through `ip netns exec`) is really gone.
func TestNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root (make test runs as root)")
	}
	ns := "etcdlab" + randomHex(3)
	for _, args := range [][]string{{"netns", "add", ns}, {"-n", ns, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })

	lo := netip.MustParseAddr("127.0.0.1")
	c := Start(t, Options{
		Members: 3,
		Hosts:   []netip.Addr{lo, lo, lo},
		NetNS:   []string{ns, ns, ns},
		Dial:    dialIn(ns),
	})
	put(t, c.Client(t), "k", "v")
	for i := range c.Len() {
		if got := get(t, c.Client(t, c.Member(i).Endpoint()), "k"); got != "v" {
			t.Fatalf("through %s: k = %q, want v", c.Member(i).Name(), got)
		}
	}
	// Not reachable from the test's own namespace: the members listen in theirs.
	if conn, err := net.Dial("tcp", c.Member(0).Endpoint()[len("http://"):]); err == nil {
		conn.Close()
		t.Fatalf("member m0 in %s answered from the test's namespace", ns)
	}

	c.Member(2).Kill()
	waitHealthy(t, c)
	put(t, c.Client(t), "k", "v2")
	c.Member(2).Start()
	waitHealthy(t, c)
	if got := get(t, c.Client(t, c.Member(2).Endpoint()), "k"); got != "v2" {
		t.Fatalf("restarted m2: k = %q, want v2", got)
	}
}

// dialIn dials from namespace ns.
func dialIn(ns string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			return nil, err
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			return nil, err
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			return nil, err
		}
		var d net.Dialer
		conn, derr := d.DialContext(ctx, "tcp", addr)
		if err := netns.Set(orig); err != nil {
			// The thread is in the wrong namespace: let it die with the goroutine.
			runtime.LockOSThread()
			if conn != nil {
				conn.Close()
			}
			return nil, fmt.Errorf("leave netns %s: %w", ns, err)
		}
		return conn, derr
	}
}
