package ippool

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
)

// mustBlocks returns a pool in block mode with blocks of size and the given
// blocks granted.
func mustBlocks(t testing.TB, p *Pool, size int, granted ...int) *Pool {
	t.Helper()
	if err := p.UseBlocks(size); err != nil {
		t.Fatalf("UseBlocks(%d): %v", size, err)
	}
	for _, b := range granted {
		if err := p.Grant(b); err != nil {
			t.Fatalf("Grant(%d): %v", b, err)
		}
	}
	return p
}

// indexes allocates n leases and returns their indexes, failing t on an
// error.
func indexes(t *testing.T, p *Pool, n int) []int {
	t.Helper()
	var out []int
	for range n {
		l, err := p.AllocateLease()
		if err != nil {
			t.Fatalf("AllocateLease after %v: %v", out, err)
		}
		out = append(out, l.Index)
	}
	return out
}

func release(t *testing.T, p *Pool, idx ...int) {
	t.Helper()
	for _, i := range idx {
		if err := p.Release(p.lease(i).Key()); err != nil {
			t.Fatalf("Release(%d): %v", i, err)
		}
	}
}

func TestUseBlocksRejects(t *testing.T) {
	p := mustPool(t, "10.2.0.0/24")
	for _, size := range []int{-4, 0, 1, 2, 3, 6, 12, 512} {
		if err := p.UseBlocks(size); !errors.Is(err, ErrBadBlock) {
			t.Errorf("UseBlocks(%d) = %v, want ErrBadBlock", size, err)
		}
	}
	if err := p.UseBlocks(256); err != nil {
		t.Errorf("UseBlocks(Size()) = %v", err)
	}
	if err := p.UseBlocks(64); !errors.Is(err, ErrBadBlock) {
		t.Errorf("second UseBlocks = %v, want ErrBadBlock", err)
	}

	p = mustPool(t, "10.2.0.0/24")
	a, _ := p.Allocate()
	if err := p.UseBlocks(64); !errors.Is(err, ErrBadBlock) {
		t.Errorf("UseBlocks after Allocate = %v, want ErrBadBlock", err)
	}
	// Even once the address is released: the pool's cursor has moved.
	if err := p.Release(a); err != nil {
		t.Fatal(err)
	}
	if err := p.UseBlocks(64); !errors.Is(err, ErrBadBlock) {
		t.Errorf("UseBlocks after Allocate and Release = %v, want ErrBadBlock", err)
	}
}

// TestWithoutBlocks checks that the block API is inert on a pool not in
// block mode: nothing to grant, no blocks, and the grow function unused.
func TestWithoutBlocks(t *testing.T) {
	p := mustPool(t, "10.9.0.0/29")
	p.SetGrow(func() bool { t.Error("grow called without block mode"); return false })
	if err := p.Grant(0); !errors.Is(err, ErrBadBlock) {
		t.Errorf("Grant without block mode = %v", err)
	}
	if p.NumBlocks() != 0 || p.BlockOf(2) != -1 || p.BlockCapacity(0) != 0 || len(p.Granted()) != 0 || p.GrantedFree() != 0 {
		t.Errorf("NumBlocks, BlockOf, BlockCapacity, Granted, GrantedFree = %d, %d, %d, %v, %d",
			p.NumBlocks(), p.BlockOf(2), p.BlockCapacity(0), p.Granted(), p.GrantedFree())
	}
	if got := indexes(t, p, 5); !slices.Equal(got, []int{2, 3, 4, 5, 6}) {
		t.Errorf("allocations = %v", got)
	}
	if _, err := p.Allocate(); !errors.Is(err, ErrExhausted) || errors.Is(err, ErrNoBlock) {
		t.Errorf("Allocate on a full pool = %v, want ErrExhausted and not ErrNoBlock", err)
	}
	if l := p.Revoke(0); l != nil {
		t.Errorf("Revoke without block mode = %v", l)
	}
}

func TestBlockGeometry(t *testing.T) {
	for _, tc := range []struct {
		v4, v6 string
		size   int
		caps   []int // BlockCapacity of each block
		of     [][2]int
	}{
		{"10.2.0.0/24", "", 64, []int{62, 64, 64, 63}, [][2]int{{0, 0}, {2, 0}, {63, 0}, {64, 1}, {255, 3}, {256, -1}, {-1, -1}}},
		{"10.2.0.0/24", "", 256, []int{253}, [][2]int{{255, 0}}},
		{"10.9.0.0/29", "", 4, []int{2, 3}, [][2]int{{3, 0}, {4, 1}, {7, 1}, {8, -1}}},
		// Capacity 254 (the /120): indexes 2..255, blocks above have none.
		{"10.2.0.0/22", "2001:db8::/120", 128, []int{126, 128, 0, 0, 0, 0, 0, 0}, [][2]int{{1023, 7}, {300, 2}}},
		{"10.2.0.0/22", "2001:db8::/120", 1024, []int{254}, nil},
		{"10.2.0.0/24", "fd00::/64", 128, []int{126, 127}, nil},
		{"", "2001:db8::/120", 64, []int{62, 64, 64, 64}, [][2]int{{255, 3}, {256, -1}}},
		{"", "2001:db8::/64", 1 << 14, []int{1<<14 - 2, 1 << 14, 1 << 14, 1 << 14}, [][2]int{{MaxSize6 - 1, 3}}},
	} {
		name := fmt.Sprintf("%s+%s/%d", tc.v4, tc.v6, tc.size)
		p := newPool(t, tc.v4, tc.v6)
		mustBlocks(t, p, tc.size)
		if p.NumBlocks() != len(tc.caps) {
			t.Errorf("%s: NumBlocks = %d, want %d", name, p.NumBlocks(), len(tc.caps))
			continue
		}
		sum := 0
		for b, want := range tc.caps {
			if got := p.BlockCapacity(b); got != want {
				t.Errorf("%s: BlockCapacity(%d) = %d, want %d", name, b, got, want)
			}
			err := p.Grant(b)
			if (want == 0) != errors.Is(err, ErrBadBlock) {
				t.Errorf("%s: Grant(%d) of a block with %d client addresses = %v", name, b, want, err)
			}
			sum += want
		}
		if sum != p.Capacity() {
			t.Errorf("%s: blocks hold %d client addresses, Capacity %d", name, sum, p.Capacity())
		}
		if p.GrantedFree() != p.Capacity() {
			t.Errorf("%s: all granted: GrantedFree = %d, Capacity %d", name, p.GrantedFree(), p.Capacity())
		}
		for _, b := range []int{-1, len(tc.caps)} {
			if p.BlockCapacity(b) != 0 {
				t.Errorf("%s: BlockCapacity(%d) = %d", name, b, p.BlockCapacity(b))
			}
			if err := p.Grant(b); !errors.Is(err, ErrBadBlock) {
				t.Errorf("%s: Grant(%d) out of range = %v", name, b, err)
			}
		}
		for _, of := range tc.of {
			if got := p.BlockOf(of[0]); got != of[1] {
				t.Errorf("%s: BlockOf(%d) = %d, want %d", name, of[0], got, of[1])
			}
		}
	}
}

func newPool(t testing.TB, v4, v6 string) *Pool {
	switch {
	case v6 == "":
		return mustPool(t, v4)
	case v4 == "":
		return mustPool6(t, v6)
	}
	return mustDual(t, v4, v6)
}

func TestGrantTwice(t *testing.T) {
	p := mustBlocks(t, mustPool(t, "10.2.0.0/24"), 16, 3)
	if err := p.Grant(3); !errors.Is(err, ErrBadBlock) {
		t.Errorf("Grant of a granted block = %v", err)
	}
	if got := p.Granted(); !slices.Equal(got, []int{3}) {
		t.Errorf("Granted = %v", got)
	}
}

// TestBlockAllocationOrder checks the order: fresh indexes of the lowest
// granted block first, then released ones, oldest release first across
// blocks; and that only granted blocks are used.
func TestBlockAllocationOrder(t *testing.T) {
	p := mustBlocks(t, mustPool(t, "10.2.0.0/24"), 8)
	_, err := p.Allocate()
	if !errors.Is(err, ErrNoBlock) || !errors.Is(err, ErrExhausted) {
		t.Fatalf("Allocate with no block = %v, want ErrNoBlock and ErrExhausted", err)
	}
	if err := p.Grant(3); err != nil {
		t.Fatal(err)
	}
	if got := indexes(t, p, 3); !slices.Equal(got, []int{24, 25, 26}) {
		t.Errorf("block 3 allocations = %v", got)
	}
	if err := p.Grant(1); err != nil {
		t.Fatal(err)
	}
	if p.GrantedFree() != 13 || p.InUse() != 3 {
		t.Errorf("GrantedFree, InUse = %d, %d, want 13, 3", p.GrantedFree(), p.InUse())
	}
	// The lower block's fresh indexes come first, then block 3's.
	if got := indexes(t, p, 13); !slices.Equal(got, []int{8, 9, 10, 11, 12, 13, 14, 15, 27, 28, 29, 30, 31}) {
		t.Errorf("allocations = %v", got)
	}
	if _, err := p.Allocate(); !errors.Is(err, ErrNoBlock) {
		t.Errorf("Allocate with full blocks = %v, want ErrNoBlock", err)
	}
	release(t, p, 29, 10, 24, 15)
	if got := indexes(t, p, 4); !slices.Equal(got, []int{29, 10, 24, 15}) {
		t.Errorf("reuse order = %v", got)
	}
	if got := []int{p.BlockInUse(1), p.BlockInUse(3), p.BlockInUse(2), p.GrantedFree(), p.InUse()}; !slices.Equal(got, []int{8, 8, 0, 0, 16}) {
		t.Errorf("BlockInUse(1, 3, 2), GrantedFree, InUse = %v", got)
	}
	// Block 0 has 6 client indexes (0 and 1 are reserved).
	if err := p.Grant(0); err != nil {
		t.Fatal(err)
	}
	if got := indexes(t, p, 6); !slices.Equal(got, []int{2, 3, 4, 5, 6, 7}) {
		t.Errorf("block 0 allocations = %v", got)
	}
	for _, tc := range []struct {
		addr string
		want error
	}{
		{"10.2.0.1", ErrNotInPool},
		{"10.2.0.40", ErrNotAllocated},  // a block never granted
		{"10.2.0.255", ErrNotInPool},    // broadcast
		{"10.2.0.254", ErrNotAllocated}, // the last block, never granted
		{"10.2.0.24", nil},              // leased
		{"10.2.0.24", ErrNotAllocated},  // twice
		{"10.2.0.9", nil},               // leased
	} {
		if err := p.Release(addr(tc.addr)); !errors.Is(err, tc.want) {
			t.Errorf("Release(%s) = %v, want %v", tc.addr, err, tc.want)
		}
	}
}

// TestRevokeAndRegrant walks a block through revoke, late releases and a
// new grant while old leases are still held: no index is handed out while
// leased, and a revoked block's free indexes are never handed out.
func TestRevokeAndRegrant(t *testing.T) {
	p := mustBlocks(t, mustDual(t, "10.2.0.0/24", "2001:db8::/64"), 8, 2, 5)
	got := indexes(t, p, 6)
	if !slices.Equal(got, []int{16, 17, 18, 19, 20, 21}) {
		t.Fatalf("allocations = %v", got)
	}
	release(t, p, 17, 20)
	held := p.Revoke(2)
	want := []Lease{p.lease(16), p.lease(18), p.lease(19), p.lease(21)}
	if !slices.Equal(held, want) {
		t.Errorf("Revoke(2) = %v, want %v", held, want)
	}
	if !held[0].Addr.IsValid() || !held[0].Addr6.IsValid() {
		t.Errorf("revoked lease %+v lacks an address", held[0])
	}
	if l := p.Revoke(2); l != nil {
		t.Errorf("second Revoke(2) = %v", l)
	}
	if p.InUse() != 4 || p.BlockInUse(2) != 4 || !slices.Equal(p.Granted(), []int{5}) || p.GrantedFree() != 8 {
		t.Errorf("after revoke: InUse %d, BlockInUse(2) %d, Granted %v, GrantedFree %d", p.InUse(), p.BlockInUse(2), p.Granted(), p.GrantedFree())
	}
	// Block 2's free indexes (17 and 20 in the released ring, 22 and 23
	// fresh) are not handed out any more.
	if got := indexes(t, p, 8); !slices.Equal(got, []int{40, 41, 42, 43, 44, 45, 46, 47}) {
		t.Errorf("allocations after revoke = %v", got)
	}
	if _, err := p.Allocate(); !errors.Is(err, ErrNoBlock) {
		t.Errorf("Allocate = %v, want ErrNoBlock", err)
	}
	// A late release of a revoked lease forgets it.
	release(t, p, 16)
	if _, err := p.Allocate(); !errors.Is(err, ErrNoBlock) {
		t.Errorf("Allocate after a revoked lease's release = %v, want ErrNoBlock", err)
	}
	if err := p.Release(p.lease(16).Addr6); !errors.Is(err, ErrNotAllocated) {
		t.Errorf("second release of a revoked lease = %v", err)
	}
	// Granted again while 18, 19 and 21 are held: they are skipped. 19 is
	// released before the cursor reaches it, so the cursor hands it out;
	// 18 after, so it goes to the back of the released ring.
	if err := p.Grant(2); err != nil {
		t.Fatal(err)
	}
	if p.GrantedFree() != 5 || p.BlockInUse(2) != 3 {
		t.Errorf("regranted: GrantedFree %d, BlockInUse(2) %d, want 5, 3", p.GrantedFree(), p.BlockInUse(2))
	}
	if got := indexes(t, p, 2); !slices.Equal(got, []int{16, 17}) {
		t.Errorf("allocations = %v", got)
	}
	release(t, p, 19)
	if got := indexes(t, p, 1); !slices.Equal(got, []int{19}) {
		t.Errorf("allocations = %v", got)
	}
	release(t, p, 43, 17, 18)
	if got := indexes(t, p, 5); !slices.Equal(got, []int{20, 22, 23, 43, 17}) {
		t.Errorf("allocations = %v", got)
	}
	if got := indexes(t, p, 1); !slices.Equal(got, []int{18}) {
		t.Errorf("allocations = %v", got)
	}
	if _, err := p.Allocate(); !errors.Is(err, ErrNoBlock) {
		t.Errorf("Allocate = %v, want ErrNoBlock", err)
	}
	// A block revoked with no lease left is forgotten; granted again it
	// starts from its first index.
	held = p.Revoke(5)
	release(t, p, 40, 41, 42, 43, 44, 45, 46, 47)
	if len(held) != 8 || p.BlockInUse(5) != 0 || p.InUse() != 8 {
		t.Errorf("revoked block 5: %d held, BlockInUse %d, InUse %d", len(held), p.BlockInUse(5), p.InUse())
	}
	if err := p.Grant(5); err != nil {
		t.Fatal(err)
	}
	if got := indexes(t, p, 2); !slices.Equal(got, []int{40, 41}) {
		t.Errorf("allocations = %v", got)
	}
}

// TestGrow checks that an allocation that finds the granted blocks full
// calls the grow function without the lock (it grants here) and tries
// once more; and fails with ErrNoBlock when it reports false.
func TestGrow(t *testing.T) {
	p := mustBlocks(t, mustPool6(t, "2001:db8::/120"), 64)
	calls := 0
	next := 0
	p.SetGrow(func() bool {
		calls++
		if p.GrantedFree() != 0 { // takes the lock: it must not be held
			t.Errorf("grow called with %d free", p.GrantedFree())
		}
		if next == p.NumBlocks() {
			return false
		}
		if err := p.Grant(next); err != nil {
			t.Error(err)
		}
		next++
		return true
	})
	for i := 2; i < 256; i++ {
		a, err := p.Allocate()
		if want, _ := p.Addr6(i); err != nil || a != want {
			t.Fatalf("allocation %d = %v, %v, want %v", i, a, err, want)
		}
	}
	if calls != 4 {
		t.Errorf("grow called %d times for 4 blocks", calls)
	}
	if _, err := p.Allocate(); !errors.Is(err, ErrNoBlock) || calls != 5 {
		t.Errorf("Allocate on a full pool = %v after %d calls", err, calls)
	}
	// A grow that reports true without granting anything: one retry only.
	p.SetGrow(func() bool { calls++; return true })
	if _, err := p.Allocate(); !errors.Is(err, ErrNoBlock) || calls != 6 {
		t.Errorf("Allocate with a lying grow = %v after %d calls", err, calls)
	}
	p.SetGrow(nil)
	if _, err := p.Allocate(); !errors.Is(err, ErrNoBlock) || calls != 6 {
		t.Errorf("Allocate without grow = %v after %d calls", err, calls)
	}
}

// TestBlockAllocs checks that block mode keeps allocation and release free
// of heap allocations once the ring has grown.
func TestBlockAllocs(t *testing.T) {
	p := mustBlocks(t, mustDual(t, "10.2.0.0/22", "2001:db8::/64"), 64, 1, 3, 5)
	var warm []netip.Addr
	for range 100 {
		a, err := p.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		warm = append(warm, a)
	}
	for _, a := range warm {
		if err := p.Release(a); err != nil {
			t.Fatal(err)
		}
	}
	if n := testing.AllocsPerRun(100, func() {
		l, err := p.AllocateLease()
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Release(l.Addr6); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("AllocateLease+Release allocates %v times", n)
	}
}

// blockModel is the slow model of a pool in block mode: a set of leased
// indexes, a set of granted blocks with each one's fresh cursor, and a FIFO
// slice of released indexes, all by plain loops over indexes.
type blockModel struct {
	size, capacity, blockSize int
	leased                    map[int]bool
	cursor                    map[int]int // granted block -> next index the fresh cursor looks at
	fifo                      []int
}

func newBlockModel(p *Pool, blockSize int) *blockModel {
	return &blockModel{size: p.Size(), capacity: p.Capacity(), blockSize: blockSize, leased: map[int]bool{}, cursor: map[int]int{}}
}

func (m *blockModel) client(i int) bool { return i >= 2 && i < 2+m.capacity }

// indexes returns block b's client indexes.
func (m *blockModel) indexes(b int) []int {
	var out []int
	for i := b * m.blockSize; i < (b+1)*m.blockSize; i++ {
		if m.client(i) {
			out = append(out, i)
		}
	}
	return out
}

func (m *blockModel) granted() []int {
	var out []int
	for b := range m.cursor {
		out = append(out, b)
	}
	slices.Sort(out)
	return out
}

func (m *blockModel) free() int {
	n := 0
	for b := range m.cursor {
		for _, i := range m.indexes(b) {
			if !m.leased[i] {
				n++
			}
		}
	}
	return n
}

func (m *blockModel) grant(b int) { m.cursor[b] = b * m.blockSize }

func (m *blockModel) alloc() (int, bool) {
	for _, b := range m.granted() {
		for ; m.cursor[b] < (b+1)*m.blockSize; m.cursor[b]++ {
			if i := m.cursor[b]; m.client(i) && !m.leased[i] {
				m.cursor[b]++
				m.leased[i] = true
				return i, true
			}
		}
	}
	if len(m.fifo) == 0 {
		return 0, false
	}
	i := m.fifo[0]
	m.fifo = m.fifo[1:]
	m.leased[i] = true
	return i, true
}

func (m *blockModel) release(i int) {
	delete(m.leased, i)
	if c, ok := m.cursor[i/m.blockSize]; ok && i < c {
		m.fifo = append(m.fifo, i)
	}
}

func (m *blockModel) revoke(b int) []int {
	if _, ok := m.cursor[b]; !ok {
		return nil
	}
	delete(m.cursor, b)
	m.fifo = slices.DeleteFunc(m.fifo, func(i int) bool { return i/m.blockSize == b })
	var held []int
	for _, i := range m.indexes(b) {
		if m.leased[i] {
			held = append(held, i)
		}
	}
	return held
}

// blockDifferential drives p, in block mode with blocks of size, and the
// model with ops operations chosen by pick(n), which returns 0..n-1, and
// fails t on the first difference. Besides the model's exact order it
// checks the properties on their own: no index handed out while leased,
// only granted blocks' indexes handed out, InUse the number leased.
func blockDifferential(t testing.TB, p *Pool, size int, pick func(n int) int, ops int) {
	t.Helper()
	if err := p.UseBlocks(size); err != nil {
		t.Fatal(err)
	}
	m := newBlockModel(p, size)
	nb := p.NumBlocks()
	if nb != m.size/size {
		t.Fatalf("NumBlocks = %d, want %d", nb, m.size/size)
	}
	var held []Lease // every lease the caller holds, granted block or not
	growCalls := 0
	growMode := 0 // 0: none, 1: grants the lowest block it can, 2: reports false
	setGrow := func() {
		switch growMode {
		case 0:
			p.SetGrow(nil)
		case 1:
			p.SetGrow(func() bool {
				growCalls++
				for b := range nb {
					if _, ok := m.cursor[b]; !ok && len(m.indexes(b)) > 0 {
						if err := p.Grant(b); err != nil {
							t.Fatalf("grow: Grant(%d) = %v", b, err)
						}
						m.grant(b)
						return true
					}
				}
				return false
			})
		case 2:
			p.SetGrow(func() bool { growCalls++; return false })
		}
	}
	for op := range ops {
		switch k := pick(100); {
		case k < 45 || len(held) == 0 && k < 80:
			// The model tries first, as the pool does before it calls
			// grow (that first try moves fresh cursors past held indexes),
			// and once more after grow.
			want, ok := m.alloc()
			full := !ok
			growCalls = 0
			l, err := p.AllocateLease()
			if wantCalls := 0; full && growMode != 0 {
				wantCalls = 1
				if growCalls != wantCalls {
					t.Fatalf("op %d: grow called %d times, want %d", op, growCalls, wantCalls)
				}
			} else if growCalls != 0 {
				t.Fatalf("op %d: grow called with %d free", op, m.free())
			}
			if err == nil {
				if m.leased[l.Index] && !(ok && l.Index == want) {
					t.Fatalf("op %d: index %d handed out while leased", op, l.Index)
				}
				if _, ok := m.cursor[p.BlockOf(l.Index)]; !ok || l.Index/size != p.BlockOf(l.Index) {
					t.Fatalf("op %d: index %d of block %d, granted %v", op, l.Index, p.BlockOf(l.Index), m.granted())
				}
			}
			if full && growCalls > 0 {
				want, ok = m.alloc()
			}
			switch {
			case !ok && !errors.Is(err, ErrNoBlock):
				t.Fatalf("op %d: AllocateLease with no free index = %+v, %v", op, l, err)
			case ok && (err != nil || l != p.lease(want)):
				t.Fatalf("op %d: AllocateLease = %+v, %v, model %d", op, l, err, want)
			case ok:
				held = append(held, l)
			}
		case k < 80:
			j := pick(len(held))
			l := held[j]
			held[j] = held[len(held)-1]
			held = held[:len(held)-1]
			a := l.Key()
			if l.Addr6.IsValid() && pick(2) == 0 {
				a = l.Addr6
			}
			if err := p.Release(a); err != nil {
				t.Fatalf("op %d: Release(%v) = %v", op, a, err)
			}
			m.release(l.Index)
			if err := p.Release(a); !errors.Is(err, ErrNotAllocated) {
				t.Fatalf("op %d: second Release(%v) = %v", op, a, err)
			}
		case k < 88:
			b := pick(nb+1) - 1 // -1..nb-1
			err := p.Grant(b)
			_, granted := m.cursor[b]
			if bad := b < 0 || granted || len(m.indexes(b)) == 0; bad != errors.Is(err, ErrBadBlock) || !bad && err != nil {
				t.Fatalf("op %d: Grant(%d) = %v (granted %v)", op, b, err, m.granted())
			}
			if err == nil {
				m.grant(b)
			}
		case k < 94:
			b := pick(nb)
			if g := m.granted(); len(g) > 0 && pick(4) != 0 {
				b = g[pick(len(g))] // mostly revoke a granted block
			}
			got := p.Revoke(b)
			want := m.revoke(b)
			if len(got) != len(want) {
				t.Fatalf("op %d: Revoke(%d) = %v, model %v", op, b, got, want)
			}
			for j, i := range want {
				if got[j] != p.lease(i) {
					t.Fatalf("op %d: Revoke(%d) = %v, model %v", op, b, got, want)
				}
			}
		case k < 97:
			growMode = pick(3)
			setGrow()
		default:
			i := pick(m.size)
			if m.leased[i] {
				continue
			}
			if a := p.lease(i).Key(); a.IsValid() {
				want := ErrNotAllocated
				if !m.client(i) {
					want = ErrNotInPool
				}
				if err := p.Release(a); !errors.Is(err, want) {
					t.Fatalf("op %d: Release(%v) of a free index = %v, want %v", op, a, err, want)
				}
			}
		}
		if p.InUse() != len(m.leased) || len(held) != len(m.leased) {
			t.Fatalf("op %d: InUse %d, held %d, model %d", op, p.InUse(), len(held), len(m.leased))
		}
		if p.GrantedFree() != m.free() || !slices.Equal(p.Granted(), m.granted()) {
			t.Fatalf("op %d: GrantedFree %d, Granted %v, model %d, %v", op, p.GrantedFree(), p.Granted(), m.free(), m.granted())
		}
		if b := pick(nb); p.BlockInUse(b) != len(slices.DeleteFunc(m.indexes(b), func(i int) bool { return !m.leased[i] })) {
			t.Fatalf("op %d: BlockInUse(%d) = %d", op, b, p.BlockInUse(b))
		}
	}
}

// blockPools are the pools the differential and fuzz tests run over, with
// their block size: IPv4, dual stack (one with blocks beyond the IPv6
// block's capacity), IPv6-only.
var blockPools = []struct {
	v4, v6 string
	size   int
}{
	{"10.9.0.0/29", "", 4},
	{"10.2.0.0/26", "", 8},
	{"10.2.0.0/24", "", 32},
	{"10.2.0.0/24", "2001:db8::/64", 16},
	{"10.2.0.0/23", "2001:db8::/120", 64},
	{"10.9.0.0/29", "2001:db8::/120", 8},
	{"", "2001:db8::/120", 16},
	{"", "2001:db8::/118", 256},
}

func TestBlockDifferential(t *testing.T) {
	for k, tc := range blockPools {
		t.Run(fmt.Sprintf("%s+%s/%d", tc.v4, tc.v6, tc.size), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, uint64(k)))
			blockDifferential(t, newPool(t, tc.v4, tc.v6), tc.size, rng.IntN, 10000)
		})
	}
}

// FuzzBlocks runs the differential test over an operation sequence read
// from the input: its first byte picks the pool, each further byte one
// choice.
func FuzzBlocks(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 90, 4, 50, 95, 0, 0})
	f.Add([]byte{4, 85, 3, 10, 10, 10, 90, 0, 60, 1, 85, 3, 10, 10})
	f.Add([]byte{7, 96, 1, 10, 10, 10, 10, 10, 10, 10, 99, 42})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) == 0 || len(ops) > 128 { // longer adds time, not cases: the smoke run gives each target 50,000 inputs
			return
		}
		tc := blockPools[int(ops[0])%len(blockPools)]
		ops = ops[1:]
		n := len(ops)
		pick := func(k int) int {
			if len(ops) == 0 {
				return 0
			}
			v := int(ops[0]) % k
			ops = ops[1:]
			return v
		}
		blockDifferential(t, newPool(t, tc.v4, tc.v6), tc.size, pick, n)
	})
}

// TestBlocksConcurrent allocates and releases from several goroutines
// while another revokes and grants blocks and a grow function grants more:
// run with -race. Every index is handed to one holder at a time.
func TestBlocksConcurrent(t *testing.T) {
	p := mustBlocks(t, mustDual(t, "10.2.0.0/24", "2001:db8::/64"), 16, 0)
	var growMu sync.Mutex
	p.SetGrow(func() bool {
		growMu.Lock()
		defer growMu.Unlock()
		for b := range p.NumBlocks() {
			if p.Grant(b) == nil {
				return true
			}
		}
		return false
	})
	var holders sync.Map // index -> struct{}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			var mine []Lease
			for range 3000 {
				if len(mine) < 40 && rng.IntN(2) == 0 {
					l, err := p.AllocateLease()
					if err != nil {
						if !errors.Is(err, ErrExhausted) {
							errs <- err
							return
						}
						continue
					}
					if _, dup := holders.LoadOrStore(l.Index, struct{}{}); dup {
						errs <- fmt.Errorf("index %d handed out twice", l.Index)
						return
					}
					mine = append(mine, l)
				} else if len(mine) > 0 {
					k := rng.IntN(len(mine))
					l := mine[k]
					mine = slices.Delete(mine, k, k+1)
					holders.Delete(l.Index) // before Release, which lets another take it
					if err := p.Release(l.Addr6); err != nil {
						errs <- err
						return
					}
				}
			}
			for _, l := range mine {
				holders.Delete(l.Index)
				if err := p.Release(l.Addr); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var revoker sync.WaitGroup
	revoker.Add(1)
	go func() {
		defer revoker.Done()
		rng := rand.New(rand.NewPCG(99, 9))
		for {
			select {
			case <-stop:
				return
			default:
			}
			growMu.Lock()
			if g := p.Granted(); len(g) > 1 {
				p.Revoke(g[rng.IntN(len(g))])
			}
			growMu.Unlock()
			_ = p.GrantedFree()
		}
	}()
	wg.Wait()
	close(stop)
	revoker.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if p.InUse() != 0 {
		t.Errorf("InUse = %d after every lease was released", p.InUse())
	}
	for _, b := range p.Granted() {
		if l := p.Revoke(b); l != nil {
			t.Errorf("Revoke(%d) = %v after every lease was released", b, l)
		}
	}
	for b := range p.NumBlocks() {
		if p.BlockInUse(b) != 0 {
			t.Errorf("BlockInUse(%d) = %d", b, p.BlockInUse(b))
		}
	}
	if p.GrantedFree() != 0 || len(p.Granted()) != 0 {
		t.Errorf("GrantedFree, Granted = %d, %v after revoking all", p.GrantedFree(), p.Granted())
	}
}

// BenchmarkAllocateReleaseBlocks is BenchmarkAllocateRelease in block mode
// with 256 granted blocks of 256, all fresh indexes used, so allocations
// come from the released ring after passing the blocks' exhausted fresh
// cursors (which freshFrom skips).
func BenchmarkAllocateReleaseBlocks(b *testing.B) {
	p := mustPool(b, "10.16.0.0/12")
	mustBlocks(b, p, 256)
	for blk := 1; blk <= 256; blk++ {
		if err := p.Grant(blk); err != nil {
			b.Fatal(err)
		}
	}
	for range 256 * 256 {
		if _, err := p.Allocate(); err != nil {
			b.Fatal(err)
		}
	}
	for i := 300; i < 1300; i++ {
		if err := p.Release(p.lease(i).Addr); err != nil {
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
	b.ReportMetric(float64(len(p.Granted())), "granted-blocks")
}
