package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

// iperfResult is the part of iperf3's JSON report the tests read.
type iperfResult struct {
	Start struct {
		Connected []struct {
			RemoteHost string `json:"remote_host"`
		} `json:"connected"`
	} `json:"start"`
	End struct {
		SumReceived struct {
			Bytes         int64   `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperf runs one iperf3 TCP transfer of n bytes (or for n seconds when n ends in "s") from the client to the VPC host (reverse: the other
// way) and returns the server's and the client's reports. iperf3 ends a -n test once the sender
// has written n bytes, so the receiver's count falls short by what was still in flight: callers
// send more than the amount they require to arrive.
func (s *setup) iperf(c *vpnClient, port int, n string, reverse bool) (server, client iperfResult) {
	s.t.Helper()
	return s.iperfTo(c, netlab.VPCHost, port, n, reverse)
}

// iperfTo is iperf to dst, an address of the VPC host of either family.
func (s *setup) iperfTo(c *vpnClient, dst netip.Addr, port int, n string, reverse bool) (server, client iperfResult) {
	s.t.Helper()
	srv, err := s.lab.Start(fmt.Sprintf("iperf3 server %d", port), s.lab.VPC, "iperf3", "-s", "-1", "-J", "-p", fmt.Sprint(port), "-B", dst.String())
	if err != nil {
		s.t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	amount := []string{"-n", n}
	if strings.HasSuffix(n, "s") { // a duration: a timed test
		amount = []string{"-t", strings.TrimSuffix(n, "s")}
	}
	args := append([]string{"iperf3", "-c", dst.String(), "-p", fmt.Sprint(port), "-J", "--connect-timeout", "5000"}, amount...)
	if reverse {
		args = append(args, "-R")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	out, err := s.lab.Output(ctx, c.ns, args...)
	if err != nil {
		s.t.Fatalf("iperf3 client: %v\n%s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &client); err != nil {
		s.t.Fatalf("iperf3 client output: %v\n%s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !srv.Exited() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if err := json.Unmarshal([]byte(srv.Output()), &server); err != nil {
		s.t.Fatalf("iperf3 server output: %v\n%s", err, srv.Output())
	}
	return server, client
}

// TestStockClientReachesVPC is the walking skeleton end to end: an AWS-style profile with
// tls-crypt connects over UDP, gets an address from the client CIDR, pings a private host and
// moves 50 MB each way with iperf3; the private host sees only the SNAT address.
func TestStockClientReachesVPC(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	c := s.connect("alice", netlab.ProfileOptions{})

	addr := s.tunAddress(c)
	p := netip.MustParsePrefix(addr)
	if !netip.MustParsePrefix("10.2.0.0/22").Contains(p.Addr()) || p.Bits() != 22 {
		t.Fatalf("client address %s is not in the client CIDR 10.2.0.0/22", addr)
	}
	if p.Addr() == netip.MustParseAddr("10.2.0.1") {
		t.Fatalf("client got the endpoint's own address %s", addr)
	}
	s.ping(c, netlab.VPCHost.String())

	server, client := s.iperf(c, 5201, "80M", false)
	if got := client.End.SumReceived.Bytes; got < 50e6 {
		t.Fatalf("upload moved %d bytes, want >= 50 MB", got)
	}
	if len(server.Start.Connected) == 0 || server.Start.Connected[0].RemoteHost != netlab.SNATAddress.String() {
		t.Fatalf("VPC host saw the client as %+v, want the SNAT address %s", server.Start.Connected, netlab.SNATAddress)
	}
	_, client = s.iperf(c, 5202, "80M", true)
	if got := client.End.SumReceived.Bytes; got < 50e6 {
		t.Fatalf("download moved %d bytes, want >= 50 MB", got)
	}
	t.Logf("upload and download of at least 50 MB each passed; client address %s", addr)

	// A clean shutdown removes what cvpn added to the host.
	if err := s.srv.Stop(); err != nil {
		t.Fatalf("cvpn exited with %v after SIGINT", err)
	}
	out, _ := s.lab.Output(context.Background(), s.lab.Server, "ip", "link", "show")
	if strings.Contains(out, "cvpn0") {
		t.Fatalf("cvpn0 still exists after shutdown:\n%s", out)
	}
	out, _ = s.lab.Output(context.Background(), s.lab.Server, "ip", "neigh", "show", "proxy")
	if strings.Contains(out, netlab.SNATAddress.String()) {
		t.Fatalf("proxy neighbour for the SNAT address left behind:\n%s", out)
	}
}

// TestTwoClients connects two stock clients at once: distinct addresses, both pass traffic.
func TestTwoClients(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	a := s.connect("alice", netlab.ProfileOptions{})
	b := s.connect("bob", netlab.ProfileOptions{})
	aa, ba := s.tunAddress(a), s.tunAddress(b)
	if aa == ba {
		t.Fatalf("both clients got %s", aa)
	}
	s.ping(a, netlab.VPCHost.String())
	s.ping(b, netlab.VPCHost.String())
	done := make(chan iperfResult, 1)
	go func() {
		_, r := s.iperf(a, 5301, "3s", false)
		done <- r
	}()
	_, rb := s.iperf(b, 5302, "3s", false)
	ra := <-done
	if ra.End.SumReceived.Bytes < 5e6 || rb.End.SumReceived.Bytes < 5e6 {
		t.Fatalf("concurrent 3 s transfers moved %d and %d bytes, want at least 5 MB each", ra.End.SumReceived.Bytes, rb.End.SumReceived.Bytes)
	}
}
