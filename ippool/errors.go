package ippool

import "errors"

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
)
