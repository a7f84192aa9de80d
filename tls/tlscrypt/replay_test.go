package tlscrypt

import (
	"math/rand/v2"
	"testing"
)

func TestReplayWindowCases(t *testing.T) {
	type step struct {
		pid, ts uint32
		want    bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"pid 0 never valid", []step{{0, 1, false}, {1, 1, true}, {0, 1, false}, {0, 2, false}}},
		{"in order", []step{{1, 10, true}, {2, 10, true}, {3, 10, true}}},
		{"duplicate", []step{{1, 10, true}, {1, 10, false}, {2, 10, true}, {1, 10, false}, {2, 10, false}}},
		{"reordered within window", []step{{5, 10, true}, {3, 10, true}, {4, 10, true}, {3, 10, false}, {1, 10, true}}},
		{"window edge", []step{{100, 10, true}, {37, 10, true}, {36, 10, false}, {37, 10, false}}},
		{"big jump", []step{{1, 10, true}, {1000, 10, true}, {999, 10, true}, {1, 10, false}, {937, 10, true}, {936, 10, false}}},
		{"older ts rejected", []step{{1, 10, true}, {2, 9, false}, {2, 10, true}}},
		{"newer ts restarts", []step{{50, 10, true}, {1, 11, true}, {50, 10, false}, {2, 11, true}, {1, 11, false}}},
		{"first packet any ts", []step{{7, 0, true}, {8, 0, true}}},
		{"max pid", []step{{0xffffffff, 1, true}, {0xffffffff, 1, false}, {0xffffffff - 63, 1, true}, {0xffffffff - 64, 1, false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r ReplayWindow
			for i, s := range tt.steps {
				if got := r.Check(s.pid, s.ts); got != s.want {
					t.Fatalf("step %d Check(%d, %d) = %v, want %v", i, s.pid, s.ts, got, s.want)
				}
			}
		})
	}
}

// replayModel is the slow obvious replay check: a set of the pids seen under
// the current timestamp plus the highest one.
type replayModel struct {
	started bool
	ts, max uint32
	seen    map[uint32]bool
}

func (m *replayModel) check(pid, ts uint32) bool {
	if pid == 0 {
		return false
	}
	if !m.started || ts > m.ts {
		m.started, m.ts, m.max, m.seen = true, ts, pid, map[uint32]bool{pid: true}
		return true
	}
	if ts < m.ts || uint64(pid)+ReplayWindowSize <= uint64(m.max) || m.seen[pid] {
		return false
	}
	m.seen[pid] = true
	m.max = max(m.max, pid)
	return true
}

func TestReplayWindowDifferential(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 99))
		var r ReplayWindow
		m := replayModel{}
		next, ts := uint32(1+rng.IntN(3)), uint32(1000)
		for i := range 20000 {
			var pid, pts uint32
			switch x := rng.IntN(100); {
			case x < 50: // fresh, mostly in order
				pid = next
				next += uint32(1 + rng.IntN(3))
			case x < 80: // replay or late, near the front of the window
				pid = next - uint32(rng.IntN(80))
			case x < 85: // jump ahead
				next += uint32(rng.IntN(200))
				pid = next
			case x < 90: // far in the past, or 0
				pid = uint32(rng.IntN(int(next) + 1))
			default:
				pid = next + uint32(rng.IntN(70))
			}
			pts = ts
			switch x := rng.IntN(1000); {
			case x < 5: // peer restarted: newer time, counter from 1
				ts += uint32(1 + rng.IntN(3))
				pts, next = ts, 1
				pid = 1
			case x < 15:
				pts = ts - uint32(1+rng.IntN(2))
			case x < 18:
				pts = ts + 1 // newer ts with an arbitrary pid
				ts++
			}
			want := m.check(pid, pts)
			if got := r.Check(pid, pts); got != want {
				t.Fatalf("seed %d step %d: Check(%d, %d) = %v, model says %v", seed, i, pid, pts, got, want)
			}
		}
	}
}

func TestReplayWindowNoAllocs(t *testing.T) {
	var r ReplayWindow
	pid := uint32(0)
	if n := testing.AllocsPerRun(1000, func() { pid++; r.Check(pid, 1) }); n != 0 {
		t.Fatalf("Check allocs = %v", n)
	}
}
