package netlab

import (
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// ListenUDPIn opens a UDP socket inside namespace ns. A socket keeps the namespace it was created
// in, so the caller's goroutine can use it from anywhere.
func ListenUDPIn(ns string) (*net.UDPConn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, fmt.Errorf("enter netns %s: %w", ns, err)
	}
	conn, lerr := net.ListenUDP("udp4", &net.UDPAddr{})
	if err := netns.Set(orig); err != nil {
		// The thread is in the wrong namespace: let it die with the goroutine rather than reuse it.
		runtime.LockOSThread()
		return nil, fmt.Errorf("leave netns %s: %w", ns, err)
	}
	return conn, lerr
}
