//go:build !linux

package host

import (
	"errors"
	"log/slog"
	"runtime"
)

// Setup is Linux only: the TUN, route, neighbour and sysctl steps are Linux's.
func Setup(cfg Config, log *slog.Logger) (*Host, error) {
	return nil, &Error{Op: "host setup", Err: errors.New("not supported on " + runtime.GOOS), Fix: "run cvpn serve on Linux"}
}
