package admin

import (
	"sync"
	"time"

	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/session"
)

// Ended connections are kept this long and at most this many (the oldest go first).
const (
	historyWindow = 60 * time.Minute
	historyCap    = 4096
)

// History remembers the connections that ended in the last 60 minutes, for
// DescribeClientVpnConnections, and the ones being terminated. It is a tunnel.Events (append it
// to tunnel.Config.Events); its methods record and return, never block.
type History struct {
	now func() time.Time

	// mu guards the fields below.
	mu sync.Mutex
	// ended is oldest first, at most historyCap long.
	ended []endedConnection
	// terminating holds the connections told HALT by Terminate that have not ended yet, as they
	// were then: the engine no longer lists a session that is saying goodbye.
	terminating map[string]terminatingConnection
}

// terminatingConnection is a connection told HALT, and when.
type terminatingConnection struct {
	status tunnel.Status
	since  time.Time
}

// endedConnection is a connection as it was at its end.
type endedConnection struct {
	status tunnel.Status
	end    session.End
}

// NewHistory returns an empty History reading the clock now (nil: time.Now).
func NewHistory(now func() time.Time) *History {
	if now == nil {
		now = time.Now
	}
	return &History{now: now, terminating: make(map[string]terminatingConnection)}
}

// Connected records nothing: the engine lists established sessions itself.
func (h *History) Connected(tunnel.Status) {}

// Refused records nothing: a refused attempt never was a connection.
func (h *History) Refused(session.Attempt) {}

// Disconnected records the connection's end.
func (h *History) Disconnected(s tunnel.Status, end session.End) {
	if s.Info == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.terminating, s.ConnectionID)
	h.pruneLocked()
	if len(h.ended) == historyCap {
		h.ended = append(h.ended[:0], h.ended[1:]...)
	}
	h.ended = append(h.ended, endedConnection{status: s, end: end})
}

// pruneLocked drops what is older than the window; h.mu is held.
func (h *History) pruneLocked() {
	cutoff := h.now().Add(-historyWindow)
	i := 0
	for i < len(h.ended) && h.ended[i].end.Time.Before(cutoff) {
		i++
	}
	if i > 0 {
		h.ended = append(h.ended[:0], h.ended[i:]...)
	}
	for id, c := range h.terminating {
		if c.since.Before(cutoff) {
			delete(h.terminating, id)
		}
	}
}

// endedSince returns the connections that ended within the window, oldest first.
func (h *History) endedConnections() []endedConnection {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pruneLocked()
	return append([]endedConnection(nil), h.ended...)
}

// markTerminating records that s was told HALT, unless it has ended already.
func (h *History) markTerminating(s tunnel.Status) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.ended {
		if e.status.ConnectionID == s.ConnectionID {
			return
		}
	}
	h.terminating[s.ConnectionID] = terminatingConnection{status: s, since: h.now()}
}

// terminatingConnections returns the connections told HALT that have not ended yet.
func (h *History) terminatingConnections() []tunnel.Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]tunnel.Status, 0, len(h.terminating))
	for _, c := range h.terminating {
		out = append(out, c.status)
	}
	return out
}

// isTerminating reports whether id was told HALT and has not ended yet.
func (h *History) isTerminating(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.terminating[id]
	return ok
}
