package netlab

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestCluster builds a small cluster lab and checks every path the cluster tests rely on:
// clients reach each node's public address, each node reaches the VPC host and every etcd
// member, and CutEtcd severs a node from etcd alone until RestoreEtcd.
func TestCluster(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("netlab: the cluster lab needs root (network namespaces); CI runs as root")
	}
	c := NewCluster(t, ClusterOptions{Nodes: 3, Clients: 4})
	if len(c.Nodes) != 3 || len(c.Clients) != 4 || len(c.Etcd) != 3 {
		t.Fatalf("lab has %d nodes, %d clients, %d etcd members; want 3, 4, 3", len(c.Nodes), len(c.Clients), len(c.Etcd))
	}
	ping := func(ns string, to netip.Addr) error {
		_, err := c.Exec(ns, "ping", "-n", "-q", "-c", "1", "-W", "1", to.String())
		return err
	}
	for _, cl := range c.Clients {
		for _, n := range c.Nodes {
			if err := ping(cl.NS, n.Public); err != nil {
				t.Errorf("client %s to %s's public address: %v", cl.NS, n.Name, err)
			}
		}
	}
	snats := map[netip.Addr]bool{}
	for _, n := range c.Nodes {
		if err := ping(n.NS, c.VPCHost); err != nil {
			t.Errorf("%s to the VPC host: %v", n.Name, err)
		}
		for _, e := range c.Etcd {
			if err := ping(n.NS, e.Addr); err != nil {
				t.Errorf("%s to %s: %v", n.Name, e.Name, err)
			}
		}
		// The SNAT address is cvpn's to announce: no interface may hold it, and each node has
		// its own inside the VPC segment.
		if !c.VPCPrefix.Contains(n.SNAT) || snats[n.SNAT] {
			t.Errorf("%s's SNAT address %s is outside %s or shared", n.Name, n.SNAT, c.VPCPrefix)
		}
		snats[n.SNAT] = true
		out, err := c.Exec(n.NS, "ip", "-br", "addr")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, n.SNAT.String()+"/") {
			t.Errorf("%s has its SNAT address on an interface:\n%s", n.Name, out)
		}
	}
	// The test process's own clients dial from the admin host, as an etcd client would.
	ln, err := ListenTCPIn(c.Etcd[0].NS, netip.AddrPortFrom(c.Etcd[0].Addr, 2379))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if conn, err := ln.Accept(); err == nil {
			_, _ = conn.Write([]byte("etcd1"))
			conn.Close()
		}
	}()
	conn, err := DialContextIn(c.Admin)(context.Background(), netip.AddrPortFrom(c.Etcd[0].Addr, 2379).String())
	if err != nil {
		t.Fatalf("admin host to etcd1: %v", err)
	}
	got, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || string(got) != "etcd1" {
		t.Errorf("admin host read %q, %v from etcd1; want etcd1", got, err)
	}

	if err := c.CutEtcd(1); err != nil {
		t.Fatal(err)
	}
	if err := c.CutEtcd(1); err != nil { // a second cut adds nothing for Restore to miss
		t.Fatal(err)
	}
	for _, e := range c.Etcd {
		if err := ping(c.Nodes[0].NS, e.Addr); err == nil {
			t.Errorf("node1 reaches %s while cut off from etcd", e.Name)
		}
		if err := ping(c.Nodes[1].NS, e.Addr); err != nil {
			t.Errorf("node2 lost %s when node1 was cut: %v", e.Name, err)
		}
	}
	if err := ping(c.Nodes[0].NS, c.VPCHost); err != nil {
		t.Errorf("node1 lost the VPC host with etcd cut: %v", err)
	}
	if err := ping(c.Clients[0].NS, c.Nodes[0].Public); err != nil {
		t.Errorf("client lost node1 with etcd cut: %v", err)
	}
	if err := c.RestoreEtcd(1); err != nil {
		t.Fatal(err)
	}
	for _, e := range c.Etcd {
		if err := ping(c.Nodes[0].NS, e.Addr); err != nil {
			t.Errorf("node1 to %s after RestoreEtcd: %v", e.Name, err)
		}
	}
	if out, err := c.Exec(c.Nodes[0].NS, "iptables", "-w", "-S"); err != nil || strings.Contains(out, "DROP") {
		t.Errorf("node1's rules after RestoreEtcd (%v):\n%s", err, out)
	}

	// A member cut off the management segment is gone for every node; the others stay.
	if err := c.CutEtcdMember(2); err != nil {
		t.Fatal(err)
	}
	if err := ping(c.Nodes[2].NS, c.Etcd[1].Addr); err == nil {
		t.Error("node3 reaches etcd2 while etcd2 is cut off")
	}
	if err := ping(c.Nodes[2].NS, c.Etcd[0].Addr); err != nil {
		t.Errorf("node3 lost etcd1 when etcd2 was cut: %v", err)
	}
	if err := c.RestoreEtcdMember(2); err != nil {
		t.Fatal(err)
	}
	if err := ping(c.Nodes[2].NS, c.Etcd[1].Addr); err != nil {
		t.Errorf("node3 to etcd2 after RestoreEtcdMember: %v", err)
	}

	// A cut node answers nobody; the other nodes and the VPC host keep their paths.
	if err := c.CutNode(2); err != nil {
		t.Fatal(err)
	}
	for _, to := range []netip.Addr{c.Nodes[1].Public} {
		if err := ping(c.Clients[0].NS, to); err == nil {
			t.Errorf("a client reaches node2 (%s) while node2 is cut", to)
		}
	}
	if err := ping(c.VPC, c.Nodes[1].VPC); err == nil {
		t.Error("the VPC host reaches node2 while node2 is cut")
	}
	if err := ping(c.Etcd[0].NS, c.Nodes[1].Mgmt); err == nil {
		t.Error("etcd1 reaches node2 while node2 is cut")
	}
	if err := ping(c.Clients[0].NS, c.Nodes[0].Public); err != nil {
		t.Errorf("a client lost node1 when node2 was cut: %v", err)
	}
	if err := c.RestoreNode(2); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		from string
		to   netip.Addr
	}{{c.Clients[0].NS, c.Nodes[1].Public}, {c.VPC, c.Nodes[1].VPC}, {c.Etcd[0].NS, c.Nodes[1].Mgmt}} {
		if err := ping(p.from, p.to); err != nil {
			t.Errorf("%s to %s after RestoreNode: %v", p.from, p.to, err)
		}
	}
}

// TestClusterClose checks that Close leaves no namespace of the lab behind.
func TestClusterClose(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("netlab: the cluster lab needs root (network namespaces); CI runs as root")
	}
	c, err := newCluster(ClusterOptions{Nodes: 2, Clients: 1, Etcd: 1})
	if err != nil {
		if c != nil {
			c.Close()
		}
		t.Fatal(err)
	}
	// hub, two nodes, VPC host, one etcd member, admin host, one client
	if n := countNetNS(t, c.ID); n != 7 {
		t.Errorf("%d namespaces of lab %s before Close, want 7", n, c.ID)
	}
	c.Close()
	if n := countNetNS(t, c.ID); n != 0 {
		t.Errorf("%d namespaces of lab %s left after Close", n, c.ID)
	}
}

func countNetNS(t *testing.T, id string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	return strings.Count(string(out), fmt.Sprintf("cv%s", id))
}

// TestClientProfileRemotes: a profile for a cluster lab lists every node in order, with the
// options that make the stock client move on from a dead one.
func TestClientProfileRemotes(t *testing.T) {
	ep, err := WriteEndpoint(t.TempDir(), EndpointOptions{TLSCrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	nodes := []netip.Addr{netip.MustParseAddr("172.30.0.2"), netip.MustParseAddr("172.30.0.1")}
	path, err := ep.ClientProfile("alice", netip.Addr{}, ProfileOptions{Remotes: nodes, RemoteRandom: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "client\ndev tun\nproto udp\nremote 172.30.0.2 443\nremote 172.30.0.1 443\nremote-random\nserver-poll-timeout 10\nremote-cert-tls server\n"
	if !strings.HasPrefix(string(b), want) {
		t.Errorf("profile starts:\n%s\nwant:\n%s", Tail(string(b[:min(len(b), 200)]), 200), want)
	}
}

// TestClusterDual: in a dual-stack cluster lab clients reach every node over IPv6 too, and
// each node reaches the VPC host over IPv6; SNAT addresses stay off the interfaces.
func TestClusterDual(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("netlab: the cluster lab needs root (network namespaces); CI runs as root")
	}
	c := NewCluster(t, ClusterOptions{Nodes: 2, Clients: 2, Etcd: 1, IPv6: true})
	ping := func(ns string, to netip.Addr) error {
		_, err := c.Exec(ns, "ping", "-n", "-q", "-c", "1", "-W", "1", to.String())
		return err
	}
	if !c.IPv6 || c.VPCHostIPv6 != VPCHostIPv6 {
		t.Fatalf("lab IPv6 %v, VPC host %s; want true, %s", c.IPv6, c.VPCHostIPv6, VPCHostIPv6)
	}
	for _, cl := range c.Clients {
		if !ClusterOutsidePrefixIPv6.Contains(cl.AddrIPv6) {
			t.Errorf("client %s has IPv6 address %s", cl.NS, cl.AddrIPv6)
		}
		for _, n := range c.Nodes {
			if err := ping(cl.NS, n.PublicIPv6); err != nil {
				t.Errorf("client %s to %s's public IPv6 address: %v", cl.NS, n.Name, err)
			}
		}
	}
	for _, n := range c.Nodes {
		if err := ping(n.NS, c.VPCHostIPv6); err != nil {
			t.Errorf("%s to the VPC host over IPv6: %v", n.Name, err)
		}
		if err := ping(n.NS, c.Etcd[0].Addr); err != nil {
			t.Errorf("%s to etcd1: %v", n.Name, err)
		}
		if !VPCPrefixIPv6.Contains(n.SNATIPv6) || !VPCPrefixIPv6.Contains(n.VPCIPv6) {
			t.Errorf("%s: SNAT %s, VPC %s outside %s", n.Name, n.SNATIPv6, n.VPCIPv6, VPCPrefixIPv6)
		}
		out, err := c.Exec(n.NS, "ip", "-br", "addr")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, n.SNATIPv6.String()+"/") {
			t.Errorf("%s has its SNAT address on an interface:\n%s", n.Name, out)
		}
	}
	if got, want := c.Nodes[1].VPCIPv6, netip.MustParseAddr("fd00:10:1::22"); got != want {
		t.Errorf("node2's VPC IPv6 address is %s, want %s (like 10.0.1.22)", got, want)
	}
}
