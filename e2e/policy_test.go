package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

// These tests are issue 5's "must show" with stock clients: authorization rules by certificate
// group and their reload without a reconnect, the per-connection bandwidth limit, ICMP errors
// from the private network reaching the client, and client-to-client traffic behind a
// `target: local` route.

// noPing fails the test if addr answers a ping from the client namespace.
func (s *setup) noPing(c *vpnClient, addr string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := s.lab.Output(ctx, c.ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", addr)
	if err == nil {
		s.t.Fatalf("ping %s from %s got a reply; want none:\n%s", addr, c.ns, out)
	}
	if !strings.Contains(out, "100% packet loss") {
		s.t.Fatalf("ping %s from %s: %v", addr, c.ns, err)
	}
}

// waitCount waits until p has printed s at least n times.
func waitCount(p *netlab.Proc, s string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Count(p.Output(), s) >= n {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("%s exited before printing %q %d times", p.Name, s, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s printed %q %d times within %s, want %d", p.Name, s, strings.Count(p.Output(), s), timeout, n)
}

// reload replaces the endpoint file (by rename, so cvpn never reads half of it) and sends SIGHUP.
func (s *setup) reload(yaml string) {
	s.t.Helper()
	tmp := s.ep.Config + ".new"
	if err := os.WriteFile(tmp, []byte(yaml), 0o644); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(tmp, s.ep.Config); err != nil {
		s.t.Fatal(err)
	}
	if err := s.srv.Signal(syscall.SIGHUP); err != nil {
		s.t.Fatal(err)
	}
}

// endpointFile is the endpoint file as it stands.
func (s *setup) endpointFile() string {
	s.t.Helper()
	b, err := os.ReadFile(s.ep.Config)
	if err != nil {
		s.t.Fatal(err)
	}
	return string(b)
}

// drops stops cvpn and returns the drop counters it logs on the way out
// (`drops="map[no_route:3 unauthorized:2]"`).
func (s *setup) drops() map[string]int {
	s.t.Helper()
	if err := s.srv.Stop(); err != nil {
		s.t.Fatalf("cvpn exited with %v after SIGINT", err)
	}
	m := regexp.MustCompile(`cvpn stopped.*drops="?map\[([^\]]*)\]`).FindStringSubmatch(s.srv.Output())
	if m == nil {
		s.t.Fatalf("cvpn logged no drop counters at shutdown:\n%s", s.srv.Output())
	}
	out := map[string]int{}
	for _, f := range strings.Fields(m[1]) {
		var n int
		name, count, _ := strings.Cut(f, ":")
		fmt.Sscan(count, &n)
		out[name] = n
	}
	return out
}

// TestAuthorizationByGroup: the certificate's OU values are the user's groups, and the longest
// matching rule decides. dev reaches 10.0.1.0/24 only, ops both subnets, a user without a group
// neither. A rule edit and SIGHUP apply to the connected clients' next packets without a
// reconnect; an invalid edit is refused and the running policy stays.
func TestAuthorizationByGroup(t *testing.T) {
	t.Parallel()
	rules := []string{
		"{target_network_cidr: 10.0.1.0/24, access_group_id: dev}",
		// The /24 rule above is the longest match for 10.0.1.10 whatever the group, so ops needs
		// its own rule there: its /16 rule alone would not reach 10.0.1.0/24 (AWS semantics).
		"{target_network_cidr: 10.0.1.0/24, access_group_id: ops}",
		"{target_network_cidr: 10.0.0.0/16, access_group_id: ops}",
	}
	s := newSetup(t, netlab.EndpointOptions{
		TLSCrypt: true,
		Rules:    rules,
		Routes:   []string{"{destination_cidr_block: 10.0.1.0/24}", "{destination_cidr_block: 10.0.2.0/24}"},
	})
	if err := s.lab.AddVPCSubnet(netlab.VPCHost2Prefix); err != nil {
		t.Fatal(err)
	}
	host1, host2 := netlab.VPCHost.String(), netlab.VPCHost2.String()
	dev := s.connect("dana", netlab.ProfileOptions{Groups: []string{"dev"}})
	ops := s.connect("omar", netlab.ProfileOptions{Groups: []string{"ops"}})
	none := s.connect("nina", netlab.ProfileOptions{})

	s.ping(dev, host1)
	s.noPing(dev, host2)
	s.ping(ops, host1)
	s.ping(ops, host2)
	s.noPing(none, host1)
	s.noPing(none, host2)
	if !strings.Contains(s.srv.Output(), "reason=unauthorized") {
		t.Fatalf("cvpn did not log the refused packets as unauthorized")
	}

	// dev gets 10.0.0.0/16 as well; the connected client reaches 10.0.2.10 on its next packet.
	file := s.endpointFile()
	edited := strings.Replace(file, "authorization_rules:\n",
		"authorization_rules:\n  - {target_network_cidr: 10.0.0.0/16, access_group_id: dev}\n", 1)
	s.reload(edited)
	if err := waitCount(s.srv, "reload applied", 1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	s.ping(dev, host2)
	s.ping(ops, host2)
	s.noPing(none, host2)

	// An invalid file that would also take dev's new rule away: refused, and nothing of it applies.
	s.reload(file + "bandwidth_limit_mbps: lots\n")
	if err := s.srv.WaitFor("reload refused", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.srv.Output(), "bandwidth_limit_mbps") {
		t.Errorf("the refusal does not name the bad key:\n%s", s.srv.Output())
	}
	s.ping(dev, host2)
	s.ping(dev, host1)
	s.noPing(none, host1)
	if n := strings.Count(s.srv.Output(), "reload applied"); n != 1 {
		t.Errorf("cvpn reloaded %d times, want 1", n)
	}

	// The same openvpn processes, each through one handshake only.
	for _, c := range []*vpnClient{dev, ops, none} {
		if c.proc.Exited() {
			t.Fatalf("%s exited:\n%s", c.proc.Name, c.proc.Output())
		}
		if n := strings.Count(c.proc.Output(), "Initialization Sequence Completed"); n != 1 {
			t.Errorf("%s initialized %d times, want 1 (reload must not reconnect)", c.proc.Name, n)
		}
	}
}

// rate runs a TCP iperf3 transfer for seconds from c to the VPC host (reverse: the other way) and
// returns the goodput the receiver measured, in bits per second.
func (s *setup) rate(c *vpnClient, port, seconds int, reverse bool) (float64, error) {
	return s.rateTo(c, netlab.VPCHost, port, seconds, reverse)
}

// rateTo is rate to dst, an address of the VPC host of either family.
func (s *setup) rateTo(c *vpnClient, dst netip.Addr, port, seconds int, reverse bool) (float64, error) {
	srv, err := s.lab.Start(fmt.Sprintf("iperf3 server %d", port), s.lab.VPC, "iperf3", "-s", "-1", "-J", "-p", fmt.Sprint(port), "-B", dst.String())
	if err != nil {
		return 0, err
	}
	time.Sleep(300 * time.Millisecond)
	args := []string{"iperf3", "-c", dst.String(), "-p", fmt.Sprint(port), "-t", fmt.Sprint(seconds), "-J", "--connect-timeout", "5000"}
	if reverse {
		args = append(args, "-R")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds+20)*time.Second)
	defer cancel()
	out, err := s.lab.Output(ctx, c.ns, args...)
	if err != nil {
		return 0, fmt.Errorf("iperf3 client: %w\n%s", err, out)
	}
	var client, server iperfResult
	if err := json.Unmarshal([]byte(out), &client); err != nil {
		return 0, fmt.Errorf("iperf3 client output: %w\n%s", err, out)
	}
	// Retransmissions tell drops at the limit apart from a sender that was never limited.
	var sent struct {
		End struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
		} `json:"end"`
	}
	if json.Unmarshal([]byte(out), &sent) == nil {
		s.t.Logf("iperf3 %s (reverse %v): %d TCP retransmissions", c.proc.Name, reverse, sent.End.SumSent.Retransmits)
	}
	if reverse {
		return client.End.SumReceived.BitsPerSecond, nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for !srv.Exited() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if err := json.Unmarshal([]byte(srv.Output()), &server); err != nil || server.End.SumReceived.BitsPerSecond == 0 {
		// The server's own report is the receiver's; the client's copy of it is the fallback.
		return client.End.SumReceived.BitsPerSecond, nil
	}
	return server.End.SumReceived.BitsPerSecond, nil
}

// checkRate fails the test unless bps is within ±10% of mbps.
func checkRate(t *testing.T, what string, bps, mbps float64) {
	t.Helper()
	t.Logf("%s: %.2f Mbit/s (limit %g)", what, bps/1e6, mbps)
	if bps < mbps*0.9e6 || bps > mbps*1.1e6 {
		t.Errorf("%s: %.2f Mbit/s, want %g Mbit/s ±10%%", what, bps/1e6, mbps)
	}
}

// TestBandwidthLimitDefault: with no bandwidth key the limit is 10 Mbit/s each way.
func TestBandwidthLimitDefault(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true, DefaultBandwidth: true})
	c := s.connect("alice", netlab.ProfileOptions{})
	for _, reverse := range []bool{false, true} {
		bps, err := s.rate(c, 5201, 10, reverse)
		if err != nil {
			t.Fatal(err)
		}
		checkRate(t, map[bool]string{false: "upload", true: "download"}[reverse], bps, 10)
	}
}

// TestBandwidthLimit25: bandwidth_limit_mbps: 25.
func TestBandwidthLimit25(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true, BandwidthMbps: "25"})
	c := s.connect("alice", netlab.ProfileOptions{})
	for _, reverse := range []bool{false, true} {
		bps, err := s.rate(c, 5201, 10, reverse)
		if err != nil {
			t.Fatal(err)
		}
		checkRate(t, map[bool]string{false: "upload", true: "download"}[reverse], bps, 25)
	}
}

// TestBandwidthLimitPerConnection: two clients at once each get their own 10 Mbit/s, not a
// share of one.
func TestBandwidthLimitPerConnection(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true, DefaultBandwidth: true})
	a := s.connect("alice", netlab.ProfileOptions{})
	b := s.connect("bob", netlab.ProfileOptions{})
	for _, reverse := range []bool{false, true} {
		type result struct {
			bps float64
			err error
		}
		done := make(chan result, 1)
		go func() {
			bps, err := s.rate(a, 5301, 10, reverse)
			done <- result{bps, err}
		}()
		bb, err := s.rate(b, 5302, 10, reverse)
		ra := <-done
		if err != nil {
			t.Fatal(err)
		}
		if ra.err != nil {
			t.Fatal(ra.err)
		}
		dir := map[bool]string{false: "upload", true: "download"}[reverse]
		checkRate(t, "alice "+dir, ra.bps, 10)
		checkRate(t, "bob "+dir, bb, 10)
	}
}

// TestICMPPortUnreachable: a UDP datagram to a closed port on the private host draws a port
// unreachable, which comes back through the NAT (its embedded header translated back to the
// client's address) and the tunnel to the client's connected socket as ECONNREFUSED.
func TestICMPPortUnreachable(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	c := s.connect("alice", netlab.ProfileOptions{})
	s.ping(c, netlab.VPCHost.String())
	conn, err := netlab.DialUDPIn(c.ns, &net.UDPAddr{IP: netlab.VPCHost.AsSlice(), Port: 9}) // discard: nothing listens
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 64)
	for try := range 5 {
		if _, err := conn.Write([]byte("probe")); err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) { // the previous try's error, reported on Write
				return
			}
			t.Fatalf("write: %v", err)
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		_, err := conn.Read(buf)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			t.Logf("port unreachable reached the client (try %d)", try+1)
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		default:
			t.Fatalf("read: got %v, want ECONNREFUSED", err)
		}
	}
	t.Fatalf("no ICMP port unreachable reached the client's socket in 5 tries")
}

// TestClientToClient: a `target: local` route to the client CIDR lets clients reach each other
// (not NATed, still subject to authorization); it is not pushed as a route, since the client's
// own subnet covers it. Reloaded without it, client-to-client packets are dropped as no_route.
func TestClientToClient(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{
		TLSCrypt: true,
		Routes:   []string{"{destination_cidr_block: 10.0.1.0/24}", "{destination_cidr_block: 10.2.0.0/22, target: local}"},
		Rules: []string{
			"{target_network_cidr: 10.0.0.0/16, authorize_all_groups: true}",
			"{target_network_cidr: 10.2.0.0/22, authorize_all_groups: true}",
		},
	})
	a := s.connect("alice", netlab.ProfileOptions{})
	b := s.connect("bob", netlab.ProfileOptions{})
	aa := strings.Split(s.tunAddress(a), "/")[0]
	ba := strings.Split(s.tunAddress(b), "/")[0]
	if push := a.proc.Output(); strings.Contains(push, "route 10.2.0.0 255.255.252.0") {
		t.Errorf("the local route was pushed as a route:\n%s", push)
	}
	s.ping(a, netlab.VPCHost.String())
	s.ping(a, ba)
	s.ping(b, aa)

	// Without the local route, clients cannot reach each other; the private network still works.
	s.reload(strings.Replace(s.endpointFile(), "  - {destination_cidr_block: 10.2.0.0/22, target: local}\n", "", 1))
	if err := waitCount(s.srv, "reload applied", 1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	s.noPing(a, ba)
	s.ping(a, netlab.VPCHost.String())
	if d := s.drops(); d["no_route"] < 2 {
		t.Fatalf("drops %v: want at least 2 no_route (the unanswered pings)", d)
	}
}
