package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/nat"
)

// validationErrors unpacks the joined error Parse and Load return.
func validationErrors(t *testing.T, err error) []*ValidationError {
	t.Helper()
	var errs []error
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		errs = u.Unwrap()
	} else {
		errs = []error{err}
	}
	out := make([]*ValidationError, 0, len(errs))
	for _, e := range errs {
		var ve *ValidationError
		if !errors.As(e, &ve) {
			t.Fatalf("error %v (%T) is not a *ValidationError", e, e)
		}
		out = append(out, ve)
	}
	return out
}

func abs(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(rel)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadGood(t *testing.T) {
	got, err := Load("testdata/good.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := &Endpoint{
		Description:           "dev VPN",
		RemoteHostname:        "vpn.example.com",
		ClientCIDRBlock:       netip.MustParsePrefix("10.2.0.0/22"),
		VPCCIDRBlocks:         []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("172.16.0.0/12")},
		EndpointIPAddressType: IPv4,
		TrafficIPAddressType:  IPv4,
		ListenAddress:         netip.MustParseAddr("192.0.2.1"),
		Transport:             []Listener{{ProtocolUDP, 1194}, {ProtocolTCP, 443}},
		ServerCertificate: ServerCertificate{
			CertFile: abs(t, "testdata/pki/server.crt"),
			KeyFile:  abs(t, "testdata/pki/server.key"),
		},
		ControlChannel: ControlChannel{
			TLSCryptKeyFile:         abs(t, "testdata/pki/tc.key"),
			TLSAuthKeyDirection:     KeyDirectionBidirectional,
			TLSAuthDigest:           DigestSHA1,
			TLSCryptV2ServerKeyFile: abs(t, "testdata/pki/tc-v2.key"),
		},
		Authentication: Authentication{
			Certificate: &CertificateAuthentication{
				ClientRootCAFile: abs(t, "testdata/pki/ca.crt"),
				CRLFile:          abs(t, "testdata/pki/crl.pem"),
			},
			Directory: &DirectoryAuthentication{
				URLs:             []string{"ldaps://dc1.example.com", "ldaps://dc2.example.com:3269"},
				CAFile:           abs(t, "testdata/pki/ca.crt"),
				BindDN:           "cn=cvpn,ou=services,dc=example,dc=com",
				BindPasswordFile: abs(t, "testdata/bind-password"),
				UserBaseDN:       "ou=people,dc=example,dc=com",
				UserFilter:       "(&(objectClass=person)(sAMAccountName={username}))",
				GroupAttribute:   "memberOf",
				NestedGroups:     true,
				Timeout:          5 * time.Second,
			},
			MFA: &MFA{TOTPIssuer: "Example VPN", Challenge: ChallengeDynamic, ChallengeText: "Code from your app:"},
		},
		DataCiphers:   []string{CipherChaCha20Poly1305, CipherAES256GCM},
		TargetNetwork: TargetNetwork{Interface: "eth1", SNATAddress: netip.MustParseAddr("10.0.1.2")},
		TUN:           TUN{Name: "vpn0", MTU: 1400},
		NAT:           NAT{MaxMappings: 262144, MaxMappingsPerClient: 1000},
		Routes: []Route{
			{DestinationCIDRBlock: netip.MustParsePrefix("10.0.1.0/24"), Description: "app subnet"},
			{DestinationCIDRBlock: netip.MustParsePrefix("172.16.0.0/12")},
		},
		AuthorizationRules: []AuthorizationRule{
			{TargetNetworkCIDR: netip.MustParsePrefix("10.0.1.0/24"), AccessGroupID: "dev", Description: "developers reach the app subnet"},
			{TargetNetworkCIDR: netip.MustParsePrefix("172.16.0.0/12"), AuthorizeAllGroups: true},
		},
		SplitTunnel:           false,
		DNSServers:            []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")},
		SessionTimeout:        12 * time.Hour,
		ClientLoginBanner:     "Authorized use only.\nSessions are logged.\n",
		BandwidthLimitMbps:    25.5,
		BandwidthLimits:       []BandwidthLimit{{AccessGroupID: "dev", Mbps: 100}, {AccessGroupID: "ops", Mbps: 0}},
		Reneg:                 0,
		MaxConnectionsPerUser: 2,
		Keepalive:             Keepalive{Ping: 5 * time.Second, PingRestart: 30 * time.Second},
		ConnectionLog:         ConnectionLog{Enabled: true, File: abs(t, "testdata/connections.log")},
		Admin:                 Admin{Socket: abs(t, "testdata/admin.sock")},
		StateDir:              abs(t, "testdata/state"),
		ClientConnectHandler:  &ClientConnectHandler{Command: []string{"/bin/sh", "-c", "exit 0"}, Timeout: 5 * time.Second},
		Portal: &Portal{ListenAddress: netip.MustParseAddrPort("192.0.2.1:9443"), PublicURL: "https://vpn.example.com:9443/",
			CertFile: abs(t, "testdata/pki/server.crt"), KeyFile: abs(t, "testdata/pki/server.key")},
	}
	if got.file != "testdata/good.yaml" || got.KeyLine("routes[1].destination_cidr_block") != 44 || got.KeyLine("admin.socket") != 70 {
		t.Errorf("file %q, line of routes[1].destination_cidr_block %d (want 44), of admin.socket %d (want 70)",
			got.file, got.KeyLine("routes[1].destination_cidr_block"), got.KeyLine("admin.socket"))
	}
	got.file, got.keyLines = "", nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load(good.yaml) =\n%+v\nwant\n%+v", got, want)
	}
}

// TestNATDefaults: the default per-client quota shares the table out among
// the client CIDR's addresses, never below 64, and the defaults are the NAT
// package's own.
func TestNATDefaults(t *testing.T) {
	minimal, err := os.ReadFile("testdata/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cidr  string
		table string // nat.max_mappings; "" leaves it out
		want  NAT
	}{
		{"10.2.0.0/22", "", NAT{65536, 64}},
		{"10.2.0.0/21", "", NAT{65536, 64}},
		{"100.64.0.0/12", "", NAT{65536, 64}},
		{"10.2.0.0/22", "262144", NAT{262144, 256}},
		{"10.2.0.0/21", "262144", NAT{262144, 128}},
		{"10.2.0.0/20", "262144", NAT{262144, 64}},
		{"10.2.0.0/22", "1024", NAT{1024, 64}},
		{"100.64.0.0/12", "4194304", NAT{4194304, 64}},
	} {
		doc := strings.Replace(string(minimal), "10.2.0.0/22", tc.cidr, 1)
		if tc.table != "" {
			doc += "nat: {max_mappings: " + tc.table + "}\n"
		}
		ep, err := Parse([]byte(doc), "testdata")
		if err != nil {
			t.Fatalf("%s, table %s: %v", tc.cidr, tc.table, err)
		}
		if ep.NAT != tc.want {
			t.Errorf("client CIDR %s, nat.max_mappings %q: NAT = %+v, want %+v", tc.cidr, tc.table, ep.NAT, tc.want)
		}
		// Unless the floor applies, every client at its quota fits the table.
		if clients := 1 << (32 - ep.ClientCIDRBlock.Bits()); ep.NAT.MaxMappingsPerClient > minDefaultMappingsPerClient &&
			clients*ep.NAT.MaxMappingsPerClient > ep.NAT.MaxMappings {
			t.Errorf("%s: %d addresses at a quota of %d overfill a table of %d", tc.cidr, clients, ep.NAT.MaxMappingsPerClient, ep.NAT.MaxMappings)
		}
	}
	if defaultNATMappings != nat.DefaultMaxEntries || minDefaultMappingsPerClient != nat.DefaultMaxPerClient {
		t.Errorf("config's NAT defaults (%d, %d) are not the nat package's (%d, %d)",
			defaultNATMappings, minDefaultMappingsPerClient, nat.DefaultMaxEntries, nat.DefaultMaxPerClient)
	}
}

func TestDefaults(t *testing.T) {
	got, err := Load("testdata/minimal.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got.ListenAddress != netip.MustParseAddr("0.0.0.0") {
		t.Errorf("ListenAddress = %v, want 0.0.0.0", got.ListenAddress)
	}
	if want := []Listener{{ProtocolUDP, 443}}; !reflect.DeepEqual(got.Transport, want) {
		t.Errorf("Transport = %v, want %v", got.Transport, want)
	}
	if want := []string{"AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"}; !reflect.DeepEqual(got.DataCiphers, want) {
		t.Errorf("DataCiphers = %v, want %v", got.DataCiphers, want)
	}
	if want := (TUN{Name: "cvpn0", MTU: 1500}); got.TUN != want {
		t.Errorf("TUN = %+v, want %+v", got.TUN, want)
	}
	if want := (NAT{MaxMappings: 65536, MaxMappingsPerClient: 64}); got.NAT != want {
		t.Errorf("NAT = %+v, want %+v", got.NAT, want)
	}
	if !got.SplitTunnel {
		t.Error("SplitTunnel = false, want true")
	}
	if got.AllowHostAccess {
		t.Error("AllowHostAccess = true, want false: the host is no destination unless the file says so")
	}
	if want := (Keepalive{Ping: 10 * time.Second, PingRestart: 60 * time.Second}); got.Keepalive != want {
		t.Errorf("Keepalive = %+v, want %+v", got.Keepalive, want)
	}
	if want := (ControlChannel{TLSAuthKeyDirection: KeyDirectionBidirectional, TLSAuthDigest: DigestSHA1}); got.ControlChannel != want {
		t.Errorf("ControlChannel = %+v, want %+v", got.ControlChannel, want)
	}
	if got.SessionTimeout != 24*time.Hour || got.BandwidthLimitMbps != 10 || got.Reneg != time.Hour {
		t.Errorf("SessionTimeout %v BandwidthLimitMbps %v Reneg %v, want 24h 10 1h", got.SessionTimeout, got.BandwidthLimitMbps, got.Reneg)
	}
	if got.Description != "" || got.RemoteHostname != "" || got.Routes != nil || got.AuthorizationRules != nil ||
		got.DNSServers != nil || got.ClientLoginBanner != "" || got.BandwidthLimits != nil ||
		got.ConnectionLog != (ConnectionLog{}) || got.Admin != (Admin{Socket: DefaultAdminSocket}) || got.Metrics != (Metrics{}) || got.Authentication.Certificate.CRLFile != "" ||
		got.Authentication.Directory != nil || got.Authentication.MFA != nil || got.ClientConnectHandler != nil ||
		got.Authentication.Federated != nil || got.Portal != nil {
		t.Errorf("optional keys not empty: %+v", got)
	}
	if got.StateDir != DefaultStateDir {
		t.Errorf("StateDir = %q, want %q", got.StateDir, DefaultStateDir)
	}
	// The defaults are not shared between endpoints.
	got.DataCiphers[0] = "x"
	again, err := Load("testdata/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if again.DataCiphers[0] != CipherAES256GCM {
		t.Error("default DataCiphers slice is shared between loads")
	}
}

// base is a valid endpoint file; each rule case edits it. Lines:
//
//	1 client_cidr_block       9 target_network
//	2 vpc_cidr_blocks        10   interface
//	3 server_certificate     11   snat_address
//	4   cert_file            12 routes
//	5   key_file             13   - destination_cidr_block
//	6 authentication         14 authorization_rules
//	7   certificate          15   - target_network_cidr
//	8     client_root_ca_file 16     access_group_id
//
// Appended keys start at line 17.
const base = `client_cidr_block: 10.2.0.0/22
vpc_cidr_blocks: [10.0.0.0/16]
server_certificate:
  cert_file: pki/server.crt
  key_file: pki/server.key
authentication:
  certificate:
    client_root_ca_file: pki/ca.crt
target_network:
  interface: eth1
  snat_address: 10.0.1.2
routes:
  - destination_cidr_block: 10.0.1.0/24
authorization_rules:
  - target_network_cidr: 10.0.0.0/16
    access_group_id: dev
`

// metrics is off when absent (or null), on at 127.0.0.1:9464 when present without an address, and where
// listen_address says otherwise; a udp listener on the same port is no conflict.
func TestMetrics(t *testing.T) {
	for _, c := range []struct {
		append string
		want   netip.AddrPort
	}{
		{"", netip.AddrPort{}},
		{"metrics:\n", netip.AddrPort{}}, // null is absent, as for every key
		{"metrics: {}\n", netip.MustParseAddrPort("127.0.0.1:9464")},
		{"metrics: {listen_address: \"[::1]:9100\"}\n", netip.MustParseAddrPort("[::1]:9100")},
		{"transport: [{protocol: udp, port: 9464}]\nmetrics: {}\n", netip.MustParseAddrPort("127.0.0.1:9464")},
	} {
		ep, err := Parse([]byte(base+c.append), "testdata")
		if err != nil {
			t.Errorf("%q: %v", c.append, err)
			continue
		}
		if ep.Metrics.ListenAddress != c.want {
			t.Errorf("%q: metrics.listen_address = %v, want %v", c.append, ep.Metrics.ListenAddress, c.want)
		}
	}
}

func TestBaseIsValid(t *testing.T) {
	if _, err := Parse([]byte(base), "testdata"); err != nil {
		t.Fatalf("base: %v", err)
	}
}

func TestRules(t *testing.T) {
	tests := []struct {
		name    string
		replace [2]string // replace [0] with [1] in base (the first line containing it)
		append  string    // added at the end of base
		path    string
		line    int
		msg     string // substring of Msg
	}{
		// client_cidr_block
		{name: "client cidr host bits", replace: [2]string{"client_cidr_block: 10.2.0.0/22", "client_cidr_block: 10.2.0.1/22"},
			path: "client_cidr_block", line: 1, msg: "10.2.0.1/22 has host bits set (did you mean 10.2.0.0/22?)"},
		{name: "client cidr too small", replace: [2]string{"10.2.0.0/22", "10.2.0.0/24"},
			path: "client_cidr_block", line: 1, msg: "prefix length must be /12 to /22, got /24"},
		{name: "client cidr too large", replace: [2]string{"10.2.0.0/22", "10.0.0.0/11"},
			path: "client_cidr_block", line: 1, msg: "got /11"},
		{name: "client cidr IPv6", replace: [2]string{"10.2.0.0/22", "fd00::/64"},
			path: "client_cidr_block", line: 1, msg: "not IPv4"},
		{name: "client cidr is an address", replace: [2]string{"10.2.0.0/22", "10.2.0.0"},
			path: "client_cidr_block", line: 1, msg: "is an address, not a CIDR block (did you mean 10.2.0.0/32?)"},
		{name: "client cidr garbage", replace: [2]string{"10.2.0.0/22", "tenish"},
			path: "client_cidr_block", line: 1, msg: `"tenish" is not a CIDR block`},
		{name: "client cidr overlaps vpc", replace: [2]string{"10.2.0.0/22", "10.0.4.0/22"},
			path: "client_cidr_block", line: 1, msg: "10.0.4.0/22 overlaps vpc_cidr_blocks[0] 10.0.0.0/16"},
		{name: "client cidr missing", replace: [2]string{"client_cidr_block: 10.2.0.0/22\n", ""},
			path: "client_cidr_block", line: 0, msg: "required"},
		{name: "client cidr null", replace: [2]string{"client_cidr_block: 10.2.0.0/22", "client_cidr_block:"},
			path: "client_cidr_block", line: 1, msg: "required"},

		// vpc_cidr_blocks
		{name: "vpc missing", replace: [2]string{"vpc_cidr_blocks: [10.0.0.0/16]\n", ""},
			path: "vpc_cidr_blocks", line: 0, msg: "required"},
		{name: "vpc empty", replace: [2]string{"[10.0.0.0/16]", "[]"},
			path: "vpc_cidr_blocks", line: 2, msg: "at least one"},
		{name: "vpc not a list", replace: [2]string{"[10.0.0.0/16]", "10.0.0.0/16"},
			path: "vpc_cidr_blocks", line: 2, msg: `must be a list, got the string "10.0.0.0/16"`},
		{name: "vpc host bits", replace: [2]string{"[10.0.0.0/16]", "[10.0.0.0/16, 10.1.0.1/16]"},
			path: "vpc_cidr_blocks[1]", line: 2, msg: "did you mean 10.1.0.0/16?"},
		{name: "vpc duplicate", replace: [2]string{"[10.0.0.0/16]", "[10.0.0.0/16, 10.0.0.0/16]"},
			path: "vpc_cidr_blocks[1]", line: 2, msg: "already listed at vpc_cidr_blocks[0]"},

		// listen_address
		{name: "listen address", append: "listen_address: 0.0.0.0/0\n",
			path: "listen_address", line: 17, msg: `"0.0.0.0/0" is not an IP address`},

		// transport
		{name: "transport protocol", append: "transport: [{protocol: sctp, port: 443}]\n",
			path: "transport[0].protocol", line: 17, msg: `"sctp" is not udp or tcp`},
		{name: "transport port zero", append: "transport:\n  - protocol: udp\n    port: 0\n",
			path: "transport[0].port", line: 19, msg: "0 is outside 1..65535"},
		{name: "transport port too big", append: "transport: [{protocol: tcp, port: 65536}]\n",
			path: "transport[0].port", line: 17, msg: "65536 is outside 1..65535"},
		{name: "transport port not a number", append: "transport: [{protocol: tcp, port: https}]\n",
			path: "transport[0].port", line: 17, msg: `must be an integer, got the string "https"`},
		{name: "transport port missing", append: "transport: [{protocol: tcp}]\n",
			path: "transport[0].port", line: 17, msg: "required"},
		{name: "transport duplicate", append: "transport:\n  - {protocol: udp, port: 443}\n  - {protocol: UDP, port: 443}\n",
			path: "transport[1]", line: 19, msg: "udp/443 is already listed at transport[0]"},
		{name: "transport empty", append: "transport: []\n",
			path: "transport", line: 17, msg: "at least one"},

		// server_certificate
		{name: "server certificate missing", replace: [2]string{"server_certificate:\n  cert_file: pki/server.crt\n  key_file: pki/server.key\n", ""},
			path: "server_certificate", line: 0, msg: "required"},
		{name: "server key missing", replace: [2]string{"  key_file: pki/server.key\n", ""},
			path: "server_certificate.key_file", line: 3, msg: "required"},
		{name: "server cert file absent", replace: [2]string{"pki/server.crt", "pki/nope.crt"},
			path: "server_certificate.cert_file", line: 4, msg: "pki/nope.crt (resolved to " + abs(t, "testdata/pki/nope.crt") + "): no such file or directory"},
		{name: "server cert is a directory", replace: [2]string{"pki/server.crt", "pki"},
			path: "server_certificate.cert_file", line: 4, msg: "is not a regular file"},
		{name: "server cert empty name", replace: [2]string{"pki/server.crt", `""`},
			path: "server_certificate.cert_file", line: 4, msg: "must not be empty"},
		{name: "server certificate not a mapping", replace: [2]string{"server_certificate:\n  cert_file: pki/server.crt\n  key_file: pki/server.key\n", "server_certificate: pki/server.crt\n"},
			path: "server_certificate", line: 3, msg: "must be a mapping of keys"},

		// control_channel
		{name: "tls-crypt key absent", append: "control_channel: {tls_crypt_key_file: pki/nope.key}\n",
			path: "control_channel.tls_crypt_key_file", line: 17, msg: "no such file or directory"},

		// authentication
		{name: "authentication missing", replace: [2]string{"authentication:\n  certificate:\n    client_root_ca_file: pki/ca.crt\n", ""},
			path: "authentication", line: 0, msg: "required"},
		{name: "certificate authentication missing", replace: [2]string{"authentication:\n  certificate:\n    client_root_ca_file: pki/ca.crt\n", "authentication: {}\n"},
			path: "authentication.certificate", line: 6, msg: "required unless directory or federated is set"},
		{name: "client root CA missing", replace: [2]string{"    client_root_ca_file: pki/ca.crt\n", ""},
			path: "authentication.certificate", line: 7, msg: "required"},
		{name: "client root CA absent", replace: [2]string{"pki/ca.crt", "pki/nope.crt"},
			path: "authentication.certificate.client_root_ca_file", line: 8, msg: "no such file or directory"},

		// data_ciphers
		{name: "cipher unknown", append: "data_ciphers: [AES-256-GCM, BF-CBC]\n",
			path: "data_ciphers[1]", line: 17, msg: `"BF-CBC" is not supported (supported: AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305)`},
		{name: "cipher duplicate", append: "data_ciphers: [AES-256-GCM, aes-256-gcm]\n",
			path: "data_ciphers[1]", line: 17, msg: "AES-256-GCM is already listed at data_ciphers[0]"},
		{name: "ciphers empty", append: "data_ciphers: []\n",
			path: "data_ciphers", line: 17, msg: "at least one"},

		// target_network
		{name: "interface missing", replace: [2]string{"  interface: eth1\n", ""},
			path: "target_network.interface", line: 9, msg: "required"},
		{name: "interface too long", replace: [2]string{"interface: eth1", "interface: averyveryverylongname"},
			path: "target_network.interface", line: 10, msg: "longer than 15 bytes"},
		{name: "interface with slash", replace: [2]string{"interface: eth1", "interface: eth/1"},
			path: "target_network.interface", line: 10, msg: "not a valid interface name"},
		{name: "snat missing", replace: [2]string{"  snat_address: 10.0.1.2\n", ""},
			path: "target_network.snat_address", line: 9, msg: "required"},
		{name: "snat IPv6", replace: [2]string{"snat_address: 10.0.1.2", "snat_address: fd00::2"},
			path: "target_network.snat_address", line: 11, msg: "fd00::2 is not an IPv4 address"},
		{name: "snat outside vpc", replace: [2]string{"snat_address: 10.0.1.2", "snat_address: 10.1.0.2"},
			path: "target_network.snat_address", line: 11, msg: "10.1.0.2 is not inside any of vpc_cidr_blocks (10.0.0.0/16)"},

		// tun
		{name: "mtu too small", append: "tun:\n  mtu: 100\n",
			path: "tun.mtu", line: 18, msg: "100 is outside 576..9000"},
		{name: "mtu too big", append: "tun: {mtu: 9001}\n",
			path: "tun.mtu", line: 17, msg: "9001 is outside 576..9000"},
		{name: "tun name invalid", append: "tun: {name: 'a b'}\n",
			path: "tun.name", line: 17, msg: "not a valid interface name"},
		{name: "tun name is the target interface", append: "tun: {name: eth1}\n",
			path: "tun.name", line: 17, msg: `"eth1" is also target_network.interface`},
		{name: "tun not a mapping", append: "tun: 5\n",
			path: "tun", line: 17, msg: "must be a mapping of keys, got the integer 5"},

		// nat
		{name: "nat table too small", append: "nat: {max_mappings: 100}\n",
			path: "nat.max_mappings", line: 17, msg: "100 is outside 1024..4194304"},
		{name: "nat table too big", append: "nat: {max_mappings: 4194305}\n",
			path: "nat.max_mappings", line: 17, msg: "4194305 is outside 1024..4194304"},
		{name: "nat quota zero", append: "nat: {max_mappings_per_client: 0}\n",
			path: "nat.max_mappings_per_client", line: 17, msg: "0 is outside 1..4194304"},
		{name: "nat quota not a number", append: "nat: {max_mappings_per_client: lots}\n",
			path: "nat.max_mappings_per_client", line: 17, msg: `must be an integer, got the string "lots"`},
		{name: "nat quota above the default table", append: "nat: {max_mappings_per_client: 70000}\n",
			path: "nat.max_mappings_per_client", line: 17, msg: "70000 is more than nat.max_mappings (65536), which all clients share"},
		{name: "nat quota above the table", append: "nat:\n  max_mappings: 2048\n  max_mappings_per_client: 4096\n",
			path: "nat.max_mappings_per_client", line: 19, msg: "4096 is more than nat.max_mappings (2048)"},
		{name: "nat unknown key", append: "nat: {max_flows: 10}\n",
			path: "nat.max_flows", line: 17, msg: `unknown key "max_flows"`},
		{name: "nat not a mapping", append: "nat: 64\n",
			path: "nat", line: 17, msg: "must be a mapping of keys, got the integer 64"},

		// routes
		{name: "route host bits", replace: [2]string{"  - destination_cidr_block: 10.0.1.0/24\n",
			"  - destination_cidr_block: 10.0.1.0/24\n  - destination_cidr_block: 10.0.2.0/24\n  - destination_cidr_block: 10.0.1.1/24\n"},
			path: "routes[2].destination_cidr_block", line: 15, msg: "10.0.1.1/24 has host bits set (did you mean 10.0.1.0/24?)"},
		{name: "route overlaps client cidr", replace: [2]string{"destination_cidr_block: 10.0.1.0/24", "destination_cidr_block: 10.2.1.0/24"},
			path: "routes[0].destination_cidr_block", line: 13, msg: "10.2.1.0/24 overlaps client_cidr_block 10.2.0.0/22"},
		{name: "route default overlaps client cidr", replace: [2]string{"destination_cidr_block: 10.0.1.0/24", "destination_cidr_block: 0.0.0.0/0"},
			path: "routes[0].destination_cidr_block", line: 13, msg: "split_tunnel: false"},
		{name: "route duplicate", replace: [2]string{"  - destination_cidr_block: 10.0.1.0/24\n",
			"  - destination_cidr_block: 10.0.1.0/24\n  - destination_cidr_block: 10.0.1.0/24\n"},
			path: "routes[1].destination_cidr_block", line: 14, msg: "already routed by routes[0]"},
		{name: "route destination missing", replace: [2]string{"  - destination_cidr_block: 10.0.1.0/24\n", "  - description: app\n"},
			path: "routes[0].destination_cidr_block", line: 13, msg: "required"},
		{name: "routes not a list", replace: [2]string{"routes:\n  - destination_cidr_block: 10.0.1.0/24\n", "routes: 10.0.1.0/24\n"},
			path: "routes", line: 12, msg: "must be a list"},
		{name: "route target unknown", replace: [2]string{"  - destination_cidr_block: 10.0.1.0/24\n", "  - destination_cidr_block: 10.0.1.0/24\n    target: subnet-0a1b2c\n"},
			path: "routes[0].target", line: 14, msg: `"subnet-0a1b2c" is not a route target; the only one is "local"`},
		{name: "route target in capitals", replace: [2]string{"  - destination_cidr_block: 10.0.1.0/24\n", "  - {destination_cidr_block: 10.2.0.0/22, target: LOCAL}\n"},
			path: "routes[0].target", line: 13, msg: `"LOCAL" is not a route target`},
		{name: "route target not a string", replace: [2]string{"  - destination_cidr_block: 10.0.1.0/24\n", "  - destination_cidr_block: 10.2.0.0/22\n    target: [local]\n"},
			path: "routes[0].target", line: 14, msg: "must be a string, got a list"},
		{name: "local route to the VPC", replace: [2]string{"  - destination_cidr_block: 10.0.1.0/24\n", "  - {destination_cidr_block: 10.0.1.0/24, target: local}\n"},
			path: "routes[0].target", line: 13, msg: `"local" routes only a client block: destination_cidr_block is 10.0.1.0/24, client_cidr_block is 10.2.0.0/22`},
		{name: "local route to part of the client cidr", replace: [2]string{"  - destination_cidr_block: 10.0.1.0/24\n",
			"  - destination_cidr_block: 10.0.1.0/24\n  - destination_cidr_block: 10.2.0.0/23\n    target: local\n"},
			path: "routes[1].target", line: 15, msg: "destination_cidr_block is 10.2.0.0/23, client_cidr_block is 10.2.0.0/22"},
		{name: "client cidr routed without target local", replace: [2]string{"destination_cidr_block: 10.0.1.0/24", "destination_cidr_block: 10.2.0.0/22"},
			path: "routes[0].destination_cidr_block", line: 13, msg: "for client-to-client traffic add target: local to a route to exactly 10.2.0.0/22"},
		{name: "local route and a plain route to the client cidr", replace: [2]string{"  - destination_cidr_block: 10.0.1.0/24\n",
			"  - {destination_cidr_block: 10.2.0.0/22, target: local}\n  - destination_cidr_block: 10.2.0.0/22\n"},
			path: "routes[1].destination_cidr_block", line: 14, msg: "10.2.0.0/22 is already routed by routes[0]"},

		// authorization_rules
		{name: "rule with group and all", replace: [2]string{"    access_group_id: dev\n", "    access_group_id: dev\n    authorize_all_groups: true\n"},
			path: "authorization_rules[0]", line: 15, msg: "not both"},
		{name: "rule with neither", replace: [2]string{"    access_group_id: dev\n", ""},
			path: "authorization_rules[0]", line: 15, msg: "needs access_group_id or authorize_all_groups: true"},
		{name: "rule with all false", replace: [2]string{"    access_group_id: dev\n", "    authorize_all_groups: false\n"},
			path: "authorization_rules[0]", line: 15, msg: "needs access_group_id or authorize_all_groups: true"},
		{name: "rule all not a bool", replace: [2]string{"    access_group_id: dev\n", "    authorize_all_groups: yes\n"},
			path: "authorization_rules[0].authorize_all_groups", line: 16, msg: `must be true or false, got the string "yes"`},
		{name: "rule empty group", replace: [2]string{"access_group_id: dev", `access_group_id: ""`},
			path: "authorization_rules[0].access_group_id", line: 16, msg: "must not be empty"},
		{name: "rule cidr host bits", replace: [2]string{"target_network_cidr: 10.0.0.0/16", "target_network_cidr: 10.0.0.1/16"},
			path: "authorization_rules[0].target_network_cidr", line: 15, msg: "did you mean 10.0.0.0/16?"},
		{name: "rule cidr missing", replace: [2]string{"  - target_network_cidr: 10.0.0.0/16\n    access_group_id: dev\n", "  - access_group_id: dev\n"},
			path: "authorization_rules[0].target_network_cidr", line: 15, msg: "required"},
		{name: "rule duplicate", append: "  - {target_network_cidr: 10.0.0.0/16, access_group_id: dev, description: again}\n",
			path: "authorization_rules[1]", line: 17, msg: "same network and group as authorization_rules[0]"},

		// split_tunnel
		{name: "split tunnel not a bool", append: "split_tunnel: maybe\n",
			path: "split_tunnel", line: 17, msg: "must be true or false"},

		// allow_host_access
		{name: "allow host access not a bool", append: "allow_host_access: sometimes\n",
			path: "allow_host_access", line: 17, msg: "must be true or false"},

		// keepalive
		{name: "keepalive restart not above ping", append: "keepalive: {ping_seconds: 60, ping_restart_seconds: 60}\n",
			path: "keepalive.ping_restart_seconds", line: 17, msg: "60 must be greater than ping_seconds (60)"},
		{name: "keepalive ping above default restart", append: "keepalive:\n  ping_seconds: 90\n",
			path: "keepalive.ping_restart_seconds", line: 17, msg: "60 (the default) must be greater than ping_seconds (90)"},
		{name: "keepalive ping zero", append: "keepalive:\n  ping_seconds: 0\n",
			path: "keepalive.ping_seconds", line: 18, msg: "0 is outside 1..86400"},

		// remote_hostname
		{name: "remote hostname with space", append: "remote_hostname: vpn example.com\n",
			path: "remote_hostname", line: 17, msg: `"vpn example.com" is not an IP address or DNS name: ' ' is not allowed`},
		{name: "remote hostname mistyped address", append: "remote_hostname: 192.0.2.300\n",
			path: "remote_hostname", line: 17, msg: "last label is all digits"},
		{name: "remote hostname unspecified", append: "remote_hostname: 0.0.0.0\n",
			path: "remote_hostname", line: 17, msg: "not an address clients can dial"},
		{name: "remote hostname long label", append: "remote_hostname: " + strings.Repeat("a", 64) + ".com\n",
			path: "remote_hostname", line: 17, msg: "longer than 63 bytes"},

		// control_channel
		{name: "tls-auth and tls-crypt", append: "control_channel:\n  tls_crypt_key_file: pki/tc.key\n  tls_auth_key_file: pki/ta.key\n",
			path: "control_channel.tls_auth_key_file", line: 19, msg: "not both"},
		{name: "tls-auth key absent", append: "control_channel: {tls_auth_key_file: pki/nope.key}\n",
			path: "control_channel.tls_auth_key_file", line: 17, msg: "no such file or directory"},
		{name: "tls-auth direction 2", append: "control_channel: {tls_auth_key_file: pki/ta.key, tls_auth_key_direction: 2}\n",
			path: "control_channel.tls_auth_key_direction", line: 17, msg: "must be 0 or 1 (leave it out for a bidirectional key), got the integer 2"},
		{name: "tls-auth direction without key", append: "control_channel: {tls_crypt_key_file: pki/tc.key, tls_auth_key_direction: 0}\n",
			path: "control_channel.tls_auth_key_direction", line: 17, msg: "applies only with tls_auth_key_file"},
		{name: "tls-auth digest unknown", append: "control_channel: {tls_auth_key_file: pki/ta.key, tls_auth_digest: MD5}\n",
			path: "control_channel.tls_auth_digest", line: 17, msg: `"MD5" is not supported (supported: SHA1, SHA256, SHA512)`},
		{name: "tls-auth digest without key", append: "control_channel:\n  tls_auth_digest: SHA256\n",
			path: "control_channel.tls_auth_digest", line: 18, msg: "applies only with tls_auth_key_file"},
		{name: "tls-crypt-v2 key absent", append: "control_channel: {tls_crypt_v2_server_key_file: pki/nope.key}\n",
			path: "control_channel.tls_crypt_v2_server_key_file", line: 17, msg: "no such file or directory"},

		// crl_file
		{name: "crl absent", replace: [2]string{"    client_root_ca_file: pki/ca.crt\n", "    client_root_ca_file: pki/ca.crt\n    crl_file: pki/nope.pem\n"},
			path: "authentication.certificate.crl_file", line: 9, msg: "no such file or directory"},

		// dns_servers
		{name: "dns three servers", append: "dns_servers: [10.0.0.2, 10.0.0.3, 10.0.0.4]\n",
			path: "dns_servers[2]", line: 17, msg: "is the 3rd IPv4 server; at most 2 of each family can be pushed"},
		{name: "dns three IPv6 servers", append: "dns_servers: [10.0.0.2, fd00::53, fd00::54, 10.0.0.3, fd00::55]\n",
			path: "dns_servers[4]", line: 17, msg: "is the 3rd IPv6 server"},
		{name: "dns IPv4-mapped", append: "dns_servers: ['::ffff:10.0.0.2']\n",
			path: "dns_servers[0]", line: 17, msg: "::ffff:10.0.0.2 is an IPv4-mapped IPv6 address; write 10.0.0.2"},
		{name: "dns not an address", append: "dns_servers:\n  - 10.0.0.2\n  - resolver\n",
			path: "dns_servers[1]", line: 19, msg: `"resolver" is not an IP address`},
		{name: "dns duplicate", append: "dns_servers: [10.0.0.2, 10.0.0.2]\n",
			path: "dns_servers[1]", line: 17, msg: "already listed at dns_servers[0]"},
		{name: "dns unspecified", append: "dns_servers: [0.0.0.0]\n",
			path: "dns_servers[0]", line: 17, msg: "not a unicast address"},

		// session_timeout_hours
		{name: "session timeout 9", append: "session_timeout_hours: 9\n",
			path: "session_timeout_hours", line: 17, msg: "9 is not 8, 10, 12 or 24"},
		{name: "session timeout 48", append: "session_timeout_hours: 48\n",
			path: "session_timeout_hours", line: 17, msg: "48 is not 8, 10, 12 or 24"},
		{name: "session timeout text", append: "session_timeout_hours: 24h\n",
			path: "session_timeout_hours", line: 17, msg: "must be an integer"},

		// client_login_banner
		{name: "banner too long", append: "client_login_banner: " + strings.Repeat("é", 1401) + "\n",
			path: "client_login_banner", line: 17, msg: "is 1401 characters long; at most 1400 are allowed"},
		{name: "banner control character", append: "client_login_banner: \"hi\\athere\"\n",
			path: "client_login_banner", line: 17, msg: "control character U+0007 at byte 2"},
		{name: "banner empty", append: "client_login_banner: ''\n",
			path: "client_login_banner", line: 17, msg: "must not be empty"},

		// bandwidth_limit_mbps and bandwidth_limits
		{name: "bandwidth negative", append: "bandwidth_limit_mbps: -1\n",
			path: "bandwidth_limit_mbps", line: 17, msg: "-1 is negative (0 means no limit)"},
		{name: "bandwidth text", append: "bandwidth_limit_mbps: 10M\n",
			path: "bandwidth_limit_mbps", line: 17, msg: `must be a number, got the string "10M"`},
		{name: "bandwidth infinite", append: "bandwidth_limit_mbps: .inf\n",
			path: "bandwidth_limit_mbps", line: 17, msg: "must be a finite number"},
		{name: "bandwidth huge", append: "bandwidth_limit_mbps: 1e6\n",
			path: "bandwidth_limit_mbps", line: 17, msg: "1e6 is more than 100000"},
		{name: "group bandwidth duplicate", append: "bandwidth_limits:\n  - {access_group_id: dev, mbps: 5}\n  - {access_group_id: dev, mbps: 6}\n",
			path: "bandwidth_limits[1].access_group_id", line: 19, msg: `group "dev" already has a limit at bandwidth_limits[0]`},
		{name: "group bandwidth missing mbps", append: "bandwidth_limits: [{access_group_id: dev}]\n",
			path: "bandwidth_limits[0].mbps", line: 17, msg: "required"},
		{name: "group bandwidth negative", append: "bandwidth_limits: [{access_group_id: dev, mbps: -2.5}]\n",
			path: "bandwidth_limits[0].mbps", line: 17, msg: "negative"},

		// reneg_seconds
		{name: "reneg too short", append: "reneg_seconds: 5\n",
			path: "reneg_seconds", line: 17, msg: "5 is shorter than 10 seconds; use 0 to turn renegotiation off"},
		{name: "reneg negative", append: "reneg_seconds: -1\n",
			path: "reneg_seconds", line: 17, msg: "-1 is outside 0..604800"},
		// max_connections_per_user
		{name: "connections per user negative", append: "max_connections_per_user: -1\n",
			path: "max_connections_per_user", line: 17, msg: "-1 is outside 0..1048576"},
		{name: "connections per user not a number", append: "max_connections_per_user: many\n",
			path: "max_connections_per_user", line: 17, msg: "many"},

		// connection_log placeholder and admin
		{name: "connection log without file", append: "connection_log:\n  enabled: true\n",
			path: "connection_log.file", line: 17, msg: "required when enabled is true"},
		{name: "connection log in a missing directory", append: "connection_log: {file: nodir/conn.log}\n",
			path: "connection_log.file", line: 17, msg: "no such file or directory"},
		{name: "connection log is a directory", append: "connection_log: {file: pki}\n",
			path: "connection_log.file", line: 17, msg: "is not a regular file"},
		{name: "admin socket empty", append: "admin: {socket: \"\"}\n",
			path: "admin.socket", line: 17, msg: "empty"},
		{name: "admin socket too long", append: "admin: {socket: /run/" + strings.Repeat("x", 120) + "}\n",
			path: "admin.socket", line: 17, msg: "a unix socket's path is at most 107"},
		{name: "admin socket is a directory", append: "admin: {socket: pki}\n",
			path: "admin.socket", line: 17, msg: "exists and is not a socket"},
		{name: "admin listen address is gone", append: "admin: {listen_address: 127.0.0.1:9443}\n",
			path: "admin.listen_address", line: 17, msg: `unknown key "listen_address"`},
		// metrics
		{name: "metrics address without port", append: "metrics: {listen_address: 127.0.0.1}\n",
			path: "metrics.listen_address", line: 17, msg: `"127.0.0.1" is not an IP:port like 127.0.0.1:9464`},
		{name: "metrics port zero", append: "metrics: {listen_address: \"127.0.0.1:0\"}\n",
			path: "metrics.listen_address", line: 17, msg: "port 0 is outside 1..65535"},
		{name: "metrics unknown key", append: "metrics: {path: /metrics}\n",
			path: "metrics.path", line: 17, msg: `unknown key "path"`},
		{name: "metrics on a tcp listener", append: "transport: [{protocol: tcp, port: 9464}]\nmetrics: {}\n",
			path: "metrics", line: 18, msg: "127.0.0.1:9464 is also the tcp/9464 listener's socket (0.0.0.0:9464)"},
		{name: "metrics on a tcp listener, explicit", append: "transport: [{protocol: tcp, port: 443}]\nmetrics:\n  listen_address: 0.0.0.0:443\n",
			path: "metrics.listen_address", line: 19, msg: "0.0.0.0:443 is also the tcp/443 listener's socket"},

		// Unknown and duplicate keys.
		{name: "unknown top-level key", append: "clinet_cidr_block: 10.3.0.0/22\n",
			path: "clinet_cidr_block", line: 17, msg: `unknown key "clinet_cidr_block" (did you mean "client_cidr_block"?)`},
		{name: "unknown key in AWS spelling", append: "SplitTunnel: true\n",
			path: "SplitTunnel", line: 17, msg: `unknown key "SplitTunnel" (did you mean "split_tunnel"?)`},
		{name: "unknown nested key", replace: [2]string{"  interface: eth1\n", "  interface: eth1\n  gateway: 10.0.1.1\n"},
			path: "target_network.gateway", line: 11, msg: `unknown key "gateway"`},
		{name: "unknown key in list item", replace: [2]string{"    access_group_id: dev\n", "    access_group_id: dev\n    effect: allow\n"},
			path: "authorization_rules[0].effect", line: 17, msg: `unknown key "effect"`},
		{name: "duplicate key", append: "client_cidr_block: 10.3.0.0/22\n",
			path: "client_cidr_block", line: 17, msg: "duplicate key (first set at line 1)"},
		{name: "merge key", append: "tun:\n  <<: {mtu: 1400}\n",
			path: "tun.<<", line: 18, msg: "merge keys"},

		// The file as a whole.
		{name: "yaml syntax", append: "tun: {mtu: 1400\n",
			path: "", line: 17, msg: "invalid YAML"},
		{name: "two documents", append: "---\ndescription: x\n",
			path: "", line: 17, msg: "more than one YAML document"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := base
			if tc.replace[0] != "" {
				if !strings.Contains(doc, tc.replace[0]) {
					t.Fatalf("base does not contain %q", tc.replace[0])
				}
				doc = strings.Replace(doc, tc.replace[0], tc.replace[1], 1)
			}
			doc += tc.append
			ep, err := Parse([]byte(doc), "testdata")
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", ep)
			}
			if ep != nil {
				t.Errorf("Parse returned an endpoint with an error")
			}
			errs := validationErrors(t, err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1:\n%v", len(errs), err)
			}
			got := errs[0]
			if got.Path != tc.path || got.Line != tc.line || !strings.Contains(got.Msg, tc.msg) {
				t.Errorf("got  path %q line %d msg %q\nwant path %q line %d msg containing %q", got.Path, got.Line, got.Msg, tc.path, tc.line, tc.msg)
			}
		})
	}
}

func TestAllErrorsReported(t *testing.T) {
	doc := strings.NewReplacer(
		"10.2.0.0/22", "10.2.0.1/22",
		"interface: eth1", "interface: ''",
		"access_group_id: dev", "access_group_id: dev\n    authorize_all_groups: true",
	).Replace(base) + "colour: blue\n"
	doc = strings.Replace(doc, "server_certificate:\n  cert_file: pki/server.crt\n  key_file: pki/server.key\n", "", 1)
	_, err := Parse([]byte(doc), "testdata")
	errs := validationErrors(t, err)
	type pl struct {
		path string
		line int
	}
	var got []pl
	for _, e := range errs {
		got = append(got, pl{e.Path, e.Line})
	}
	want := []pl{
		{"client_cidr_block", 1},
		{"target_network.interface", 7},
		{"authorization_rules[0]", 12},
		{"colour", 15},
		{"server_certificate", 0},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors (path, line) =\n%v\nwant\n%v\nfull error:\n%v", got, want, err)
	}
}

func TestLoadErrorFormat(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "pki"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"server.crt", "server.key", "ca.crt"} {
		if err := os.WriteFile(filepath.Join(dir, "pki", f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "endpoint.yaml")
	doc := strings.Replace(base, "  - destination_cidr_block: 10.0.1.0/24\n",
		"  - destination_cidr_block: 10.0.1.0/24\n  - destination_cidr_block: 10.0.2.0/24\n  - destination_cidr_block: 10.0.1.1/24\n", 1)
	doc = strings.Replace(doc, "vpc_cidr_blocks: [10.0.0.0/16]\n", "", 1)
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	want := path + ":14: routes[2].destination_cidr_block: 10.0.1.1/24 has host bits set (did you mean 10.0.1.0/24?)\n" +
		path + ": vpc_cidr_blocks: required (the private networks behind the endpoint)"
	if err == nil || err.Error() != want {
		t.Errorf("Load error =\n%v\nwant\n%s", err, want)
	}

	// From Parse there is no file name.
	_, err = Parse([]byte("tun: {mtu: 1}\n"), dir)
	errs := validationErrors(t, err)
	if got, want := errs[0].Error(), "line 1: tun.mtu: 1 is outside 576..9000"; got != want {
		t.Errorf("Parse error = %q, want %q", got, want)
	}

	// Relative paths resolve against the file's directory, not the
	// working directory.
	if err := os.WriteFile(path, []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	ep, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if want := filepath.Join(dir, "pki", "server.crt"); ep.ServerCertificate.CertFile != want {
		t.Errorf("CertFile = %q, want %q", ep.ServerCertificate.CertFile, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/nope.yaml")
	if err == nil || !strings.Contains(err.Error(), "testdata/nope.yaml") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestNotAMapping(t *testing.T) {
	for _, doc := range []string{"- a\n- b\n", "just a string\n", "42\n"} {
		_, err := Parse([]byte(doc), "testdata")
		errs := validationErrors(t, err)
		if len(errs) != 1 || errs[0].Path != "" || errs[0].Line != 1 || !strings.Contains(errs[0].Msg, "must be a mapping") {
			t.Errorf("Parse(%q) = %v", doc, err)
		}
	}
}

func TestEmptyFile(t *testing.T) {
	_, err := Parse(nil, "testdata")
	var paths []string
	for _, e := range validationErrors(t, err) {
		paths = append(paths, e.Path)
	}
	want := []string{"client_cidr_block", "vpc_cidr_blocks", "server_certificate", "authentication", "target_network"}
	if !reflect.DeepEqual(paths, want) {
		t.Errorf("empty file: paths %v, want %v", paths, want)
	}
}

func TestAliases(t *testing.T) {
	doc := strings.Replace(base, "vpc_cidr_blocks: [10.0.0.0/16]", "vpc_cidr_blocks: &vpc [10.0.0.0/16]", 1) +
		"tun: {name: &n vpn0}\ndescription: *n\n"
	ep, err := Parse([]byte(doc), "testdata")
	if err != nil {
		t.Fatal(err)
	}
	if ep.Description != "vpn0" {
		t.Errorf("Description = %q, want vpn0 (through an alias)", ep.Description)
	}
}

// TestSyntaxErrorLines pins the line numbers reported for YAML syntax errors
// to the line a user should look at.
func TestSyntaxErrorLines(t *testing.T) {
	tests := []struct {
		doc  string
		line int
	}{
		{"a: b: c\n", 1},
		{"description: x\ntun: {mtu: 1400\n", 2},
		{"description: x\nvpc_cidr_blocks: [10.0.0.0/16\n", 2},
		{"description: x\n\ttun: 1\n", 2},
		{"description: x\ndescription: 'unterminated\n", 2}, // where the scalar starts
		{"description: x\n  tun: 1\n", 2},
		{"description: x\ntun:\n  mtu: 1\n name: x\n", 4},
		{"description: *nope\n", 0},
	}
	for _, tc := range tests {
		_, err := Parse([]byte(tc.doc), "testdata")
		errs := validationErrors(t, err)
		if len(errs) != 1 || errs[0].Path != "" || errs[0].Line != tc.line || !strings.HasPrefix(errs[0].Msg, "invalid YAML: ") {
			t.Errorf("Parse(%q) = %v; want one invalid YAML error at line %d", tc.doc, err, tc.line)
		}
	}
}

func TestTLSAuthWithTLSCryptV2(t *testing.T) {
	doc := base + "control_channel:\n  tls_auth_key_file: pki/ta.key\n  tls_auth_key_direction: 0\n  tls_auth_digest: sha256\n" +
		"  tls_crypt_v2_server_key_file: pki/tc-v2.key\n"
	ep, err := Parse([]byte(doc), "testdata")
	if err != nil {
		t.Fatal(err)
	}
	want := ControlChannel{
		TLSAuthKeyFile:          abs(t, "testdata/pki/ta.key"),
		TLSAuthKeyDirection:     KeyDirectionNormal,
		TLSAuthDigest:           DigestSHA256,
		TLSCryptV2ServerKeyFile: abs(t, "testdata/pki/tc-v2.key"),
	}
	if ep.ControlChannel != want {
		t.Errorf("ControlChannel = %+v, want %+v", ep.ControlChannel, want)
	}
	// A tls-auth key without a direction is bidirectional.
	ep, err = Parse([]byte(base+"control_channel: {tls_auth_key_file: pki/ta.key}\n"), "testdata")
	if err != nil {
		t.Fatal(err)
	}
	if ep.ControlChannel.TLSAuthKeyDirection != KeyDirectionBidirectional || ep.ControlChannel.TLSAuthDigest != DigestSHA1 {
		t.Errorf("ControlChannel = %+v, want bidirectional SHA1", ep.ControlChannel)
	}
}

func TestKeyError(t *testing.T) {
	ep, err := Load("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := ep.KeyError("server_certificate.key_file", errors.New("key does not match")).Error()
	if want := "testdata/good.yaml:12: server_certificate.key_file: key does not match"; got != want {
		t.Errorf("KeyError = %q, want %q", got, want)
	}
	// A key that is not in the file has no line.
	got = ep.KeyError("tun.nope", errors.New("x")).Error()
	if want := "testdata/good.yaml: tun.nope: x"; got != want {
		t.Errorf("KeyError = %q, want %q", got, want)
	}
}

// TestLocalRoute: `target: local` on a route to exactly the client CIDR is the client-to-client
// route (AWS: CreateClientVpnRoute with TargetVpcSubnetId "local"); the overlap rule allows it.
func TestLocalRoute(t *testing.T) {
	doc := strings.Replace(base, "  - destination_cidr_block: 10.0.1.0/24\n",
		"  - destination_cidr_block: 10.0.1.0/24\n  - destination_cidr_block: 10.2.0.0/22\n    target: local\n    description: client to client\n", 1)
	ep, err := Parse([]byte(doc), "testdata")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := []Route{
		{DestinationCIDRBlock: netip.MustParsePrefix("10.0.1.0/24")},
		{DestinationCIDRBlock: netip.MustParsePrefix("10.2.0.0/22"), Local: true, Description: "client to client"},
	}
	if !reflect.DeepEqual(ep.Routes, want) {
		t.Errorf("Routes = %+v, want %+v", ep.Routes, want)
	}
	if got := ep.KeyLine("routes[1].target"); got != 15 {
		t.Errorf("line of routes[1].target = %d, want 15", got)
	}
	// In full-tunnel mode too.
	if _, err := Parse([]byte(doc+"split_tunnel: false\n"), "testdata"); err != nil {
		t.Errorf("Parse with split_tunnel: false: %v", err)
	}
}
