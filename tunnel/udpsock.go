package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpSocket is a UDP socket that the data plane drives with its own system calls, outside Go's
// netpoller. The netpoller registers a socket edge-triggered, so while the receive loop is busy or
// sleeping to coalesce (coalesce.go), each arriving datagram woke the runtime's idle thread in
// epoll_wait only for it to find nobody waiting: at 70,000 datagrams a second that was tens of
// thousands of context switches a second and about a third of the server's CPU on upload. Here the
// receive loop reads with recvmmsg until EAGAIN and then waits in ppoll, on the socket and on the
// server's wake eventfd, so the kernel wakes exactly the thread that reads.
//
// Every system call on fd holds mu for reading; close takes it for writing, so the descriptor
// number is never closed (and reused) under a call in flight. A call waiting in ppoll returns when
// the server fires the waker, which Close does before closing sockets.
type udpSocket struct {
	fd    int
	local netip.AddrPort
	wake  *waker

	mu     sync.RWMutex
	closed bool
}

// openUDPSocket opens a non-blocking IPv4 UDP socket bound to ap with 4 MiB buffers.
func openUDPSocket(ap netip.AddrPort, wake *waker) (*udpSocket, error) {
	if !ap.Addr().Is4() {
		return nil, fmt.Errorf("%s: only IPv4 listeners are supported", ap)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	u := &udpSocket{fd: fd, wake: wake}
	// Larger buffers ride out bursts while the receive loop sleeps; the kernel caps them at
	// net.core.rmem_max / wmem_max, which is fine.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("getsockname", err)
	}
	in4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		unix.Close(fd)
		return nil, errors.New("getsockname: not an IPv4 address")
	}
	u.local = netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port))
	return u, nil
}

// close retires the descriptor once no call is in flight; later calls return net.ErrClosed.
func (u *udpSocket) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.closed {
		u.closed = true
		unix.Close(u.fd)
	}
}

func (u *udpSocket) setsockoptInt(level, opt, value int) error {
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.closed {
		return net.ErrClosed
	}
	return unix.SetsockoptInt(u.fd, level, opt, value)
}

func (u *udpSocket) getsockoptInt(level, opt int) (int, error) {
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.closed {
		return 0, net.ErrClosed
	}
	return unix.GetsockoptInt(u.fd, level, opt)
}

// mmsgs is a batch of messages for recvmmsg or sendmmsg: the kernel's headers and, per message,
// its one I/O vector, its address and its control-message buffer. Everything the headers point
// to lives in the batch's own slices, which never move.
type mmsgs struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	bufs  [][]byte // receive: each message's buffer
	oobs  [][]byte // receive: each message's control-message room
}

func newMmsgs(n int) *mmsgs {
	return &mmsgs{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet4, n),
	}
}

// newRecvMmsgs allocates n receive slots with bufSize-byte buffers and oobSize bytes of room for
// control messages.
func newRecvMmsgs(n, bufSize, oobSize int) *mmsgs {
	m := newMmsgs(n)
	m.bufs = make([][]byte, n)
	m.oobs = make([][]byte, n)
	for i := range n {
		m.bufs[i] = make([]byte, bufSize)
		m.oobs[i] = make([]byte, oobSize)
		m.iovs[i].Base = &m.bufs[i][0]
		m.iovs[i].SetLen(bufSize)
		h := &m.hdrs[i].Hdr
		h.Iov = &m.iovs[i]
		h.SetIovlen(1)
		h.Name = (*byte)(unsafe.Pointer(&m.names[i]))
		h.Control = &m.oobs[i][0]
	}
	return m
}

// armRecv resets the lengths the kernel overwrote in the last receive.
func (m *mmsgs) armRecv() {
	for i := range m.hdrs {
		h := &m.hdrs[i].Hdr
		h.Namelen = unix.SizeofSockaddrInet4
		h.SetControllen(len(m.oobs[i]))
		h.Flags = 0
		m.hdrs[i].Len = 0
	}
}

// data returns the payload the kernel wrote into slot i.
func (m *mmsgs) data(i int) []byte { return m.bufs[i][:m.hdrs[i].Len] }

// oob returns the control messages the kernel wrote for slot i.
func (m *mmsgs) oob(i int) []byte { return m.oobs[i][:m.hdrs[i].Hdr.Controllen] }

// from returns the sender of slot i.
func (m *mmsgs) from(i int) netip.AddrPort {
	sa := &m.names[i]
	if sa.Family != unix.AF_INET {
		return netip.AddrPort{}
	}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
}

// set makes slot i send pkt to the given address with the given control messages (nil: none).
// The slices must stay untouched until the send returns.
func (m *mmsgs) set(i int, pkt []byte, to netip.AddrPort, oob []byte) {
	setSockaddr(&m.names[i], to)
	m.iovs[i].Base = unsafe.SliceData(pkt)
	m.iovs[i].SetLen(len(pkt))
	h := &m.hdrs[i].Hdr
	h.Iov = &m.iovs[i]
	h.SetIovlen(1)
	h.Name = (*byte)(unsafe.Pointer(&m.names[i]))
	h.Namelen = unix.SizeofSockaddrInet4
	h.Control = unsafe.SliceData(oob)
	h.SetControllen(len(oob))
	h.Flags = 0
	m.hdrs[i].Len = 0
}

// clear drops slot i's references to the caller's buffers.
func (m *mmsgs) clear(i int) {
	m.iovs[i] = unix.Iovec{}
	m.hdrs[i] = unix.Mmsghdr{}
}

func setSockaddr(sa *unix.RawSockaddrInet4, ap netip.AddrPort) {
	*sa = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().Unmap().As4()}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
}

// recv reads up to len(m.hdrs) datagrams, waiting until at least one is there. It returns
// net.ErrClosed once the socket is closed or the server woke its loops to stop.
func (u *udpSocket) recv(m *mmsgs) (int, error) {
	u.mu.RLock()
	defer u.mu.RUnlock()
	m.armRecv()
	for {
		if u.closed {
			return 0, net.ErrClosed
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(u.fd), uintptr(unsafe.Pointer(&m.hdrs[0])),
			uintptr(len(m.hdrs)), 0, 0, 0)
		switch errno {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if err := u.wait(unix.POLLIN); err != nil {
				return 0, err
			}
		default:
			return 0, os.NewSyscallError("recvmmsg", errno)
		}
	}
}

// send transmits the first n messages of m with sendmmsg, waiting while the socket buffer is full.
// A message the kernel refuses is skipped; onErr (if set) hears about it.
func (u *udpSocket) send(m *mmsgs, n int, onErr func(index int, err error)) error {
	u.mu.RLock()
	defer u.mu.RUnlock()
	for i := 0; i < n; {
		if u.closed {
			return net.ErrClosed
		}
		k, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(u.fd), uintptr(unsafe.Pointer(&m.hdrs[i])),
			uintptr(n-i), 0, 0, 0)
		switch errno {
		case 0:
			i += int(k)
		case unix.EINTR:
		case unix.EAGAIN:
			if err := u.wait(unix.POLLOUT); err != nil {
				return err
			}
		default:
			// sendmmsg reports an error only when the first message failed: skip it. ENOBUFS
			// (the device queue is full) lands here too: waiting for POLLOUT would spin, since
			// the socket buffer has room, and UDP may drop.
			if onErr != nil {
				onErr(i, os.NewSyscallError("sendmmsg", errno))
			}
			i++
		}
	}
	return nil
}

// sendTo transmits one datagram (with control messages, nil for none).
func (u *udpSocket) sendTo(pkt []byte, to netip.AddrPort, oob []byte) error {
	var sa unix.RawSockaddrInet4
	setSockaddr(&sa, to)
	iov := unix.Iovec{Base: unsafe.SliceData(pkt)}
	iov.SetLen(len(pkt))
	h := unix.Msghdr{Name: (*byte)(unsafe.Pointer(&sa)), Namelen: unix.SizeofSockaddrInet4, Iov: &iov}
	h.SetIovlen(1)
	h.Control = unsafe.SliceData(oob)
	h.SetControllen(len(oob))
	u.mu.RLock()
	defer u.mu.RUnlock()
	for {
		if u.closed {
			return net.ErrClosed
		}
		_, _, errno := unix.Syscall(unix.SYS_SENDMSG, uintptr(u.fd), uintptr(unsafe.Pointer(&h)), 0)
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
		case unix.EAGAIN:
			if err := u.wait(unix.POLLOUT); err != nil {
				return err
			}
		default:
			return os.NewSyscallError("sendmsg", errno)
		}
	}
}

// wait blocks in ppoll until the socket has the events or the server's waker fired. The caller
// holds mu for reading.
func (u *udpSocket) wait(events int16) error {
	fds := [2]unix.PollFd{{Fd: int32(u.fd), Events: events}, {Fd: int32(u.wake.fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Ppoll(fds[:], nil, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("ppoll", err)
		}
		if fds[1].Revents != 0 {
			return net.ErrClosed
		}
		return nil
	}
}

// waker is an eventfd that data-plane waits poll beside their socket: firing it once makes every
// present and future wait return, so that the loops stop and their sockets can close.
type waker struct {
	fd   int
	once sync.Once
}

func newWaker() (*waker, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, os.NewSyscallError("eventfd", err)
	}
	return &waker{fd: fd}, nil
}

func (w *waker) wake() {
	one := [8]byte{1}
	_, _ = unix.Write(w.fd, one[:])
}

// close releases the eventfd; only the first call does anything.
func (w *waker) close() { w.once.Do(func() { unix.Close(w.fd) }) }
