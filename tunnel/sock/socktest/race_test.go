//go:build race

package socktest

// raceEnabled: the race detector's sync.Pool drops a share of what is put back on purpose, so
// allocation counts mean nothing under it.
const raceEnabled = true
