package endpoint

import (
	"runtime"
	"testing"
)

// TestMakeRoom: with the host's sockets, GOMAXPROCS keeps the workers' processors for work
// and adds one for each shard of each UDP listener, which waits in the kernel; with in-memory
// sockets it stays as it is.
func TestMakeRoom(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })
	(&Running{workers: 2, hostSockets: false}).makeRoom(2)
	if n := runtime.GOMAXPROCS(0); n != before {
		t.Fatalf("GOMAXPROCS %d with in-memory sockets, want it unchanged (%d)", n, before)
	}
	r := &Running{workers: 2, hostSockets: true}
	r.makeRoom(2)
	if n := runtime.GOMAXPROCS(0); n != 6 {
		t.Fatalf("GOMAXPROCS %d for 2 workers and 2 UDP listeners, want 6", n)
	}
	r.makeRoom(1) // a reload closed a listener
	if n := runtime.GOMAXPROCS(0); n != 4 {
		t.Fatalf("GOMAXPROCS %d for 2 workers and 1 UDP listener, want 4", n)
	}
}
