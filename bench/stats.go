package bench

import (
	"math"
	"math/bits"
	"slices"
	"sync/atomic"
	"time"
)

// Histogram records durations from many goroutines without a lock: log-linear buckets (exact
// below 64 µs, then 16 sub-buckets per power of two, under 4.5% error), atomic counters.
type Histogram struct {
	counts [histBuckets]atomic.Uint64
	n      atomic.Uint64
	max    atomic.Int64
}

const (
	histLinear  = 64 // microseconds recorded exactly
	histSub     = 16 // sub-buckets per power of two above that
	histBuckets = histLinear + (64-6)*histSub
)

func histIndex(us uint64) int {
	if us < histLinear {
		return int(us)
	}
	exp := bits.Len64(us) - 1 // >= 6
	sub := (us >> (uint(exp) - 4)) & (histSub - 1)
	return histLinear + (exp-6)*histSub + int(sub)
}

// histLower is the smallest value (µs) of bucket i.
func histLower(i int) uint64 {
	if i < histLinear {
		return uint64(i)
	}
	i -= histLinear
	exp := uint(i/histSub + 6)
	sub := uint64(i % histSub)
	return 1<<exp | sub<<(exp-4)
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	us := uint64(d / time.Microsecond)
	h.counts[histIndex(us)].Add(1)
	h.n.Add(1)
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			break
		}
	}
}

// Count is how many durations were recorded.
func (h *Histogram) Count() uint64 { return h.n.Load() }

// Summary returns the percentiles in microseconds (bucket midpoints, the maximum exact).
func (h *Histogram) Summary() Latency {
	n := h.n.Load()
	if n == 0 {
		return Latency{}
	}
	q := func(p float64) float64 {
		rank := uint64(math.Ceil(p * float64(n)))
		var cum uint64
		for i := range h.counts {
			cum += h.counts[i].Load()
			if cum >= rank {
				lo := histLower(i)
				hi := lo + 1
				if i+1 < histBuckets {
					hi = histLower(i + 1)
				}
				return float64(lo+hi) / 2
			}
		}
		return float64(h.max.Load()) / 1e3
	}
	return Latency{
		Count: n,
		P50:   q(0.50), P90: q(0.90), P99: q(0.99),
		Max: float64(h.max.Load()) / 1e3,
	}
}

// Latency is a distribution summary; the unit is in the field that holds it.
type Latency struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// quantile is the nearest-rank p-quantile of sorted, non-empty xs.
func quantile(xs []float64, p float64) float64 {
	i := int(math.Ceil(p*float64(len(xs)))) - 1
	return xs[max(0, min(i, len(xs)-1))]
}

// summarize gives exact percentiles of xs (sorted in place).
func summarize(xs []float64) Latency {
	if len(xs) == 0 {
		return Latency{}
	}
	slices.Sort(xs)
	q := func(p float64) float64 { return quantile(xs, p) }
	return Latency{Count: uint64(len(xs)), P50: q(0.5), P90: q(0.9), P99: q(0.99), Max: xs[len(xs)-1]}
}

// Spread summarizes per-session rates.
type Spread struct {
	Min  float64 `json:"min"`
	P10  float64 `json:"p10"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func spreadOf(xs []float64) Spread {
	if len(xs) == 0 {
		return Spread{}
	}
	slices.Sort(xs)
	q := func(p float64) float64 { return quantile(xs, p) }
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return Spread{Min: xs[0], P10: q(0.1), P50: q(0.5), P90: q(0.9), Max: xs[len(xs)-1], Mean: sum / float64(len(xs))}
}

// median of xs (a copy is sorted); NaN when empty.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
