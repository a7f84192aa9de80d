//go:build !linux

package sock

import (
	"errors"
	"net"
	"net/netip"
)

// listenUDP is Linux only: the batched I/O is built on recvmmsg, sendmmsg and ppoll.
func listenUDP(ap netip.AddrPort) (Conn, error) {
	return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(ap), Err: errors.ErrUnsupported}
}

func (host) ListenUDPShards(ap netip.AddrPort, n int) ([]Conn, error) {
	return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(ap), Err: errors.ErrUnsupported}
}
