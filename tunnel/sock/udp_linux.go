package sock

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpConn is a UDP socket that the data plane drives with its own system calls, outside Go's
// netpoller. The netpoller registers a socket edge-triggered, so while the receive loop is busy or
// sleeping to coalesce a batch, each arriving datagram woke the runtime's idle thread in
// epoll_wait only for it to find nobody waiting: at 70,000 datagrams a second that was tens of
// thousands of context switches a second and about a third of the server's CPU on upload
// (ARCHITECTURE.md, "Data-plane I/O"). Here a read calls recvmmsg until EAGAIN and then waits in
// ppoll on the socket and on the Conn's wake eventfd, so the kernel wakes exactly the thread that
// reads.
//
// Every system call on fd or wakeFD holds mu for reading; Close fires the eventfd first (so waits
// in ppoll return), then takes mu for writing and closes both descriptors, so a descriptor number
// is never closed, and perhaps reused by the process, under a call in flight.
//
// Lock order: rmu or smu, then mu.
type udpConn struct {
	fd      int
	wakeFD  int // an eventfd: readable once Close fired it
	local   netip.AddrPort
	v6      bool // an AF_INET6 socket (IPV6_V6ONLY): it sends to and from IPv6 addresses only
	pktinfo bool // bound to the unspecified address: IP_PKTINFO (IPV6_RECVPKTINFO) reports each datagram's destination
	steered bool // one of a reuseport group that the kernel steers with SteerProgram
	gso     atomic.Bool
	// readWake is the longest a ReadBatch waits in ppoll (ReadWake; tests shorten it).
	readWake time.Duration

	mu        sync.RWMutex
	closed    bool // guarded by mu
	closeOnce sync.Once

	rmu  sync.Mutex
	recv *mmsgBatch // guarded by rmu; allocated on first use

	smu  sync.Mutex
	send *mmsgBatch // guarded by smu; allocated on first use

	// refuse, when set (by tests only), plays a kernel that refuses a message: it sees each
	// sendmmsg's messages and returns how many of them go to the system call, and the errno for
	// the first message when none do, as sendmmsg reports a refusal.
	refuse func(hdrs []unix.Mmsghdr) (int, unix.Errno)
}

// mmsgBatch is the kernel's view of a batch: the headers recvmmsg or sendmmsg take and, per
// slot, its one I/O vector, its address and its control-message room. The headers point into the
// batch's own arrays, which never move; only the I/O vectors change per call, pointing at the
// caller's buffers for the duration of the call. An address slot is a sockaddr_in6, which is
// large enough for the sockaddr_in of an IPv4 socket too (putName, readName).
type mmsgBatch struct {
	hdrs  [MaxBatch]unix.Mmsghdr
	iovs  [MaxBatch]unix.Iovec
	names [MaxBatch]unix.RawSockaddrInet6
	oobs  [MaxBatch][cmsgRoom]byte

	// Send only, per slot: the index of the message it carries, whether it is that message's
	// last datagram, and whether it asks the kernel to segment (UDP_SEGMENT).
	owner [MaxBatch]int
	last  [MaxBatch]bool
	gso   [MaxBatch]bool
}

func newMmsgBatch() *mmsgBatch {
	b := new(mmsgBatch)
	for i := range b.hdrs {
		h := &b.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
		h.Control = &b.oobs[i][0]
	}
	return b
}

// release drops the batch's references to the caller's buffers.
func (b *mmsgBatch) release(n int) {
	for i := range n {
		b.iovs[i] = unix.Iovec{}
	}
}

// listenUDP opens a non-blocking UDP socket bound to ap: an IPv4 socket for an IPv4 (or
// IPv4-mapped) address, an IPv6-only one for an IPv6 address.
func listenUDP(ap netip.AddrPort) (Conn, error) {
	fail := func(err error) (Conn, error) {
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(ap), Err: err}
	}
	ap, err := listenAddr(ap)
	if err != nil {
		return fail(err)
	}
	c, err := openUDP(ap, false)
	if err != nil {
		return fail(err)
	}
	return c, nil
}

func (host) ListenUDPShards(ap netip.AddrPort, n int) ([]Conn, error) { return listenUDPShards(ap, n) }

// listenUDPShards opens n sockets bound to ap as one SO_REUSEPORT group, with the program that
// steers data packets to shard peer-id mod n (SteerProgram) attached. A kernel that refuses the
// program (before 4.5, or a seccomp filter) spreads datagrams by its hash of the addresses:
// the shards' Steered reports false and the engine stays correct, only less local.
//
// SO_REUSEPORT lets any socket of the same user join a group, and a group's ephemeral port can
// be one another group already holds, so the address is first claimed by a plain socket:
// another process on it (a second cvpn) makes that bind fail with EADDRINUSE, as a listener of
// one socket does; a port 0 gets its port there. The group binds the address once the plain
// socket is closed; a process that takes the port in between makes the group's bind fail.
func listenUDPShards(ap netip.AddrPort, n int) ([]Conn, error) {
	fail := func(err error) ([]Conn, error) {
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(ap), Err: err}
	}
	if _, err := listenAddr(ap); err != nil {
		return fail(err)
	}
	switch {
	case n < 1 || n > MaxShards:
		return fail(fmt.Errorf("%d shards, want 1 to %d", n, MaxShards))
	case n == 1:
		c, err := listenUDP(ap)
		if err != nil {
			return nil, err
		}
		return []Conn{c}, nil
	}
	ap, _ = listenAddr(ap)
	claim, err := openUDP(ap, false)
	if err != nil {
		return fail(err)
	}
	ap = claim.LocalAddr()
	claim.Close()
	conns := make([]Conn, 0, n)
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for range n {
		c, err := openUDP(ap, true)
		if err != nil {
			closeAll()
			return fail(err)
		}
		conns = append(conns, c)
	}
	// The group's sockets are numbered in the order they joined it, which is the order of conns;
	// the program attached to any of them is the group's.
	steered := attachSteer(conns[0].(*udpConn).fd, n) == nil
	for _, c := range conns {
		c.(*udpConn).steered = steered
	}
	return conns, nil
}

// attachSteer attaches SteerProgram(n) to the reuseport group of the socket fd.
func attachSteer(fd, n int) error {
	raw, err := SteerProgram(n)
	if err != nil {
		return err
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF",
		unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &prog))
}

// Steered reports whether the kernel steers the datagrams of this socket's reuseport group with
// SteerProgram (false for a socket of its own: ListenUDP).
func (c *udpConn) Steered() bool { return c.steered }

// openUDP opens a non-blocking UDP socket bound to ap (unmapped: listenAddr), with SO_REUSEPORT
// when reuse is set. An IPv6 socket is IPv6-only (IPV6_V6ONLY): a dual-stack endpoint opens one
// listener per family, so no socket ever sees an IPv4-mapped address, and each family's
// listener is bound, sharded and steered on its own.
func openUDP(ap netip.AddrPort, reuse bool) (*udpConn, error) {
	v6 := ap.Addr().Is6()
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	c := &udpConn{fd: fd, wakeFD: -1, v6: v6, readWake: ReadWake}
	bad := func(err error) (*udpConn, error) {
		unix.Close(fd)
		if c.wakeFD >= 0 {
			unix.Close(c.wakeFD)
		}
		return nil, err
	}
	if reuse {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return bad(os.NewSyscallError("setsockopt SO_REUSEPORT", err))
		}
	}
	// Larger buffers ride out bursts while the receive loop is busy or coalescing; the kernel caps
	// them at net.core.rmem_max and wmem_max, which is fine.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	var bindTo unix.Sockaddr
	if !v6 {
		bindTo = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		// Set before bind: the port is then claimed for IPv6 alone, and an IPv4 listener on
		// the same port (the other half of a dual-stack endpoint) can coexist with it.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return bad(os.NewSyscallError("setsockopt IPV6_V6ONLY", err))
		}
		bindTo = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	if err := unix.Bind(fd, bindTo); err != nil {
		return bad(os.NewSyscallError("bind", err))
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return bad(os.NewSyscallError("getsockname", err))
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		c.local = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		c.local = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	default:
		return bad(fmt.Errorf("getsockname: an address of family %T", sa))
	}
	if ap.Addr().IsUnspecified() {
		// Replies must leave from the address each client sent to, which IP_PKTINFO
		// (IPV6_RECVPKTINFO) reports and, on send, IP_PKTINFO (IPV6_PKTINFO) sets.
		level, opt, name := unix.IPPROTO_IP, unix.IP_PKTINFO, "IP_PKTINFO"
		if v6 {
			level, opt, name = unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO"
		}
		if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
			return bad(os.NewSyscallError("setsockopt "+name, err))
		}
		c.pktinfo = true
	}
	// UDP GSO (kernels since 4.18): the option is readable exactly when sends may carry it.
	_, err = unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	c.gso.Store(err == nil)
	// Ask the kernel to coalesce consecutive datagrams of a flow into one read (UDP GRO, 5.0);
	// an older kernel just delivers them one by one.
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	c.wakeFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return bad(os.NewSyscallError("eventfd", err))
	}
	return c, nil
}

func (c *udpConn) LocalAddr() netip.AddrPort { return c.local }

// Pause sleeps d with nanosleep (sock.Moderator).
func (c *udpConn) Pause(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}

func (c *udpConn) GSO() bool { return c.gso.Load() }

func (c *udpConn) Close() error {
	c.closeOnce.Do(func() {
		one := [8]byte{1} // an eventfd takes a native-endian uint64; any nonzero value wakes
		_, _ = unix.Write(c.wakeFD, one[:])
		c.mu.Lock()
		defer c.mu.Unlock()
		c.closed = true
		unix.Close(c.fd)
		unix.Close(c.wakeFD)
	})
	return nil
}

func (c *udpConn) ReadBatch(msgs []Message) (int, error) {
	msgs = msgs[:min(len(msgs), MaxBatch)]
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	if c.recv == nil {
		c.recv = newMmsgBatch()
	}
	b := c.recv
	for i := range msgs {
		b.iovs[i].Base = unsafe.SliceData(msgs[i].Buf)
		b.iovs[i].SetLen(len(msgs[i].Buf))
		h := &b.hdrs[i].Hdr
		h.Namelen = unix.SizeofSockaddrInet6 // the slot's room; the kernel leaves the length it wrote
		h.SetControllen(cmsgRoom)
		h.Flags = 0
		b.hdrs[i].Len = 0
	}
	defer b.release(len(msgs))
	waited := false // a wait timed out
	for {
		r, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(c.fd), uintptr(unsafe.Pointer(&b.hdrs[0])),
			uintptr(len(msgs)), 0, 0, 0)
		switch errno {
		case 0:
			n := int(r)
			for i := range n {
				c.fill(&msgs[i], b, i)
			}
			return n, nil
		case unix.EINTR:
		case unix.EAGAIN:
			if waited {
				return 0, nil // nothing came within readWake
			}
			ready, err := c.wait(unix.POLLIN, c.readWake)
			if err != nil {
				return 0, err
			}
			// A ppoll that timed out still tries once more: a datagram may have come just then.
			waited = !ready
		default:
			return 0, os.NewSyscallError("recvmmsg", errno)
		}
	}
}

// fill reports what the kernel wrote into slot i.
func (c *udpConn) fill(m *Message, b *mmsgBatch, i int) {
	h := &b.hdrs[i]
	m.N = int(h.Len)
	m.Addr = readName(&b.names[i], h.Hdr.Namelen)
	dst, seg := parseCmsgs(b.oobs[i][:h.Hdr.Controllen])
	m.Local = c.local.Addr()
	if c.pktinfo {
		m.Local = dst
	}
	if seg <= 0 || seg >= m.N {
		seg = 0
	}
	m.Segment = seg
}

// putName writes ap into sa as the sockaddr of a socket of the family v6 says (sockaddr_in6,
// else sockaddr_in in sa's first bytes) and returns its length. ap is of that family.
func putName(sa *unix.RawSockaddrInet6, ap netip.AddrPort, v6 bool) uint32 {
	*sa = unix.RawSockaddrInet6{}
	if v6 {
		sa.Family = unix.AF_INET6
		sa.Addr = ap.Addr().As16()
		putPort(&sa.Port, ap.Port())
		return unix.SizeofSockaddrInet6
	}
	in4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
	in4.Family = unix.AF_INET
	in4.Addr = ap.Addr().As4()
	putPort(&in4.Port, ap.Port())
	return unix.SizeofSockaddrInet4
}

// readName returns the address the kernel wrote into sa, n bytes of it: unmapped, so that the
// caller sees native addresses; the zero AddrPort when it is neither a whole sockaddr_in nor a
// whole sockaddr_in6. The scope id of a link-local sender is dropped (listenAddr).
func readName(sa *unix.RawSockaddrInet6, n uint32) netip.AddrPort {
	switch {
	case sa.Family == unix.AF_INET && n >= unix.SizeofSockaddrInet4:
		in4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), getPort(&in4.Port))
	case sa.Family == unix.AF_INET6 && n >= unix.SizeofSockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), getPort(&sa.Port))
	}
	return netip.AddrPort{}
}

// putPort and getPort write and read a sockaddr's port, which is in network byte order.
func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

func getPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// target checks a message's addresses and writes its destination into sa, returning the
// name's length and the source to ask for (invalid: the kernel chooses). Both addresses must be
// of the socket's family: an IPv4 socket cannot send to or from an IPv6 address, nor an IPv6
// socket (IPv6-only) to or from an IPv4 one.
func (c *udpConn) target(m *Message, sa *unix.RawSockaddrInet6) (uint32, netip.Addr, error) {
	to := m.Addr.Addr().Unmap()
	if !to.IsValid() || to.Is6() != c.v6 {
		return 0, netip.Addr{}, fmt.Errorf("sock: send to %v on the socket bound to %v: %w", m.Addr, c.local, ErrFamily)
	}
	src := m.Local.Unmap()
	switch {
	case !src.IsValid() || src == c.local.Addr():
		src = netip.Addr{} // the socket's own address anyway: no control message needed
	case src.Is6() != c.v6:
		return 0, netip.Addr{}, fmt.Errorf("sock: send from %v on the socket bound to %v: %w", m.Local, c.local, ErrFamily)
	}
	if segmented(m) && m.Segment > 0xffff {
		return 0, netip.Addr{}, fmt.Errorf("sock: segment size %d out of range", m.Segment)
	}
	return putName(sa, netip.AddrPortFrom(to, m.Addr.Port()), c.v6), src, nil
}

// segmented says whether m leaves as more than one datagram.
func segmented(m *Message) bool { return m.Segment > 0 && len(m.Buf) > m.Segment }

func (c *udpConn) WriteBatch(msgs []Message) (int, error) {
	if len(msgs) == 1 && !segmented(&msgs[0]) {
		return c.writeOne(&msgs[0])
	}
	c.smu.Lock()
	defer c.smu.Unlock()
	c.mu.RLock()
	defer c.mu.RUnlock()
	if len(msgs) == 0 {
		if c.closed {
			return 0, net.ErrClosed
		}
		return 0, nil
	}
	if c.send == nil {
		c.send = newMmsgBatch()
	}
	b := c.send
	var (
		sent     int
		first    error // the first refusal
		gsoErr   error
		refused  = -1 // the last message a datagram of which was refused
		msg, off int  // where the next slot starts: a message, and an offset into its Buf when segmenting in userspace
	)
	for msg < len(msgs) {
		if c.closed {
			return sent, net.ErrClosed
		}
		k, nextMsg, nextOff, err := c.fillSend(b, msgs, msg, off)
		if err != nil && first == nil {
			first = err
		}
		if k == 0 { // msg failed its checks: skip it
			msg, off = nextMsg, nextOff
			continue
		}
		resume := false
		for j := 0; j < k && !resume; {
			r, errno := c.sendmmsg(b.hdrs[j:k])
			switch {
			case errno == 0:
				for range r {
					if b.last[j] && b.owner[j] != refused {
						sent++
					}
					j++
				}
			case errno == unix.EINTR:
			case errno == unix.EAGAIN:
				if _, err := c.wait(unix.POLLOUT, 0); err != nil {
					b.release(k)
					return sent, err
				}
			case errno == unix.EIO && b.gso[j]:
				// The route's device cannot take UDP GSO. Nothing of this message left; send
				// it again, from this slot on, segmented here.
				if c.gso.CompareAndSwap(true, false) {
					gsoErr = fmt.Errorf("%w: %w", ErrGSO, os.NewSyscallError("sendmmsg", errno))
				}
				msg, off = b.owner[j], 0
				resume = true
			default:
				// sendmmsg reports an error only when the first message failed: skip it.
				// ENOBUFS (the device queue is full) lands here too: waiting for POLLOUT would
				// spin, since the socket buffer has room, and UDP may drop.
				refused = b.owner[j]
				if first == nil {
					first = os.NewSyscallError("sendmmsg", errno)
				}
				j++
			}
		}
		b.release(k)
		if !resume {
			msg, off = nextMsg, nextOff
		}
	}
	switch {
	case gsoErr != nil && first != nil:
		return sent, errors.Join(gsoErr, first)
	case gsoErr != nil:
		return sent, gsoErr
	}
	return sent, first
}

func (c *udpConn) sendmmsg(hdrs []unix.Mmsghdr) (int, unix.Errno) {
	if c.refuse != nil {
		n, errno := c.refuse(hdrs)
		if n == 0 {
			return 0, errno
		}
		hdrs = hdrs[:n]
	}
	r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(c.fd), uintptr(unsafe.Pointer(&hdrs[0])),
		uintptr(len(hdrs)), 0, 0, 0)
	return int(r), errno
}

// fillSend fills the slots of b with msgs from message msg at offset off (not 0 only while the
// Conn cuts that message's segments) and returns how many slots it filled and where the next fill
// starts. A message that fails its checks ends the fill; when it comes first, it fills nothing
// and its error is returned, so that refusals are reported in order.
func (c *udpConn) fillSend(b *mmsgBatch, msgs []Message, msg, off int) (k, nextMsg, nextOff int, err error) {
	nextMsg, nextOff = msg, off
	for k < MaxBatch && nextMsg < len(msgs) {
		cur := nextMsg
		m := &msgs[cur]
		nameLen, src, err := c.target(m, &b.names[k])
		if err != nil {
			if k == 0 {
				return 0, cur + 1, 0, err
			}
			break
		}
		data, seg := m.Buf, 0
		switch {
		case segmented(m) && c.gso.Load():
			seg = m.Segment
			nextMsg++
		case segmented(m):
			end := min(nextOff+m.Segment, len(m.Buf))
			data = m.Buf[nextOff:end]
			if nextOff = end; nextOff == len(m.Buf) {
				nextMsg, nextOff = nextMsg+1, 0
			}
		default:
			nextMsg++
		}
		b.iovs[k].Base = unsafe.SliceData(data)
		b.iovs[k].SetLen(len(data))
		h := &b.hdrs[k].Hdr
		h.Namelen = nameLen
		h.SetControllen(putSendCmsgs(b.oobs[k][:], src, seg))
		h.Flags = 0
		b.hdrs[k].Len = 0
		b.owner[k], b.last[k], b.gso[k] = cur, nextMsg != cur, seg > 0
		k++
	}
	return k, nextMsg, nextOff, nil
}

// writeOne sends one datagram with sendmsg, its headers on the stack: a control packet from a
// handshake goroutine does not queue behind the batch of another sender.
func (c *udpConn) writeOne(m *Message) (int, error) {
	var sa unix.RawSockaddrInet6
	nameLen, src, err := c.target(m, &sa)
	if err != nil {
		return 0, err
	}
	var oob [cmsgRoom]byte
	iov := unix.Iovec{Base: unsafe.SliceData(m.Buf)}
	iov.SetLen(len(m.Buf))
	h := unix.Msghdr{Name: (*byte)(unsafe.Pointer(&sa)), Namelen: nameLen, Iov: &iov}
	h.SetIovlen(1)
	if n := putSendCmsgs(oob[:], src, 0); n > 0 {
		h.Control = &oob[0]
		h.SetControllen(n)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for {
		if c.closed {
			return 0, net.ErrClosed
		}
		_, _, errno := unix.Syscall(unix.SYS_SENDMSG, uintptr(c.fd), uintptr(unsafe.Pointer(&h)), 0)
		switch errno {
		case 0:
			return 1, nil
		case unix.EINTR:
		case unix.EAGAIN:
			if _, err := c.wait(unix.POLLOUT, 0); err != nil {
				return 0, err
			}
		default:
			return 0, os.NewSyscallError("sendmsg", errno)
		}
	}
}

// wait blocks in ppoll until the socket has the events, Close fired the wake eventfd, or timeout
// (> 0; 0: no limit) passed. It reports whether the socket is ready, and returns net.ErrClosed
// once Close fired. The caller holds mu for reading.
func (c *udpConn) wait(events int16, timeout time.Duration) (bool, error) {
	fds := [2]unix.PollFd{{Fd: int32(c.fd), Events: events}, {Fd: int32(c.wakeFD), Events: unix.POLLIN}}
	var ts *unix.Timespec
	var limit unix.Timespec
	if timeout > 0 {
		limit = unix.NsecToTimespec(int64(timeout))
		ts = &limit // the kernel leaves the time remaining in it, which an interrupted wait resumes with
	}
	for {
		n, err := unix.Ppoll(fds[:], ts, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, os.NewSyscallError("ppoll", err)
		}
		if fds[1].Revents != 0 {
			return false, net.ErrClosed
		}
		return n > 0, nil
	}
}
