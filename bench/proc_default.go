//go:build !linux

package bench

import (
	"errors"
	"time"
)

// ProcSample is what the benchmark reads of a server process.
type ProcSample struct {
	RSSKiB int64
	CPU    time.Duration
	At     time.Time
}

// SampleProc needs Linux's /proc.
func SampleProc(pid int) (ProcSample, error) {
	return ProcSample{}, errors.New("bench: reading a server process's memory and CPU needs Linux /proc")
}

// ProcName needs Linux's /proc.
func ProcName(pid int) string { return "" }
