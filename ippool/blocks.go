package ippool

import (
	"fmt"
	"math/bits"
	"slices"
)

// Block mode (its rules are in the package comment). The bitmap of leased
// offsets (p.leased) covers every block granted so far; the released ring
// (p.released) holds exactly the free offsets of granted blocks below their
// block's fresh cursor, in release order, so it never holds more than
// Capacity() entries and an offset is never both in it and ahead of a
// cursor.
//
// Block numbers come from the cluster's own etcd state, never from a
// client, and Grant checks their range. Memory is bounded by the pool's
// size whatever the caller does: a blockState per granted or draining
// block, the bitmap up to Size()/8 bytes, the ring up to Capacity() entries.

// blockState is a block that is granted or still has leases from a grant.
type blockState struct {
	b       int  // block number
	first   int  // offset (index-2) of the block's first client index
	cap     int  // client indexes in the block
	fresh   int  // offsets first..first+fresh-1 were passed since the grant
	inUse   int  // leased offsets in the block, granted or not
	granted bool // false: revoked, kept until its last lease is released
}

// blocks is the block-mode part of a Pool; all fields are guarded by
// Pool.mu. Only granted blocks and blocks with leases have a state, so a
// /8 in blocks of 4 costs nothing for the 4M blocks a node never holds.
type blocks struct {
	size    int                 // indexes per block; 0: no block mode
	shift   int                 // log2(size)
	state   map[int]*blockState // granted blocks and blocks with leases
	granted []*blockState       // granted blocks in block order
	// freshFrom is where in granted the first block with fresh indexes
	// left may be: the blocks before it have none, so an allocation skips
	// them (a block's fresh cursor only moves up while it is granted).
	freshFrom int
	grow      func() bool
}

// UseBlocks switches the pool to block mode, in which it allocates only
// from granted blocks (Grant). size, the indexes per block
// (address_block_size), must be a power of two from 4 to Size(); the pool
// must not have allocated before and must not be in block mode already.
func (p *Pool) UseBlocks(size int) error {
	switch {
	case size < 4 || size&(size-1) != 0:
		return fmt.Errorf("ippool: address_block_size %d is not a power of two of at least 4: %w", size, ErrBadBlock)
	case size > p.size:
		return fmt.Errorf("ippool: address_block_size %d is larger than the pool's %d indexes: %w", size, p.size, ErrBadBlock)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.blk.size != 0:
		return fmt.Errorf("ippool: address blocks already in use (size %d): %w", p.blk.size, ErrBadBlock)
	case p.fresh != 0:
		return fmt.Errorf("ippool: address blocks after an allocation: %w", ErrBadBlock)
	}
	p.blk = blocks{size: size, shift: bits.TrailingZeros(uint(size)), state: map[int]*blockState{}}
	return nil
}

// NumBlocks returns how many blocks the index space has (Size() divided by
// the block size, both powers of two); 0 without block mode. Some blocks
// may have no client index (BlockCapacity).
func (p *Pool) NumBlocks() int {
	size := p.blockSize()
	if size == 0 {
		return 0
	}
	return p.size / size
}

// blockSize returns the block size, 0 without block mode.
func (p *Pool) blockSize() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blk.size
}

// blockRange returns the offsets (index-2) [first, first+n) of block b's
// client indexes; n is 0 for a block without any and for b out of range.
// size is the block size, not 0.
func (p *Pool) blockRange(b, size int) (first, n int) {
	if b < 0 || b >= p.size/size {
		return 0, 0
	}
	lo := max(b*size, 2)
	hi := min((b+1)*size, p.capacity+2)
	if hi <= lo {
		return 0, 0
	}
	return lo - 2, hi - lo
}

// BlockCapacity returns how many client indexes block b holds: the block
// size, fewer for the first and last blocks (reserved indexes) and 0 for a
// block beyond the pool's capacity, out of range, or without block mode.
func (p *Pool) BlockCapacity(b int) int {
	size := p.blockSize()
	if size == 0 {
		return 0
	}
	_, n := p.blockRange(b, size)
	return n
}

// BlockOf returns the block holding index (0..Size()-1); -1 for an index
// out of range or without block mode.
func (p *Pool) BlockOf(index int) int {
	size := p.blockSize()
	if size == 0 || index < 0 || index >= p.size {
		return -1
	}
	return index / size
}

// Grant makes block b's free indexes allocatable. It fails without block
// mode, for a block out of range or without client indexes, and for a
// block already granted. Leases still held in b from an earlier grant stay
// leased (see the rules above).
func (p *Pool) Grant(b int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blk.size == 0 {
		return fmt.Errorf("ippool: grant block %d: the pool is not in block mode: %w", b, ErrBadBlock)
	}
	first, n := p.blockRange(b, p.blk.size)
	if n == 0 {
		return fmt.Errorf("ippool: grant block %d: no client address in it (%d blocks): %w", b, p.size/p.blk.size, ErrBadBlock)
	}
	s := p.blk.state[b]
	if s == nil {
		s = &blockState{b: b, first: first, cap: n}
		p.blk.state[b] = s
	} else if s.granted {
		return fmt.Errorf("ippool: grant block %d: already granted: %w", b, ErrBadBlock)
	}
	s.granted = true
	s.fresh = 0
	if words := (first + n + 63) / 64; words > len(p.leased) {
		p.leased = append(p.leased, make([]uint64, words-len(p.leased))...)
	}
	at, _ := slices.BinarySearchFunc(p.blk.granted, b, func(s *blockState, b int) int { return s.b - b })
	p.blk.granted = slices.Insert(p.blk.granted, at, s)
	p.blk.freshFrom = min(p.blk.freshFrom, at)
	return nil
}

// Revoke makes block b's free indexes unallocatable and returns the leases
// still held in it, in index order (with those of an earlier grant that an
// earlier Revoke returned and that are not released yet); the caller ends
// what is bound to them and releases them. Revoking a block that is not
// granted returns nil.
func (p *Pool) Revoke(b int) []Lease {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.blk.state[b]
	if s == nil || !s.granted {
		return nil
	}
	s.granted = false
	at := slices.Index(p.blk.granted, s)
	p.blk.granted = slices.Delete(p.blk.granted, at, at+1)
	if at < p.blk.freshFrom {
		p.blk.freshFrom--
	}
	// Drop the block's free offsets from the released ring, keeping the
	// others' order; revocation is rare, so a pass over the ring is fine.
	n := 0
	for k := range p.nfree {
		off := p.released[(p.head+k)%len(p.released)]
		if int(off) < s.first || int(off) >= s.first+s.cap {
			p.released[(p.head+n)%len(p.released)] = off
			n++
		}
	}
	p.nfree = n
	if s.inUse == 0 {
		delete(p.blk.state, b)
		return nil
	}
	held := make([]Lease, 0, s.inUse)
	for off := s.first; off < s.first+s.cap; off++ {
		if p.leased[off/64]&(1<<(off%64)) != 0 {
			held = append(held, p.lease(2+off))
		}
	}
	return held
}

// lease returns the Lease of index i.
func (p *Pool) lease(i int) Lease {
	l := Lease{Index: i}
	l.Addr, _ = p.Addr(i)
	l.Addr6, _ = p.Addr6(i)
	return l
}

// Granted returns the granted blocks in ascending order.
func (p *Pool) Granted() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]int, len(p.blk.granted))
	for k, s := range p.blk.granted {
		out[k] = s.b
	}
	return out
}

// BlockInUse returns how many leases block b holds, whether it is granted
// or was revoked and still has leases to be released.
func (p *Pool) BlockInUse(b int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.blk.state[b]; s != nil {
		return s.inUse
	}
	return 0
}

// GrantedFree returns how many free client indexes the granted blocks
// hold: what this node can still hand out without another block.
func (p *Pool) GrantedFree() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.blk.granted {
		n += s.cap - s.inUse
	}
	return n
}

// SetGrow sets the function an allocation in block mode calls, without
// the pool's lock, when no granted block has a free index: it may take a
// few seconds to lease another block and Grant it, and reports whether the
// allocation should try once more. Concurrent allocations may call it
// concurrently. nil removes it. Without block mode it is never called.
//
// Every allocation that finds the blocks full calls it, so a flood of
// connection attempts against a full node calls it once per attempt: it
// should serialise, and answer at once when no block is to be had (the
// cluster knows from etcd), so attempts cost no more than on a full pool.
// It must not allocate from this pool.
func (p *Pool) SetGrow(fn func() bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blk.grow = fn
}

// allocateInBlocks is allocate in block mode: it returns a free client
// offset of a granted block, or false. p.mu must be held. It is amortised
// O(1): the fresh cursors and freshFrom only move up between grants, and
// each index held from an earlier grant is skipped once.
func (p *Pool) allocateInBlocks() (int, bool) {
	for ; p.blk.freshFrom < len(p.blk.granted); p.blk.freshFrom++ {
		s := p.blk.granted[p.blk.freshFrom]
		for s.fresh < s.cap {
			off := s.first + s.fresh
			s.fresh++
			if p.leased[off/64]&(1<<(off%64)) == 0 {
				return p.leaseOffset(s, off), true
			}
		}
	}
	if p.nfree == 0 {
		return 0, false
	}
	off := int(p.released[p.head])
	p.head = (p.head + 1) % len(p.released)
	p.nfree--
	return p.leaseOffset(p.blk.state[(off+2)>>p.blk.shift], off), true
}

// leaseOffset marks the free offset off of block s leased.
func (p *Pool) leaseOffset(s *blockState, off int) int {
	p.leased[off/64] |= 1 << (off % 64)
	s.inUse++
	p.inUse++
	return off
}

// releaseInBlocks is Release in block mode for a client offset. p.mu must
// be held.
func (p *Pool) releaseInBlocks(off int) bool {
	s := p.blk.state[(off+2)>>p.blk.shift]
	if s == nil || p.leased[off/64]&(1<<(off%64)) == 0 {
		return false
	}
	p.leased[off/64] &^= 1 << (off % 64)
	s.inUse--
	p.inUse--
	switch {
	case !s.granted:
		if s.inUse == 0 {
			delete(p.blk.state, s.b)
		}
	case off < s.first+s.fresh:
		p.pushReleased(uint32(off))
	default:
		// A lease from an earlier grant that the fresh cursor has not
		// reached: the cursor hands it out, so it must not be in the ring too.
	}
	return true
}

// allocateBlockMode is allocate in block mode, called with p.mu held; it
// unlocks p.mu and calls the grow function, if any, without it.
func (p *Pool) allocateBlockMode() (int, error) {
	off, ok := p.allocateInBlocks()
	grow := p.blk.grow
	p.mu.Unlock()
	if ok {
		return 2 + off, nil
	}
	if grow == nil || !grow() {
		return 0, ErrNoBlock
	}
	p.mu.Lock()
	off, ok = p.allocateInBlocks()
	p.mu.Unlock()
	if !ok {
		return 0, ErrNoBlock
	}
	return 2 + off, nil
}
