package memquiet

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeHeap is a heap whose allocation and free memory a test sets; a release frees it.
type fakeHeap struct {
	mu       sync.Mutex
	st       Stats
	releases int
}

func (h *fakeHeap) read() Stats { h.mu.Lock(); defer h.mu.Unlock(); return h.st }

func (h *fakeHeap) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.releases++
	h.st.Free = 0
}

func (h *fakeHeap) set(alloc, free uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.st.Allocated += alloc
	h.st.Free = free
}

func TestDue(t *testing.T) {
	q := Quiet{Every: time.Second, Periods: 4, Free: 1000}
	for _, tc := range []struct {
		name        string
		alloc, free uint64
		want        bool
	}{
		{"quiet with much free", 0, 1000, true},
		{"allocating, free outlasts the periods", 249, 1000, true},
		{"allocating, free would be needed within the periods", 250, 1000, false},
		{"busy", 100_000, 5000, false},
		{"quiet with little free", 0, 999, false},
	} {
		last := Stats{Allocated: 7}
		now := Stats{Allocated: 7 + tc.alloc, Free: tc.free}
		if got := q.due(last, now); got != tc.want {
			t.Errorf("%s: due = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestWatchReleasesOncePerQuietSpell: a busy heap is left alone; once it is quiet with free
// memory it is released once, and not again while nothing new is freed.
func TestWatchReleasesOncePerQuietSpell(t *testing.T) {
	h := &fakeHeap{}
	h.set(0, 10_000)
	var busy atomic.Bool
	busy.Store(true)
	reads := make(chan struct{}, 1000)
	read := func() Stats {
		if busy.Load() {
			h.set(10_000, 10_000) // the free memory would last one period
		}
		select {
		case reads <- struct{}{}:
		default:
		}
		return h.read()
	}
	q := Quiet{Every: time.Millisecond, Periods: 8, Free: 1000}
	ctx, cancel := context.WithCancel(context.Background())
	var released []uint64
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, q, read, h.release, func(free uint64) { mu.Lock(); released = append(released, free); mu.Unlock() })
	}()
	for range 20 {
		<-reads
	}
	h.mu.Lock()
	busyReleases := h.releases
	h.mu.Unlock()
	if busyReleases != 0 {
		t.Fatalf("released %d times while the heap was busy", busyReleases)
	}
	busy.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		h.mu.Lock()
		n := h.releases
		h.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no release after the heap went quiet")
		}
		time.Sleep(time.Millisecond)
	}
	for range 20 { // twenty more quiet periods with nothing free
		<-reads
	}
	cancel()
	<-done
	if h.releases != 1 {
		t.Errorf("released %d times in one quiet spell, want 1", h.releases)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(released) != 1 || released[0] != 10_000 {
		t.Errorf("onRelease heard %v, want [10000]", released)
	}
}

// TestReadReportsTheRuntime: Read's allocation count grows with allocation.
func TestReadReportsTheRuntime(t *testing.T) {
	before := Read()
	var keep [][]byte
	for range 64 {
		keep = append(keep, make([]byte, 64<<10))
	}
	after := Read()
	if after.Allocated-before.Allocated < 4<<20 {
		t.Errorf("allocated %d bytes between reads, want at least 4 MiB", after.Allocated-before.Allocated)
	}
	_ = keep
}
