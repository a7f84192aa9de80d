package counters

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestDropsAskForDetailsOncePerLine: a flood of one reason builds its details once per log
// line, and the logger writes one line per reason per interval with the counts.
func TestDropsAskForDetailsOncePerLine(t *testing.T) {
	var d Drops
	var out bytes.Buffer
	l := &Logger{Drops: &d, Log: slog.New(slog.NewTextHandler(&out, nil)), Every: 10 * time.Second}
	asked := 0
	for i := range 1000 {
		if d.Add(Decrypt) {
			asked++
			d.Detail(Decrypt, "from", "192.0.2.1:1194", "n", i)
		}
	}
	if asked != 1 || d.Count(Decrypt) != 1000 {
		t.Fatalf("details asked %d times for 1000 drops (count %d), want once", asked, d.Count(Decrypt))
	}
	t0 := time.Unix(100, 0)
	l.Flush(t0)
	if got := strings.Count(out.String(), "\n"); got != 1 {
		t.Fatalf("%d log lines for one reason, want 1:\n%s", got, out.String())
	}
	for _, want := range []string{"reason=decrypt_failed", "count_since_last_log=1000", "total=1000", "from=192.0.2.1:1194", "n=0", "level=WARN"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("log line lacks %q: %s", want, out.String())
		}
	}
	// More drops within the interval: counted, not logged until it passed.
	if !d.Add(Decrypt) {
		t.Fatal("details not asked for after a line was written")
	}
	d.Detail(Decrypt, "from", "192.0.2.2:1194")
	d.Add(Unauthorized)
	l.Flush(t0.Add(time.Second))
	if strings.Contains(out.String(), "192.0.2.2") {
		t.Fatal("a second line for the same reason inside the interval")
	}
	if !strings.Contains(out.String(), "reason=unauthorized") || !strings.Contains(out.String(), "level=INFO") {
		t.Fatalf("an expected refusal was not logged at Info:\n%s", out.String())
	}
	l.Flush(t0.Add(11 * time.Second))
	if !strings.Contains(out.String(), "from=192.0.2.2:1194") || !strings.Contains(out.String(), "total=1001") {
		t.Fatalf("the next interval's line is missing:\n%s", out.String())
	}
	if s := d.Snapshot(); s["decrypt_failed"] != 1001 || s["unauthorized"] != 1 || len(s) != 2 {
		t.Fatalf("snapshot %v", s)
	}
}

// TestCountingDoesNotAllocate: counting a drop and a packet allocates nothing.
func TestCountingDoesNotAllocate(t *testing.T) {
	var d Drops
	var tr Traffic
	d.Add(Replay) // the first asks for details
	allocs := testing.AllocsPerRun(1000, func() {
		d.Add(Replay)
		tr.Received(1400)
		tr.Sent(60)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per count", allocs)
	}
	if s := tr.Snapshot(); s.RxPackets != 1001 || s.RxBytes != 1001*1400 || s.TxPackets != 1001 || s.TxBytes != 1001*60 {
		t.Fatalf("traffic %+v", s)
	}
}
