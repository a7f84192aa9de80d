package systemdlab

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// hierarchy is one mounted cgroup hierarchy and where the calling process sits in it.
type hierarchy struct {
	mountPoint string
	own        string // the process's cgroup, relative to mountPoint
	cpuset     bool   // v1 cpuset: a new cgroup needs cpus and mems before it takes a task
}

// hierarchies reads /proc/self/mountinfo and /proc/self/cgroup (see cgroups(7)) and returns
// each mounted hierarchy (the first mount of each) with the process's place in it.
func hierarchies() ([]hierarchy, error) {
	own := map[string]string{} // "0" for v2, else the v1 controller list ("cpu", "name=systemd")
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(strings.TrimSpace(string(cg)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		key := f[1]
		if f[0] == "0" && f[1] == "" {
			key = "0"
		}
		own[key] = f[2]
	}
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer mi.Close()
	var hs []hierarchy
	seen := map[string]bool{}
	sc := bufio.NewScanner(mi)
	for sc.Scan() {
		// 36 35 98:0 /root /mnt opts shared:1 - cgroup cgroup rw,cpu
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) < 5 || len(rf) < 3 {
			continue
		}
		root, mountPoint := unescape(lf[3]), unescape(lf[4])
		var key string
		switch rf[0] {
		case "cgroup2":
			key = "0"
		case "cgroup":
			for k := range own {
				if k != "0" && containsAll(strings.Split(rf[2], ","), strings.Split(k, ",")) {
					key = k
				}
			}
		default:
			continue
		}
		path, ok := own[key]
		if key == "" || !ok || seen[key] {
			continue
		}
		rel, ok := strings.CutPrefix(path, root)
		if !ok { // the process sits outside what this mount shows
			continue
		}
		seen[key] = true
		hs = append(hs, hierarchy{
			mountPoint: mountPoint,
			own:        "/" + strings.TrimPrefix(rel, "/"),
			cpuset:     slices.Contains(strings.Split(key, ","), "cpuset"),
		})
	}
	return hs, sc.Err()
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + c - '0'
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// makeCgroups creates a cgroup called name below the process's own in every hierarchy and
// returns their directories (those it made, also on error).
func makeCgroups(name string) ([]string, error) {
	hs, err := hierarchies()
	if err != nil {
		return nil, fmt.Errorf("cgroup hierarchies: %w", err)
	}
	if len(hs) == 0 {
		return nil, errors.New("cgroup hierarchies: none mounted")
	}
	var dirs []string
	for _, h := range hs {
		parent := filepath.Join(h.mountPoint, h.own)
		d := filepath.Join(parent, name)
		if strings.ContainsAny(d, " \t\n") { // boot.sh splits the list on white space
			return dirs, fmt.Errorf("cgroup %q: white space in the path", d)
		}
		if err := os.Mkdir(d, 0o755); err != nil {
			return dirs, fmt.Errorf("cgroup: %w", err)
		}
		dirs = append(dirs, d)
		if h.cpuset {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(parent, f))
				if err == nil {
					err = os.WriteFile(filepath.Join(d, f), v, 0o644)
				}
				if err != nil {
					return dirs, fmt.Errorf("cgroup %s: %s: %w", d, f, err)
				}
			}
		}
	}
	return dirs, nil
}

// removeCgroups removes each directory with everything below it, deepest first: cgroup
// directories are removed with rmdir (their files are not real files). A cgroup whose last
// process is still being reaped is busy for a moment, so it retries for a few seconds.
func removeCgroups(dirs []string) error {
	var errs []error
	for _, d := range dirs {
		var sub []string
		err := filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if e.IsDir() {
				sub = append(sub, p)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// WalkDir visits parents before children: remove in reverse.
		for i := len(sub) - 1; i >= 0; i-- {
			if err := rmdirRetry(sub[i]); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	return errors.Join(errs...)
}

// staleAge is how old a machine's leftovers must be before another Boot sweeps them: a machine
// being set up has an empty cgroup for a moment, and must not be swept then.
const staleAge = 2 * time.Minute

// isMachineName reports whether name is one Boot gives machines: "cvsd" and 6 hex digits.
func isMachineName(name string) bool {
	h, ok := strings.CutPrefix(name, "cvsd")
	if !ok || len(h) != 6 {
		return false
	}
	for _, c := range h {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

// sweepStale removes what machines of killed test processes left behind (a test binary killed
// by a timeout runs no cleanup; Pdeathsig ends its machine, but not its cgroups and netns name):
// cgroups named like a machine, older than staleAge, with no process anywhere below them, and
// netns names of machines whose cgroups are gone.
func sweepStale() error {
	hs, err := hierarchies()
	if err != nil {
		return err
	}
	var errs []error
	live := map[string]bool{}
	for _, h := range hs {
		parent := filepath.Join(h.mountPoint, h.own)
		ents, err := os.ReadDir(parent)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !e.IsDir() || !isMachineName(e.Name()) {
				continue
			}
			d := filepath.Join(parent, e.Name())
			fi, err := os.Stat(d)
			if err != nil || time.Since(fi.ModTime()) < staleAge || hasProcs(d) {
				live[e.Name()] = true
				continue
			}
			if err := removeCgroups([]string{d}); err != nil {
				live[e.Name()] = true
				errs = append(errs, err)
			}
		}
	}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if !isMachineName(e.Name()) || live[e.Name()] {
			continue
		}
		if fi, err := e.Info(); err != nil || time.Since(fi.ModTime()) < staleAge {
			continue
		}
		if err := run("ip", "netns", "delete", e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// hasProcs reports whether any cgroup at or below d holds a process.
func hasProcs(d string) bool {
	found := false
	_ = filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
		if err != nil || found {
			return filepath.SkipDir
		}
		if e.IsDir() {
			if b, err := os.ReadFile(filepath.Join(p, "cgroup.procs")); err == nil && len(strings.TrimSpace(string(b))) > 0 {
				found = true
				return filepath.SkipAll
			}
		}
		return nil
	})
	return found
}

func rmdirRetry(d string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := syscall.Rmdir(d)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("rmdir cgroup %s: %w", d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
