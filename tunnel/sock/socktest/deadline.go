package socktest

import (
	"sync"
	"time"
)

// deadline is one direction's deadline of a connection: a channel that is closed while the
// deadline has passed. The zero value has no deadline.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer
	ch    chan struct{} // closed once the deadline passed; nil until first needed
}

// expired returns a channel that is closed once the deadline has passed. The channel is replaced
// only after it closed, so a wait that holds it sees every later move of the deadline.
func (d *deadline) expired() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}

// set moves the deadline to t (the zero time: none).
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	if d.timer != nil && !d.timer.Stop() {
		// The timer fired: its callback closes (or has closed) the channel. Wait for that, so
		// the channel's state is settled before deciding what to do with it.
		<-d.ch
	}
	d.timer = nil
	fired := isClosed(d.ch)
	if t.IsZero() {
		if fired {
			d.ch = make(chan struct{})
		}
		return
	}
	wait := time.Until(t)
	if wait <= 0 {
		if !fired {
			close(d.ch)
		}
		return
	}
	if fired {
		d.ch = make(chan struct{})
	}
	ch := d.ch
	d.timer = time.AfterFunc(wait, func() { close(ch) })
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
