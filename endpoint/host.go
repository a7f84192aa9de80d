package endpoint

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"syscall"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/host"
	"github.com/cvpn/cvpn/tunnel/session"
)

// hostConfig is the part of the endpoint file that host setup needs. None of it may change on
// reload (config.CheckReload). Each family's addresses are zero when its traffic is off.
func hostConfig(cfg *config.Endpoint) host.Config {
	return host.Config{
		TUNName:      cfg.TUN.Name,
		MTU:          cfg.TUN.MTU,
		Interface:    cfg.TargetNetwork.Interface,
		SNAT:         cfg.TargetNetwork.SNATAddress,
		Client6:      cfg.ClientIPv6CIDRBlock,
		Client6Count: client6Count(cfg),
		SNAT6:        cfg.TargetNetwork.SNATIPv6Address,
		// Beside the admin socket: the runtime directory, which lives until a reboot.
		ClaimFile: filepath.Join(filepath.Dir(cfg.Admin.Socket), "cvpn-host-"+cfg.TUN.Name),
	}
}

// client6Count is how many addresses of the IPv6 block the address pool indexes (ippool: index
// i is the block's base+i): its Size, capped by the block's addresses. With both families the
// IPv4 block decides it, so a dual-stack pool of a /22 has 1,024 IPv6 addresses whatever the
// IPv6 block. It builds the pool the endpoint builds (NewPool) to ask; 0 without IPv6, and when
// the pool cannot be built (the endpoint has refused the file then).
func client6Count(cfg *config.Endpoint) int {
	block := cfg.ClientIPv6CIDRBlock
	if !block.IsValid() {
		return 0
	}
	pool, err := NewPool(cfg)
	if err != nil {
		return 0
	}
	n := pool.Size()
	if bits := 128 - block.Bits(); bits < 62 && n > 1<<bits {
		n = 1 << bits
	}
	return n
}

// clientNeighbours is the part of a Host that answers neighbour discovery for the clients' IPv6
// addresses when IPv6 is routed (host.Host has it).
type clientNeighbours interface {
	AddClient6(netip.Addr) error
	RemoveClient6(netip.Addr) error
}

// neighbourEvents gives each connected client's IPv6 address its proxy NDP entry on the target
// interface, and takes it away when the client has gone, so that hosts of the private network
// reach the client at its own address. The host needs that for a pool of more than
// host.SetupProxyMax addresses; with fewer, or with IPv6 NATed or off, the calls do nothing. It
// is one of the engine's Events: the calls run on the session's goroutine, once connected (the
// kernel's own retries cover the moment before) and once gone; each is one netlink request.
type neighbourEvents struct {
	host clientNeighbours
	log  *slog.Logger
}

func (n neighbourEvents) Connected(s tunnel.Status) {
	if a := s.Address6; a.IsValid() {
		if err := n.host.AddClient6(a); err != nil {
			n.log.Error("hosts of the private network cannot reach this client over IPv6", "client", s.ConnectionID, "address6", a, "err", err)
		}
	}
}

func (neighbourEvents) Refused(session.Attempt) {}

func (n neighbourEvents) Disconnected(s tunnel.Status, _ session.End) {
	if a := s.Address6; a.IsValid() {
		if err := n.host.RemoveClient6(a); err != nil {
			n.log.Warn("the proxy neighbour entry of a client that has gone stays", "client", s.ConnectionID, "address6", a, "err", err)
		}
	}
}

// closeHost removes the host state after a failed start. A failure to remove it joins err, so
// that the operator still reads one line that says both.
func closeHost(h Host, err error) error {
	if cerr := h.Close(); cerr != nil {
		return fmt.Errorf("%w; removing the host state failed too: %v", err, cerr)
	}
	return err
}

// engineError explains a failure to start the engine, which is almost always a listener that
// cannot bind.
func engineError(err error, cfg *config.Endpoint) error {
	var fix string
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		fix = "another process (another cvpn, or an openvpn server?) has that port: stop it, or change transport or listen_address"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		fix = fmt.Sprintf("listen_address %s is not an address of this host: use one of its addresses, or 0.0.0.0", cfg.ListenAddress)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		fix = "ports below 1024 need root or CAP_NET_BIND_SERVICE"
	default:
		return err
	}
	return fmt.Errorf("%w: %s", err, fix)
}
