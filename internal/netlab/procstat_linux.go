package netlab

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcStat is what a test watches of a long-running server for growth.
type ProcStat struct {
	RSSKiB  int64 // VmRSS
	Threads int   // OS threads (Threads in /proc/<pid>/status)
	FDs     int   // open descriptors (entries of /proc/<pid>/fd)
}

func (s ProcStat) String() string {
	return fmt.Sprintf("rss %.1f MiB, %d threads, %d descriptors", float64(s.RSSKiB)/1024, s.Threads, s.FDs)
}

// ReadProcStat reads /proc/<pid>/status and counts /proc/<pid>/fd.
func ReadProcStat(pid int) (ProcStat, error) {
	var s ProcStat
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		if len(f) == 0 {
			continue
		}
		switch key {
		case "VmRSS":
			s.RSSKiB, err = strconv.ParseInt(f[0], 10, 64)
		case "Threads":
			s.Threads, err = strconv.Atoi(f[0])
		}
		if err != nil {
			return s, fmt.Errorf("/proc/%d/status %s: %w", pid, key, err)
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.FDs = len(fds)
	return s, nil
}
