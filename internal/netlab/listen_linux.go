package netlab

import (
	"net"
	"net/netip"
)

// ListenTCPIn opens a TCP listener on laddr (of either family) inside namespace ns; like every
// socket, it keeps that namespace wherever it is used from.
func ListenTCPIn(ns string, laddr netip.AddrPort) (net.Listener, error) {
	var l net.Listener
	err := inNamespace(ns, func() (err error) {
		l, err = net.Listen(tcpNetwork(laddr.Addr()), laddr.String())
		return err
	})
	return l, err
}
