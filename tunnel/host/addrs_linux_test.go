package host

import (
	"net"
	"net/netip"
	"slices"
	"testing"

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

// TestOwnAddrsCoverInterfaces reads this host's local table (no root needed) and checks it
// against the standard library's view: every IPv4 address of every interface that is up is
// one of the host's own destinations, and so is the loopback range.
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
	for _, a := range []string{"127.0.0.1", "127.8.9.10", "255.255.255.255", "224.0.0.1"} {
		if !contains(netip.MustParseAddr(a)) {
			t.Errorf("%s is not among the host's own destinations %v", a, own)
		}
	}
	if !slices.IsSortedFunc(own, netip.Prefix.Compare) {
		t.Errorf("not sorted: %v", own)
	}
}
