package privdrop

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// capData is the argument of capset(2) and capget(2) in version 3 of the interface
// (_LINUX_CAPABILITY_VERSION_3, linux/capability.h): 64-bit sets split into two 32-bit words,
// element 0 holding capabilities 0-31 and element 1 capabilities 32-63.
func capData(effective, permitted, inheritable Set) [2]unix.CapUserData {
	var d [2]unix.CapUserData
	for i := range d {
		shift := 32 * uint(i)
		d[i].Effective = uint32(effective >> shift)
		d[i].Permitted = uint32(permitted >> shift)
		d[i].Inheritable = uint32(inheritable >> shift)
	}
	return d
}

// fromCapData is the inverse of capData.
func fromCapData(d [2]unix.CapUserData) (effective, permitted, inheritable Set) {
	for i := range d {
		shift := 32 * uint(i)
		effective |= Set(d[i].Effective) << shift
		permitted |= Set(d[i].Permitted) << shift
		inheritable |= Set(d[i].Inheritable) << shift
	}
	return effective, permitted, inheritable
}

// capHeader is capset(2)'s and capget(2)'s header for the calling thread.
func capHeader() *unix.CapUserHeader {
	return &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
}

// Effective is the calling thread's effective capability set: what it may do now.
func Effective() (Set, error) {
	var d [2]unix.CapUserData
	if err := unix.Capget(capHeader(), &d[0]); err != nil {
		return 0, fmt.Errorf("privdrop: capget: %w", err)
	}
	eff, _, _ := fromCapData(d)
	return eff, nil
}
