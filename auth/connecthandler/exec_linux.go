package connecthandler

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Limits of a command handler's process.
const (
	// maxStderr is how much of a command's standard error is kept.
	maxStderr = 4 << 10
	// pipeGrace bounds the wait for the output pipes to close once the
	// process group is dead: only a descendant that left the group can
	// hold them longer (os/exec Cmd.WaitDelay).
	pipeGrace = 2 * time.Second
)

// handlerEnv is the whole environment of a command handler: nothing of the
// server's own environment (secrets, proxies, LD_PRELOAD) leaks into it.
var handlerEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

type execRunner struct {
	path string
	args []string
}

func newExecRunner(command []string) (*execRunner, error) {
	path := command[0]
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%w: %q is not an absolute path", ErrBadCommand, path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	switch mode := fi.Mode(); {
	case !mode.IsRegular():
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrBadCommand, path)
	case mode.Perm()&0o111 == 0:
		return nil, fmt.Errorf("%w: %s is not executable", ErrBadCommand, path)
	case mode.Perm()&0o002 != 0:
		// Anyone could replace what the server runs for every connection.
		return nil, fmt.Errorf("%w: %s is writable by all users", ErrBadCommand, path)
	}
	return &execRunner{path: path, args: append([]string(nil), command[1:]...)}, nil
}

func (r *execRunner) close() {}

// run starts the command in its own process group, feeds it body and
// collects its output. The group is killed when ctx is done, when the
// output exceeds MaxResponseSize, and in any case once the command exits,
// while it is still an unreaped zombie: its pid, which is also the group's
// id, cannot be reused before it is reaped, so the kill cannot reach an
// unrelated process.
func (r *execRunner) run(ctx context.Context, body []byte) ([]byte, error) {
	stdout := &cappedBuffer{limit: MaxResponseSize, overflow: make(chan struct{})}
	stderr := &cappedBuffer{limit: maxStderr}
	cmd := &exec.Cmd{
		Path:   r.path,
		Args:   append([]string{r.path}, r.args...),
		Env:    handlerEnv,
		Dir:    "/",
		Stdin:  bytes.NewReader(body),
		Stdout: stdout,
		Stderr: stderr,
		// Pdeathsig: a handler does not outlive a cvpn that is killed mid-call. (The kernel
		// sends it when the thread that started the handler exits; Go keeps its threads, so
		// in practice that is when cvpn exits.)
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
		WaitDelay:   pipeGrace,
	}
	if err := cmd.Start(); err != nil {
		return nil, fail(ReasonOtherExecutionError, "start %s: %v", r.path, err)
	}
	pid := cmd.Process.Pid

	exited := make(chan struct{})
	go func() {
		waitExited(pid)
		close(exited)
	}()
	var stop *Failure
	select {
	case <-exited:
	case <-ctx.Done():
		killGroup(pid)
		<-exited
		stop = interrupted(ctx)
	case <-stdout.overflow:
		killGroup(pid)
		<-exited
		stop = fail(ReasonInvalidResponse, "%s wrote more than %d bytes", r.path, MaxResponseSize)
	}
	// The leader is a zombie now (or was killed): end whatever it left
	// running in its group, then reap it.
	killGroup(pid)
	err := cmd.Wait()
	if stop != nil {
		return nil, stop
	}

	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		return nil, fail(ReasonOtherExecutionError, "%s %s%s", r.path, describeExit(exitErr.ProcessState), stderrLine(stderr))
	case errors.Is(err, exec.ErrWaitDelay):
		return nil, fail(ReasonOtherExecutionError, "%s exited but a process that left its process group kept its output open%s", r.path, stderrLine(stderr))
	case err != nil:
		return nil, fail(ReasonOtherExecutionError, "%s: %v%s", r.path, err, stderrLine(stderr))
	}
	if stdout.overflowed() {
		return nil, fail(ReasonInvalidResponse, "%s wrote more than %d bytes", r.path, MaxResponseSize)
	}
	if len(bytes.TrimSpace(stdout.buf.Bytes())) == 0 {
		return nil, fail(ReasonInvalidResponse, "%s wrote nothing on its standard output%s", r.path, stderrLine(stderr))
	}
	return stdout.buf.Bytes(), nil
}

// waitExited blocks until process pid has exited, without reaping it
// (waitid with WNOWAIT): cmd.Wait reaps it later.
func waitExited(pid int) {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			// nil, or an error meaning there is nothing left to wait
			// for (ECHILD): either way the caller proceeds to reap.
			return
		}
	}
}

// killGroup sends SIGKILL to process group pgid. ESRCH (nobody left) is
// the common case after a clean exit.
func killGroup(pgid int) {
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

func describeExit(ps *os.ProcessState) string {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("was killed by signal %v", ws.Signal())
	}
	return fmt.Sprintf("exited with status %d", ps.ExitCode())
}

// stderrLine returns `; stderr: "first line"` or "".
func stderrLine(b *cappedBuffer) string {
	s := b.buf.String()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	if len(s) > maxDetail {
		s = strings.ToValidUTF8(s[:maxDetail], "") + "..."
	}
	return fmt.Sprintf("; stderr: %q", s)
}

// cappedBuffer keeps the first limit bytes written to it and discards the
// rest, never failing a write (a failed write would stop os/exec's copy and
// leave the child blocked on a full pipe). The first byte past the limit
// closes overflow, if set.
type cappedBuffer struct {
	limit    int
	overflow chan struct{}

	mu   sync.Mutex // guards the fields below
	buf  bytes.Buffer
	over bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.limit - b.buf.Len(); len(p) > room {
		b.buf.Write(p[:max(room, 0)])
		if !b.over {
			b.over = true
			if b.overflow != nil {
				close(b.overflow)
			}
		}
		return len(p), nil
	}
	b.buf.Write(p)
	return len(p), nil
}

func (b *cappedBuffer) overflowed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.over
}
