package sdnotify

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeLoops are receive loops as the watchdog sees them: counts the test moves.
type fakeLoops struct {
	mu     sync.Mutex
	counts map[string]uint64
}

func (f *fakeLoops) heartbeats() map[string]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]uint64, len(f.counts))
	for k, v := range f.counts {
		out[k] = v
	}
	return out
}

func (f *fakeLoops) step(loops ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range loops {
		f.counts[l]++
	}
}

func (f *fakeLoops) set(loop string, present bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if present {
		f.counts[loop] = 1000
	} else {
		delete(f.counts, loop)
	}
}

// TestWatchdogPingsOnlyOnProgress: a check pings when every loop seen at the last check has gone
// round since, and not when one has not; a loop that appears or goes away stops nothing. The
// stall and the recovery are logged once each.
func TestWatchdogPingsOnlyOnProgress(t *testing.T) {
	loops := &fakeLoops{counts: map[string]uint64{"tun": 0, "udp 0.0.0.0:1194": 0}}
	var pings int
	var log bytes.Buffer
	w := &Watchdog{Interval: 10 * time.Second, Heartbeats: loops.heartbeats, Ping: func() { pings++ },
		Log: slog.New(slog.NewTextHandler(&log, nil))}
	for i, step := range []struct {
		what  string
		do    func()
		pings bool
	}{
		{"the first check", func() {}, true},
		{"both loops went round", func() { loops.step("tun", "udp 0.0.0.0:1194") }, true},
		{"the UDP loop is stuck", func() { loops.step("tun") }, false},
		{"still stuck", func() { loops.step("tun") }, false},
		{"it goes round again", func() { loops.step("tun", "udp 0.0.0.0:1194") }, true},
		{"the TUN reader is stuck", func() { loops.step("udp 0.0.0.0:1194") }, false},
		{"both go round", func() { loops.step("tun", "udp 0.0.0.0:1194") }, true},
		{"a listener is added, the others go round", func() { loops.set("udp 0.0.0.0:443", true); loops.step("tun", "udp 0.0.0.0:1194") }, true},
		{"the new listener is stuck", func() { loops.step("tun", "udp 0.0.0.0:1194") }, false},
		{"the stuck listener is removed", func() { loops.set("udp 0.0.0.0:443", false); loops.step("tun", "udp 0.0.0.0:1194") }, true},
		{"nothing moved at all", func() {}, false},
	} {
		before := pings
		step.do()
		if got := w.check(); got != step.pings || (pings > before) != step.pings {
			t.Fatalf("step %d (%s): check = %v, pings %d -> %d; want ping %v", i, step.what, got, before, pings, step.pings)
		}
	}
	out := log.String()
	for _, want := range []string{
		`stalled="[udp 0.0.0.0:1194]"`, `stalled=[tun]`, `stalled="[udp 0.0.0.0:443]"`, `stalled="[tun udp 0.0.0.0:1194]"`,
	} {
		if strings.Count(out, "stopped going round") == 0 || !strings.Contains(out, want) {
			t.Errorf("the log lacks a stall with %s:\n%s", want, out)
		}
	}
	if c := strings.Count(out, "stopped going round"); c != 4 {
		t.Errorf("%d stall lines, want 4 (one per stall, not per check):\n%s", c, out)
	}
	if c := strings.Count(out, "keep-alives resume"); c != 3 {
		t.Errorf("%d recovery lines, want 3:\n%s", c, out)
	}
}

// TestWatchdogRunStopsWhenALoopStops runs the watchdog against the fake notify socket: WATCHDOG=1
// arrives while the loops go round; once one loop stops, the checks go on but no more pings
// are sent.
func TestWatchdogRunStopsWhenALoopStops(t *testing.T) {
	m := listenNotify(t)
	n := New(nil)
	loops := &fakeLoops{counts: map[string]uint64{"tun": 0, "udp 10.0.0.1:1194": 0}}
	var udpStuck atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the loops: the UDP one stops when told
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			loops.step("tun")
			if !udpStuck.Load() {
				loops.step("udp 10.0.0.1:1194")
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	checks := make(chan bool, 100)
	w := &Watchdog{Interval: 20 * time.Millisecond, Heartbeats: loops.heartbeats, Ping: n.Watchdog}
	w.checked = func(pinged bool) {
		select {
		case checks <- pinged:
		default: // the test has stopped reading: never block the watchdog
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	for range 3 {
		m.expect(map[string]string{"WATCHDOG": "1"})
	}
	udpStuck.Store(true)
	// Drain the checks until one did not ping (the stuck loop may have moved once more just
	// before), then five more checks must not ping either.
	wait := func() bool {
		select {
		case p := <-checks:
			return p
		case <-time.After(10 * time.Second):
			t.Fatal("the watchdog stopped checking")
			return false
		}
	}
	for wait() {
	}
	// Every ping is sent before its check is reported: what the socket holds now came before
	// the stall. After five more checks, it must hold nothing new.
	drain := func() (pings int) {
		_ = m.conn.SetReadDeadline(time.Now())
		buf := make([]byte, 64)
		for {
			k, err := m.conn.Read(buf)
			if err != nil {
				return pings
			}
			if string(buf[:k]) != "WATCHDOG=1" {
				t.Fatalf("unexpected notification %q", buf[:k])
			}
			pings++
		}
	}
	drain()
	for i := range 5 {
		if wait() {
			t.Fatalf("check %d after the loop stopped pinged", i)
		}
	}
	if p := drain(); p != 0 {
		t.Fatalf("%d keep-alives sent while a loop was stuck", p)
	}
}
