// Package etcdstate is the state.Store of a cluster, kept in etcd. It is a package of its own
// so that what uses state.Store (the auth packages, the portal) does not link the etcd client;
// only the cluster node, which opens it, does.
package etcdstate

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/state"
)

// Update's retries on a conflicting write: each waits a random time up to a
// delay that doubles from updateBackoffMin to updateBackoffMax, so writers
// contending for one key spread out instead of colliding again.
const (
	updateAttempts   = 64
	updateBackoffMin = time.Millisecond
	updateBackoffMax = 100 * time.Millisecond
)

// Store is the state.Store of a cluster: every bucket and key is one etcd key,
//
//	<prefix>/<bucket>/<key>
//
// with '%' and '/' in the bucket name written as %25 and %2F, so the first
// '/' after the prefix ends the bucket and bucket "a/b" key "c" is not bucket
// "a" key "b/c". Keys are written as they are.
//
// What it relies on from etcd: reads (Get, List) are linearizable, etcd's
// default, so a value written through any member is seen by every later read
// through any other, and a member cut off from the quorum answers with an
// error rather than old data; Update is a compare-and-swap, a transaction
// that writes only if the key's ModRevision (or, for an absent key, its
// CreateRevision 0) is still what was read. Nothing else: no leases, no
// watches, no auth beyond what the client was built with.
//
// Every call takes as long as etcd does, which without a quorum is until ctx
// ends: callers give a deadline. A write that fails that way (or with a lost
// leader) may still have been applied, as with any remote store: the error
// says the outcome is unknown, not that nothing happened.
type Store struct {
	cli    *clientv3.Client
	prefix string
	closed atomic.Bool
}

var _ state.Store = (*Store)(nil)

// New returns the Store kept in etcd under prefix (a trailing '/' is
// dropped). The caller owns cli: it stays open after Close, which only marks
// the store closed, and the caller closes it when done with it.
func New(cli *clientv3.Client, prefix string) *Store {
	return &Store{cli: cli, prefix: strings.TrimRight(prefix, "/")}
}

// bucketPrefix returns "<prefix>/<escaped bucket>/".
func (e *Store) bucketPrefix(bucket string) string {
	var b strings.Builder
	b.Grow(len(e.prefix) + len(bucket) + 2)
	b.WriteString(e.prefix)
	b.WriteByte('/')
	for i := 0; i < len(bucket); i++ {
		switch c := bucket[i]; c {
		case '%':
			b.WriteString("%25")
		case '/':
			b.WriteString("%2F")
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('/')
	return b.String()
}

func (e *Store) key(bucket, key string) string { return e.bucketPrefix(bucket) + key }

// begin checks what every call on a key checks first: ctx, the store, the
// names.
func (e *Store) begin(ctx context.Context, bucket, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if e.closed.Load() {
		return state.ErrClosed
	}
	return state.CheckKey(bucket, key)
}

// wrap names the operation in err; a call cut short by ctx wraps ctx's error,
// whatever the client made of it.
func wrap(ctx context.Context, op, bucket, key string, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w (%v)", cerr, err)
	}
	if key == "" {
		return fmt.Errorf("state: etcd %s %s: %w", op, bucket, err)
	}
	return fmt.Errorf("state: etcd %s %s/%s: %w", op, bucket, key, err)
}

// Get implements Store.
func (e *Store) Get(ctx context.Context, bucket, key string) ([]byte, error) {
	if err := e.begin(ctx, bucket, key); err != nil {
		return nil, err
	}
	resp, err := e.cli.Get(ctx, e.key(bucket, key))
	if err != nil {
		return nil, wrap(ctx, "get", bucket, key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, state.ErrNotFound
	}
	return clone(resp.Kvs[0].Value), nil
}

// Put implements Store.
func (e *Store) Put(ctx context.Context, bucket, key string, value []byte) error {
	if err := e.begin(ctx, bucket, key); err != nil {
		return err
	}
	if err := state.CheckValue(bucket, key, value); err != nil {
		return err
	}
	if _, err := e.cli.Put(ctx, e.key(bucket, key), string(value)); err != nil {
		return wrap(ctx, "put", bucket, key, err)
	}
	return nil
}

// Delete implements Store.
func (e *Store) Delete(ctx context.Context, bucket, key string) error {
	if err := e.begin(ctx, bucket, key); err != nil {
		return err
	}
	if _, err := e.cli.Delete(ctx, e.key(bucket, key)); err != nil {
		return wrap(ctx, "delete", bucket, key, err)
	}
	return nil
}

// Update implements Store as a compare-and-swap: read the key and its
// ModRevision, run fn, and write in a transaction that succeeds only if the
// key has not changed since. On a conflict the transaction's other branch
// returns the key as it is now, and fn runs again on that, after a short
// random wait, at most updateAttempts times in all.
func (e *Store) Update(ctx context.Context, bucket, key string, fn func(old []byte, ok bool) ([]byte, error)) error {
	if err := e.begin(ctx, bucket, key); err != nil {
		return err
	}
	k := e.key(bucket, key)
	resp, err := e.cli.Get(ctx, k)
	if err != nil {
		return wrap(ctx, "update", bucket, key, err)
	}
	kvs := resp.Kvs
	backoff := updateBackoffMin
	for attempt := 1; ; attempt++ {
		var (
			old  []byte
			ok   bool
			cond clientv3.Cmp
		)
		if len(kvs) > 0 {
			old, ok = clone(kvs[0].Value), true
			cond = clientv3.Compare(clientv3.ModRevision(k), "=", kvs[0].ModRevision)
		} else {
			cond = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
		}
		v, err := fn(old, ok)
		if err != nil {
			return err
		}
		var op clientv3.Op
		switch {
		case v == nil && !ok:
			return nil // deleting an absent key: nothing to write
		case v == nil:
			op = clientv3.OpDelete(k)
		default:
			if err := state.CheckValue(bucket, key, v); err != nil {
				return err
			}
			op = clientv3.OpPut(k, string(v))
		}
		txn, err := e.cli.Txn(ctx).If(cond).Then(op).Else(clientv3.OpGet(k)).Commit()
		if err != nil {
			return wrap(ctx, "update", bucket, key, err)
		}
		if txn.Succeeded {
			return nil
		}
		if attempt == updateAttempts {
			return wrap(ctx, "update", bucket, key, fmt.Errorf("still conflicting with other writers after %d attempts", attempt))
		}
		kvs = txn.Responses[0].GetResponseRange().Kvs
		t := time.NewTimer(rand.N(backoff) + 1)
		select {
		case <-ctx.Done():
			t.Stop()
			return wrap(ctx, "update", bucket, key, ctx.Err())
		case <-t.C:
		}
		backoff = min(2*backoff, updateBackoffMax)
		if e.closed.Load() {
			return state.ErrClosed
		}
	}
}

// List implements Store. etcd returns a range in ascending byte order of the
// whole key, which under one bucket prefix is the order of the keys.
func (e *Store) List(ctx context.Context, bucket string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if e.closed.Load() {
		return nil, state.ErrClosed
	}
	if err := state.CheckBucket(bucket); err != nil {
		return nil, err
	}
	p := e.bucketPrefix(bucket)
	resp, err := e.cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, wrap(ctx, "list", bucket, "", err)
	}
	keys := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		keys = append(keys, strings.TrimPrefix(string(kv.Key), p))
	}
	return keys, nil
}

// Close implements Store: later calls return state.ErrClosed. It does not close the
// client, which the caller owns; calls already under way finish.
func (e *Store) Close() error {
	e.closed.Store(true)
	return nil
}

// clone copies b, returning a non-nil slice even when b is empty, as every Store's values are.
func clone(b []byte) []byte { return append([]byte{}, b...) }
