//go:build !linux

package privdrop

import (
	"errors"
	"runtime"
)

// errUnsupported is the cause on systems other than Linux.
var errUnsupported = errors.New("privdrop: dropping to another user with capabilities is Linux only, not " + runtime.GOOS)

// Supported reports whether Drop can work: never, off Linux.
func Supported() error { return errUnsupported }

// Drop is Linux only.
func Drop(Target) error { return errUnsupported }

// Effective is Linux only.
func Effective() (Set, error) { return 0, errUnsupported }
