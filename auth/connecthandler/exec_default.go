//go:build !linux

package connecthandler

import (
	"context"
	"fmt"
)

// Command handlers rely on Linux process handling (waitid without reaping,
// process groups); elsewhere New refuses them.
type execRunner struct{}

func newExecRunner(command []string) (*execRunner, error) {
	return nil, fmt.Errorf("%w: command handlers are supported on Linux only", ErrBadCommand)
}

func (r *execRunner) run(ctx context.Context, body []byte) ([]byte, error) {
	panic("unreachable")
}

func (r *execRunner) close() {}
