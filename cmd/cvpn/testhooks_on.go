//go:build testhooks

package main

import (
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/cvpn/cvpn/tunnel/dataplane"
)

// armTestHooks arms the hooks of a testhooks build (go build -tags testhooks ./cmd/cvpn), for
// the systemd watchdog test: SIGUSR2 wedges the data plane's receive loops for good
// (dataplane.WedgeReceiveLoops), as a deadlock would, so that the watchdog keep-alives stop and
// systemd restarts the service. Release builds have none of this: SIGUSR2 keeps its default
// action (the process ends).
func armTestHooks(log *slog.Logger) { testHooksOnce.Do(func() { armWedge(log) }) }

var testHooksOnce sync.Once

func armWedge(log *slog.Logger) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR2)
	log.Warn("test hooks armed: SIGUSR2 wedges the data plane (a testhooks build, not for production)")
	go func() {
		for range sigs {
			log.Warn("test hook: SIGUSR2: wedging the data plane's receive loops")
			dataplane.WedgeReceiveLoops()
		}
	}()
}
