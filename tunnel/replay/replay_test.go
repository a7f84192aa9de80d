package replay

import (
	"math/rand/v2"
	"testing"
)

// model is the obvious replay filter: a set of every id seen plus the highest.
type model struct {
	seen map[uint32]bool
	last uint32
}

func (m *model) check(id uint32) bool {
	if id == 0 || m.seen[id] || (id <= m.last && m.last-id >= WindowSize) {
		return false
	}
	m.seen[id] = true
	m.last = max(m.last, id)
	return true
}

func TestKnown(t *testing.T) {
	var w Window
	steps := []struct {
		id   uint32
		want bool
	}{
		{0, false},
		{1, true}, {1, false}, {3, true}, {2, true}, {2, false}, {3, false},
		{100, true}, {64, true}, {63, true}, {4, true}, {4, false},
		{WindowSize + 100, true},
		{101, true},  // last-id = 2047: still inside
		{100, false}, // seen
		{99, false},  // 2048 behind: too old
		{WindowSize + 99, true},
		{0xffffffff, true}, {0xffffffff, false}, {0xffffffff - WindowSize + 1, true},
		{0xffffffff - WindowSize, false}, {WindowSize + 98, false},
	}
	for i, s := range steps {
		if got := w.Check(s.id); got != s.want {
			t.Fatalf("step %d: Check(%d) = %v, want %v", i, s.id, got, s.want)
		}
	}
	w.Reset()
	if !w.Check(1) {
		t.Fatal("after Reset, 1 rejected")
	}
}

// TestDifferential compares Window against the set model over random
// sequences that advance, reorder, duplicate and jump.
func TestDifferential(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, seed*7919+1))
		var w Window
		m := model{seen: map[uint32]bool{}}
		var next uint32 = 1
		if seed%10 == 0 {
			next = 0xffffffff - 50000 // near the top of the id space
		}
		for step := range 20000 {
			var id uint32
			switch r := rng.IntN(100); {
			case r < 50: // in order
				id = next
				next++
			case r < 75: // reordered: a little behind or ahead
				id = next + uint32(rng.IntN(300)) - 150
			case r < 85: // around the window edge
				id = next - WindowSize - 70 + uint32(rng.IntN(140))
			case r < 93: // exact duplicate of a recent id
				id = next - 1 - uint32(rng.IntN(min(int(next), 40)))
			case r < 97: // jump forward
				next += uint32(rng.IntN(5 * WindowSize))
				id = next
			case r < 98:
				id = 0
			default: // far in the past
				id = uint32(rng.IntN(int(next) + 1))
			}
			if next > 0xffffffff-10*WindowSize {
				next = 1 + uint32(rng.IntN(1000)) // keep away from wrap; the window's last stays high
			}
			if got, want := w.Check(id), m.check(id); got != want {
				t.Fatalf("seed %d step %d: Check(%d) = %v, model %v (last %d)", seed, step, id, got, want, m.last)
			}
		}
	}
}

func TestNoAllocs(t *testing.T) {
	var w Window
	var id uint32
	if n := testing.AllocsPerRun(1000, func() {
		id += 3
		w.Check(id)
		w.Check(id - 1)
	}); n != 0 {
		t.Fatalf("Check allocs = %v, want 0", n)
	}
}

func BenchmarkCheckInOrder(b *testing.B) {
	var w Window
	var id uint32
	for b.Loop() {
		id++
		w.Check(id)
	}
}
