package host

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func ipNet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

// TestOwnFromRoutes: local, broadcast and anycast entries of the local tables are the host's,
// with the limited broadcast address, multicast of both families, ::1 and the IPv6 link-local
// range; other tables and other types are not.
func TestOwnFromRoutes(t *testing.T) {
	local := func(typ int, dst string) netlink.Route {
		return netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: typ, Dst: ipNet(dst)}
	}
	routes := []netlink.Route{
		local(unix.RTN_LOCAL, "127.0.0.0/8"),
		local(unix.RTN_LOCAL, "127.0.0.1/32"),
		local(unix.RTN_BROADCAST, "127.255.255.255/32"),
		local(unix.RTN_LOCAL, "10.0.1.1/32"),
		local(unix.RTN_BROADCAST, "10.0.1.255/32"),
		local(unix.RTN_LOCAL, "10.0.1.1/32"),       // twice (two interfaces, one address)
		local(unix.RTN_LOCAL, "192.0.2.0/24"),      // an operator's `ip route add local`
		local(unix.RTN_UNICAST, "198.51.100.0/24"), // not delivered locally
		local(unix.RTN_LOCAL, "2001:db8::1/128"),
		local(unix.RTN_LOCAL, "fe80::1/128"),
		local(unix.RTN_ANYCAST, "2001:db8::/128"),  // the subnet-router anycast address
		local(unix.RTN_MULTICAST, "ff00::/8"),      // covered by the fixed ff00::/8
		local(unix.RTN_UNICAST, "2001:db8:5::/64"), // not delivered locally
		{Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, Dst: ipNet("10.0.1.0/24")},
		{Table: unix.RT_TABLE_MAIN, Type: unix.RTN_LOCAL, Dst: ipNet("2001:db8:6::1/128")}, // not the local table
		{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL},                                 // no destination
	}
	var want []netip.Prefix
	for _, s := range []string{"10.0.1.1/32", "10.0.1.255/32", "127.0.0.0/8", "127.0.0.1/32", "127.255.255.255/32",
		"192.0.2.0/24", "224.0.0.0/4", "255.255.255.255/32",
		"::1/128", "2001:db8::/128", "2001:db8::1/128", "fe80::/10", "fe80::1/128", "ff00::/8"} {
		want = append(want, netip.MustParsePrefix(s))
	}
	if got := ownFromRoutes(routes); !slices.Equal(got, want) {
		t.Errorf("ownFromRoutes =\n%v\nwant\n%v", got, want)
	}
}

// TestOwnAddrsCoverInterfaces reads this host's local tables (no root needed) and checks them
// against the standard library's and netlink's view: every address of either family of every
// interface that is up is one of the host's own destinations, and so is the loopback range.
func TestOwnAddrsCoverInterfaces(t *testing.T) {
	own, err := OwnAddrs()
	if err != nil {
		t.Fatal(err)
	}
	contains := func(a netip.Addr) bool {
		return slices.ContainsFunc(own, func(p netip.Prefix) bool { return p.Contains(a) })
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok || n.IP.To4() == nil {
				continue
			}
			ip, _ := netip.AddrFromSlice(n.IP.To4())
			checked++
			if !contains(ip) {
				t.Errorf("%s's address %s is not among the host's own destinations %v", ifc.Name, ip, own)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no interface with an IPv4 address is up: nothing was compared")
	}
	// IPv6 addresses as netlink lists them, since a tentative one (duplicate address detection
	// still running) is not the host's yet.
	addrs6, err := netlink.AddrList(nil, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs6 {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			continue
		}
		if link, err := netlink.LinkByIndex(a.LinkIndex); err != nil || link.Attrs().Flags&net.FlagUp == 0 {
			continue
		}
		if !contains(ip) {
			t.Errorf("the address %s is not among the host's own destinations %v", ip, own)
		}
	}
	for _, a := range []string{"127.0.0.1", "127.8.9.10", "255.255.255.255", "224.0.0.1", "::1", "fe80::1", "ff02::1"} {
		if !contains(netip.MustParseAddr(a)) {
			t.Errorf("%s is not among the host's own destinations %v", a, own)
		}
	}
	if !slices.IsSortedFunc(own, netip.Prefix.Compare) {
		t.Errorf("not sorted: %v", own)
	}
}

// TestOwnAddrs6 in a namespace of its own: an interface's global, unique local and link-local
// IPv6 addresses are the host's own destinations, and so is the subnet-router anycast address a
// forwarding host answers; ::1, link-local and multicast are covered whatever the addresses.
func TestOwnAddrs6(t *testing.T) {
	inNewNetns(t)
	// No duplicate address detection, which would keep the link-local address tentative (and
	// out of the local table) for a second.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = "cvpnd0"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "cvpnd1"}); err != nil {
		t.Fatal(err)
	}
	peer, err := netlink.LinkByName("cvpnd1")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	link, err := netlink.LinkByName("cvpnd0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"2001:db8:7::1/64", "fd00:7::1/64", "fe80::7/64"} {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		addr.Flags = unix.IFA_F_NODAD
		if err := netlink.AddrAdd(link, addr); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	// The kernel makes the interface's own link-local address when the link comes up, in a
	// moment of its own: the test adds one itself.
	linkLocal := netip.MustParsePrefix("fe80::7/128")
	wanted := []netip.Prefix{netip.MustParsePrefix("2001:db8:7::1/128"), netip.MustParsePrefix("fd00:7::1/128"), linkLocal,
		netip.MustParsePrefix("2001:db8:7::/128"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("fe80::/10"),
		netip.MustParsePrefix("ff00::/8"), netip.MustParsePrefix("127.0.0.1/32")}
	// The kernel adds an address's local route from a work queue once the address is usable
	// (even without duplicate address detection): read until they are all there, as the
	// watch would after the announcement. The deadline only bounds a failure.
	var own []netip.Prefix
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var err error
		if own, err = OwnAddrs(); err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(wanted, func(p netip.Prefix) bool { return !slices.Contains(own, p) }) || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range wanted {
		if !slices.Contains(own, want) {
			t.Errorf("%s is not among the host's own destinations %v", want, own)
		}
	}
	for _, not := range []string{"2001:db8:7::2", "fd00:7::2", "2001:db8:8::1"} {
		if slices.ContainsFunc(own, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(not)) }) {
			t.Errorf("%s, another host's, is among the host's own destinations %v", not, own)
		}
	}
}
