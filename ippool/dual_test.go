package ippool

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func mustDual(t testing.TB, v4, v6 string) *Pool {
	t.Helper()
	p, err := NewDual(pfx(v4), pfx(v6))
	if err != nil {
		t.Fatalf("NewDual(%s, %s): %v", v4, v6, err)
	}
	return p
}

func mustPool6(t testing.TB, v6 string) *Pool {
	t.Helper()
	p, err := New6(pfx(v6))
	if err != nil {
		t.Fatalf("New6(%s): %v", v6, err)
	}
	return p
}

func TestNewDualRejects(t *testing.T) {
	for _, s := range []string{
		"2001:db8::/63",       // too large
		"2001:db8::/121",      // too small
		"2001:db8::1/128",     // too small
		"2001:db8::1/64",      // not masked
		"10.2.0.0/24",         // IPv4
		"::ffff:10.2.0.0/120", // IPv4-mapped
		"ff02::/64",           // multicast
		"fe80::/64",           // link-local
		"::/64",               // holds the unspecified and loopback addresses
	} {
		_, err := NewDual(pfx("10.2.0.0/22"), pfx(s))
		if !errors.Is(err, ErrBadPrefix) || !strings.Contains(err.Error(), "client_ipv6_cidr_block") {
			t.Errorf("NewDual(10.2.0.0/22, %s) = %v, want ErrBadPrefix naming client_ipv6_cidr_block", s, err)
		}
		if _, err := New6(pfx(s)); !errors.Is(err, ErrBadPrefix) {
			t.Errorf("New6(%s) = %v, want ErrBadPrefix", s, err)
		}
	}
	if _, err := NewDual(netip.Prefix{}, pfx("2001:db8::/64")); !errors.Is(err, ErrBadPrefix) {
		t.Errorf("NewDual without IPv4 = %v, want ErrBadPrefix", err)
	}
	if _, err := NewDual(pfx("10.2.0.0/30"), pfx("2001:db8::/64")); !errors.Is(err, ErrBadPrefix) {
		t.Errorf("NewDual with a /30 = %v, want ErrBadPrefix", err)
	}
	if _, err := New6(netip.Prefix{}); !errors.Is(err, ErrBadPrefix) {
		t.Errorf("New6(zero) = %v, want ErrBadPrefix", err)
	}
	for _, s := range []string{"2001:db8::/64", "fd00:1:2:3::/64", "2001:db8::ff00/120", "2001:db8::/112"} {
		if _, err := New6(pfx(s)); err != nil {
			t.Errorf("New6(%s) = %v", s, err)
		}
	}
}

func TestDualGeometry(t *testing.T) {
	p := mustDual(t, "10.2.0.0/22", "2001:db8:1:2::/64")
	if p.Size() != 1024 || p.Capacity() != 1021 {
		t.Errorf("Size, Capacity = %d, %d, want 1024, 1021", p.Size(), p.Capacity())
	}
	if p.Prefix() != pfx("10.2.0.0/22") || p.Prefix6() != pfx("2001:db8:1:2::/64") {
		t.Errorf("Prefix, Prefix6 = %v, %v", p.Prefix(), p.Prefix6())
	}
	if p.Gateway() != addr("10.2.0.1") || p.Gateway6() != addr("2001:db8:1:2::1") {
		t.Errorf("Gateway, Gateway6 = %v, %v", p.Gateway(), p.Gateway6())
	}
	for _, tc := range []struct {
		addr string
		idx  int
		ok   bool
	}{
		{"10.2.0.1", 1, true},
		{"10.2.3.255", 1023, true},
		{"2001:db8:1:2::", 0, true}, // the anycast address, twin of the network address
		{"2001:db8:1:2::1", 1, true},
		{"2001:db8:1:2::100", 256, true},
		{"2001:db8:1:2::3ff", 1023, true},
		{"2001:db8:1:2::400", 0, false}, // in the block, beyond the index space
		{"2001:db8:1:2:ffff:ffff:ffff:ffff", 0, false},
		{"2001:db8:1:3::1", 0, false},
		{"2001:db8:1:1:ffff:ffff:ffff:ffff", 0, false},
		{"2001:db8:1:2::1%eth0", 0, false},
		{"::ffff:10.2.0.5", 0, false},
	} {
		idx, ok := p.Index(addr(tc.addr))
		if idx != tc.idx || ok != tc.ok {
			t.Errorf("Index(%s) = %d, %v, want %d, %v", tc.addr, idx, ok, tc.idx, tc.ok)
		}
	}
	for _, tc := range []struct {
		i         int
		v4, v6    string
		ok4, ok6  bool
		roundTrip bool
	}{
		{0, "10.2.0.0", "2001:db8:1:2::", true, true, true},
		{513, "10.2.2.1", "2001:db8:1:2::201", true, true, true},
		{1023, "10.2.3.255", "2001:db8:1:2::3ff", true, true, true},
		{1024, "", "", false, false, false},
		{-1, "", "", false, false, false},
	} {
		a4, ok4 := p.Addr(tc.i)
		a6, ok6 := p.Addr6(tc.i)
		if ok4 != tc.ok4 || ok6 != tc.ok6 || (ok4 && a4 != addr(tc.v4)) || (ok6 && a6 != addr(tc.v6)) {
			t.Errorf("Addr, Addr6(%d) = %v %v, %v %v", tc.i, a4, ok4, a6, ok6)
		}
		if tc.roundTrip {
			if i, _ := p.Index(a6); i != tc.i {
				t.Errorf("Index(Addr6(%d)) = %d", tc.i, i)
			}
		}
	}
}

// TestDualCapacityIsSmallerFamily checks the capacity rule and that no
// lease gets an address outside either family's usable range.
func TestDualCapacityIsSmallerFamily(t *testing.T) {
	for _, tc := range []struct {
		v4, v6       string
		size, cap    int
		span6        uint64
		last4, last6 string
	}{
		{"10.2.0.0/22", "2001:db8::/120", 1024, 254, 256, "10.2.0.255", "2001:db8::ff"},
		{"10.2.0.0/24", "2001:db8::/120", 256, 253, 256, "10.2.0.254", "2001:db8::fe"},
		{"10.2.0.0/29", "2001:db8::/120", 8, 5, 8, "10.2.0.6", "2001:db8::6"},
		{"10.0.0.0/8", "2001:db8::/64", 1 << 24, 1<<24 - 3, 1 << 24, "10.255.255.254", "2001:db8::ff:fffe"},
	} {
		p := mustDual(t, tc.v4, tc.v6)
		if p.Size() != tc.size || p.Capacity() != tc.cap || p.span6 != tc.span6 {
			t.Errorf("%s + %s: Size, Capacity, span6 = %d, %d, %d, want %d, %d, %d",
				tc.v4, tc.v6, p.Size(), p.Capacity(), p.span6, tc.size, tc.cap, tc.span6)
			continue
		}
		if p.Size() > 1<<12 {
			continue // too many to allocate here; the geometry is checked
		}
		var last Lease
		for i := range p.Capacity() {
			l, err := p.AllocateLease()
			if err != nil {
				t.Fatalf("%s + %s: lease %d: %v", tc.v4, tc.v6, i, err)
			}
			i4, _ := p.Index(l.Addr)
			i6, _ := p.Index(l.Addr6)
			if l.Index != i+2 || i4 != l.Index || i6 != l.Index {
				t.Fatalf("%s + %s: lease %d = %+v, Index of its addresses %d, %d", tc.v4, tc.v6, i, l, i4, i6)
			}
			last = l
		}
		if last.Addr != addr(tc.last4) || last.Addr6 != addr(tc.last6) {
			t.Errorf("%s + %s: last lease %+v, want %s, %s", tc.v4, tc.v6, last, tc.last4, tc.last6)
		}
		if l, err := p.AllocateLease(); !errors.Is(err, ErrExhausted) {
			t.Errorf("%s + %s: lease beyond capacity = %+v, %v", tc.v4, tc.v6, l, err)
		}
		if _, err := p.Allocate(); !errors.Is(err, ErrExhausted) {
			t.Errorf("%s + %s: Allocate beyond capacity = %v", tc.v4, tc.v6, err)
		}
	}
}

func TestIPv6Only(t *testing.T) {
	for _, tc := range []struct {
		v6   string
		size int
	}{
		{"2001:db8::/120", 256},
		{"2001:db8::/113", 1 << 15},
		{"2001:db8::/112", 1 << 16},
		{"2001:db8::/64", MaxSize6},
	} {
		p := mustPool6(t, tc.v6)
		if p.Size() != tc.size || p.Capacity() != tc.size-2 {
			t.Errorf("%s: Size, Capacity = %d, %d, want %d, %d", tc.v6, p.Size(), p.Capacity(), tc.size, tc.size-2)
		}
		if p.Prefix().IsValid() || p.Gateway().IsValid() || p.Gateway6() != addr("2001:db8::1") {
			t.Errorf("%s: Prefix, Gateway, Gateway6 = %v, %v, %v", tc.v6, p.Prefix(), p.Gateway(), p.Gateway6())
		}
		if _, ok := p.Addr(2); ok {
			t.Errorf("%s: Addr(2) ok in an IPv6-only pool", tc.v6)
		}
		if _, ok := p.Index(addr("0.0.0.2")); ok {
			t.Errorf("%s: Index of an IPv4 address ok", tc.v6)
		}
		last, _ := p.Addr6(tc.size - 1)
		if i, ok := p.Index(last); !ok || i != tc.size-1 {
			t.Errorf("%s: Index(%v) = %d, %v", tc.v6, last, i, ok)
		}
		if _, ok := p.Index(last.Next()); ok {
			t.Errorf("%s: Index(%v) beyond the index space ok", tc.v6, last.Next())
		}
	}

	p := mustPool6(t, "2001:db8::/120")
	for i := 2; i < 256; i++ {
		var a netip.Addr
		var err error
		if i%2 == 0 {
			a, err = p.Allocate()
		} else {
			var l Lease
			l, err = p.AllocateLease()
			if l.Addr.IsValid() || l.Index != i {
				t.Fatalf("lease %+v in an IPv6-only pool", l)
			}
			a = l.Addr6
		}
		if want, _ := p.Addr6(i); err != nil || a != want {
			t.Fatalf("allocation %d = %v, %v, want %v", i, a, err, want)
		}
	}
	if _, err := p.Allocate(); !errors.Is(err, ErrExhausted) {
		t.Errorf("Allocate on a full /120 = %v", err)
	}
	for _, s := range []string{"2001:db8::", "2001:db8::1", "2001:db8::100"} {
		if err := p.Release(addr(s)); !errors.Is(err, ErrNotInPool) {
			t.Errorf("Release(%s) = %v, want ErrNotInPool", s, err)
		}
	}
	if err := p.Release(addr("2001:db8::ff")); err != nil {
		t.Fatal(err)
	}
	if a, err := p.Allocate(); err != nil || a != addr("2001:db8::ff") {
		t.Errorf("Allocate after release = %v, %v", a, err)
	}
}

// TestReleaseByEitherAddress checks that a dual-stack lease is one lease:
// releasing it by one address frees the other.
func TestReleaseByEitherAddress(t *testing.T) {
	p := mustDual(t, "10.2.0.0/24", "fd00:1::/64")
	l1, _ := p.AllocateLease()
	l2, _ := p.AllocateLease()
	if err := p.Release(l1.Addr6); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(l1.Addr); !errors.Is(err, ErrNotAllocated) {
		t.Errorf("Release of the IPv4 twin after the IPv6 one = %v", err)
	}
	if err := p.Release(l2.Addr); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(l2.Addr6); !errors.Is(err, ErrNotAllocated) {
		t.Errorf("Release of the IPv6 twin after the IPv4 one = %v", err)
	}
	if p.InUse() != 0 {
		t.Errorf("InUse = %d", p.InUse())
	}
	for _, s := range []string{"fd00:1::", "fd00:1::1", "fd00:1::ff", "fd00:1::100", "fd00:2::5"} {
		if err := p.Release(addr(s)); !errors.Is(err, ErrNotInPool) {
			t.Errorf("Release(%s) = %v, want ErrNotInPool", s, err)
		}
	}
}

// TestDifferentialFamilies is TestDifferential for dual-stack and
// IPv6-only pools: the model is a FIFO of free indexes, and each release
// names the lease by a randomly chosen family.
func TestDifferentialFamilies(t *testing.T) {
	for _, tc := range []struct{ v4, v6 string }{
		{"10.9.0.0/29", "2001:db8::/120"},
		{"10.2.0.0/22", "2001:db8::/120"},
		{"10.2.0.0/24", "fd00::/64"},
		{"", "2001:db8::/120"},
		{"", "2001:db8::/116"},
	} {
		t.Run(tc.v4+"+"+tc.v6, func(t *testing.T) {
			var p *Pool
			if tc.v4 == "" {
				p = mustPool6(t, tc.v6)
			} else {
				p = mustDual(t, tc.v4, tc.v6)
			}
			differential(t, p, rand.New(rand.NewPCG(3, uint64(p.Size()))), 30000)
		})
	}
}

// differential drives p and a model with ops random operations and fails
// t on the first difference.
func differential(t testing.TB, p *Pool, rng *rand.Rand, ops int) {
	var free []int
	for i := 2; i < 2+p.Capacity(); i++ {
		free = append(free, i)
	}
	var leased []Lease
	for op := range ops {
		if rng.IntN(100) < 55 || len(leased) == 0 {
			l, err := p.AllocateLease()
			if len(free) == 0 {
				if !errors.Is(err, ErrExhausted) {
					t.Fatalf("op %d: AllocateLease on a full pool = %+v, %v", op, l, err)
				}
				continue
			}
			want := Lease{Index: free[0]}
			want.Addr, _ = p.Addr(free[0])
			want.Addr6, _ = p.Addr6(free[0])
			if err != nil || l != want {
				t.Fatalf("op %d: AllocateLease = %+v, %v, model %+v", op, l, err, want)
			}
			if p.Prefix().IsValid() != l.Addr.IsValid() || p.Prefix6().IsValid() != l.Addr6.IsValid() {
				t.Fatalf("op %d: lease %+v lacks a family of the pool", op, l)
			}
			for _, a := range []netip.Addr{l.Addr, l.Addr6} {
				if i, ok := p.Index(a); a.IsValid() && (!ok || i != l.Index) {
					t.Fatalf("op %d: Index(%v) = %d, %v, lease %d", op, a, i, ok, l.Index)
				}
			}
			free = free[1:]
			leased = append(leased, l)
		} else {
			k := rng.IntN(len(leased))
			l := leased[k]
			leased[k] = leased[len(leased)-1]
			leased = leased[:len(leased)-1]
			a, other := l.Addr, l.Addr6
			if !a.IsValid() || (other.IsValid() && rng.IntN(2) == 0) {
				a, other = other, a
			}
			if err := p.Release(a); err != nil {
				t.Fatalf("op %d: Release(%v) = %v", op, a, err)
			}
			free = append(free, l.Index)
			if other.IsValid() {
				if err := p.Release(other); !errors.Is(err, ErrNotAllocated) {
					t.Fatalf("op %d: Release of the twin %v = %v", op, other, err)
				}
			}
		}
		if p.InUse() != len(leased) || p.leasedCount() != len(leased) {
			t.Fatalf("op %d: InUse %d, bitmap %d, model %d", op, p.InUse(), p.leasedCount(), len(leased))
		}
	}
}

// TestAllocs checks that Index, Allocate, AllocateLease and Release do not
// allocate once the pool's bitmap and release ring have grown (they grow
// with the high-water mark, not per call).
func TestAllocs(t *testing.T) {
	for _, p := range []*Pool{
		mustPool(t, "10.2.0.0/22"),
		mustDual(t, "10.2.0.0/22", "2001:db8:1:2::/64"),
		mustPool6(t, "2001:db8:1:2::/64"),
	} {
		var warm []netip.Addr
		for range 100 {
			a, err := p.Allocate()
			if err != nil {
				t.Fatal(err)
			}
			warm = append(warm, a)
		}
		for _, a := range warm[:50] {
			if err := p.Release(a); err != nil {
				t.Fatal(err)
			}
		}
		a4, _ := p.Addr(77)
		a6, _ := p.Addr6(77)
		if n := testing.AllocsPerRun(100, func() { p.Index(a4); p.Index(a6) }); n != 0 {
			t.Errorf("%v %v: Index allocates %v times", p.Prefix(), p.Prefix6(), n)
		}
		if n := testing.AllocsPerRun(100, func() {
			a, err := p.Allocate()
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Release(a); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("%v %v: Allocate+Release allocates %v times", p.Prefix(), p.Prefix6(), n)
		}
		if n := testing.AllocsPerRun(100, func() {
			l, err := p.AllocateLease()
			if err != nil {
				t.Fatal(err)
			}
			a := l.Addr6
			if !a.IsValid() {
				a = l.Addr
			}
			if err := p.Release(a); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("%v %v: AllocateLease+Release allocates %v times", p.Prefix(), p.Prefix6(), n)
		}
	}
}

// FuzzPool drives pools of every kind, shaped by the input, through the
// differential model, and checks Index on addresses the input builds.
func FuzzPool(f *testing.F) {
	f.Add(byte(0), byte(29), byte(120), uint64(1), []byte{0x01, 0xff, 0x10})
	f.Add(byte(1), byte(22), byte(64), uint64(2), []byte{0x00, 0x00, 0x03, 0xff})
	f.Add(byte(2), byte(0), byte(118), uint64(3), []byte{0x00, 0x01, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, mode, bits4, bits6 byte, seed uint64, probe []byte) {
		// Keep pools small enough to fill: IPv4 /22../29, IPv6 /64../120
		// (IPv6-only pools /116../120).
		v4 := netip.PrefixFrom(addr("10.20.0.0"), 22+int(bits4)%8).Masked()
		v6 := netip.PrefixFrom(addr("2001:db8:ff:1::"), 64+int(bits6)%57)
		var p *Pool
		var err error
		switch mode % 3 {
		case 0:
			p, err = New(v4)
		case 1:
			p, err = NewDual(v4, v6)
		default:
			v6 = netip.PrefixFrom(v6.Addr(), 116+int(bits6)%5)
			p, err = New6(v6)
		}
		if err != nil {
			t.Fatal(err)
		}
		// Any address near either base: Index and Addr/Addr6 agree, and the
		// index is in range.
		for b := probe; len(b) >= 4; b = b[4:] {
			var a netip.Addr
			if b[0]&1 == 0 {
				a = netip.AddrFrom4([4]byte{10, 20 ^ b[0]>>4, b[2], b[3]})
			} else {
				x := v6.Addr().As16()
				x[7] ^= b[1] >> 4
				x[12] ^= b[1] & 0xf
				x[14], x[15] = b[2], b[3]
				a = netip.AddrFrom16(x)
			}
			i, ok := p.Index(a)
			var back netip.Addr
			if a.Is4() {
				back, _ = p.Addr(i)
			} else {
				back, _ = p.Addr6(i)
			}
			inBlock := p.Prefix().Contains(a) || p.Prefix6().Contains(a)
			if ok && (i < 0 || i >= p.Size() || back != a) || ok && !inBlock {
				t.Fatalf("pool %v %v: Index(%v) = %d, %v; back %v", p.Prefix(), p.Prefix6(), a, i, ok, back)
			}
			if a.Is4() && ok != inBlock {
				t.Fatalf("pool %v: Index(%v) ok = %v", p.Prefix(), a, ok)
			}
		}
		differential(t, p, rand.New(rand.NewPCG(seed, 0)), 400)
	})
}

func BenchmarkIndex6(b *testing.B) {
	p := mustDual(b, "10.16.0.0/12", "2001:db8:1:2::/64")
	dsts := []netip.Addr{addr("2001:db8:1:2::1:2345"), addr("10.17.35.69"), addr("2001:db8:1:3::1"), addr("2001:db8:1:2::fff:ffff")}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p.Index(dsts[i&3])
		i++
	}
}

func BenchmarkAllocateLeaseDual(b *testing.B) {
	p := mustDual(b, "10.16.0.0/12", "2001:db8:1:2::/64")
	for range 1000 {
		if _, err := p.AllocateLease(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		l, err := p.AllocateLease()
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Release(l.Addr6); err != nil {
			b.Fatal(err)
		}
	}
}
