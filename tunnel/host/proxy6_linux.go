package host

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// link6 is what the target interface has of IPv6, read once before Setup changes anything.
type link6 struct {
	link netlink.Link
	name string
	// own are the interface's addresses; subnets the prefixes on its link (those of its
	// addresses, and the on-link routes of the main table, which is how a host learns its
	// subnet from router advertisements when DHCPv6 gives it a /128), link-local ones left out.
	own     []netip.Addr
	subnets []netip.Prefix
	// neighbours are the other hosts the kernel has heard from on the interface; proxies its
	// proxy entries.
	neighbours []netip.Addr
	proxies    []netip.Addr
}

// linkLocal6 is fe80::/10, which no client block or SNAT address can be in.
var linkLocal6 = netip.MustParsePrefix("fe80::/10")

func readLink6(link netlink.Link) (*link6, error) {
	l := &link6{link: link, name: link.Attrs().Name}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		return nil, &Error{Op: "IPv6 addresses of " + l.name, Err: err}
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || !ip.Is6() {
			continue
		}
		l.own = append(l.own, ip)
		if ones, _ := a.Mask.Size(); ones < 128 && !linkLocal6.Contains(ip) {
			l.subnets = append(l.subnets, netip.PrefixFrom(ip, ones).Masked())
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, &Error{Op: "IPv6 routes of " + l.name, Err: err}
	}
	for _, r := range routes {
		if r.Dst == nil || r.Gw != nil || len(r.MultiPath) > 0 || r.Type != unix.RTN_UNICAST {
			continue
		}
		ip, ok := netip.AddrFromSlice(r.Dst.IP)
		ones, bits := r.Dst.Mask.Size()
		if !ok || bits != 128 || ones == 128 || linkLocal6.Contains(ip) || ip.IsMulticast() {
			continue
		}
		l.subnets = append(l.subnets, netip.PrefixFrom(ip, ones).Masked())
	}
	slices.SortFunc(l.subnets, netip.Prefix.Compare)
	l.subnets = slices.Compact(l.subnets)
	neighs, err := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_V6)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, &Error{Op: "IPv6 neighbours of " + l.name, Err: err}
	}
	for _, n := range neighs {
		// An entry that never got an answer is no host; multicast ones are no hosts either.
		if n.State&(unix.NUD_INCOMPLETE|unix.NUD_FAILED|unix.NUD_NOARP) != 0 || n.State == unix.NUD_NONE || n.Flags&netlink.NTF_PROXY != 0 {
			continue
		}
		if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Is6() {
			l.neighbours = append(l.neighbours, ip)
		}
	}
	if l.proxies, err = proxyEntries(nil, link, netlink.FAMILY_V6); err != nil {
		return nil, err
	}
	slices.SortFunc(l.proxies, netip.Addr.Compare)
	return l, nil
}

// check verifies that cfg's IPv6 addresses fit the interface: the SNAT6 address in one of its
// subnets and free, or else the client block inside one of its subnets with no address of the
// interface's or of another host's in it, and no proxy entry but those a killed cvpn left.
func (l *link6) check(cfg Config, c *claims) error {
	if cfg.SNAT6.IsValid() {
		const op = "target_network.snat_ipv6_address"
		a := cfg.SNAT6
		switch {
		case slices.Contains(l.own, a):
			return &Error{Op: op, Err: fmt.Errorf("%s is %s's own address", a, l.name), Fix: "use a free address of its subnet"}
		case slices.Contains(l.neighbours, a):
			return &Error{Op: op, Err: fmt.Errorf("%s is in use by another host on %s (the kernel's neighbour table has it)", a, l.name),
				Fix: "use a free address of the subnet (`ip -6 neigh show dev " + l.name + "` lists the hosts the kernel knows)"}
		}
		if !slices.ContainsFunc(l.subnets, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return l.notInSubnet(op, a.String())
		}
		return nil
	}
	const op = "client_ipv6_cidr_block"
	b := cfg.Client6
	if !slices.ContainsFunc(l.subnets, func(p netip.Prefix) bool { return p.Bits() <= b.Bits() && p.Contains(b.Addr()) }) {
		return l.notInSubnet(op, b.String())
	}
	if i := slices.IndexFunc(l.own, b.Contains); i >= 0 {
		return &Error{Op: op, Err: fmt.Errorf("%s contains %s, an address of target_network.interface %s", b, l.own[i], l.name),
			Fix: "choose a block of the subnet that leaves out the interface's addresses (the block is routed to the clients)"}
	}
	if i := slices.IndexFunc(l.neighbours, b.Contains); i >= 0 {
		return &Error{Op: op, Err: fmt.Errorf("%s contains %s, another host the kernel knows on target_network.interface %s", b, l.neighbours[i], l.name),
			Fix: "choose a block of the subnet that no other host uses (`ip -6 neigh show dev " + l.name + "` lists those the kernel knows)"}
	}
	var foreign []string
	if !c.previous(blockClaim(b, l.name)) {
		for _, p := range l.proxies {
			if b.Contains(p) {
				foreign = append(foreign, p.String())
			}
		}
	}
	if len(foreign) > 0 {
		if len(foreign) > 3 {
			foreign = append(foreign[:3], fmt.Sprintf("and %d more", len(foreign)-3))
		}
		return &Error{Op: op, Err: fmt.Errorf("%s holds proxy neighbour entries on %s that cvpn did not add (%s)", b, l.name, strings.Join(foreign, ", ")),
			Fix: fmt.Sprintf("remove them (`ip -6 neigh del proxy ADDRESS dev %s`) or choose another block: cvpn adds and removes the entries of its clients itself", l.name)}
	}
	return nil
}

// notInSubnet explains an address or block outside every IPv6 subnet of the interface.
func (l *link6) notInSubnet(op, what string) error {
	if len(l.subnets) == 0 {
		return &Error{Op: op, Err: fmt.Errorf("%s is not inside any IPv6 subnet of target_network.interface %s, which has none", what, l.name),
			Fix: fmt.Sprintf("give %s its IPv6 address in the private network (or wait for it: router advertisements give the subnet), then use a part of that subnet", l.name)}
	}
	subnets := make([]string, len(l.subnets))
	for i, p := range l.subnets {
		subnets[i] = p.String()
	}
	fix := "use a free address in one of them"
	if op == "client_ipv6_cidr_block" {
		fix = "use a part of one of them that no host uses, or set target_network.snat_ipv6_address to source-NAT IPv6 traffic instead"
	}
	return &Error{Op: op, Err: fmt.Errorf("%s is not inside any IPv6 subnet of target_network.interface %s (%s)", what, l.name, strings.Join(subnets, ", ")), Fix: fix}
}

// blockClaim is the claim line for the proxy entries of a client block.
func blockClaim(block netip.Prefix, iface string) string {
	return fmt.Sprintf("proxy neighbours %s dev %s", block, iface)
}

// proxy6 answers neighbour discovery for the client addresses of routed IPv6 mode: every
// address has its proxy entry from Setup on (atSetup), or each gets its own while a client
// holds it (add, remove).
type proxy6 struct {
	link    netlink.Link
	block   netip.Prefix
	clients clientRange6
	atSetup bool

	mu sync.Mutex // guards the fields below and serialises the kernel requests
	nl *netlink.Handle
	// added counts the holders of each entry added: one at setup, or the AddClient6 calls not
	// yet matched by RemoveClient6. Counting lets a new session's add of a reused address come
	// before the old session's remove, in whatever order their goroutines run.
	added  map[netip.Addr]int
	closed bool
}

// startProxy6 removes the entries a killed cvpn left in the client block, claims the block, and
// adds every client address's entry if the block is small enough.
func (h *Host) startProxy6(cfg Config, l *link6) error {
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return &Error{Op: "open a netlink socket", Err: err}
	}
	most := SetupProxyMax
	if cfg.setupProxyMax > 0 {
		most = cfg.setupProxyMax
	}
	p := &proxy6{link: l.link, block: cfg.Client6, clients: newClientRange6(cfg.Client6, cfg.Client6Count),
		nl: nl, added: make(map[netip.Addr]int)}
	p.atSetup = p.clients.n <= most
	claim := blockClaim(cfg.Client6, l.name)
	what := "proxy neighbours of " + cfg.Client6.String() + " dev " + l.name
	h.added("delete "+what, func() error {
		err := p.close()
		if err == nil {
			h.claims.remove(claim)
		}
		return err
	})
	// check let through only the entries a killed cvpn left (its claim names the block).
	stale := 0
	for _, a := range l.proxies {
		if cfg.Client6.Contains(a) {
			if err := p.del(a); err != nil {
				return &Error{Op: fmt.Sprintf("delete proxy neighbour %s dev %s a previous cvpn left", a, l.name), Err: err}
			}
			stale++
		}
	}
	if stale > 0 {
		h.log.Info("host: removed the proxy neighbour entries a previous cvpn left", "neigh", what, "entries", stale)
	}
	h.claims.add(claim)
	h.proxy6 = p
	if !p.atSetup {
		h.log.Info("host: proxy neighbour entries are added for each client as it connects", "neigh", what, "addresses", p.clients.n, "at_setup_up_to", most)
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.clients.n {
		a := p.clients.at(i)
		if err := p.addLocked(a); err != nil {
			return &Error{Op: fmt.Sprintf("add proxy neighbour %s dev %s", a, l.name), Err: err}
		}
	}
	h.log.Debug("host: proxy neighbours added", "neigh", what, "entries", p.clients.n)
	return nil
}

func (p *proxy6) neigh(a netip.Addr) *netlink.Neigh {
	// Permanent, so that a link flap does not remove it (addProxyNeighbour).
	return &netlink.Neigh{LinkIndex: p.link.Attrs().Index, Family: netlink.FAMILY_V6, Flags: netlink.NTF_PROXY, State: netlink.NUD_PERMANENT, IP: a.AsSlice()}
}

// addLocked adds a's entry; p.mu is held.
func (p *proxy6) addLocked(a netip.Addr) error {
	if err := p.nl.NeighAdd(p.neigh(a)); err != nil {
		return err
	}
	p.added[a] = 1
	return nil
}

// del deletes a's entry, which may be gone already.
func (p *proxy6) del(a netip.Addr) error {
	if err := p.nl.NeighDel(p.neigh(a)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}

// add gives the client address a its entry, unless Setup did.
func (p *proxy6) add(a netip.Addr) error {
	if !p.clients.contains(a) {
		return &Error{Op: "add proxy neighbour " + a.String(), Err: fmt.Errorf("not a client address of %s", p.block)}
	}
	if p.atSetup {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return &Error{Op: "add proxy neighbour " + a.String(), Err: ErrClosed}
	case p.added[a] > 0:
		p.added[a]++
		return nil
	}
	if err := p.addLocked(a); err != nil {
		return &Error{Op: fmt.Sprintf("add proxy neighbour %s dev %s", a, p.link.Attrs().Name), Err: err}
	}
	return nil
}

// remove drops one add of a, and deletes the entry with the last; others (Setup's) stay.
func (p *proxy6) remove(a netip.Addr) error {
	if p.atSetup {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.added[a] == 0 {
		return nil
	}
	if p.added[a]--; p.added[a] > 0 {
		return nil
	}
	delete(p.added, a)
	if err := p.del(a); err != nil {
		return &Error{Op: fmt.Sprintf("delete proxy neighbour %s dev %s", a, p.link.Attrs().Name), Err: err}
	}
	return nil
}

// close deletes every entry added and stops add.
func (p *proxy6) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var failed errorList
	for a := range p.added {
		if err := p.del(a); err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", a, err))
			continue
		}
		delete(p.added, a)
	}
	p.nl.Close()
	if len(failed) > 0 {
		return failed
	}
	return nil
}
