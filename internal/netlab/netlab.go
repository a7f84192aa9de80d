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
// Every address lives inside namespaces the lab created; nothing leaves the machine.
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

// Lab is one topology. Close removes it.
type Lab struct {
	ID      string
	Server  string // namespace names
	VPC     string
	Clients []string

	mu    sync.Mutex
	procs []*Proc
}

// New creates the server and VPC namespaces and the link between them.
func New() (*Lab, error) {
	var b [3]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	l := &Lab{ID: id, Server: "cv" + id + "s", VPC: "cv" + id + "v"}
	steps := [][]string{
		{"ip", "netns", "add", l.Server},
		{"ip", "netns", "add", l.VPC},
		{"ip", "-n", l.Server, "link", "set", "lo", "up"},
		{"ip", "-n", l.VPC, "link", "set", "lo", "up"},
		{"ip", "-n", l.Server, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", l.VPC},
		{"ip", "-n", l.Server, "addr", "add", ServerVPC.String() + "/24", "dev", "eth1"},
		{"ip", "-n", l.Server, "link", "set", "eth1", "up"},
		{"ip", "-n", l.VPC, "addr", "add", VPCHost.String() + "/24", "dev", "eth0"},
		{"ip", "-n", l.VPC, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// AddVPCAddress gives the VPC host one more address (to stand for another host in the VPC).
func (l *Lab) AddVPCAddress(p netip.Prefix) error {
	return run("ip", "-n", l.VPC, "addr", "add", p.String(), "dev", "eth0")
}

// AddVPCSubnet puts the VPC host into another subnet of the VPC as well: host (e.g. 10.0.2.10/24)
// goes on its eth0, and the server namespace routes that subnet straight out of eth1, as a VPC
// router would. The host reaches the SNAT address on-link in 10.0.1.0/24, so replies need nothing
// more.
func (l *Lab) AddVPCSubnet(host netip.Prefix) error {
	if err := run("ip", "-n", l.VPC, "addr", "add", host.String(), "dev", "eth0"); err != nil {
		return err
	}
	return run("ip", "-n", l.Server, "route", "add", host.Masked().String(), "dev", "eth1")
}

// AddClient creates client namespace n and its link to the server; it returns the server address
// the client dials.
func (l *Lab) AddClient() (ns string, server netip.Addr, err error) {
	l.mu.Lock()
	n := len(l.Clients) + 1
	l.Clients = append(l.Clients, fmt.Sprintf("cv%sc%d", l.ID, n))
	l.mu.Unlock()
	ns = fmt.Sprintf("cv%sc%d", l.ID, n)
	server = netip.AddrFrom4([4]byte{172, 31, byte(n), 1})
	client := netip.AddrFrom4([4]byte{172, 31, byte(n), 2})
	dev := fmt.Sprintf("c%d", n)
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", l.Server, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "-n", l.Server, "addr", "add", server.String() + "/24", "dev", dev},
		{"ip", "-n", l.Server, "link", "set", dev, "up"},
		{"ip", "-n", ns, "addr", "add", client.String() + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		// Through the endpoint's host, a client reaches every link address of the endpoint (so
		// one exported profile's remote works from any client host); nothing routes further.
		{"ip", "-n", ns, "route", "add", "default", "via", server.String()},
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return "", netip.Addr{}, err
		}
	}
	return ns, server, nil
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
