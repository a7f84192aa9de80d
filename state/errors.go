package state

import "errors"

var (
	// ErrNotFound is returned by Get when the key is absent.
	ErrNotFound = errors.New("state: not found")
	// ErrClosed is returned by every call on a closed Store.
	ErrClosed = errors.New("state: store is closed")
	// ErrInUse is wrapped by OpenBolt's error when another process holds the store.
	ErrInUse = errors.New("state: store is in use by another process")
	// ErrUnseal is returned by Sealer.Open when a sealed value does not
	// authenticate: corrupt, sealed with another key, or for another record.
	ErrUnseal = errors.New("state: sealed value does not authenticate (corrupt, another key, or another record)")
)
