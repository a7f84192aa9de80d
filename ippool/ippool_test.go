package ippool

import (
	"errors"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
)

// leasedCount counts set bits so tests can check the bitmap against inUse.
func (p *Pool) leasedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, w := range p.leased {
		n += bits.OnesCount64(w)
	}
	return n
}

func mustPool(t testing.TB, s string) *Pool {
	t.Helper()
	p, err := New(netip.MustParsePrefix(s))
	if err != nil {
		t.Fatalf("New(%s): %v", s, err)
	}
	return p
}

func TestNewRejects(t *testing.T) {
	for _, s := range []string{
		"10.2.0.1/22",         // not masked
		"fd00::/64",           // IPv6
		"10.2.0.0/30",         // one client address
		"10.2.0.0/31",         // none
		"10.2.0.4/32",         // none
		"10.0.0.0/7",          // too large
		"::ffff:10.0.0.0/120", // IPv4-mapped IPv6 is not IPv4
	} {
		if _, err := New(netip.MustParsePrefix(s)); !errors.Is(err, ErrBadPrefix) {
			t.Errorf("New(%s) = %v, want ErrBadPrefix", s, err)
		}
	}
	if _, err := New(netip.Prefix{}); !errors.Is(err, ErrBadPrefix) {
		t.Errorf("New(zero) = %v, want ErrBadPrefix", err)
	}
}

func TestGeometry(t *testing.T) {
	p := mustPool(t, "10.2.0.0/22")
	if got, want := p.Gateway(), netip.MustParseAddr("10.2.0.1"); got != want {
		t.Errorf("Gateway = %v, want %v", got, want)
	}
	if p.Size() != 1024 || p.Capacity() != 1021 {
		t.Errorf("Size, Capacity = %d, %d, want 1024, 1021", p.Size(), p.Capacity())
	}
	if p.Prefix() != netip.MustParsePrefix("10.2.0.0/22") {
		t.Errorf("Prefix = %v", p.Prefix())
	}
	for _, tc := range []struct {
		addr string
		idx  int
		ok   bool
	}{
		{"10.2.0.0", 0, true},
		{"10.2.0.1", 1, true},
		{"10.2.1.0", 256, true},
		{"10.2.3.255", 1023, true},
		{"10.2.4.0", 0, false},
		{"10.1.255.255", 0, false},
		{"::ffff:10.2.0.5", 0, false},
	} {
		idx, ok := p.Index(netip.MustParseAddr(tc.addr))
		if idx != tc.idx || ok != tc.ok {
			t.Errorf("Index(%s) = %d, %v, want %d, %v", tc.addr, idx, ok, tc.idx, tc.ok)
		}
	}
	if _, ok := p.Index(netip.Addr{}); ok {
		t.Error("Index(zero addr) ok")
	}
}

func TestAllocateOrderAndExhaustion(t *testing.T) {
	p := mustPool(t, "192.168.7.0/29")
	var got []netip.Addr
	for {
		a, err := p.Allocate()
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a)
	}
	want := []string{"192.168.7.2", "192.168.7.3", "192.168.7.4", "192.168.7.5", "192.168.7.6"}
	if len(got) != len(want) {
		t.Fatalf("allocated %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Fatalf("allocated %v, want %v", got, want)
		}
	}
	if p.InUse() != 5 {
		t.Errorf("InUse = %d, want 5", p.InUse())
	}
	// Released addresses come back oldest release first.
	for _, s := range []string{"192.168.7.4", "192.168.7.2", "192.168.7.6"} {
		if err := p.Release(netip.MustParseAddr(s)); err != nil {
			t.Fatalf("Release(%s): %v", s, err)
		}
	}
	for _, s := range []string{"192.168.7.4", "192.168.7.2", "192.168.7.6"} {
		a, err := p.Allocate()
		if err != nil || a.String() != s {
			t.Fatalf("Allocate = %v, %v, want %s", a, err, s)
		}
	}
}

func TestReleaseErrors(t *testing.T) {
	p := mustPool(t, "10.2.0.0/24")
	a, _ := p.Allocate()
	for _, tc := range []struct {
		addr string
		want error
	}{
		{"10.2.0.0", ErrNotInPool},   // network
		{"10.2.0.1", ErrNotInPool},   // gateway
		{"10.2.0.255", ErrNotInPool}, // broadcast
		{"10.3.0.2", ErrNotInPool},
		{"10.2.0.3", ErrNotAllocated},   // never handed out
		{"10.2.0.200", ErrNotAllocated}, // beyond the fresh cursor
	} {
		if err := p.Release(netip.MustParseAddr(tc.addr)); !errors.Is(err, tc.want) {
			t.Errorf("Release(%s) = %v, want %v", tc.addr, err, tc.want)
		}
	}
	if err := p.Release(a); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(a); !errors.Is(err, ErrNotAllocated) {
		t.Errorf("double Release = %v, want ErrNotAllocated", err)
	}
}

// TestDifferential drives the pool and a slow model (a FIFO slice of free
// addresses plus a set of leased ones) with the same random operations.
func TestDifferential(t *testing.T) {
	for _, prefix := range []string{"10.9.0.0/29", "10.2.0.0/26", "10.2.0.0/22"} {
		t.Run(prefix, func(t *testing.T) {
			p := mustPool(t, prefix)
			rng := rand.New(rand.NewPCG(1, uint64(p.Size())))
			var free []netip.Addr
			for a := p.Gateway().Next(); p.Prefix().Contains(a.Next()); a = a.Next() {
				free = append(free, a)
			}
			if len(free) != p.Capacity() {
				t.Fatalf("model has %d free, Capacity %d", len(free), p.Capacity())
			}
			leased := map[netip.Addr]bool{}
			var leasedList []netip.Addr
			for op := 0; op < 50000; op++ {
				// Bias towards allocation so the pool fills up and drains.
				if rng.IntN(100) < 55 || len(leasedList) == 0 {
					a, err := p.Allocate()
					if len(free) == 0 {
						if !errors.Is(err, ErrExhausted) {
							t.Fatalf("op %d: Allocate on full pool = %v, %v", op, a, err)
						}
						continue
					}
					if err != nil || a != free[0] {
						t.Fatalf("op %d: Allocate = %v, %v, model %v", op, a, err, free[0])
					}
					free = free[1:]
					leased[a] = true
					leasedList = append(leasedList, a)
				} else {
					i := rng.IntN(len(leasedList))
					a := leasedList[i]
					leasedList[i] = leasedList[len(leasedList)-1]
					leasedList = leasedList[:len(leasedList)-1]
					delete(leased, a)
					if err := p.Release(a); err != nil {
						t.Fatalf("op %d: Release(%v) = %v", op, a, err)
					}
					free = append(free, a)
					// A release of something not leased must fail and change nothing.
					if err := p.Release(a); !errors.Is(err, ErrNotAllocated) {
						t.Fatalf("op %d: second Release(%v) = %v", op, a, err)
					}
				}
				if p.InUse() != len(leased) || p.leasedCount() != len(leased) {
					t.Fatalf("op %d: InUse %d, bitmap %d, model %d", op, p.InUse(), p.leasedCount(), len(leased))
				}
			}
			if len(p.released) > p.Capacity() && len(p.released) > 16 {
				t.Errorf("released ring grew to %d for capacity %d", len(p.released), p.Capacity())
			}
		})
	}
}

// TestLargePrefixMemory checks that a /12 costs memory in proportion to its
// use, not its size.
func TestLargePrefixMemory(t *testing.T) {
	p := mustPool(t, "10.16.0.0/12")
	if p.Capacity() != 1<<20-3 {
		t.Fatalf("Capacity = %d", p.Capacity())
	}
	for range 1000 {
		if _, err := p.Allocate(); err != nil {
			t.Fatal(err)
		}
	}
	if len(p.leased) > 1000/64+1 || len(p.released) != 0 {
		t.Errorf("1000 leases use %d bitmap words, %d ring slots", len(p.leased), len(p.released))
	}
	if err := p.Release(netip.MustParseAddr("10.16.0.10")); err != nil {
		t.Fatal(err)
	}
	if len(p.released) != 16 {
		t.Errorf("one release grew the ring to %d slots", len(p.released))
	}
}

func TestConcurrent(t *testing.T) {
	p := mustPool(t, "10.2.0.0/22")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			var mine []netip.Addr
			for i := range 2000 {
				if i%3 == 2 && len(mine) > 0 {
					if err := p.Release(mine[0]); err != nil {
						t.Error(err)
						return
					}
					mine = mine[1:]
					continue
				}
				a, err := p.Allocate()
				if errors.Is(err, ErrExhausted) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				mine = append(mine, a)
			}
			for _, a := range mine {
				if err := p.Release(a); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if p.InUse() != 0 || p.leasedCount() != 0 {
		t.Errorf("after all releases InUse = %d, bitmap %d", p.InUse(), p.leasedCount())
	}
}

func TestIndexAllocs(t *testing.T) {
	p := mustPool(t, "10.2.0.0/22")
	a := netip.MustParseAddr("10.2.1.7")
	if n := testing.AllocsPerRun(100, func() { p.Index(a) }); n != 0 {
		t.Errorf("Index allocates %v times", n)
	}
}

func BenchmarkAllocateRelease(b *testing.B) {
	p := mustPool(b, "10.16.0.0/12")
	for range 1000 {
		if _, err := p.Allocate(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		a, err := p.Allocate()
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Release(a); err != nil {
			b.Fatal(err)
		}
	}
}
