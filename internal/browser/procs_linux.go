package browser

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// browserProcesses lists the processes whose command line names a path
// inside dir, the Browser's own temporary folder. Chromium passes
// --user-data-dir (inside dir) to the processes it starts (zygotes,
// renderers, the GPU and network services), and its crash handlers, which
// detach from the browser and outlive it, take their database from HOME
// (also inside dir). The folder is unique to one Browser, so this finds the
// browser's whole tree even after the browser process is gone and its
// children were reparented. Zygote children rewrite their command line into
// one string, so this looks for the path anywhere in it.
func browserProcesses(dir string) []int {
	want := []byte(filepath.Clean(dir) + "/")
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue // gone, or a kernel thread
		}
		if bytes.Contains(cmdline, want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killBrowserProcesses sends SIGKILL to every process of the Browser's folder dir
// until none is left, for at most limit, and returns those still running
// then. A process can fork while its parent is killed, so it looks again
// until three looks in a row find nothing. A killed process's command line
// reads empty once it is a zombie, so zombies waiting for a reaper do not
// count.
func killBrowserProcesses(dir string, limit time.Duration) []int {
	deadline := time.Now().Add(limit)
	quiet := 0
	for {
		pids := browserProcesses(dir)
		if len(pids) == 0 {
			quiet++
			if quiet == 3 {
				return nil
			}
		} else {
			quiet = 0
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if time.Now().After(deadline) {
			slices.Sort(pids)
			return pids
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// setPdeathsig makes the kernel kill the browser if the thread that started
// it exits, as when the test binary dies without running its Cleanups.
// (chromedp starts the browser from a goroutine locked to its thread.)
func setPdeathsig(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
