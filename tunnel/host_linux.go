package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/tun"
)

// HostConfig says how the endpoint attaches to the private network.
type HostConfig struct {
	TUNName string
	MTU     int
	// Interface faces the private network; SNAT is the endpoint's own address in its subnet.
	Interface string
	SNAT      netip.Addr
}

// Host is the kernel state the endpoint added: the TUN device, the host route that sends the
// SNAT address into it, the proxy neighbour entry that answers ARP for the SNAT address on the
// private-network interface, and IPv4 forwarding. Close removes exactly what was added.
type Host struct {
	Device tun.Device
	log    *slog.Logger
	undo   []func() error
}

// SetupHost creates the TUN and the routing that makes SNAT reachable through it. On error
// nothing is left behind.
func SetupHost(cfg HostConfig, log *slog.Logger) (h *Host, err error) {
	h = &Host{log: log}
	defer func() {
		if err != nil {
			h.Close()
			h = nil
		}
	}()
	target, err := netlink.LinkByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("target_network.interface %q: %w", cfg.Interface, err)
	}
	if err := checkSNATOnLink(target, cfg.SNAT); err != nil {
		return nil, err
	}
	dev, err := tun.CreateTUN(cfg.TUNName, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("create tun %q: %w", cfg.TUNName, err)
	}
	h.Device = dev
	h.undo = append(h.undo, dev.Close)
	name, _ := dev.Name()
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("tun %q: %w", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: cfg.SNAT.AsSlice(), Mask: net.CIDRMask(32, 32)},
		Scope:     netlink.SCOPE_LINK,
	}
	if err := netlink.RouteAdd(route); err != nil {
		return nil, fmt.Errorf("route %s dev %s: %w", cfg.SNAT, name, err)
	}
	h.undo = append(h.undo, func() error {
		// The route goes with the TUN when the device is closed first.
		if err := netlink.RouteDel(route); err != nil && !errors.Is(err, syscall.ESRCH) && !errors.Is(err, syscall.ENODEV) {
			return err
		}
		return nil
	})
	neigh := &netlink.Neigh{
		LinkIndex: target.Attrs().Index,
		Family:    netlink.FAMILY_V4,
		Flags:     netlink.NTF_PROXY,
		IP:        cfg.SNAT.AsSlice(),
	}
	if err := netlink.NeighAdd(neigh); err != nil {
		return nil, fmt.Errorf("proxy neighbour %s on %s: %w", cfg.SNAT, cfg.Interface, err)
	}
	h.undo = append(h.undo, func() error { return netlink.NeighDel(neigh) })
	if err := h.sysctl("/proc/sys/net/ipv4/ip_forward", "1"); err != nil {
		return nil, err
	}
	// Answer ARP for the SNAT address at once rather than after the random proxy delay.
	if err := h.sysctl("/proc/sys/net/ipv4/neigh/"+cfg.Interface+"/proxy_delay", "0"); err != nil {
		return nil, err
	}
	return h, nil
}

// sysctl sets a kernel value and records how to restore the old one.
func (h *Host) sysctl(path, value string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	prev := strings.TrimSpace(string(old))
	if prev == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set %s=%s: %w", path, value, err)
	}
	h.undo = append(h.undo, func() error { return os.WriteFile(path, []byte(prev), 0o644) })
	return nil
}

// checkSNATOnLink verifies that the SNAT address lies in a subnet of the interface and is not
// the interface's own address.
func checkSNATOnLink(link netlink.Link, snat netip.Addr) error {
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", link.Attrs().Name, err)
	}
	var subnets []string
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip, ones).Masked()
		if ip == snat {
			return fmt.Errorf("target_network.snat_address: %s is %s's own address; use a free address in %s", snat, link.Attrs().Name, p)
		}
		if p.Contains(snat) {
			return nil
		}
		subnets = append(subnets, p.String())
	}
	return fmt.Errorf("target_network.snat_address: %s is not inside a subnet of %s (%s)", snat, link.Attrs().Name, strings.Join(subnets, ", "))
}

// Close removes what SetupHost added, newest first.
func (h *Host) Close() error {
	var errs []error
	for i := len(h.undo) - 1; i >= 0; i-- {
		if err := h.undo[i](); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	h.undo = nil
	return errors.Join(errs...)
}
