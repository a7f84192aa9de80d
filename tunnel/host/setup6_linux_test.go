package host

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The IPv6 tests build a private network in network namespaces: the test's thread moves into
// one of its own (the endpoint host, inNewNetns), where target interface cvpnt0 has
// 2001:db8:1::1/64 and 10.0.1.1/24; its veth peer cvpnt1 sits in a second namespace (a VPC
// host, named, so `ip netns exec` reaches it) with 2001:db8:1::100/64. Addresses are added
// with nodad: duplicate address detection would keep them tentative for a second.
const (
	target6 = "cvpnt0"
	vpcIf6  = "cvpnt1"
)

// vpc6 is the private network of one test.
type vpc6 struct {
	ns     string // the VPC host's namespace
	target netlink.Link
}

func newVPC6(t *testing.T) *vpc6 {
	t.Helper()
	inNewNetns(t)
	need6(t, "ip")
	v := &vpc6{ns: fmt.Sprintf("cvpnh6-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)}
	// ip netns add makes a namespace of its own, whatever the namespace it runs in.
	run6(t, "ip", "netns", "add", v.ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", v.ns).Run() })
	la := netlink.NewLinkAttrs()
	la.Name = target6
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: vpcIf6}); err != nil {
		t.Fatal(err)
	}
	run6(t, "ip", "link", "set", vpcIf6, "netns", v.ns)
	run6(t, "ip", "link", "set", "lo", "up")
	run6(t, "ip", "addr", "add", "2001:db8:1::1/64", "dev", target6, "nodad")
	run6(t, "ip", "addr", "add", "10.0.1.1/24", "dev", target6)
	run6(t, "ip", "link", "set", target6, "up")
	run6(t, "ip", "-n", v.ns, "addr", "add", "2001:db8:1::100/64", "dev", vpcIf6, "nodad")
	run6(t, "ip", "-n", v.ns, "link", "set", vpcIf6, "up")
	run6(t, "ip", "-n", v.ns, "link", "set", "lo", "up")
	var err error
	if v.target, err = netlink.LinkByName(target6); err != nil {
		t.Fatal(err)
	}
	return v
}

func need6(t *testing.T, cmd string) {
	t.Helper()
	if _, err := exec.LookPath(cmd); err != nil {
		t.Fatalf("%s is not installed: %v", cmd, err)
	}
}

// run6 runs a command in the test's namespace (exec forks from the test's locked thread).
func run6(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// proxies6 lists the IPv6 proxy entries on the target interface, sorted.
func (v *vpc6) proxies6(t *testing.T) []netip.Addr {
	t.Helper()
	list, err := proxyEntries(nil, v.target, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(list, netip.Addr.Compare)
	return list
}

// addrRange is first..first+n-1.
func addrRange(first string, n int) []netip.Addr {
	var r []netip.Addr
	a := netip.MustParseAddr(first)
	for range n {
		r = append(r, a)
		a = a.Next()
	}
	return r
}

// routes6 lists the IPv6 routes of the main table through dev.
func routes6(t *testing.T, dev string) []string {
	t.Helper()
	link, err := netlink.LinkByName(dev)
	if err != nil {
		return nil
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	var dst []string
	for _, r := range routes {
		if r.Dst != nil && !r.Dst.IP.IsLinkLocalUnicast() && !r.Dst.IP.IsMulticast() {
			dst = append(dst, r.Dst.String())
		}
	}
	return dst
}

// resolve reports the VPC host's view of addr after it sent it a packet: the MAC address it
// resolved addr to by neighbour discovery ("" if it found none) and the entry's line.
func (v *vpc6) resolve(t *testing.T, addr string) (mac, line string) {
	t.Helper()
	// An entry left from an earlier attempt would still be waiting to retransmit: start afresh.
	_ = exec.Command("ip", "-n", v.ns, "-6", "neigh", "del", addr, "dev", vpcIf6).Run()
	// No reply is expected (nobody reads the TUN): the ping only makes the VPC host solicit.
	_ = exec.Command("ip", "netns", "exec", v.ns, "ping", "-6", "-c1", "-W1", addr).Run()
	line = strings.TrimSpace(run6(t, "ip", "-n", v.ns, "-6", "neigh", "show", addr, "dev", vpcIf6))
	f := strings.Fields(line)
	if i := slices.Index(f, "lladdr"); i >= 0 && i+1 < len(f) && !strings.Contains(line, "FAILED") && !strings.Contains(line, "INCOMPLETE") {
		return f[i+1], line
	}
	return "", line
}

func readProc(t *testing.T, key string) string {
	t.Helper()
	return readSysctl(t, "/proc/sys", key)
}

// TestSetup6Routed: routed IPv6 in a block of 256 addresses: the block is routed into the TUN,
// every client address (not the first two) gets its proxy entry, the sysctls are set, the VPC
// host resolves a client address to the target interface's MAC by neighbour discovery and its
// packets reach the TUN; IPv4 off leaves IPv4 alone. Close removes exactly that: an operator's
// proxy entry stays, and the sysctls are restored.
func TestSetup6Routed(t *testing.T) {
	v := newVPC6(t)
	run6(t, "ip", "-6", "neigh", "add", "proxy", "2001:db8:1::50", "dev", target6) // the operator's
	claim := filepath.Join(t.TempDir(), "claim")
	before := map[string]string{}
	for _, k := range []string{"net/ipv6/conf/all/forwarding", "net/ipv6/conf/cvpnt0/proxy_ndp", "net/ipv6/neigh/cvpnt0/proxy_delay", "net/ipv4/ip_forward"} {
		before[k] = readProc(t, k)
	}
	h, err := Setup(Config{TUNName: "cvpnt6", MTU: 1400, Interface: target6, Client6: netip.MustParsePrefix("2001:db8:1::200/120"),
		Client6Count: 256, ClaimFile: claim}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if got := routes6(t, "cvpnt6"); !slices.Contains(got, "2001:db8:1::200/120") {
		t.Errorf("routes through the TUN %v, want 2001:db8:1::200/120", got)
	}
	want := append([]netip.Addr{netip.MustParseAddr("2001:db8:1::50")}, addrRange("2001:db8:1::202", 254)...)
	if got := v.proxies6(t); !slices.Equal(got, want) {
		t.Errorf("proxy entries: %d (%v...), want the operator's and ::202..::2ff (%d)", len(got), got[:min(3, len(got))], len(want))
	}
	for k, want := range map[string]string{"net/ipv6/conf/all/forwarding": "1", "net/ipv6/conf/cvpnt0/proxy_ndp": "1",
		"net/ipv6/neigh/cvpnt0/proxy_delay": "0", "net/ipv4/ip_forward": before["net/ipv4/ip_forward"]} {
		if got := readProc(t, k); got != want {
			t.Errorf("%s = %s, want %s", k, got, want)
		}
	}
	if b, _ := os.ReadFile(claim); string(b) != "proxy neighbours 2001:db8:1::200/120 dev cvpnt0\n" {
		t.Errorf("claim file %q", b)
	}
	// AddClient6 is a no-op for entries Setup added, and refuses what is no client address.
	if err := h.AddClient6(netip.MustParseAddr("2001:db8:1::2fe")); err != nil {
		t.Errorf("AddClient6 of a client address: %v", err)
	}
	for _, a := range []string{"2001:db8:1::201", "2001:db8:1::300", "2001:db8:1::1", "10.0.1.5"} {
		if err := h.AddClient6(netip.MustParseAddr(a)); err == nil {
			t.Errorf("AddClient6(%s) accepted", a)
		}
	}

	mac, line := v.resolve(t, "2001:db8:1::2a0")
	if mac != v.target.Attrs().HardwareAddr.String() {
		t.Errorf("the VPC host resolved the client address to %q (%s), want the target interface's %s", mac, line, v.target.Attrs().HardwareAddr)
	}
	v.readEcho(t, h, "2001:db8:1::2a0")

	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if got := v.proxies6(t); !slices.Equal(got, want[:1]) {
		t.Errorf("after Close: proxy entries %v, want the operator's alone", got)
	}
	for k, want := range before {
		if got := readProc(t, k); got != want {
			t.Errorf("after Close: %s = %s, want %s back", k, got, want)
		}
	}
	if _, err := netlink.LinkByName("cvpnt6"); err == nil {
		t.Error("the TUN is still there after Close")
	}
	if _, err := os.Stat(claim); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("claim file after Close: %v", err)
	}
}

// readEcho reads the TUN until an echo request the VPC host sends to dst arrives: routed IPv6
// forwards what the proxy entry draws in. The wait only bounds a failure.
func (v *vpc6) readEcho(t *testing.T, h *Host, dst string) {
	t.Helper()
	want := netip.MustParseAddr(dst)
	found := make(chan error, 1)
	go func() {
		bufs, sizes := [][]byte{make([]byte, 65536+16)}, []int{0}
		for {
			n, err := h.Device().Read(bufs, sizes, 16)
			if err != nil {
				found <- err
				return
			}
			for i := range n {
				p := bufs[i][16 : 16+sizes[i]]
				if len(p) >= 48 && p[0]>>4 == 6 && p[6] == unix.IPPROTO_ICMPV6 && netip.AddrFrom16([16]byte(p[24:40])) == want && p[40] == 128 {
					found <- nil
					return
				}
			}
		}
	}()
	deadline := time.After(10 * time.Second)
	for {
		_ = exec.Command("ip", "netns", "exec", v.ns, "ping", "-6", "-c1", "-W1", dst).Run()
		select {
		case err := <-found:
			if err != nil {
				t.Fatalf("read the TUN: %v", err)
			}
			return
		case <-deadline:
			t.Fatalf("no echo request to %s came out of the TUN", dst)
		default:
		}
	}
}

// TestSetup6PerClient: a pool larger than the setup bound gets no entries at setup; AddClient6
// adds one per client address (twice needs two removes), RemoveClient6 removes it, also from many
// sessions at once, Close removes those left, and AddClient6 after Close fails.
func TestSetup6PerClient(t *testing.T) {
	v := newVPC6(t)
	h, err := Setup(Config{TUNName: "cvpnt6", MTU: 1400, Interface: target6, Client6: netip.MustParsePrefix("2001:db8:1::200/120"),
		setupProxyMax: 16}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if got := v.proxies6(t); len(got) != 0 {
		t.Fatalf("proxy entries at setup: %v, want none", got)
	}
	if mac, line := v.resolve(t, "2001:db8:1::203"); mac != "" {
		t.Errorf("the VPC host resolved a client address no client holds: %s", line)
	}
	for _, a := range []string{"2001:db8:1::203", "2001:db8:1::2ff", "2001:db8:1::203", "2001:db8:1::204"} {
		if err := h.AddClient6(netip.MustParseAddr(a)); err != nil {
			t.Fatalf("AddClient6(%s): %v", a, err)
		}
	}
	want := []netip.Addr{netip.MustParseAddr("2001:db8:1::203"), netip.MustParseAddr("2001:db8:1::204"), netip.MustParseAddr("2001:db8:1::2ff")}
	if got := v.proxies6(t); !slices.Equal(got, want) {
		t.Errorf("proxy entries %v, want %v", got, want)
	}
	if mac, line := v.resolve(t, "2001:db8:1::203"); mac != v.target.Attrs().HardwareAddr.String() {
		t.Errorf("the VPC host resolved the client address to %q (%s), want %s", mac, line, v.target.Attrs().HardwareAddr)
	}
	// ::203 was added twice (a reused address: the new session's add came before the old
	// one's remove), so one remove keeps it; ::205 was never added.
	for _, a := range []string{"2001:db8:1::204", "2001:db8:1::205", "2001:db8:1::203"} {
		if err := h.RemoveClient6(netip.MustParseAddr(a)); err != nil {
			t.Errorf("RemoveClient6(%s): %v", a, err)
		}
	}
	if got := v.proxies6(t); !slices.Equal(got, []netip.Addr{want[0], want[2]}) {
		t.Errorf("after RemoveClient6: proxy entries %v", got)
	}
	// Sessions come and go at once: each its own address.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 32 {
		wg.Go(func() {
			a := netip.MustParseAddr(fmt.Sprintf("2001:db8:1::2%02x", 0x20+i))
			if err := h.AddClient6(a); err != nil {
				errs <- err
			}
			if i%2 == 0 {
				if err := h.RemoveClient6(a); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := v.proxies6(t); len(got) != 2+16 {
		t.Errorf("after 32 concurrent sessions, 16 gone: %d entries, want 18", len(got))
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if got := v.proxies6(t); len(got) != 0 {
		t.Errorf("after Close: proxy entries %v", got)
	}
	if err := h.AddClient6(want[0]); !errors.Is(err, ErrClosed) {
		t.Errorf("AddClient6 after Close: %v, want ErrClosed", err)
	}
	if got := v.proxies6(t); len(got) != 0 {
		t.Errorf("after AddClient6 after Close: proxy entries %v", got)
	}
}

// TestSetup6Restart: entries in the client block that a killed cvpn left (its claim file names
// the block) are removed at the next Setup, in either mode; without the claim they are the
// operator's, and Setup refuses the block and leaves them.
func TestSetup6Restart(t *testing.T) {
	v := newVPC6(t)
	left := []string{"2001:db8:1::210", "2001:db8:1::211"}
	for _, a := range left {
		run6(t, "ip", "-6", "neigh", "add", "proxy", a, "dev", target6)
	}
	cfg := Config{TUNName: "cvpnt6", MTU: 1400, Interface: target6, Client6: netip.MustParsePrefix("2001:db8:1::200/120"), Client6Count: 256}

	_, err := Setup(cfg, nil)
	var e *Error
	if !errors.As(err, &e) || !strings.Contains(err.Error(), "client_ipv6_cidr_block: 2001:db8:1::200/120 holds proxy neighbour entries on cvpnt0 that cvpn did not add (2001:db8:1::210, 2001:db8:1::211)") ||
		!strings.Contains(e.Fix, "ip -6 neigh del proxy") {
		t.Fatalf("Setup with the operator's entries in the block: %v", err)
	}
	if got := v.proxies6(t); len(got) != 2 {
		t.Fatalf("the operator's entries: %v", got)
	}

	cfg.ClaimFile = filepath.Join(t.TempDir(), "claim")
	if err := os.WriteFile(cfg.ClaimFile, []byte("proxy neighbour 10.0.1.9 dev cvpnt0\nproxy neighbours 2001:db8:1::200/120 dev cvpnt0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.setupProxyMax = 16
	h, err := Setup(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.proxies6(t); len(got) != 0 {
		t.Errorf("per-client mode after a kill: entries %v, want the left ones removed", got)
	}
	if err := h.AddClient6(netip.MustParseAddr(left[0])); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(cfg.ClaimFile); string(b) != "proxy neighbours 2001:db8:1::200/120 dev cvpnt0\n" {
		t.Errorf("claim file %q", b)
	}
	// Killed again: the file still claims the block, so the next Setup (all at setup) takes
	// the entry over and adds the rest.
	h.proxy6.nl.Close()
	h.undo = h.undo[:0]
	for _, q := range h.queues {
		q.Close()
	}
	cfg.setupProxyMax = 0
	h, err = Setup(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.proxies6(t); !slices.Equal(got, addrRange("2001:db8:1::202", 254)) {
		t.Errorf("setup mode after a kill: %d entries, want ::202..::2ff", len(got))
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if got := v.proxies6(t); len(got) != 0 {
		t.Errorf("after Close: entries %v", got)
	}
	if _, err := os.Stat(cfg.ClaimFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("claim file after Close: %v", err)
	}
}

// TestSetup6Refusals: a client block or SNAT6 address that does not fit the target interface is
// refused before anything is added, with the key, the interface's subnets and a fix.
func TestSetup6Refusals(t *testing.T) {
	v := newVPC6(t)
	// A host the kernel has heard from, and a /128 address whose subnet comes from an on-link
	// route (as with DHCPv6 and router advertisements).
	if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: v.target.Attrs().Index, Family: netlink.FAMILY_V6, State: netlink.NUD_REACHABLE,
		IP: netip.MustParseAddr("2001:db8:1::310").AsSlice(), HardwareAddr: []byte{2, 0, 0, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	// One that never answered is no host.
	if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: v.target.Attrs().Index, Family: netlink.FAMILY_V6, State: netlink.NUD_FAILED,
		IP: netip.MustParseAddr("2001:db8:1::410").AsSlice()}); err != nil {
		t.Fatal(err)
	}
	run6(t, "ip", "addr", "add", "2001:db8:2::1/128", "dev", target6, "nodad")
	run6(t, "ip", "-6", "route", "add", "2001:db8:2::/64", "dev", target6)
	ip4 := readProc(t, "net/ipv4/ip_forward")
	for _, tc := range []struct {
		block, snat6 string
		want         string // "" when accepted
	}{
		{"2001:db8:9::/120", "", "client_ipv6_cidr_block: 2001:db8:9::/120 is not inside any IPv6 subnet of target_network.interface cvpnt0 (2001:db8:1::/64, 2001:db8:2::/64): " +
			"use a part of one of them that no host uses, or set target_network.snat_ipv6_address to source-NAT IPv6 traffic instead"},
		{"2001:db8:1::/120", "", "client_ipv6_cidr_block: 2001:db8:1::/120 contains 2001:db8:1::1, an address of target_network.interface cvpnt0: choose a block"},
		{"2001:db8:2::/120", "", "client_ipv6_cidr_block: 2001:db8:2::/120 contains 2001:db8:2::1, an address of target_network.interface cvpnt0"},
		{"2001:db8:1::300/120", "", "client_ipv6_cidr_block: 2001:db8:1::300/120 contains 2001:db8:1::310, another host the kernel knows on target_network.interface cvpnt0: choose a block"},
		{"2001:db8:1::/64", "", "client_ipv6_cidr_block: 2001:db8:1::/64 contains 2001:db8:1::1, an address of"},
		{"2001:db8:1::400/120", "", ""}, // the failed neighbour does not count
		{"2001:db8:2:0:1::/112", "", ""},
		{"fd00:c::/120", "2001:db8:7::5", "target_network.snat_ipv6_address: 2001:db8:7::5 is not inside any IPv6 subnet of target_network.interface cvpnt0 (2001:db8:1::/64, 2001:db8:2::/64): use a free address in one of them"},
		{"fd00:c::/120", "2001:db8:1::1", "target_network.snat_ipv6_address: 2001:db8:1::1 is cvpnt0's own address"},
		{"fd00:c::/120", "2001:db8:1::310", "target_network.snat_ipv6_address: 2001:db8:1::310 is in use by another host on cvpnt0"},
		{"fd00:c::/120", "fd00:c::5", "target_network.snat_ipv6_address: fd00:c::5 is inside client_ipv6_cidr_block fd00:c::/120"},
	} {
		cfg := Config{TUNName: "cvpnt6", MTU: 1400, Interface: target6, Client6: netip.MustParsePrefix(tc.block), setupProxyMax: 16}
		if tc.snat6 != "" {
			cfg.SNAT6 = netip.MustParseAddr(tc.snat6)
		}
		h, err := Setup(cfg, nil)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v, want accepted", tc.block, err)
			}
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var e *Error
		if !errors.As(err, &e) || !strings.HasPrefix(err.Error(), tc.want) || e.Fix == "" {
			t.Errorf("%s %s: %v\nwant *Error starting %q", tc.block, tc.snat6, err, tc.want)
		}
		if h != nil {
			t.Errorf("%s: a Host with an error", tc.block)
		}
		if _, err := netlink.LinkByName("cvpnt6"); err == nil {
			t.Fatalf("%s: the TUN was created before the check", tc.block)
		}
		if got := readProc(t, "net/ipv6/conf/all/forwarding"); got != "0" {
			t.Fatalf("%s: forwarding %s after a refusal", tc.block, got)
		}
	}
	if got := readProc(t, "net/ipv4/ip_forward"); got != ip4 {
		t.Errorf("ip_forward %s, want %s: IPv4 is off", got, ip4)
	}
	if got := v.proxies6(t); len(got) != 0 {
		t.Errorf("proxy entries left: %v", got)
	}
}

// TestSetup6NAT: with SNAT6, IPv6 is source-NATed like IPv4: a /128 route and one proxy entry
// for each family's SNAT address, none for the client block, which need not be on the link;
// the VPC host resolves the SNAT6 address to the target interface. Close removes them.
func TestSetup6NAT(t *testing.T) {
	v := newVPC6(t)
	claim := filepath.Join(t.TempDir(), "claim")
	h, err := Setup(Config{TUNName: "cvpnt6", MTU: 1400, Interface: target6, SNAT: netip.MustParseAddr("10.0.1.2"),
		Client6: netip.MustParsePrefix("fd00:c::/120"), SNAT6: netip.MustParseAddr("2001:db8:1::53"), ClaimFile: claim}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if got := routes6(t, "cvpnt6"); !slices.Equal(got, []string{"2001:db8:1::53/128"}) {
		t.Errorf("IPv6 routes through the TUN %v, want the SNAT6 address's alone", got)
	}
	if got := v.proxies6(t); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("2001:db8:1::53")}) {
		t.Errorf("proxy entries %v, want the SNAT6 address", got)
	}
	if got4, err := proxyEntries(nil, v.target, netlink.FAMILY_V4); err != nil || !slices.Equal(got4, []netip.Addr{netip.MustParseAddr("10.0.1.2")}) {
		t.Errorf("IPv4 proxy entries %v, %v", got4, err)
	}
	if err := h.AddClient6(netip.MustParseAddr("fd00:c::5")); err != nil {
		t.Errorf("AddClient6 in NAT mode: %v, want nothing done", err)
	}
	if b, _ := os.ReadFile(claim); string(b) != "proxy neighbour 10.0.1.2 dev cvpnt0\nproxy neighbour 2001:db8:1::53 dev cvpnt0\n" {
		t.Errorf("claim file %q", b)
	}
	for k, want := range map[string]string{"net/ipv6/conf/all/forwarding": "1", "net/ipv6/conf/cvpnt0/proxy_ndp": "1", "net/ipv4/ip_forward": "1"} {
		if got := readProc(t, k); got != want {
			t.Errorf("%s = %s, want %s", k, got, want)
		}
	}
	if mac, line := v.resolve(t, "2001:db8:1::53"); mac != v.target.Attrs().HardwareAddr.String() {
		t.Errorf("the VPC host resolved the SNAT6 address to %q (%s), want %s", mac, line, v.target.Attrs().HardwareAddr)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if got := v.proxies6(t); len(got) != 0 {
		t.Errorf("after Close: proxy entries %v", got)
	}
	if _, err := os.Stat(claim); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("claim file after Close: %v", err)
	}
}

// BenchmarkProxyEntries measures what decides SetupProxyMax: the time to add and to remove n
// IPv6 proxy entries on one interface (a veth), one netlink request each. Each entry joins a
// solicited-node multicast group, and the kernel's work per group grows with the groups the
// interface has, so the time per entry grows with n: on kernel 6.18, 16,384 entries took 2.6 s
// to add and 2.4 s to remove, 65,536 took 2 min and 2 min 45 s (too long to run here).
func BenchmarkProxyEntries(b *testing.B) {
	for _, n := range []int{256, 1024, 4096} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			// A namespace of its own, as inNewNetns makes (the thread stays locked and ends with
			// the benchmark's goroutine).
			runtime.LockOSThread()
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				b.Skipf("needs root: %v", err)
			}
			la := netlink.NewLinkAttrs()
			la.Name = target6
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: vpcIf6}); err != nil {
				b.Fatal(err)
			}
			// Both ends up, so that the interface has a carrier and sends what a real one sends.
			peer, err := netlink.LinkByName(vpcIf6)
			if err != nil {
				b.Fatal(err)
			}
			if err := netlink.LinkSetUp(peer); err != nil {
				b.Fatal(err)
			}
			link, err := netlink.LinkByName(target6)
			if err != nil {
				b.Fatal(err)
			}
			if err := netlink.LinkSetUp(link); err != nil {
				b.Fatal(err)
			}
			nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
			if err != nil {
				b.Fatal(err)
			}
			defer nl.Close()
			p := &proxy6{link: link, nl: nl, added: map[netip.Addr]int{}}
			r := newClientRange6(netip.MustParsePrefix("2001:db8:1::/64"), n+2)
			var add, del time.Duration
			for b.Loop() {
				start := time.Now()
				for i := range r.n {
					if err := p.addLocked(r.at(i)); err != nil {
						b.Fatal(err)
					}
				}
				add += time.Since(start)
				start = time.Now()
				for i := range r.n {
					if err := p.del(r.at(i)); err != nil {
						b.Fatal(err)
					}
				}
				del += time.Since(start)
			}
			b.ReportMetric(float64(add.Milliseconds())/float64(b.N), "add-ms")
			b.ReportMetric(float64(del.Milliseconds())/float64(b.N), "remove-ms")
			b.ReportMetric(float64(add.Nanoseconds())/float64(b.N*n)/1e3, "add-µs/entry")
		})
	}
}

// TestSetup6NoIPv6OnTUN: where new devices get no IPv6 (default.disable_ipv6), the route of the
// client block into the TUN fails with the sysctl that fixes it, and nothing is left.
func TestSetup6NoIPv6OnTUN(t *testing.T) {
	v := newVPC6(t)
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	_, err := Setup(Config{TUNName: "cvpnt6", MTU: 1400, Interface: target6, Client6: netip.MustParsePrefix("2001:db8:1::200/120")}, nil)
	if err == nil || !strings.Contains(err.Error(), "add route 2001:db8:1::200/120 dev cvpnt6") || !strings.Contains(err.Error(), "disable_ipv6 = 0") {
		t.Errorf("Setup = %v, want the route's failure and the fix", err)
	}
	if _, err := netlink.LinkByName("cvpnt6"); err == nil {
		t.Error("the TUN is left")
	}
	if got := v.proxies6(t); len(got) != 0 {
		t.Errorf("proxy entries left: %v", got)
	}
}

// TestProxyEntriesSurviveCarrierLoss: the proxy entries of the SNAT addresses (and of routed
// IPv6 clients) outlive a link flap of the target interface: the kernel flushes proxy entries
// that are not permanent when the carrier goes, and the private network then no longer
// reaches the endpoint (make chaos found it, taking a cluster node's links down and up).
func TestProxyEntriesSurviveCarrierLoss(t *testing.T) {
	v := newVPC6(t)
	h, err := Setup(Config{TUNName: "cvpnt6", MTU: 1400, Interface: target6, SNAT: netip.MustParseAddr("10.0.1.2"),
		Client6: netip.MustParsePrefix("fd00:c::/120"), SNAT6: netip.MustParseAddr("2001:db8:1::53")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// The peer's end going down drops the target's carrier, as a pulled cable does.
	run6(t, "ip", "-n", v.ns, "link", "set", vpcIf6, "down")
	run6(t, "ip", "-n", v.ns, "link", "set", vpcIf6, "up")
	if got4, err := proxyEntries(nil, v.target, netlink.FAMILY_V4); err != nil || !slices.Equal(got4, []netip.Addr{netip.MustParseAddr("10.0.1.2")}) {
		t.Errorf("after a link flap, IPv4 proxy entries %v (%v), want the SNAT address", got4, err)
	}
	if got := v.proxies6(t); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("2001:db8:1::53")}) {
		t.Errorf("after a link flap, IPv6 proxy entries %v, want the SNAT6 address", got)
	}
}
