package bench

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/internal/netlab"
)

// TestIPv6Fixtures: the dual-stack files differ from the IPv4 ones by exactly the IPv6 keys,
// both servers hand out the same IPv6 block inside the VPC link's /64, and the IPv4 files
// carry nothing of IPv6.
func TestIPv6Fixtures(t *testing.T) {
	fx, err := WriteFixtures(t.TempDir(), FixtureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v4, v6 := readFile(fx.CVPNConfig), readFile(fx.CVPNIPv6Config)
	for _, want := range []string{
		"endpoint_ip_address_type: dual-stack\n",
		"traffic_ip_address_type: dual-stack\n",
		"client_ipv6_cidr_block: fd00:10:1::1:0/112\n",
		"vpc_cidr_blocks: [10.0.0.0/16, fd00:10:1::/64]\n",
		"routes:\n  - {destination_cidr_block: fd00:10:1::/64}\n  - {destination_cidr_block: 10.0.1.0/24}\n",
		"authorization_rules:\n  - {target_network_cidr: fd00:10:1::/64, authorize_all_groups: true}\n  - {target_network_cidr: 10.0.0.0/16",
		"transport: [{protocol: udp, port: 443}]\n",
		"admin: {socket: admin-ipv6.sock}\n",
		"snat_address: 10.0.1.2}", // IPv4 is still source-NATed
	} {
		if !strings.Contains(v6, want) {
			t.Errorf("%s lacks %q:\n%s", fx.CVPNIPv6Config, want, v6)
		}
	}
	if filepath.Base(fx.AdminSocketIPv6) != "admin-ipv6.sock" {
		t.Errorf("AdminSocketIPv6 %s is not the dual-stack file's admin socket", fx.AdminSocketIPv6)
	}
	if strings.Contains(v6, "snat_ipv6_address") {
		t.Errorf("%s source-NATs IPv6; VPC hosts must see the clients' own addresses", fx.CVPNIPv6Config)
	}
	// cvpn takes the file as the dual-stack endpoint it is meant to be.
	ep, err := config.Parse([]byte(v6), filepath.Dir(fx.CVPNIPv6Config))
	if err != nil {
		t.Fatalf("%s: %v", fx.CVPNIPv6Config, err)
	}
	if ep.EndpointIPAddressType != config.DualStack || ep.TrafficIPAddressType != config.DualStack ||
		ep.ClientIPv6CIDRBlock != netlab.ClientIPv6CIDR || ep.ClientCIDRBlock != DefaultClientCIDR ||
		ep.TargetNetwork.SNATIPv6Address.IsValid() {
		t.Errorf("%s: endpoint %s, traffic %s, client blocks %s and %s, IPv6 SNAT %s", fx.CVPNIPv6Config, ep.EndpointIPAddressType,
			ep.TrafficIPAddressType, ep.ClientCIDRBlock, ep.ClientIPv6CIDRBlock, ep.TargetNetwork.SNATIPv6Address)
	}
	// Taking the IPv6 lines out gives the IPv4 file back, less its admin socket.
	back := v6
	for _, l := range []string{"endpoint_ip_address_type: dual-stack\n", "traffic_ip_address_type: dual-stack\n",
		"client_ipv6_cidr_block: fd00:10:1::1:0/112\n", "  - {destination_cidr_block: fd00:10:1::/64}\n",
		"  - {target_network_cidr: fd00:10:1::/64, authorize_all_groups: true}\n", ", fd00:10:1::/64"} {
		back = strings.Replace(back, l, "", 1)
	}
	back = strings.Replace(back, "admin-ipv6.sock", "admin.sock", 1)
	if back != v4 {
		t.Errorf("the dual-stack file is not the IPv4 file plus IPv6 keys:\n%s\nwant\n%s", back, v4)
	}
	for _, f := range []string{fx.CVPNConfig, fx.CVPNTCPConfig, fx.CVPNLimitConfig, fx.CVPNScaleConfig, fx.OpenVPNConfig, fx.OpenVPNTCPConfig} {
		if s := readFile(f); strings.Contains(s, "ipv6") || strings.Contains(s, "fd00:") {
			t.Errorf("%s mentions IPv6:\n%s", f, s)
		}
	}

	o4, o6 := readFile(fx.OpenVPNConfig), readFile(fx.OpenVPNIPv6Config)
	for _, want := range []string{"proto udp6\n", "server 10.64.0.0 255.255.192.0\n", "server-ipv6 fd00:10:1::1:0/112\n",
		"push \"route 10.0.1.0 255.255.255.0\"\n", "push \"route-ipv6 fd00:10:1::/64\"\n", "max-clients 16381\n"} {
		if !strings.Contains(o6, want) {
			t.Errorf("%s lacks %q:\n%s", fx.OpenVPNIPv6Config, want, o6)
		}
	}
	if want := strings.Replace(o6, "proto udp6\n", "proto udp4\n", 1); strings.Replace(want,
		"server-ipv6 fd00:10:1::1:0/112\npush \"route-ipv6 fd00:10:1::/64\"\n", "", 1) != o4 {
		t.Errorf("the stock server's dual-stack file is not its IPv4 file plus IPv6 lines:\n%s", o6)
	}

	// The block both servers hand out: inside the VPC link's /64, away from its hosts, within
	// cvpn's /64../120 and OpenVPN's /64../124.
	c := netlab.ClientIPv6CIDR
	if b := c.Bits(); !netlab.VPCPrefixIPv6.Contains(c.Addr()) || b < 64 || b > 120 {
		t.Errorf("ClientIPv6CIDR %s is not a /64../120 inside %s", c, netlab.VPCPrefixIPv6)
	}
	for _, host := range []netip.Addr{netlab.ServerVPCIPv6, netlab.VPCHostIPv6} {
		if c.Contains(host) {
			t.Errorf("host %s is in the client block %s", host, c)
		}
	}
}

// TestCVPNIPv6ConfigRefusesUnknownShape: a file that lacks a line the dual-stack variant
// rewrites is an error naming the line, not a silently IPv4-only "dual-stack" file.
func TestCVPNIPv6ConfigRefusesUnknownShape(t *testing.T) {
	const base = "vpc_cidr_blocks: [10.0.0.0/16]\nroutes:\n  - {destination_cidr_block: 10.0.1.0/24}\nauthorization_rules:\n  - {target_network_cidr: 10.0.0.0/16, authorize_all_groups: true}\n"
	if _, err := cvpnIPv6Config(base); err != nil {
		t.Fatalf("the lab's shape: %v", err)
	}
	for _, line := range []string{"vpc_cidr_blocks: [10.0.0.0/16]\n", "routes:\n", "authorization_rules:\n"} {
		_, err := cvpnIPv6Config(strings.Replace(base, line, "", 1))
		if err == nil || !strings.Contains(err.Error(), strings.TrimSpace(line)) {
			t.Errorf("without %q: %v, want an error naming it", line, err)
		}
	}
	if _, err := cvpnIPv6Config(base + "routes:\n"); err == nil {
		t.Error("two routes keys: no error")
	}
}

// TestIPv6Rows: the iperf-ipv6 measurements become their own rows with ratios beside the IPv4
// ones, drawn in the chart, and the two families' ratios are put side by side.
func TestIPv6Rows(t *testing.T) {
	m := func(sc string, kind ServerKind, up, upCPU, down, downCPU float64) Measurement {
		return Measurement{Scenario: sc, Server: kind, Round: 1, Metrics: map[string]float64{
			"up_mbps": up, "up_cpu_s_per_gb": upCPU, "down_mbps": down, "down_cpu_s_per_gb": downCPU}}
	}
	r := &Results{Measurements: []Measurement{
		m(ScenarioIperf, CVPN, 800, 5, 600, 6), m(ScenarioIperf, OpenVPN, 400, 10, 400, 12),
		m(ScenarioIperfIPv6, CVPN, 700, 5, 500, 6), m(ScenarioIperfIPv6, OpenVPN, 400, 10, 500, 10),
	}}
	r.Retable()
	var v6 []Row
	for _, row := range r.Table {
		if row.Scenario == ScenarioIperfIPv6 {
			v6 = append(v6, row)
		}
	}
	if len(v6) != 4 || v6[0].Metric != "TCP upload" || v6[0].Ratio == nil || *v6[0].Ratio != 1.75 {
		t.Fatalf("iperf-ipv6 rows: %+v", v6)
	}
	txt := r.TableText()
	if !strings.Contains(txt, "iperf-ipv6       TCP upload (Mbit/s)") {
		t.Errorf("table lacks the iperf-ipv6 row:\n%s", txt)
	}
	c := ipv6Comparison(r.Table)
	want := []string{"TCP upload 2.00x over IPv4, 1.75x over IPv6", "server CPU, upload 0.50x over IPv4, 0.50x over IPv6",
		"TCP download 1.50x over IPv4, 1.00x over IPv6", "server CPU, download 0.50x over IPv4, 0.60x over IPv6"}
	if strings.Join(c, "|") != strings.Join(want, "|") {
		t.Errorf("comparison %q, want %q", c, want)
	}
	// Four profiled phases: the CPU per packet takes two lines of the chart.
	for _, ph := range []string{"iperf-upload", "iperf-download", "iperf-ipv6-upload", "iperf-ipv6-download"} {
		r.CPUCost = append(r.CPUCost, CostRow{Phase: ph, Category: "total", USPerPacket: 15})
	}
	svg := r.SVG()
	for _, want := range []string{"iperf-ipv6: TCP upload", "iperf-ipv6: server CPU, download",
		"cvpn/openvpn, iperf vs iperf-ipv6: TCP upload 2.00x over IPv4, 1.75x over IPv6; server CPU, upload",
		"split by category in the JSON): iperf-upload 15.00, iperf-download 15.00, iperf-ipv6-upload 15.00<",
		"cvpn CPU per packet, continued: iperf-ipv6-download 15.00<"} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart lacks %q", want)
		}
	}
	// Without the IPv6 scenario there is nothing to compare.
	r.Measurements = r.Measurements[:2]
	r.Retable()
	if c := ipv6Comparison(r.Table); c != nil {
		t.Errorf("IPv4 only: comparison %q", c)
	}
}

// TestIPv6Lab is the IPv6 scenario's short end-to-end check: in each server's lab, the stock
// client dials the dual-stack server's IPv6 address, gets an IPv6 address of the client block
// and reaches the VPC host's IPv6 address through the tunnel from it (the VPC host has no
// route to the client's link, so nothing but the tunnel carries a reply).
func TestIPv6Lab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it creates network namespaces and runs cvpn and openvpn with TUN devices (run go test as root, as CI does)")
	}
	if _, err := exec.LookPath("openvpn"); err != nil {
		t.Fatal("openvpn 2.6 is not installed (apt-get install openvpn)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	fx, err := WriteFixtures(t.TempDir(), FixtureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []ServerKind{CVPN, OpenVPN} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			var bin string
			if kind == CVPN {
				bin = filepath.Join(t.TempDir(), "cvpn")
				if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "../cmd/cvpn").CombinedOutput(); err != nil {
					t.Fatalf("go build cvpn: %v\n%s", err, out)
				}
			}
			lab, err := NewLab(ctx, kind, fx, LabOptions{RouteIfNoIptables: true, IPv6: true})
			if err != nil {
				t.Fatal(err)
			}
			defer lab.Close()
			srv, err := lab.StartServer(ctx, ServerOptions{CVPNBin: bin, IPv6: true})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if t.Failed() {
					t.Logf("%s output:\n%s", kind, tail(srv.Output(), 6000))
				}
			}()
			cl, err := lab.StartStockClient6(ctx, "ipv6-"+string(kind))
			if err != nil {
				t.Fatalf("stock client over udp6: %v\nserver output:\n%s", err, tail(srv.Output(), 3000))
			}
			defer func() { _ = cl.Stop() }()
			if !strings.Contains(cl.Output(), "[AF_INET6]"+lab.StockServer6.Addr().String()) {
				t.Errorf("the client did not dial %s over IPv6:\n%s", lab.StockServer6, tail(cl.Output(), 3000))
			}
			addrs, err := lab.Net.Output(ctx, lab.StockNS, "ip", "-6", "-o", "addr", "show", "scope", "global")
			if err != nil {
				t.Fatal(err)
			}
			var tunnel netip.Addr
			for f := range strings.FieldsSeq(addrs) {
				if p, err := netip.ParsePrefix(f); err == nil && netlab.ClientIPv6CIDR.Contains(p.Addr()) {
					tunnel = p.Addr()
				}
			}
			if !tunnel.IsValid() {
				t.Fatalf("no tunnel address in %s:\n%s", netlab.ClientIPv6CIDR, addrs)
			}
			// The VPC host sees the client's own address: a TCP connection from the client
			// arrives from its tunnel address.
			ln, err := netlab.ListenTCPIn(lab.Net.VPC, netip.AddrPortFrom(netlab.VPCHostIPv6, 7001))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			from := make(chan string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					from <- err.Error()
					return
				}
				from <- c.RemoteAddr().String()
				c.Close()
			}()
			conn, err := netlab.DialTCPIn(lab.StockNS, netip.AddrPortFrom(netlab.VPCHostIPv6, 7001))
			if err != nil {
				t.Fatalf("connect to [%s]:7001 through the tunnel: %v", netlab.VPCHostIPv6, err)
			}
			conn.Close()
			if got, err := netip.ParseAddrPort(<-from); err != nil || got.Addr() != tunnel {
				t.Errorf("the VPC host saw the connection from %v (%v), want the client's tunnel address %s", got, err, tunnel)
			}
		})
	}
}

// TestRcvbufErrors: the socket overflow drops come from both families' counters, which the
// kernel keeps apart even for a socket that takes both.
func TestRcvbufErrors(t *testing.T) {
	const snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 10 0 7 9 7 0\n"
	const snmp6 = "Ip6InReceives                   \t5\nUdp6InErrors                    \t3\nUdp6RcvbufErrors                \t3\nUdpLite6RcvbufErrors            \t99\n"
	if v, err := parseSNMPRcvbufErrors(snmp); err != nil || v != 7 {
		t.Errorf("snmp: %d, %v; want 7", v, err)
	}
	if v, err := parseSNMP6RcvbufErrors(snmp6); err != nil || v != 3 {
		t.Errorf("snmp6: %d, %v; want 3", v, err)
	}
	if _, err := parseSNMP6RcvbufErrors("Ip6InReceives 5\n"); err == nil {
		t.Error("snmp6 without the counter: no error")
	}
	if _, err := parseSNMPRcvbufErrors("Udp: InDatagrams\nUdp: 1\n"); err == nil {
		t.Error("snmp without the counter: no error")
	}
}
