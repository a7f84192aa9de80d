//go:build testhooks

package dataplane

import "sync/atomic"

// The testhooks build tag compiles in a way to wedge the data plane, for tests of the systemd
// watchdog (a wedged receive loop must stop the keep-alives and get the service restarted).
// Release builds have no such code: wedge.go's wedgePoint is empty.

// wedged is set by WedgeReceiveLoops.
var wedged atomic.Bool

// WedgeReceiveLoops makes every receive loop of every plane (UDP listeners and the TUN reader)
// stop at its next time round and stay there until its plane closes, as a deadlocked loop would:
// packets are no longer read and the heartbeats stand still. Only in builds with the testhooks
// tag.
func WedgeReceiveLoops() { wedged.Store(true) }

// wedgePoint holds a loop once WedgeReceiveLoops was called.
func (p *Plane) wedgePoint() {
	if wedged.Load() {
		<-p.done
	}
}
