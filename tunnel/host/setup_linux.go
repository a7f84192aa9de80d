package host

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/cvpn/cvpn/internal/privdrop"
)

// tunClone is the TUN clone device; opening it and TUNSETIFF create a TUN.
const tunClone = "/dev/net/tun"

// Setup creates the TUN device and the routing that makes the endpoint's addresses reachable
// through it, and sets the sysctls. On error it has removed everything it added and restored
// every sysctl it changed; the error is an *Error naming the step that failed and how to fix it.
func Setup(cfg Config, log *slog.Logger) (*Host, error) {
	h := newHost(cfg, log)
	if err := h.setup(cfg); err != nil {
		return nil, h.abandon(err)
	}
	return h, nil
}

func (h *Host) setup(cfg Config) error {
	fam, err := checkFamilies(&cfg)
	if err != nil {
		return err
	}
	// Everything that can be checked without changing the host is checked first.
	target, err := targetLink(cfg.Interface)
	if err != nil {
		return err
	}
	if fam.v4 {
		if err := checkSNATOnLink(target, cfg.SNAT); err != nil {
			return err
		}
	}
	var link6 *link6
	if fam.v6 {
		if link6, err = readLink6(target); err != nil {
			return err
		}
		if err := link6.check(cfg, h.claims); err != nil {
			return err
		}
	}
	if err := checkNetAdmin(cfg.TUNName); err != nil {
		return err
	}
	if h.checkOnly {
		// Not root: the sysctls are only checked, so check them before anything is added.
		if err := h.setSysctls(cfg.Interface, fam); err != nil {
			return err
		}
	}
	if err := h.createTUN(cfg.TUNName, cfg.MTU, cfg.Queues); err != nil {
		return err
	}
	name, err := h.Device().Name()
	if err != nil {
		return &Error{Op: fmt.Sprintf("name of TUN device %q", cfg.TUNName), Err: err}
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return &Error{Op: fmt.Sprintf("find TUN device %q", name), Err: err}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return &Error{Op: fmt.Sprintf("set TUN device %q up", name), Err: err}
	}
	if fam.v4 {
		if err := h.addRoute(link, netip.PrefixFrom(cfg.SNAT, 32), "target_network.snat_address"); err != nil {
			return err
		}
		if err := h.addProxyNeighbour(target, cfg.SNAT); err != nil {
			return err
		}
	}
	switch {
	case cfg.SNAT6.IsValid():
		if err := h.addRoute(link, netip.PrefixFrom(cfg.SNAT6, 128), "target_network.snat_ipv6_address"); err != nil {
			return err
		}
		if err := h.addProxyNeighbour(target, cfg.SNAT6); err != nil {
			return err
		}
	case fam.v6:
		if err := h.addRoute(link, cfg.Client6, "client_ipv6_cidr_block"); err != nil {
			return err
		}
		if err := h.startProxy6(cfg, link6); err != nil {
			return err
		}
	}
	if h.checkOnly {
		return nil
	}
	return h.setSysctls(cfg.Interface, fam)
}

// checkNetAdmin fails unless the process has CAP_NET_ADMIN in its effective set: root has it,
// and so has a service started with AmbientCapabilities=CAP_NET_ADMIN (systemd). Every step of
// Setup needs it, and the TUN device is the first, so the error is that step's. When the set
// cannot be read, Setup goes on and the steps say what fails.
func checkNetAdmin(tunName string) error {
	eff, err := privdrop.Effective()
	if err != nil || eff.Has(privdrop.NetAdmin) {
		return nil
	}
	return &Error{Op: fmt.Sprintf("create TUN device %q", tunName), Err: ErrNoNetAdmin, Fix: netAdminFix}
}

// netAdminFix says how to give cvpn serve what it needs.
const netAdminFix = "cvpn serve needs root, or CAP_NET_ADMIN (and CAP_NET_BIND_SERVICE for ports below 1024): " +
	"under systemd, AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE"

// targetLink finds target_network.interface.
func targetLink(name string) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if err == nil {
		return link, nil
	}
	op := fmt.Sprintf("target_network.interface %q", name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) || errors.Is(err, unix.ENODEV) {
		return nil, &Error{Op: op, Err: ErrNoInterface,
			Fix: "list the interfaces with `ip link show` and name the one that faces the private network"}
	}
	return nil, &Error{Op: op, Err: err}
}

// createTUN creates the TUN device with its queues (one, a plain TUN, for queues 0 or 1). It
// opens the clone device itself rather than calling tun.CreateTUN, which leaks the descriptor
// when TUNSETIFF fails, and keeps the system error for the explanation. Each queue is a
// descriptor of its own, attached to the device by TUNSETIFF with IFF_MULTI_QUEUE and the
// device's name; the device goes away when the last queue closes.
func (h *Host) createTUN(name string, mtu, queues int) error {
	if queues > MaxQueues {
		return &Error{Op: fmt.Sprintf("create TUN device %q with %d queues", name, queues), Err: errors.New("too many queues"),
			Fix: fmt.Sprintf("at most %d (GOMAXPROCS sets them)", MaxQueues)}
	}
	// The flags tun.CreateTUN sets, which tun.CreateTUNFromFile reads back: IP packets without
	// packet information, and a virtio-net header so that reads and writes carry GSO
	// super-packets (each queue enables the offloads for itself).
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if queues > 1 {
		flags |= unix.IFF_MULTI_QUEUE
	}
	for i := range max(queues, 1) {
		dev, err := h.openQueue(name, mtu, flags, i)
		if err != nil {
			return err
		}
		if i == 0 {
			// The kernel may have chosen the name (a pattern such as "tun%d"): the other
			// queues attach to the device it made.
			made, err := dev.Name()
			if err != nil {
				return &Error{Op: fmt.Sprintf("name of TUN device %q", name), Err: err}
			}
			name = made
		}
	}
	h.log.Debug("host: TUN created", "name", name, "mtu", mtu, "queues", len(h.queues))
	return nil
}

// openQueue opens queue i of the TUN device name (the first creates it) and records how to
// close it.
func (h *Host) openQueue(name string, mtu int, flags uint16, i int) (tun.Device, error) {
	op := fmt.Sprintf("create TUN device %q", name)
	if i > 0 {
		op = fmt.Sprintf("open queue %d of TUN device %q", i, name)
	}
	fd, err := unix.Open(tunClone, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &Error{Op: op + ": open " + tunClone, Err: err, Fix: tunOpenFix(err)}
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, &Error{Op: op, Err: err, Fix: "choose another tun.name"}
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, &Error{Op: op, Err: err, Fix: tunSetFix(err)}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, &Error{Op: op, Err: err}
	}
	file := os.NewFile(uintptr(fd), tunClone)
	dev, err := tun.CreateTUNFromFile(file, mtu)
	if err != nil {
		file.Close()
		return nil, &Error{Op: fmt.Sprintf("%s with mtu %d", op, mtu), Err: err}
	}
	h.queues = append(h.queues, dev)
	what := fmt.Sprintf("close TUN device %q", name)
	if flags&unix.IFF_MULTI_QUEUE != 0 {
		what = fmt.Sprintf("close queue %d of TUN device %q", i, name)
	}
	h.added(what, func() error {
		if err := dev.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			return err
		}
		return nil
	})
	return dev, nil
}

// tunOpenFix explains a failure to open the TUN clone device.
func tunOpenFix(err error) string {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		return "this kernel offers no TUN devices here: load the module (modprobe tun), or pass /dev/net/tun into the container"
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return "cvpn serve needs root, or CAP_NET_ADMIN and read-write access to " + tunClone
	}
	return ""
}

// tunSetFix explains a failed TUNSETIFF.
func tunSetFix(err error) string {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "cvpn serve needs root or CAP_NET_ADMIN to create it"
	case errors.Is(err, unix.EBUSY):
		return "the device is in use by another process (another cvpn?): stop it or choose another tun.name"
	case errors.Is(err, unix.EINVAL):
		return "a network device of that name exists and is not a TUN device cvpn can use: choose another tun.name"
	}
	return ""
}

// addRoute routes dst (an address of the endpoint's, or the client block) into the TUN, so that
// packets to it reach the engine; key names the setting it comes from.
func (h *Host) addRoute(link netlink.Link, dst netip.Prefix, key string) error {
	name := link.Attrs().Name
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
	}
	ip := "ip"
	if dst.Addr().Is4() {
		route.Scope = netlink.SCOPE_LINK
	} else {
		ip = "ip -6"
	}
	what := fmt.Sprintf("route %s dev %s", dst, name)
	if err := netlink.RouteAdd(route); err != nil {
		e := &Error{Op: "add " + what, Err: err}
		switch {
		case errors.Is(err, unix.EEXIST):
			e.Fix = fmt.Sprintf("a route to %s exists already (another cvpn, or one left behind): remove it with `%s route del %s` or choose another %s", dst, ip, dst, key)
		case dst.Addr().Is6() && (errors.Is(err, unix.EACCES) || errors.Is(err, unix.EAFNOSUPPORT)):
			e.Fix = fmt.Sprintf("IPv6 is off on %s: set net.ipv6.conf.default.disable_ipv6 = 0 (the TUN device is created with the default), or turn IPv6 traffic off", name)
		}
		return e
	}
	h.log.Debug("host: route added", "route", what)
	h.added("delete "+what, func() error {
		// The route goes with the TUN device if that was removed first.
		if err := netlink.RouteDel(route); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
			return err
		}
		return nil
	})
	return nil
}

// addProxyNeighbour makes the kernel answer ARP (IPv4) or neighbour solicitations (IPv6) for
// addr, an address of the endpoint's, on the target interface, so that hosts in the private
// network reach it without a route of their own.
func (h *Host) addProxyNeighbour(target netlink.Link, addr netip.Addr) error {
	iface := target.Attrs().Name
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	// Permanent, as `ip neigh add proxy` makes it: the kernel removes a proxy entry of any
	// other state when the link's carrier goes down, and after a link flap the private network
	// would no longer reach the SNAT address (found by make chaos, cutting a node's links).
	neigh := &netlink.Neigh{LinkIndex: target.Attrs().Index, Family: family, Flags: netlink.NTF_PROXY, State: netlink.NUD_PERMANENT, IP: addr.AsSlice()}
	what := fmt.Sprintf("proxy neighbour %s dev %s", addr, iface)
	// The kernel adds a proxy entry that exists already without complaint, so look first: an
	// entry that was there before (the operator's, or one a killed cvpn left) is used as it is
	// and left in place, since Close removes only what Setup added.
	existing, err := proxyEntries(nil, target, family)
	if err != nil {
		return err
	}
	if slices.Contains(existing, addr) {
		if !h.claims.previous(what) {
			h.log.Info("host: the proxy neighbour entry exists already; using it and leaving it in place", "neigh", what)
			return nil
		}
		// A cvpn before this one added it and was killed: it is ours to remove.
		h.log.Info("host: the proxy neighbour entry a previous cvpn added is taken over", "neigh", what)
	} else {
		if err := netlink.NeighAdd(neigh); err != nil {
			return &Error{Op: "add " + what, Err: err}
		}
		h.log.Debug("host: proxy neighbour added", "neigh", what)
	}
	h.claims.add(what)
	h.added("delete "+what, func() error {
		if err := netlink.NeighDel(neigh); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
			return err
		}
		h.claims.remove(what)
		return nil
	})
	return nil
}

// proxyEntries lists the proxy neighbour entries of one family on link, through nl (nil: the
// package's handle).
func proxyEntries(nl *netlink.Handle, link netlink.Link, family int) ([]netip.Addr, error) {
	if nl == nil {
		nl = &netlink.Handle{}
	}
	var (
		list []netlink.Neigh
		err  error
	)
	// A dump that a concurrent change interrupted may be incomplete: read it again.
	for range 3 {
		list, err = nl.NeighProxyList(link.Attrs().Index, family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, &Error{Op: "list proxy neighbours of " + link.Attrs().Name, Err: err}
	}
	addrs := make([]netip.Addr, 0, len(list))
	for _, n := range list {
		if ip, ok := netip.AddrFromSlice(n.IP); ok {
			addrs = append(addrs, ip.Unmap())
		}
	}
	return addrs, nil
}

// checkSNATOnLink verifies that the SNAT address lies in a subnet of the interface and is not the
// interface's own address.
func checkSNATOnLink(link netlink.Link, snat netip.Addr) error {
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return &Error{Op: fmt.Sprintf("addresses of %s", link.Attrs().Name), Err: err}
	}
	var own []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		own = append(own, netip.PrefixFrom(ip, ones))
	}
	return checkSNAT(link.Attrs().Name, own, snat)
}

// checkSNAT is checkSNATOnLink over the interface's addresses (each with its prefix length).
func checkSNAT(iface string, addrs []netip.Prefix, snat netip.Addr) error {
	const op = "target_network.snat_address"
	var subnets []string
	for _, a := range addrs {
		p := a.Masked()
		if a.Addr() == snat {
			return &Error{Op: op, Err: fmt.Errorf("%s is %s's own address", snat, iface), Fix: fmt.Sprintf("use a free address in %s", p)}
		}
		if p.Contains(snat) {
			return nil
		}
		subnets = append(subnets, p.String())
	}
	if len(subnets) == 0 {
		return &Error{Op: op, Err: fmt.Errorf("%s is not inside a subnet of %s, which has no IPv4 address", snat, iface),
			Fix: fmt.Sprintf("give %s its address in the private network, then use a free address of that subnet", iface)}
	}
	return &Error{Op: op, Err: fmt.Errorf("%s is not inside a subnet of %s (%s)", snat, iface, strings.Join(subnets, ", ")),
		Fix: "use a free address in one of them"}
}
