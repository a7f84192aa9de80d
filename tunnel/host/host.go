// Package host owns the kernel state that attaches the endpoint to the private network: the TUN
// device (with a queue per data-plane worker), the routes that send the endpoint's addresses into
// it, the proxy neighbour entries that answer ARP and neighbour discovery for them on the target
// interface, and the sysctls the endpoint needs. It also finds the host's own destinations, which
// clients must not reach (WatchOwnAddrs: the kernel's local routing tables of both families, kept
// current).
//
// IPv4 traffic is always source-NATed: a host route of the SNAT address into the TUN and a proxy
// ARP entry for it (net.ipv4.ip_forward, and net.ipv4.neigh.<interface>.proxy_delay=0 so that ARP
// is answered at once). IPv6 traffic is either the same with SNAT6 (a /128 route and one proxy NDP
// entry), or routed: the client block is routed into the TUN and the kernel answers neighbour
// solicitations for client addresses on the target interface (proxy NDP, the IPv6 twin of proxy
// ARP), so that hosts of the private network reach clients at their own addresses. Either needs
// net.ipv6.conf.all.forwarding, net.ipv6.conf.<interface>.proxy_ndp and
// net.ipv6.neigh.<interface>.proxy_delay=0. Linux answers only for addresses with an entry of
// their own (no prefixes), and each entry joins a solicited-node multicast group whose cost grows
// with the groups already joined; so the entries of a small block (up to SetupProxyMax addresses)
// are added at setup, and those of a larger one for each client as it gets its address
// (AddClient6, RemoveClient6).
//
// Setup checks everything it can before it changes anything, then adds the TUN, the routes, the
// neighbour entries and the sysctls in that order; if a step fails it removes what the earlier
// steps added and restores every sysctl it changed before it returns. Close does the same for a
// running endpoint.
//
// What hosts of the private network can do with it: solicit the addresses that have entries,
// which the kernel answers, nothing more. The entries are bounded by the pool (at most one per
// leasable address, and per client only while a session holds the address), and AddClient6
// refuses any address outside the pool's client addresses, so neither a client nor a host of
// the network can make the endpoint claim an address of someone else's.
//
// It does not own the packets that cross the TUN (package tunnel reads and writes the device),
// NAT, the address pool, the listeners, or the endpoint file: Config carries the few values it
// needs.
package host

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// Config says how the endpoint attaches to the private network.
type Config struct {
	TUNName string // tun.name
	MTU     int    // tun.mtu
	// Queues is how many queues the TUN device has, each its own descriptor that one goroutine
	// reads (IFF_MULTI_QUEUE; the kernel puts each flow on one queue); 0 or 1 means one queue,
	// a plain TUN. At most MaxQueues.
	Queues int
	// Interface (target_network.interface) faces the private network; SNAT
	// (target_network.snat_address) is the endpoint's own IPv4 address in one of its subnets,
	// invalid when IPv4 traffic is off (traffic_ip_address_type: ipv6).
	Interface string
	SNAT      netip.Addr
	// Client6 (client_ipv6_cidr_block) is the block clients' IPv6 addresses come from; zero
	// when IPv6 traffic is off. Client6Count is how many of its addresses the address pool
	// indexes, base..base+Client6Count-1 (ippool: index i is base+i; it leases neither index
	// 0, the subnet-router anycast address, nor 1, the tunnel gateway): the pool's Size()
	// capped by the block (a dual-stack pool indexes as many as its IPv4 block has). 0 means all
	// of the block up to ippool.MaxSize6.
	Client6      netip.Prefix
	Client6Count int
	// SNAT6 (target_network.snat_ipv6_address), when valid, is the endpoint's own IPv6 address
	// in a subnet of Interface, which IPv6 traffic is source-NATed to. When it is not, IPv6 is
	// routed: Client6 must lie inside an IPv6 subnet of Interface, and the endpoint answers
	// neighbour discovery there for its client addresses.
	SNAT6 netip.Addr
	// ClaimFile, when set, records the proxy neighbour entries cvpn added (and the client
	// block whose entries it adds), so that a cvpn started after one that was killed (a
	// watchdog restart) recognises the entries as its own and removes them at stop, while an
	// entry the operator made stays untouched. It belongs in a directory that survives
	// restarts but not reboots (the runtime directory).
	ClaimFile string

	// setupProxyMax replaces SetupProxyMax when positive; tests choose.
	setupProxyMax int

	// procSys is where the sysctls live; "" means /proc/sys. Tests point it at a directory of
	// their own.
	procSys string
	// euid is the process's effective user id; nil means os.Geteuid. Tests choose.
	euid func() int
}

// SysctlFile is the sysctl.d(5) file the cvpn package installs with the sysctls the endpoint
// needs. A cvpn serve that does not run as root only checks them, and names this file when one
// is not set.
const SysctlFile = "/usr/lib/sysctl.d/60-cvpn.conf"

// SetupProxyMax is the most client addresses whose proxy NDP entries Setup adds itself; a
// larger pool gets an entry for each client as it gets its address (AddClient6). Each entry
// joins a solicited-node multicast group, and the kernel's work for one grows with the groups
// the interface has joined. Measured on kernel 6.18 with a veth (BenchmarkProxyEntries), adding
// and removing took 48 and 44 ms for 1,024 entries, 210 and 182 ms for 4,096, 2.6 and 2.4 s for
// 16,384, and 2 min and 2 min 45 s for 65,536 (ippool.MaxSize6): Setup and Close stay well
// under a second up to this bound.
const SetupProxyMax = 4096

// MaxQueues bounds Config.Queues (the kernel allows 256 per device; more queues than cores
// gain nothing).
const MaxQueues = 64

// Host is the kernel state Setup added. Close removes exactly that, newest first.
type Host struct {
	queues  []tun.Device // the TUN device's queues; the first is Device
	log     *slog.Logger
	procSys string
	// checkOnly: the process is not root, so the system sets the sysctls (SysctlFile) and
	// Setup only checks them.
	checkOnly bool
	euid      int

	mu   sync.Mutex // guards undo
	undo []undoStep // in the order the state was added

	// claims records what the proxy neighbour entries Setup adds belong to (ClaimFile).
	claims *claims
	// proxy6 answers neighbour discovery for client addresses in routed IPv6 mode; nil in
	// other modes.
	proxy6 *proxy6
}

// undoStep removes one piece of state; what names it for errors.
type undoStep struct {
	what string
	fn   func() error
}

func newHost(cfg Config, log *slog.Logger) *Host {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	root := cfg.procSys
	if root == "" {
		root = "/proc/sys"
	}
	euid := os.Geteuid
	if cfg.euid != nil {
		euid = cfg.euid
	}
	id := euid()
	return &Host{log: log, procSys: root, checkOnly: id != 0, euid: id, claims: readClaims(cfg.ClaimFile, log)}
}

// Device is the TUN device (its first queue); nil on a nil Host.
func (h *Host) Device() tun.Device {
	if h == nil || len(h.queues) == 0 {
		return nil
	}
	return h.queues[0]
}

// Queues are the TUN device's queues (Config.Queues of them), Device first; nil on a nil Host.
func (h *Host) Queues() []tun.Device {
	if h == nil {
		return nil
	}
	return slices.Clone(h.queues)
}

// AddClient6 makes the kernel answer neighbour solicitations for addr, a client address of
// Config.Client6, on the target interface, so that hosts of the private network reach the
// client: the session that leased addr calls it before the client may send. It does nothing
// when IPv6 is not routed (IPv4 only, or SNAT6) or when Setup added every client address's
// entry itself (a pool of at most SetupProxyMax addresses), so callers need not know which.
// An address outside the pool's client addresses is refused. It costs one netlink request,
// whose time grows with the entries the interface has (40 µs with a few hundred, about 2 ms with
// tens of thousands).
func (h *Host) AddClient6(addr netip.Addr) error {
	if h == nil || h.proxy6 == nil {
		return nil
	}
	return h.proxy6.add(addr)
}

// RemoveClient6 undoes one AddClient6 of addr, when its client has gone: the entry goes with
// the last (an address released and leased again may see the new session's add before the old
// one's remove). It does nothing for an address AddClient6 did not add.
func (h *Host) RemoveClient6(addr netip.Addr) error {
	if h == nil || h.proxy6 == nil {
		return nil
	}
	return h.proxy6.remove(addr)
}

// Close removes what Setup added, newest first: it restores the sysctls, deletes the neighbour
// entries (AddClient6's too) and the routes, and closes the TUN device (which removes it). It is safe on a nil Host and
// safe to call again; later calls do nothing. The error names each step that failed.
func (h *Host) Close() error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	steps := h.undo
	h.undo = nil
	h.mu.Unlock()
	var failed errorList
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(); err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", steps[i].what, err))
			continue
		}
		h.log.Debug("host: undone", "step", steps[i].what)
	}
	if len(failed) == 0 {
		return nil
	}
	return fmt.Errorf("host: %w", failed)
}

// added records how to remove a piece of state that a step has just added.
func (h *Host) added(what string, fn func() error) {
	h.mu.Lock()
	h.undo = append(h.undo, undoStep{what: what, fn: fn})
	h.mu.Unlock()
}

// abandon undoes a failed Setup and returns its error as an *Error, with the failure to undo
// attached if there was one.
func (h *Host) abandon(err error) error {
	e, ok := err.(*Error)
	if !ok {
		e = &Error{Op: "host setup", Err: err}
	}
	if cerr := h.Close(); cerr != nil {
		e.Cleanup = cerr
	}
	return e
}

// families says which address families flow through the tunnel, and so which sysctls Setup
// needs.
type families struct{ v4, v6 bool }

// sysctls are the sysctls the endpoint needs (keys below /proc/sys) and their values. For IPv4
// the kernel must forward, and answer ARP for the SNAT address on iface at once rather than
// after the random proxy delay (up to 0.8 s by default), which the first packets of every flow
// would otherwise wait for. For IPv6 it must forward (all.forwarding, which sets every
// interface's), answer neighbour solicitations from its proxy entries on iface (proxy_ndp; the
// kernel only does with forwarding on), and at once (proxy_delay: solicitations arrive as
// multicast, which the kernel delays like proxy ARP).
func sysctls(iface string, f families) [][2]string {
	var s [][2]string
	if f.v4 {
		s = append(s, [2]string{"net/ipv4/ip_forward", "1"}, [2]string{"net/ipv4/neigh/" + iface + "/proxy_delay", "0"})
	}
	if f.v6 {
		s = append(s, [2]string{forwarding6, "1"}, [2]string{"net/ipv6/conf/" + iface + "/proxy_ndp", "1"},
			[2]string{"net/ipv6/neigh/" + iface + "/proxy_delay", "0"})
	}
	return s
}

// forwarding6 is the sysctl that turns IPv6 forwarding on. With it on, the kernel ignores
// router advertisements on every interface whose accept_ra is 1 (a router does not learn its
// routes from them): a host that learns its own IPv6 default route from them needs accept_ra
// = 2 on that interface.
const forwarding6 = "net/ipv6/conf/all/forwarding"

// raCaveat is what forwarding6 does to router advertisements, for errors and logs.
const raCaveat = "note that with IPv6 forwarding on, the kernel ignores router advertisements on interfaces whose accept_ra is 1: " +
	"if this host learns its IPv6 default route from them, also set net.ipv6.conf.<interface>.accept_ra = 2"

// setSysctls sets the sysctls for iface and the families (as root), or checks them (otherwise).
func (h *Host) setSysctls(iface string, f families) error {
	for _, s := range sysctls(iface, f) {
		set := h.setSysctl
		if h.checkOnly {
			set = h.checkSysctl
		}
		if err := set(s[0], s[1]); err != nil {
			return err
		}
	}
	if f.v6 && !h.checkOnly {
		h.warnAcceptRA(h.tunName())
	}
	return nil
}

// tunName is the TUN device's name, "" before there is one.
func (h *Host) tunName() string {
	if d := h.Device(); d != nil {
		if name, err := d.Name(); err == nil {
			return name
		}
	}
	return ""
}

// warnAcceptRA logs the interfaces that ignore router advertisements now that IPv6 forwarding
// is on (accept_ra 1), if forwarding is on; the TUN (tun), which no router advertises on, is
// left out.
func (h *Host) warnAcceptRA(tun string) {
	if v, err := os.ReadFile(filepath.Join(h.procSys, forwarding6)); err != nil || strings.TrimSpace(string(v)) != "1" {
		return
	}
	dirs, _ := os.ReadDir(filepath.Join(h.procSys, "net/ipv6/conf"))
	var ignoring []string
	for _, d := range dirs {
		switch d.Name() {
		case "all", "default", "lo", tun:
			continue
		}
		if v, err := os.ReadFile(filepath.Join(h.procSys, "net/ipv6/conf", d.Name(), "accept_ra")); err == nil && strings.TrimSpace(string(v)) == "1" {
			ignoring = append(ignoring, d.Name())
		}
	}
	if len(ignoring) > 0 {
		h.log.Warn("host: with IPv6 forwarding on, these interfaces ignore router advertisements (accept_ra = 1); "+
			"if one learns the host's IPv6 default route from them, set its net.ipv6.conf.<interface>.accept_ra = 2", "interfaces", ignoring)
	}
}

// checkSysctl reports an error unless the sysctl at key has value. A process that is not root
// leaves the sysctls to the system: under systemd /proc/sys is read-only to the service
// (ProtectKernelTunables=), and the package's SysctlFile sets them at boot. (CAP_NET_ADMIN
// alone would let it write the net.* ones, but then a crash would leave them changed with
// nobody to restore them.)
func (h *Host) checkSysctl(key, value string) error {
	name := sysctlName(key)
	old, err := os.ReadFile(filepath.Join(h.procSys, key))
	if err != nil {
		return sysctlError("read sysctl "+name, name, value, err)
	}
	if got := strings.TrimSpace(string(old)); got != value {
		e := &Error{Op: fmt.Sprintf("sysctl %s is %s, want %s", name, got, value), Err: ErrSysctlNotSet,
			Fix: fmt.Sprintf("cvpn serve runs as uid %d, not root, so it only checks the sysctls it needs: set `%s = %s` in a sysctl.d file "+
				"(the package's is %s; copy it to /etc/sysctl.d/ to change it) and apply it with `sysctl --system`", h.euid, name, value, SysctlFile)}
		if key == forwarding6 {
			e.Fix += "; " + raCaveat
		}
		return e
	}
	return nil
}

// setSysctl sets the sysctl at key (a path below /proc/sys) to value and records how to restore
// its previous value. A sysctl that already has the value is left alone, so an operator (or a
// service manager) may set them beforehand where /proc/sys is not writable.
func (h *Host) setSysctl(key, value string) error {
	path := filepath.Join(h.procSys, key)
	name := sysctlName(key)
	old, err := os.ReadFile(path)
	if err != nil {
		return sysctlError("read sysctl "+name, name, value, err)
	}
	prev := strings.TrimSpace(string(old))
	if prev == value {
		return nil
	}
	if err := writeSysctl(path, value); err != nil {
		return sysctlError(fmt.Sprintf("set sysctl %s=%s (it is %s)", name, value, prev), name, value, err)
	}
	h.log.Debug("host: sysctl set", "name", name, "value", value, "was", prev)
	h.added("restore sysctl "+name+"="+prev, func() error {
		err := writeSysctl(path, prev)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // the interface went away, and its setting with it
		}
		return err
	})
	return nil
}

// writeSysctl writes value to an existing sysctl file (never creating one).
func writeSysctl(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// sysctlName is the name sysctl(8) uses for key: dots between the path's parts, or the path
// itself when a part (an interface such as eth0.100) has a dot of its own.
func sysctlName(key string) string {
	if strings.Contains(key, ".") {
		return key
	}
	return strings.ReplaceAll(key, "/", ".")
}

// sysctlError explains a sysctl that could not be read or written, and how to set it beforehand.
func sysctlError(op, name, value string, err error) *Error {
	beforehand := fmt.Sprintf("set %s=%s beforehand (sysctl -w, a sysctl.d file such as %s, or the service manager); cvpn leaves a sysctl that already has its value alone", name, value, SysctlFile)
	e := &Error{Op: op, Err: err}
	switch {
	case errors.Is(err, unix.EROFS):
		e.Fix = "/proc/sys is read-only here (a container?): " + beforehand
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		e.Fix = "run cvpn serve as root, or " + beforehand
	case errors.Is(err, fs.ErrNotExist):
		e.Fix = "this kernel has no such sysctl (is the interface there, and the address family enabled on it?)"
	default:
		e.Fix = beforehand
	}
	if name == sysctlName(forwarding6) {
		e.Fix += "; " + raCaveat
	}
	return e
}
