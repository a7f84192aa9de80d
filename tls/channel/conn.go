package channel

import (
	"io"
	"net"
	"sync"
	"time"
)

// Conn is the byte stream of one key state as crypto/tls sees it: Read returns the payloads of
// reliable control messages in order, Write queues bytes as P_CONTROL_V1 messages. Deadlines
// are honoured on Read; Write never blocks: past the send backlog's bound it fails (and so does
// the channel) instead of waiting for acks.
type Conn struct {
	key    *Key
	cond   sync.Cond // L is the channel's mu
	in     []byte
	closed bool

	deadline time.Time
	dtimer   *time.Timer
}

var _ net.Conn = (*Conn)(nil)

// Read blocks until control payload bytes arrive, the conn closes or the read deadline passes.
func (c *Conn) Read(p []byte) (int, error) {
	ch := c.key.ch
	ch.mu.Lock()
	defer ch.unlock() // the flush of owed acks below may find the channel failed
	for len(c.in) == 0 {
		if c.closed {
			return 0, io.EOF
		}
		if k := c.key; !k.ackBy.IsZero() {
			// Everything that arrived was read and no answer carried its acks: none is
			// coming before more arrives, so they leave now (Config.AckDelay).
			k.ackBy = time.Time{}
			ch.flushLocked()
		}
		if !c.deadline.IsZero() && !time.Now().Before(c.deadline) {
			return 0, timeoutError{}
		}
		c.cond.Wait()
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	if len(c.in) == 0 {
		c.in = nil
	}
	return n, nil
}

// Write queues p as control messages of at most MaxPayload bytes, topping up the newest one that
// has not been sent yet. It fails with ErrBacklogFull, queuing nothing, when the bytes held for
// sending would pass the key's or the channel's bound; the channel has then failed and refuses
// every later write.
func (c *Conn) Write(p []byte) (int, error) {
	ch := c.key.ch
	ch.mu.Lock()
	defer ch.unlock()
	if c.closed || ch.closed {
		return 0, net.ErrClosed
	}
	if err := ch.queueLocked(c.key, p); err != nil {
		return 0, err
	}
	ch.flushLocked()
	return len(p), nil
}

// Close ends the stream: blocked and later reads return EOF.
func (c *Conn) Close() error {
	c.key.ch.mu.Lock()
	defer c.key.ch.mu.Unlock()
	c.closeLocked()
	return nil
}

func (c *Conn) closeLocked() {
	c.closed = true
	c.stopDeadlineLocked()
	c.cond.Broadcast()
}

// SetDeadline sets the read deadline; writes never block.
func (c *Conn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline makes blocked and future reads fail with a timeout after t.
func (c *Conn) SetReadDeadline(t time.Time) error {
	ch := c.key.ch
	ch.mu.Lock()
	defer ch.mu.Unlock()
	c.deadline = t
	switch {
	case t.IsZero():
		c.stopDeadlineLocked()
	case c.dtimer != nil:
		// A reader that re-arms its deadline on every read (the session's control reader)
		// reuses one timer.
		c.dtimer.Reset(time.Until(t))
	default:
		c.dtimer = time.AfterFunc(time.Until(t), func() {
			ch.mu.Lock()
			c.cond.Broadcast()
			ch.mu.Unlock()
		})
	}
	c.cond.Broadcast()
	return nil
}

// stopDeadlineLocked stops and lets go of the deadline's timer.
func (c *Conn) stopDeadlineLocked() {
	if c.dtimer != nil {
		c.dtimer.Stop()
		c.dtimer = nil
	}
}

// SetWriteDeadline is accepted and ignored: writes never block.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }

// LocalAddr and RemoteAddr are placeholders; the peer's address lives with the owner.
func (c *Conn) LocalAddr() net.Addr  { return controlAddr{} }
func (c *Conn) RemoteAddr() net.Addr { return controlAddr{} }

type controlAddr struct{}

func (controlAddr) Network() string { return "openvpn-control" }
func (controlAddr) String() string  { return "control-channel" }

type timeoutError struct{}

func (timeoutError) Error() string   { return "channel: read deadline exceeded" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }
