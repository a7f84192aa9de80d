// Package e2e runs the stock openvpn 2.6 client against cvpn in network namespaces. It needs root
// (namespaces, TUN) and the openvpn and iperf3 binaries; .ci/run installs them and CI runs as root.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

// cvpnBin is the binary under test, built once by TestMain.
var cvpnBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: these tests need root (network namespaces, TUN devices); run them as root, as CI does")
		os.Exit(1)
	}
	for _, bin := range []string{"openvpn", "iperf3", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s not found: .ci/run installs it (apt-get install openvpn iperf3 iproute2)\n", bin)
			os.Exit(1)
		}
	}
	dir, err := os.MkdirTemp("", "cvpn-e2e-bin")
	if err != nil {
		panic(err)
	}
	cvpnBin = filepath.Join(dir, "cvpn")
	args := []string{"build", "-o", cvpnBin}
	if os.Getenv("CVPN_E2E_RACE") != "" {
		args = append(args, "-race") // CVPN_E2E_RACE=1: run the end-to-end tests against a race-detecting build
	}
	build := exec.Command("go", append(args, "../cmd/cvpn")...)
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building cvpn:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// setup is one lab with a running cvpn.
type setup struct {
	t   *testing.T
	lab *netlab.Lab
	ep  *netlab.Endpoint
	srv *netlab.Proc
}

func newSetup(t *testing.T, o netlab.EndpointOptions) *setup {
	t.Helper()
	return startSetup(t, netlab.New, o)
}

// startSetup builds a lab with newLab (netlab.New, netlab.NewDual) and starts cvpn in it.
func startSetup(t *testing.T, newLab func() (*netlab.Lab, error), o netlab.EndpointOptions) *setup {
	t.Helper()
	lab, err := newLab()
	if err != nil {
		t.Fatal(err)
	}
	s := &setup{t: t, lab: lab}
	t.Cleanup(func() {
		lab.Close()
		if t.Failed() && s.srv != nil {
			t.Logf("cvpn output:\n%s", s.srv.Output())
		}
	})
	s.ep, err = netlab.WriteEndpoint(t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	s.srv, err = lab.Start("cvpn", lab.Server, cvpnBin, "serve", "--config", s.ep.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.srv.WaitFor("cvpn listening", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return s
}

// vpnClient is one stock openvpn client process in its own namespace.
type vpnClient struct {
	ns   string
	proc *netlab.Proc
}

// connect starts a stock openvpn client with a fresh certificate and waits until it is up.
func (s *setup) connect(name string, o netlab.ProfileOptions) *vpnClient {
	s.t.Helper()
	c := s.start(name, o)
	if err := c.proc.WaitFor("Initialization Sequence Completed", 30*time.Second); err != nil {
		s.t.Fatalf("%s: %v\nclient log:\n%s", name, err, c.proc.Output())
	}
	return c
}

// start starts a stock openvpn client without waiting for it.
func (s *setup) start(name string, o netlab.ProfileOptions) *vpnClient {
	s.t.Helper()
	ns, server, err := s.lab.AddClient()
	if err != nil {
		s.t.Fatal(err)
	}
	profile, err := s.ep.ClientProfile(name, server, o)
	if err != nil {
		s.t.Fatal(err)
	}
	p, err := s.lab.Start("openvpn "+name, ns, "openvpn", "--config", profile)
	if err != nil {
		s.t.Fatal(err)
	}
	c := &vpnClient{ns: ns, proc: p}
	s.t.Cleanup(func() {
		if s.t.Failed() {
			s.t.Logf("openvpn %s output:\n%s", name, p.Output())
		}
	})
	return c
}

var inetRE = regexp.MustCompile(`inet (\d+\.\d+\.\d+\.\d+)/(\d+)`)

// tunAddress is the address the client's tun device got.
func (s *setup) tunAddress(c *vpnClient) string {
	s.t.Helper()
	out, err := s.lab.Output(context.Background(), c.ns, "ip", "-4", "addr", "show", "dev", "tun0")
	if err != nil {
		s.t.Fatal(err)
	}
	m := inetRE.FindStringSubmatch(out)
	if m == nil {
		s.t.Fatalf("tun0 has no IPv4 address:\n%s", out)
	}
	return m[1] + "/" + m[2]
}

// ping pings addr from the client namespace and fails the test if no reply comes.
func (s *setup) ping(c *vpnClient, addr string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := s.lab.Output(ctx, c.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", addr)
	if err != nil {
		s.t.Fatalf("ping %s from %s: %v", addr, c.ns, err)
	}
	if !strings.Contains(out, " 0% packet loss") && !strings.Contains(out, "3 received") {
		s.t.Logf("ping %s from %s:\n%s", addr, c.ns, out)
	}
}
