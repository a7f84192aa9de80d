//go:build testhooks

package dataplane

import (
	"testing"
	"time"
)

// TestWedgeReceiveLoops (testhooks builds): once wedged, the UDP listener's and the TUN reader's
// heartbeats stand still (but for the round each was in), and closing the plane still ends them.
func TestWedgeReceiveLoops(t *testing.T) {
	p, l, _ := newBeatPlane(t, newPipeTUN(t), nopControl{})
	udp := "udp " + l.Addr().String() + "#0"
	waitBeats(t, p, nil, 3, "tun#0", udp)
	WedgeReceiveLoops()
	t.Cleanup(func() { wedged.Store(false) })
	at := beatsOf(p)
	// Both loops wake every 5 ms when alive: 40 wakes' time.
	time.Sleep(200 * time.Millisecond)
	now := beatsOf(p)
	for _, loop := range []string{"tun#0", udp} {
		if now[loop] > at[loop]+1 {
			t.Errorf("%s went round %d times after the wedge", loop, now[loop]-at[loop])
		}
	}
	done := make(chan struct{})
	go func() { p.Close(); p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a wedged plane did not end on Close")
	}
}
