package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/endpoint/connlog"
	"github.com/cvpn/cvpn/internal/netlab"
)

// These tests are issue 17's "must show" with stock clients in dual-stack namespaces
// (netlab.NewDual): IPv6 listeners of both transports, an IPv6 and an IPv4 tunnel address,
// clients keeping their own IPv6 addresses into the VPC (proxy NDP) or source-NATed to the
// endpoint's, IPv6 authorization rules by group (both ways), the bandwidth limit over IPv6 and
// shared by both families, path MTU discovery and MSS clamping through the tunnel, and
// redirect-gateway ipv6; then what else takes an address of either family: DNS servers, ICMPv6
// errors, client-to-client, floats, the host-is-not-a-destination rule, the API, the
// connection log and exported profiles. The interoperability matrix's IPv6 rows are in
// matrix_test.go.

// routesVia reports whether namespace ns routes dst through device dev, with what ip route get
// said (or its error).
func (s *setup) routesVia(ns string, dst netip.Addr, dev string) (string, bool) {
	out, err := s.lab.Output(context.Background(), ns, "ip", "route", "get", dst.String())
	if err != nil {
		return fmt.Sprintf("%v\n%s", err, out), false
	}
	return out, strings.Contains(out, "dev "+dev)
}

// newDualSetup is newSetup on a dual-stack lab.
func newDualSetup(t *testing.T, o netlab.EndpointOptions) *setup {
	t.Helper()
	return startSetup(t, netlab.NewDual, o)
}

// dualClient is a stock client in a dual-stack lab, with its link's addresses.
type dualClient struct {
	*vpnClient
	link netlab.ClientLink
	// remote is the server address its profile names.
	remote netip.Addr
}

// startDual starts a stock client that dials the server's IPv6 address of its link (over6) or
// its IPv4 one, with o.Proto as given (udp6, tcp6-client, ...), without waiting for it.
func (s *setup) startDual(name string, over6 bool, o netlab.ProfileOptions) *dualClient {
	s.t.Helper()
	link, err := s.lab.AddClientLink()
	if err != nil {
		s.t.Fatal(err)
	}
	remote := link.Server
	if over6 {
		remote = link.ServerIPv6
	}
	profile, err := s.ep.ClientProfile(name, remote, o)
	if err != nil {
		s.t.Fatal(err)
	}
	p, err := s.lab.Start("openvpn "+name, link.NS, "openvpn", "--config", profile)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		if s.t.Failed() {
			s.t.Logf("openvpn %s output:\n%s", name, p.Output())
		}
	})
	return &dualClient{vpnClient: &vpnClient{ns: link.NS, proc: p}, link: link, remote: remote}
}

// connectDual is startDual that waits until the client is up, and checks that it dialled the
// address family it was given (the stock client logs "link remote: [AF_INET6]fd31:1::1:443").
func (s *setup) connectDual(name string, over6 bool, o netlab.ProfileOptions) *dualClient {
	s.t.Helper()
	c := s.startDual(name, over6, o)
	if err := c.proc.WaitFor("Initialization Sequence Completed", 30*time.Second); err != nil {
		s.t.Fatalf("%s: %v\nclient log:\n%s", name, err, c.proc.Output())
	}
	family := "[AF_INET]"
	if over6 {
		family = "[AF_INET6]"
	}
	if want := "link remote: " + family + c.remote.String(); !strings.Contains(c.proc.Output(), want) {
		s.t.Fatalf("%s: the client log lacks %q:\n%s", name, want, c.proc.Output())
	}
	return c
}

var inet6RE = regexp.MustCompile(`inet6 ([0-9a-f:]+)/(\d+) scope global`)

// tunAddress6 is the global IPv6 address of the client's tun device (ifconfig-ipv6), invalid
// when it has none.
func (s *setup) tunAddress6(c *vpnClient) netip.Prefix {
	s.t.Helper()
	out, err := s.lab.Output(context.Background(), c.ns, "ip", "-6", "addr", "show", "dev", "tun0")
	if err != nil {
		s.t.Fatal(err)
	}
	m := inet6RE.FindStringSubmatch(out)
	if m == nil {
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(m[1] + "/" + m[2])
	if err != nil {
		s.t.Fatalf("tun0 address %q: %v", m[0], err)
	}
	return p
}

// sourceSeenByVPC opens a TCP connection from the client to a listener on the VPC host at dst
// and returns the source address the VPC host saw it come from.
func (s *setup) sourceSeenByVPC(c *vpnClient, dst netip.AddrPort) netip.Addr {
	s.t.Helper()
	ln, err := netlab.ListenTCPIn(s.lab.VPC, dst)
	if err != nil {
		s.t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(conn, "%s\n", conn.RemoteAddr())
	}()
	conn, err := netlab.DialTCPIn(c.ns, dst)
	if err != nil {
		s.t.Fatalf("connect to the VPC host at %s from %s: %v", dst, c.ns, err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		s.t.Fatalf("read from the VPC host at %s: %v", dst, err)
	}
	ap, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		s.t.Fatalf("the VPC host reported %q: %v", line, err)
	}
	return ap.Addr()
}

// portUnreachable sends UDP datagrams from the client to a closed port of dst (of either family)
// on a connected socket, and fails the test unless an ICMP port unreachable comes back to it
// through the tunnel (a Read or the next Write fails with ECONNREFUSED), within 5 tries.
func (s *setup) portUnreachable(c *vpnClient, dst netip.Addr) {
	s.t.Helper()
	conn, err := netlab.DialUDPIn(c.ns, &net.UDPAddr{IP: dst.AsSlice(), Port: 9}) // discard: nothing listens
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 64)
	for range 5 {
		if _, err := conn.Write([]byte("probe")); err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				return
			}
			s.t.Fatalf("write to %s: %v", dst, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		_, err := conn.Read(buf)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		default:
			s.t.Fatalf("read from %s: got %v, want ECONNREFUSED", dst, err)
		}
	}
	s.t.Fatalf("no ICMP port unreachable from %s reached the client's socket in 5 tries", dst)
}

// connectionsByUser lists the admin API's connections by username.
func (s *setup) connectionsByUser() map[string]map[string]any {
	s.t.Helper()
	out := map[string]map[string]any{}
	for _, c := range s.listConnections() {
		if u, ok := c["Username"].(string); ok {
			out[u] = c
		}
	}
	return out
}

// TestIPv6DualStackEndpoint: a dual-stack endpoint (IPv4 and IPv6 listeners, UDP and TCP, and
// both families through the tunnel) takes stock clients over UDP on IPv6, TCP on IPv6 and UDP
// on IPv4 at once. Each gets an IPv4 and an IPv6 tunnel address, which the admin API reports
// (ClientIp, ClientIpv6Address) with the address the client dialled from (DeviceIp), as does the
// connection log; each pings the VPC host on both families, and the VPC host sees the client's
// own IPv6 address, no NAT. DNS servers of both families are pushed; an ICMPv6 error from the VPC
// host reaches the client.
func TestIPv6DualStackEndpoint(t *testing.T) {
	t.Parallel()
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "dual-stack",
		TrafficIPAddressType:  "dual-stack",
		Transport:             "[{protocol: udp, port: 443}, {protocol: tcp, port: 443}]",
		Extra: "dns_servers: [10.0.1.53, 'fd00:10:1::53']\n" +
			"connection_log: {enabled: true, file: connections.log}\n" +
			"metrics: {listen_address: \"" + adminMetricsAddr + "\"}\n",
	})
	clients := []struct {
		name  string
		over6 bool
		proto string
		port  uint16
	}{
		{"udp6", true, "udp6", 7001},
		{"tcp6", true, "tcp6-client", 7002},
		{"udp4", false, "udp", 7003},
	}
	up := make([]*dualClient, len(clients))
	for i, cc := range clients {
		up[i] = s.connectDual(cc.name, cc.over6, netlab.ProfileOptions{Proto: cc.proto})
	}
	seen6 := map[netip.Addr]bool{}
	byUser := s.connectionsByUser()
	for i, cc := range clients {
		c := up[i]
		a4 := netip.MustParsePrefix(s.tunAddress(c.vpnClient))
		a6 := s.tunAddress6(c.vpnClient)
		t.Logf("%s: dialled %s, tunnel addresses %s and %s", cc.name, c.remote, a4, a6)
		if !netip.MustParsePrefix("10.2.0.0/22").Contains(a4.Addr()) {
			t.Errorf("%s: IPv4 tunnel address %s is outside the client block 10.2.0.0/22", cc.name, a4)
		}
		if !a6.IsValid() || !netlab.ClientIPv6CIDR.Contains(a6.Addr()) {
			t.Fatalf("%s: IPv6 tunnel address %v, want one in client_ipv6_cidr_block %s", cc.name, a6, netlab.ClientIPv6CIDR)
		}
		if seen6[a6.Addr()] {
			t.Errorf("%s: IPv6 address %s given twice", cc.name, a6.Addr())
		}
		seen6[a6.Addr()] = true

		// The server saw the client come from its link address of the family it dialled.
		from := c.link.Client
		if cc.over6 {
			from = c.link.ClientIPv6
		}
		if got := s.clientRemote(cc.name).Addr(); got != from {
			t.Errorf("%s: the server logged the client's remote as %s, want %s", cc.name, got, from)
		}
		conn := byUser[cc.name]
		if conn == nil {
			t.Fatalf("%s is not in the admin API's connections: %v", cc.name, byUser)
		}
		if conn["ClientIp"] != a4.Addr().String() || conn["ClientIpv6Address"] != a6.Addr().String() {
			t.Errorf("%s: the admin API reports ClientIp %v and ClientIpv6Address %v; tun0 has %s and %s",
				cc.name, conn["ClientIp"], conn["ClientIpv6Address"], a4.Addr(), a6.Addr())
		}
		if ext, _ := conn["CvpnExtensions"].(map[string]any); ext == nil || ext["DeviceIp"] != from.String() {
			t.Errorf("%s: the admin API's DeviceIp is %v, want %s", cc.name, conn["CvpnExtensions"], from)
		}

		s.ping(c.vpnClient, netlab.VPCHost.String())
		s.ping(c.vpnClient, netlab.VPCHostIPv6.String())
		if got := s.sourceSeenByVPC(c.vpnClient, netip.AddrPortFrom(netlab.VPCHostIPv6, cc.port)); got != a6.Addr() {
			t.Errorf("%s: the VPC host saw the connection come from %s, want the client's own %s", cc.name, got, a6.Addr())
		}
		// IPv4 is still source-NATed.
		if got := s.sourceSeenByVPC(c.vpnClient, netip.AddrPortFrom(netlab.VPCHost, cc.port)); got != netlab.SNATAddress {
			t.Errorf("%s: over IPv4 the VPC host saw %s, want the SNAT address %s", cc.name, got, netlab.SNATAddress)
		}
		// Both DNS servers are pushed, each in its family's option.
		push := regexp.MustCompile(`PUSH_REPLY[^\n]*`).FindString(c.proc.Output())
		if !strings.Contains(push, "dhcp-option DNS 10.0.1.53") || !strings.Contains(push, "dhcp-option DNS6 fd00:10:1::53") {
			t.Errorf("%s: the push lacks dhcp-option DNS 10.0.1.53 or DNS6 fd00:10:1::53:\n%s", cc.name, push)
		}
	}
	// An ICMPv6 error from the VPC host reaches the client it answers.
	s.portUnreachable(up[0].vpnClient, netlab.VPCHostIPv6)

	// The metrics count the sessions by transport and by the family they reached the endpoint
	// over.
	scrape, err := s.lab.Output(context.Background(), s.lab.Server, "curl", "-sS", "http://"+adminMetricsAddr+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, cc := range clients {
		transport, family := "udp", "ipv4"
		if strings.HasPrefix(cc.proto, "tcp") {
			transport = "tcp"
		}
		if cc.over6 {
			family = "ipv6"
		}
		re := regexp.MustCompile(`(?m)^cvpn_sessions\{(?:[^}]*,)?family="` + family + `"[^}]*transport="` + transport + `"[^}]*\} 1$|` +
			`(?m)^cvpn_sessions\{(?:[^}]*,)?transport="` + transport + `"[^}]*family="` + family + `"[^}]*\} 1$`)
		if !re.MatchString(scrape) {
			t.Errorf("%s: no cvpn_sessions 1 for transport %s, family %s in the scrape:\n%s", cc.name, transport, family, grepLines(scrape, "cvpn_sessions"))
		}
	}

	// The connection log records each session's IPv6 address and where it dialled from.
	logPath := filepath.Join(s.ep.Dir, "connections.log")
	for i, cc := range clients {
		a6, from := s.tunAddress6(up[i].vpnClient).Addr().String(), up[i].link.Client.String()
		if cc.over6 {
			from = up[i].link.ClientIPv6.String()
		}
		want := func(r connlog.Record) bool {
			return r.CommonName == cc.name && r.AttemptStatus == connlog.StatusSuccess && r.ClientIPv6 == a6 && r.DeviceIP == from
		}
		var records []connlog.Record
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if records = readConnectionLog(t, logPath); hasRecord(records, want) {
				break
			}
		}
		if !hasRecord(records, want) {
			t.Errorf("%s: no connection log record with client-ipv6 %s and device-ip %s:\n%s", cc.name, a6, from, mustReadFile(t, logPath))
		}
	}
}

// TestIPv6OnlyTraffic: traffic_ip_address_type ipv6 (no client_cidr_block): a client that dials
// over IPv4 gets an IPv6 tunnel address and no IPv4 one, and reaches the VPC host over IPv6.
func TestIPv6OnlyTraffic(t *testing.T) {
	t.Parallel()
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "dual-stack",
		TrafficIPAddressType:  "ipv6",
	})
	c := s.connectDual("sixer", false, netlab.ProfileOptions{})
	a6 := s.tunAddress6(c.vpnClient)
	if !a6.IsValid() || !netlab.ClientIPv6CIDR.Contains(a6.Addr()) {
		t.Fatalf("IPv6 tunnel address %v, want one in %s", a6, netlab.ClientIPv6CIDR)
	}
	out, err := s.lab.Output(context.Background(), c.ns, "ip", "-4", "addr", "show", "dev", "tun0")
	if err != nil {
		t.Fatal(err)
	}
	if inetRE.MatchString(out) {
		t.Errorf("tun0 has an IPv4 address although IPv4 traffic is off:\n%s", out)
	}
	s.ping(c.vpnClient, netlab.VPCHostIPv6.String())
	if got := s.sourceSeenByVPC(c.vpnClient, netip.AddrPortFrom(netlab.VPCHostIPv6, 7000)); got != a6.Addr() {
		t.Errorf("the VPC host saw %s, want the client's own %s", got, a6.Addr())
	}
}

// TestIPv6AuthorizationByGroup: an IPv6-only rule for group ops (fd00:10:2::/64) grants ops alone;
// dev, allowed the rest of the VPC on both families, is refused there, and the refusal is
// logged as unauthorized with the IPv6 destination. The rules hold the other way too: the VPC
// reaches a client's own address only from where the client's groups may go.
func TestIPv6AuthorizationByGroup(t *testing.T) {
	t.Parallel()
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "dual-stack",
		TrafficIPAddressType:  "dual-stack",
		Rules: []string{
			"{target_network_cidr: 10.0.0.0/16, authorize_all_groups: true}",
			"{target_network_cidr: fd00:10:1::/64, authorize_all_groups: true}",
			"{target_network_cidr: fd00:10:2::/64, access_group_id: ops}",
		},
		Routes: []string{
			"{destination_cidr_block: 10.0.1.0/24}",
			"{destination_cidr_block: fd00:10:1::/64}",
			"{destination_cidr_block: fd00:10:2::/64}",
		},
	})
	if err := s.lab.AddVPCSubnet(netlab.VPCHost2PrefixIPv6); err != nil {
		t.Fatal(err)
	}
	dev := s.connectDual("dana", true, netlab.ProfileOptions{Proto: "udp6", Groups: []string{"dev"}})
	ops := s.connectDual("omar", true, netlab.ProfileOptions{Proto: "udp6", Groups: []string{"ops"}})
	host2 := netlab.VPCHost2IPv6.String()

	s.ping(ops.vpnClient, host2)
	s.noPing(dev.vpnClient, host2)
	s.ping(dev.vpnClient, netlab.VPCHostIPv6.String())
	s.ping(dev.vpnClient, netlab.VPCHost.String())
	s.ping(ops.vpnClient, netlab.VPCHostIPv6.String())
	denial := func(user string) *regexp.Regexp {
		return regexp.MustCompile(`msg="access denied by authorization rules" user=` + user + `[^\n]* dst=` + regexp.QuoteMeta(host2) + `\b`)
	}
	if !denial("dana").MatchString(s.srv.Output()) {
		t.Errorf("cvpn did not log dana's denial to %s:\n%s", host2, netlab.Tail(s.srv.Output(), 3000))
	}
	if denial("omar").MatchString(s.srv.Output()) {
		t.Errorf("cvpn denied omar %s:\n%s", host2, netlab.Tail(s.srv.Output(), 3000))
	}

	// Clients keep their own addresses, so the VPC can open connections to them: only from
	// where a client's groups may go. From fd00:10:2::10, the VPC host reaches omar; nothing of
	// it reaches dana's tun0. From fd00:10:1::10 it reaches both.
	danaAddr, omarAddr := s.tunAddress6(dev.vpnClient).Addr(), s.tunAddress6(ops.vpnClient).Addr()
	capture, err := s.lab.Start("tcpdump dana", dev.ns, "tcpdump", "-l", "-n", "-i", "tun0", "src "+host2)
	if err != nil {
		t.Fatal(err)
	}
	if err := capture.WaitFor("listening on tun0", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	s.pingFromVPC(netlab.VPCHost2IPv6, omarAddr, true)
	s.pingFromVPC(netlab.VPCHost2IPv6, danaAddr, false)
	s.pingFromVPC(netlab.VPCHostIPv6, danaAddr, true)
	s.pingFromVPC(netlab.VPCHostIPv6, omarAddr, true)
	_ = capture.Stop()
	if !strings.Contains(capture.Output(), "0 packets captured") {
		t.Errorf("packets from %s reached dana's tun0:\n%s", host2, capture.Output())
	}
}

// pingFromVPC pings to (a client's own IPv6 address) from the VPC host's address from, and
// fails the test unless replies come (want) or none do.
func (s *setup) pingFromVPC(from, to netip.Addr, want bool) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := s.lab.Output(ctx, s.lab.VPC, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", from.String(), to.String())
	_, received, ok := pingTally(out)
	switch {
	case !ok:
		s.t.Fatalf("ping %s from the VPC host's %s: %v\n%s", to, from, err, out)
	case want && received == 0:
		s.t.Errorf("the VPC host's %s got no reply from the client at %s:\n%s", from, to, out)
	case !want && received > 0:
		s.t.Errorf("the VPC host's %s reached the client at %s, whose groups may not go there:\n%s", from, to, out)
	}
}

// TestIPv6BandwidthLimit: with the default 10 Mbit/s, iperf3 over IPv6 gets 10 Mbit/s each way;
// an IPv4 and an IPv6 upload at once share the connection's one limit (AWS's quota is per
// connection, whatever the family).
func TestIPv6BandwidthLimit(t *testing.T) {
	t.Parallel()
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "dual-stack",
		TrafficIPAddressType:  "dual-stack",
		DefaultBandwidth:      true,
	})
	c := s.connectDual("alice", true, netlab.ProfileOptions{Proto: "udp6"})
	for _, reverse := range []bool{false, true} {
		bps, err := s.rateTo(c.vpnClient, netlab.VPCHostIPv6, 5201, 10, reverse)
		if err != nil {
			t.Fatal(err)
		}
		checkRate(t, map[bool]string{false: "IPv6 upload", true: "IPv6 download"}[reverse], bps, 10)
	}
	type result struct {
		bps float64
		err error
	}
	done := make(chan result, 1)
	go func() {
		bps, err := s.rateTo(c.vpnClient, netlab.VPCHost, 5302, 10, false)
		done <- result{bps, err}
	}()
	b6, err := s.rateTo(c.vpnClient, netlab.VPCHostIPv6, 5303, 10, false)
	b4 := <-done
	if err != nil {
		t.Fatal(err)
	}
	if b4.err != nil {
		t.Fatal(b4.err)
	}
	t.Logf("at once: IPv4 %.2f Mbit/s, IPv6 %.2f Mbit/s", b4.bps/1e6, b6/1e6)
	checkRate(t, "IPv4 and IPv6 uploads together", b4.bps+b6, 10)
}

// upload sends n bytes over one TCP connection from the client to a listener on the VPC host at
// dst, and returns how many the VPC host read before the client's end of stream.
func (s *setup) upload(c *vpnClient, dst netip.AddrPort, n int) (int64, error) {
	ln, err := netlab.ListenTCPIn(s.lab.VPC, dst)
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
		got, err := io.Copy(io.Discard, conn)
		fmt.Fprintf(conn, "%d %v\n", got, err)
	}()
	conn, err := netlab.DialTCPIn(c.ns, dst)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := conn.Write(make([]byte, n)); err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("the VPC host's count: %w", err)
	}
	var got int64
	var rerr string
	if _, err := fmt.Sscanf(line, "%d %s", &got, &rerr); err != nil {
		return 0, fmt.Errorf("the VPC host's count %q: %w", line, err)
	}
	if rerr != "<nil>" {
		return got, fmt.Errorf("the VPC host's read: %s", rerr)
	}
	return got, nil
}

var (
	routeMTURE = regexp.MustCompile(`\bmtu (\d+)`)
	mssRE      = regexp.MustCompile(`\bmss (\d+)`)
)

// TestIPv6PathMTU: the endpoint's link into the VPC carries at most 1400 bytes, less than the
// client's tunnel (1500), while the VPC host's own link takes 1500 and advertises the MSS for
// it. The client's full-size TCP segments over IPv6 (never fragmented on the way) need the
// endpoint host's ICMPv6 Packet Too Big to come back through the tunnel: a capture on the
// client's tun0 sees it, the client's route cache learns 1400 for the VPC host, and a 4 MiB
// upload arrives whole. The upload's SYN and SYN-ACK carry the MSS the endpoint clamps them to.
func TestIPv6PathMTU(t *testing.T) {
	t.Parallel()
	const linkMTU = 1400
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "dual-stack",
		TrafficIPAddressType:  "dual-stack",
	})
	if err := s.lab.SetVPCLinkMTU(linkMTU); err != nil {
		t.Fatal(err)
	}
	// mssfix 0: the stock client clamps the MSS of the SYNs it tunnels itself by default (to fit
	// its own packets into 1492 bytes: 1360 over IPv6), which would hide the endpoint's clamp.
	c := s.connectDual("bulky", true, netlab.ProfileOptions{Proto: "udp6", Extra: "mssfix 0\n"})
	s.ping(c.vpnClient, netlab.VPCHostIPv6.String())

	// ICMPv6 type 2 is Packet Too Big (RFC 4443 §3.2); the tunnel's packets carry no extension
	// headers, so the type is the 41st byte.
	capture, err := s.lab.Start("tcpdump tun0", c.ns, "tcpdump", "-l", "-n", "-c", "1", "-i", "tun0", "icmp6 and ip6[40] == 2")
	if err != nil {
		t.Fatal(err)
	}
	if err := capture.WaitFor("listening on tun0", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// The first packets of the upload's connection each way are its SYN and SYN-ACK, whose MSS
	// options the endpoint clamps.
	syn, err := s.lab.Start("tcpdump syn", s.lab.VPC, "tcpdump", "-l", "-n", "-v", "-c", "1", "-i", "eth0", "ip6 and tcp dst port 7000")
	if err != nil {
		t.Fatal(err)
	}
	synAck, err := s.lab.Start("tcpdump syn-ack", c.ns, "tcpdump", "-l", "-n", "-v", "-c", "1", "-i", "tun0", "ip6 and tcp src port 7000")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*netlab.Proc{syn, synAck} {
		if err := p.WaitFor("listening on", 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.upload(c.vpnClient, netip.AddrPortFrom(netlab.VPCHostIPv6, 7000), 4<<20); err != nil || got != 4<<20 {
		t.Fatalf("a 4 MiB upload over IPv6 delivered %d bytes: %v", got, err)
	}
	if err := capture.WaitFor("packet too big", 5*time.Second); err != nil {
		t.Errorf("no ICMPv6 Packet Too Big reached the client's tun0: %v", err)
	} else {
		t.Logf("captured on the client's tun0: %s", strings.TrimSpace(capture.Output()))
		if want := fmt.Sprintf("mtu %d", linkMTU); !strings.Contains(capture.Output(), want) {
			t.Errorf("the Packet Too Big does not say %q:\n%s", want, capture.Output())
		}
	}
	// Both clamped to 1380: the IPv4 clamp (1400) less the 20 bytes IPv6's header adds, so that
	// full segments make the same 1440-byte packets in either family.
	for _, p := range []*netlab.Proc{syn, synAck} {
		if err := p.WaitFor("1 packet captured", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if m := mssRE.FindStringSubmatch(p.Output()); m == nil || m[1] != "1380" {
			t.Errorf("%s: the MSS is not clamped to 1380:\n%s", p.Name, p.Output())
		}
	}
	out, err := s.lab.Output(context.Background(), c.ns, "ip", "-6", "route", "get", netlab.VPCHostIPv6.String())
	if err != nil {
		t.Fatal(err)
	}
	m := routeMTURE.FindStringSubmatch(out)
	if m == nil || m[1] != fmt.Sprint(linkMTU) || !strings.Contains(out, "dev tun0") {
		t.Errorf("the client's route to the VPC host has not learned the path MTU %d through tun0:\n%s", linkMTU, out)
	}
}

// TestIPv6FullTunnel: split_tunnel false pushes redirect-gateway ipv6 as well: the stock client
// routes ::/3, 2000::/4, 3000::/4 and fc00::/7 into the tunnel (OpenVPN's init.c,
// do_init_route_ipv6_list), and reaches an IPv6 address that no pushed route covers and that
// only the tunnel leads to (the VPC host's 2001:db8:ff::10, outside the VPC's blocks).
func TestIPv6FullTunnel(t *testing.T) {
	t.Parallel()
	other := netip.MustParsePrefix("2001:db8:ff::10/64")
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "dual-stack",
		TrafficIPAddressType:  "dual-stack",
		FullTunnel:            true,
		Rules: []string{
			"{target_network_cidr: 10.0.0.0/16, authorize_all_groups: true}",
			"{target_network_cidr: '::/0', authorize_all_groups: true}",
		},
	})
	if err := s.lab.AddVPCSubnet(other); err != nil {
		t.Fatal(err)
	}
	c := s.connectDual("roamer", true, netlab.ProfileOptions{Proto: "udp6"})
	push := regexp.MustCompile(`PUSH_REPLY[^\n]*redirect-gateway[^,\n]*ipv6`)
	if !push.MatchString(c.proc.Output()) {
		t.Fatalf("redirect-gateway ipv6 not pushed:\n%s", c.proc.Output())
	}
	ctx := context.Background()
	routes, err := s.lab.Output(ctx, c.ns, "ip", "-6", "route", "show", "dev", "tun0")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"::/3", "2000::/4", "3000::/4", "fc00::/7"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(r) + ` `).MatchString(routes) {
			t.Errorf("the client has no route %s through tun0:\n%s", r, routes)
		}
	}
	if out, ok := s.routesVia(c.ns, other.Addr(), "tun0"); !ok {
		t.Fatalf("the route to %s does not use the tunnel:\n%s", other.Addr(), out)
	}
	s.ping(c.vpnClient, other.Addr().String())
	// The client still reaches the endpoint it dialled, outside the tunnel.
	if out, ok := s.routesVia(c.ns, c.remote, "eth0"); !ok {
		t.Errorf("the route to the endpoint's %s goes astray:\n%s", c.remote, out)
	}
}

// TestIPv6SNAT: with target_network.snat_ipv6_address, IPv6 traffic is source-NATed as IPv4 is:
// the VPC host sees the endpoint's SNAT address, not the client's (from a block outside the
// VPC, which nothing there routes).
func TestIPv6SNAT(t *testing.T) {
	t.Parallel()
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "dual-stack",
		TrafficIPAddressType:  "dual-stack",
		SNATIPv6:              true,
	})
	c := s.connectDual("masked", true, netlab.ProfileOptions{Proto: "udp6"})
	a6 := s.tunAddress6(c.vpnClient)
	if !a6.IsValid() || !netlab.ClientIPv6CIDROutside.Contains(a6.Addr()) {
		t.Fatalf("IPv6 tunnel address %v, want one in %s", a6, netlab.ClientIPv6CIDROutside)
	}
	s.ping(c.vpnClient, netlab.VPCHostIPv6.String())
	if got := s.sourceSeenByVPC(c.vpnClient, netip.AddrPortFrom(netlab.VPCHostIPv6, 7000)); got != netlab.SNATIPv6Address {
		t.Errorf("the VPC host saw %s, want the SNAT address %s (the client is %s)", got, netlab.SNATIPv6Address, a6.Addr())
	}
	_, client := s.iperfTo(c.vpnClient, netlab.VPCHostIPv6, 5201, "8M", true)
	if got := client.End.SumReceived.Bytes; got < 4<<20 {
		t.Errorf("a download through the IPv6 NAT moved %d bytes, want at least 4 MiB", got)
	}
	// An ICMPv6 port unreachable comes back through the NAT, its embedded packet translated back
	// to the client's address (else the client's socket would not match it).
	s.portUnreachable(c.vpnClient, netlab.VPCHostIPv6)
}

// TestIPv6ClientToClient: a `target: local` route to exactly client_ipv6_cidr_block lets clients
// reach each other over IPv6 with their own addresses; reloaded without it, they cannot.
func TestIPv6ClientToClient(t *testing.T) {
	t.Parallel()
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "dual-stack",
		TrafficIPAddressType:  "dual-stack",
		Routes: []string{
			"{destination_cidr_block: 10.0.1.0/24}",
			"{destination_cidr_block: fd00:10:1::/64}",
			fmt.Sprintf("{destination_cidr_block: %s, target: local}", netlab.ClientIPv6CIDR),
		},
	})
	a := s.connectDual("alice", true, netlab.ProfileOptions{Proto: "udp6"})
	b := s.connectDual("bob", false, netlab.ProfileOptions{})
	aa, ba := s.tunAddress6(a.vpnClient), s.tunAddress6(b.vpnClient)
	if !aa.IsValid() || !ba.IsValid() {
		t.Fatalf("tunnel addresses %v and %v", aa, ba)
	}
	s.ping(a.vpnClient, ba.Addr().String())
	s.ping(b.vpnClient, aa.Addr().String())
	s.ping(a.vpnClient, netlab.VPCHostIPv6.String())

	// Without the local route clients cannot reach each other, although the route to the
	// subnet around their block covers them; the private network still works.
	local := fmt.Sprintf("  - {destination_cidr_block: %s, target: local}\n", netlab.ClientIPv6CIDR)
	s.reload(strings.Replace(s.endpointFile(), local, "", 1))
	if err := waitCount(s.srv, "reload applied", 1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	s.noPing(a.vpnClient, ba.Addr().String())
	s.ping(a.vpnClient, netlab.VPCHostIPv6.String())
	if d := s.drops(); d["no_route"] < 2 {
		t.Fatalf("drops %v: want at least 2 no_route (the unanswered pings)", d)
	}
}

// TestIPv6FloatingClient changes the source address of a client connected over UDP on IPv6
// mid-session, as a renumbered network does: the session follows to the new address once a
// packet from it authenticates.
func TestIPv6FloatingClient(t *testing.T) {
	t.Parallel()
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "dual-stack",
		TrafficIPAddressType:  "dual-stack",
	})
	c := s.connectDual("floater", true, netlab.ProfileOptions{Proto: "udp6"})
	s.ping(c.vpnClient, netlab.VPCHostIPv6.String())
	// The client is unbound (nobind): its datagrams take the source the route gives them.
	newSrc := c.link.ClientIPv6.Next()
	for _, args := range [][]string{
		{"ip", "-6", "addr", "add", netip.PrefixFrom(newSrc, 64).String(), "dev", "eth0", "nodad"},
		{"ip", "-6", "route", "replace", c.remote.String(), "dev", "eth0", "src", newSrc.String()},
	} {
		if _, err := s.lab.Output(context.Background(), c.ns, args...); err != nil {
			t.Fatal(err)
		}
	}
	s.ping(c.vpnClient, netlab.VPCHostIPv6.String())
	if err := s.srv.WaitFor("client floated", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if want := "to=[" + newSrc.String() + "]:"; !strings.Contains(s.srv.Output(), want) {
		t.Fatalf("session did not move to %s (no %q):\n%s", newSrc, want, s.srv.Output())
	}
	s.ping(c.vpnClient, netlab.VPCHost.String())
	s.ping(c.vpnClient, netlab.VPCHostIPv6.String())
}

var ifconfigIPv6RE = regexp.MustCompile(`ifconfig-ipv6 [0-9a-f:]+/\d+ ([0-9a-f:]+)`)

// TestIPv6HostNotADestination: the rule for the VPC's whole IPv6 block does not open the
// endpoint host's own IPv6 addresses: the SNAT6 address is refused (logged as host_address
// with its destination), and a TCP service on the host's VPC-side address (fd00:10:1::1) is out
// of reach while the VPC host's is not, its SYNs counted as host_address too. The IPv6 gateway
// address pushed with ifconfig-ipv6 answers ping.
func TestIPv6HostNotADestination(t *testing.T) {
	t.Parallel()
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "dual-stack",
		TrafficIPAddressType:  "dual-stack",
		SNATIPv6:              true,
	})
	const port = 2222
	hostLn, err := netlab.ListenTCPIn(s.lab.Server, netip.AddrPortFrom(netlab.ServerVPCIPv6, port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostLn.Close() })
	go func() {
		for {
			conn, err := hostLn.Accept()
			if err != nil {
				return
			}
			t.Errorf("the endpoint host's service accepted a connection from %s", conn.RemoteAddr())
			conn.Close()
		}
	}()
	c := s.connectDual("mallory", true, netlab.ProfileOptions{Proto: "udp6"})
	if got := s.sourceSeenByVPC(c.vpnClient, netip.AddrPortFrom(netlab.VPCHostIPv6, port)); got != netlab.SNATIPv6Address {
		t.Fatalf("the VPC host's service saw %s, want %s", got, netlab.SNATIPv6Address)
	}
	// The SNAT6 address first: the first host_address drop of the run is logged (with its
	// destination) at the next second; later ones only count until the drop log's next interval.
	s.noPing(c.vpnClient, netlab.SNATIPv6Address.String())
	first := regexp.MustCompile(`reason=host_address count_since_last_log=\d+ total=(\d+) user=mallory[^\n]* dst=` +
		regexp.QuoteMeta(netlab.SNATIPv6Address.String()) + `\b`)
	var m []string
	for deadline := time.Now().Add(5 * time.Second); m == nil && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		m = first.FindStringSubmatch(s.srv.Output())
	}
	if m == nil {
		t.Fatalf("the pings to the SNAT6 address %s were not dropped as host_address:\n%s", netlab.SNATIPv6Address, netlab.Tail(s.srv.Output(), 3000))
	}
	before, _ := strconv.Atoi(m[1])
	if conn, err := netlab.DialTCPInWithin(c.ns, netip.AddrPortFrom(netlab.ServerVPCIPv6, port), 3*time.Second); err == nil {
		conn.Close()
		t.Fatalf("a client connected to the endpoint host's service on %s", netlab.ServerVPCIPv6)
	}

	m = ifconfigIPv6RE.FindStringSubmatch(c.proc.Output())
	if m == nil {
		t.Fatalf("no ifconfig-ipv6 with a gateway in the push:\n%s", c.proc.Output())
	}
	gw := m[1]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := s.lab.Output(ctx, c.ns, "ping", "-c", "5", "-i", "0.2", "-W", "2", gw)
	if err != nil {
		t.Fatalf("ping the IPv6 gateway %s: %v", gw, err)
	}
	if sent, received, ok := pingTally(out); !ok || sent != 5 || received != 5 || !strings.Contains(out, "from "+gw) {
		t.Fatalf("ping the IPv6 gateway %s: %d of %d answered:\n%s", gw, received, sent, out)
	}
	// The connection attempt's SYNs were dropped as host_address too, and nothing for another
	// reason.
	d := s.drops()
	if d["host_address"] <= before || d["unauthorized"] != 0 || d["no_route"] != 0 {
		t.Errorf("drops %v: want host_address above the %d of the SNAT6 pings, no unauthorized or no_route", d, before)
	}
}

// TestIPv6OnlyFullTunnel: with only IPv6 through the tunnel, split_tunnel false redirects IPv6
// alone (redirect-gateway ipv6 !ipv4): the client's IPv6 default traffic enters the tunnel while
// its IPv4 routes stay as they were.
func TestIPv6OnlyFullTunnel(t *testing.T) {
	t.Parallel()
	other := netip.MustParsePrefix("2001:db8:ff::10/64")
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "dual-stack",
		TrafficIPAddressType:  "ipv6",
		FullTunnel:            true,
		Rules:                 []string{"{target_network_cidr: '::/0', authorize_all_groups: true}"},
	})
	if err := s.lab.AddVPCSubnet(other); err != nil {
		t.Fatal(err)
	}
	c := s.connectDual("sixroamer", true, netlab.ProfileOptions{Proto: "udp6"})
	push := regexp.MustCompile(`PUSH_REPLY[^\n]*`).FindString(c.proc.Output())
	if !regexp.MustCompile(`redirect-gateway[^,]*ipv6`).MatchString(push) || !strings.Contains(push, "!ipv4") {
		t.Fatalf("want redirect-gateway ipv6 !ipv4 pushed:\n%s", push)
	}
	if out, ok := s.routesVia(c.ns, other.Addr(), "tun0"); !ok {
		t.Fatalf("the route to %s does not use the tunnel:\n%s", other.Addr(), out)
	}
	if out, ok := s.routesVia(c.ns, netip.MustParseAddr("10.0.9.9"), "eth0"); !ok {
		t.Errorf("IPv4 was redirected although only IPv6 flows:\n%s", out)
	}
	s.ping(c.vpnClient, other.Addr().String())
	s.ping(c.vpnClient, netlab.VPCHostIPv6.String())
}

// TestExportedProfileIPv6: a dual-stack endpoint made with the CLI (cvpn init, then the IPv6 keys
// added to its file) exports profiles with a remote per family; a client whose resolver knows
// only the endpoint name's IPv6 address connects with nothing but the exported file, over UDP
// and over TCP, reaching the endpoint over IPv6.
func TestExportedProfileIPv6(t *testing.T) {
	t.Parallel()
	lab, err := netlab.NewDual()
	if err != nil {
		t.Fatal(err)
	}
	s := &cliSetup{setup: &setup{t: t, lab: lab}, dir: filepath.Join(t.TempDir(), "endpoint")}
	t.Cleanup(func() {
		lab.Close()
		if t.Failed() && s.srv != nil {
			t.Logf("cvpn output:\n%s", s.srv.Output())
		}
	})
	const name = "server.cvpn.test"
	cli(t, "init", "--dir", s.dir, "--remote", name, "--transport", "udp/443,tcp/443")
	s.config = filepath.Join(s.dir, "endpoint.yaml")
	b, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	yaml := string(b)
	for _, e := range [][2]string{
		{"remote_hostname: " + name + "\n", "remote_hostname: " + name + "\nendpoint_ip_address_type: dual-stack\ntraffic_ip_address_type: dual-stack\n" +
			"client_ipv6_cidr_block: " + netlab.ClientIPv6CIDR.String() + "\n"},
		{"vpc_cidr_blocks:\n", "vpc_cidr_blocks:\n  - " + netlab.VPCCIDRIPv6.String() + "\n"},
		{"routes:\n", "routes:\n  - destination_cidr_block: " + netlab.VPCPrefixIPv6.String() + "\n"},
		{"authorization_rules:\n", "authorization_rules:\n  - {target_network_cidr: " + netlab.VPCCIDRIPv6.String() + ", authorize_all_groups: true}\n"},
	} {
		if !strings.Contains(yaml, e[0]) {
			t.Fatalf("cvpn init's file has no %q:\n%s", e[0], yaml)
		}
		yaml = strings.Replace(yaml, e[0], e[1], 1)
	}
	yaml += "admin: {socket: admin.sock}\n"
	if err := os.WriteFile(s.config, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cli(t, "client", "issue", "alice", "--config", s.config)
	s.serve()

	// Both clients at once: each first fails to resolve the name over IPv4 (some seconds), then
	// takes the IPv6 remote.
	type started struct {
		proto string
		link  netlab.ClientLink
		c     *vpnClient
	}
	var clients []started
	for _, proto := range []string{"udp", "tcp"} {
		profile := cli(t, "export-client-config", "--config", s.config, "--client", "alice", "--protocol", proto)
		v4, v6 := proto+"4", proto+"6"
		if proto == "tcp" {
			v4, v6 = "tcp4-client", "tcp6-client"
		}
		for _, want := range []string{"remote " + name + " 443 " + v4 + "\n", "remote " + name + " 443 " + v6 + "\n"} {
			if !strings.Contains(profile, want) {
				t.Fatalf("the %s profile lacks %q:\n%s", proto, want, profile)
			}
		}
		path := filepath.Join(s.dir, "alice-"+proto+".ovpn")
		if err := os.WriteFile(path, []byte(profile), 0o600); err != nil {
			t.Fatal(err)
		}
		link, err := lab.AddClientLink()
		if err != nil {
			t.Fatal(err)
		}
		// ip netns exec mounts /etc/netns/NS/hosts over /etc/hosts for what it runs: the name
		// resolves to the endpoint's IPv6 address alone there.
		etc := filepath.Join("/etc/netns", link.NS)
		if err := os.MkdirAll(etc, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(etc) })
		if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte(link.ServerIPv6.String()+" "+name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := lab.Start("openvpn alice "+proto, link.NS, "openvpn", "--config", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("openvpn alice %s output:\n%s", proto, p.Output())
			}
		})
		clients = append(clients, started{proto, link, &vpnClient{ns: link.NS, proc: p}})
	}
	for _, c := range clients {
		if err := c.c.proc.WaitFor("Initialization Sequence Completed", 60*time.Second); err != nil {
			t.Fatalf("%s: %v", c.proto, err)
		}
		if want := "link remote: [AF_INET6]" + c.link.ServerIPv6.String(); !strings.Contains(c.c.proc.Output(), want) {
			t.Errorf("%s: the client log lacks %q", c.proto, want)
		}
		s.ping(c.c, netlab.VPCHostIPv6.String())
		s.ping(c.c, netlab.VPCHost.String())
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var b strings.Builder
	for l := range strings.Lines(s) {
		if strings.Contains(l, sub) {
			b.WriteString(l)
		}
	}
	return b.String()
}
