// Package limiter bounds what sources that have not proved anything may cost: token buckets
// per source address, per source network and in total, kept in fixed-size tables indexed by a
// keyed hash of the source. A flood from any number of (spoofed) addresses creates no state:
// the tables never grow, and the key is random per process, so nobody can aim collisions.
//
// It does not know what it limits (cookie replies, handshakes); callers ask before they act.
package limiter

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// Rate is a token bucket's refill per second and its burst.
type Rate struct {
	PerSecond float64
	Burst     float64
}

// Config sizes a Sources limiter.
type Config struct {
	// Addr limits each source address (IPv4) or /64 (IPv6); Net each /24 (IPv4) or /48 (IPv6);
	// Total everything together.
	Addr, Net, Total Rate
	// Slots is the number of buckets in each of the per-address and per-network tables; 0
	// means 65536 (a flood from a /16 then shares a bucket with a given network with a chance
	// of 1 in 256).
	Slots int
	Now   func() time.Time
}

// Sources limits events per source address, per source network and in total. It is safe for
// concurrent use; its memory is fixed at creation.
type Sources struct {
	seed  maphash.Seed
	now   func() time.Time
	addr  Rate
	net   Rate
	total Rate

	mu       sync.Mutex
	start    time.Time
	addrs    []bucket
	nets     []bucket
	totalBkt bucket
}

// bucket is one token bucket: tokens left at its last update (ms since start, modulo 2^32).
type bucket struct {
	tokens float32
	last   uint32
}

// New returns a limiter with full buckets.
func New(cfg Config) *Sources {
	if cfg.Slots <= 0 {
		cfg.Slots = 1 << 16
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Sources{seed: maphash.MakeSeed(), now: cfg.Now, addr: cfg.Addr, net: cfg.Net, total: cfg.Total,
		start: cfg.Now(), addrs: make([]bucket, cfg.Slots), nets: make([]bucket, cfg.Slots)}
	for i := range s.addrs {
		s.addrs[i].tokens = float32(cfg.Addr.Burst)
		s.nets[i].tokens = float32(cfg.Net.Burst)
	}
	s.totalBkt.tokens = float32(cfg.Total.Burst)
	return s
}

// Prefixes returns the source address and network a limiter counts a of under: /32 and /24 for
// IPv4, /64 and /48 for IPv6.
func Prefixes(a netip.Addr) (addr, network netip.Prefix) {
	a = a.Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32), netip.PrefixFrom(a, 24).Masked()
	}
	return netip.PrefixFrom(a, 64).Masked(), netip.PrefixFrom(a, 48).Masked()
}

// Allow takes one token for source a from its address's bucket, its network's and the total,
// and reports true; if any of them is empty it takes none and reports false.
func (s *Sources) Allow(a netip.Addr) bool {
	pa, pn := Prefixes(a)
	ia := maphash.Comparable(s.seed, pa) % uint64(len(s.addrs))
	in := maphash.Comparable(s.seed, pn) % uint64(len(s.nets))
	s.mu.Lock()
	defer s.mu.Unlock()
	now := uint32(s.now().Sub(s.start).Milliseconds())
	ba, bn, bt := &s.addrs[ia], &s.nets[in], &s.totalBkt
	ba.refill(now, s.addr)
	bn.refill(now, s.net)
	bt.refill(now, s.total)
	if ba.tokens < 1 || bn.tokens < 1 || bt.tokens < 1 {
		return false
	}
	ba.tokens--
	bn.tokens--
	bt.tokens--
	return true
}

// refill adds the tokens earned since the bucket's last update. Times are milliseconds since
// the limiter started, modulo 2^32 (49 days): the difference is taken modulo too, so a wrap
// costs at most one bucket's refill, never a bucket stuck empty.
func (b *bucket) refill(now uint32, r Rate) {
	if d := now - b.last; d != 0 && d < 1<<31 {
		b.tokens = min(float32(r.Burst), b.tokens+float32(float64(d)/1000*r.PerSecond))
		b.last = now
	}
}
