// Command demo shows cvpn working end to end on one machine (as root): it builds network
// namespaces for a client host, the endpoint and a private-network host, makes a throwaway PKI and
// endpoint file, starts cvpn, connects the stock openvpn client, pings the private host, runs a
// short iperf3 through the tunnel, prints what happened and removes everything. `make demo` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

func main() {
	bin := flag.String("cvpn", "bin/cvpn", "the cvpn binary")
	flag.Parse()
	if err := run(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

func run(bin string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the demo creates network namespaces and a TUN device: run it as root")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	step("creating namespaces: client host, cvpn endpoint, private-network (VPC) host %s", netlab.VPCHost)
	lab, err := netlab.New()
	if err != nil {
		return err
	}
	defer func() {
		step("tearing down")
		lab.Close()
		fmt.Println("    namespaces removed")
	}()
	dir, err := os.MkdirTemp("", "cvpn-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ep, err := netlab.WriteEndpoint(dir, netlab.EndpointOptions{TLSCrypt: true, BandwidthMbps: "10"})
	if err != nil {
		return err
	}
	cfg, _ := os.ReadFile(ep.Config)
	step("throwaway PKI and endpoint file %s", ep.Config)
	fmt.Println(indent(string(cfg)))

	step("starting cvpn in namespace %s", lab.Server)
	srv, err := lab.Start("cvpn", lab.Server, bin, "serve", "--config", ep.Config)
	if err != nil {
		return err
	}
	if err := srv.WaitFor("cvpn listening", 10*time.Second); err != nil {
		return fmt.Errorf("%w\n%s", err, srv.Output())
	}
	ns, server, err := lab.AddClient()
	if err != nil {
		return err
	}
	profile, err := ep.ClientProfile("alice", server, netlab.ProfileOptions{})
	if err != nil {
		return err
	}
	step("connecting the stock openvpn client (namespace %s) to %s:443/udp", ns, server)
	cl, err := lab.Start("openvpn", ns, "openvpn", "--config", profile)
	if err != nil {
		return err
	}
	if err := cl.WaitFor("Initialization Sequence Completed", 30*time.Second); err != nil {
		return fmt.Errorf("%w\n%s", err, cl.Output())
	}
	for _, line := range strings.Split(cl.Output(), "\n") {
		if strings.Contains(line, "PUSH_REPLY") || strings.Contains(line, "Initialization Sequence") || strings.Contains(line, "Data Channel:") {
			fmt.Println("    openvpn:", line)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := lab.Output(ctx, ns, "ip", "-4", "-brief", "addr", "show", "dev", "tun0")
	if err != nil {
		return err
	}
	fmt.Println("    client tunnel address:", strings.Join(strings.Fields(out)[2:], " "))

	step("ping %s (the private host) from the client", netlab.VPCHost)
	out, err = lab.Output(ctx, ns, "ping", "-c", "3", "-i", "0.3", netlab.VPCHost.String())
	fmt.Println(indent(out))
	if err != nil {
		return err
	}

	step("iperf3 (TCP, 3 s) from the client to the private host through the tunnel (limit: bandwidth_limit_mbps 10)")
	iperfSrv, err := lab.Start("iperf3 -s", lab.VPC, "iperf3", "-s", "-1", "-B", netlab.VPCHost.String())
	if err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	out, err = lab.Output(ctx, ns, "iperf3", "-c", netlab.VPCHost.String(), "-t", "3", "--connect-timeout", "5000")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "sender") || strings.Contains(line, "receiver") {
			fmt.Println("   ", strings.TrimSpace(line))
		}
	}
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	for !iperfSrv.Exited() {
		time.Sleep(50 * time.Millisecond)
	}
	for _, line := range strings.Split(iperfSrv.Output(), "\n") {
		if strings.Contains(line, "connected to") {
			fmt.Println("    private host saw:", strings.TrimSpace(line), "(the endpoint's SNAT address)")
			break
		}
	}

	step("stopping cvpn (SIGTERM); its log:")
	_ = srv.Stop()
	fmt.Println(indent(srv.Output()))
	return nil
}
