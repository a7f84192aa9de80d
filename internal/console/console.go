// Package console runs a program on a pseudo-terminal so that a test can answer its prompts as a
// person at the keyboard would: the stock openvpn client asking for a username, a password, a
// static-challenge response or a CRV1 dynamic-challenge response at its console.
//
// The program is the leader of a new session whose controlling terminal is the pty, so
// /dev/tty, stdin, stdout and stderr are all the pty, and everything it prints (log lines,
// prompts without a trailing newline, the terminal's echo) arrives on one stream in order. The
// package keeps that stream byte for byte (no stripping of \r or escape sequences) for Expect
// and for failure messages.
//
// It does not interpret terminal escape sequences, emulate a screen, or handle programs that
// read the keyboard in raw mode; it is a line-at-a-time driver for canonical-mode prompts.
package console

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// MaxOutput bounds the output a Console keeps. What a runaway program prints beyond it is
// read and counted, never kept, so the program never blocks on a full pty.
const MaxOutput = 16 << 20

// MaxLine is the longest line Send accepts. Linux's canonical-mode line discipline holds 4095
// bytes plus the newline (N_TTY_BUF_SIZE); a longer line would be cut, so it is refused instead.
const MaxLine = 4095

// ErrClosed is returned by Expect when the program's side of the terminal closed (it exited, or
// closed every descriptor of the tty) before the pattern appeared.
var ErrClosed = errors.New("console: terminal closed")

// Console is one program running on a pseudo-terminal. Its methods may be called from any
// goroutine; Expect calls on one Console should come from one goroutine, since they share a
// read position.
type Console struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	ptm  *os.File // pty master: the test's end of the terminal

	readDone chan struct{} // closed when the reader goroutine saw EOF/EIO
	waitDone chan struct{} // closed when the process was reaped
	waitErr  error         // set before waitDone closes

	// mu guards the fields below.
	mu      sync.Mutex
	out     []byte        // everything the program printed, up to MaxOutput
	dropped int64         // bytes read beyond MaxOutput
	pos     int           // Expect searches out[pos:]; a match moves it past the match
	changed chan struct{} // closed and replaced whenever out grows or the reader ends
	readErr error         // why the reader stopped
}

// Start starts cmd on a new pseudo-terminal: cmd's stdin, stdout and stderr (those left nil)
// become the terminal, and cmd runs as the leader of a new session with the terminal as its
// controlling tty. It fails the test if cmd cannot start. When the test ends, Cleanup kills
// the program's process group and, if the test failed, logs everything the program printed.
//
// cmd.SysProcAttr is replaced (a session leader cannot also ask for its own process group).
func Start(t testing.TB, cmd *exec.Cmd) *Console {
	t.Helper()
	c, err := start(t, cmd)
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	return c
}

func start(t testing.TB, cmd *exec.Cmd) (*Console, error) {
	ptm, tty, err := pty.Open()
	if err != nil {
		return nil, fmt.Errorf("open pty: %w", err)
	}
	// pty.Open hands the master back in blocking mode (it calls Fd), so a Read could not be
	// interrupted by Close. A non-blocking duplicate is served by the runtime poller.
	master, err := pollable(ptm)
	_ = ptm.Close()
	if err != nil {
		_ = tty.Close()
		return nil, err
	}
	// A wide terminal, so that no program wraps its prompts.
	_ = pty.Setsize(tty, &pty.Winsize{Rows: 50, Cols: 250})
	if cmd.Stdin == nil {
		cmd.Stdin = tty
	}
	if cmd.Stdout == nil {
		cmd.Stdout = tty
	}
	if cmd.Stderr == nil {
		cmd.Stderr = tty
	}
	// Setctty makes the child's fd 0 its controlling terminal; it must be the tty.
	if cmd.Stdin != tty {
		_ = tty.Close()
		_ = master.Close()
		return nil, fmt.Errorf("start %s: stdin must be left to the console (it becomes the controlling tty)", cmd.Path)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:    true,
		Setctty:   true,
		Ctty:      0,
		Pdeathsig: syscall.SIGKILL, // never outlive a crashed test binary
	}
	name := strings.Join(cmd.Args, " ")
	if err := cmd.Start(); err != nil {
		_ = tty.Close()
		_ = master.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	// The child holds the tty now; the test's copy would keep the terminal open (no EIO on the
	// master) after the child exits.
	_ = tty.Close()
	c := &Console{
		t:        t,
		name:     name,
		cmd:      cmd,
		ptm:      master,
		readDone: make(chan struct{}),
		waitDone: make(chan struct{}),
		changed:  make(chan struct{}),
	}
	go c.read()
	go func() {
		c.waitErr = cmd.Wait()
		close(c.waitDone)
	}()
	t.Cleanup(c.cleanup)
	return c, nil
}

// pollable returns a non-blocking duplicate of f that the runtime poller serves.
func pollable(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup pty master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("pty master non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// read copies the terminal's output into c.out until the program's side closes. On Linux a
// read of the master fails with EIO once no process holds the tty.
func (c *Console) read() {
	defer close(c.readDone)
	buf := make([]byte, 32<<10)
	for {
		n, err := c.ptm.Read(buf)
		c.mu.Lock()
		if n > 0 {
			keep := min(n, max(MaxOutput-len(c.out), 0))
			c.out = append(c.out, buf[:keep]...)
			c.dropped += int64(n - keep)
		}
		if err != nil {
			c.readErr = err
		}
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// Expect waits until the output not yet consumed by an earlier Expect matches re, and returns
// the match and its submatches (as FindSubmatch would). The read position moves past the match,
// so the next Expect looks only at later output. It fails with an error that carries the
// unconsumed output when timeout passes or the terminal closes first.
//
// Prompts need no trailing newline: the match runs on every chunk the program writes.
func (c *Console) Expect(re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		rest := c.out[c.pos:]
		if loc := re.FindSubmatchIndex(rest); loc != nil {
			m := make([]string, len(loc)/2)
			for i := range m {
				if loc[2*i] >= 0 {
					m[i] = string(rest[loc[2*i]:loc[2*i+1]])
				}
			}
			c.pos += loc[1]
			c.mu.Unlock()
			return m, nil
		}
		changed, readErr := c.changed, c.readErr
		c.mu.Unlock()
		if readErr != nil {
			return nil, fmt.Errorf("%s: %w (%v) before printing %q; output since the last match:\n%s",
				c.name, ErrClosed, readErr, re, c.unconsumed())
		}
		select {
		case <-changed:
		case <-timer.C:
			return nil, fmt.Errorf("%s: did not print %q within %s; output since the last match:\n%s",
				c.name, re, timeout, c.unconsumed())
		}
	}
}

// unconsumed is the output after the read position, its last 4 KiB, for error messages.
func (c *Console) unconsumed() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	rest := c.out[c.pos:]
	if len(rest) > 4096 {
		return "..." + string(rest[len(rest)-4096:])
	}
	return string(rest)
}

// Send types line and Enter (a carriage return, which the terminal turns into the newline the
// program reads). The line must be printable: control bytes (Ctrl-C, Ctrl-U, DEL, newlines)
// would be acted on by the line discipline instead of reaching the program, so they are refused.
//
// Send only after Expect has seen the prompt: a program may discard type-ahead. OpenVPN's
// builtin console turns echo off and on with TCSAFLUSH (src/openvpn/console_builtin.c,
// get_console_input), which drops whatever was typed before; use SendSecret for prompts that
// hide the input.
func (c *Console) Send(line string) error {
	if len(line) > MaxLine {
		return fmt.Errorf("console: line of %d bytes is longer than the terminal's %d", len(line), MaxLine)
	}
	for i := 0; i < len(line); i++ {
		if b := line[i]; b < 0x20 || b == 0x7f {
			return fmt.Errorf("console: line has control byte %#02x at %d", b, i)
		}
	}
	if _, err := c.ptm.Write([]byte(line + "\r")); err != nil {
		return fmt.Errorf("console: write to %s: %w", c.name, err)
	}
	return nil
}

// SendSecret waits (up to timeout) until the program has turned the terminal's echo off, as it
// does to read a password, and then types line as Send does. Waiting matters: OpenVPN prints its
// password prompt first and turns echo off after, flushing input typed in between.
func (c *Console) SendSecret(line string, timeout time.Duration) error {
	if err := c.waitEcho(false, timeout); err != nil {
		return err
	}
	return c.Send(line)
}

// Echo reports whether the terminal echoes what is typed (the program has not turned echo off).
func (c *Console) Echo() (bool, error) {
	t, err := c.termios()
	if err != nil {
		return false, err
	}
	return t.Lflag&unix.ECHO != 0, nil
}

// waitEcho polls the terminal's mode until echo is on (want) or off. The program changes the
// mode with no output to wake on, so this polls; it asserts nothing about timing.
func (c *Console) waitEcho(want bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		on, err := c.Echo()
		if err != nil {
			return err
		}
		if on == want {
			return nil
		}
		select {
		case <-c.readDone:
			return fmt.Errorf("%s: %w before turning echo %s", c.name, ErrClosed, onOff(want))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: did not turn echo %s within %s; output since the last match:\n%s",
				c.name, onOff(want), timeout, c.unconsumed())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// termios reads the terminal's mode through the master: on Linux, TCGETS on a pty master
// reports the slave's settings (drivers/tty/tty_ioctl.c tty_mode_ioctl uses the linked tty).
func (c *Console) termios() (*unix.Termios, error) {
	rc, err := c.ptm.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	var t *unix.Termios
	var ierr error
	if err := rc.Control(func(fd uintptr) { t, ierr = unix.IoctlGetTermios(int(fd), unix.TCGETS) }); err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	if ierr != nil {
		return nil, fmt.Errorf("console: read terminal mode of %s: %w", c.name, ierr)
	}
	return t, nil
}

// Output is everything the program printed so far, byte for byte (with the terminal's \r\n
// line ends and the echo of what was typed while echo was on).
func (c *Console) Output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dropped > 0 {
		return string(c.out) + fmt.Sprintf("\n[console: %d more bytes not kept]\n", c.dropped)
	}
	return string(c.out)
}

// PID is the program's process id (and its process group and session id).
func (c *Console) PID() int { return c.cmd.Process.Pid }

// Exited reports whether the program has ended.
func (c *Console) Exited() bool {
	select {
	case <-c.waitDone:
		return true
	default:
		return false
	}
}

// Wait waits up to timeout for the program to end and returns how it ended (cmd.Wait's error).
// It does not kill the program when the timeout passes.
func (c *Console) Wait(timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-c.waitDone:
		return c.waitErr
	case <-timer.C:
		return fmt.Errorf("%s: still running after %s", c.name, timeout)
	}
}

// Signal sends sig to the program's process group.
func (c *Console) Signal(sig syscall.Signal) error {
	if c.Exited() {
		return fmt.Errorf("%s exited (%v) before %v", c.name, c.waitErr, sig)
	}
	return syscall.Kill(-c.cmd.Process.Pid, sig)
}

// Kill ends the program's process group at once (SIGKILL) and waits for the program.
func (c *Console) Kill() {
	if !c.Exited() {
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-c.waitDone
}

// cleanup kills what is left, waits for the reader to drain the terminal and closes it.
func (c *Console) cleanup() {
	c.Kill()
	select {
	case <-c.readDone:
	case <-time.After(5 * time.Second):
		// A process outside the group still holds the tty; closing the master hangs it up.
	}
	_ = c.ptm.Close()
	<-c.readDone
	if c.t.Failed() {
		c.t.Logf("console %s output:\n%s", c.name, c.Output())
	}
}

// Contains reports whether the output so far contains s anywhere (consumed or not).
func (c *Console) Contains(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Contains(c.out, []byte(s))
}
