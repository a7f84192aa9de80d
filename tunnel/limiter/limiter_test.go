package limiter

import (
	"net/netip"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTest(c *clock) *Sources {
	return New(Config{
		Addr:  Rate{PerSecond: 10, Burst: 20},
		Net:   Rate{PerSecond: 50, Burst: 100},
		Total: Rate{PerSecond: 1000, Burst: 2000},
		Now:   c.now,
	})
}

func allowed(s *Sources, a netip.Addr, n int) int {
	ok := 0
	for range n {
		if s.Allow(a) {
			ok++
		}
	}
	return ok
}

// TestPerAddress: one address gets its burst, then its rate; another address of the same
// network is not held back by it.
func TestPerAddress(t *testing.T) {
	c := &clock{time.Unix(1000, 0)}
	s := newTest(c)
	flood := netip.MustParseAddr("198.51.100.7")
	if got := allowed(s, flood, 1000); got != 20 {
		t.Fatalf("one address got %d of 1000 at once, want its burst of 20", got)
	}
	if !s.Allow(netip.MustParseAddr("198.51.100.8")) {
		t.Fatal("a neighbour was refused because of the flooding address")
	}
	c.t = c.t.Add(time.Second)
	if got := allowed(s, flood, 1000); got != 10 {
		t.Fatalf("after a second the address got %d, want its rate of 10", got)
	}
}

// TestPerNetwork: many addresses of one /24 share its bucket; another /24 is untouched.
func TestPerNetwork(t *testing.T) {
	c := &clock{time.Unix(1000, 0)}
	s := newTest(c)
	got := 0
	for i := range 250 {
		got += allowed(s, netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 5)
	}
	if got != 100 {
		t.Fatalf("a /24 got %d, want its burst of 100", got)
	}
	if !s.Allow(netip.MustParseAddr("203.0.114.1")) {
		t.Fatal("another /24 was refused")
	}
}

// TestSpoofedFloodLeavesOthersAlone: a flood from random addresses of a /16 (a few per
// address, as a spoofed flood is) is held to the total and the /24 rates, creates no state
// beyond the fixed tables, and a client elsewhere still gets through while it runs.
func TestSpoofedFloodLeavesOthersAlone(t *testing.T) {
	c := &clock{time.Unix(1000, 0)}
	s := New(Config{
		Addr:  Rate{PerSecond: 10, Burst: 20},
		Net:   Rate{PerSecond: 50, Burst: 100},
		Total: Rate{PerSecond: 20000, Burst: 40000},
		Now:   c.now,
	})
	tables := len(s.addrs) + len(s.nets)
	client := netip.MustParseAddr("192.0.2.10")
	refusedClient := 0
	for sec := range 30 {
		for i := range 5000 {
			a := netip.AddrFrom4([4]byte{10, 99, byte(i * 7919 % 256), byte(i*104729 + sec)})
			s.Allow(a)
		}
		if !s.Allow(client) {
			refusedClient++
		}
		c.t = c.t.Add(time.Second)
	}
	if refusedClient != 0 {
		t.Fatalf("the client was refused %d times in 30 s of flood", refusedClient)
	}
	if len(s.addrs)+len(s.nets) != tables {
		t.Fatal("the tables grew")
	}
}

// TestTotal: the total bounds everyone together.
func TestTotal(t *testing.T) {
	c := &clock{time.Unix(1000, 0)}
	s := New(Config{Addr: Rate{10, 20}, Net: Rate{50, 100}, Total: Rate{100, 100}, Now: c.now})
	got := 0
	for i := range 200 {
		got += allowed(s, netip.AddrFrom4([4]byte{10, byte(i), 0, 1}), 1)
	}
	if got != 100 {
		t.Fatalf("%d allowed in all, want the total burst of 100", got)
	}
}

// TestIPv6Prefixes: IPv6 sources are counted per /64 and /48.
func TestIPv6Prefixes(t *testing.T) {
	a, n := Prefixes(netip.MustParseAddr("2001:db8:1:2:3:4:5:6"))
	if a.String() != "2001:db8:1:2::/64" || n.String() != "2001:db8:1::/48" {
		t.Fatalf("prefixes %v %v", a, n)
	}
	a, n = Prefixes(netip.MustParseAddr("::ffff:192.0.2.1"))
	if a.String() != "192.0.2.1/32" || n.String() != "192.0.2.0/24" {
		t.Fatalf("mapped IPv4: %v %v", a, n)
	}
}

func TestAllowDoesNotAllocate(t *testing.T) {
	s := newTest(&clock{time.Unix(1000, 0)})
	a := netip.MustParseAddr("192.0.2.1")
	if n := testing.AllocsPerRun(1000, func() { s.Allow(a) }); n != 0 {
		t.Fatalf("Allow allocates %v times", n)
	}
}
