// Package channel runs the control channel of one OpenVPN session: the session ids, the replay
// state of the control-packet wrapping, and one reliable layer plus a TLS byte-stream bridge per
// key state (key_id 0..7). It turns authenticated control packets into an in-order byte stream that
// crypto/tls reads through Conn, and turns what crypto/tls writes into reliable control packets.
//
// It is the same for both roles: the server engine (package tunnel) and the load generator (bench)
// use it. It does not run TLS, choose keys or parse key-method messages; the owner does that over
// the net.Conn that Key returns. It owns no socket: packets leave through Config.Send.
//
// Concurrency: mu guards all state. Input is called by the owner's receive goroutine; Conn.Write
// by the TLS goroutines; retransmissions fire from a timer. None of them blocks on the network.
//
// Abuse bounds (a peer that authenticated can still be hostile): the bytes held for sending are
// bounded per key state and in all (MaxKeyBacklog, MaxBacklog), so a peer that withholds its acks
// while making our TLS write (TLS 1.3 KeyUpdate requests, each answered by a KeyUpdate) costs a
// fixed amount of memory: the write past the bound fails and so does the channel. A message the
// peer leaves unacknowledged for AckTimeout (the hand window) fails the channel too. The owner
// learns either through Config.Fail and ends the session. Control packets from the peer pass a
// token bucket (RateBurst, RateLimit); the excess is dropped and counted.
package channel

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/reliable"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// Limits of the control channel.
const (
	// MaxPayload is the largest TLS payload put in one control packet: a 2.6 peer keeps control
	// packets within 1250 bytes including IPv6+UDP overhead; ours stay well under that even with
	// tls-auth SHA512, four piggybacked acks and the TCP length prefix.
	MaxPayload = 1000
	// maxBuffered bounds the TLS bytes waiting to be read from one key state.
	maxBuffered = 256 << 10
	// pushAcksMax is how many acks ride on an outgoing reliable packet (CONTROL_SEND_ACK_MAX).
	pushAcksMax = 4

	// DefaultMaxKeyBacklog and DefaultMaxBacklog bound the TLS bytes held for sending, queued or
	// sent and unacknowledged, per key state and over all of a session's key states (at most two
	// live at once: the current one and its lame duck). The largest legitimate burst of TLS
	// output is the server's handshake flight (certificate chain, client CA names) or a
	// PUSH_REPLY with its continuations: a few KiB.
	DefaultMaxKeyBacklog = reliable.DefaultMaxQueued
	DefaultMaxBacklog    = 96 << 10

	// DefaultRateBurst and DefaultRateLimit bound the control packets accepted from a peer: a
	// bucket of 100 packets refilled at 10 a second. Measured over UDP with tls-crypt and a
	// renegotiation every 4 s for 20 s, the stock 2.6 client sent 31 control packets for its
	// handshake and five renegotiations, at most 6 in any second; the Go client of bench/client
	// sent 10 for a handshake and 8 for each renegotiation, at most 10 in any second, before
	// its acks rode on its answers (AckDelay), and fewer since. A lossy link adds
	// retransmissions of at most a send window (6) per round.
	DefaultRateBurst = 100
	DefaultRateLimit = 10.0

	// DefaultAckDelay bounds how long the ack of a message handed to the TLS stream waits for
	// a packet of ours to ride on (Config.AckDelay).
	DefaultAckDelay = 100 * time.Millisecond
)

// Errors.
var (
	ErrClosed       = errors.New("channel: closed")
	ErrWrongSession = errors.New("channel: packet for another session")
	ErrReplay       = errors.New("channel: replayed control packet")
	ErrKeyID        = errors.New("channel: key id out of sync")
	ErrOverflow     = errors.New("channel: peer sent more than the receive buffer holds")
	// ErrBacklogFull fails a write, and the channel, when the bytes held for sending would pass
	// MaxKeyBacklog or MaxBacklog: the peer does not acknowledge what it is sent.
	ErrBacklogFull = errors.New("channel: send backlog full")
	// ErrStalled fails the channel when the peer left a message unacknowledged for AckTimeout.
	ErrStalled = errors.New("channel: peer stopped acknowledging")
	// ErrRateLimited drops a control packet beyond the peer's rate limit.
	ErrRateLimited = errors.New("channel: control packet rate limit exceeded")
)

// Config describes one session's control channel.
type Config struct {
	LocalSID  packet.SessionID
	RemoteSID packet.SessionID
	Wrapper   tlscrypt.Wrapper
	// Send transmits one wire packet; it must not block for long and must not call back into the
	// Channel. It is called with the channel's lock held.
	Send func(wire []byte)
	Now  func() time.Time
	Log  *slog.Logger
	// NewKey is called (with the lock held, so it must only start work) when the peer starts a
	// renegotiation with a soft reset for a new key id.
	NewKey func(k *Key)
	// Replay says the wrapping carries replay ids to check (tls-auth, tls-crypt).
	Replay bool
	// SendPID is the next replay id to send; zero starts at 1.
	SendPID uint32
	// Reset, for a channel that is not yet established, is this side's hard reset opcode: it is
	// queued as message 0 and leaves with the first flush, so a server's reset carries the ack of
	// the client's (a 2.6 client refuses a bare ack before it knows the server's session id).
	Reset packet.Opcode

	// MaxKeyBacklog and MaxBacklog bound the TLS bytes held for sending (queued, or sent and not
	// yet acknowledged) per key state and over all key states; zero means DefaultMaxKeyBacklog
	// and DefaultMaxBacklog. A Conn.Write past either fails with ErrBacklogFull and fails the
	// channel.
	MaxKeyBacklog, MaxBacklog int
	// AckTimeout fails the channel with ErrStalled when a message sent to the peer stays
	// unacknowledged this long; a server passes its hand window (OpenVPN --hand-window, 60 s).
	// Zero never does.
	AckTimeout time.Duration
	// Fail is told once why the channel failed (ErrBacklogFull or ErrStalled, wrapped); the
	// owner ends the session. It is called without the channel's lock held, on the goroutine
	// that found the failure (a TLS writer, the retransmission timer, the receive goroutine), so
	// it must not block; it may call into the channel. Nil: nobody is told, the channel only
	// refuses writes from then on.
	Fail func(err error)
	// RateBurst and RateLimit bound the control packets accepted from the peer, after their
	// authentication and replay checks: a token bucket of RateBurst packets refilled at
	// RateLimit packets a second. Input drops the excess with ErrRateLimited and counts it
	// (RateLimited). Zero means DefaultRateBurst and DefaultRateLimit; a negative RateLimit
	// turns the limit off.
	RateBurst int
	RateLimit float64
	// AckDelay is how long the ack of a new in-order message, handed to the TLS stream, may wait
	// to ride on the answer the stream's reader writes. OpenVPN runs TLS in the loop that reads
	// the packet, so its answer carries the ack (ssl.c, tls_process sends a bare P_ACK_V1 only
	// when it has nothing else to send); here TLS runs on another goroutine, and acking at once
	// sent a bare ack ahead of nearly every answer: about six extra packets each way per
	// handshake. The ack goes out bare as soon as the reader has read everything and waits for
	// more (no answer is coming), or after AckDelay when the reader is slow to run. Duplicates,
	// messages out of order and messages without payload are acked at once. Zero means
	// DefaultAckDelay; a negative value acks everything at once.
	AckDelay time.Duration
}

// Channel is one session's control channel.
type Channel struct {
	cfg Config

	mu      sync.Mutex
	closed  bool
	sendPID uint32
	replay  tlscrypt.ReplayWindow
	keys    [8]*Key
	current uint8
	prev    uint8 // the key current was before the newest renegotiation
	timer   *time.Timer
	acks    []uint32
	due     []reliable.Message
	bucket  packetBucket
	// err is why the channel failed (nil while it works); reported says Fail was called with it.
	err      error
	reported bool

	rateLimited atomic.Uint64 // control packets dropped by the rate limit
}

// sendBuf holds a packet while it is built and wrapped; pooled, so an idle session keeps none.
type sendBuf struct{ plain, wire []byte }

var sendBufs = sync.Pool{New: func() any { return &sendBuf{plain: make([]byte, 0, 1400), wire: make([]byte, 0, 1500)} }}

// Key is the control state of one key id: its reliable layer and the TLS byte stream over it.
type Key struct {
	ch    *Channel
	ID    uint8
	rel   *reliable.Layer
	conn  *Conn
	ready bool // own reset acknowledged (or skipped by the cookie handshake)
	// parked says no goroutine reads this key's stream; wake starts one when payload arrives.
	parked bool
	wake   func()
	// recent holds the ids acked most recently (newest last). They ride again on outgoing
	// packets with room, as OpenVPN's ack MRU does, so a lost ack costs no retransmission round.
	recent []uint32
	// lameDuck is the key this one took over from, until RetirePrevious lets it go.
	lameDuck *Key
	// ackBy is when the acks owed on this key must leave, bare if nothing else goes first;
	// zero while no ack waits (Config.AckDelay).
	ackBy time.Time
}

// recentAcksMax is the size of the re-ack list (OpenVPN's RELIABLE_ACK_SIZE).
const recentAcksMax = 8

// New returns the channel of a session. first is the key id 0 state; established says the hard
// resets (id 0 both ways) were already exchanged, as after the UDP cookie handshake.
func New(cfg Config, established bool) *Channel {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.SendPID == 0 {
		cfg.SendPID = 1
	}
	if cfg.MaxKeyBacklog <= 0 {
		cfg.MaxKeyBacklog = DefaultMaxKeyBacklog
	}
	if cfg.MaxBacklog <= 0 {
		cfg.MaxBacklog = DefaultMaxBacklog
	}
	if cfg.RateBurst <= 0 {
		cfg.RateBurst = DefaultRateBurst
	}
	if cfg.RateLimit == 0 {
		cfg.RateLimit = DefaultRateLimit
	}
	if cfg.AckDelay == 0 {
		cfg.AckDelay = DefaultAckDelay
	}
	c := &Channel{cfg: cfg, sendPID: cfg.SendPID, bucket: packetBucket{rate: cfg.RateLimit, burst: float64(cfg.RateBurst)}}
	var first uint32
	if established {
		first = 1
	}
	c.keys[0] = c.newKey(0, first, first)
	c.keys[0].ready = established
	if !established && cfg.Reset != 0 {
		_ = c.keys[0].rel.Queue(cfg.Reset, nil)
	}
	return c
}

func (c *Channel) newKey(id uint8, firstSend, firstRecv uint32) *Key {
	k := &Key{ch: c, ID: id, rel: reliable.New(reliable.Config{MaxQueued: c.cfg.MaxKeyBacklog}, firstSend, firstRecv)}
	k.conn = &Conn{key: k}
	k.conn.cond.L = &c.mu
	return k
}

// Key returns the state of key id, or nil.
func (c *Channel) Key(id uint8) *Key {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keys[id&7]
}

// SetWake registers fn, started as a new goroutine when payload arrives while the key is parked.
func (k *Key) SetWake(fn func()) {
	k.ch.mu.Lock()
	defer k.ch.mu.Unlock()
	k.wake = fn
}

// Park records that the key's reader goroutine is leaving, so an idle session holds no goroutine
// (and no stack) for its control channel; the stream's read deadline goes with it, and so does
// its timer. It reports false, leaving the key unparked, when payload is already waiting: the
// caller must keep reading.
func (k *Key) Park() bool {
	k.ch.mu.Lock()
	defer k.ch.mu.Unlock()
	if len(k.conn.in) > 0 || k.conn.closed {
		return false
	}
	k.parked = true
	k.conn.deadline = time.Time{}
	k.conn.stopDeadlineLocked()
	return true
}

// Conn is the TLS byte stream of this key state.
func (k *Key) Conn() *Conn { return k.conn }

// QueueReset queues this side's reset (hard reset from a client, soft reset from either) as message 0.
func (c *Channel) QueueReset(k *Key, op packet.Opcode) {
	c.mu.Lock()
	defer c.unlock()
	_ = k.rel.Queue(op, nil) // an empty message always fits
	c.flushLocked()
}

// StartRenegotiation begins a soft reset for the next key id and returns its state.
func (c *Channel) StartRenegotiation() *Key {
	c.mu.Lock()
	defer c.unlock()
	id := nextKeyID(c.current)
	k := c.newKey(id, 0, 0)
	c.installKeyLocked(k)
	_ = k.rel.Queue(packet.SoftResetV1, nil)
	c.flushLocked()
	return k
}

func nextKeyID(id uint8) uint8 {
	id = (id + 1) & 7
	if id == 0 {
		id = 1
	}
	return id
}

// installKeyLocked makes k the current key; the previous one stays for its lame-duck period and
// any older one is closed. A previous key that was abandoned (a failed renegotiation) does not
// count: the key before it stays.
func (c *Channel) installKeyLocked(k *Key) {
	prev := c.current
	if c.keys[prev] == nil {
		prev = c.prev
	}
	for i, old := range c.keys {
		if old != nil && uint8(i) != prev && uint8(i) != k.ID {
			old.conn.closeLocked()
			c.keys[i] = nil
		}
	}
	c.keys[k.ID] = k
	k.lameDuck = c.keys[prev]
	if k.lameDuck != nil {
		k.lameDuck.lameDuck = nil // closed above: keep no chain of old keys alive
	}
	c.prev, c.current = prev, k.ID
}

// RetirePrevious drops the state of the key k took over from (its lame duck), once k is
// established and the transition window has passed: its stream is closed, so the TLS state
// over it can go, and packets for its key id are refused from then on (OpenVPN lets a lame
// duck key state expire after --tran-window, ssl.c). It does nothing when that key is gone
// already (a later renegotiation closed it) or is the current one.
func (c *Channel) RetirePrevious(k *Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := k.lameDuck
	k.lameDuck = nil
	if old == nil || c.keys[old.ID] != old || old.ID == c.current {
		return
	}
	old.conn.closeLocked()
	c.keys[old.ID] = nil
	if c.prev == old.ID {
		c.prev = c.current
	}
}

// Abandon drops the state of key id, a renegotiation that failed: its stream is closed, and
// the key before it stays as the one control messages use. The next renegotiation takes the
// next key id, as OpenVPN does, so a peer never mistakes it for the failed one.
func (c *Channel) Abandon(id uint8) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id &= 7
	if k := c.keys[id]; k != nil && id != 0 {
		k.conn.closeLocked()
		c.keys[id] = nil
	}
}

// Input processes one unwrapped control packet that arrived with replay id pid and timestamp ts.
func (c *Channel) Input(p *packet.Control, pid, ts uint32) error {
	c.mu.Lock()
	defer c.unlock()
	if c.closed {
		return ErrClosed
	}
	if p.SessionID != c.cfg.RemoteSID {
		return ErrWrongSession
	}
	if p.NumAcks > 0 && p.RemoteSessionID != c.cfg.LocalSID {
		return ErrWrongSession
	}
	if c.cfg.Replay && !c.replay.Check(pid, ts) {
		return ErrReplay
	}
	// Only packets that passed every check take a token, so replays and forgeries cannot use
	// up the peer's allowance.
	now := c.cfg.Now()
	if !c.bucket.allow(now) {
		c.rateLimited.Add(1)
		return ErrRateLimited
	}
	k := c.keys[p.KeyID&7]
	if k == nil {
		if p.Opcode != packet.SoftResetV1 || p.KeyID == 0 {
			return fmt.Errorf("%w: %s for key %d", ErrKeyID, p.Opcode, p.KeyID)
		}
		// The peer renegotiates: answer with our own soft reset for the same key id.
		k = c.newKey(p.KeyID, 0, 0)
		c.installKeyLocked(k)
		_ = k.rel.Queue(packet.SoftResetV1, nil)
		k.ready = true
		if c.cfg.NewKey != nil {
			c.cfg.NewKey(k)
		}
	}
	k.rel.Ack(p.Acks[:p.NumAcks], now)
	if !k.ready && k.rel.Unacked() == 0 && k.rel.Backlog() == 0 {
		k.ready = true
	}
	if p.Opcode.IsReliable() {
		// The ack waits for the reader's answer only when this packet hands it new bytes.
		delay := len(p.Payload) > 0 && p.PacketID == k.rel.NextRecvID() && c.cfg.AckDelay > 0
		// The next message in order is read into the stream below, before Input returns, so it
		// may keep referring to the caller's buffer; one that arrived early waits in the
		// receive window and needs its own copy.
		payload := p.Payload
		if len(payload) == 0 {
			payload = nil
		} else if p.PacketID != k.rel.NextRecvID() {
			payload = append([]byte(nil), payload...)
		}
		if k.rel.Receive(reliable.Message{ID: p.PacketID, Opcode: p.Opcode, Payload: payload}) {
			if p.Opcode == packet.HardResetClientV2 || p.Opcode == packet.HardResetServerV2 || p.Opcode == packet.SoftResetV1 {
				k.rel.ResendNow(now)
			}
		}
		if !delay {
			k.ackBy = now
		} else if k.ackBy.IsZero() {
			k.ackBy = now.Add(c.cfg.AckDelay)
		}
		for m, ok := k.rel.Next(); ok; m, ok = k.rel.Next() {
			if len(m.Payload) == 0 {
				continue
			}
			if len(k.conn.in)+len(m.Payload) > maxBuffered {
				return ErrOverflow
			}
			k.conn.in = append(k.conn.in, m.Payload...)
			k.conn.cond.Broadcast()
			if k.parked && k.wake != nil {
				k.parked = false
				go k.wake()
			}
		}
	}
	c.flushLocked()
	return nil
}

// Flush sends whatever is due now (new messages, retransmissions, owed acks).
func (c *Channel) Flush() {
	c.mu.Lock()
	defer c.unlock()
	c.flushLocked()
}

// unlock releases mu and then tells Config.Fail about a failure found while it was held, once.
// Every method that can fail the channel (a write past the backlog bound, a flush that finds
// the peer stalled) unlocks through it.
func (c *Channel) unlock() {
	var report error
	if c.err != nil && !c.reported && !c.closed {
		c.reported = true
		report = c.err
	}
	c.mu.Unlock()
	if report != nil && c.cfg.Fail != nil {
		c.cfg.Fail(report)
	}
}

// failLocked records why the channel failed; the first reason stands.
func (c *Channel) failLocked(err error) {
	if c.err == nil {
		c.err = err
	}
}

// Err reports why the channel failed (ErrBacklogFull or ErrStalled, wrapped), or nil.
func (c *Channel) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Queued reports the TLS bytes held for sending over all key states: queued, or sent and not yet
// acknowledged. It never exceeds MaxBacklog.
func (c *Channel) Queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queuedLocked()
}

func (c *Channel) queuedLocked() int {
	n := 0
	for _, k := range c.keys {
		if k != nil {
			n += k.rel.Queued()
		}
	}
	return n
}

// RateLimited reports how many control packets the rate limit dropped.
func (c *Channel) RateLimited() uint64 { return c.rateLimited.Load() }

// queueLocked queues p, written to key k's stream, or fails the channel when the bytes held for
// sending would pass a bound.
func (c *Channel) queueLocked(k *Key, p []byte) error {
	if c.err != nil {
		return c.err
	}
	if held := c.queuedLocked(); len(p) > c.cfg.MaxBacklog-held {
		c.failLocked(fmt.Errorf("%w: %d bytes held for sending over all key states, %d more refused (limit %d)", ErrBacklogFull, held, len(p), c.cfg.MaxBacklog))
		return c.err
	}
	if err := k.rel.Append(packet.ControlV1, p, MaxPayload); err != nil {
		c.failLocked(fmt.Errorf("%w: %d bytes held for sending on key %d, %d more refused (limit %d)", ErrBacklogFull, k.rel.Queued(), k.ID, len(p), c.cfg.MaxKeyBacklog))
		return c.err
	}
	return nil
}

func (c *Channel) flushLocked() {
	if c.closed {
		return
	}
	now := c.cfg.Now()
	var next time.Time
	for _, k := range c.keys {
		if k == nil {
			continue
		}
		c.due = k.rel.Due(c.due[:0], now)
		for _, m := range c.due {
			c.acks = k.rel.TakeAcks(c.acks[:0], pushAcksMax)
			c.sendLocked(k, m.Opcode, m.ID, m.Payload)
		}
		clear(c.due) // keep no payload alive past its ack
		if k.rel.PendingAcks() > 0 && now.Before(k.ackBy) {
			// Owed acks wait for an answer to ride on (Config.AckDelay).
			if next.IsZero() || k.ackBy.Before(next) {
				next = k.ackBy
			}
		} else {
			c.sendAcksLocked(k)
		}
		if d := k.rel.NextDeadline(now); !d.IsZero() && (next.IsZero() || d.Before(next)) {
			next = d
		}
		// A peer that acknowledges nothing for the hand window is gone or hostile: OpenVPN
		// gives each key state the hand window to finish (ssl.c, tls_process), and a message
		// still unacknowledged after it will not be.
		if oldest := k.rel.OldestUnacked(); c.cfg.AckTimeout > 0 && c.err == nil && !oldest.IsZero() {
			d := oldest.Add(c.cfg.AckTimeout)
			if !now.Before(d) {
				c.failLocked(fmt.Errorf("%w: a message of key %d unacknowledged for %s", ErrStalled, k.ID, now.Sub(oldest).Round(time.Second)))
			} else if next.IsZero() || d.Before(next) {
				next = d
			}
		}
	}
	if next.IsZero() {
		// Nothing in flight: an idle channel keeps no timer and no scratch slices.
		if c.timer != nil {
			c.timer.Stop()
			c.timer = nil
		}
		c.due, c.acks = nil, nil
		return
	}
	wait := max(next.Sub(now), 10*time.Millisecond)
	if c.timer == nil {
		c.timer = time.AfterFunc(wait, c.Flush)
	} else {
		c.timer.Reset(wait)
	}
}

// sendAcksLocked sends the acks owed on key k in bare P_ACK_V1 packets.
func (c *Channel) sendAcksLocked(k *Key) {
	for k.rel.PendingAcks() > 0 {
		c.acks = k.rel.TakeAcks(c.acks[:0], packet.MaxAcks)
		c.sendLocked(k, packet.AckV1, 0, nil)
	}
	k.ackBy = time.Time{}
}

// sendLocked builds, wraps and sends one control packet carrying c.acks.
func (c *Channel) sendLocked(k *Key, op packet.Opcode, id uint32, payload []byte) {
	p := packet.Control{
		Opcode:    op,
		KeyID:     k.ID,
		SessionID: c.cfg.LocalSID,
		PacketID:  id,
		Payload:   payload,
	}
	p.NumAcks = copy(p.Acks[:], c.acks)
	for _, id := range c.acks {
		k.remember(id)
	}
	room := pushAcksMax
	if op == packet.AckV1 {
		room = packet.MaxAcks
	}
	for i := len(k.recent) - 1; i >= 0 && p.NumAcks < room; i-- {
		if !contains(p.Acks[:p.NumAcks], k.recent[i]) {
			p.Acks[p.NumAcks] = k.recent[i]
			p.NumAcks++
		}
	}
	if p.NumAcks > 0 {
		p.RemoteSessionID = c.cfg.RemoteSID
	}
	bufs := sendBufs.Get().(*sendBuf)
	defer sendBufs.Put(bufs)
	bufs.plain = p.Append(bufs.plain[:0])
	wire, err := c.cfg.Wrapper.Wrap(bufs.wire[:0], bufs.plain, c.sendPID, uint32(c.cfg.Now().Unix()))
	if err != nil {
		c.cfg.Log.Error("control channel: wrap failed", "err", err)
		return
	}
	bufs.wire = wire
	c.sendPID++
	c.cfg.Send(wire)
}

// Close stops retransmissions and unblocks every reader of every key state.
func (c *Channel) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	// What was received is acknowledged before the channel goes, so the peer does not resend
	// a message (an EXIT, say) that was read and acted on (Config.AckDelay).
	for _, k := range c.keys {
		if k != nil {
			c.sendAcksLocked(k)
		}
	}
	c.closed = true
	if c.timer != nil {
		c.timer.Stop()
	}
	for _, k := range c.keys {
		if k != nil {
			k.conn.closeLocked()
		}
	}
}

// Idle reports whether everything queued on key id was sent and acknowledged.
func (c *Channel) Idle(id uint8) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := c.keys[id&7]
	return k == nil || k.rel.Idle()
}

// Current is the key id of the newest key state that was not abandoned.
func (c *Channel) Current() uint8 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.keys[c.current] == nil {
		return c.prev
	}
	return c.current
}

// AckLater records that message id of key keyID, already delivered or skipped (below the receive
// window), must be acknowledged again, without sending anything now: the ack rides on the next
// packet the channel sends. The client of the UDP cookie handshake (docs/protocol.md §4) creates its channel
// as established after it saw the server's hard reset, and calls AckLater(0, 0) so that the ack of
// that reset travels inside its first P_CONTROL_V1, as OpenVPN 2.6 clients send it. Ids at or
// above the next expected one are ignored: those are acked when they arrive.
func (c *Channel) AckLater(keyID uint8, id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := c.keys[keyID&7]
	if k == nil || int32(id-k.rel.NextRecvID()) >= 0 {
		return
	}
	k.rel.Receive(reliable.Message{ID: id})
}

// remember adds id to the re-ack list, dropping the oldest when full.
func (k *Key) remember(id uint32) {
	for i, r := range k.recent {
		if r == id {
			k.recent = append(k.recent[:i], k.recent[i+1:]...)
			break
		}
	}
	if len(k.recent) == recentAcksMax {
		k.recent = append(k.recent[:0], k.recent[1:]...)
	}
	k.recent = append(k.recent, id)
}

func contains(ids []uint32, id uint32) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}
