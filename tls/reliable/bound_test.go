package reliable

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
)

// TestAppendBound: a peer that acknowledges nothing cannot make the layer hold more than
// MaxQueued payload bytes; a refused append queues nothing, and acks make room again.
func TestAppendBound(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(Config{MaxQueued: 4000}, 0, 0)
	chunk := bytes.Repeat([]byte{7}, 26) // a TLS 1.3 KeyUpdate record
	accepted := 0
	for range 1000 {
		if err := l.Append(packet.ControlV1, chunk, 1000); err != nil {
			if !errors.Is(err, ErrFull) {
				t.Fatalf("Append: %v, want ErrFull", err)
			}
			break
		}
		accepted++
		l.Due(nil, now) // the window fills, the rest waits in the backlog
	}
	if want := 4000 / 26; accepted != want {
		t.Fatalf("%d appends of 26 bytes accepted under a 4000-byte bound, want %d", accepted, want)
	}
	if l.Queued() != accepted*26 || l.Room() != 4000-accepted*26 {
		t.Fatalf("Queued %d, Room %d after %d appends", l.Queued(), l.Room(), accepted)
	}
	// A message needing more than the room is refused whole, even an exact Queue.
	if err := l.Queue(packet.ControlV1, make([]byte, l.Room()+1)); !errors.Is(err, ErrFull) {
		t.Fatalf("Queue past the bound: %v", err)
	}
	if err := l.Queue(packet.SoftResetV1, nil); err != nil {
		t.Fatalf("an empty message must always fit: %v", err)
	}
	// Acks free what they acknowledged.
	var ids []uint32
	for _, m := range l.Due(nil, now.Add(time.Minute)) {
		ids = append(ids, m.ID)
	}
	before := l.Queued()
	l.Ack(ids, now.Add(time.Minute))
	if l.Queued() >= before || l.Room() < len(chunk) {
		t.Fatalf("Queued %d -> %d after acking %v: no room made", before, l.Queued(), ids)
	}
	if err := l.Append(packet.ControlV1, chunk, 1000); err != nil {
		t.Fatalf("Append after acks: %v", err)
	}
}

// TestAppendCoalesces: stream bytes fill the newest unsent message up to maxPayload, so small
// writes cost few messages, and the messages carry exactly the bytes written, in order. Checked
// against a plain byte slice over random write sizes, with acks arriving at random.
func TestAppendCoalesces(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			now := time.Unix(1000, 0)
			l := New(Config{MaxQueued: 1 << 20}, 1, 1)
			var want, got []byte
			sent := map[uint32]bool{}
			for step := range 400 {
				p := make([]byte, 1+rng.IntN(300))
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				if rng.IntN(50) == 0 {
					p = make([]byte, 2500+rng.IntN(500)) // a handshake flight
					for i := range p {
						p[i] = byte(step + i)
					}
				}
				if err := l.Append(packet.ControlV1, p, 1000); err != nil {
					t.Fatal(err)
				}
				want = append(want, p...)
				now = now.Add(10 * time.Millisecond)
				for _, m := range l.Due(nil, now) {
					if len(m.Payload) > 1000 {
						t.Fatalf("message %d has %d bytes, more than maxPayload", m.ID, len(m.Payload))
					}
					if !sent[m.ID] {
						sent[m.ID] = true
						got = append(got, m.Payload...)
					}
					if rng.IntN(3) == 0 {
						l.Ack([]uint32{m.ID}, now)
					}
				}
			}
			// Drain: ack everything until the layer is idle.
			for i := 0; !l.Idle() && i < 10000; i++ {
				now = now.Add(time.Minute)
				for _, m := range l.Due(nil, now) {
					if !sent[m.ID] {
						sent[m.ID] = true
						got = append(got, m.Payload...)
					}
					l.Ack([]uint32{m.ID}, now)
				}
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("messages carry %d bytes that differ from the %d written", len(got), len(want))
			}
			if l.Queued() != 0 {
				t.Fatalf("Queued %d after everything was acked", l.Queued())
			}
			// Full messages but the last of each burst: far fewer than the writes.
			if max := len(want)/1000 + 400/4; len(sent) > max {
				t.Fatalf("%d messages for %d bytes in 400 writes: not coalesced", len(sent), len(want))
			}
		})
	}
}

// TestQueueKeepsCallerCapacity: a message the caller queued is never extended in place, so
// Append cannot write into the caller's spare capacity.
func TestQueueKeepsCallerCapacity(t *testing.T) {
	l := New(Config{}, 0, 0)
	buf := make([]byte, 3, 64)
	copy(buf, "abc")
	if err := l.Queue(packet.ControlV1, buf); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(packet.ControlV1, []byte("defg"), 1000); err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:7]); got != "abc\x00\x00\x00\x00" {
		t.Fatalf("the caller's buffer was written: %q", got)
	}
	msgs := l.Due(nil, time.Unix(1, 0))
	if len(msgs) != 1 || string(msgs[0].Payload) != "abcdefg" {
		t.Fatalf("messages %v, want one with abcdefg", msgs)
	}
}

// TestOldestUnacked: the first send of the oldest unacknowledged message counts, retransmissions
// do not move it, and an ack moves it to the next one.
func TestOldestUnacked(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := New(Config{}, 0, 0)
	if !l.OldestUnacked().IsZero() {
		t.Fatal("OldestUnacked of an empty layer is not zero")
	}
	_ = l.Queue(packet.ControlV1, []byte("a"))
	if !l.OldestUnacked().IsZero() {
		t.Fatal("a message not yet sent counts as unacknowledged")
	}
	first := l.Due(nil, t0)
	_ = l.Queue(packet.ControlV1, []byte("b"))
	l.Due(nil, t0.Add(time.Second))
	for _, d := range []time.Duration{2, 6, 14, 30, 46} {
		l.Due(nil, t0.Add(d*time.Second)) // retransmissions
	}
	if got := l.OldestUnacked(); !got.Equal(t0) {
		t.Fatalf("OldestUnacked %v after retransmissions, want the first send %v", got, t0)
	}
	l.Ack([]uint32{first[0].ID}, t0.Add(50*time.Second))
	if got := l.OldestUnacked(); !got.Equal(t0.Add(time.Second)) {
		t.Fatalf("OldestUnacked %v after the first was acked, want %v", got, t0.Add(time.Second))
	}
}
