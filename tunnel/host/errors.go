package host

import (
	"errors"
	"strings"
	"syscall"
)

// ErrNoInterface is the cause when target_network.interface names no interface.
var ErrNoInterface = errors.New("no such network interface")

// ErrSysctlNotSet is the cause when cvpn serve, not running as root, finds a sysctl it needs
// without the value it needs (it does not set sysctls then; see SysctlFile).
var ErrSysctlNotSet = errors.New("not set by the system")

// ErrNoNetAdmin is the cause when the process lacks CAP_NET_ADMIN, without which no step of
// Setup can succeed.
var ErrNoNetAdmin = errors.New("the process does not have CAP_NET_ADMIN")

// Error is a failed step of Setup: what failed, why, and what the operator can do about it. It
// prints as one line: "OP: CAUSE: FIX".
type Error struct {
	Op  string // what failed, e.g. `create TUN device "cvpn0"`
	Err error  // the cause, often a syscall.Errno (errors.Is sees through it)
	Fix string // how to fix it; "" when there is nothing useful to add
	// Cleanup is set when undoing the earlier steps failed as well: some state may be left.
	Cleanup error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(cause(e.Err))
	}
	if e.Fix != "" {
		b.WriteString(": ")
		b.WriteString(e.Fix)
	}
	if e.Cleanup != nil {
		b.WriteString("; undoing the earlier steps failed too, remove what is left by hand: ")
		b.WriteString(e.Cleanup.Error())
	}
	return oneLine(b.String())
}

func (e *Error) Unwrap() error { return e.Err }

// cause is the text of err, or only of the system error inside it: the operation is already named,
// so "open /proc/sys/net/ipv4/ip_forward: read-only file system" says the path twice.
func cause(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

// errorList is several errors printed on one line.
type errorList []error

func (l errorList) Error() string {
	s := make([]string, len(l))
	for i, err := range l {
		s[i] = err.Error()
	}
	return strings.Join(s, "; ")
}

func (l errorList) Unwrap() []error { return l }

// oneLine replaces line breaks so that a message stays one line of a log or terminal.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

// ErrClosed is the cause when AddClient6 is called after Close.
var ErrClosed = errors.New("the host state has been removed (Close)")
