package channel

import (
	"io"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// ackRecorder is a channel whose sent packets are parsed and kept, on a fake clock.
type ackRecorder struct {
	c     *Channel
	clock *fakeClock
	mu    sync.Mutex
	sent  []packet.Control
}

func newAckRecorder(t *testing.T, delay time.Duration) *ackRecorder {
	t.Helper()
	r := &ackRecorder{clock: &fakeClock{now: time.Unix(1_000_000, 0)}}
	r.c = New(Config{
		LocalSID: packet.SessionID{1}, RemoteSID: packet.SessionID{2},
		Wrapper:  tlscrypt.NewPlain(),
		Now:      r.clock.Now,
		AckDelay: delay,
		Send: func(w []byte) {
			p, err := packet.ParseControl(w)
			if err != nil {
				t.Errorf("sent an unparsable packet: %v", err)
				return
			}
			p.Payload = append([]byte(nil), p.Payload...)
			r.mu.Lock()
			r.sent = append(r.sent, p)
			r.mu.Unlock()
		},
	}, true)
	t.Cleanup(r.c.Close)
	return r
}

// take returns the packets sent since the last call.
func (r *ackRecorder) take() []packet.Control {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sent
	r.sent = nil
	return s
}

// input feeds the channel message id of key 0 carrying payload.
func (r *ackRecorder) input(t *testing.T, id uint32, payload string) {
	t.Helper()
	p := packet.Control{Opcode: packet.ControlV1, SessionID: packet.SessionID{2}, PacketID: id, Payload: []byte(payload)}
	if err := r.c.Input(&p, id, 0); err != nil {
		t.Fatalf("input of message %d: %v", id, err)
	}
}

// acked lists the ids the packets acknowledge (with the recently acked ones that ride again),
// and how many of the packets were bare acks.
func acked(ps []packet.Control) (ids []uint32, bare int) {
	for _, p := range ps {
		ids = append(ids, p.Acks[:p.NumAcks]...)
		if p.Opcode == packet.AckV1 {
			bare++
		}
	}
	return ids, bare
}

// TestAckRidesOnAnswer: a message read by the stream's reader, who answers it, is acknowledged
// inside the answer; no bare ack goes ahead of it (OpenVPN answers in the loop that read the
// packet, so its acks ride the same way).
func TestAckRidesOnAnswer(t *testing.T) {
	r := newAckRecorder(t, 0)
	r.input(t, 1, "client hello")
	if got := r.take(); len(got) != 0 {
		t.Fatalf("sent %d packets before the reader answered, want none", len(got))
	}
	conn := r.c.Key(0).Conn()
	buf := make([]byte, 64)
	if n, err := conn.Read(buf); err != nil || string(buf[:n]) != "client hello" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if _, err := conn.Write([]byte("server hello")); err != nil {
		t.Fatal(err)
	}
	got := r.take()
	ids, bare := acked(got)
	if len(got) != 1 || got[0].Opcode != packet.ControlV1 || bare != 0 || len(ids) != 1 || ids[0] != 1 {
		t.Fatalf("sent %+v: want one P_CONTROL_V1 carrying the ack of message 1", got)
	}
}

// TestAckWhenReaderWaits: a message that the reader reads without answering is acknowledged
// by a bare ack as soon as the reader waits for more, not after the delay.
func TestAckWhenReaderWaits(t *testing.T) {
	r := newAckRecorder(t, time.Hour) // only the reader's wait can send it
	r.input(t, 1, "part one of a flight")
	conn := r.c.Key(0).Conn()
	buf := make([]byte, 64)
	if _, err := conn.Read(buf); err != nil {
		t.Fatal(err)
	}
	if got := r.take(); len(got) != 0 {
		t.Fatalf("sent %d packets while the reader still ran, want none", len(got))
	}
	done := make(chan error, 1)
	go func() {
		_, err := conn.Read(buf)
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	var got []packet.Control
	for len(got) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		got = r.take()
	}
	if ids, bare := acked(got); bare != 1 || len(ids) != 1 || ids[0] != 1 {
		t.Fatalf("sent %+v once the reader waited: want one bare ack of message 1", got)
	}
	r.c.Close()
	if err := <-done; err != io.EOF {
		t.Fatalf("read after close: %v, want EOF", err)
	}
}

// TestAckAfterDelay: with no reader at all, the ack leaves bare once the delay has passed, from
// the channel's timer; and a message of the peer's flight that comes before that shares the ack.
func TestAckAfterDelay(t *testing.T) {
	r := newAckRecorder(t, 50*time.Millisecond)
	r.input(t, 1, "one")
	r.input(t, 2, "two")
	r.c.Flush()
	if got := r.take(); len(got) != 0 {
		t.Fatalf("sent %d packets before the delay passed, want none", len(got))
	}
	r.clock.Advance(50 * time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	var got []packet.Control
	for len(got) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // the timer runs on the wall clock; the fake one has passed
		got = r.take()
	}
	if ids, bare := acked(got); bare != 1 || len(ids) != 2 {
		t.Fatalf("sent %+v after the delay: want one bare ack of messages 1 and 2", got)
	}
}

// TestAckAtOnce: a duplicate (the peer resends: it did not see our ack), a message out of
// order and a message without payload are acknowledged at once, as is everything with a
// negative AckDelay; and closing the channel acknowledges what was read.
func TestAckAtOnce(t *testing.T) {
	r := newAckRecorder(t, time.Hour)
	r.input(t, 1, "first")
	r.input(t, 1, "first")
	if ids, bare := acked(r.take()); bare != 1 || len(ids) != 1 || ids[0] != 1 {
		t.Fatalf("duplicate: acked %v in %d bare acks, want message 1 in one", ids, bare)
	}
	r.input(t, 3, "early")
	if ids, bare := acked(r.take()); bare != 1 || !contains(ids, 3) {
		t.Fatalf("out of order: acked %v in %d bare acks, want message 3 in one", ids, bare)
	}
	r.input(t, 2, "")
	if ids, _ := acked(r.take()); !contains(ids, 2) {
		t.Fatalf("empty message: acked %v, want message 2", ids)
	}
	r.input(t, 4, "exit")
	if got := r.take(); len(got) != 0 {
		t.Fatalf("sent %d packets for a new message, want none yet", len(got))
	}
	r.c.Close()
	if ids, bare := acked(r.take()); bare != 1 || !contains(ids, 4) {
		t.Fatalf("close: acked %v in %d bare acks, want message 4 in one", ids, bare)
	}

	now := newAckRecorder(t, -1)
	now.input(t, 1, "hello")
	if ids, bare := acked(now.take()); bare != 1 || len(ids) != 1 {
		t.Fatalf("AckDelay -1: acked %v in %d bare acks, want one at once", ids, bare)
	}
}
