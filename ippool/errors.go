package ippool

import (
	"errors"
	"fmt"
)

var (
	// ErrExhausted is returned by Allocate when every client address is leased.
	ErrExhausted = errors.New("ippool: no free client address")
	// ErrNotInPool is returned by Release for an address that is not a client
	// address of the pool (outside the prefix or block, or a reserved
	// address: network, gateway, broadcast, anycast).
	ErrNotInPool = errors.New("ippool: address is not a client address of the pool")
	// ErrNotAllocated is returned by Release for a client address that is not leased.
	ErrNotAllocated = errors.New("ippool: address is not allocated")
	// ErrBadPrefix is returned by New, NewDual and New6 for a prefix they
	// cannot serve: the wrong family, not masked, too small or too large, or
	// (IPv6) not a unicast block.
	ErrBadPrefix = errors.New("ippool: unusable prefix")
	// ErrNoBlock is returned by Allocate in block mode when no granted block
	// has a free client address (none granted, or all full and the grow
	// function found no other). It wraps ErrExhausted, so callers that map
	// ErrExhausted to "pool exhausted" need not know about blocks; the
	// addresses of blocks other nodes hold are not this node's to hand out.
	ErrNoBlock = fmt.Errorf("ippool: no free client address in the granted blocks: %w", ErrExhausted)
	// ErrBadBlock is returned by UseBlocks for a block size it cannot use
	// and by Grant for a block it cannot grant (out of range, without a
	// client address, already granted, or the pool not in block mode).
	ErrBadBlock = errors.New("ippool: unusable address block")
)
