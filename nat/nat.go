// Package nat is a userspace source NAT with connection tracking for IPv4
// and IPv6.
//
// Clients of the tunnel send packets from their own addresses; Outbound
// rewrites the source to the SNAT address of the packet's family before the
// packet is written to the TUN toward the private network, and Inbound
// rewrites replies addressed to that SNAT address back to the client they
// belong to. It translates TCP, UDP and ICMP or ICMPv6 echo, the errors that
// embed a translated packet (ICMP destination unreachable, time exceeded,
// parameter problem; ICMPv6 destination unreachable, packet too big, time
// exceeded, parameter problem), and fragments.
//
// IPv6 is translated only when Config.Addr6 is set (the endpoint's optional
// snat_ipv6_address, for private networks that cannot route the client
// range); otherwise IPv6 traffic keeps the clients' own addresses and never
// reaches the NAT, which refuses it with ErrNoIPv6. Likewise IPv4 needs
// Config.Addr (ErrNoIPv4). IPv6 headers and extension headers are read by
// package ippkt (Outbound and Inbound refuse what it refuses, each reason a
// drop error of its own); the NAT rewrites the addresses, the port or echo
// identifier and the upper-layer checksum, whose pseudo-header holds both
// addresses; an IPv6 UDP datagram without a checksum is refused (RFC 8200
// §8.1 forbids it). IPv6 fragments follow their first fragment as IPv4 ones
// do, by the Fragment header's identification. Packet Too Big reaches the
// client translated, so path MTU discovery works through the NAT. Both
// families share one table: its size, its timeouts, and, for a client whose
// two addresses Pair ties together, one share of it.
//
// The package owns the mapping table, its timeouts, each client's share of
// it and the checksum arithmetic. It does not own authorization (authz),
// routing, TTL or hop limit handling, anti-spoofing (the caller checks a
// client sends from its own address before calling Outbound), parsing IP
// headers (ippkt), nor when to call Expire.
//
// Mappings are endpoint-dependent: a client's source port (or echo
// identifier) is kept unless another client already uses it toward the same
// destination address, port and protocol; only then is a free one chosen.
// Packets are rewritten in place and checksums adjusted incrementally
// (RFC 1624), so the NAT never reads a payload and preserves a bad checksum
// as bad.
//
// Timeouts follow the NAT behavioural RFCs. A TCP mapping is established,
// and idles out after 2 h 4 min (RFC 5382 REQ-5), only once the three-way
// handshake went through it: the client's SYN, the private network's
// SYN-ACK, the client's ACK (the TCP session tracking of RFC 7857 §2, with
// the whole handshake required, not only a SYN each way). Before that, and from the first
// FIN or RST on, it is transitory: 4 min. UDP mappings last 5 min (RFC 4787
// REQ-5), ICMP and ICMPv6 echo ones 60 s (RFC 5508 REQ-2). Only the client's packets
// refresh a mapping (RFC 4787 REQ-6 requires outbound refresh and leaves
// inbound refresh optional), except an established TCP connection, whose
// replies refresh it too. So nothing the private network sends alone keeps a
// mapping alive or moves it to a longer timeout.
//
// Each client may hold at most Config.MaxPerClient mappings, both families
// together when Pair made its IPv4 and IPv6 addresses one client, so that
// no one client can take the table from the others (RFC 6888 REQ-4 asks the same of
// carrier-grade NATs, per subscriber). A client at its quota, or in a full
// table, gets room only from its own mappings: one that expired, or one idle
// for Config.RecycleIdle that is not an established TCP connection, is
// recycled for the new flow; otherwise the new flow is refused
// (ErrClientQuota, ErrTableFull). A full table first sweeps out every expired
// mapping. No client's flow ever takes another client's live mapping.
//
// Outbound and Inbound may run at the same time on different goroutines:
// lookups of an existing mapping take only a read lock, on a different lock
// for each direction, and allocate nothing.
package nat

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Config.
const (
	DefaultMaxEntries = 65536
	// DefaultMaxPerClient is DefaultMaxEntries shared out among the 1,024
	// addresses of a /22, the smallest client CIDR an endpoint may have.
	DefaultMaxPerClient = DefaultMaxEntries / 1024
	// RFC 5382 REQ-5: the established connection idle-timeout must not be
	// less than 2 hours 4 minutes (TCP's two-hour keepalive plus its
	// retries), the transitory one not less than 4 minutes (2 MSL).
	DefaultTCPEstablishedTimeout = 2*time.Hour + 4*time.Minute
	DefaultTCPTransitoryTimeout  = 4 * time.Minute
	// RFC 4787 REQ-5: a UDP mapping must not expire in less than two
	// minutes; five or more is recommended.
	DefaultUDPTimeout = 5 * time.Minute
	// RFC 5508 REQ-2: an ICMP query session must not expire in less than
	// 60 seconds.
	DefaultICMPTimeout = 60 * time.Second
	// DefaultRecycleIdle is how long a client's mapping must have been idle
	// before a new flow of the same client may take its place: far longer
	// than a DNS answer or a TCP SYN retry takes, far shorter than any
	// timeout.
	DefaultRecycleIdle = 30 * time.Second
)

const (
	// touchSlack bounds how stale a mapping's last-seen time may be. A
	// packet refreshes it only when it is older than this, so two goroutines
	// passing packets of one busy flow do not write its cache line on every
	// packet. Idle timeouts are therefore exact to within touchSlack.
	touchSlack = 100 * time.Millisecond
	// sweepInterval is the least time between the sweeps a full table
	// triggers, so a flood of new flows into a full table costs one sweep
	// per interval, not one per packet. Expired mappings are therefore
	// swept out at most this late.
	sweepInterval = time.Second
	// recycleScan bounds how many of a client's mappings one new flow looks
	// at for one to recycle, so that a flood of new flows from a client at
	// a large quota costs a bounded amount per packet.
	recycleScan = 32
	// fragTimeout is how long a translated first fragment lets later
	// fragments of the same datagram through (the Linux ipfrag_time).
	fragTimeout = 30 * time.Second
)

// Config configures a Table. A Table with neither Addr nor Addr6 translates
// nothing: it is what an endpoint whose traffic is IPv6 routed without NAT
// hands the data plane, and refuses every packet with ErrNoIPv4 or ErrNoIPv6.
type Config struct {
	// Addr is the IPv4 SNAT address: the source of every translated
	// outbound IPv4 packet and the destination of every inbound one. The
	// zero Addr turns IPv4 translation off: IPv4 packets get ErrNoIPv4.
	Addr netip.Addr
	// Addr6 is the IPv6 SNAT address, likewise for IPv6. The zero Addr6
	// turns IPv6 translation off (IPv6 traffic is routed with the clients'
	// own addresses instead): IPv6 packets get ErrNoIPv6. It must be a
	// unicast address that can be on the wire: not unspecified, loopback,
	// multicast or IPv4-mapped, and without a zone.
	Addr6 netip.Addr
	// MaxEntries caps the number of mappings; 0 means DefaultMaxEntries.
	MaxEntries int
	// MaxPerClient caps the number of mappings of one client: of one
	// address, or of the two addresses Pair made one client, both families
	// counted together. 0 means DefaultMaxPerClient, and more than
	// MaxEntries means MaxEntries.
	MaxPerClient int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Idle timeouts; 0 means the matching default. A TCP mapping uses the
	// established timeout between the end of the three-way handshake and the
	// first FIN or RST, the transitory one otherwise.
	TCPEstablishedTimeout time.Duration
	TCPTransitoryTimeout  time.Duration
	UDPTimeout            time.Duration
	ICMPTimeout           time.Duration
	// RecycleIdle is how long a mapping must have been idle before a new
	// flow of its client, at its quota or in a full table, may replace it;
	// established TCP connections are never replaced before they expire. 0
	// means DefaultRecycleIdle.
	RecycleIdle time.Duration
}

// addr is an address of either family as the table's keys hold it: the 16
// bytes of its IPv6 form, IPv4 as IPv4-mapped (RFC 4291 §2.5.5.2), the form
// netip.Addr.As16 gives. Outbound and Inbound refuse IPv6 packets from or to
// an IPv4-mapped address (ErrUnsupported), which have no business on the
// wire (RFC 5156 §2.2), so an IPv6 flow never shares a key with an IPv4 one.
type addr struct{ hi, lo uint64 }

// v4mapped is addr.hi and the top of addr.lo for an IPv4 address.
const v4mapped = 0xffff << 32

func addr4(u uint32) addr { return addr{lo: v4mapped | uint64(u)} }

func addrOf(a netip.Addr) addr {
	b := a.As16()
	return addr{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func (a addr) is4() bool { return a.hi == 0 && a.lo>>32 == 0xffff }

// v4 returns the IPv4 address a holds; a.is4() must hold.
func (a addr) v4() uint32 { return uint32(a.lo) }

// netip returns a as a netip.Addr of its own family.
func (a addr) netip() netip.Addr {
	if a.is4() {
		return addrFromUint(a.v4())
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], a.hi)
	binary.BigEndian.PutUint64(b[8:], a.lo)
	return netip.AddrFrom16(b)
}

// outKey is a flow as the client sent it. For ICMP echo, clientPort is the
// identifier and remotePort is 0. proto tells ICMP (1) from ICMPv6 (58);
// TCP and UDP are told apart by family through the addresses.
type outKey struct {
	client, remote         addr
	clientPort, remotePort uint16
	proto                  uint8
}

// inKey is a flow as the private network sees it: the remote end and the
// external port (or echo identifier) on the SNAT address of its family.
type inKey struct {
	remote              addr
	remotePort, extPort uint16
	proto               uint8
}

// TCP state bits of mapping.state: the handshake as the NAT sees it.
const (
	tcpSynOut      = 1 << iota // the client sent a SYN
	tcpSynIn                   // the private network answered that SYN with a SYN-ACK
	tcpEstablished             // the client acknowledged the SYN-ACK
	tcpClosing                 // FIN or RST seen in either direction
)

// mapping is one translated flow. Its keys and extPort never change once it
// is in the table, so readers use them without a lock.
type mapping struct {
	out     outKey
	extPort uint16
	// flows is the list of the client the mapping counts against: its
	// address's own, or the one Pair made common to both families. Guarded
	// by Table.outMu.
	flows *clientFlows
	// lastSeen is the time of the last packet that refreshed the mapping,
	// in nanoseconds since Table.epoch, kept to within touchSlack.
	lastSeen atomic.Int64
	state    atomic.Uint32 // TCP state bits
	// prev and next link the mappings of one client (clientFlows); guarded
	// by Table.outMu.
	prev, next *mapping
}

func (m *mapping) inKey() inKey {
	return inKey{remote: m.out.remote, remotePort: m.out.remotePort, extPort: m.extPort, proto: m.out.proto}
}

// clientFlows lists one client's mappings. New mappings join at the back,
// and the recycling scan moves each mapping it passes over (one still in
// use) to the back, so the front gathers the mappings left alone longest:
// the CLOCK (second chance) replacement order, with "idle for RecycleIdle"
// as the reference bit. Guarded by Table.outMu.
type clientFlows struct {
	head, tail *mapping
	n          int
	// key is the client's key in Table.clients: its IPv4 address when Pair
	// made it one client with an IPv6 address, else its only address.
	key addr
}

func (f *clientFlows) pushBack(m *mapping) {
	m.prev, m.next = f.tail, nil
	if f.tail != nil {
		f.tail.next = m
	} else {
		f.head = m
	}
	f.tail = m
	f.n++
}

func (f *clientFlows) remove(m *mapping) {
	if m.prev != nil {
		m.prev.next = m.next
	} else {
		f.head = m.next
	}
	if m.next != nil {
		m.next.prev = m.prev
	} else {
		f.tail = m.prev
	}
	m.prev, m.next = nil, nil
	f.n--
}

// Stats counts what a Table did since it was made.
type Stats struct {
	// Mappings is the number in the table now, idle ones not yet removed
	// included.
	Mappings int
	// Recycled counts mappings replaced by a new flow of their own client,
	// at its quota or in a full table.
	Recycled uint64
	// QuotaRefused counts new flows refused because their client was at its
	// quota with nothing to recycle (ErrClientQuota).
	QuotaRefused uint64
	// FullRefused counts new flows refused because the table was full and
	// their client had nothing to recycle (ErrTableFull).
	FullRefused uint64
}

// Table is a NAT mapping table. Its methods are safe for concurrent use.
type Table struct {
	addr         uint32     // the IPv4 SNAT address, if has4
	addr6        netip.Addr // the IPv6 SNAT address, if has6
	has4, has6   bool
	max          int
	maxPerClient int
	now          func() time.Time
	epoch        time.Time
	// Timeouts in nanoseconds.
	tcpEstablished, tcpTransitory, udpTimeout, icmpTimeout, recycleIdle int64

	// Lock order: outMu, then inMu.
	//
	// outMu guards out, clients, pairs and the fields after them. in is written
	// only with both locks held, so holding either one, in any mode, is
	// enough to read it: Outbound reads under outMu and Inbound under inMu,
	// and neither waits for the other except while a mapping is added or
	// removed.
	outMu   sync.RWMutex
	out     map[outKey]*mapping
	clients map[addr]*clientFlows
	// pairs maps each address Pair tied to another to the key of their
	// common client in clients.
	pairs map[addr]addr
	// nextPort is where the next search for a free port starts.
	nextPort uint16
	// lastSweep is when a full table last swept (ns since epoch).
	lastSweep int64
	// dead is scratch space for removal, kept to avoid allocating.
	dead  []*mapping
	stats Stats // all but Mappings

	inMu sync.RWMutex
	in   map[inKey]*mapping

	frags fragTable
}

// New returns an empty Table.
func New(cfg Config) (*Table, error) {
	if cfg.Addr.IsValid() && !cfg.Addr.Is4() {
		return nil, fmt.Errorf("nat: SNAT address %v is not IPv4: %w", cfg.Addr, ErrConfig)
	}
	if a := cfg.Addr6; a.IsValid() && (!a.Is6() || a.Is4In6() || a.Zone() != "" || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast()) {
		return nil, fmt.Errorf("nat: IPv6 SNAT address %v is not a unicast IPv6 address fit for the wire: %w", a, ErrConfig)
	}
	if cfg.MaxEntries < 0 {
		return nil, fmt.Errorf("nat: MaxEntries %d is negative: %w", cfg.MaxEntries, ErrConfig)
	}
	if cfg.MaxPerClient < 0 {
		return nil, fmt.Errorf("nat: MaxPerClient %d is negative: %w", cfg.MaxPerClient, ErrConfig)
	}
	for _, d := range []time.Duration{cfg.TCPEstablishedTimeout, cfg.TCPTransitoryTimeout, cfg.UDPTimeout, cfg.ICMPTimeout, cfg.RecycleIdle} {
		if d < 0 {
			return nil, fmt.Errorf("nat: timeout %v is negative: %w", d, ErrConfig)
		}
	}
	orDefault := func(d, def time.Duration) int64 {
		if d == 0 {
			d = def
		}
		return int64(d)
	}
	t := &Table{
		addr6:          cfg.Addr6,
		has4:           cfg.Addr.IsValid(),
		has6:           cfg.Addr6.IsValid(),
		max:            cfg.MaxEntries,
		maxPerClient:   cfg.MaxPerClient,
		now:            cfg.Now,
		tcpEstablished: orDefault(cfg.TCPEstablishedTimeout, DefaultTCPEstablishedTimeout),
		tcpTransitory:  orDefault(cfg.TCPTransitoryTimeout, DefaultTCPTransitoryTimeout),
		udpTimeout:     orDefault(cfg.UDPTimeout, DefaultUDPTimeout),
		icmpTimeout:    orDefault(cfg.ICMPTimeout, DefaultICMPTimeout),
		recycleIdle:    orDefault(cfg.RecycleIdle, DefaultRecycleIdle),
		out:            map[outKey]*mapping{},
		in:             map[inKey]*mapping{},
		clients:        map[addr]*clientFlows{},
		pairs:          map[addr]addr{},
		nextPort:       1024,
	}
	if t.has4 {
		t.addr = addrToUint(cfg.Addr)
	}
	if t.max == 0 {
		t.max = DefaultMaxEntries
	}
	if t.maxPerClient == 0 {
		t.maxPerClient = DefaultMaxPerClient
	}
	t.maxPerClient = min(t.maxPerClient, t.max)
	if t.now == nil {
		t.now = time.Now
	}
	t.epoch = t.now()
	return t, nil
}

// clock returns the time in nanoseconds since t.epoch. With time.Now both
// readings carry the monotonic clock, so a wall-clock step does not expire
// or revive mappings.
func (t *Table) clock() int64 { return int64(t.now().Sub(t.epoch)) }

// Len returns the number of mappings, including idle ones not yet removed.
func (t *Table) Len() int {
	t.outMu.RLock()
	defer t.outMu.RUnlock()
	return len(t.out)
}

// Stats returns the table's counters.
func (t *Table) Stats() Stats {
	t.outMu.RLock()
	defer t.outMu.RUnlock()
	s := t.stats
	s.Mappings = len(t.out)
	return s
}

// established reports whether a TCP state has the long timeout.
func established(state uint32) bool {
	return state&(tcpEstablished|tcpClosing) == tcpEstablished
}

func (t *Table) timeout(m *mapping) int64 {
	switch m.out.proto {
	case protoTCP:
		if established(m.state.Load()) {
			return t.tcpEstablished
		}
		return t.tcpTransitory
	case protoUDP:
		return t.udpTimeout
	default:
		return t.icmpTimeout
	}
}

func (t *Table) expired(m *mapping, now int64) bool {
	return now-m.lastSeen.Load() > t.timeout(m)
}

// recyclable reports whether a new flow of m's own client may take m's
// place: m expired, or has been idle for recycleIdle and is not an
// established TCP connection.
func (t *Table) recyclable(m *mapping, now int64) bool {
	idle := now - m.lastSeen.Load()
	if idle > t.timeout(m) {
		return true
	}
	return idle >= t.recycleIdle && !established(m.state.Load()) // only TCP has state bits
}

// touch records a packet of m at now.
func touch(m *mapping, now int64) {
	if now-m.lastSeen.Load() > int64(touchSlack) {
		m.lastSeen.Store(now)
	}
}

// nextTCPState is the state a TCP mapping in state s moves to on a segment
// with the given flags, from the client (inbound false) or to it.
//
// Only the client's SYN starts a connection, only a SYN-ACK answering it
// counts as the reply, and only the client's ACK after that establishes
// it, so a lone packet from the private network (a SYN-ACK nobody asked for)
// changes nothing. FIN or RST in either direction closes it for good: the
// mapping stays for the transitory timeout (RFC 7857 §2), and later data does
// not make it established again;
// a new SYN from the client after that, or over an established connection
// whose end the NAT missed, starts a new connection on the same ports.
func nextTCPState(s uint32, flags byte, inbound bool) uint32 {
	syn, ack := flags&tcpSYN != 0, flags&tcpACK != 0
	switch {
	case flags&(tcpFIN|tcpRST) != 0:
		return s | tcpClosing
	case syn && !ack && !inbound:
		if s&(tcpEstablished|tcpClosing) != 0 {
			return tcpSynOut
		}
		return s | tcpSynOut
	case s&tcpClosing != 0:
		return s
	case syn && ack && inbound && s&tcpSynOut != 0:
		return s | tcpSynIn
	case !syn && ack && !inbound && s&tcpSynIn != 0:
		return s | tcpEstablished
	}
	return s
}

// trackTCP moves m's state for a TCP segment with the given flags and
// returns the new state. Outbound and Inbound may call it at once for one
// mapping, so it retries until its change applies to the latest state.
func trackTCP(m *mapping, flags byte, inbound bool) uint32 {
	for {
		s := m.state.Load()
		n := nextTCPState(s, flags, inbound)
		if n == s || m.state.CompareAndSwap(s, n) {
			return n
		}
	}
}

// Expire removes the mappings idle past their timeout. The engine calls it
// periodically; lookups also ignore idle mappings without waiting for it.
func (t *Table) Expire() {
	now := t.clock()
	t.outMu.Lock()
	defer t.outMu.Unlock()
	t.expireLocked(now)
	t.frags.expire(now)
}

// expireLocked removes idle mappings. t.outMu must be held for writing.
func (t *Table) expireLocked(now int64) {
	t.lastSweep = now
	dead := t.dead[:0]
	for _, m := range t.out {
		if t.expired(m, now) {
			dead = append(dead, m)
		}
	}
	t.removeLocked(dead)
	clear(dead)
	t.dead = dead[:0]
}

// ForgetClient removes every mapping of client, of either family, so that a
// client that is given the address later inherits none of them. An address
// Pair tied to another is forgotten with its partner: all the mappings of
// both, and the pairing.
func (t *Table) ForgetClient(client netip.Addr) {
	if !client.IsValid() {
		return
	}
	c := addrOf(client.Unmap())
	t.outMu.Lock()
	partner, paired := t.pairs[c]
	key := t.clientKeyLocked(c)
	dead := t.dead[:0]
	if f := t.clients[key]; f != nil {
		for m := f.head; m != nil; m = m.next {
			dead = append(dead, m)
		}
	}
	t.removeLocked(dead)
	clear(dead)
	t.dead = dead[:0]
	if paired {
		delete(t.pairs, c)
		delete(t.pairs, partner)
	}
	t.outMu.Unlock()
	t.frags.forget(c)
	if paired {
		t.frags.forget(partner)
	}
}

// Pair makes the IPv4 address v4 and the IPv6 address v6 one client, as a
// dual-stack session is: from then on the mappings of both count against
// one share of MaxPerClient, a new flow of either family may recycle an idle
// mapping of the other, and ForgetClient of either address forgets both.
// Mappings either address already holds join the common share, and while
// the two together stand over MaxPerClient the oldest go (the IPv4 address's
// first), so no client is ever over its share. The session layer calls it
// once it has both addresses, before the client's traffic flows; without it
// each address has a share of its own.
//
// It returns an error wrapping ErrConfig if v4 is not IPv4, v6 not IPv6, or
// either is already paired with another address (ForgetClient ends a
// pairing).
func (t *Table) Pair(v4, v6 netip.Addr) error {
	if !v4.Is4() || !v6.Is6() || v6.Is4In6() {
		return fmt.Errorf("nat: pair %v with %v: want an IPv4 and an IPv6 address: %w", v4, v6, ErrConfig)
	}
	a4, a6 := addrOf(v4), addrOf(v6)
	t.outMu.Lock()
	defer t.outMu.Unlock()
	p4, ok4 := t.pairs[a4]
	p6, ok6 := t.pairs[a6]
	if ok4 && ok6 && p4 == a6 && p6 == a4 {
		return nil
	}
	if ok4 || ok6 {
		return fmt.Errorf("nat: pair %v with %v: already paired: %w", v4, v6, ErrConfig)
	}
	t.pairs[a4], t.pairs[a6] = a6, a4
	f6 := t.clients[a6]
	if f6 == nil {
		return nil
	}
	delete(t.clients, a6)
	f4 := t.clients[a4]
	if f4 == nil {
		f6.key = a4
		t.clients[a4] = f6
		return nil
	}
	for m := f6.head; m != nil; m = f6.head {
		f6.remove(m)
		f4.pushBack(m)
		m.flows = f4
	}
	// Both families together may hold more than one client's share: the oldest
	// go, so that the pair starts within its quota like any client.
	var excess []*mapping
	for m := f4.head; m != nil && f4.n-len(excess) > t.maxPerClient; m = m.next {
		excess = append(excess, m)
	}
	t.removeLocked(excess)
	return nil
}

// clientKeyLocked returns the key in t.clients of the client that holds
// address a: its IPv4 partner if Pair tied a to one, else a. t.outMu must be
// held.
func (t *Table) clientKeyLocked(a addr) addr {
	if p, ok := t.pairs[a]; ok && p.is4() {
		return p
	}
	return a
}

// removeLocked removes the mappings ms. t.outMu must be held for writing.
func (t *Table) removeLocked(ms []*mapping) {
	if len(ms) == 0 {
		return
	}
	t.inMu.Lock()
	for _, m := range ms {
		delete(t.in, m.inKey())
	}
	t.inMu.Unlock()
	for _, m := range ms {
		delete(t.out, m.out)
		t.unlink(m)
	}
}

// link adds m to the list of the client whose key is client.
func (t *Table) link(m *mapping, client addr) {
	f := t.clients[client]
	if f == nil {
		f = &clientFlows{key: client}
		t.clients[client] = f
	}
	f.pushBack(m)
	m.flows = f
}

func (t *Table) unlink(m *mapping) {
	f := m.flows
	f.remove(m)
	m.flows = nil
	if f.n == 0 {
		delete(t.clients, f.key)
	}
}

// lookupOut returns the live mapping for k, creating it if needed, and
// refreshes it.
func (t *Table) lookupOut(k outKey, now int64) (*mapping, error) {
	t.outMu.RLock()
	m := t.out[k]
	if m != nil && !t.expired(m, now) {
		touch(m, now)
		t.outMu.RUnlock()
		return m, nil
	}
	t.outMu.RUnlock()

	t.outMu.Lock()
	defer t.outMu.Unlock()
	if m = t.out[k]; m != nil {
		if !t.expired(m, now) {
			touch(m, now)
			return m, nil
		}
		t.removeOne(m)
	}
	client := t.clientKeyLocked(k.client)
	if err := t.makeRoom(client, now); err != nil {
		return nil, err
	}
	ext, ok := t.freePort(k, now)
	if !ok {
		return nil, ErrNoFreePort
	}
	m = &mapping{out: k, extPort: ext}
	m.lastSeen.Store(now)
	t.inMu.Lock()
	t.in[m.inKey()] = m
	t.inMu.Unlock()
	t.out[k] = m
	t.link(m, client)
	return m, nil
}

// makeRoom makes client's next mapping fit: under the client's quota and in
// the table. At its quota, the client recycles one of its own mappings or is
// refused. In a full table, expired mappings go first (a sweep, at most one
// per sweepInterval), then one of the client's own recyclable ones; another
// client's live mapping never does. client is the client's key in t.clients.
// t.outMu must be held for writing.
func (t *Table) makeRoom(client addr, now int64) error {
	if f := t.clients[client]; f != nil && f.n >= t.maxPerClient {
		if !t.recycle(f, now) {
			t.stats.QuotaRefused++
			return ErrClientQuota
		}
	}
	if len(t.out) < t.max {
		return nil
	}
	if now-t.lastSweep >= int64(sweepInterval) {
		t.expireLocked(now)
		if len(t.out) < t.max {
			return nil
		}
	}
	if f := t.clients[client]; f != nil && t.recycle(f, now) {
		return nil
	}
	t.stats.FullRefused++
	return ErrTableFull
}

// recycle removes one of f's mappings that recyclable allows, looking from
// the front at no more than recycleScan of them and moving each it passes
// over to the back. It reports whether it removed one. t.outMu must be held
// for writing.
func (t *Table) recycle(f *clientFlows, now int64) bool {
	for range min(f.n, recycleScan) {
		m := f.head
		if t.recyclable(m, now) {
			t.removeOne(m)
			t.stats.Recycled++
			return true
		}
		f.remove(m)
		f.pushBack(m)
	}
	return false
}

func (t *Table) removeOne(m *mapping) {
	dead := append(t.dead[:0], m)
	t.removeLocked(dead)
	clear(dead)
	t.dead = dead[:0]
}

// freePort picks the external port (or echo identifier) for a new mapping
// of k: the client's own if no live mapping toward the same remote end uses
// it, else the next free one in its range, searched from t.nextPort. Ports
// below 1024 stay below 1024, as some servers trust them. t.outMu must be
// held for writing.
func (t *Table) freePort(k outKey, now int64) (uint16, bool) {
	ik := inKey{remote: k.remote, remotePort: k.remotePort, extPort: k.clientPort, proto: k.proto}
	if t.portFree(ik, now) {
		return k.clientPort, true
	}
	lo, n := 1024, 65536-1024
	switch {
	case k.proto == protoICMP || k.proto == protoICMPv6:
		lo, n = 0, 65536
	case k.clientPort < 1024:
		lo, n = 1, 1023
	}
	start := (int(t.nextPort) - lo + n) % n
	for i := range n {
		p := uint16(lo + (start+i)%n)
		ik.extPort = p
		if t.portFree(ik, now) {
			t.nextPort = p + 1
			return p, true
		}
	}
	return 0, false
}

// portFree reports whether ik is unused, removing an idle mapping that holds
// it. t.outMu must be held for writing.
func (t *Table) portFree(ik inKey, now int64) bool {
	m := t.in[ik]
	if m == nil {
		return true
	}
	if t.expired(m, now) {
		t.removeOne(m)
		return true
	}
	return false
}

func addrFromUint(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}

func addrToUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
