package host

import (
	"errors"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ownAddrSource reads the kernel's local routing table over netlink and subscribes to its
// route announcements.
func ownAddrSource() addrSource {
	return addrSource{list: OwnAddrs, subscribe: subscribeLocalTable, refresh: addrRefresh, settle: addrSettle, resubscribe: addrResubscribe}
}

// OwnAddrs returns the destinations the kernel delivers to this host itself, sorted: every
// local, broadcast and anycast entry of its local routing tables (IPv4 and IPv6), and fixedOwn.
// A kernel without IPv6 has no IPv6 table, which is not an error.
func OwnAddrs() ([]netip.Prefix, error) {
	var routes []netlink.Route
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		r, err := localTable(family)
		if err != nil {
			if family == netlink.FAMILY_V6 && errors.Is(err, unix.EAFNOSUPPORT) {
				continue
			}
			return nil, err
		}
		routes = append(routes, r...)
	}
	return ownFromRoutes(routes), nil
}

// localTable reads the local routing table of one family.
func localTable(family int) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_LOCAL}
	var (
		routes []netlink.Route
		err    error
	)
	// A dump that a concurrent change interrupted may be incomplete: read it again.
	for range 3 {
		routes, err = netlink.RouteListFiltered(family, filter, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return routes, err
}

// ownFromRoutes picks the host's own destinations from the local tables' routes and adds the
// fixed ones. The IPv6 table also holds a multicast entry (ff00::/8) for each interface, which
// fixedOwn covers.
func ownFromRoutes(routes []netlink.Route) []netip.Prefix {
	own := slices.Clone(fixedOwn)
	for _, r := range routes {
		if r.Table != unix.RT_TABLE_LOCAL || r.Dst == nil {
			continue
		}
		switch r.Type {
		case unix.RTN_LOCAL, unix.RTN_BROADCAST, unix.RTN_ANYCAST:
		default:
			continue
		}
		ip, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		ones, bits := r.Dst.Mask.Size()
		if bits == 0 || bits != ip.BitLen() {
			continue // a mask that is not a prefix, or of the other family
		}
		own = append(own, netip.PrefixFrom(ip, ones).Masked())
	}
	slices.SortFunc(own, netip.Prefix.Compare)
	return slices.Compact(own)
}

// subscribeLocalTable announces each change of the local routing table (IPv4 or IPv6; it is
// read again either way) until done is closed.
func subscribeLocalTable(done <-chan struct{}) (<-chan struct{}, error) {
	updates := make(chan netlink.RouteUpdate, 64)
	// The subscription's errors end it (its channel closes), which the watch notices; the
	// error itself says nothing the watch can act on.
	if err := netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{ErrorCallback: func(error) {}}); err != nil {
		return nil, err
	}
	events := make(chan struct{}, 1)
	go func() {
		defer close(events)
		for u := range updates {
			if u.Table != unix.RT_TABLE_LOCAL {
				continue
			}
			select {
			case events <- struct{}{}:
			default: // one is pending already: the watch reads the whole table
			}
		}
	}()
	return events, nil
}
