// Package replay implements the data-channel replay window of one key_state
// and direction (docs/protocol.md §8.4): a sliding bitmap over the most recent
// WindowSize packet-ids.
//
// It owns only the accept/reject decision for 32-bit short-form packet-ids.
// It does not do OpenVPN's 15-second time-based expiry of old slots, nor the
// long-form (id, time) ids of tls-auth/tls-crypt control packets; callers check
// packet-ids only after the packet authenticated (protocol §8.2).
package replay

// WindowSize is how many packet-ids behind the highest one seen are still
// accepted if unseen. OpenVPN's default --replay-window is 64; a larger window
// costs nothing here and tolerates the reordering of multi-queue paths.
const WindowSize = 2048

const (
	wordBits = 64
	// ringWords is one word more than the window needs: advancing clears
	// whole words, so the word holding the oldest in-window id must not be the
	// one being reused for the newest.
	ringWords = WindowSize/wordBits + 1
)

// Window is a replay filter. The zero value is ready to use and has seen
// nothing. A Window has a single owner and no locks.
//
// Bit id%64 of word (id/64)%ringWords records whether id was seen; the words
// cover the ids from about last-WindowSize-63 to last.
type Window struct {
	last uint32 // highest id accepted so far; 0 before the first
	ring [ringWords]uint64
}

// Check reports whether a packet with this packet-id should be accepted and,
// if so, records it as seen. It rejects 0 (never a valid data packet-id),
// duplicates, and ids WindowSize or more behind the highest id seen.
func (w *Window) Check(id uint32) bool {
	if id == 0 {
		return false
	}
	word := id / wordBits
	if id > w.last {
		// Clear the words that enter the window between the old and the new
		// highest id (none if both are in the same word); all of them once
		// the jump is longer than the ring.
		from := w.last/wordBits + 1
		switch {
		case word < from:
		case word-from >= ringWords:
			w.ring = [ringWords]uint64{}
		default:
			for i := from; i <= word; i++ {
				w.ring[i%ringWords] = 0
			}
		}
		w.last = id
	} else if w.last-id >= WindowSize {
		return false
	}
	bit := uint64(1) << (id % wordBits)
	slot := &w.ring[word%ringWords]
	if *slot&bit != 0 {
		return false
	}
	*slot |= bit
	return true
}

// Reset forgets every id, as for a new key_state.
func (w *Window) Reset() { *w = Window{} }
