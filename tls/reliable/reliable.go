// Package reliable implements the OpenVPN control channel's reliability layer for one key state:
// message packet-ids, the send window with retransmission and exponential backoff, the receive
// window that restores order, and the acknowledgements owed to the peer.
//
// It owns no sockets, no timers and no TLS: the caller feeds it parsed control packets, asks it
// which messages are due to be (re)sent at a given time and which acks are owed, and builds the
// packets. The caller serialises access; a Layer is not safe for concurrent use.
//
// Facts (OpenVPN 2.6, reliable.c and ssl_pkt.h): ids start at 0 (the reset) and grow by one per new
// message per direction; every received message is acked individually, duplicates again; a peer
// keeps at most 6 unacked messages and accepts ids only in [next, next+12).
package reliable

import (
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
)

// Config sets the windows and the first retransmission timeout.
type Config struct {
	SendWindow     int
	RecvWindow     int
	InitialTimeout time.Duration
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

	nextRecvID uint32
	recv       []inMsg // ring indexed by id % RecvWindow

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
	return &Layer{
		cfg:        cfg,
		nextSendID: firstSend,
		nextRecvID: firstRecv,
		recv:       make([]inMsg, cfg.RecvWindow),
	}
}

// Queue adds a new outgoing reliable message. It is sent when the send window has room.
func (l *Layer) Queue(op packet.Opcode, payload []byte) {
	l.backlog = append(l.backlog, Message{ID: l.nextSendID, Opcode: op, Payload: payload})
	l.nextSendID++
}

// Backlog reports how many messages wait for room in the send window.
func (l *Layer) Backlog() int { return len(l.backlog) }

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
	w := uint32(len(l.recv))
	if m.ID-l.nextRecvID >= w && int32(m.ID-l.nextRecvID) >= 0 {
		return false // beyond the window
	}
	l.owe(m.ID)
	if int32(m.ID-l.nextRecvID) < 0 {
		return false // already delivered
	}
	slot := &l.recv[m.ID%w]
	if slot.present {
		return false
	}
	*slot = inMsg{Message: m, present: true}
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
	slot := &l.recv[l.nextRecvID%uint32(len(l.recv))]
	if !slot.present || slot.ID != l.nextRecvID {
		return Message{}, false
	}
	m := slot.Message
	*slot = inMsg{}
	l.nextRecvID++
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
