package netlab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a process started in a namespace (through `ip netns exec`, which execs in place: the
// pid is the program's own) in its own process group, killed with the test process. Its output
// is kept, up to maxOutput bytes.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	out  *capped
	done chan struct{}
	err  error
}

const maxOutput = 8 << 20

// StartProc runs args in namespace ns ("" runs it here).
func StartProc(name, ns string, args ...string) (*Proc, error) {
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	p := &Proc{Name: name, out: &capped{}, done: make(chan struct{})}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Output is what the process printed so far.
func (p *Proc) Output() string { return p.out.String() }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to end, or for ctx (then kills it).
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		p.Kill()
		return fmt.Errorf("%s: %w", p.Name, ctx.Err())
	}
}

// WaitFor waits until the output contains s, the process exits, or the timeout passes.
func (p *Proc) WaitFor(s string, timeout time.Duration) error {
	return p.WaitForContext(context.Background(), s, timeout)
}

// WaitForContext is WaitFor that also ends with ctx.
func (p *Proc) WaitForContext(ctx context.Context, s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.Output(), s) {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("%s exited (%v) before printing %q:\n%s", p.Name, p.err, s, Tail(p.Output(), 2000))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not print %q within %s:\n%s", p.Name, s, timeout, Tail(p.Output(), 2000))
}

// Signal sends sig to the process (to cvpn, SIGHUP reloads the policy).
func (p *Proc) Signal(sig os.Signal) error {
	if p.Exited() {
		return fmt.Errorf("%s exited (%v) before %v", p.Name, p.err, sig)
	}
	return p.cmd.Process.Signal(sig)
}

// Stop sends SIGTERM to the process group and waits up to 10 s, then kills it.
func (p *Proc) Stop() error {
	if p.Exited() {
		return p.err
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.Kill()
	}
	return p.err
}

// Kill ends the process group at once (SIGKILL), as a crash or a pulled cable would, and waits.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// capped is a concurrency-safe buffer that stops growing at maxOutput: what does not fit is
// dropped, never refused, so the child never blocks on its output.
type capped struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(p)
	if room := max(maxOutput-c.b.Len(), 0); room < len(p) {
		p = p[:room]
	}
	c.b.Write(p)
	return n, nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

// Tail is the last n bytes of s, for error messages.
func Tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
