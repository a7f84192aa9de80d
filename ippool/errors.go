package ippool

import "errors"

var (
	// ErrExhausted is returned by Allocate when every client address is leased.
	ErrExhausted = errors.New("ippool: no free client address")
	// ErrNotInPool is returned by Release for an address that is not a client
	// address of the pool (outside the prefix, or its network, gateway or
	// broadcast address).
	ErrNotInPool = errors.New("ippool: address is not a client address of the pool")
	// ErrNotAllocated is returned by Release for a client address that is not leased.
	ErrNotAllocated = errors.New("ippool: address is not allocated")
	// ErrBadPrefix is returned by New for a prefix it cannot serve: not IPv4,
	// not masked, too small for two clients or too large.
	ErrBadPrefix = errors.New("ippool: unusable prefix")
)
