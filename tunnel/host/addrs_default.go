//go:build !linux

package host

import (
	"errors"
	"net/netip"
	"runtime"
)

var errNoLocalTable = errors.New("reading the host's own addresses is not supported on " + runtime.GOOS)

// ownAddrSource has nothing to read outside Linux.
func ownAddrSource() addrSource {
	return addrSource{list: OwnAddrs, subscribe: func(<-chan struct{}) (<-chan struct{}, error) { return nil, errNoLocalTable },
		refresh: addrRefresh, settle: addrSettle, resubscribe: addrResubscribe}
}

// OwnAddrs is Linux only.
func OwnAddrs() ([]netip.Prefix, error) { return nil, errNoLocalTable }
