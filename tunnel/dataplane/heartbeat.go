package dataplane

import (
	"errors"
	"os"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/tunnel/sock"
)

// Heartbeats say whether the receive loops still go round, for a watchdog (systemd's, in
// cmd/cvpn). Each loop adds one to its count every time round, and every loop goes round at
// least once a sock.ReadWake even when no packet comes: a UDP listener's ReadBatch returns empty
// then, and the TUN reader's read times out (a read deadline on the device's file). So a count
// that stands still for longer than that belongs to a loop that is stuck: in a lock, in a
// handler, or in a read that no longer returns. The cost is one atomic add per batch of packets.
//
// A TUN device whose file takes no read deadline (the in-memory fakes) has a reader that can
// wait for ever legitimately; its heartbeat is left out rather than report a false stall.

// Heartbeat is one receive loop's count.
type Heartbeat struct {
	// Loop names the loop: "tun", or "udp" and the listener's address ("udp 0.0.0.0:1194").
	Loop string
	// Count is how many times the loop went round.
	Count uint64
}

// Heartbeats returns the heartbeats of the running receive loops: the TUN reader (when its
// device takes a read deadline) and each open UDP listener.
func (p *Plane) Heartbeats() []Heartbeat {
	var out []Heartbeat
	if p.tunWatched.Load() {
		out = append(out, Heartbeat{Loop: "tun", Count: p.tunBeat.Load()})
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.udp {
		out = append(out, Heartbeat{Loop: "udp " + l.addr.String(), Count: l.beat.Load()})
	}
	return out
}

// tunDeadline wakes the TUN reader at least once a sock.ReadWake through a read deadline on the
// device's file; without one (a device with no file, or one the poller cannot wait on) the
// reader is not watched.
type tunDeadline struct {
	file *os.File
	wake time.Duration
}

// watchTUN finds out, when the plane is built, whether the TUN reader can be watched: it sets
// the first read deadline (the reader moves it on each time it passes).
func (p *Plane) watchTUN() {
	if p.tunWake <= 0 {
		p.tunWake = sock.ReadWake
	}
	f := p.cfg.Device.File()
	if f == nil || f.SetReadDeadline(time.Now().Add(p.tunWake)) != nil {
		return
	}
	p.tunWatched.Store(true)
}

// tunDeadline returns the TUN reader's deadline; the zero one when it is not watched.
func (p *Plane) tunDeadline() tunDeadline {
	if !p.tunWatched.Load() {
		return tunDeadline{}
	}
	return tunDeadline{file: p.cfg.Device.File(), wake: p.tunWake}
}

// woke reports whether err is the deadline passing, and then sets the next one.
func (d tunDeadline) woke(err error) bool {
	if d.file == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	_ = d.file.SetReadDeadline(time.Now().Add(d.wake))
	return true
}

// beats are the plane's own heartbeat counters; UDP listeners keep theirs (UDPListener.beat).
type beats struct {
	tunBeat    atomic.Uint64
	tunWatched atomic.Bool
	// tunWake is how often an idle TUN reader wakes: sock.ReadWake (tests shorten it).
	tunWake time.Duration
}
