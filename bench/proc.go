package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

// Proc is a process the harness started; see netlab.Proc.
type Proc = netlab.Proc

// StartProc runs args in namespace ns ("" runs it here) in its own process group.
func StartProc(name, ns string, args ...string) (*Proc, error) {
	return netlab.StartProc(name, ns, args...)
}

func tail(s string, n int) string { return netlab.Tail(s, n) }

// run runs a short command and returns its error with its output.
func run(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// checkRoot fails clearly when the process cannot create namespaces.
func checkRoot() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("bench: needs root (network namespaces, TUN devices, iptables); run as root")
	}
	return nil
}
