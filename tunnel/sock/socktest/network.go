// Package socktest is an in-memory sock.Network, so that a whole engine (handshakes, the data
// path, attacks on both) runs in a unit test without sockets, namespaces or root. The engine side
// listens with ListenUDP and ListenTCP; clients use ListenPacket and DialTCP; tests play the
// network with Inject (a datagram from any, spoofed, source) and SetFilter (rewrite or drop
// datagrams in flight).
//
// It is one host with every address of both families: a datagram to any address reaches the
// endpoint bound to it, or to the unspecified address of its family on its port. As on a host
// whose IPv6 sockets are IPv6-only, an IPv4 and an IPv6 endpoint may hold the same port, an
// endpoint sends to and from addresses of its own family only (sock.ErrFamily), and no datagram
// crosses families. ListenUDPShards binds several endpoints to one
// address, as an SO_REUSEPORT group with the steering program does on a host (sock.Steer). It
// does not model loss (beyond full queues), reordering, delay, MTUs, ICMP, or UDP GRO and GSO.
//
// The UDP path is built to stay out of the way of the engine it carries, so that an in-memory
// benchmark measures the engine: a datagram in flight takes no network-wide lock (the bound
// addresses are an immutable snapshot behind an atomic pointer), each endpoint's queue has its
// own lock, taken once per run of a batch, and datagrams travel in pooled buffers, so that in
// steady state sending and receiving allocate nothing.
package socktest

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cvpn/cvpn/tunnel/sock"
)

// QueueLen bounds each UDP endpoint's receive queue, in datagrams; beyond it datagrams are
// dropped, as a kernel drops when a socket's receive buffer is full.
const QueueLen = 4096

// Filter sees each datagram sent on the network (not those of Inject) before it is delivered. pkt
// is the network's own copy, which the filter may change in place but must not keep. It returns
// the source the receiver will see, and whether to deliver the datagram at all.
type Filter func(from, to netip.AddrPort, pkt []byte) (newFrom netip.AddrPort, deliver bool)

// Network is an in-memory network. Its methods and those of everything it returns are safe for
// concurrent use.
type Network struct {
	filter atomic.Pointer[Filter]
	// wake is the longest a UDP ReadBatch waits (SetReadWake); 0 means sock.ReadWake.
	wake atomic.Int64

	// udp holds the UDP endpoints by bound address (which may be unspecified): an immutable
	// map, replaced whole under mu when an endpoint binds or closes, read without a lock by
	// every datagram.
	udp atomic.Pointer[map[netip.AddrPort]*group]

	mu       sync.Mutex
	tcp      map[netip.AddrPort]*listener // by bound address, which may be unspecified
	tcpConns map[netip.AddrPort]bool      // the local addresses of client TCP connections
	ports    map[portKey]int              // how many bindings each port has
	next     uint16                       // the next ephemeral port to try
}

var _ sock.ShardedNetwork = (*Network)(nil)

// portKey names a port of one protocol and address family.
type portKey struct {
	tcp, v6 bool
	port    uint16
}

// Ephemeral ports, as Linux's ip_local_port_range.
const firstEphemeral, lastEphemeral = 32768, 60999

// NewNetwork returns a network with nothing bound and no filter.
func NewNetwork() *Network {
	n := &Network{
		tcp:      make(map[netip.AddrPort]*listener),
		tcpConns: make(map[netip.AddrPort]bool),
		ports:    make(map[portKey]int),
		next:     firstEphemeral,
	}
	n.udp.Store(new(map[netip.AddrPort]*group))
	return n
}

// SetReadWake sets the longest a UDP Conn's ReadBatch waits before it returns 0 and no error
// (sock.ReadWake by default), so that tests of a receive loop's heartbeat need not wait long.
func (n *Network) SetReadWake(d time.Duration) { n.wake.Store(int64(d)) }

func (n *Network) readWake() time.Duration {
	if d := time.Duration(n.wake.Load()); d > 0 {
		return d
	}
	return sock.ReadWake
}

// SetFilter installs f (nil removes the filter).
func (n *Network) SetFilter(f Filter) {
	if f == nil {
		n.filter.Store(nil)
		return
	}
	n.filter.Store(&f)
}

// bind reserves ap, choosing a free port when ap's is 0, and returns the address bound. The
// caller holds n.mu; taken says whether an exact address is bound already.
func (n *Network) bind(ap netip.AddrPort, tcp bool, taken func(netip.AddrPort) bool) (netip.AddrPort, error) {
	if !ap.Addr().IsValid() {
		return netip.AddrPort{}, errors.New("socktest: no address")
	}
	ap = unmap(ap)
	key := portKey{tcp: tcp, v6: ap.Addr().Is6()}
	free := func(port uint16) bool {
		key.port = port
		if ap.Addr().IsUnspecified() {
			return n.ports[key] == 0
		}
		return !taken(netip.AddrPortFrom(ap.Addr(), port)) &&
			!taken(netip.AddrPortFrom(unspecified(ap.Addr()), port))
	}
	if ap.Port() == 0 {
		for range lastEphemeral - firstEphemeral + 1 {
			port := n.next
			if n.next++; n.next > lastEphemeral {
				n.next = firstEphemeral
			}
			// A fresh port for each binding, as the kernel mostly does, keeps stale
			// datagrams from reaching a new endpoint.
			key.port = port
			if n.ports[key] == 0 {
				ap = netip.AddrPortFrom(ap.Addr(), port)
				n.ports[key]++
				return ap, nil
			}
		}
		return netip.AddrPort{}, syscall.EADDRINUSE
	}
	if !free(ap.Port()) {
		return netip.AddrPort{}, syscall.EADDRINUSE
	}
	key.port = ap.Port()
	n.ports[key]++
	return ap, nil
}

// unbind releases a port bind reserved. The caller holds n.mu.
func (n *Network) unbind(ap netip.AddrPort, tcp bool) {
	key := portKey{tcp: tcp, v6: ap.Addr().Is6(), port: ap.Port()}
	if n.ports[key]--; n.ports[key] <= 0 {
		delete(n.ports, key)
	}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// source is the address a datagram or connection from an endpoint bound to local leaves from
// when the sender names none: the bound address, or loopback when that is unspecified (this
// network has no routes to choose by).
func source(local netip.Addr) netip.Addr {
	switch {
	case !local.IsUnspecified():
		return local
	case local.Is4():
		return netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	return netip.IPv6Loopback()
}
