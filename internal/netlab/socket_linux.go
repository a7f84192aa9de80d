package netlab

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// ListenUDPIn opens a UDP socket inside namespace ns. A socket keeps the namespace it was created
// in, so the caller's goroutine can use it from anywhere.
func ListenUDPIn(ns string) (*net.UDPConn, error) {
	var conn *net.UDPConn
	err := inNamespace(ns, func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{})
		return err
	})
	return conn, err
}

// DialUDPIn opens a connected UDP socket to raddr (of either family) inside namespace ns. A
// connected socket reports the ICMP errors that answer its datagrams: a Read after a port
// unreachable fails with ECONNREFUSED.
func DialUDPIn(ns string, raddr *net.UDPAddr) (*net.UDPConn, error) {
	network := "udp4"
	if raddr.IP.To4() == nil {
		network = "udp6"
	}
	var conn *net.UDPConn
	err := inNamespace(ns, func() (err error) {
		conn, err = net.DialUDP(network, nil, raddr)
		return err
	})
	return conn, err
}

// DialTCPIn opens a TCP connection to raddr (of either family) from inside namespace ns.
func DialTCPIn(ns string, raddr netip.AddrPort) (net.Conn, error) {
	return DialTCPInWithin(ns, raddr, 10*time.Second)
}

// DialTCPInWithin is DialTCPIn that gives up after timeout (a connection the path drops never
// fails by itself).
func DialTCPInWithin(ns string, raddr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := inNamespace(ns, func() (err error) {
		conn, err = net.DialTimeout(tcpNetwork(raddr.Addr()), raddr.String(), timeout)
		return err
	})
	return conn, err
}

// tcpNetwork is the network name that keeps a socket to a in a's family.
func tcpNetwork(a netip.Addr) string {
	if a.Is4() {
		return "tcp4"
	}
	return "tcp6"
}

// inNamespace runs open on a thread switched into namespace ns, then switches the thread back.
func inNamespace(ns string, open func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	oerr := open()
	if err := netns.Set(orig); err != nil {
		// The thread is in the wrong namespace: let it die with the goroutine rather than reuse it.
		runtime.LockOSThread()
		return fmt.Errorf("leave netns %s: %w", ns, err)
	}
	return oerr
}
