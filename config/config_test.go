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
		Description:     "dev VPN",
		ClientCIDRBlock: netip.MustParsePrefix("10.2.0.0/22"),
		VPCCIDRBlocks:   []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("172.16.0.0/12")},
		ListenAddress:   netip.MustParseAddr("192.0.2.1"),
		Transport:       []Listener{{ProtocolUDP, 1194}, {ProtocolTCP, 443}},
		ServerCertificate: ServerCertificate{
			CertFile: abs(t, "testdata/pki/server.crt"),
			KeyFile:  abs(t, "testdata/pki/server.key"),
		},
		ControlChannel: ControlChannel{TLSCryptKeyFile: abs(t, "testdata/pki/tc.key")},
		Authentication: Authentication{Certificate: &CertificateAuthentication{ClientRootCAFile: abs(t, "testdata/pki/ca.crt")}},
		DataCiphers:    []string{CipherChaCha20Poly1305, CipherAES256GCM},
		TargetNetwork:  TargetNetwork{Interface: "eth1", SNATAddress: netip.MustParseAddr("10.0.1.2")},
		TUN:            TUN{Name: "vpn0", MTU: 1400},
		Routes: []Route{
			{DestinationCIDRBlock: netip.MustParsePrefix("10.0.1.0/24"), Description: "app subnet"},
			{DestinationCIDRBlock: netip.MustParsePrefix("172.16.0.0/12")},
		},
		AuthorizationRules: []AuthorizationRule{
			{TargetNetworkCIDR: netip.MustParsePrefix("10.0.1.0/24"), AccessGroupID: "dev", Description: "developers reach the app subnet"},
			{TargetNetworkCIDR: netip.MustParsePrefix("172.16.0.0/12"), AuthorizeAllGroups: true},
		},
		SplitTunnel: false,
		Keepalive:   Keepalive{Ping: 5 * time.Second, PingRestart: 30 * time.Second},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load(good.yaml) =\n%+v\nwant\n%+v", got, want)
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
	if !got.SplitTunnel {
		t.Error("SplitTunnel = false, want true")
	}
	if want := (Keepalive{Ping: 10 * time.Second, PingRestart: 60 * time.Second}); got.Keepalive != want {
		t.Errorf("Keepalive = %+v, want %+v", got.Keepalive, want)
	}
	if got.ControlChannel.TLSCryptKeyFile != "" || got.Description != "" || got.Routes != nil || got.AuthorizationRules != nil {
		t.Errorf("optional keys not empty: %+v", got)
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
			path: "authentication.certificate", line: 6, msg: "required (mutual TLS is the only authentication method so far)"},
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

		// keepalive
		{name: "keepalive restart not above ping", append: "keepalive: {ping_seconds: 60, ping_restart_seconds: 60}\n",
			path: "keepalive.ping_restart_seconds", line: 17, msg: "60 must be greater than ping_seconds (60)"},
		{name: "keepalive ping above default restart", append: "keepalive:\n  ping_seconds: 90\n",
			path: "keepalive.ping_restart_seconds", line: 17, msg: "60 (the default) must be greater than ping_seconds (90)"},
		{name: "keepalive ping zero", append: "keepalive:\n  ping_seconds: 0\n",
			path: "keepalive.ping_seconds", line: 18, msg: "0 is outside 1..86400"},

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
