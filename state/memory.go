package state

import (
	"context"
	"sort"
	"sync"
)

// Memory is a Store held in memory, for tests of other packages. It enforces
// the same limits and errors as the persistent stores.
type Memory struct {
	mu      sync.Mutex // guards the fields below
	buckets map[string]map[string][]byte
	closed  bool
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory Store.
func NewMemory() *Memory {
	return &Memory{buckets: make(map[string]map[string][]byte)}
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, bucket, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkKey(bucket, key); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	v, ok := m.buckets[bucket][key]
	if !ok {
		return nil, ErrNotFound
	}
	return clone(v), nil
}

// Put implements Store.
func (m *Memory) Put(ctx context.Context, bucket, key string, value []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(bucket, key); err != nil {
		return err
	}
	if err := checkValue(bucket, key, value); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.put(bucket, key, value)
	return nil
}

// put stores a copy of value; m.mu is held.
func (m *Memory) put(bucket, key string, value []byte) {
	b := m.buckets[bucket]
	if b == nil {
		b = make(map[string][]byte)
		m.buckets[bucket] = b
	}
	b[key] = clone(value)
}

// Delete implements Store.
func (m *Memory) Delete(ctx context.Context, bucket, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(bucket, key); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	delete(m.buckets[bucket], key)
	return nil
}

// Update implements Store. fn runs with the store's lock held.
func (m *Memory) Update(ctx context.Context, bucket, key string, fn func(old []byte, ok bool) ([]byte, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(bucket, key); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	old, ok := m.buckets[bucket][key]
	if ok {
		old = clone(old)
	}
	v, err := fn(old, ok)
	if err != nil {
		return err
	}
	if v == nil {
		delete(m.buckets[bucket], key)
		return nil
	}
	if err := checkValue(bucket, key, v); err != nil {
		return err
	}
	m.put(bucket, key, v)
	return nil
}

// List implements Store.
func (m *Memory) List(ctx context.Context, bucket string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkName("bucket name", bucket, MaxBucketLen); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	keys := make([]string, 0, len(m.buckets[bucket]))
	for k := range m.buckets[bucket] {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys, nil
}

// Close implements Store.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.buckets = nil
	return nil
}
