// Package host owns the kernel state that attaches the endpoint to the private network: the TUN
// device (with a queue per data-plane worker), the host route that sends the SNAT address into it, the proxy neighbour entry that
// answers ARP for the SNAT address on the target interface, and the sysctls the endpoint needs
// (net.ipv4.ip_forward, and net.ipv4.neigh.<interface>.proxy_delay so that ARP is answered at
// once). Setup adds them in that order; if a step fails it removes what the earlier steps added
// and restores every sysctl it changed before it returns. Close does the same for a running
// endpoint. It also finds the host's own destinations, which clients must not reach
// (WatchOwnAddrs: the kernel's local routing table, kept current).
//
// It does not own the packets that cross the TUN (package tunnel reads and writes the device),
// NAT, the listeners, or the endpoint file: Config carries the few values it needs. The seams
// speak netip.Addr; only IPv4 is built.
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
	// (target_network.snat_address) is the endpoint's own address in one of its subnets.
	Interface string
	SNAT      netip.Addr
	// ClaimFile, when set, records the proxy neighbour entry cvpn added, so that a cvpn started
	// after one that was killed (a watchdog restart) recognises the entry as its own and
	// removes it at stop, while an entry the operator made stays untouched. It belongs in a
	// directory that survives restarts but not reboots (the runtime directory).
	ClaimFile string

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
	return &Host{log: log, procSys: root, checkOnly: id != 0, euid: id}
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

// Close removes what Setup added, newest first: it restores the sysctls, deletes the neighbour
// entry and the route, and closes the TUN device (which removes it). It is safe on a nil Host and
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

// sysctls are the sysctls the endpoint needs (keys below /proc/sys) and their values: the kernel
// must forward IPv4, and answer ARP for the SNAT address on iface at once rather than after the
// random proxy delay (up to 0.8 s by default), which the first packets of every flow would
// otherwise wait for.
func sysctls(iface string) [][2]string {
	return [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv4/neigh/" + iface + "/proxy_delay", "0"}}
}

// setSysctls sets the sysctls for iface (as root), or checks them (otherwise).
func (h *Host) setSysctls(iface string) error {
	for _, s := range sysctls(iface) {
		set := h.setSysctl
		if h.checkOnly {
			set = h.checkSysctl
		}
		if err := set(s[0], s[1]); err != nil {
			return err
		}
	}
	return nil
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
		return &Error{Op: fmt.Sprintf("sysctl %s is %s, want %s", name, got, value), Err: ErrSysctlNotSet,
			Fix: fmt.Sprintf("cvpn serve runs as uid %d, not root, so it only checks the sysctls it needs: set `%s = %s` in a sysctl.d file "+
				"(the package's is %s; copy it to /etc/sysctl.d/ to change it) and apply it with `sysctl --system`", h.euid, name, value, SysctlFile)}
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
		e.Fix = "this kernel has no such sysctl (is the interface there, and IPv4 enabled?)"
	default:
		e.Fix = beforehand
	}
	return e
}
