// Package bucket is a token bucket for shaping one direction of one connection: tokens are bytes,
// refilled at a fixed rate up to a burst. It has one owner (the goroutine that handles that
// direction's packets), so it needs no lock, and it reads the time it is given, so tests need no
// clock.
package bucket

import "time"

// Bucket limits a byte rate. The zero value is unlimited.
type Bucket struct {
	rate   float64 // bytes per nanosecond; 0 = unlimited
	burst  float64 // bytes
	tokens float64
	last   int64 // unix nanoseconds of the last refill
}

// BurstDuration is how much traffic at the full rate a bucket lets through at once. Measured with
// iperf3 TCP (10 s, receiver goodput) through the tunnel at a 10 Mbit/s limit: a 50 ms burst gave
// 2.5 Mbit/s (whole windows dropped push TCP into 200 ms retransmission timeouts), 100 ms 5,
// 200 ms 9.5, 300 ms 9.7-9.8, 500 ms 9.9-10.1, 1 s 10.5 (over the limit from the start-up burst).
// A bounded 20 ms queue behind a 50 ms bucket gave the same goodput as 250 ms of burst with a third
// to half the retransmissions; dropping keeps the server free of per-connection queues, so cvpn
// drops, with 300 ms.
const BurstDuration = 300 * time.Millisecond

// minBurst keeps small limits able to pass a few full-size packets back to back.
const minBurst = 16 << 10

// Set changes the limit to bitsPerSecond (0 = unlimited), keeping the tokens already earned.
func (b *Bucket) Set(bitsPerSecond float64) {
	if bitsPerSecond <= 0 {
		b.rate, b.burst = 0, 0
		return
	}
	b.rate = bitsPerSecond / 8 / 1e9
	b.burst = max(minBurst, bitsPerSecond/8*BurstDuration.Seconds())
	b.tokens = min(b.tokens, b.burst)
	if b.last == 0 {
		b.tokens = b.burst
	}
}

// Limited reports whether the bucket has a limit.
func (b *Bucket) Limited() bool { return b.rate > 0 }

// Allow takes n bytes at time now (unix nanoseconds) and reports whether they fit the limit.
func (b *Bucket) Allow(now int64, n int) bool {
	if b.rate == 0 {
		return true
	}
	if b.last != 0 && now > b.last {
		b.tokens = min(b.burst, b.tokens+float64(now-b.last)*b.rate)
	}
	if b.last == 0 {
		b.tokens = b.burst
	}
	b.last = now
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}
