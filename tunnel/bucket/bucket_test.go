package bucket

import (
	"testing"
	"time"
)

// TestRateOverTime feeds full-size packets as fast as offered for 10 s of virtual time and checks
// that what passes matches the configured rate.
func TestRateOverTime(t *testing.T) {
	for _, mbps := range []float64{1, 10, 25, 100} {
		var b Bucket
		b.Set(mbps * 1e6)
		start := time.Unix(1000, 0).UnixNano()
		passed := 0
		const pkt = 1400
		for now := start; now < start+int64(10*time.Second); now += int64(10 * time.Microsecond) {
			if b.Allow(now, pkt) {
				passed += pkt
			}
		}
		got := float64(passed) * 8 / 10 / 1e6
		if got < mbps*0.98 || got > mbps*1.05 {
			t.Errorf("limit %v Mbit/s passed %.2f Mbit/s", mbps, got)
		}
	}
}

func TestBurstThenRefill(t *testing.T) {
	var b Bucket
	b.Set(8e6) // 1 MB/s, burst 300 KB
	now := int64(1e9)
	n := 0
	for b.Allow(now, 1000) {
		n++
	}
	if n != 300 {
		t.Fatalf("burst passed %d KB, want 300", n)
	}
	if !b.Allow(now+int64(time.Millisecond), 1000) {
		t.Fatal("1 ms at 1 MB/s did not refill 1000 bytes")
	}
	if b.Allow(now+int64(time.Millisecond), 1) {
		t.Fatal("bucket went past its refill")
	}
}

func TestUnlimitedAndReset(t *testing.T) {
	var b Bucket
	if !b.Allow(1, 1<<30) || b.Limited() {
		t.Fatal("zero bucket is not unlimited")
	}
	b.Set(1e6)
	if !b.Limited() {
		t.Fatal("Set did not limit")
	}
	b.Set(0)
	if !b.Allow(2, 1<<30) {
		t.Fatal("Set(0) did not remove the limit")
	}
}

func TestNoAllocs(t *testing.T) {
	var b Bucket
	b.Set(10e6)
	now := int64(1)
	if n := testing.AllocsPerRun(1000, func() { now += 1000; b.Allow(now, 1400) }); n != 0 {
		t.Fatalf("Allow allocates %v times", n)
	}
}

func BenchmarkAllow(b *testing.B) {
	var bk Bucket
	bk.Set(10e6)
	now := int64(1)
	for b.Loop() {
		now += 100
		bk.Allow(now, 1400)
	}
}
