// Package ippool leases client tunnel addresses out of one IPv4 prefix.
//
// It owns which addresses of the prefix are leased and the order in which
// free ones are handed out. It does not own anything bound to an address
// (sessions, NAT mappings, routes), does not persist leases, and knows
// nothing about which client holds an address: the caller releases what it
// allocated.
//
// Layout of a prefix of Size() addresses:
//
//	offset 0            network address, never leased
//	offset 1            Gateway(): the endpoint's own tunnel address
//	offset 2..Size()-2  client addresses (Capacity() of them)
//	offset Size()-1     broadcast address, never leased
//
// Free addresses are handed out first in address order, then in the order
// they were released (FIFO), so a released address is reused as late as
// possible and state keyed by it elsewhere has time to expire.
package ippool

import (
	"fmt"
	"net/netip"
	"sync"
)

// MinPrefixBits is the shortest prefix New accepts: a /8 holds 16M
// addresses, more than any tunnel endpoint serves, and bounds memory.
const MinPrefixBits = 8

// Pool leases the client addresses of one IPv4 prefix. It is safe for
// concurrent use.
type Pool struct {
	prefix   netip.Prefix
	network  uint32 // the prefix's first address, as a number
	size     int    // addresses in the prefix
	capacity int    // client addresses: size - 3

	// mu guards the fields below. Client addresses are numbered by their
	// offset from the first client address (network+2): 0..capacity-1.
	mu sync.Mutex
	// leased has bit i set when client offset i is leased. It only covers
	// offsets below fresh, so it grows with the high-water mark.
	leased []uint64
	// fresh is the lowest offset never handed out; offsets >= fresh are free.
	fresh int
	// released is a FIFO ring of freed offsets below fresh; it grows on
	// demand and never holds more than capacity entries.
	released []uint32
	head     int // index in released of the oldest entry
	nfree    int // entries in released
	inUse    int
}

// New returns a pool over prefix, which must be an IPv4 prefix in canonical
// (masked) form between /MinPrefixBits and /29 (a /29 has 5 client addresses;
// a /30 only one, too few to serve).
func New(prefix netip.Prefix) (*Pool, error) {
	switch {
	case !prefix.IsValid() || !prefix.Addr().Is4():
		return nil, fmt.Errorf("ippool: prefix %v is not IPv4: %w", prefix, ErrBadPrefix)
	case prefix.Masked() != prefix:
		return nil, fmt.Errorf("ippool: prefix %v is not masked (want %v): %w", prefix, prefix.Masked(), ErrBadPrefix)
	case prefix.Bits() < MinPrefixBits:
		return nil, fmt.Errorf("ippool: prefix %v is larger than /%d: %w", prefix, MinPrefixBits, ErrBadPrefix)
	}
	size := 1 << (32 - prefix.Bits())
	if size-3 < 2 {
		return nil, fmt.Errorf("ippool: prefix %v has fewer than 2 client addresses: %w", prefix, ErrBadPrefix)
	}
	return &Pool{
		prefix:   prefix,
		network:  addrToUint(prefix.Addr()),
		size:     size,
		capacity: size - 3,
	}, nil
}

// Prefix returns the prefix the pool serves.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Gateway returns the first usable address of the prefix (network+1), which
// belongs to the endpoint and is never leased.
func (p *Pool) Gateway() netip.Addr { return uintToAddr(p.network + 1) }

// Capacity returns how many client addresses the pool has: the prefix minus
// its network, gateway and broadcast addresses.
func (p *Pool) Capacity() int { return p.capacity }

// Size returns the number of addresses in the prefix.
func (p *Pool) Size() int { return p.size }

// Index returns the dense index 0..Size()-1 of any address of the prefix
// (network, gateway and broadcast included), so callers can keep lock-free
// arrays indexed by client address. It is pure arithmetic and takes no lock.
func (p *Pool) Index(a netip.Addr) (int, bool) {
	if !a.Is4() || !p.prefix.Contains(a) {
		return 0, false
	}
	return int(addrToUint(a) - p.network), true
}

// InUse returns how many client addresses are leased.
func (p *Pool) InUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inUse
}

// Allocate leases a free client address: never-used addresses first, in
// address order, then released ones, oldest release first. It returns
// ErrExhausted when all are leased.
func (p *Pool) Allocate() (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var off int
	switch {
	case p.fresh < p.capacity:
		off = p.fresh
		p.fresh++
		if off/64 >= len(p.leased) {
			p.leased = append(p.leased, 0)
		}
	case p.nfree > 0:
		off = int(p.released[p.head])
		p.head = (p.head + 1) % len(p.released)
		p.nfree--
	default:
		return netip.Addr{}, ErrExhausted
	}
	p.leased[off/64] |= 1 << (off % 64)
	p.inUse++
	return uintToAddr(p.network + 2 + uint32(off)), nil
}

// Release returns a leased client address to the back of the free list.
func (p *Pool) Release(a netip.Addr) error {
	i, ok := p.Index(a)
	off := i - 2
	if !ok || off < 0 || off >= p.capacity {
		return fmt.Errorf("ippool: release %v: %w", a, ErrNotInPool)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if off >= p.fresh || p.leased[off/64]&(1<<(off%64)) == 0 {
		return fmt.Errorf("ippool: release %v: %w", a, ErrNotAllocated)
	}
	p.leased[off/64] &^= 1 << (off % 64)
	p.inUse--
	p.pushReleased(uint32(off))
	return nil
}

// pushReleased appends off to the released ring, growing it when full.
// p.mu must be held.
func (p *Pool) pushReleased(off uint32) {
	if p.nfree == len(p.released) {
		// Grow by doubling (bounded by capacity) and unroll the ring so the
		// oldest entry is at index 0.
		n := max(16, min(2*len(p.released), p.capacity))
		grown := make([]uint32, n)
		k := copy(grown, p.released[p.head:])
		copy(grown[k:], p.released[:p.head])
		p.released = grown
		p.head = 0
	}
	p.released[(p.head+p.nfree)%len(p.released)] = off
	p.nfree++
}

func addrToUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uintToAddr(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}
