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
	// terminating holds the ids told HALT by Terminate that have not ended yet, with when.
	terminating map[string]time.Time
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
	return &History{now: now, terminating: make(map[string]time.Time)}
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
	for id, since := range h.terminating {
		if since.Before(cutoff) {
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

// markTerminating records that id was told HALT, unless it has ended already.
func (h *History) markTerminating(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.ended {
		if e.status.ConnectionID == id {
			return
		}
	}
	h.terminating[id] = h.now()
}

// isTerminating reports whether id was told HALT and has not ended yet.
func (h *History) isTerminating(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.terminating[id]
	return ok
}
