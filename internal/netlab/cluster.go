package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// A cluster lab (NewCluster) is the topology of a cvpn cluster: several endpoint nodes that
// clients reach on one segment, that share one VPC segment, and that reach etcd on a third.
// Each segment is a bridge in a hub namespace (cv<id>h), and every other namespace has one veth
// into it per segment it sits on; nothing is created outside the lab's namespaces, so deleting
// them removes everything.
//
//	namespace            interface and address                 bridge in the hub (cv<id>h)
//	client J  (cv<id>cJ) eth0 172.30.1.J/16                    br-out
//	node I    (cv<id>nI) eth0 172.30.0.I/16        (outside)   br-out
//	                     eth1 10.0.1.(20+I)/24     (vpc)       br-vpc
//	                     eth2 172.29.0.I/24        (mgmt)      br-mgmt
//	VPC host  (cv<id>v)  eth0 10.0.1.10/24                     br-vpc
//	etcd K    (cv<id>eK) eth0 172.29.0.(100+K)/24              br-mgmt
//	admin     (cv<id>a)  eth0 172.29.0.250/24                  br-mgmt
//
// Node I source-NATs to 10.0.1.(60+I) (ClusterNode.SNAT), an address on no interface: cvpn adds the
// proxy ARP entry and host route for it itself, so the VPC host's replies reach the node that
// owns the address without any coordination. The VPC host has no route to any client block.
//
// With ClusterOptions.IPv6 the client-facing and VPC segments carry IPv6 as well (the
// management segment stays IPv4), every address without duplicate address detection:
//
//	clients eth0 fd30::1:J/64     nodes eth0 fd30::I/64, eth1 fd00:10:1::(20+I)/64
//	VPC host eth0 fd00:10:1::10/64 (VPCHostIPv6)
//
// (20+I and 60+I written in decimal digits, so fd00:10:1::21 is node 1's, like 10.0.1.21.) Node
// I's snat_ipv6_address is fd00:10:1::(60+I); clients keep their own addresses in
// ClientIPv6CIDR (fd00:10:1::1:0/112, inside the VPC host's /64), which the VPC host reaches
// on-link through the proxy NDP of the node that leased each one.
//
// There is one namespace per etcd member, so a test can cut one member off (or kill it) while
// the others keep their quorum. The admin host stands for an operator's machine on the
// management network: a test's own etcd client and `cvpn cluster push` run there, and no
// CutEtcd touches it.

// Interface names inside a node namespace. VPCDev is eth1 as in a single-node lab, so
// WriteEndpoint's target interface fits a node as it is.
const (
	OutsideDev = "eth0"
	VPCDev     = "eth1"
	MgmtDev    = "eth2"
)

// Fixed addresses of a cluster lab; NewCluster derives each host's own from them.
var (
	// ClusterOutsidePrefix is the client-facing segment: node I is 172.30.0.I, client J
	// 172.30.1.J.
	ClusterOutsidePrefix = netip.MustParsePrefix("172.30.0.0/16")
	// ClusterMgmtPrefix is the management segment: node I is 172.29.0.I, etcd member K
	// 172.29.0.(100+K), the admin host ClusterAdmin.
	ClusterMgmtPrefix = netip.MustParsePrefix("172.29.0.0/24")
	ClusterAdmin      = netip.MustParseAddr("172.29.0.250")
)

// Cluster-lab limits, from the address plan above.
const (
	MaxClusterNodes   = 32
	MaxClusterClients = 254
	MaxClusterEtcd    = 9
)

// ClusterOptions shape a cluster lab. Zero values give the defaults.
type ClusterOptions struct {
	Nodes   int // endpoint nodes, default 3
	Clients int // client namespaces, default 12
	Etcd    int // etcd member namespaces, default 3
	// IPv6 adds IPv6 to the client-facing and VPC segments (the comment above draws it).
	IPv6 bool
}

// ClusterOutsidePrefixIPv6 is the client-facing segment's IPv6 prefix in a dual-stack cluster
// lab: node I is fd30::I, client J fd30::1:J.
var ClusterOutsidePrefixIPv6 = netip.MustParsePrefix("fd30::/64")

// Cluster is a cluster lab. NewCluster registers its Close with the test.
type Cluster struct {
	ID  string
	Hub string // the namespace holding the three bridges
	// Nodes, Clients and Etcd are in order: Nodes[0] is node 1, named cv<id>n1.
	Nodes   []ClusterNode
	Clients []ClusterClient
	Etcd    []EtcdMember
	// VPC is the VPC host's namespace; VPCHost (10.0.1.10) its address.
	VPC     string
	VPCHost netip.Addr
	// VPCPrefix is the VPC segment, 10.0.1.0/24, which holds every node's VPC and SNAT address.
	VPCPrefix netip.Prefix
	// IPv6 is set in a dual-stack lab; then VPCHostIPv6 is fd00:10:1::10 (VPCPrefixIPv6).
	IPv6        bool
	VPCHostIPv6 netip.Addr
	// Admin is the admin host's namespace on the management segment, at AdminAddr.
	Admin     string
	AdminAddr netip.Addr

	mu    sync.Mutex
	procs []*Proc
	cut   map[int]bool // nodes whose etcd traffic CutEtcd drops
	nss   []string     // every namespace made, for Close
}

// ClusterNode is one endpoint host.
type ClusterNode struct {
	Name string // node name, "node1"...: the cluster section's node_name
	NS   string
	// Public is the address clients dial (eth0; cluster.public_address), VPC the node's own
	// address on the VPC segment (eth1), SNAT its target_network.snat_address (configured on
	// no interface), Mgmt its address on the management segment (eth2).
	Public, VPC, SNAT, Mgmt netip.Addr
	// PublicIPv6, VPCIPv6 and SNATIPv6 (target_network.snat_ipv6_address, on no interface)
	// are set in a dual-stack lab.
	PublicIPv6, VPCIPv6, SNATIPv6 netip.Addr
}

// ClusterClient is one client host: eth0 on the client-facing segment, at Addr.
type ClusterClient struct {
	NS   string
	Addr netip.Addr
	// AddrIPv6 is set in a dual-stack lab.
	AddrIPv6 netip.Addr
}

// EtcdMember is one etcd member's host: eth0 on the management segment, at Addr. Start the
// member in NS listening on Addr (etcdlab's NetNS and Hosts).
type EtcdMember struct {
	Name string // "etcd1"...
	NS   string
	Addr netip.Addr
}

// EtcdNetNS and EtcdHosts are the etcd members' namespaces and addresses, in member order.
func (c *Cluster) EtcdNetNS() []string {
	var s []string
	for _, e := range c.Etcd {
		s = append(s, e.NS)
	}
	return s
}

// EtcdHosts: see EtcdNetNS.
func (c *Cluster) EtcdHosts() []netip.Addr {
	var s []netip.Addr
	for _, e := range c.Etcd {
		s = append(s, e.Addr)
	}
	return s
}

// NodePublic lists every node's public address in node order: the remotes of a profile.
func (c *Cluster) NodePublic() []netip.Addr {
	var s []netip.Addr
	for _, n := range c.Nodes {
		s = append(s, n.Public)
	}
	return s
}

// NewCluster builds a cluster lab for t, which it fails on error; t's cleanup removes the lab
// whether or not the test passed. It needs root.
func NewCluster(t testing.TB, o ClusterOptions) *Cluster {
	t.Helper()
	c, err := newCluster(o)
	if c != nil {
		t.Cleanup(c.Close)
	}
	if err != nil {
		t.Fatalf("netlab: cluster: %v", err)
	}
	return c
}

func newCluster(o ClusterOptions) (*Cluster, error) {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Clients == 0 {
		o.Clients = 12
	}
	if o.Etcd == 0 {
		o.Etcd = 3
	}
	if o.Nodes < 0 || o.Nodes > MaxClusterNodes || o.Clients < 0 || o.Clients > MaxClusterClients || o.Etcd < 0 || o.Etcd > MaxClusterEtcd {
		return nil, fmt.Errorf("%d nodes, %d clients, %d etcd members: the address plan holds at most %d, %d and %d",
			o.Nodes, o.Clients, o.Etcd, MaxClusterNodes, MaxClusterClients, MaxClusterEtcd)
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	c := &Cluster{
		ID: id, Hub: "cv" + id + "h", VPC: "cv" + id + "v", Admin: "cv" + id + "a",
		VPCHost: VPCHost, VPCPrefix: VPCPrefix, AdminAddr: ClusterAdmin,
		IPv6: o.IPv6, cut: map[int]bool{},
	}
	// The hub first, so every later step has its bridges; each namespace is recorded before it
	// is made, so Close removes whatever a failed step left.
	var steps [][]string
	ns := func(name string, ipv6 bool) {
		c.nss = append(c.nss, name)
		steps = append(steps, []string{"ip", "netns", "add", name})
		if ipv6 {
			steps = append(steps, enableIPv6(name)...)
		}
		steps = append(steps, []string{"ip", "-n", name, "link", "set", "lo", "up"})
	}
	// dual is the IPv6 address (dual-stack lab only) format, with n, on dev in namespace name.
	dual := func(name, dev, format string, n int, bits int) netip.Addr {
		if !o.IPv6 {
			return netip.Addr{}
		}
		a := netip.MustParseAddr(fmt.Sprintf(format, n))
		steps = append(steps, addr6(name, netip.PrefixFrom(a, bits), dev))
		return a
	}
	ns(c.Hub, false) // a switch: it needs no addresses of its own
	for _, br := range []string{"br-out", "br-vpc", "br-mgmt"} {
		steps = append(steps,
			[]string{"ip", "-n", c.Hub, "link", "add", br, "type", "bridge"},
			[]string{"ip", "-n", c.Hub, "link", "set", br, "up"})
	}
	// link joins dev in namespace name to bridge br through a veth whose hub end is port, and
	// gives dev the address p.
	link := func(name, dev, port, br string, p netip.Prefix) {
		steps = append(steps,
			[]string{"ip", "-n", c.Hub, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", name},
			[]string{"ip", "-n", c.Hub, "link", "set", port, "master", br},
			[]string{"ip", "-n", c.Hub, "link", "set", port, "up"},
			[]string{"ip", "-n", name, "addr", "add", p.String(), "dev", dev},
			[]string{"ip", "-n", name, "link", "set", dev, "up"})
	}
	for i := 1; i <= o.Nodes; i++ {
		n := ClusterNode{
			Name:   fmt.Sprintf("node%d", i),
			NS:     fmt.Sprintf("cv%sn%d", id, i),
			Public: netip.AddrFrom4([4]byte{172, 30, 0, byte(i)}),
			VPC:    netip.AddrFrom4([4]byte{10, 0, 1, byte(20 + i)}),
			SNAT:   netip.AddrFrom4([4]byte{10, 0, 1, byte(60 + i)}),
			Mgmt:   netip.AddrFrom4([4]byte{172, 29, 0, byte(i)}),
		}
		ns(n.NS, o.IPv6)
		link(n.NS, OutsideDev, fmt.Sprintf("o%d", i), "br-out", netip.PrefixFrom(n.Public, ClusterOutsidePrefix.Bits()))
		link(n.NS, VPCDev, fmt.Sprintf("v%d", i), "br-vpc", netip.PrefixFrom(n.VPC, VPCPrefix.Bits()))
		link(n.NS, MgmtDev, fmt.Sprintf("m%d", i), "br-mgmt", netip.PrefixFrom(n.Mgmt, ClusterMgmtPrefix.Bits()))
		n.PublicIPv6 = dual(n.NS, OutsideDev, "fd30::%x", i, ClusterOutsidePrefixIPv6.Bits())
		n.VPCIPv6 = dual(n.NS, VPCDev, "fd00:10:1::%d", 20+i, VPCPrefixIPv6.Bits())
		if o.IPv6 {
			n.SNATIPv6 = netip.MustParseAddr(fmt.Sprintf("fd00:10:1::%d", 60+i))
		}
		c.Nodes = append(c.Nodes, n)
	}
	ns(c.VPC, o.IPv6)
	link(c.VPC, "eth0", "vh", "br-vpc", netip.PrefixFrom(VPCHost, VPCPrefix.Bits()))
	if o.IPv6 {
		c.VPCHostIPv6 = dual(c.VPC, "eth0", "fd00:10:1::%d", 10, VPCPrefixIPv6.Bits())
	}
	for k := 1; k <= o.Etcd; k++ {
		e := EtcdMember{
			Name: fmt.Sprintf("etcd%d", k),
			NS:   fmt.Sprintf("cv%se%d", id, k),
			Addr: netip.AddrFrom4([4]byte{172, 29, 0, byte(100 + k)}),
		}
		c.Etcd = append(c.Etcd, e)
		ns(e.NS, false)
		link(e.NS, "eth0", fmt.Sprintf("e%d", k), "br-mgmt", netip.PrefixFrom(e.Addr, ClusterMgmtPrefix.Bits()))
	}
	ns(c.Admin, false)
	link(c.Admin, "eth0", "adm", "br-mgmt", netip.PrefixFrom(ClusterAdmin, ClusterMgmtPrefix.Bits()))
	for j := 1; j <= o.Clients; j++ {
		cl := ClusterClient{NS: fmt.Sprintf("cv%sc%d", id, j), Addr: netip.AddrFrom4([4]byte{172, 30, 1, byte(j)})}
		ns(cl.NS, o.IPv6)
		link(cl.NS, "eth0", fmt.Sprintf("c%d", j), "br-out", netip.PrefixFrom(cl.Addr, ClusterOutsidePrefix.Bits()))
		cl.AddrIPv6 = dual(cl.NS, "eth0", "fd30::1:%x", j, ClusterOutsidePrefixIPv6.Bits())
		c.Clients = append(c.Clients, cl)
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return c, err
		}
	}
	return c, nil
}

// CutEtcd drops every packet between node i (1-based) and the etcd members' addresses, both
// ways, with iptables in the node's namespace: the node keeps serving its clients and the VPC,
// and sees etcd as a partition would show it (no answer, no reset). Cutting a cut node does
// nothing.
func (c *Cluster) CutEtcd(i int) error { return c.setEtcdCut(i, true) }

// RestoreEtcd undoes CutEtcd(i); restoring a node that is not cut does nothing.
func (c *Cluster) RestoreEtcd(i int) error { return c.setEtcdCut(i, false) }

func (c *Cluster) setEtcdCut(i int, cut bool) error {
	if i < 1 || i > len(c.Nodes) {
		return fmt.Errorf("netlab: no node %d (the lab has %d)", i, len(c.Nodes))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut[i] == cut {
		return nil
	}
	op := "-D"
	if cut {
		op = "-I"
	}
	ns := c.Nodes[i-1].NS
	for _, e := range c.Etcd {
		a := e.Addr.String()
		for _, rule := range [][]string{{"INPUT", "-s", a}, {"OUTPUT", "-d", a}} {
			args := append([]string{"ip", "netns", "exec", ns, "iptables", "-w", op}, rule...)
			if err := run(append(args, "-j", "DROP")...); err != nil {
				return fmt.Errorf("netlab: cut etcd of node %d: %w", i, err)
			}
		}
	}
	c.cut[i] = cut
	return nil
}

// CutEtcdMember takes etcd member k (1-based) off the management segment, as a pulled cable
// would: its port on the bridge goes down, so nothing reaches it or hears from it, while the
// member's process runs on. RestoreEtcdMember plugs it back in.
func (c *Cluster) CutEtcdMember(k int) error { return c.setMemberLink(k, "down") }

// RestoreEtcdMember undoes CutEtcdMember(k).
func (c *Cluster) RestoreEtcdMember(k int) error { return c.setMemberLink(k, "up") }

func (c *Cluster) setMemberLink(k int, state string) error {
	if k < 1 || k > len(c.Etcd) {
		return fmt.Errorf("netlab: no etcd member %d (the lab has %d)", k, len(c.Etcd))
	}
	return c.setPorts(state, port{fmt.Sprintf("e%d", k), c.Etcd[k-1].NS, "eth0"})
}

// CutNode takes node i (1-based) off all three segments, as a host that lost power would look
// from outside: its bridge ports go down, so clients, the VPC host and etcd get no answer at
// all (no ICMP error, no reset), while its processes run on. RestoreNode plugs it back in.
// Stopping cvpn instead (Proc.Kill) leaves a live host that refuses the client's packets.
func (c *Cluster) CutNode(i int) error { return c.setNodeLinks(i, "down") }

// RestoreNode undoes CutNode(i).
func (c *Cluster) RestoreNode(i int) error { return c.setNodeLinks(i, "up") }

func (c *Cluster) setNodeLinks(i int, state string) error {
	if i < 1 || i > len(c.Nodes) {
		return fmt.Errorf("netlab: no node %d (the lab has %d)", i, len(c.Nodes))
	}
	ns := c.Nodes[i-1].NS
	return c.setPorts(state,
		port{fmt.Sprintf("o%d", i), ns, OutsideDev},
		port{fmt.Sprintf("v%d", i), ns, VPCDev},
		port{fmt.Sprintf("m%d", i), ns, MgmtDev})
}

// port is a bridge port in the hub and the far end of its veth.
type port struct{ name, ns, dev string }

// setPorts sets the hub's bridge ports up or down. Going up, it waits until the far end has
// its carrier and the bridge forwards through the port: the kernel applies carrier changes
// asynchronously (linkwatch, up to a second later), and a packet sent before is lost, which
// would make the first ping after a restore fail.
func (c *Cluster) setPorts(state string, ports ...port) error {
	for _, p := range ports {
		if err := run("ip", "-n", c.Hub, "link", "set", p.name, state); err != nil {
			return fmt.Errorf("netlab: %w", err)
		}
	}
	if state != "up" {
		return nil
	}
	for _, p := range ports {
		ready := func() bool {
			far, err := exec.Command("ip", "-n", p.ns, "-o", "link", "show", "dev", p.dev).Output()
			if err != nil || !strings.Contains(string(far), "state UP") {
				return false
			}
			br, err := exec.Command("bridge", "-n", c.Hub, "link", "show", "dev", p.name).Output()
			return err == nil && strings.Contains(string(br), "state forwarding")
		}
		deadline := time.Now().Add(10 * time.Second)
		for !ready() {
			if time.Now().After(deadline) {
				return fmt.Errorf("netlab: bridge port %s (%s in %s) is not forwarding 10 s after it went up", p.name, p.dev, p.ns)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// Command returns a command that runs in namespace ns.
func (c *Cluster) Command(ctx context.Context, ns string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// Exec runs a command in ns and returns its combined output; the error holds the output too.
func (c *Cluster) Exec(ns string, args ...string) (string, error) {
	out, err := c.Command(context.Background(), ns, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%v in %s: %w: %s", args, ns, err, Tail(string(out), 2000))
	}
	return string(out), nil
}

// Start runs a long-lived command in ns; Close stops it.
func (c *Cluster) Start(name, ns string, args ...string) (*Proc, error) {
	p, err := StartProc(name, ns, args...)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

// DialContextIn returns a dialer whose TCP connections start in namespace ns, for a client in
// the test process (grpc.WithContextDialer, as an etcd client's DialOptions take it).
func DialContextIn(ns string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		err := inNamespace(ns, func() (err error) {
			// The whole dial runs on the switched thread; the socket keeps ns afterwards.
			var d net.Dialer
			conn, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return conn, err
	}
}

// Close stops every process started with Start (newest first) and deletes every namespace,
// which takes the veths and bridges with it.
func (c *Cluster) Close() {
	c.mu.Lock()
	procs := c.procs
	c.procs = nil
	nss := c.nss
	c.nss = nil
	c.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		_ = procs[i].Stop()
	}
	for _, ns := range nss {
		_ = run("ip", "netns", "del", ns)
	}
}
