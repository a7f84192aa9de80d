// Package reliable implements the OpenVPN control channel's reliability layer for one key state:
// message packet-ids, the send window with retransmission and exponential backoff, the receive
// window that restores order, and the acknowledgements owed to the peer.
//
// It owns no sockets, no timers and no TLS: the caller feeds it parsed control packets, asks it
// which messages are due to be (re)sent at a given time and which acks are owed, and builds the
// packets. The caller serialises access; a Layer is not safe for concurrent use.
//
// The send side is bounded: the payload bytes held for sending (queued, or sent and not yet
// acknowledged) never exceed Config.MaxQueued, so a peer that withholds its acks costs a fixed
// amount of memory however much the caller tries to send; a write beyond the bound is refused
// with ErrFull. Stream bytes (Append) fill the newest queued message before a new one starts, as
// OpenVPN fills each control packet from the TLS output buffer up to its payload size (ssl.c,
// tls_process), so many small TLS records cost few messages. OldestUnacked tells the caller how
// long the peer has left a message unacknowledged.
//
// Facts (OpenVPN 2.6, reliable.c and ssl_pkt.h): ids start at 0 (the reset) and grow by one per new
// message per direction; every received message is acked individually, duplicates again; a peer
// keeps at most 6 unacked messages and accepts ids only in [next, next+12).
package reliable

import (
	"errors"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
)

// Defaults from OpenVPN 2.6 (TLS_RELIABLE_N_SEND_BUFFERS, TLS_RELIABLE_N_REC_BUFFERS, --tls-timeout).
const (
	DefaultSendWindow     = 6
	DefaultRecvWindow     = 12
	DefaultInitialTimeout = 2 * time.Second
	// maxTimeout caps the backoff so a slow peer is retried at least this often.
	maxTimeout = 16 * time.Second
	// fastRetransmitAcks is how many acks of later messages trigger an early resend (N_ACK_RETRANSMIT).
	fastRetransmitAcks = 3
	// maxPendingAcks bounds the acks owed; beyond it the oldest are forgotten (the peer retransmits).
	maxPendingAcks = 64
	// DefaultMaxQueued bounds the payload bytes held for sending. A server's largest legitimate
	// flight (its TLS handshake flight with the certificate chain and the client CA names, or a
	// PUSH_REPLY with its continuations) is a few KiB; this leaves room for ten times that.
	DefaultMaxQueued = 64 << 10
)

// ErrFull says a message was refused because the bytes held for sending would pass MaxQueued.
var ErrFull = errors.New("reliable: send backlog full")

// Config sets the windows, the first retransmission timeout and the send bound.
type Config struct {
	SendWindow     int
	RecvWindow     int
	InitialTimeout time.Duration
	// MaxQueued bounds the payload bytes queued or sent and not yet acknowledged; zero means
	// DefaultMaxQueued.
	MaxQueued int
}

// Message is one reliable control message: its opcode and payload (TLS ciphertext or empty).
type Message struct {
	ID      uint32
	Opcode  packet.Opcode
	Payload []byte
}

type outMsg struct {
	Message
	sent      bool
	first     time.Time // when it was first sent
	due       time.Time
	timeout   time.Duration
	laterAcks int
}

type inMsg struct {
	Message
	present bool
}

// Layer is the reliability state of one key state, both directions.
type Layer struct {
	cfg Config

	nextSendID uint32
	inflight   []outMsg // in id order, at most cfg.SendWindow, oldest first
	backlog    []Message
	queued     int // payload bytes in inflight and backlog, at most cfg.MaxQueued

	nextRecvID uint32
	// head holds the next message in order (id nextRecvID) when it arrives in order, the common
	// case; recv holds messages that arrived ahead of it, a ring indexed by id % RecvWindow
	// made when the first one arrives and let go when it empties, so an idle key state keeps
	// no receive window.
	head   inMsg
	recv   []inMsg
	stored int // messages in recv

	acks []uint32 // owed to the peer, oldest first
}

// New returns a Layer whose first outgoing message id is firstSend and which expects firstRecv next.
// A fresh key state starts both at 0; the server of a cookie handshake starts both at 1, because the
// two resets (id 0) were exchanged before it kept any state.
func New(cfg Config, firstSend, firstRecv uint32) *Layer {
	if cfg.SendWindow <= 0 {
		cfg.SendWindow = DefaultSendWindow
	}
	if cfg.RecvWindow <= 0 {
		cfg.RecvWindow = DefaultRecvWindow
	}
	if cfg.InitialTimeout <= 0 {
		cfg.InitialTimeout = DefaultInitialTimeout
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = DefaultMaxQueued
	}
	return &Layer{
		cfg:        cfg,
		nextSendID: firstSend,
		nextRecvID: firstRecv,
	}
}

// Queue adds a new outgoing reliable message, which keeps payload. It is sent when the send
// window has room. It fails with ErrFull, queuing nothing, when the payload would take the bytes
// held for sending past the bound; an empty message (a reset) always fits.
func (l *Layer) Queue(op packet.Opcode, payload []byte) error {
	if len(payload) > l.cfg.MaxQueued-l.queued {
		return ErrFull
	}
	// Clipped, so that Append never writes into the caller's spare capacity.
	l.backlog = append(l.backlog, Message{ID: l.nextSendID, Opcode: op, Payload: payload[:len(payload):len(payload)]})
	l.nextSendID++
	l.queued += len(payload)
	return nil
}

// Append queues stream bytes (a copy of p) as op messages of at most maxPayload bytes each,
// filling the newest queued message first when it has the same opcode and has not been sent:
// the peer sees one byte stream, so where messages split does not matter. It fails with ErrFull,
// queuing nothing, when p would take the bytes held for sending past the bound.
func (l *Layer) Append(op packet.Opcode, p []byte, maxPayload int) error {
	if len(p) > l.cfg.MaxQueued-l.queued {
		return ErrFull
	}
	l.queued += len(p)
	if n := len(l.backlog); n > 0 && l.backlog[n-1].Opcode == op {
		tail := &l.backlog[n-1]
		if room := maxPayload - len(tail.Payload); room > 0 {
			m := min(room, len(p))
			tail.Payload = grow(tail.Payload, p[:m], maxPayload)
			p = p[m:]
		}
	}
	for len(p) > 0 {
		m := min(len(p), maxPayload)
		l.backlog = append(l.backlog, Message{ID: l.nextSendID, Opcode: op, Payload: append([]byte(nil), p[:m]...)})
		l.nextSendID++
		p = p[m:]
	}
	return nil
}

// grow appends p to b, doubling b's capacity when it must but never beyond limit, so a message
// filled by many small writes holds at most twice its bytes and never more than limit.
func grow(b, p []byte, limit int) []byte {
	if len(b)+len(p) > cap(b) {
		nb := make([]byte, len(b), min(limit, max(2*cap(b), len(b)+len(p))))
		copy(nb, b)
		b = nb
	}
	return append(b, p...)
}

// Queued reports the payload bytes held for sending: queued, or sent and not yet acknowledged.
func (l *Layer) Queued() int { return l.queued }

// Room reports how many more payload bytes the bound admits.
func (l *Layer) Room() int { return l.cfg.MaxQueued - l.queued }

// Backlog reports how many messages wait for room in the send window.
func (l *Layer) Backlog() int { return len(l.backlog) }

// OldestUnacked is when the oldest message that was sent and not yet acknowledged was first sent;
// zero when there is none. Retransmissions do not change it: it tells how long the peer has left
// the message unacknowledged.
func (l *Layer) OldestUnacked() time.Time {
	var t time.Time
	for i := range l.inflight {
		if m := &l.inflight[i]; m.sent && (t.IsZero() || m.first.Before(t)) {
			t = m.first
		}
	}
	return t
}

// Unacked reports how many messages were sent and not yet acknowledged.
func (l *Layer) Unacked() int { return len(l.inflight) }

// Idle reports whether every queued message was sent and acknowledged.
func (l *Layer) Idle() bool { return len(l.inflight) == 0 && len(l.backlog) == 0 }

// Ack processes acknowledgements carried by a packet from the peer.
func (l *Layer) Ack(ids []uint32, now time.Time) {
	for _, id := range ids {
		for i := range l.inflight {
			if l.inflight[i].ID != id {
				continue
			}
			l.queued -= len(l.inflight[i].Payload)
			copy(l.inflight[i:], l.inflight[i+1:])
			l.inflight[len(l.inflight)-1] = outMsg{} // drop the payload reference the tail kept
			l.inflight = l.inflight[:len(l.inflight)-1]
			// Messages older than the acked one were probably lost: count it toward a fast resend.
			for j := 0; j < i && j < len(l.inflight); j++ {
				m := &l.inflight[j]
				m.laterAcks++
				if m.sent && m.laterAcks >= fastRetransmitAcks {
					m.due = now
					m.laterAcks = 0
				}
			}
			break
		}
	}
}

// Receive stores an incoming reliable message and records that it must be acked. It reports
// whether the message was new; duplicates and messages outside the window are not stored
// (out-of-window ones are not acked either, so the peer resends them later).
func (l *Layer) Receive(m Message) bool {
	w := uint32(l.cfg.RecvWindow)
	if m.ID-l.nextRecvID >= w && int32(m.ID-l.nextRecvID) >= 0 {
		return false // beyond the window
	}
	l.owe(m.ID)
	if int32(m.ID-l.nextRecvID) < 0 {
		return false // already delivered
	}
	if m.ID == l.nextRecvID {
		if l.head.present || (l.recv != nil && l.recv[m.ID%w].present) {
			return false
		}
		l.head = inMsg{Message: m, present: true}
		return true
	}
	if l.recv == nil {
		l.recv = make([]inMsg, w)
	}
	slot := &l.recv[m.ID%w]
	if slot.present {
		return false
	}
	*slot = inMsg{Message: m, present: true}
	l.stored++
	return true
}

func (l *Layer) owe(id uint32) {
	for _, a := range l.acks {
		if a == id {
			return
		}
	}
	if len(l.acks) >= maxPendingAcks {
		l.acks = l.acks[1:]
	}
	l.acks = append(l.acks, id)
}

// Next returns the next in-order received message, if it has arrived.
func (l *Layer) Next() (Message, bool) {
	if l.head.present && l.head.ID == l.nextRecvID {
		m := l.head.Message
		l.head = inMsg{}
		l.nextRecvID++
		return m, true
	}
	if l.recv == nil {
		return Message{}, false
	}
	slot := &l.recv[l.nextRecvID%uint32(len(l.recv))]
	if !slot.present || slot.ID != l.nextRecvID {
		return Message{}, false
	}
	m := slot.Message
	*slot = inMsg{}
	l.nextRecvID++
	if l.stored--; l.stored == 0 {
		l.recv = nil
	}
	return m, true
}

// NextRecvID is the id of the next message expected from the peer.
func (l *Layer) NextRecvID() uint32 { return l.nextRecvID }

// PendingAcks reports how many acks are owed.
func (l *Layer) PendingAcks() int { return len(l.acks) }

// TakeAcks removes up to max owed acks into dst and returns it.
func (l *Layer) TakeAcks(dst []uint32, max int) []uint32 {
	n := min(max, len(l.acks))
	dst = append(dst, l.acks[:n]...)
	l.acks = l.acks[n:]
	if len(l.acks) == 0 {
		l.acks = l.acks[:0:0]
	}
	return dst
}

// Due returns the messages that must be (re)sent at now, marking them sent and scheduling their
// next retransmission with a doubled timeout. Messages leave the backlog as the window allows.
func (l *Layer) Due(dst []Message, now time.Time) []Message {
	for len(l.backlog) > 0 && len(l.inflight) < l.cfg.SendWindow {
		l.inflight = append(l.inflight, outMsg{Message: l.backlog[0], due: now, timeout: l.cfg.InitialTimeout})
		l.backlog[0] = Message{}
		l.backlog = l.backlog[1:]
	}
	if len(l.backlog) == 0 {
		l.backlog = nil // let the drained array go
	}
	if len(l.inflight) == 0 {
		l.inflight = nil
	}
	for i := range l.inflight {
		m := &l.inflight[i]
		if now.Before(m.due) {
			continue
		}
		if m.sent {
			m.timeout = min(2*m.timeout, maxTimeout)
		} else {
			m.first = now
		}
		m.sent = true
		m.due = now.Add(m.timeout)
		m.laterAcks = 0
		dst = append(dst, m.Message)
	}
	return dst
}

// ResendNow makes every unacked message due at now, as OpenVPN does when the peer's reset arrives.
func (l *Layer) ResendNow(now time.Time) {
	for i := range l.inflight {
		l.inflight[i].due = now
	}
}

// NextDeadline is when Due next has something to send (now if a queued message fits the window);
// zero when nothing is in flight or queued.
func (l *Layer) NextDeadline(now time.Time) time.Time {
	var t time.Time
	if len(l.backlog) > 0 && len(l.inflight) < l.cfg.SendWindow {
		return now
	}
	for i := range l.inflight {
		if t.IsZero() || l.inflight[i].due.Before(t) {
			t = l.inflight[i].due
		}
	}
	return t
}
