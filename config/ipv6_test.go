package config

import (
	"net/netip"
	"strings"
	"testing"
)

// dual is base carrying both families through the tunnel, the clients' IPv6 addresses routed
// inside the VPC's IPv6 subnet.
const dual = base + `traffic_ip_address_type: dual-stack
client_ipv6_cidr_block: fd00:10:1::1:0/112
`

// noRoutes is a file without its routes and authorization rules (base's come last but for what
// was appended after them).
func noRoutes(file string) string {
	i := strings.Index(file, "routes:\n")
	j := strings.Index(file, "    access_group_id: dev\n") + len("    access_group_id: dev\n")
	return file[:i] + file[j:]
}

// The address types, their defaults and the keys that go with them.
func TestAddressTypes(t *testing.T) {
	vpc6 := func(s string) string {
		return strings.Replace(s, "vpc_cidr_blocks: [10.0.0.0/16]", "vpc_cidr_blocks: [10.0.0.0/16, 'fd00:10:1::/64']", 1)
	}
	for _, c := range []struct {
		name                string
		file                string
		endpoint, traffic   string
		listen, listen6     string // "" for the zero address
		client4, client6    string
		snat4, snat6        string
		routes, rules, dnss int
	}{
		{name: "defaults", file: base, endpoint: IPv4, traffic: IPv4, listen: "0.0.0.0",
			client4: "10.2.0.0/22", snat4: "10.0.1.2", routes: 1, rules: 1},
		{name: "ipv6 listeners", file: base + "endpoint_ip_address_type: ipv6\n", endpoint: IPv6, traffic: IPv4, listen: "::",
			client4: "10.2.0.0/22", snat4: "10.0.1.2", routes: 1, rules: 1},
		{name: "ipv6 listener address", file: base + "endpoint_ip_address_type: ipv6\nlisten_address: 'fd31::1'\n", endpoint: IPv6, traffic: IPv4,
			listen: "fd31::1", client4: "10.2.0.0/22", snat4: "10.0.1.2", routes: 1, rules: 1},
		{name: "dual-stack listeners", file: base + "endpoint_ip_address_type: dual-stack\nlisten_ipv6_address: 'fd31::1'\n", endpoint: DualStack, traffic: IPv4,
			listen: "0.0.0.0", listen6: "fd31::1", client4: "10.2.0.0/22", snat4: "10.0.1.2", routes: 1, rules: 1},
		{name: "dual-stack traffic", file: vpc6(noRoutes(dual)) + `routes:
  - destination_cidr_block: fd00:10:1::/64
  - destination_cidr_block: fd00:10:1::1:0/112
    target: local
authorization_rules:
  - {target_network_cidr: 'fd00:10:1::/64', access_group_id: dev}
dns_servers: [10.0.0.2, 'fd00:10:1::53']
`, endpoint: IPv4, traffic: DualStack, listen: "0.0.0.0", client4: "10.2.0.0/22", client6: "fd00:10:1::1:0/112", snat4: "10.0.1.2",
			routes: 2, rules: 1, dnss: 2},
		{name: "ipv6 traffic only", file: `traffic_ip_address_type: ipv6
client_ipv6_cidr_block: fd00:10:1::1:0/120
vpc_cidr_blocks: ['fd00:10:1::/64']
server_certificate: {cert_file: pki/server.crt, key_file: pki/server.key}
authentication: {certificate: {client_root_ca_file: pki/ca.crt}}
target_network: {interface: eth1}
`, endpoint: IPv4, traffic: IPv6, listen: "0.0.0.0", client6: "fd00:10:1::1:0/120"},
		{name: "ipv6 traffic NATed from outside the VPC",
			file: strings.Replace(vpc6(base), "  snat_address: 10.0.1.2\n", "  snat_address: 10.0.1.2\n  snat_ipv6_address: 'fd00:10:1::2'\n", 1) +
				"traffic_ip_address_type: dual-stack\nclient_ipv6_cidr_block: 'fd99::/64'\n",
			endpoint: IPv4, traffic: DualStack, listen: "0.0.0.0", client4: "10.2.0.0/22", client6: "fd99::/64", snat4: "10.0.1.2",
			snat6: "fd00:10:1::2", routes: 1, rules: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			ep, err := Parse([]byte(c.file), "testdata")
			if err != nil {
				t.Fatal(err)
			}
			addr := func(s string) netip.Addr {
				if s == "" {
					return netip.Addr{}
				}
				return netip.MustParseAddr(s)
			}
			prefix := func(s string) netip.Prefix {
				if s == "" {
					return netip.Prefix{}
				}
				return netip.MustParsePrefix(s)
			}
			got := []any{ep.EndpointIPAddressType, ep.TrafficIPAddressType, ep.ListenAddress, ep.ListenIPv6Address,
				ep.ClientCIDRBlock, ep.ClientIPv6CIDRBlock, ep.TargetNetwork.SNATAddress, ep.TargetNetwork.SNATIPv6Address,
				len(ep.Routes), len(ep.AuthorizationRules), len(ep.DNSServers)}
			want := []any{c.endpoint, c.traffic, addr(c.listen), addr(c.listen6), prefix(c.client4), prefix(c.client6),
				addr(c.snat4), addr(c.snat6), c.routes, c.rules, c.dnss}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("field %d = %v, want %v (all: %v)", i, got[i], want[i], got)
				}
			}
		})
	}
}

func TestIPv6Rules(t *testing.T) {
	const vpc6 = "vpc_cidr_blocks: [10.0.0.0/16, 'fd00:10:1::/64']"
	for _, c := range []struct {
		name string
		file string
		path string
		msg  string
	}{
		{"bad endpoint type", base + "endpoint_ip_address_type: ipv5\n", "endpoint_ip_address_type",
			`"ipv5" is not ipv4, ipv6 or dual-stack`},
		{"bad traffic type", base + "traffic_ip_address_type: both\n", "traffic_ip_address_type", `"both" is not ipv4, ipv6 or dual-stack`},
		{"ipv6 block without ipv6 traffic", base + "client_ipv6_cidr_block: 'fd00::/64'\n", "client_ipv6_cidr_block",
			"IPv6 traffic is off (traffic_ip_address_type: ipv4)"},
		{"ipv6 traffic without a block", base + "traffic_ip_address_type: dual-stack\n", "client_ipv6_cidr_block", "required"},
		{"ipv6 block too large", strings.Replace(dual, "fd00:10:1::1:0/112", "'fd00:10::/48'", 1), "client_ipv6_cidr_block",
			"prefix length must be /64 to /120, got /48"},
		{"ipv6 block too small", strings.Replace(dual, "fd00:10:1::1:0/112", "'fd00:10:1::1:0/124'", 1), "client_ipv6_cidr_block", "got /124"},
		{"ipv6 block is IPv4", strings.Replace(dual, "fd00:10:1::1:0/112", "10.3.0.0/22", 1), "client_ipv6_cidr_block", "10.3.0.0/22 is not IPv6"},
		{"ipv4 block is IPv6", strings.Replace(base, "client_cidr_block: 10.2.0.0/22", "client_cidr_block: 'fd00::/64'", 1), "client_cidr_block",
			"not IPv4; IPv6 client addresses come from client_ipv6_cidr_block"},
		{"ipv6 block outside the VPC", dual, "client_ipv6_cidr_block",
			"fd00:10:1::1:0/112 is not inside an IPv6 entry of vpc_cidr_blocks (none is IPv6)"},
		{"ipv6 block straddles the VPC", strings.Replace(strings.Replace(dual, "vpc_cidr_blocks: [10.0.0.0/16]", "vpc_cidr_blocks: [10.0.0.0/16, 'fd00:10:1::1:0/120']", 1),
			"fd00:10:1::1:0/112", "'fd00:10:1::1:0/112'", 1), "client_ipv6_cidr_block", "overlaps vpc_cidr_blocks[1] fd00:10:1::1:0/120 without lying inside it"},
		{"NATed ipv6 block inside the VPC", strings.Replace(strings.Replace(dual, "vpc_cidr_blocks: [10.0.0.0/16]", vpc6, 1),
			"  snat_address: 10.0.1.2\n", "  snat_address: 10.0.1.2\n  snat_ipv6_address: 'fd00:10:1::2'\n", 1), "client_ipv6_cidr_block",
			"with target_network.snat_ipv6_address client addresses must lie outside the private network"},
		{"snat6 outside the VPC", strings.Replace(strings.Replace(dual, "vpc_cidr_blocks: [10.0.0.0/16]", vpc6, 1),
			"  snat_address: 10.0.1.2\n", "  snat_address: 10.0.1.2\n  snat_ipv6_address: 'fd00:99::2'\n", 1), "target_network.snat_ipv6_address",
			"fd00:99::2 is not inside any of vpc_cidr_blocks"},
		{"snat6 is IPv4", strings.Replace(strings.Replace(dual, "vpc_cidr_blocks: [10.0.0.0/16]", vpc6, 1),
			"  snat_address: 10.0.1.2\n", "  snat_address: 10.0.1.2\n  snat_ipv6_address: 10.0.1.3\n", 1), "target_network.snat_ipv6_address",
			"10.0.1.3 is not an IPv6 address"},
		{"snat6 without ipv6 traffic", strings.Replace(base, "  snat_address: 10.0.1.2\n", "  snat_address: 10.0.1.2\n  snat_ipv6_address: 'fd00:10:1::2'\n", 1),
			"target_network.snat_ipv6_address", "IPv6 traffic is off"},
		{"ipv6 vpc without ipv6 traffic", strings.Replace(base, "vpc_cidr_blocks: [10.0.0.0/16]", vpc6, 1), "vpc_cidr_blocks[1]",
			"fd00:10:1::/64 is IPv6, but traffic_ip_address_type is ipv4"},
		{"ipv6 route without ipv6 traffic", strings.Replace(base, "  - destination_cidr_block: 10.0.1.0/24\n", "  - destination_cidr_block: 'fd00:10:1::/64'\n", 1),
			"routes[0].destination_cidr_block", "is IPv6, but traffic_ip_address_type is ipv4"},
		{"ipv6 rule without ipv6 traffic", strings.Replace(base, "target_network_cidr: 10.0.0.0/16", "target_network_cidr: 'fd00::/8'", 1),
			"authorization_rules[0].target_network_cidr", "is IPv6, but traffic_ip_address_type is ipv4"},
		{"route inside the ipv6 block", strings.Replace(noRoutes(dual), "vpc_cidr_blocks: [10.0.0.0/16]", vpc6, 1) + "routes:\n  - destination_cidr_block: 'fd00:10:1::1:0/120'\n",
			"routes[0].destination_cidr_block", "overlaps client_ipv6_cidr_block fd00:10:1::1:0/112; a pushed route must not single out client addresses"},
		{"ipv4 route with ipv6 traffic only", `traffic_ip_address_type: ipv6
client_ipv6_cidr_block: fd00:10:1::1:0/120
vpc_cidr_blocks: ['fd00:10:1::/64']
server_certificate: {cert_file: pki/server.crt, key_file: pki/server.key}
authentication: {certificate: {client_root_ca_file: pki/ca.crt}}
target_network: {interface: eth1}
routes: [{destination_cidr_block: 10.0.1.0/24}]
`, "routes[0].destination_cidr_block", "10.0.1.0/24 is IPv4, but traffic_ip_address_type is ipv6"},
		{"ipv4 block with ipv6 traffic only", `traffic_ip_address_type: ipv6
client_cidr_block: 10.2.0.0/22
client_ipv6_cidr_block: fd00:10:1::1:0/120
vpc_cidr_blocks: ['fd00:10:1::/64']
server_certificate: {cert_file: pki/server.crt, key_file: pki/server.key}
authentication: {certificate: {client_root_ca_file: pki/ca.crt}}
target_network: {interface: eth1, snat_address: 10.0.1.2}
`, "client_cidr_block", "IPv4 traffic is off (traffic_ip_address_type: ipv6)"},
		{"ipv6 listen address with ipv4 endpoint", base + "listen_address: '::'\n", "listen_address",
			":: is not IPv4; set endpoint_ip_address_type to ipv6 (or dual-stack) to listen on IPv6"},
		{"ipv4 listen address with ipv6 endpoint", base + "endpoint_ip_address_type: ipv6\nlisten_address: 0.0.0.0\n", "listen_address",
			"0.0.0.0 is not IPv6; with endpoint_ip_address_type ipv6 the listeners are IPv6"},
		{"listen_ipv6_address without dual-stack", base + "listen_ipv6_address: '::'\n", "listen_ipv6_address",
			"only with endpoint_ip_address_type dual-stack (it is ipv4)"},
		{"listen_ipv6_address is IPv4", base + "endpoint_ip_address_type: dual-stack\nlisten_ipv6_address: 0.0.0.0\n", "listen_ipv6_address",
			"0.0.0.0 is not an IPv6 address"},
		{"listen address with a zone", base + "endpoint_ip_address_type: ipv6\nlisten_address: 'fe80::1%eth0'\n", "listen_address", "has a zone"},
		{"IPv6 below its minimum MTU", dual + "tun: {mtu: 1200}\n", "tun.mtu", "1200 is below 1280, the least an IPv6 link may carry"},
		{"IPv6 remote for an IPv4 endpoint", base + "remote_hostname: 'fd31::1'\n", "remote_hostname",
			"fd31::1 is IPv6, but endpoint_ip_address_type is ipv4: clients could not reach it"},
		{"IPv4 remote for an IPv6 endpoint", base + "remote_hostname: 192.0.2.1\nendpoint_ip_address_type: ipv6\n", "remote_hostname",
			"192.0.2.1 is IPv4, but endpoint_ip_address_type is ipv6"},
		{"mapped vpc block", strings.Replace(base, "vpc_cidr_blocks: [10.0.0.0/16]", "vpc_cidr_blocks: ['::ffff:10.0.0.0/112']", 1), "vpc_cidr_blocks[0]",
			"is an IPv4-mapped IPv6 block; write the IPv4 block 10.0.0.0/16 instead"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.file), "testdata")
			if err == nil {
				t.Fatal("Parse succeeded")
			}
			var found bool
			for _, e := range validationErrors(t, err) {
				if e.Path == c.path && strings.Contains(e.Msg, c.msg) {
					found = true
				}
			}
			if !found {
				t.Errorf("no error at %s containing %q in:\n%v", c.path, c.msg, err)
			}
		})
	}
}
