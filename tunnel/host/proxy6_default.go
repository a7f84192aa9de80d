//go:build !linux

package host

import "net/netip"

// proxy6 is Linux only (Setup is).
type proxy6 struct{}

func (*proxy6) add(netip.Addr) error    { return nil }
func (*proxy6) remove(netip.Addr) error { return nil }
