// Package memquiet gives the heap's idle memory back to the operating system when the process
// will not need it soon.
//
// The Go runtime keeps freed heap memory resident up to the GC's next target: with cvpn's GC
// target of 50% (cmd/cvpn), a server holding 100,000 sessions keeps half as much again as the
// sessions' live heap, in case the heap grows again. Handshakes are where cvpn's garbage comes
// from (the packet path allocates nothing), and while few clients connect that memory sits
// unused for minutes. Watch reads the heap every Quiet.Every; when at least Quiet.Free bytes
// of the resident heap are not live, and that is more than the process allocated in the last
// Quiet.Periods periods at the rate of the last one, it returns them (debug.FreeOSMemory: one
// garbage collection, then the free pages are released). Afterwards the free heap is small, so
// a quiet process does this once per spell, and a process that allocates steadily about once
// per natural GC cycle; when clients come in numbers the heap grows back as it would have.
//
// The price is one extra collection per release: while it marks the whole live heap (about
// 1.3 GB at 100,000 sessions) it takes CPU from the packet path.
package memquiet

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Quiet is when Watch releases memory.
type Quiet struct {
	// Every is how often the heap is read.
	Every time.Duration
	// Periods is how many periods of allocation at the last period's rate the free memory
	// must exceed: less would be needed again soon.
	Periods uint64
	// Free is the least free heap memory worth a release (it costs a garbage collection).
	Free uint64
}

// Default is the policy of cvpn serve: every 10 s, release at least 64 MiB that is more than
// 80 s of allocation at the rate of the last 10 (one handshake allocates about 90 KB on the
// server: 1,000 free MiB outlast 10 s of 1,000 handshakes a second, but not 80).
var Default = Quiet{Every: 10 * time.Second, Periods: 8, Free: 64 << 20}

// Stats is what Watch reads of the heap.
type Stats struct {
	// Allocated counts the bytes allocated since the process started.
	Allocated uint64
	// Free is heap memory that is resident but not live: free pages, and garbage that a
	// collection would free (the heap's objects, free and unused memory less the live heap
	// that the last collection found).
	Free uint64
}

// heapMetrics are the runtime/metrics that Read samples, in the order it reads them.
var heapMetrics = []string{
	"/gc/heap/allocs:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
	"/gc/heap/live:bytes",
}

// Read returns the runtime's figures (runtime/metrics).
func Read() Stats {
	s := make([]metrics.Sample, len(heapMetrics))
	for i, name := range heapMetrics {
		s[i].Name = name
	}
	metrics.Read(s)
	v := make([]uint64, len(s))
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = s[i].Value.Uint64()
		}
	}
	st := Stats{Allocated: v[0]}
	if resident, live := v[1]+v[2]+v[3], v[4]; resident > live {
		st.Free = resident - live
	}
	return st
}

// Watch checks q every q.Every until ctx ends, reading the heap with read and releasing with
// release; nil read and release mean Read and debug.FreeOSMemory. onRelease, when not nil,
// hears of each release with the free bytes before it.
func Watch(ctx context.Context, q Quiet, read func() Stats, release func(), onRelease func(free uint64)) {
	if read == nil {
		read = Read
	}
	if release == nil {
		release = debug.FreeOSMemory
	}
	t := time.NewTicker(q.Every)
	defer t.Stop()
	last := read()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := read()
		if q.due(last, now) {
			release()
			if onRelease != nil {
				onRelease(now.Free)
			}
			now = read() // the release's own collection allocated nothing worth counting
		}
		last = now
	}
}

// due reports whether the free memory at now is worth giving back, given the allocation since last.
func (q Quiet) due(last, now Stats) bool {
	rate := now.Allocated - last.Allocated
	return now.Free >= q.Free && now.Free/q.Periods > rate
}
