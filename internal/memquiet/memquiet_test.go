package memquiet

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
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

// TestWatchReleasesTheRealHeap: on the real runtime, memory that a collection freed below the
// GC's target stays resident and counts as free, and Watch's release hands it back.
func TestWatchReleasesTheRealHeap(t *testing.T) {
	// The runtime returns on its own what lies above its target; a server's free memory lies
	// below it (cvpn's target is 1.5x the live heap). A target of 3x keeps this test's 64 MiB
	// of garbage below it with 40 MiB live.
	defer debug.SetGCPercent(debug.SetGCPercent(200))
	released := func() uint64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/released:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	live := make([][]byte, 40)
	garbage := make([][]byte, 64)
	for i := range 104 {
		b := make([]byte, 1<<20)
		b[0] = 1
		if i < 40 {
			live[i] = b
		} else {
			garbage[i-40] = b
		}
	}
	garbage = nil
	runtime.GC() // the garbage is free now, and still resident
	if st := Read(); st.Free < 32<<20 {
		t.Fatalf("Read reports %d free bytes after freeing 64 MiB, want at least 32 MiB", st.Free)
	}
	before := released()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	heard := make(chan uint64, 1)
	go Watch(ctx, Quiet{Every: 10 * time.Millisecond, Periods: 8, Free: 32 << 20}, nil, nil, func(free uint64) {
		select {
		case heard <- free:
		default:
		}
	})
	select {
	case free := <-heard:
		if free < 32<<20 {
			t.Errorf("released with %d free bytes, want at least 32 MiB", free)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no release within 10 s of freeing 64 MiB")
	}
	if got := released() - before; got < 32<<20 {
		t.Errorf("the runtime released %d more bytes, want at least 32 MiB", got)
	}
	runtime.KeepAlive(live)
}
