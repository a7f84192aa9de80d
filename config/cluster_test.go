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

// nodeA is a cluster section with every key, appended to base (its first line is line 17).
const nodeA = `cluster:
  node_name: node-a
  public_address: vpn-a.example.com
  snat_address: 10.0.1.11
  lease_ttl_seconds: 5
  address_block_size: 128
  etcd:
    endpoints: [https://10.0.0.1:2379, "https://etcd-2.example.com:2379"]
    ca_file: pki/ca.crt
    cert_file: pki/server.crt
    key_file: pki/server.key
    prefix: /vpn/prod
`

// nodeB is another node's section, as a pushed file may carry it.
const nodeB = `cluster:
  node_name: node-b
  public_address: 192.0.2.20
  snat_address: 10.0.1.12
  etcd:
    endpoints: [http://10.0.0.1:2379]
`

func TestClusterKeys(t *testing.T) {
	ep := parseDoc(t, base+nodeA)
	want := &Cluster{
		NodeName: "node-a", PublicAddress: "vpn-a.example.com", SNATAddress: netip.MustParseAddr("10.0.1.11"),
		LeaseTTL: 5 * time.Second, AddressBlockSize: 128,
		Etcd: ClusterEtcd{
			Endpoints: []string{"https://10.0.0.1:2379", "https://etcd-2.example.com:2379"},
			CAFile:    abs(t, "testdata/pki/ca.crt"), CertFile: abs(t, "testdata/pki/server.crt"), KeyFile: abs(t, "testdata/pki/server.key"),
			Prefix: "/vpn/prod",
		},
	}
	if !reflect.DeepEqual(ep.Cluster, want) {
		t.Errorf("cluster %+v, want %+v", ep.Cluster, want)
	}
	if got := ep.TargetNetwork.SNATAddress; got != want.SNATAddress {
		t.Errorf("the effective SNAT address is %s, want the node's own %s", got, want.SNATAddress)
	}
	if ep.KeyLine("cluster.etcd.prefix") != 28 {
		t.Errorf("cluster.etcd.prefix at line %d, want 28", ep.KeyLine("cluster.etcd.prefix"))
	}

	// Defaults; target_network.snat_address may go, the node's own replaces it.
	ep = parseDoc(t, strings.Replace(base, "  snat_address: 10.0.1.2\n", "", 1)+nodeB)
	want = &Cluster{NodeName: "node-b", PublicAddress: "192.0.2.20", SNATAddress: netip.MustParseAddr("10.0.1.12"),
		LeaseTTL: DefaultLeaseTTL, AddressBlockSize: DefaultAddressBlockSize,
		Etcd: ClusterEtcd{Endpoints: []string{"http://10.0.0.1:2379"}, Prefix: DefaultClusterPrefix}}
	if !reflect.DeepEqual(ep.Cluster, want) || ep.TargetNetwork.SNATAddress != want.SNATAddress {
		t.Errorf("cluster %+v (SNAT %s), want %+v", ep.Cluster, ep.TargetNetwork.SNATAddress, want)
	}

	// A single node has no cluster.
	if ep := parseDoc(t, base); ep.Cluster != nil || ep.clusterSrc != nil {
		t.Errorf("without a cluster section: %+v", ep.Cluster)
	}

	// IPv6: each node's SNAT6 replaces target_network's, and the client block lies outside
	// the VPC as with any SNAT6.
	v6 := strings.Replace(dual, "vpc_cidr_blocks: [10.0.0.0/16]", "vpc_cidr_blocks: [10.0.0.0/16, fd00:10::/48]", 1)
	v6 = strings.Replace(v6, "fd00:10:1::1:0/112", "fd00:20::/112", 1)
	ep = parseDoc(t, v6+nodeA+"  snat_ipv6_address: fd00:10::11\n")
	if a := netip.MustParseAddr("fd00:10::11"); ep.Cluster.SNATIPv6Address != a || ep.TargetNetwork.SNATIPv6Address != a {
		t.Errorf("SNAT6 %s, effective %s", ep.Cluster.SNATIPv6Address, ep.TargetNetwork.SNATIPv6Address)
	}
}

func TestClusterRules(t *testing.T) {
	dual6 := strings.Replace(dual, "vpc_cidr_blocks: [10.0.0.0/16]", "vpc_cidr_blocks: [10.0.0.0/16, fd00:10::/32]", 1)
	for _, tc := range []struct {
		name     string
		doc      string // the file; base+nodeA when ""
		path     string
		line     int
		msg      string
		old, new string // replaced once in nodeA, when old is set
	}{
		{name: "node name missing", old: "  node_name: node-a\n", new: "", path: "cluster.node_name", line: 17, msg: "required"},
		{name: "node name upper case", old: "node-a", new: "Node-A", path: "cluster.node_name", line: 18, msg: "a-z, 0-9 and '-'"},
		{name: "node name hyphen", old: "node-a", new: "node-", path: "cluster.node_name", line: 18, msg: "starts and ends with a letter or digit"},
		{name: "node name long", old: "node-a", new: strings.Repeat("n", 64), path: "cluster.node_name", line: 18, msg: "1 to 63"},
		{name: "public address missing", old: "  public_address: vpn-a.example.com\n", new: "", path: "cluster.public_address", line: 17, msg: "required"},
		{name: "public address bad", old: "vpn-a.example.com", new: "vpn_a", path: "cluster.public_address", line: 19, msg: "not an IP address or DNS name"},
		{name: "public address family", old: "vpn-a.example.com", new: "2001:db8::1", path: "cluster.public_address", line: 19, msg: "endpoint_ip_address_type is ipv4"},
		{name: "snat missing", old: "  snat_address: 10.0.1.11\n", new: "", path: "cluster.snat_address", line: 17, msg: "required with IPv4 traffic"},
		{name: "snat outside vpc", old: "10.0.1.11", new: "192.168.0.1", path: "cluster.snat_address", line: 20, msg: "not inside any of vpc_cidr_blocks"},
		{name: "snat IPv6", old: "10.0.1.11", new: "fd00::1", path: "cluster.snat_address", line: 20, msg: "not an IPv4 address"},
		{name: "snat6 without IPv6", old: "  lease_ttl_seconds: 5\n", new: "  snat_ipv6_address: fd00::1\n  lease_ttl_seconds: 5\n",
			path: "cluster.snat_ipv6_address", line: 21, msg: "IPv6 traffic is off"},
		{name: "ttl short", old: "lease_ttl_seconds: 5", new: "lease_ttl_seconds: 2", path: "cluster.lease_ttl_seconds", line: 21, msg: "outside 3..60"},
		{name: "ttl long", old: "lease_ttl_seconds: 5", new: "lease_ttl_seconds: 61", path: "cluster.lease_ttl_seconds", line: 21, msg: "outside 3..60"},
		{name: "block not a power of two", old: "address_block_size: 128", new: "address_block_size: 100", path: "cluster.address_block_size", line: 22, msg: "not a power of two"},
		{name: "block small", old: "address_block_size: 128", new: "address_block_size: 2", path: "cluster.address_block_size", line: 22, msg: "outside 4..4096"},
		{name: "block above the pool", old: "address_block_size: 128", new: "address_block_size: 2048",
			path: "cluster.address_block_size", line: 22, msg: "more than the 1024 addresses of client_cidr_block 10.2.0.0/22"},
		{name: "etcd missing", old: "  etcd:\n    endpoints: [https://10.0.0.1:2379, \"https://etcd-2.example.com:2379\"]\n    ca_file: pki/ca.crt\n    cert_file: pki/server.crt\n    key_file: pki/server.key\n    prefix: /vpn/prod\n",
			new: "", path: "cluster.etcd", line: 17, msg: "required"},
		{name: "endpoints empty", old: `[https://10.0.0.1:2379, "https://etcd-2.example.com:2379"]`, new: "[]", path: "cluster.etcd.endpoints", line: 24, msg: "at least one"},
		{name: "endpoint without port", old: "https://10.0.0.1:2379", new: "https://10.0.0.1", path: "cluster.etcd.endpoints[0]", line: 24, msg: "has no port"},
		{name: "endpoint scheme", old: "https://10.0.0.1:2379", new: "unix:///run/etcd.sock", path: "cluster.etcd.endpoints[0]", line: 24, msg: "not an http:// or https:// URL"},
		{name: "endpoint path", old: "https://10.0.0.1:2379", new: "https://10.0.0.1:2379/v3", path: "cluster.etcd.endpoints[0]", line: 24, msg: "no user, path or query"},
		{name: "endpoint duplicate", old: "https://etcd-2.example.com:2379", new: "https://10.0.0.1:2379", path: "cluster.etcd.endpoints[1]", line: 24, msg: "already listed at cluster.etcd.endpoints[0]"},
		{name: "endpoints mixed", old: "https://etcd-2.example.com:2379", new: "http://etcd-2.example.com:2379", path: "cluster.etcd.endpoints[1]", line: 24, msg: "share one scheme"},
		{name: "endpoints too many", old: `[https://10.0.0.1:2379, "https://etcd-2.example.com:2379"]`,
			new:  "[https://e1:2379, https://e2:2379, https://e3:2379, https://e4:2379, https://e5:2379, https://e6:2379, https://e7:2379, https://e8:2379, https://e9:2379, https://e10:2379]",
			path: "cluster.etcd.endpoints", line: 24, msg: "at most 9"},
		{name: "tls with http", old: "https://10.0.0.1:2379, \"https://etcd-2.example.com:2379\"]\n    ca_file: pki/ca.crt\n    cert_file: pki/server.crt\n    key_file: pki/server.key",
			new:  "http://10.0.0.1:2379]\n    ca_file: pki/ca.crt",
			path: "cluster.etcd.ca_file", line: 25, msg: "only to https endpoints"},
		{name: "cert without key", old: "    key_file: pki/server.key\n", new: "", path: "cluster.etcd.key_file", line: 23, msg: "required with cert_file"},
		{name: "ca missing file", old: "ca_file: pki/ca.crt", new: "ca_file: pki/none.crt", path: "cluster.etcd.ca_file", line: 25, msg: "no such file"},
		{name: "prefix trailing slash", old: "/vpn/prod", new: "/vpn/prod/", path: "cluster.etcd.prefix", line: 28, msg: `did you mean "/vpn/prod"?`},
		{name: "prefix relative", old: "/vpn/prod", new: "vpn", path: "cluster.etcd.prefix", line: 28, msg: "does not start with '/'"},
		{name: "prefix root", old: "/vpn/prod", new: "/", path: "cluster.etcd.prefix", line: 28, msg: "root of etcd's keys"},
		{name: "prefix double slash", old: "/vpn/prod", new: "/vpn//prod", path: "cluster.etcd.prefix", line: 28, msg: "empty name"},
		{name: "prefix dot dot", old: "/vpn/prod", new: "/vpn/..", path: "cluster.etcd.prefix", line: 28, msg: "path.Join would fold"},
		{name: "unknown key", old: "  lease_ttl_seconds: 5\n", new: "  lease_ttl_second: 5\n", path: "cluster.lease_ttl_second", line: 21, msg: `did you mean "lease_ttl_seconds"?`},
		{name: "IPv6 traffic needs SNAT6", doc: dual6 + nodeA, path: "cluster.snat_ipv6_address", line: 19, msg: "routed IPv6, where clients keep their own addresses, is not supported across nodes"},
		{name: "target snat still required alone", doc: strings.Replace(base, "  snat_address: 10.0.1.2\n", "", 1), path: "target_network.snat_address", line: 9, msg: "required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := tc.doc
			if doc == "" {
				doc = base + nodeA
				if tc.old != "" {
					doc = base + edit(t, nodeA, tc.old, tc.new)
				}
			}
			ep, err := Parse([]byte(doc), "testdata")
			if err == nil {
				t.Fatalf("no error, cluster %+v\n%s", ep.Cluster, doc)
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

// writeNode writes a node's local file and the PKI it names into a directory of its own, as
// on a node's host: its relative paths resolve there, not where the pushed file is parsed.
func writeNode(t *testing.T, doc string) (path string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "pki"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"server.crt", "server.key", "ca.crt"} {
		if err := os.WriteFile(filepath.Join(dir, "pki", f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path = filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestParseWithCluster(t *testing.T) {
	localPath := writeNode(t, base+nodeA)
	local, err := Load(localPath)
	if err != nil {
		t.Fatal(err)
	}
	localDir := filepath.Dir(localPath)

	// Another node's file, pushed: it runs with node-a's section, its SNAT address and its
	// files resolved against node-a's directory.
	pushed := strings.Replace(base, "10.0.1.0/24", "10.0.2.0/24", 1) + nodeB
	ep, err := ParseWithCluster([]byte(pushed), "etcd revision 12", "testdata", local)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ep.Cluster, local.Cluster) {
		t.Errorf("cluster %+v, want the local one %+v", ep.Cluster, local.Cluster)
	}
	if ep.Cluster.Etcd.CAFile != filepath.Join(localDir, "pki", "ca.crt") {
		t.Errorf("cluster.etcd.ca_file %s, want it in the local file's directory %s", ep.Cluster.Etcd.CAFile, localDir)
	}
	if ep.ServerCertificate.CertFile != abs(t, "testdata/pki/server.crt") {
		t.Errorf("server_certificate.cert_file %s, want it in the pushed file's directory", ep.ServerCertificate.CertFile)
	}
	if want := netip.MustParseAddr("10.0.1.11"); ep.TargetNetwork.SNATAddress != want {
		t.Errorf("SNAT %s, want node-a's %s", ep.TargetNetwork.SNATAddress, want)
	}
	if ep.Routes[0].DestinationCIDRBlock != netip.MustParsePrefix("10.0.2.0/24") {
		t.Errorf("routes %v: the pushed file's are not in force", ep.Routes)
	}
	if ep.KeyLine("cluster.node_name") != 18 {
		t.Errorf("cluster.node_name at line %d, want the local file's 18", ep.KeyLine("cluster.node_name"))
	}
	if e := ep.KeyError("cluster.etcd.ca_file", errors.New("bad")); e.File != localPath || e.Line != 25 {
		t.Errorf("KeyError of a cluster key: %v, want the local file and line", e)
	}
	if e := ep.KeyError("routes[0].destination_cidr_block", errors.New("bad")); e.File != "etcd revision 12" {
		t.Errorf("KeyError of a pushed key: %v, want the pushed file's name", e)
	}

	// A pushed file without a section of its own; and chaining: the result carries the section.
	again, err := ParseWithCluster([]byte(base), "etcd revision 13", "testdata", ep)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again.Cluster, local.Cluster) {
		t.Errorf("from a ParseWithCluster result: cluster %+v", again.Cluster)
	}

	// An invalid pushed file is refused, the key named with the pushed file's name.
	_, err = ParseWithCluster([]byte(strings.Replace(pushed, "10.2.0.0/22", "10.2.0.1/22", 1)), "etcd revision 14", "testdata", local)
	errs := validationErrors(t, err)
	if len(errs) != 1 || errs[0].Path != "client_cidr_block" || errs[0].File != "etcd revision 14" || errs[0].Line != 1 {
		t.Errorf("invalid pushed file: %v", err)
	}

	// A rule between the pushed file and the section names the section's key, in the local
	// file: the node's SNAT address outside the pushed VPC.
	_, err = ParseWithCluster([]byte(strings.Replace(base, "[10.0.0.0/16]", "[10.9.0.0/16]", 1)+nodeB), "etcd revision 15", "testdata", local)
	var snatErr *ValidationError
	for _, e := range validationErrors(t, err) {
		if e.Path == "cluster.snat_address" {
			snatErr = e
		}
	}
	if snatErr == nil || snatErr.File != localPath || snatErr.Line != 20 || !strings.Contains(snatErr.Msg, "not inside any of vpc_cidr_blocks") {
		t.Errorf("SNAT outside the pushed VPC: %v", err)
	}

	// A pushed file that changes a key a running endpoint cannot change parses; CheckReload
	// between the two results names it.
	next, err := ParseWithCluster([]byte(strings.Replace(pushed, "10.2.0.0/22", "10.3.0.0/22", 1)), "etcd revision 16", "testdata", local)
	if err != nil {
		t.Fatalf("a pushed file with a restart-only change: %v", err)
	}
	err = CheckReload(ep, next)
	errs = validationErrors(t, err)
	if len(errs) != 1 || errs[0].Path != "client_cidr_block" || errs[0].File != "etcd revision 16" || !strings.Contains(errs[0].Msg, "running 10.2.0.0/22, file 10.3.0.0/22") {
		t.Errorf("CheckReload: %v", err)
	}
	if err := CheckReload(ep, again); err != nil {
		t.Errorf("CheckReload with the same cluster section: %v", err)
	}

	// Without a local section there is nothing to splice.
	if _, err := ParseWithCluster([]byte(pushed), "x", "testdata", parseDoc(t, base)); !errors.Is(err, ErrNoCluster) {
		t.Errorf("local without a cluster: %v", err)
	}
}

// TestParseWithClusterLocalProblem: a problem of the spliced section (here, its CA file gone
// since the node started) is named with the local file and line.
func TestParseWithClusterLocalProblem(t *testing.T) {
	localPath := writeNode(t, base+nodeA)
	local, err := Load(localPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(filepath.Dir(localPath), "pki", "ca.crt")); err != nil {
		t.Fatal(err)
	}
	_, err = ParseWithCluster([]byte(base), "etcd revision 3", "testdata", local)
	errs := validationErrors(t, err)
	if len(errs) != 1 || errs[0].Path != "cluster.etcd.ca_file" || errs[0].File != localPath || errs[0].Line != 25 {
		t.Errorf("problem in the spliced section: %v", err)
	}
}

// TestClusterReload: a changed cluster key refuses the reload, named with its line.
func TestClusterReload(t *testing.T) {
	running := parseDoc(t, base+nodeA)
	next := parseDoc(t, base+edit(t, nodeA, "/vpn/prod", "/vpn/test", "node-a", "node-c"))
	errs := validationErrors(t, CheckReload(running, next))
	if len(errs) != 2 || errs[0].Path != "cluster.node_name" || errs[0].Line != 18 || errs[1].Path != "cluster.etcd.prefix" ||
		!strings.Contains(errs[1].Msg, "running /vpn/prod, file /vpn/test") || !strings.Contains(errs[1].Msg, "joins its cluster") {
		t.Errorf("CheckReload: %v", errs)
	}
	// Joining a cluster needs a restart too.
	errs = validationErrors(t, CheckReload(parseDoc(t, base), running))
	if len(errs) < 2 || errs[0].Path != "target_network.snat_address" || errs[1].Path != "cluster.node_name" || !strings.Contains(errs[1].Msg, "running no cluster") {
		t.Errorf("CheckReload into a cluster: %v", errs)
	}
}

// TestParseWithClusterNodeSections: the sections a node keeps from its own file (NodeKeys)
// replace a pushed file's, resolved against the node's directory; one the node's file leaves
// out takes its default, not the pushed file's value.
func TestParseWithClusterNodeSections(t *testing.T) {
	localPath := writeNode(t, base+nodeA+"admin: {socket: node-a.sock}\nconnection_log: {enabled: true, file: node-a.log}\n")
	local, err := Load(localPath)
	if err != nil {
		t.Fatal(err)
	}
	localDir := filepath.Dir(localPath)
	pushed := base + nodeB + "admin: {socket: node-b.sock}\nconnection_log: {enabled: true, file: node-b.log}\n" +
		"metrics: {listen_address: 127.0.0.1:9999}\n"
	ep, err := ParseWithCluster([]byte(pushed), "etcd revision 7", "testdata", local)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(localDir, "node-a.sock"); ep.Admin.Socket != want {
		t.Errorf("admin.socket %s, want the node's own %s", ep.Admin.Socket, want)
	}
	if want := filepath.Join(localDir, "node-a.log"); ep.ConnectionLog.File != want || !ep.ConnectionLog.Enabled {
		t.Errorf("connection_log %+v, want the node's own %s", ep.ConnectionLog, want)
	}
	if ep.Metrics.ListenAddress == netip.MustParseAddrPort("127.0.0.1:9999") {
		t.Errorf("metrics.listen_address %v came from the pushed file; the node's file has none", ep.Metrics.ListenAddress)
	}
	if e := ep.KeyError("admin.socket", errors.New("bad")); e.File != localPath {
		t.Errorf("KeyError of admin.socket names %s, want the node's file", e.File)
	}
}
