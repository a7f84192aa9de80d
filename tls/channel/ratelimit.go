package channel

import "time"

// packetBucket is a token bucket counted in control packets: it holds up to burst tokens, gains
// rate tokens a second, and each packet accepted takes one. A negative rate admits everything.
// The channel's lock guards it; it reads no clock of its own.
type packetBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time // when tokens was last brought up to date; zero: full
}

// allow reports whether a packet arriving at now may pass, and takes its token.
func (b *packetBucket) allow(now time.Time) bool {
	if b.rate < 0 {
		return true
	}
	switch {
	case b.last.IsZero():
		b.tokens, b.last = b.burst, now
	case now.After(b.last):
		// A clock that steps back refills nothing, and the interval is not counted twice.
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
