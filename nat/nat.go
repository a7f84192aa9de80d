// Package nat is a userspace source NAT with connection tracking for IPv4.
//
// Clients of the tunnel send packets from their own addresses; Outbound
// rewrites the source to one SNAT address before the packet is written to
// the TUN toward the private network, and Inbound rewrites replies addressed
// to the SNAT address back to the client they belong to. It translates TCP,
// UDP and ICMP echo, the ICMP errors (destination unreachable, time exceeded,
// parameter problem) that embed a translated packet, and fragments.
//
// The package owns the mapping table, its timeouts and the checksum
// arithmetic. It does not own authorization (authz), routing, TTL handling,
// anti-spoofing (the caller checks a client sends from its own address
// before calling Outbound), nor when to call Expire.
//
// Mappings are endpoint-dependent: a client's source port (or echo
// identifier) is kept unless another client already uses it toward the same
// destination address, port and protocol; only then is a free one chosen.
// Packets are rewritten in place and checksums adjusted incrementally
// (RFC 1624), so the NAT never reads a payload and preserves a bad checksum
// as bad.
//
// Outbound and Inbound may run at the same time on different goroutines:
// lookups of an existing mapping take only a read lock, on a different lock
// for each direction, and allocate nothing.
package nat

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Default timeouts, the Linux conntrack ones where they exist.
const (
	DefaultMaxEntries            = 65536
	DefaultTCPEstablishedTimeout = 2 * time.Hour
	DefaultTCPTransitoryTimeout  = 4 * time.Minute
	DefaultUDPTimeout            = 60 * time.Second
	DefaultICMPTimeout           = 30 * time.Second
)

const (
	// touchSlack bounds how stale a mapping's last-seen time may be. A
	// packet refreshes it only when it is older than this, so two goroutines
	// passing packets of one busy flow do not write its cache line on every
	// packet. Idle timeouts are therefore exact to within touchSlack.
	touchSlack = 100 * time.Millisecond
	// sweepInterval is the least time between the sweeps a full table
	// triggers, so a flood of new flows into a full table costs one sweep
	// per interval, not one per packet.
	sweepInterval = time.Second
	// fragTimeout is how long a translated first fragment lets later
	// fragments of the same datagram through (the Linux ipfrag_time).
	fragTimeout = 30 * time.Second
)

// Config configures a Table.
type Config struct {
	// Addr is the SNAT address: the source of every translated outbound
	// packet and the destination of every inbound one. It must be IPv4.
	Addr netip.Addr
	// MaxEntries caps the number of mappings; 0 means DefaultMaxEntries.
	MaxEntries int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Idle timeouts; 0 means the matching default. A TCP mapping uses the
	// transitory timeout until the private network has answered and again
	// once either side sent FIN or RST; the established one in between.
	TCPEstablishedTimeout time.Duration
	TCPTransitoryTimeout  time.Duration
	UDPTimeout            time.Duration
	ICMPTimeout           time.Duration
}

// outKey is a flow as the client sent it. For ICMP echo, clientPort is the
// identifier and remotePort is 0.
type outKey struct {
	client, remote         uint32
	clientPort, remotePort uint16
	proto                  uint8
}

// inKey is a flow as the private network sees it: the remote end and the
// external port (or echo identifier) on the SNAT address.
type inKey struct {
	remote              uint32
	remotePort, extPort uint16
	proto               uint8
}

// TCP state bits of mapping.state.
const (
	tcpReplied = 1 << iota // the private network has sent a packet
	tcpClosing             // FIN or RST seen in either direction
)

// mapping is one translated flow. Its keys and extPort never change once it
// is in the table, so readers use them without a lock.
type mapping struct {
	out     outKey
	extPort uint16
	// lastSeen is the time of the last packet, in nanoseconds since
	// Table.epoch, kept to within touchSlack.
	lastSeen atomic.Int64
	state    atomic.Uint32 // TCP state bits
	// prev and next link the mappings of one client; guarded by Table.outMu.
	prev, next *mapping
}

func (m *mapping) inKey() inKey {
	return inKey{remote: m.out.remote, remotePort: m.out.remotePort, extPort: m.extPort, proto: m.out.proto}
}

// Table is a NAT mapping table. Its methods are safe for concurrent use.
type Table struct {
	addr  uint32 // the SNAT address
	max   int
	now   func() time.Time
	epoch time.Time
	// Timeouts in nanoseconds.
	tcpEstablished, tcpTransitory, udpTimeout, icmpTimeout int64

	// Lock order: outMu, then inMu.
	//
	// outMu guards out, clients and the fields after them. in is written
	// only with both locks held, so holding either one, in any mode, is
	// enough to read it: Outbound reads under outMu and Inbound under inMu,
	// and neither waits for the other except while a mapping is added or
	// removed.
	outMu   sync.RWMutex
	out     map[outKey]*mapping
	clients map[uint32]*mapping // the head of each client's list
	// nextPort is where the next search for a free port starts.
	nextPort uint16
	// lastSweep is when a full table last swept (ns since epoch).
	lastSweep int64
	// dead is scratch space for removal, kept to avoid allocating.
	dead []*mapping

	inMu sync.RWMutex
	in   map[inKey]*mapping

	frags fragTable
}

// New returns an empty Table.
func New(cfg Config) (*Table, error) {
	if !cfg.Addr.Is4() {
		return nil, fmt.Errorf("nat: SNAT address %v is not IPv4: %w", cfg.Addr, ErrConfig)
	}
	if cfg.MaxEntries < 0 {
		return nil, fmt.Errorf("nat: MaxEntries %d is negative: %w", cfg.MaxEntries, ErrConfig)
	}
	for _, d := range []time.Duration{cfg.TCPEstablishedTimeout, cfg.TCPTransitoryTimeout, cfg.UDPTimeout, cfg.ICMPTimeout} {
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
		addr:           addrToUint(cfg.Addr),
		max:            cfg.MaxEntries,
		now:            cfg.Now,
		tcpEstablished: orDefault(cfg.TCPEstablishedTimeout, DefaultTCPEstablishedTimeout),
		tcpTransitory:  orDefault(cfg.TCPTransitoryTimeout, DefaultTCPTransitoryTimeout),
		udpTimeout:     orDefault(cfg.UDPTimeout, DefaultUDPTimeout),
		icmpTimeout:    orDefault(cfg.ICMPTimeout, DefaultICMPTimeout),
		out:            map[outKey]*mapping{},
		in:             map[inKey]*mapping{},
		clients:        map[uint32]*mapping{},
		nextPort:       1024,
	}
	if t.max == 0 {
		t.max = DefaultMaxEntries
	}
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

func (t *Table) timeout(m *mapping) int64 {
	switch m.out.proto {
	case protoTCP:
		if m.state.Load()&(tcpReplied|tcpClosing) == tcpReplied {
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

// touch records a packet of m at now.
func touch(m *mapping, now int64) {
	if now-m.lastSeen.Load() > int64(touchSlack) {
		m.lastSeen.Store(now)
	}
}

// trackTCP updates m's state for a TCP segment with the given flags.
func trackTCP(m *mapping, flags byte, inbound bool) {
	s := m.state.Load()
	switch {
	case flags&(tcpSYN|tcpACK) == tcpSYN && !inbound && s&tcpClosing != 0:
		// A new connection reusing the ports of a closed one (as after
		// TIME-WAIT) starts over.
		m.state.Store(0)
	case flags&(tcpFIN|tcpRST) != 0 && s&tcpClosing == 0:
		m.state.Or(tcpClosing)
	case inbound && s&tcpReplied == 0:
		m.state.Or(tcpReplied)
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

// ForgetClient removes every mapping of client, so that a client that is
// given the address later inherits none of them.
func (t *Table) ForgetClient(client netip.Addr) {
	if !client.Is4() {
		return
	}
	c := addrToUint(client)
	t.outMu.Lock()
	dead := t.dead[:0]
	for m := t.clients[c]; m != nil; m = m.next {
		dead = append(dead, m)
	}
	t.removeLocked(dead)
	clear(dead)
	t.dead = dead[:0]
	t.outMu.Unlock()
	t.frags.forget(c)
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

func (t *Table) link(m *mapping) {
	head := t.clients[m.out.client]
	m.next = head
	if head != nil {
		head.prev = m
	}
	t.clients[m.out.client] = m
}

func (t *Table) unlink(m *mapping) {
	if m.prev != nil {
		m.prev.next = m.next
	} else if m.next != nil {
		t.clients[m.out.client] = m.next
	} else {
		delete(t.clients, m.out.client)
	}
	if m.next != nil {
		m.next.prev = m.prev
	}
	m.prev, m.next = nil, nil
}

// lookupOut returns the live mapping for k, creating it if needed.
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
	if len(t.out) >= t.max && now-t.lastSweep >= int64(sweepInterval) {
		t.expireLocked(now)
	}
	if len(t.out) >= t.max {
		return nil, ErrTableFull
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
	t.link(m)
	return m, nil
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
	case k.proto == protoICMP:
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
