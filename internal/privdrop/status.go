package privdrop

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Status is what /proc/PID/status (proc(5)) says about a process's privileges.
type Status struct {
	UID, GID [4]int // real, effective, saved and filesystem
	Groups   []int  // supplementary groups
	// The capability sets.
	CapInh, CapPrm, CapEff, CapBnd, CapAmb Set
	NoNewPrivs                             bool
}

// maxStatus bounds how much of a status file is read (they are about 1.5 KiB).
const maxStatus = 64 << 10

// ReadStatus reads /proc/PID/status; pid 0 means the calling process (/proc/self). A task's
// file (/proc/PID/task/TID/status) is read with ReadStatusFile.
func ReadStatus(pid int) (Status, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	return ReadStatusFile(path)
}

// ReadStatusFile reads a status file of /proc.
func ReadStatusFile(path string) (Status, error) {
	f, err := os.Open(path)
	if err != nil {
		return Status{}, fmt.Errorf("privdrop: %w", err)
	}
	defer f.Close()
	st, err := ParseStatus(io.LimitReader(f, maxStatus))
	if err != nil {
		return Status{}, fmt.Errorf("privdrop: %s: %w", path, err)
	}
	return st, nil
}

// ParseStatus parses a /proc/PID/status file. The lines it needs (Uid, Gid, Groups, the five
// Cap lines and NoNewPrivs) must all be there; others are skipped.
func ParseStatus(r io.Reader) (Status, error) {
	var st Status
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		var err error
		switch key {
		case "Uid":
			err = parseIDs(value, &st.UID)
		case "Gid":
			err = parseIDs(value, &st.GID)
		case "Groups":
			for _, f := range strings.Fields(value) {
				g, perr := strconv.Atoi(f)
				if perr != nil {
					err = perr
					break
				}
				st.Groups = append(st.Groups, g)
			}
		case "CapInh":
			st.CapInh, err = parseSet(value)
		case "CapPrm":
			st.CapPrm, err = parseSet(value)
		case "CapEff":
			st.CapEff, err = parseSet(value)
		case "CapBnd":
			st.CapBnd, err = parseSet(value)
		case "CapAmb":
			st.CapAmb, err = parseSet(value)
		case "NoNewPrivs":
			switch value {
			case "0":
			case "1":
				st.NoNewPrivs = true
			default:
				err = fmt.Errorf("%q is not 0 or 1", value)
			}
		default:
			continue
		}
		if err != nil {
			return Status{}, fmt.Errorf("line %s: %w", key, err)
		}
		seen[key] = true
	}
	if err := sc.Err(); err != nil {
		return Status{}, err
	}
	for _, k := range []string{"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"} {
		if !seen[k] {
			return Status{}, fmt.Errorf("no %s line", k)
		}
	}
	return st, nil
}

// parseIDs parses the four ids of a Uid or Gid line.
func parseIDs(value string, ids *[4]int) error {
	f := strings.Fields(value)
	if len(f) != len(ids) {
		return fmt.Errorf("%q: want %d ids", value, len(ids))
	}
	for i, s := range f {
		id, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return err
		}
		ids[i] = int(id)
	}
	return nil
}

// parseSet parses a capability set as /proc prints it: 16 hex digits.
func parseSet(value string) (Set, error) {
	if len(value) != 16 {
		return 0, fmt.Errorf("%q: want 16 hex digits", value)
	}
	v, err := strconv.ParseUint(value, 16, 64)
	if err != nil {
		return 0, err
	}
	return Set(v), nil
}
