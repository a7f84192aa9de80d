package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"syscall"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/tunnel/host"
)

// hostState is what serve needs of the host setup: the TUN device, and a way to remove all of it.
type hostState interface {
	Device() tun.Device
	Close() error
}

// setupHost is host.Setup; tests replace it so that serve runs without root.
var setupHost = func(cfg host.Config, log *slog.Logger) (hostState, error) {
	h, err := host.Setup(cfg, log)
	if err != nil {
		return nil, err // not a typed nil in an interface
	}
	return h, nil
}

// hostConfig is the part of the endpoint file that host setup needs.
func hostConfig(cfg *config.Endpoint) host.Config {
	return host.Config{
		TUNName:   cfg.TUN.Name,
		MTU:       cfg.TUN.MTU,
		Interface: cfg.TargetNetwork.Interface,
		SNAT:      cfg.TargetNetwork.SNATAddress,
	}
}

// closeHost removes the host state when serve returns. If serve is returning an error, a failure
// to remove the state joins it, so the operator still reads one line; otherwise it is logged.
func closeHost(h hostState, err *error, log *slog.Logger) {
	cerr := h.Close()
	switch {
	case cerr == nil:
	case *err != nil:
		*err = fmt.Errorf("%w; removing the host state failed too: %v", *err, cerr)
	default:
		log.Error("removing host state", "err", cerr)
	}
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

// printServeError prints why serve failed as one line.
func printServeError(stderr io.Writer, err error) {
	fmt.Fprintln(stderr, "cvpn serve:", strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " "))
}
