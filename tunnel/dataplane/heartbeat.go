package dataplane

import (
	"errors"
	"os"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"

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
	// Loop names the loop: "tun#" and the TUN queue ("tun#0"), or "udp", the listener's address
	// and the shard ("udp 0.0.0.0:1194#1").
	Loop string
	// Count is how many times the loop went round.
	Count uint64
}

// Heartbeats returns the heartbeats of the running receive loops: each TUN queue's reader (when
// its device takes a read deadline) and each shard of each open UDP listener.
func (p *Plane) Heartbeats() []Heartbeat {
	var out []Heartbeat
	for _, q := range p.queues {
		if q.watched {
			out = append(out, Heartbeat{Loop: q.loop, Count: q.beat.Load()})
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.udp {
		for _, s := range l.shards {
			out = append(out, Heartbeat{Loop: s.loop, Count: s.beat.Load()})
		}
	}
	return out
}

// tunQueue is one queue of the TUN device and its reader's heartbeat.
type tunQueue struct {
	index int
	dev   tun.Device
	loop  string // "tun#<index>"
	beat  atomic.Uint64
	// watched: the device's file takes a read deadline, so its reader wakes when idle and its
	// heartbeat is reported. Set by New, before any reader runs.
	watched bool
}

// tunDeadline wakes a TUN reader at least once a sock.ReadWake through a read deadline on the
// device's file; without one (a device with no file, or one the poller cannot wait on) the
// reader is not watched.
type tunDeadline struct {
	file *os.File
	wake time.Duration
}

// watchTUN finds out, when the plane is built, whether each TUN reader can be watched: it sets
// the first read deadline (the reader moves it on each time it passes).
func (p *Plane) watchTUN() {
	if p.tunWake <= 0 {
		p.tunWake = sock.ReadWake
	}
	for _, q := range p.queues {
		f := q.dev.File()
		q.watched = f != nil && f.SetReadDeadline(time.Now().Add(p.tunWake)) == nil
	}
}

// tunDeadline returns queue q's reader's deadline; the zero one when it is not watched.
func (p *Plane) tunDeadline(q *tunQueue) tunDeadline {
	if !q.watched {
		return tunDeadline{}
	}
	return tunDeadline{file: q.dev.File(), wake: p.tunWake}
}

// woke reports whether err is the deadline passing, and then sets the next one.
func (d tunDeadline) woke(err error) bool {
	if d.file == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	_ = d.file.SetReadDeadline(time.Now().Add(d.wake))
	return true
}
