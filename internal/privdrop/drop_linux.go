package privdrop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Supported reports whether Drop can work in this binary: nil, or an error wrapping ErrCgo.
// Go changes the credentials of every thread itself only when it is built without cgo; with
// cgo, syscall.AllThreadsSyscall refuses (ENOTSUP), and a drop that reached some threads only
// would leave goroutines running with the wrong privileges.
func Supported() error {
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_GET_KEEPCAPS, 0, 0); errno != 0 {
		if errno == unix.ENOTSUP {
			return fmt.Errorf("privdrop: %w", ErrCgo)
		}
		return fmt.Errorf("privdrop: prctl(PR_GET_KEEPCAPS) on every thread: %w", errno)
	}
	return nil
}

// Drop makes every thread of the process t's user, with t's groups, and leaves it exactly
// t.Keep as permitted and effective capabilities: none inheritable, none ambient, the bounding
// set cut to t.Keep, and no_new_privs set. A program it executes afterwards therefore starts
// with no capabilities at all and cannot gain any (set-user-ID bits and file capabilities do
// nothing under no_new_privs). The process must be root.
//
// The steps follow capabilities(7): PR_SET_KEEPCAPS so that setuid keeps the permitted set,
// the bounding set cut while CAP_SETPCAP is still there, setgroups, setresgid, setresuid (which
// clears the effective set), then capset to raise the kept ones again. Each is made on every
// thread. Drop checks the result on every thread (Verify) before it returns.
//
// A failure part-way leaves the process with fewer privileges than before, never more; the
// caller should stop.
func Drop(t Target) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("privdrop: %w (this process runs as uid %d)", ErrNotRoot, os.Geteuid())
	}
	if t.UID == 0 {
		return errors.New("privdrop: the target user is root")
	}
	if err := Supported(); err != nil {
		return err
	}
	if err := allThreads("prctl(PR_SET_KEEPCAPS, 1)", unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 1, 0); err != nil {
		return err
	}
	if err := dropBounding(t.Keep); err != nil {
		return err
	}
	// syscall's Setgroups, Setresgid and Setresuid act on every thread (Go 1.16 and later).
	if err := syscall.Setgroups(t.Groups); err != nil {
		return fmt.Errorf("privdrop: setgroups(%v): %w", t.Groups, err)
	}
	if err := syscall.Setresgid(t.GID, t.GID, t.GID); err != nil {
		return fmt.Errorf("privdrop: setresgid(%d): %w", t.GID, err)
	}
	if err := syscall.Setresuid(t.UID, t.UID, t.UID); err != nil {
		return fmt.Errorf("privdrop: setresuid(%d): %w", t.UID, err)
	}
	if err := capsetAll(t.Keep, t.Keep, 0); err != nil {
		return err
	}
	// Setting the inheritable set to nothing has lowered the ambient set already; clear it
	// explicitly all the same, so that no exec'd program inherits anything.
	if err := allThreads("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return err // EINVAL: a kernel before 4.3, without ambient capabilities
	}
	if err := allThreads("prctl(PR_SET_KEEPCAPS, 0)", unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 0, 0); err != nil {
		return err
	}
	if err := allThreads("prctl(PR_SET_NO_NEW_PRIVS, 1)", unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); err != nil {
		return err
	}
	return Verify(t)
}

// allThreads makes one system call on every thread; what names it for errors.
func allThreads(what string, trap, a1, a2, a3 uintptr) error {
	if _, _, errno := syscall.AllThreadsSyscall(trap, a1, a2, a3); errno != 0 {
		return fmt.Errorf("privdrop: %s on every thread: %w", what, errno)
	}
	return nil
}

// capsetAll sets the three capability sets of every thread.
func capsetAll(effective, permitted, inheritable Set) error {
	hdr := capHeader()
	data := capData(effective, permitted, inheritable)
	// AllThreadsSyscall is go:uintptrescapes: the pointers converted in its arguments stay
	// valid for the call.
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	if errno != 0 {
		return fmt.Errorf("privdrop: capset(effective and permitted %s) on every thread: %w", effective, errno)
	}
	return nil
}

// dropBounding removes every capability but keep from the bounding set of every thread, up to
// the kernel's last capability.
func dropBounding(keep Set) error {
	last := lastCap()
	for c := Cap(0); c <= last; c++ {
		if keep.Has(c) {
			continue
		}
		err := allThreads("prctl(PR_CAPBSET_DROP, "+c.String()+")", unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0)
		if err != nil && !errors.Is(err, unix.EINVAL) { // EINVAL: not a capability of this kernel
			return err
		}
	}
	return nil
}

// lastCap is the kernel's highest capability number (/proc/sys/kernel/cap_last_cap), or 63
// when that cannot be read, so that none is missed (dropping one the kernel lacks is EINVAL).
func lastCap() Cap {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 63
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return 63
	}
	return Cap(n)
}

// Verify checks that every thread of the process runs as t: its uids and gids, its
// supplementary groups, exactly t.Keep effective and permitted, nothing inheritable or ambient,
// and no_new_privs. It reads /proc/self/task/*/status.
func Verify(t Target) error {
	tasks, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil || len(tasks) == 0 {
		return fmt.Errorf("privdrop: verify: no tasks under /proc/self/task (is /proc mounted?)")
	}
	for _, path := range tasks {
		st, err := ReadStatusFile(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // a thread that has just exited
			}
			return fmt.Errorf("privdrop: verify: %w", err)
		}
		if err := t.matches(st); err != nil {
			return fmt.Errorf("privdrop: verify %s: %w", path, err)
		}
	}
	return nil
}

// matches says how st differs from a process dropped to t; nil when it does not.
func (t Target) matches(st Status) error {
	for _, id := range st.UID {
		if id != t.UID {
			return fmt.Errorf("uids %v, want %d", st.UID, t.UID)
		}
	}
	for _, id := range st.GID {
		if id != t.GID {
			return fmt.Errorf("gids %v, want %d", st.GID, t.GID)
		}
	}
	want, got := slices.Clone(t.Groups), slices.Clone(st.Groups)
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(want, got) {
		return fmt.Errorf("groups %v, want %v", st.Groups, t.Groups)
	}
	if st.CapEff != t.Keep || st.CapPrm != t.Keep {
		return fmt.Errorf("capabilities effective %s, permitted %s, want %s", st.CapEff, st.CapPrm, t.Keep)
	}
	if st.CapInh != 0 || st.CapAmb != 0 {
		return fmt.Errorf("capabilities inheritable %s, ambient %s, want none", st.CapInh, st.CapAmb)
	}
	if !st.NoNewPrivs {
		return errors.New("no_new_privs is not set")
	}
	return nil
}
