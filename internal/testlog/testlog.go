// Package testlog gives tests a *slog.Logger that writes to the test's log. Lines written after
// the test ended (by goroutines that outlive it) are dropped instead of panicking.
package testlog

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// New returns a debug-level text logger writing to t.
func New(t testing.TB) *slog.Logger {
	w := &writer{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type writer struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// Buffer collects what several goroutines write (a server's log, say) for a test to read.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
