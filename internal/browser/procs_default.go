//go:build !linux

package browser

import (
	"os/exec"
	"time"
)

// browserProcesses cannot list processes outside Linux; the browser's own
// close is all there is.
func browserProcesses(dir string) []int { return nil }

// killBrowserProcesses does nothing outside Linux.
func killBrowserProcesses(dir string, limit time.Duration) []int { return nil }

// setPdeathsig has no equivalent outside Linux.
func setPdeathsig(cmd *exec.Cmd) {}
