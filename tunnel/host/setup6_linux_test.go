package host

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
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

// resolvesTo reports the VPC host's view of addr after it sent it a packet: the MAC address it
// resolved addr to by neighbour discovery ("" if it found none) and the entry's line.
func (v *vpc6) resolve(t *testing.T, addr string) (mac, line string) {
	t.Helper()
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
