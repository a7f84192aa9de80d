// Package netlab builds throwaway test topologies out of network namespaces and veth pairs, and
// runs cvpn and the stock openvpn client inside them. The end-to-end tests and `make demo` share it.
//
// Topology (one lab; names carry a random id so labs can run in parallel):
//
//	client n (ns cv<id>cN)              server (ns cv<id>s)                 VPC host (ns cv<id>v)
//	eth0 172.31.N.2/24  <-- veth -->  cN 172.31.N.1/24
//	                                    eth1 10.0.1.1/24  <-- veth -->  eth0 10.0.1.10/24 (+ extra /32s)
//	                                    route 10.0.2.0/24 dev eth1          eth0 10.0.2.10/24 (AddVPCSubnet)
//
// The VPC host has no route to the client CIDR: it can only answer the endpoint's SNAT address.
//
// A dual-stack lab (NewDual) adds IPv6 to every link, each address without duplicate address
// detection (it would hold them tentative for a second or more):
//
//	eth0 fd31:N::2/64   <-- veth -->  cN fd31:N::1/64
//	                                    eth1 fd00:10:1::1/64 <-- veth --> eth0 fd00:10:1::10/64
//	                                    route fd00:10:2::/64 dev eth1       eth0 fd00:10:2::10/64 (AddVPCSubnet)
//
// The client block ClientIPv6CIDR (fd00:10:1::1:0/112) lies inside the VPC host's own /64, and
// the VPC host has no route for it either: it reaches clients on-link, through the neighbour
// discovery the endpoint answers for their addresses (proxy NDP), as AWS's subnet router does.
// Every address lives inside namespaces the lab created; nothing leaves the machine.
//
// A cluster lab (NewCluster, cluster.go) is another topology: several endpoint nodes on shared
// client, VPC and management segments, with etcd members and a VPC host.
package netlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
)

// Fixed addresses of the lab.
var (
	VPCPrefix   = netip.MustParsePrefix("10.0.1.0/24")
	ServerVPC   = netip.MustParseAddr("10.0.1.1")
	SNATAddress = netip.MustParseAddr("10.0.1.2")
	VPCHost     = netip.MustParseAddr("10.0.1.10")
	// VPCHost2Prefix is the VPC host's address in a second subnet; AddVPCSubnet(VPCHost2Prefix)
	// adds it.
	VPCHost2Prefix = netip.MustParsePrefix("10.0.2.10/24")
	VPCHost2       = VPCHost2Prefix.Addr()
)

// Fixed IPv6 addresses of a dual-stack lab (NewDual).
var (
	// VPCCIDRIPv6 is the VPC's IPv6 block (vpc_cidr_blocks), which holds the subnets
	// fd00:10:1::/64 and fd00:10:2::/64. VPCPrefixIPv6 is the target subnet in it, on the
	// server's eth1 and the VPC host's eth0.
	VPCCIDRIPv6   = netip.MustParsePrefix("fd00:10::/40")
	VPCPrefixIPv6 = netip.MustParsePrefix("fd00:10:1::/64")
	ServerVPCIPv6 = netip.MustParseAddr("fd00:10:1::1")
	// SNATIPv6Address is target_network.snat_ipv6_address in the NAT66 variant.
	SNATIPv6Address = netip.MustParseAddr("fd00:10:1::2")
	VPCHostIPv6     = netip.MustParseAddr("fd00:10:1::10")
	// ClientIPv6CIDR is client_ipv6_cidr_block: a /112 of the target subnet, so clients keep
	// their own addresses there. ClientIPv6CIDROutside is the block of the NAT66 variant,
	// outside the VPC as the IPv4 client block is.
	ClientIPv6CIDR        = netip.MustParsePrefix("fd00:10:1::1:0/112")
	ClientIPv6CIDROutside = netip.MustParsePrefix("fd00:20::/112")
	// VPCHost2PrefixIPv6 is the VPC host's address in a second IPv6 subnet; AddVPCSubnet adds it.
	VPCHost2PrefixIPv6 = netip.MustParsePrefix("fd00:10:2::10/64")
	VPCHost2IPv6       = VPCHost2PrefixIPv6.Addr()
)

// Lab is one topology. Close removes it.
type Lab struct {
	ID      string
	Server  string // namespace names
	VPC     string
	Clients []string
	// IPv6 is set in a dual-stack lab (NewDual).
	IPv6 bool

	mu    sync.Mutex
	procs []*Proc
}

// New creates the server and VPC namespaces and the link between them, IPv4 only.
func New() (*Lab, error) { return newLab(false) }

// NewDual is New with IPv6 on every link as well (the package comment draws it).
func NewDual() (*Lab, error) { return newLab(true) }

func newLab(ipv6 bool) (*Lab, error) {
	var b [3]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	l := &Lab{ID: id, Server: "cv" + id + "s", VPC: "cv" + id + "v", IPv6: ipv6}
	steps := [][]string{
		{"ip", "netns", "add", l.Server},
		{"ip", "netns", "add", l.VPC},
	}
	if ipv6 {
		steps = append(steps, enableIPv6(l.Server)...)
		steps = append(steps, enableIPv6(l.VPC)...)
	}
	steps = append(steps, [][]string{
		{"ip", "-n", l.Server, "link", "set", "lo", "up"},
		{"ip", "-n", l.VPC, "link", "set", "lo", "up"},
		{"ip", "-n", l.Server, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", l.VPC},
		{"ip", "-n", l.Server, "addr", "add", ServerVPC.String() + "/24", "dev", "eth1"},
		{"ip", "-n", l.Server, "link", "set", "eth1", "up"},
		{"ip", "-n", l.VPC, "addr", "add", VPCHost.String() + "/24", "dev", "eth0"},
		{"ip", "-n", l.VPC, "link", "set", "eth0", "up"},
	}...)
	if ipv6 {
		steps = append(steps,
			addr6(l.Server, netip.PrefixFrom(ServerVPCIPv6, VPCPrefixIPv6.Bits()), "eth1"),
			addr6(l.VPC, netip.PrefixFrom(VPCHostIPv6, VPCPrefixIPv6.Bits()), "eth0"))
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// enableIPv6 are the steps that turn IPv6 on in namespace ns before its links are made: the
// interfaces created after take the defaults. Duplicate address detection is off for every
// address, link-local ones included, so none waits tentative (and neighbour discovery, which
// the endpoint's proxy NDP answers, starts at once).
func enableIPv6(ns string) [][]string {
	var steps [][]string
	for _, k := range []string{"disable_ipv6=0", "accept_dad=0"} {
		for _, scope := range []string{"all", "default"} {
			steps = append(steps, []string{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf." + scope + "." + k})
		}
	}
	return steps
}

// addr6 is the step that puts IPv6 address p on dev in ns, without duplicate address detection.
func addr6(ns string, p netip.Prefix, dev string) []string {
	return []string{"ip", "-n", ns, "-6", "addr", "add", p.String(), "dev", dev, "nodad"}
}

// AddVPCAddress gives the VPC host one more address (to stand for another host in the VPC).
func (l *Lab) AddVPCAddress(p netip.Prefix) error {
	if p.Addr().Is6() {
		return run(addr6(l.VPC, p, "eth0")...)
	}
	return run("ip", "-n", l.VPC, "addr", "add", p.String(), "dev", "eth0")
}

// AddVPCSubnet puts the VPC host into another subnet of the VPC as well: host (e.g. 10.0.2.10/24)
// goes on its eth0, and the server namespace routes that subnet straight out of eth1, as a VPC
// router would. The host reaches the SNAT address on-link in 10.0.1.0/24, so replies need nothing
// more.
//
// An IPv6 host (VPCHost2PrefixIPv6 in a dual-stack lab) works the same way: the VPC host answers
// clients' addresses on-link in fd00:10:1::/64, through the endpoint's proxy NDP.
func (l *Lab) AddVPCSubnet(host netip.Prefix) error {
	if err := l.AddVPCAddress(host); err != nil {
		return err
	}
	return run("ip", "-n", l.Server, "route", "add", host.Masked().String(), "dev", "eth1")
}

// SetVPCLinkMTU sets the MTU of the endpoint's end of the VPC link (the server's eth1), leaving
// the VPC host's end at 1500: like a host behind a router whose next hop is narrower, the VPC
// host advertises the TCP MSS of its own link, so a client's full-size segments need the
// endpoint host's ICMP "too big" (IPv6 Packet Too Big) to get through. Only the client's
// direction can carry full-size packets then: the VPC host's ones beyond mtu are dropped by
// the narrower end.
func (l *Lab) SetVPCLinkMTU(mtu int) error {
	return run("ip", "-n", l.Server, "link", "set", "eth1", "mtu", fmt.Sprint(mtu))
}

// AddClient creates client namespace n and its link to the server; it returns the server address
// the client dials.
func (l *Lab) AddClient() (ns string, server netip.Addr, err error) {
	c, err := l.AddClientLink()
	return c.NS, c.Server, err
}

// ClientLink is client namespace n and the addresses of its link to the server. In a lab
// without IPv6 the IPv6 ones are zero.
type ClientLink struct {
	NS string
	// Server and ServerIPv6 are the server's end (the addresses a profile's remote names);
	// Client and ClientIPv6 the client's.
	Server, ServerIPv6 netip.Addr
	Client, ClientIPv6 netip.Addr
}

// AddClientLink is AddClient that returns every address of the new link.
func (l *Lab) AddClientLink() (ClientLink, error) {
	l.mu.Lock()
	n := len(l.Clients) + 1
	l.Clients = append(l.Clients, fmt.Sprintf("cv%sc%d", l.ID, n))
	l.mu.Unlock()
	c := ClientLink{
		NS:     fmt.Sprintf("cv%sc%d", l.ID, n),
		Server: netip.AddrFrom4([4]byte{172, 31, byte(n), 1}),
		Client: netip.AddrFrom4([4]byte{172, 31, byte(n), 2}),
	}
	ns := c.NS
	dev := fmt.Sprintf("c%d", n)
	steps := [][]string{{"ip", "netns", "add", ns}}
	if l.IPv6 {
		steps = append(steps, enableIPv6(ns)...)
	}
	steps = append(steps, [][]string{
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", l.Server, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "-n", l.Server, "addr", "add", c.Server.String() + "/24", "dev", dev},
		{"ip", "-n", l.Server, "link", "set", dev, "up"},
		{"ip", "-n", ns, "addr", "add", c.Client.String() + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		// Through the endpoint's host, a client reaches every link address of the endpoint (so
		// one exported profile's remote works from any client host); nothing routes further.
		{"ip", "-n", ns, "route", "add", "default", "via", c.Server.String()},
	}...)
	if l.IPv6 {
		c.ServerIPv6 = netip.MustParseAddr(fmt.Sprintf("fd31:%x::1", n))
		c.ClientIPv6 = netip.MustParseAddr(fmt.Sprintf("fd31:%x::2", n))
		steps = append(steps,
			addr6(l.Server, netip.PrefixFrom(c.ServerIPv6, 64), dev),
			addr6(ns, netip.PrefixFrom(c.ClientIPv6, 64), "eth0"),
			[]string{"ip", "-n", ns, "-6", "route", "add", "default", "via", c.ServerIPv6.String()})
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return ClientLink{}, err
		}
	}
	return c, nil
}

// Command returns a command that runs in namespace ns.
func (l *Lab) Command(ctx context.Context, ns string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// Output runs a command in ns and returns its combined output.
func (l *Lab) Output(ctx context.Context, ns string, args ...string) (string, error) {
	out, err := l.Command(ctx, ns, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), ns, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Start runs a long-lived command in ns; Close stops it.
func (l *Lab) Start(name, ns string, args ...string) (*Proc, error) {
	p, err := StartProc(name, ns, args...)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// Close stops every process and deletes the namespaces (their veths go with them).
func (l *Lab) Close() {
	l.mu.Lock()
	procs := l.procs
	l.procs = nil
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		_ = procs[i].Stop()
	}
	l.mu.Lock()
	nss := append(append([]string{}, l.Clients...), l.Server, l.VPC)
	l.mu.Unlock()
	for _, ns := range nss {
		_ = run("ip", "netns", "del", ns)
	}
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
