// Package privdrop drops a process that started as root to an unprivileged user while keeping a
// chosen few capabilities (cvpn keeps CAP_NET_ADMIN and CAP_NET_BIND_SERVICE), and reads a
// process's privileges back from /proc/PID/status. It is what the stock server's `user nobody`
// does, minus what Linux lets root keep.
//
// Linux keeps credentials per thread, and a Go process has many threads by the time it has set
// itself up, so every change here is made on all of them at once (syscall.AllThreadsSyscall,
// and syscall.Setresuid and friends, which use it). Go offers that only in binaries built
// without cgo; Supported says whether this one is.
//
// It does not decide which files the user must own, nor when to drop: the caller (cmd/cvpn)
// does both.
package privdrop

import (
	"fmt"
	"math/bits"
	"strings"
)

// Cap is a capability's number (capabilities(7)), as in linux/capability.h.
type Cap uint

// The capabilities cvpn keeps.
const (
	NetBindService Cap = 10 // CAP_NET_BIND_SERVICE: bind ports below 1024
	NetAdmin       Cap = 12 // CAP_NET_ADMIN: TUN, routes, neighbour entries, net sysctls
)

// capNames are the names of the capabilities this package prints; others print as cap_N.
var capNames = map[Cap]string{
	0:              "cap_chown",
	1:              "cap_dac_override",
	6:              "cap_setgid",
	7:              "cap_setuid",
	8:              "cap_setpcap",
	NetBindService: "cap_net_bind_service",
	NetAdmin:       "cap_net_admin",
	13:             "cap_net_raw",
	21:             "cap_sys_admin",
}

// String is the capability's name in capabilities(7)'s lower case, e.g. cap_net_admin.
func (c Cap) String() string {
	if n, ok := capNames[c]; ok {
		return n
	}
	return fmt.Sprintf("cap_%d", uint(c))
}

// Set is a set of capabilities, bit N for capability N: the layout of the CapEff and related
// lines of /proc/PID/status.
type Set uint64

// SetOf is the set of caps.
func SetOf(caps ...Cap) Set {
	var s Set
	for _, c := range caps {
		s |= 1 << c
	}
	return s
}

// Has reports whether c is in s.
func (s Set) Has(c Cap) bool { return c < 64 && s&(1<<c) != 0 }

// Caps lists the capabilities in s, lowest first.
func (s Set) Caps() []Cap {
	var out []Cap
	for v := uint64(s); v != 0; v &= v - 1 {
		out = append(out, Cap(bits.TrailingZeros64(v)))
	}
	return out
}

// String lists s by name, comma-separated, lowest first; "none" when empty.
func (s Set) String() string {
	caps := s.Caps()
	if len(caps) == 0 {
		return "none"
	}
	names := make([]string, len(caps))
	for i, c := range caps {
		names[i] = c.String()
	}
	return strings.Join(names, ",")
}
