// Package sock owns the data plane's sockets: batched UDP I/O outside Go's netpoller over IPv4
// and IPv6, the control messages that go with it (IP_PKTINFO, IPV6_PKTINFO, UDP_SEGMENT,
// UDP_GRO), and the seam through which the engine opens its listeners (Network), so that tests
// can swap in the in-memory network of package socktest. It does not own what the packets mean,
// nor which listeners an endpoint opens (one per family for a dual-stack endpoint: the engine
// decides).
package sock

import (
	"errors"
	"net"
	"net/netip"
	"time"
)

// ReadWake is the longest ReadBatch waits: with no datagram by then it returns 0 and no error, so
// that a receive loop goes round (and shows a watchdog that it is alive) while its socket is
// idle. A loop that stops going round is stuck.
const ReadWake = time.Second

// MaxBatch is the most datagrams one ReadBatch returns and one recvmmsg or sendmmsg moves.
// WriteBatch takes any number of messages and sends them MaxBatch at a time.
const MaxBatch = 64

// Message is one datagram of a batch, or with Segment > 0 several datagrams of one size.
type Message struct {
	// Buf, on receive, is the buffer offered to the kernel (its whole length); a datagram longer
	// than Buf is cut to it. With UDP GRO on (Host listeners), a read may bring up to 64 KiB, so
	// offer that much. On send, Buf is the datagram, or with Segment > 0 several segments of that
	// size back to back (the last may be shorter).
	Buf []byte
	// N, on receive, is how many bytes were written into Buf.
	N int
	// Addr, on receive, is the sender; on send, the destination.
	Addr netip.AddrPort
	// Local, on receive, is the local address the datagram was sent to: reported per datagram
	// when the socket is bound to the unspecified address, else the bound address. On send, it is
	// the source address to use; the zero Addr (or the bound address) lets the kernel choose.
	// Replies must leave from the address the client dialled, and a multihomed host's routing
	// would otherwise pick any of its addresses.
	Local netip.Addr
	// Segment, on receive, is the UDP GRO segment size: Buf[:N] holds datagrams of Segment
	// bytes back to back, the last possibly shorter (0: Buf[:N] is one datagram; a read never
	// reports Segment >= N). On send, it asks for Buf to leave as datagrams of Segment bytes
	// (0: Buf is one datagram). Segment is always honoured: by the kernel (UDP GSO) while GSO()
	// holds, else by the Conn, one datagram per segment. Keep a message to at most 64 segments
	// (UDP_MAX_SEGMENTS, which every kernel with UDP GSO accepts) of at most 65535 bytes.
	Segment int
}

// Conn is a UDP socket driven in batches. Its methods are safe for concurrent use.
type Conn interface {
	// ReadBatch waits for at least one datagram and fills msgs[:n] (at most MaxBatch) with the
	// datagrams that are there. When none came within ReadWake it returns 0 and no error. It
	// returns net.ErrClosed once the Conn is closed.
	ReadBatch(msgs []Message) (n int, err error)
	// WriteBatch sends every message, waiting while the socket's send buffer is full. A message
	// the kernel refuses is skipped and the rest are still tried; n counts the messages all of
	// whose datagrams the kernel took, and err is the first refusal. When the kernel refuses UDP
	// GSO (EIO: the route's device cannot segment), the Conn resends that message's segments one
	// by one, GSO() turns false for good, and this one call returns an error wrapping ErrGSO. It
	// returns net.ErrClosed once the Conn is closed.
	WriteBatch(msgs []Message) (n int, err error)
	// LocalAddr is the address the socket is bound to (the port chosen when 0 was asked for).
	LocalAddr() netip.AddrPort
	// GSO reports whether the kernel segments messages with Segment > 0 (UDP GSO); while it does
	// not, building such messages only costs a copy, so callers stop coalescing.
	GSO() bool
	// Close makes blocked and later calls return net.ErrClosed at once and releases the socket.
	// It is idempotent.
	Close() error
}

// Moderator is a Conn whose receive loop should pause after a busy read before it reads again
// (receive moderation: tunnel/dataplane/coalesce.go says when and why). Host's sockets are: on
// them the pause saves wake-ups and system calls and lets the next read bring a batch. The
// in-memory sockets of socktest are not: their reads cost neither, and a pause would only hold a
// processor.
type Moderator interface {
	// Pause waits d in the kernel (the runtime's timers round sub-millisecond sleeps up to a
	// millisecond).
	Pause(d time.Duration)
}

// Network opens listeners: Host opens real sockets; socktest.Network is an in-memory network for
// tests.
type Network interface {
	ListenUDP(ap netip.AddrPort) (Conn, error)
	ListenTCP(ap netip.AddrPort) (net.Listener, error)
}

// ShardedNetwork is a Network that can open one UDP listener as several sockets bound to the same
// address (an SO_REUSEPORT group on the host), so that several goroutines, on several cores,
// receive its datagrams. The network spreads the datagrams over the shards with Steer: a data
// packet (P_DATA_V2) always reaches shard peer-id mod n, wherever it comes from, so one session's
// packets stay on one shard even when the client floats; everything else is spread by a hash of
// the addresses, so one client's packets stay on one shard too. n = 1 opens one socket. The
// data plane uses it when its Network implements it, else it opens one socket per listener.
type ShardedNetwork interface {
	Network
	ListenUDPShards(ap netip.AddrPort, n int) ([]Conn, error)
}

// Host is the host's network. UDP listeners are non-blocking sockets driven with recvmmsg and
// sendmmsg outside the netpoller, with 4 MiB buffers, IP_PKTINFO (IPV6_RECVPKTINFO and
// IPV6_PKTINFO) when bound to the unspecified address, UDP GRO on and UDP GSO when the kernel has
// it; TCP listeners are net.ListenTCP. IPv4 and IPv6 listeners behave alike: an IPv4 (or
// IPv4-mapped) address opens an IPv4 socket, an IPv6 address an IPv6-only one (IPV6_V6ONLY), so
// a dual-stack endpoint opens one listener per family, both may hold the same port, and every
// address a listener reports is a native (unmapped) address of its own family. Link-local
// (scoped) listen addresses are refused.
var Host Network = host{}

// ErrGSO says the kernel refused UDP GSO on a Conn: its GSO() is false from then on, and the
// message was sent as one datagram per segment instead.
var ErrGSO = errors.New("sock: the kernel refused UDP GSO; segmenting in userspace from now on")

// ErrFamily refuses a datagram to or from an address of the other family than its socket's: an
// IPv4 socket cannot reach IPv6 addresses nor an (IPv6-only) IPv6 socket IPv4 ones. The error
// wrapping it names the address and the socket.
var ErrFamily = errors.New("IPv4 and IPv6 addresses do not mix on one socket (a dual-stack endpoint has a listener per family)")

type host struct{}

func (host) ListenUDP(ap netip.AddrPort) (Conn, error) { return listenUDP(ap) }

// ListenTCP listens on ap: "tcp4" for an IPv4 (or IPv4-mapped) address, "tcp6" for an IPv6 one,
// which package net opens IPv6-only.
func (host) ListenTCP(ap netip.AddrPort) (net.Listener, error) {
	ap, err := listenAddr(ap)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err}
	}
	network := "tcp4"
	if ap.Addr().Is6() {
		network = "tcp6"
	}
	ln, err := net.ListenTCP(network, net.TCPAddrFromAddrPort(ap))
	if err != nil {
		return nil, err // a *net.OpError that names the operation and the address
	}
	return ln, nil
}

// listenAddr returns the address a listener binds: ap unmapped, so that an IPv4-mapped address
// opens an IPv4 socket. A scoped (link-local) address is refused: datagrams from link-local
// peers would need their scope carried through the engine.
func listenAddr(ap netip.AddrPort) (netip.AddrPort, error) {
	a := ap.Addr().Unmap()
	switch {
	case !a.IsValid():
		return ap, errors.New("no address")
	case a.Is6() && (a.Zone() != "" || a.IsLinkLocalUnicast()):
		return ap, errors.New("link-local (scoped) addresses are not supported")
	}
	return netip.AddrPortFrom(a, ap.Port()), nil
}
