// Package tuntest is a fast in-memory TUN device with several queues, for benchmarks and tests
// of the whole engine: what the engine writes is counted and handed to a sink, and each queue
// reads what the test injects into it. Each queue is a tun.Device (golang.zx2c4.com/wireguard/tun),
// as each queue of a multi-queue TUN is its own file on a host.
//
// Unlike wireguard's tuntest.ChannelTUN (one packet per channel operation, an allocation per
// packet), it moves packets in batches through preallocated slots, each queue behind its own
// lock, so that it is not what limits an engine benchmark on several cores. It models no MTU,
// offloads (GSO/GRO) or routes.
package tuntest

import (
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// Default sizes: BatchSize packets per Read or Write (as the host's TUN with offloads reads), a
// queue of SlotCount packets (each at most SlotSize bytes) waiting for the engine per queue.
const (
	BatchSize = 128
	SlotCount = 1024
	SlotSize  = 2048
)

// Sink sees each packet the engine writes to a queue (the IP packet, without the offset). It
// runs on the engine's goroutine: it must not keep pkt, and should be quick.
type Sink func(queue int, pkt []byte)

// Counter hears, once per Write, how many packets the engine wrote to a queue: the cheap way
// for a benchmark to follow its progress.
type Counter func(queue, packets int)

// Device is a TUN device with several queues.
type Device struct {
	queues  []*Queue
	sink    atomic.Pointer[Sink]
	counter atomic.Pointer[Counter]
	events  chan tun.Event
	once    sync.Once
}

// New returns a device with n queues (at least 1).
func New(n int) *Device {
	d := &Device{events: make(chan tun.Event, 1)}
	d.events <- tun.EventUp
	for i := range max(n, 1) {
		q := &Queue{dev: d, index: i, room: make(chan struct{}, 1), ready: make(chan struct{}, 1), done: make(chan struct{})}
		q.slots = make([][]byte, SlotCount)
		for j := range q.slots {
			q.slots[j] = make([]byte, SlotSize)
		}
		q.sizes = make([]int, SlotCount)
		d.queues = append(d.queues, q)
	}
	return d
}

// Queue returns queue i.
func (d *Device) Queue(i int) *Queue { return d.queues[i] }

// Queues returns every queue as a tun.Device, queue 0 first (the engine's Device).
func (d *Device) Queues() []tun.Device {
	out := make([]tun.Device, len(d.queues))
	for i, q := range d.queues {
		out[i] = q
	}
	return out
}

// SetSink sets what sees the packets the engine writes (nil: they are only counted).
func (d *Device) SetSink(s Sink) {
	if s == nil {
		d.sink.Store(nil)
		return
	}
	d.sink.Store(&s)
}

// SetCounter sets what hears of each Write (nil: nothing).
func (d *Device) SetCounter(c Counter) {
	if c == nil {
		d.counter.Store(nil)
		return
	}
	d.counter.Store(&c)
}

// Written returns how many packets the engine wrote, over all queues.
func (d *Device) Written() uint64 {
	var n uint64
	for _, q := range d.queues {
		n += q.written.Load()
	}
	return n
}

// Close closes every queue.
func (d *Device) Close() {
	for _, q := range d.queues {
		q.Close()
	}
}

// Queue is one queue of a Device: a tun.Device whose Read returns what Inject queued and whose
// Write counts packets and hands them to the device's sink.
type Queue struct {
	dev   *Device
	index int

	written atomic.Uint64
	_       [56]byte // keep each queue's counter on its own cache line

	mu     sync.Mutex
	slots  [][]byte // a ring of SlotCount buffers; guarded by mu
	sizes  []int
	head   int // first queued slot
	n      int // queued slots
	closed bool

	room  chan struct{} // a token while the ring may have room (for Inject)
	ready chan struct{} // a token while the ring may hold packets (for Read)
	done  chan struct{}
	once  sync.Once
}

var _ tun.Device = (*Queue)(nil)

// Inject queues packets for the engine's Read, copying them, and waits while the queue is full:
// a test's producer is held back as a kernel's would be. It returns how many it queued, all of
// them unless the queue was closed. A packet longer than SlotSize is cut to it.
func (q *Queue) Inject(pkts ...[]byte) int {
	done := 0
	for done < len(pkts) {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return done
		}
		wasEmpty := q.n == 0
		for done < len(pkts) && q.n < len(q.slots) {
			i := (q.head + q.n) % len(q.slots)
			q.sizes[i] = copy(q.slots[i], pkts[done])
			q.n++
			done++
		}
		full := q.n == len(q.slots)
		q.mu.Unlock()
		if wasEmpty {
			signal(q.ready)
		}
		if done < len(pkts) && full {
			select {
			case <-q.room:
			case <-q.done:
			}
		}
	}
	signal(q.room) // the token this call took may be another producer's
	return done
}

// Read returns the packets queued by Inject, at most len(bufs), waiting for at least one.
func (q *Queue) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return 0, os.ErrClosed
		}
		if q.n > 0 {
			k := min(q.n, len(bufs))
			for j := range k {
				i := (q.head + j) % len(q.slots)
				sizes[j] = copy(bufs[j][offset:], q.slots[i][:q.sizes[i]])
			}
			q.head = (q.head + k) % len(q.slots)
			q.n -= k
			more := q.n > 0
			q.mu.Unlock()
			signal(q.room)
			if more {
				signal(q.ready)
			}
			return k, nil
		}
		q.mu.Unlock()
		select {
		case <-q.ready:
		case <-q.done:
		}
	}
}

// Write counts the packets, hands each to the device's sink, then tells the counter.
func (q *Queue) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-q.done:
		return 0, os.ErrClosed
	default:
	}
	if s := q.dev.sink.Load(); s != nil {
		for _, b := range bufs {
			(*s)(q.index, b[offset:])
		}
	}
	q.written.Add(uint64(len(bufs)))
	if c := q.dev.counter.Load(); c != nil {
		(*c)(q.index, len(bufs))
	}
	return len(bufs), nil
}

// File is nil: there is no file behind a queue (so the engine sets no read deadlines on it).
func (q *Queue) File() *os.File { return nil }

// MTU is 1500.
func (q *Queue) MTU() (int, error) { return 1500, nil }

// Name is "tuntest".
func (q *Queue) Name() (string, error) { return "tuntest", nil }

// Events carries EventUp once (for the device's first caller) and is closed when queue 0 closes.
func (q *Queue) Events() <-chan tun.Event { return q.dev.events }

// BatchSize is BatchSize.
func (q *Queue) BatchSize() int { return BatchSize }

// Close makes Read, Write and Inject on this queue return at once; it is idempotent.
func (q *Queue) Close() error {
	q.once.Do(func() {
		q.mu.Lock()
		q.closed = true
		q.mu.Unlock()
		close(q.done)
		if q.index == 0 {
			q.dev.once.Do(func() { close(q.dev.events) })
		}
	})
	return nil
}

// signal leaves a token in ch unless one is there.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
