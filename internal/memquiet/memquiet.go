// Package memquiet gives the heap's idle memory back to the operating system while a process
// is quiet.
//
// The Go runtime keeps freed heap memory up to the GC's next target: with cvpn's GC target of
// 50% (cmd/cvpn), a server holding 100,000 idle sessions keeps half as much again as the
// sessions' live heap resident, in case the heap grows again. Handshakes are where cvpn's
// garbage comes from (the packet path allocates nothing), so while no one connects that memory
// stays unused. Watch notices such a quiet spell (the process allocated less than Quiet.Alloc
// in a whole Quiet.Every) and, when at least Quiet.Free bytes of the resident heap are not
// live, returns them (debug.FreeOSMemory: one garbage collection, then the free pages are
// released). Once
// they are back the free heap is small, so a quiet process does this once, not every period;
// when clients come again the heap grows back as it would have.
package memquiet

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Quiet is when Watch releases memory.
type Quiet struct {
	// Every is how often the allocation rate is read.
	Every time.Duration
	// Alloc is the most the process may allocate in one Every and still count as quiet.
	Alloc uint64
	// Free is the least free heap memory worth a release (it costs a garbage collection).
	Free uint64
}

// Default is the policy of cvpn serve: a 10-second spell with under 4 MiB allocated (about 40
// handshakes) releases at least 64 MiB.
var Default = Quiet{Every: 10 * time.Second, Alloc: 4 << 20, Free: 64 << 20}

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

// due reports whether the spell from last to now was quiet with enough free memory to give back.
func (q Quiet) due(last, now Stats) bool {
	return now.Allocated-last.Allocated < q.Alloc && now.Free >= q.Free
}
