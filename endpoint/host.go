package endpoint

import (
	"errors"
	"fmt"
	"path/filepath"
	"syscall"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/tunnel/host"
)

// hostConfig is the part of the endpoint file that host setup needs. None of it may change on
// reload (config.CheckReload).
func hostConfig(cfg *config.Endpoint) host.Config {
	return host.Config{
		TUNName:   cfg.TUN.Name,
		MTU:       cfg.TUN.MTU,
		Interface: cfg.TargetNetwork.Interface,
		SNAT:      cfg.TargetNetwork.SNATAddress,
		// Beside the admin socket: the runtime directory, which lives until a reboot.
		ClaimFile: filepath.Join(filepath.Dir(cfg.Admin.Socket), "cvpn-host-"+cfg.TUN.Name),
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
