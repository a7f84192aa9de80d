// Package statetest is the conformance test every state.Store implementation
// runs: the embedded bbolt store, the in-memory one, and the etcd one.
// It owns no implementation of its own.
package statetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cvpn/cvpn/state"
)

// Run runs the conformance tests against stores made by open, which returns a
// fresh, empty Store for each subtest; Run closes them.
func Run(t *testing.T, open func(t *testing.T) state.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s state.Store)
	}{
		{"GetPutDelete", testGetPutDelete},
		{"EmptyValue", testEmptyValue},
		{"Copies", testCopies},
		{"UpdateCreateModifyDelete", testUpdate},
		{"UpdateErrorAborts", testUpdateError},
		{"UpdateConcurrent", testUpdateConcurrent},
		{"ListSorted", testList},
		{"BucketNamesDoNotAlias", testBucketAlias},
		{"Limits", testLimits},
		{"CanceledContext", testCanceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			defer s.Close()
			tt.fn(t, s)
		})
	}
	t.Run("Closed", func(t *testing.T) {
		s := open(t)
		testClosed(t, s)
	})
}

func testGetPutDelete(t *testing.T, s state.Store) {
	ctx := context.Background()
	if _, err := s.Get(ctx, "b", "k"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("Get of absent key: err = %v, want ErrNotFound", err)
	}
	if err := s.Put(ctx, "b", "k", []byte("v1")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if err := s.Put(ctx, "other", "k", []byte("other")); err != nil {
		t.Fatalf("Put other bucket: %v", err)
	}
	got, err := s.Get(ctx, "b", "k")
	if err != nil || string(got) != "v1" {
		t.Fatalf("Get = %q, %v; want v1", got, err)
	}
	if err := s.Put(ctx, "b", "k", []byte("v2")); err != nil {
		t.Fatalf("Put overwrite: %v", err)
	}
	if got, _ := s.Get(ctx, "b", "k"); string(got) != "v2" {
		t.Fatalf("after overwrite Get = %q, want v2", got)
	}
	if err := s.Delete(ctx, "b", "k"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Get(ctx, "b", "k"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("Get after Delete: err = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "b", "k"); err != nil {
		t.Fatalf("Delete of absent key: %v, want nil", err)
	}
	if err := s.Delete(ctx, "never", "k"); err != nil {
		t.Fatalf("Delete in absent bucket: %v, want nil", err)
	}
	if got, err := s.Get(ctx, "other", "k"); err != nil || string(got) != "other" {
		t.Fatalf("other bucket disturbed: %q, %v", got, err)
	}
}

func testEmptyValue(t *testing.T, s state.Store) {
	ctx := context.Background()
	for _, v := range [][]byte{nil, {}} {
		if err := s.Put(ctx, "b", "k", v); err != nil {
			t.Fatalf("Put(%#v): %v", v, err)
		}
		got, err := s.Get(ctx, "b", "k")
		if err != nil {
			t.Fatalf("Get of empty value: %v", err)
		}
		if got == nil || len(got) != 0 {
			t.Fatalf("Get of empty value = %#v, want a non-nil empty slice", got)
		}
	}
	// Update sees an empty value as present.
	err := s.Update(ctx, "b", "k", func(old []byte, ok bool) ([]byte, error) {
		if !ok || len(old) != 0 {
			return nil, fmt.Errorf("update saw old=%#v ok=%v, want empty and present", old, ok)
		}
		return old, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testCopies(t *testing.T, s state.Store) {
	ctx := context.Background()
	v := []byte("value")
	if err := s.Put(ctx, "b", "k", v); err != nil {
		t.Fatal(err)
	}
	v[0] = 'X'
	got, err := s.Get(ctx, "b", "k")
	if err != nil || string(got) != "value" {
		t.Fatalf("Get = %q, %v: Put kept the caller's slice", got, err)
	}
	got[0] = 'Y'
	if again, _ := s.Get(ctx, "b", "k"); string(again) != "value" {
		t.Fatalf("Get = %q: Get returned the store's own slice", again)
	}
	var kept []byte
	s.Update(ctx, "b", "k", func(old []byte, ok bool) ([]byte, error) {
		kept = old
		return []byte("new"), nil
	})
	kept[0] = 'Z' // the store must not have lent its memory to fn
	if again, _ := s.Get(ctx, "b", "k"); string(again) != "new" {
		t.Fatalf("after Update Get = %q, want new", again)
	}
}

func testUpdate(t *testing.T, s state.Store) {
	ctx := context.Background()
	err := s.Update(ctx, "b", "k", func(old []byte, ok bool) ([]byte, error) {
		if ok || old != nil {
			return nil, fmt.Errorf("absent key: fn(%q, %v), want fn(nil, false)", old, ok)
		}
		return []byte("1"), nil
	})
	if err != nil {
		t.Fatalf("Update create: %v", err)
	}
	err = s.Update(ctx, "b", "k", func(old []byte, ok bool) ([]byte, error) {
		if !ok || string(old) != "1" {
			return nil, fmt.Errorf("present key: fn(%q, %v), want fn(1, true)", old, ok)
		}
		return append(old, '2'), nil
	})
	if err != nil {
		t.Fatalf("Update modify: %v", err)
	}
	if got, _ := s.Get(ctx, "b", "k"); string(got) != "12" {
		t.Fatalf("Get = %q, want 12", got)
	}
	if err := s.Update(ctx, "b", "k", func([]byte, bool) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatalf("Update delete: %v", err)
	}
	if _, err := s.Get(ctx, "b", "k"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("after Update returned nil: Get err = %v, want ErrNotFound", err)
	}
	// Returning nil for an absent key is a no-op, not an error.
	if err := s.Update(ctx, "b", "absent", func([]byte, bool) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatalf("Update delete of absent key: %v", err)
	}
	if keys, _ := s.List(ctx, "b"); len(keys) != 0 {
		t.Fatalf("List = %q, want no keys", keys)
	}
}

func testUpdateError(t *testing.T, s state.Store) {
	ctx := context.Background()
	if err := s.Put(ctx, "b", "k", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	errAbort := errors.New("abort")
	err := s.Update(ctx, "b", "k", func([]byte, bool) ([]byte, error) { return []byte("lost"), errAbort })
	if !errors.Is(err, errAbort) {
		t.Fatalf("Update err = %v, want fn's error", err)
	}
	if got, _ := s.Get(ctx, "b", "k"); string(got) != "kept" {
		t.Fatalf("Get = %q after an aborted Update, want kept", got)
	}
	err = s.Update(ctx, "b", "new", func([]byte, bool) ([]byte, error) { return nil, errAbort })
	if !errors.Is(err, errAbort) {
		t.Fatalf("Update err = %v, want fn's error", err)
	}
	if _, err := s.Get(ctx, "b", "new"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("aborted Update created its key: err = %v", err)
	}
}

// testUpdateConcurrent increments counters from many goroutines: a lost
// update shows as a total below the number of increments.
func testUpdateConcurrent(t *testing.T, s state.Store) {
	ctx := context.Background()
	const workers, each = 8, 50
	incr := func(old []byte, ok bool) ([]byte, error) {
		var n uint64
		if ok {
			if len(old) != 8 {
				return nil, fmt.Errorf("counter is %d bytes", len(old))
			}
			n = binary.BigEndian.Uint64(old)
		}
		return binary.BigEndian.AppendUint64(nil, n+1), nil
	}
	// Exactly one of the goroutines claiming a key at once may win.
	var claims sync.Map
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := s.Update(ctx, "ctr", "shared", incr); err != nil {
					errs <- err
					return
				}
				claimed := false
				err := s.Update(ctx, "claim", fmt.Sprint(i), func(old []byte, ok bool) ([]byte, error) {
					claimed = !ok
					if ok {
						return old, nil
					}
					return []byte{byte(w)}, nil
				})
				if err != nil {
					errs <- err
					return
				}
				if claimed {
					if _, dup := claims.LoadOrStore(i, w); dup {
						errs <- fmt.Errorf("claim %d won by two goroutines", i)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, err := s.Get(ctx, "ctr", "shared")
	if err != nil {
		t.Fatal(err)
	}
	if n := binary.BigEndian.Uint64(got); n != workers*each {
		t.Fatalf("counter = %d after %d concurrent increments: an update was lost", n, workers*each)
	}
	for i := range each {
		if _, ok := claims.Load(i); !ok {
			t.Errorf("claim %d won by nobody", i)
		}
	}
}

func testList(t *testing.T, s state.Store) {
	ctx := context.Background()
	keys, err := s.List(ctx, "absent")
	if err != nil || len(keys) != 0 {
		t.Fatalf("List of absent bucket = %q, %v; want none", keys, err)
	}
	want := []string{"A", "a", "aa", "b", "z", "\u00e9t\u00e9"}
	for _, i := range []int{3, 5, 0, 2, 4, 1} {
		if err := s.Put(ctx, "b", want[i], []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	s.Put(ctx, "other", "x", nil)
	keys, err = s.List(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("List = %q, want %q (byte order)", keys, want)
	}
	s.Delete(ctx, "b", "aa")
	keys, _ = s.List(ctx, "b")
	if slices.Contains(keys, "aa") || len(keys) != len(want)-1 {
		t.Fatalf("List after Delete = %q", keys)
	}
}

// testBucketAlias: a store that joins bucket and key into one path (etcd)
// must still keep bucket "a/b" key "c" apart from bucket "a" key "b/c", and
// escaped-looking names apart from the names they look like.
func testBucketAlias(t *testing.T, s state.Store) {
	ctx := context.Background()
	entries := []struct{ bucket, key string }{
		{"a/b", "c"},
		{"a", "b/c"},
		{"a%2Fb", "c"},
		{"a%252Fb", "c"},
		{"a/", "b/c"},
		{"a", "/b/c"},
		{"ab", "c"},
	}
	for i, e := range entries {
		if err := s.Put(ctx, e.bucket, e.key, []byte{byte(i)}); err != nil {
			t.Fatalf("Put(%q, %q): %v", e.bucket, e.key, err)
		}
	}
	for i, e := range entries {
		got, err := s.Get(ctx, e.bucket, e.key)
		if err != nil || !bytes.Equal(got, []byte{byte(i)}) {
			t.Errorf("Get(%q, %q) = %v, %v; want [%d]", e.bucket, e.key, got, err, i)
		}
	}
	lists := map[string][]string{
		"a": {"/b/c", "b/c"}, "a/b": {"c"}, "a%2Fb": {"c"}, "a%252Fb": {"c"}, "a/": {"b/c"},
		"ab": {"c"}, "a%": nil, "a/b/": nil,
	}
	for bucket, want := range lists {
		keys, err := s.List(ctx, bucket)
		if err != nil || !slices.Equal(keys, want) {
			t.Errorf("List(%q) = %q, %v; want %q", bucket, keys, err, want)
		}
	}
	if err := s.Delete(ctx, "a", "b/c"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, "a/b", "c"); err != nil || !bytes.Equal(got, []byte{0}) {
		t.Errorf("Delete(a, b/c) disturbed a/b c: %v, %v", got, err)
	}
}

func testLimits(t *testing.T, s state.Store) {
	ctx := context.Background()
	bad := []struct{ bucket, key string }{
		{"", "k"},
		{"b", ""},
		{strings.Repeat("b", state.MaxBucketLen+1), "k"},
		{"b", strings.Repeat("k", state.MaxKeyLen+1)},
		{"b", "a\x00b"},
		{"b", "\xff"},
	}
	for _, c := range bad {
		if err := s.Put(ctx, c.bucket, c.key, []byte("v")); err == nil {
			t.Errorf("Put(%.20q, %.20q) accepted", c.bucket, c.key)
		}
		if _, err := s.Get(ctx, c.bucket, c.key); err == nil || errors.Is(err, state.ErrNotFound) {
			t.Errorf("Get(%.20q, %.20q) err = %v, want a validation error", c.bucket, c.key, err)
		}
		if err := s.Update(ctx, c.bucket, c.key, func([]byte, bool) ([]byte, error) { return []byte("v"), nil }); err == nil {
			t.Errorf("Update(%.20q, %.20q) accepted", c.bucket, c.key)
		}
	}
	if err := s.Put(ctx, "b", strings.Repeat("k", state.MaxKeyLen), []byte("v")); err != nil {
		t.Errorf("Put with a key of MaxKeyLen: %v", err)
	}
	big := make([]byte, state.MaxValueLen+1)
	if err := s.Put(ctx, "b", "big", big); err == nil {
		t.Error("Put of a value over MaxValueLen accepted")
	}
	if err := s.Update(ctx, "b", "big", func([]byte, bool) ([]byte, error) { return big, nil }); err == nil {
		t.Error("Update to a value over MaxValueLen accepted")
	}
	if _, err := s.Get(ctx, "b", "big"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("refused value was stored: err = %v", err)
	}
	if err := s.Put(ctx, "b", "max", big[:state.MaxValueLen]); err != nil {
		t.Errorf("Put of MaxValueLen bytes: %v", err)
	}
	if got, _ := s.Get(ctx, "b", "max"); !bytes.Equal(got, big[:state.MaxValueLen]) {
		t.Errorf("Get of MaxValueLen bytes returned %d bytes", len(got))
	}
}

func testCanceled(t *testing.T, s state.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Put(ctx, "b", "k", []byte("v")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with canceled context: err = %v", err)
	}
	called := false
	err := s.Update(ctx, "b", "k", func([]byte, bool) ([]byte, error) { called = true; return []byte("v"), nil })
	if !errors.Is(err, context.Canceled) || called {
		t.Fatalf("Update with canceled context: err = %v, fn called %v", err, called)
	}
	if _, err := s.Get(context.Background(), "b", "k"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("a canceled write happened: err = %v", err)
	}
}

func testClosed(t *testing.T, s state.Store) {
	ctx := context.Background()
	if err := s.Put(ctx, "b", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := s.Get(ctx, "b", "k"); !errors.Is(err, state.ErrClosed) {
		t.Errorf("Get after Close: err = %v, want ErrClosed", err)
	}
	if err := s.Put(ctx, "b", "k", nil); !errors.Is(err, state.ErrClosed) {
		t.Errorf("Put after Close: err = %v, want ErrClosed", err)
	}
	if err := s.Delete(ctx, "b", "k"); !errors.Is(err, state.ErrClosed) {
		t.Errorf("Delete after Close: err = %v, want ErrClosed", err)
	}
	if err := s.Update(ctx, "b", "k", func(o []byte, _ bool) ([]byte, error) { return o, nil }); !errors.Is(err, state.ErrClosed) {
		t.Errorf("Update after Close: err = %v, want ErrClosed", err)
	}
	if _, err := s.List(ctx, "b"); !errors.Is(err, state.ErrClosed) {
		t.Errorf("List after Close: err = %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
