package host

import (
	"errors"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/cvpn/cvpn/internal/privdrop"
)

// inNewNetns moves the calling goroutine's thread into a network namespace of its own, so that
// the TUN devices a test creates are invisible to the host and vanish with the thread (it is
// never unlocked, so the runtime ends it with the test's goroutine). It needs CAP_NET_ADMIN
// (CAP_SYS_ADMIN for unshare: root).
func inNewNetns(t *testing.T) {
	t.Helper()
	eff, err := privdrop.Effective()
	if err != nil || !eff.Has(privdrop.NetAdmin) {
		t.Skip("needs root: creates TUN devices in a network namespace of its own")
	}
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatalf("unshare: %v", err)
	}
}

// tunFlags reads a queue's flags back from the kernel (TUNGETIFF).
func tunFlags(t *testing.T, dev tun.Device) uint16 {
	t.Helper()
	sc, err := dev.File().SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags uint16
	var ioErr error
	if err := sc.Control(func(fd uintptr) {
		ifr, err := unix.NewIfreq("")
		if err != nil {
			ioErr = err
			return
		}
		if ioErr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr); ioErr == nil {
			flags = ifr.Uint16()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if ioErr != nil {
		t.Fatal(ioErr)
	}
	return flags
}

// TestTUNQueues: a TUN of three queues is one multi-queue device with three descriptors, each
// with the virtio-net header (so each does GSO); Device is the first queue; Close removes the
// device. One queue is a plain TUN, as before.
func TestTUNQueues(t *testing.T) {
	inNewNetns(t)
	h := newHost(Config{}, nil)
	if err := h.createTUN("cvpnmq0", 1400, 3); err != nil {
		t.Fatal(err)
	}
	qs := h.Queues()
	if len(qs) != 3 || qs[0] != h.Device() {
		t.Fatalf("%d queues, the first Device: %v", len(qs), qs[0] == h.Device())
	}
	for i, q := range qs {
		name, err := q.Name()
		if err != nil || name != "cvpnmq0" {
			t.Fatalf("queue %d: name %q, %v", i, name, err)
		}
		if f := tunFlags(t, q); f&unix.IFF_MULTI_QUEUE == 0 || f&unix.IFF_VNET_HDR == 0 {
			t.Fatalf("queue %d: flags %#x, want IFF_MULTI_QUEUE and IFF_VNET_HDR", i, f)
		}
		if q.BatchSize() <= 1 {
			t.Fatalf("queue %d: batch size %d: offloads off", i, q.BatchSize())
		}
	}
	if _, err := netlink.LinkByName("cvpnmq0"); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName("cvpnmq0"); err == nil {
		t.Fatal("the device is still there after Close")
	}

	one := newHost(Config{}, nil)
	if err := one.createTUN("cvpnmq1", 1400, 1); err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	if len(one.Queues()) != 1 || tunFlags(t, one.Device())&unix.IFF_MULTI_QUEUE != 0 {
		t.Fatalf("one queue: %d queues, flags %#x", len(one.Queues()), tunFlags(t, one.Device()))
	}
}

// TestTUNQueuesFailure: queues that cannot attach (the device is a single-queue TUN held by
// another) fail with an explanation and leave nothing of their own; the holder keeps its device.
func TestTUNQueuesFailure(t *testing.T) {
	inNewNetns(t)
	holder := newHost(Config{}, nil)
	if err := holder.createTUN("cvpnmq2", 1400, 1); err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	h := newHost(Config{}, nil)
	err := h.createTUN("cvpnmq2", 1400, 2)
	var e *Error
	if !errors.As(err, &e) || e.Fix == "" {
		t.Fatalf("queues on a held device: %v, want an *Error with a fix", err)
	}
	if cerr := h.Close(); cerr != nil || len(h.undo) != 0 {
		t.Fatalf("undo after the failure: %v, %d steps left", cerr, len(h.undo))
	}
	if _, err := netlink.LinkByName("cvpnmq2"); err != nil {
		t.Fatalf("the holder's device went away: %v", err)
	}
	if err := newHost(Config{}, nil).createTUN("cvpnmq3", 1400, MaxQueues+1); err == nil {
		t.Fatalf("%d queues accepted", MaxQueues+1)
	}
}
