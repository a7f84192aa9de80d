package reliable

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
)

// peer is one end of a simulated lossy, reordering, duplicating link.
type peer struct {
	l   *Layer
	got [][]byte
}

type wireMsg struct {
	acks []uint32
	msg  *Message
}

func TestTransferOverLossyLink(t *testing.T) {
	for seed := uint64(1); seed <= 30; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, seed*7))
			now := time.Unix(1000, 0)
			a := &peer{l: New(Config{}, 0, 0)}
			b := &peer{l: New(Config{}, 0, 0)}
			var want [][]byte
			for i := range 40 {
				p := []byte(fmt.Sprintf("message %d", i))
				want = append(want, p)
				a.l.Queue(packet.ControlV1, p)
			}
			var toB, toA []wireMsg
			for step := 0; step < 5000 && len(b.got) < len(want); step++ {
				now = now.Add(100 * time.Millisecond)
				for _, m := range a.l.Due(nil, now) {
					m := m
					toB = append(toB, wireMsg{msg: &m})
				}
				if b.l.PendingAcks() > 0 {
					toA = append(toA, wireMsg{acks: b.l.TakeAcks(nil, 8)})
				}
				// deliver with loss 30%, duplication 10%, reordering by shuffling
				rng.Shuffle(len(toB), func(i, j int) { toB[i], toB[j] = toB[j], toB[i] })
				for _, w := range toB {
					if rng.IntN(10) < 3 {
						continue
					}
					reps := 1
					if rng.IntN(10) == 0 {
						reps = 2
					}
					for range reps {
						b.l.Receive(*w.msg)
					}
				}
				toB = toB[:0]
				for m, ok := b.l.Next(); ok; m, ok = b.l.Next() {
					b.got = append(b.got, m.Payload)
				}
				for _, w := range toA {
					if rng.IntN(10) < 3 {
						continue
					}
					a.l.Ack(w.acks, now)
				}
				toA = toA[:0]
			}
			if len(b.got) != len(want) {
				t.Fatalf("delivered %d of %d messages", len(b.got), len(want))
			}
			for i := range want {
				if !bytes.Equal(b.got[i], want[i]) {
					t.Fatalf("message %d = %q, want %q (order broken)", i, b.got[i], want[i])
				}
			}
		})
	}
}

func TestWindowLimitsInflight(t *testing.T) {
	now := time.Unix(0, 0)
	l := New(Config{SendWindow: 6}, 0, 0)
	for range 10 {
		l.Queue(packet.ControlV1, []byte("x"))
	}
	if got := len(l.Due(nil, now)); got != 6 {
		t.Fatalf("first Due sent %d, want 6", got)
	}
	if got := len(l.Due(nil, now)); got != 0 {
		t.Fatalf("second Due at the same time sent %d, want 0", got)
	}
	l.Ack([]uint32{0, 1}, now)
	if got := l.Due(nil, now); len(got) != 2 || got[0].ID != 6 || got[1].ID != 7 {
		t.Fatalf("after two acks Due = %+v, want ids 6,7", got)
	}
}

func TestBackoffDoubles(t *testing.T) {
	now := time.Unix(0, 0)
	l := New(Config{InitialTimeout: 2 * time.Second}, 5, 0)
	l.Queue(packet.ControlV1, []byte("x"))
	var sends []time.Duration
	start := now
	for i := 0; i < 400; i++ {
		now = now.Add(100 * time.Millisecond)
		if n := len(l.Due(nil, now)); n > 0 {
			sends = append(sends, now.Sub(start))
		}
	}
	want := []time.Duration{100 * time.Millisecond, 2100 * time.Millisecond, 6100 * time.Millisecond, 14100 * time.Millisecond, 30100 * time.Millisecond}
	for i, w := range want {
		if i >= len(sends) || sends[i] != w {
			t.Fatalf("send times %v, want prefix %v", sends, want)
		}
	}
}

func TestDuplicateIsAckedAgainNotDelivered(t *testing.T) {
	l := New(Config{}, 0, 1)
	if !l.Receive(Message{ID: 1, Opcode: packet.ControlV1}) {
		t.Fatal("first receive of id 1 not new")
	}
	if _, ok := l.Next(); !ok {
		t.Fatal("id 1 not delivered")
	}
	l.TakeAcks(nil, 8)
	if l.Receive(Message{ID: 1, Opcode: packet.ControlV1}) {
		t.Fatal("duplicate id 1 reported new")
	}
	if got := l.TakeAcks(nil, 8); len(got) != 1 || got[0] != 1 {
		t.Fatalf("duplicate not acked again: acks %v", got)
	}
	if l.Receive(Message{ID: 2 + DefaultRecvWindow, Opcode: packet.ControlV1}) {
		t.Fatal("id beyond the window accepted")
	}
	if l.PendingAcks() != 0 {
		t.Fatal("id beyond the window acked")
	}
}

func TestFastRetransmitAfterThreeLaterAcks(t *testing.T) {
	now := time.Unix(0, 0)
	l := New(Config{}, 0, 0)
	for range 5 {
		l.Queue(packet.ControlV1, []byte("x"))
	}
	l.Due(nil, now)
	now = now.Add(10 * time.Millisecond)
	l.Ack([]uint32{1, 2, 3}, now)
	got := l.Due(nil, now)
	if len(got) != 1 || got[0].ID != 0 {
		t.Fatalf("after 3 later acks Due = %+v, want a resend of id 0", got)
	}
}

// TestReceiveWindowAgainstModel: messages arriving in any order, with duplicates and ids
// outside the window, come out in order exactly once, as a model that keeps every id in a set
// says; and the receive window exists only while a message waits in it.
func TestReceiveWindowAgainstModel(t *testing.T) {
	for seed := uint64(1); seed <= 50; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed*3))
		l := New(Config{}, 0, 0)
		held := map[uint32]bool{} // the model: ids received and not yet delivered
		var next uint32           // the model's next id to deliver
		for step := 0; step < 400; step++ {
			id := next + uint32(rng.IntN(DefaultRecvWindow+4)) - 2
			isNew := l.Receive(Message{ID: id, Opcode: packet.ControlV1, Payload: []byte{byte(id)}})
			wantNew := int32(id-next) >= 0 && id-next < DefaultRecvWindow && !held[id]
			if isNew != wantNew {
				t.Fatalf("seed %d: Receive(%d) with next %d = %v, want %v", seed, id, next, isNew, wantNew)
			}
			if wantNew {
				held[id] = true
			}
			for m, ok := l.Next(); ok; m, ok = l.Next() {
				if m.ID != next || !held[next] || m.Payload[0] != byte(next) {
					t.Fatalf("seed %d: Next gave %d, want %d", seed, m.ID, next)
				}
				delete(held, next)
				next++
			}
			if held[next] {
				t.Fatalf("seed %d: %d was received but not delivered", seed, next)
			}
			if (len(held) == 0) != (l.recv == nil) {
				t.Fatalf("seed %d: %d messages wait, receive window allocated: %v", seed, len(held), l.recv != nil)
			}
		}
	}
}
