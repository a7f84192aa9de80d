// Package ippool leases client tunnel addresses out of an IPv4 prefix, an
// IPv6 block, or both (dual stack).
//
// It owns which addresses are leased and the order in which free ones are
// handed out. It does not own anything bound to an address (sessions, NAT
// mappings, routes), does not persist leases, and knows nothing about which
// client holds an address: the caller releases what it allocated.
//
// A lease is an index, which is also the session's P_DATA_V2 peer-id, and
// each family's address is the index added to that family's first address:
// index i is network+i in IPv4 and base6+i in IPv6. So the data plane finds
// a session from either of its addresses by arithmetic (Index), with no map
// lookup. OpenVPN's own pools pair their IPv4 and IPv6 addresses the same
// way (src/openvpn/pool.c, ifconfig_pool_acquire: base + i in both).
//
// Layout of the index space of Size() indexes:
//
//	index       IPv4 (New, NewDual)      IPv6 (NewDual, New6)
//	0           network address          subnet-router anycast (RFC 4291 2.6.1)
//	1           Gateway()                Gateway6()
//	2..cap+1    client addresses         client addresses
//	Size()-1    broadcast                NewDual: its twin; New6: a client
//
// Index 0 and 1 are never leased; with IPv4, neither is the broadcast. With
// both families, Size() is the IPv4 prefix's size (IPv4 indexes cover it
// all) and the capacity cap is the smaller family's: min(Size()-3,
// 2^(128-bits6)-2), the rule OpenVPN applies to a unified pool; IPv6
// addresses beyond the index space are nobody's. An IPv6-only pool has
// min(2^(128-bits6), MaxSize6) indexes, all but 0 and 1 leased. No other
// IPv6 address is reserved: IPv6 has no broadcast, and RFC 2526's subnet
// anycast addresses (the top 128 of a subnet) name services, Mobile IPv6
// home agents alone so far, that nothing on a client tunnel runs;
// reserving them would halve a /120.
//
// Free addresses are handed out first in index order, then in the order
// they were released (FIFO), so a released address is reused as late as
// possible and state keyed by it elsewhere has time to expire.
//
// # Address blocks
//
// A cluster node leases blocks of the index space from etcd and its pool
// hands out only indexes inside the blocks it holds (UseBlocks, Grant,
// Revoke). Which node holds which block is the cluster's business;
// the pool only enforces that it allocates from granted blocks.
//
// Block b of size s covers indexes [b*s, (b+1)*s) that are client indexes
// (2..Capacity()+1): block 0 loses indexes 0 and 1, the last block with
// IPv4 loses the broadcast, and at the top of a dual-stack pool whose IPv6
// block is smaller than its IPv4 prefix whole blocks have no client index
// (BlockCapacity 0; Grant refuses them).
//
// Rules, in the order a block lives through them:
//
//   - Grant(b) makes b's free indexes allocatable. Indexes of b still
//     leased from an earlier grant (revoked, not yet released) stay leased
//     and are skipped, so an index is never held twice; once released they
//     become free like any other.
//   - Allocation order: never-used indexes first (since the block's last
//     grant), lowest granted block first and index order within it, which
//     packs new sessions into few blocks; then released indexes, oldest
//     release first across all granted blocks, so a released address is
//     reused as late as possible, as without blocks.
//   - Revoke(b) makes b's free indexes unallocatable at once and returns the
//     leases still held in it. They stay counted (InUse, BlockInUse) until
//     the caller releases them; Release of an index in a block that is not
//     granted forgets the lease (the index becomes free nowhere).
//   - With no free index in any granted block, allocation calls the grow
//     function (SetGrow) without the lock and, if it reports true, tries once
//     more; then it fails with ErrNoBlock, which is also ErrExhausted.
//
// Without UseBlocks none of this applies: the whole pool is allocatable,
// NumBlocks is 0 and no grow function is called.
package ippool

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
)

// MinPrefixBits is the shortest prefix New accepts: a /8 holds 16M
// addresses, more than any tunnel endpoint serves, and bounds memory.
const MinPrefixBits = 8

// The IPv6 block (client_ipv6_cidr_block) is /MinPrefixBits6 to
// /MaxPrefixBits6: a /64 is what one link is normally given (RFC 7421), the
// largest block that keeps the index arithmetic in one 64-bit half, and a
// /120 still holds 254 clients.
const (
	MinPrefixBits6 = 64
	MaxPrefixBits6 = 120
)

// MaxSize6 bounds the index space of an IPv6-only pool, whose block holds
// up to 2^64 addresses: callers keep arrays of Size() entries, and the
// peer-id has 24 bits. It is OpenVPN's IFCONFIG_POOL_MAX (src/openvpn/pool.h),
// the size OpenVPN gives an IPv6 pool larger than a /112.
const MaxSize6 = 1 << 16

// Pool leases the client addresses of an IPv4 prefix, an IPv6 block or
// both. It is safe for concurrent use.
type Pool struct {
	prefix   netip.Prefix // the IPv4 prefix; zero in an IPv6-only pool
	network  uint32       // the prefix's first address, as a number
	size     int          // indexes: the IPv4 prefix's addresses, or the IPv6-only index space
	capacity int          // client addresses

	prefix6  netip.Prefix // the IPv6 block; zero without IPv6
	hi6, lo6 uint64       // the block's first address, as two halves
	// span6 is how many indexes have an IPv6 twin: min(size, the block's
	// addresses); 0 without IPv6, so Index matches no IPv6 address.
	span6 uint64

	// mu guards the fields below. Client addresses are numbered by their
	// offset from the first client index (2): 0..capacity-1.
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
	// blk is the block mode's state (blocks.go); in block mode fresh stays
	// 0, leased covers the granted blocks and released holds their free
	// offsets.
	blk blocks
}

// Lease is what AllocateLease hands out: one index and its address in each
// family the pool serves.
type Lease struct {
	// Index is the pool index, also the session's peer-id.
	Index int
	// Addr is the IPv4 address (network+Index); invalid in an IPv6-only pool.
	Addr netip.Addr
	// Addr6 is the IPv6 address (base6+Index); invalid without an IPv6 block.
	Addr6 netip.Addr
}

// Key is the address that names the lease to Release and Index: the IPv4
// one, or the IPv6 one in an IPv6-only pool; invalid for the zero Lease.
func (l Lease) Key() netip.Addr {
	if l.Addr.IsValid() {
		return l.Addr
	}
	return l.Addr6
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

// NewDual returns a dual-stack pool: prefix as for New, and prefix6, the
// IPv6 block (client_ipv6_cidr_block), masked, /MinPrefixBits6 to
// /MaxPrefixBits6, unicast and not IPv4-mapped. Each lease has an address
// in both, at the same index; Capacity is the smaller family's (see the
// package comment), so a /22 with a /120 serves 254 clients.
func NewDual(prefix, prefix6 netip.Prefix) (*Pool, error) {
	p, err := New(prefix)
	if err != nil {
		return nil, err
	}
	if err := p.setPrefix6(prefix6); err != nil {
		return nil, err
	}
	return p, nil
}

// New6 returns an IPv6-only pool over prefix6, which must be as for
// NewDual. Its indexes come from the block alone: min(2^(128-bits),
// MaxSize6) of them, all but the first two leased.
func New6(prefix6 netip.Prefix) (*Pool, error) {
	p := &Pool{}
	if err := p.setPrefix6(prefix6); err != nil {
		return nil, err
	}
	return p, nil
}

// setPrefix6 checks prefix6 and adds it to p, which has its IPv4 prefix, if
// any, already set.
func (p *Pool) setPrefix6(prefix6 netip.Prefix) error {
	a := prefix6.Addr()
	switch {
	case !prefix6.IsValid() || !a.Is6():
		return fmt.Errorf("ippool: client_ipv6_cidr_block %v is not IPv6: %w", prefix6, ErrBadPrefix)
	case a.Is4In6():
		return fmt.Errorf("ippool: client_ipv6_cidr_block %v is IPv4-mapped: %w", prefix6, ErrBadPrefix)
	case prefix6.Masked() != prefix6:
		return fmt.Errorf("ippool: client_ipv6_cidr_block %v is not masked (want %v): %w", prefix6, prefix6.Masked(), ErrBadPrefix)
	case prefix6.Bits() < MinPrefixBits6 || prefix6.Bits() > MaxPrefixBits6:
		return fmt.Errorf("ippool: client_ipv6_cidr_block %v must be a /%d to /%d: %w", prefix6, MinPrefixBits6, MaxPrefixBits6, ErrBadPrefix)
	case !a.IsGlobalUnicast():
		// Unspecified, loopback, link-local or multicast: nothing a
		// client's route or a pushed ifconfig-ipv6 can use.
		return fmt.Errorf("ippool: client_ipv6_cidr_block %v is not a unicast block: %w", prefix6, ErrBadPrefix)
	}
	b := a.As16()
	p.prefix6 = prefix6
	p.hi6 = binary.BigEndian.Uint64(b[:8])
	p.lo6 = binary.BigEndian.Uint64(b[8:])
	// The block holds 2^hostBits addresses, 2^8 to 2^64.
	hostBits := 128 - prefix6.Bits()
	if !p.prefix.IsValid() {
		p.size = MaxSize6
		if hostBits < 16 {
			p.size = 1 << hostBits
		}
		p.span6 = uint64(p.size)
		p.capacity = p.size - 2
		return nil
	}
	p.span6 = uint64(p.size)
	if hostBits < 32 && 1<<hostBits < p.size {
		p.span6 = 1 << hostBits
		p.capacity = min(p.capacity, 1<<hostBits-2)
	}
	return nil
}

// Prefix returns the IPv4 prefix the pool serves; the zero Prefix in an
// IPv6-only pool.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Prefix6 returns the IPv6 block the pool serves; the zero Prefix without
// one.
func (p *Pool) Prefix6() netip.Prefix { return p.prefix6 }

// Gateway returns the first usable address of the IPv4 prefix (network+1),
// which belongs to the endpoint and is never leased; the zero Addr in an
// IPv6-only pool.
func (p *Pool) Gateway() netip.Addr {
	if !p.prefix.IsValid() {
		return netip.Addr{}
	}
	return uintToAddr(p.network + 1)
}

// Gateway6 returns the endpoint's own IPv6 tunnel address, base6+1 (index
// 1, the twin of Gateway), never leased; the zero Addr without IPv6.
func (p *Pool) Gateway6() netip.Addr {
	a, _ := p.Addr6(1)
	return a
}

// Capacity returns how many client addresses (leases) the pool has: the
// IPv4 prefix minus its network, gateway and broadcast addresses, and no
// more than the IPv6 block minus its anycast and gateway addresses.
func (p *Pool) Capacity() int { return p.capacity }

// Size returns the size of the index space: every index Index returns is
// below it. With IPv4 it is the number of addresses in the IPv4 prefix;
// in an IPv6-only pool, min(the block's addresses, MaxSize6).
func (p *Pool) Size() int { return p.size }

// Index returns the dense index 0..Size()-1 of an address: any address of
// the IPv4 prefix (network, gateway and broadcast included), or any
// address of the IPv6 block that is some index's twin (base6+i, i <
// Size()), so callers can keep lock-free arrays indexed by client address
// of either family. An IPv4-mapped or zoned address is neither. It is pure
// arithmetic, takes no lock and does not allocate.
func (p *Pool) Index(a netip.Addr) (int, bool) {
	if a.Is4() {
		if !p.prefix.Contains(a) {
			return 0, false
		}
		return int(addrToUint(a) - p.network), true
	}
	if !a.Is6() || a.Zone() != "" {
		return 0, false
	}
	b := a.As16()
	// The block is at least a /64, so the high half must equal the base's
	// and the offset is the difference of the low halves; an address below
	// the base wraps to a huge offset and fails the bound.
	off := binary.BigEndian.Uint64(b[8:]) - p.lo6
	if binary.BigEndian.Uint64(b[:8]) != p.hi6 || off >= p.span6 {
		return 0, false
	}
	return int(off), true
}

// Addr returns the IPv4 address of index i (network+i); false when i is
// outside 0..Size()-1 or the pool has no IPv4 prefix.
func (p *Pool) Addr(i int) (netip.Addr, bool) {
	if !p.prefix.IsValid() || i < 0 || i >= p.size {
		return netip.Addr{}, false
	}
	return uintToAddr(p.network + uint32(i)), true
}

// Addr6 returns the IPv6 address of index i (base6+i); false when i has no
// IPv6 twin (outside the block or 0..Size()-1) or the pool has no IPv6
// block.
func (p *Pool) Addr6(i int) (netip.Addr, bool) {
	if i < 0 || uint64(i) >= p.span6 {
		return netip.Addr{}, false
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], p.hi6)
	binary.BigEndian.PutUint64(b[8:], p.lo6+uint64(i)) // no carry: i is inside the block
	return netip.AddrFrom16(b), true
}

// InUse returns how many client addresses are leased.
func (p *Pool) InUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inUse
}

// Allocate leases a free client address: never-used addresses first, in
// address order, then released ones, oldest release first. It returns
// ErrExhausted when all are leased; in block mode, ErrNoBlock (also
// ErrExhausted) when the granted blocks have none free (see blocks.go). The address is IPv4, or IPv6 in an
// IPv6-only pool; AllocateLease returns both of a dual-stack lease.
func (p *Pool) Allocate() (netip.Addr, error) {
	i, err := p.allocate()
	if err != nil {
		return netip.Addr{}, err
	}
	if p.prefix.IsValid() {
		return uintToAddr(p.network + uint32(i)), nil
	}
	a, _ := p.Addr6(i)
	return a, nil
}

// AllocateLease is Allocate returning the lease's index and its address in
// every family the pool serves.
func (p *Pool) AllocateLease() (Lease, error) {
	i, err := p.allocate()
	if err != nil {
		return Lease{}, err
	}
	l := Lease{Index: i}
	l.Addr, _ = p.Addr(i)
	l.Addr6, _ = p.Addr6(i)
	return l, nil
}

// allocate leases a free client index.
func (p *Pool) allocate() (int, error) {
	p.mu.Lock()
	if p.blk.size != 0 {
		return p.allocateBlockMode() // unlocks p.mu
	}
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
		return 0, ErrExhausted
	}
	p.leased[off/64] |= 1 << (off % 64)
	p.inUse++
	return 2 + off, nil
}

// Release returns a leased client address to the back of the free list. In
// a dual-stack pool either of a lease's addresses releases the lease.
func (p *Pool) Release(a netip.Addr) error {
	i, ok := p.Index(a)
	off := i - 2
	if !ok || off < 0 || off >= p.capacity {
		return fmt.Errorf("ippool: release %v: %w", a, ErrNotInPool)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blk.size != 0 {
		if !p.releaseInBlocks(off) {
			return fmt.Errorf("ippool: release %v: %w", a, ErrNotAllocated)
		}
		return nil
	}
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
