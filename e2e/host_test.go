package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/cvpn/cvpn/internal/netlab"
)

// These tests are issue 11's "the host is not a destination" with the stock client: a client
// authorized for the whole VPC reaches the VPC's hosts but not the endpoint host's own services
// on its VPC-side address, nor an address the host gains while it runs, until
// allow_host_access says it may; and it can ping the gateway address, which cvpn answers itself.

// tcpService is a TCP listener in a test namespace that counts the connections it accepts.
type tcpService struct {
	ln       net.Listener
	accepted atomic.Int32
}

// listenTCPIn opens a TCP listener on ap inside namespace ns and accepts on it until the test
// ends.
func listenTCPIn(t *testing.T, ns string, ap netip.AddrPort) *tcpService {
	t.Helper()
	var ln net.Listener
	err := inNS(ns, func() (err error) {
		ln, err = net.Listen("tcp4", ap.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", ap, ns, err)
	}
	s := &tcpService{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			c.Close()
		}
	}()
	return s
}

// waitAccepted waits up to two seconds until the service has accepted n connections, and
// returns how many it has.
func (s *tcpService) waitAccepted(n int32) int32 {
	for deadline := time.Now().Add(2 * time.Second); s.accepted.Load() < n && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	return s.accepted.Load()
}

// dialTCPIn connects to ap from inside namespace ns, giving up after timeout.
func dialTCPIn(ns string, ap netip.AddrPort, timeout time.Duration) error {
	return inNS(ns, func() error {
		c, err := net.DialTimeout("tcp4", ap.String(), timeout)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// inNS runs fn on a thread switched into namespace ns (a socket keeps the namespace it was
// opened in), then switches the thread back.
func inNS(ns string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // the thread is in the wrong namespace: let it end with the goroutine
		return fmt.Errorf("leave netns %s: %w", ns, err)
	}
	return ferr
}

// TestHostNotADestination: with the lab's rule for the whole VPC (10.0.0.0/16, all groups),
// a stock client connects to a TCP service in the VPC, but not to one listening on the
// endpoint host's own VPC-side address (10.0.1.1, in the server namespace): the SYNs are
// dropped and counted as host_address, and the drop is logged naming the destination. An
// address the host gains while cvpn runs is refused too. The gateway address answers ping.
// allow_host_access: true on SIGHUP opens the host's address, which shows that only the
// refusal stood between the client and the host's service.
func TestHostNotADestination(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	const port = 2222
	hostSvc := listenTCPIn(t, s.lab.Server, netip.AddrPortFrom(netlab.ServerVPC, port))
	vpcSvc := listenTCPIn(t, s.lab.VPC, netip.AddrPortFrom(netlab.VPCHost, port))
	c := s.connect("mallory", netlab.ProfileOptions{})

	s.ping(c, netlab.VPCHost.String())
	if err := dialTCPIn(c.ns, netip.AddrPortFrom(netlab.VPCHost, port), 5*time.Second); err != nil {
		t.Fatalf("connect to the VPC host's service: %v", err)
	}
	if n := vpcSvc.waitAccepted(1); n != 1 {
		t.Fatalf("the VPC host's service accepted %d connections, want 1", n)
	}

	if err := dialTCPIn(c.ns, netip.AddrPortFrom(netlab.ServerVPC, port), 3*time.Second); err == nil {
		t.Fatalf("a client connected to the endpoint host's service on %s", netlab.ServerVPC)
	}
	if n := hostSvc.accepted.Load(); n != 0 {
		t.Fatalf("the endpoint host's service accepted %d connections from a client", n)
	}
	if err := s.srv.WaitFor("reason=host_address", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if line := hostLogLine(s.srv.Output(), "reason=host_address"); !strings.Contains(line, "dst="+netlab.ServerVPC.String()) || !strings.Contains(line, "user=mallory") {
		t.Errorf("the host_address line does not name the user and the destination: %s", line)
	}

	// The gateway address: cvpn answers ping itself, every request.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	gw := "10.2.0.1" // the first usable address of the lab's 10.2.0.0/22, the pushed route-gateway
	out, err := s.lab.Output(ctx, c.ns, "ping", "-c", "5", "-i", "0.2", "-W", "2", gw)
	if err != nil {
		t.Fatalf("ping %s: %v", gw, err)
	}
	if sent, received, ok := pingTally(out); !ok || sent != 5 || received != 5 {
		t.Fatalf("ping %s: %d of %d answered:\n%s", gw, received, sent, out)
	}
	if !strings.Contains(out, "from "+gw) {
		t.Errorf("replies not from %s:\n%s", gw, out)
	}

	// The host gains an address in the VPC subnet: refused as soon as cvpn has read it.
	gained := netip.MustParseAddr("10.0.1.3")
	const changed = "the host's own addresses changed"
	seen := strings.Count(s.srv.Output(), changed) // the client's link address, added after cvpn started, was one
	if _, err := s.lab.Output(context.Background(), s.lab.Server, "ip", "addr", "add", gained.String()+"/24", "dev", "eth1"); err != nil {
		t.Fatal(err)
	}
	if err := waitCount(s.srv, changed, seen+1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if line := hostLogLines(s.srv.Output(), changed)[seen]; !strings.Contains(line, gained.String()+"/32") {
		t.Fatalf("the change does not list %s: %s", gained, line)
	}
	gainedSvc := listenTCPIn(t, s.lab.Server, netip.AddrPortFrom(gained, port))
	if err := dialTCPIn(c.ns, netip.AddrPortFrom(gained, port), 3*time.Second); err == nil || gainedSvc.accepted.Load() != 0 {
		t.Fatalf("a client connected to the address the host gained, %s", gained)
	}

	// allow_host_access: true lets the host's address through the rule for the whole VPC.
	s.reload(s.endpointFile() + "allow_host_access: true\n")
	if err := s.srv.WaitFor("reload applied", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := dialTCPIn(c.ns, netip.AddrPortFrom(netlab.ServerVPC, port), 5*time.Second); err != nil {
		t.Fatalf("allow_host_access: true, but the host's service is unreachable: %v", err)
	}
	if n := hostSvc.waitAccepted(1); n != 1 {
		t.Fatalf("allow_host_access: true: the host's service accepted %d connections, want 1", n)
	}
	checkSessionKept(t, "mallory", c)

	drops := s.drops()
	// Each refused connect is a SYN and its retransmissions: at least one drop per address.
	if drops["host_address"] < 2 {
		t.Errorf("host_address drops %d, want at least 2 (one address, then the gained one): %v", drops["host_address"], drops)
	}
	if drops["unauthorized"] != 0 || drops["no_route"] != 0 {
		t.Errorf("drops under other reasons: %v", drops)
	}
}

// hostLogLine returns the first line of out that contains s.
func hostLogLine(out, s string) string {
	if lines := hostLogLines(out, s); len(lines) > 0 {
		return lines[0]
	}
	return ""
}

// hostLogLines returns the lines of out that contain s.
func hostLogLines(out, s string) []string {
	var lines []string
	for l := range strings.Lines(out) {
		if strings.Contains(l, s) {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return lines
}
