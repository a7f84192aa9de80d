package tlscrypt

// ReplayWindowSize is the number of packet-ids below the highest one seen
// that are still accepted once (OpenVPN's default --replay-window 64).
const ReplayWindowSize = 64

// ReplayWindow is the receive-side replay check for the long-form replay
// packet-ids (counter + timestamp) that tls-auth and tls-crypt carry
// (protocol §3.5, packet_id.c:packet_id_test):
//
//   - pid 0 is never valid;
//   - a timestamp older than the current one is rejected;
//   - a newer timestamp restarts the sequence (the peer restarted its counter);
//   - within one timestamp, a pid is accepted once, and only if it is within
//     ReplayWindowSize of the highest pid seen.
//
// The zero value is ready to use. A ReplayWindow is not safe for concurrent
// use; it belongs to the session that owns the key state.
type ReplayWindow struct {
	ts      uint32 // timestamp of the current sequence
	max     uint32 // highest pid seen in the current sequence
	seen    uint64 // bit i set: pid max-i was seen
	started bool
}

// Check reports whether the packet with replay pid and timestamp ts is new,
// and if so records it. Call it only after the packet authenticated.
func (r *ReplayWindow) Check(pid, ts uint32) bool {
	if pid == 0 {
		return false
	}
	if !r.started || ts > r.ts {
		*r = ReplayWindow{ts: ts, max: pid, seen: 1, started: true}
		return true
	}
	if ts < r.ts {
		return false
	}
	if pid > r.max {
		if d := pid - r.max; d < ReplayWindowSize {
			r.seen = r.seen<<d | 1
		} else {
			r.seen = 1
		}
		r.max = pid
		return true
	}
	d := r.max - pid
	if d >= ReplayWindowSize || r.seen&(1<<d) != 0 {
		return false
	}
	r.seen |= 1 << d
	return true
}
