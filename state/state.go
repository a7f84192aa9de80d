// Package state owns cvpn's persistent state: MFA secrets and used codes,
// auth-token keys, portal and single sign-on state. It defines the small
// Store interface every consumer uses, an embedded implementation backed by
// bbolt (OpenBolt), an in-memory one (NewMemory), the checks every
// implementation makes (CheckKey, CheckBucket, CheckValue), and the Sealer
// that encrypts secrets at rest. The Store every node of a cluster shares,
// kept in etcd, is package state/etcdstate: a package of its own, so that the
// users of Store do not link the etcd client.
//
// It does not interpret the values it stores, and no package outside it knows
// which Store is in use.
package state

import (
	"context"
	"fmt"
	"unicode/utf8"
)

// Limits every Store enforces, so that code tested against one implementation
// behaves the same on another (etcd refuses requests over 1.5 MiB by default).
const (
	MaxBucketLen = 255     // bytes in a bucket name
	MaxKeyLen    = 1024    // bytes in a key
	MaxValueLen  = 1 << 20 // bytes in a value
)

// Store is persistent key/value state grouped into buckets. Implementations
// are safe for concurrent use. Values passed in and returned are copies: a
// caller may keep or modify them.
type Store interface {
	// Get returns the value of key in bucket, or ErrNotFound.
	Get(ctx context.Context, bucket, key string) ([]byte, error)
	// Put sets key in bucket to value (nil stores an empty value).
	Put(ctx context.Context, bucket, key string, value []byte) error
	// Delete removes key from bucket; it returns nil if key is absent.
	Delete(ctx context.Context, bucket, key string) error
	// Update atomically reads key and writes what fn returns: fn(nil, false)
	// when key is absent; returning (nil, nil) deletes it; an error aborts the
	// update, leaves the key as it was, and is returned.
	//
	// fn runs while the store holds its write lock: it must not call the
	// Store, and, since a distributed implementation retries on conflict, it
	// may run more than once and must have no side effects beyond its result.
	Update(ctx context.Context, bucket, key string, fn func(old []byte, ok bool) ([]byte, error)) error
	// List returns the keys of bucket in ascending byte order; an absent
	// bucket has no keys.
	List(ctx context.Context, bucket string) ([]string, error)
	// Close releases the store; every later call returns ErrClosed.
	Close() error
}

// checkName validates a bucket name or key: non-empty, at most max bytes,
// valid UTF-8 without NUL (bbolt accepts any bytes, etcd keys are paths).
func checkName(what, s string, max int) error {
	switch {
	case s == "":
		return fmt.Errorf("state: empty %s", what)
	case len(s) > max:
		return fmt.Errorf("state: %s is %d bytes, more than the limit of %d", what, len(s), max)
	case !utf8.ValidString(s):
		return fmt.Errorf("state: %s %q is not valid UTF-8", what, s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return fmt.Errorf("state: %s %q contains a NUL byte", what, s)
		}
	}
	return nil
}

// CheckKey, CheckBucket and CheckValue are the checks every Store makes of its arguments, for
// implementations outside this package (state/etcdstate).
func CheckKey(bucket, key string) error { return checkKey(bucket, key) }

// CheckBucket checks a bucket name alone (List).
func CheckBucket(bucket string) error { return checkName("bucket name", bucket, MaxBucketLen) }

// CheckValue checks a value's size.
func CheckValue(bucket, key string, value []byte) error { return checkValue(bucket, key, value) }

func checkKey(bucket, key string) error {
	if err := checkName("bucket name", bucket, MaxBucketLen); err != nil {
		return err
	}
	return checkName("key", key, MaxKeyLen)
}

func checkValue(bucket, key string, value []byte) error {
	if len(value) > MaxValueLen {
		return fmt.Errorf("state: value of %s/%s is %d bytes, more than the limit of %d", bucket, key, len(value), MaxValueLen)
	}
	return nil
}

// clone copies b, returning a non-nil slice even when b is empty.
func clone(b []byte) []byte {
	c := make([]byte, len(b))
	copy(c, b)
	return c
}
