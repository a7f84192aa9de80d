package console

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// prompter asks as OpenVPN's builtin console does: prompts without a newline, the password read
// with echo off, and it reports what it read.
const prompter = `
printf 'Enter Auth Username:'
read -r user
printf 'Enter Auth Password:'
stty -echo
read -r pass
stty echo
printf '\n'
printf 'CHALLENGE: code please'
read -r code
printf 'user=<%s> pass=<%s> code=<%s>\n' "$user" "$pass" "$code"
[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo "all three are terminals"
tty
`

func TestPromptsAnswered(t *testing.T) {
	c := Start(t, exec.Command("sh", "-c", prompter))
	expect(t, c, `Enter Auth Username:$`)
	if err := c.Send("alice"); err != nil {
		t.Fatal(err)
	}
	expect(t, c, `Enter Auth Password:`)
	if err := c.SendSecret("s3cret pass", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	expect(t, c, `CHALLENGE: code please`)
	if err := c.Send("123456"); err != nil {
		t.Fatal(err)
	}
	m := expect(t, c, `user=<(.*)> pass=<(.*)> code=<(.*)>`)
	if m[1] != "alice" || m[2] != "s3cret pass" || m[3] != "123456" {
		t.Errorf("the program read %q, want alice / s3cret pass / 123456", m[1:])
	}
	expect(t, c, `all three are terminals`)
	expect(t, c, `/dev/pts/\d+`)
	if err := c.Wait(10 * time.Second); err != nil {
		t.Fatalf("wait: %v\n%s", err, c.Output())
	}
	out := c.Output()
	// The username was echoed by the terminal; the password, typed with echo off, was not.
	if !strings.Contains(out, "Enter Auth Username:alice\r\n") {
		t.Errorf("username echo missing from output:\n%q", out)
	}
	if strings.Count(out, "s3cret") != 1 { // only in the program's own report line
		t.Errorf("password appears %d times in the output, want once (echo off):\n%q", strings.Count(out, "s3cret"), out)
	}
	// No byte is stripped: the terminal's CR LF line ends are kept.
	if !strings.Contains(out, "code=<123456>\r\n") {
		t.Errorf("output lost its \\r\\n line ends:\n%q", out)
	}
}

// The program's session is its own and its controlling terminal is the pty: /dev/tty opens.
func TestControllingTerminal(t *testing.T) {
	c := Start(t, exec.Command("sh", "-c", `printf 'ask:' > /dev/tty; read -r x < /dev/tty; echo "got <$x> sid=$(ps -o sid= -p $$ | tr -d ' ') pid=$$"`))
	expect(t, c, `ask:`)
	if err := c.Send("via dev tty"); err != nil {
		t.Fatal(err)
	}
	m := expect(t, c, `got <(.*)> sid=(\d+) pid=(\d+)`)
	if m[1] != "via dev tty" {
		t.Errorf("read %q through /dev/tty, want %q", m[1], "via dev tty")
	}
	if m[2] != m[3] {
		t.Errorf("session id %s, want the program's own pid %s (setsid)", m[2], m[3])
	}
}

// SendSecret must not type before echo is off: the program here prints its prompt, lingers, then
// turns echo off with a flush of pending input (stty uses TCSADRAIN; openvpn TCSAFLUSH). Typed
// early, the line would be echoed.
func TestSendSecretWaitsForEchoOff(t *testing.T) {
	c := Start(t, exec.Command("sh", "-c", `printf 'Password:'; sleep 0.3; stty -echo; read -r p; stty echo; echo; echo "len=${#p}"`))
	expect(t, c, `Password:`)
	if on, err := c.Echo(); err != nil || !on {
		t.Fatalf("Echo() = %v, %v before the program turned it off; want true", on, err)
	}
	if err := c.SendSecret("hunter2", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	expect(t, c, `len=7\r\n`)
	if c.Contains("hunter2") {
		t.Errorf("secret was echoed:\n%q", c.Output())
	}
}

func TestExpectConsumes(t *testing.T) {
	c := Start(t, exec.Command("sh", "-c", `echo one; echo two; echo one-again`))
	expect(t, c, `one`)
	m := expect(t, c, `one[^\r\n]*`)
	if m[0] != "one-again" {
		t.Errorf("second Expect matched %q, want the later %q", m[0], "one-again")
	}
	_, err := c.Expect(regexp.MustCompile(`two`), 5*time.Second)
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Expect of output already consumed = %v, want ErrClosed once the program exits", err)
	}
}

func TestExpectTimeout(t *testing.T) {
	c := Start(t, exec.Command("sh", "-c", `printf 'waiting for you:'; read -r x`))
	expect(t, c, `waiting`)
	_, err := c.Expect(regexp.MustCompile(`never`), 200*time.Millisecond)
	if err == nil || errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "for you:") {
		t.Errorf("Expect = %v, want a timeout naming the unconsumed output", err)
	}
	if c.Exited() {
		t.Error("program ended; it should still be reading")
	}
	c.Kill()
	if !c.Exited() {
		t.Error("Kill returned before the program ended")
	}
}

// Kill ends the whole process group, children included.
func TestKillEndsGroup(t *testing.T) {
	c := Start(t, exec.Command("sh", "-c", `sleep 600 & echo "child=$!"; wait`))
	m := expect(t, c, `child=(\d+)`)
	c.Kill()
	// The child is killed with its group; once reaped by init its /proc entry goes.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile("/proc/" + m[1] + "/stat")
		if err != nil || strings.Contains(string(b), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %s still running after Kill", m[1])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSendRefusesControlBytes(t *testing.T) {
	c := Start(t, exec.Command("sh", "-c", `read -r x; echo "read <$x>"`))
	for _, bad := range []string{"a\nb", "x\r", "\x03", "del\x7f", strings.Repeat("a", MaxLine+1)} {
		if err := c.Send(bad); err == nil {
			t.Errorf("Send(%q) accepted", bad)
		}
	}
	if err := c.Send("fine"); err != nil {
		t.Fatal(err)
	}
	expect(t, c, `read <fine>`)
}

func TestOutputCapped(t *testing.T) {
	if testing.Short() {
		t.Skip("prints more than MaxOutput")
	}
	c := Start(t, exec.Command("sh", "-c", `head -c 17000000 /dev/zero | tr '\0' x; echo; echo done`))
	if err := c.Wait(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	// The reader may still be draining the terminal after the program ended.
	_, _ = c.Expect(regexp.MustCompile(`never`), 10*time.Second)
	out := c.Output()
	if len(out) > MaxOutput+100 || !strings.Contains(out, "more bytes not kept") {
		t.Errorf("output is %d bytes (tail %q), want MaxOutput and a note of what was dropped", len(out), out[max(len(out)-80, 0):])
	}
}

func TestStdinMustBeTerminal(t *testing.T) {
	cmd := exec.Command("true")
	cmd.Stdin = strings.NewReader("")
	if _, err := start(t, cmd); err == nil {
		t.Fatal("start with a stdin of its own succeeded; the controlling tty must be fd 0")
	}
}

func TestWithoutSystemd(t *testing.T) {
	args := []string{"openvpn", "--config", "x"}
	dir := t.TempDir()
	if got := withoutSystemd(args, dir); strings.Join(got, " ") != strings.Join(args, " ") {
		t.Errorf("no systemd: args became %q, want them unchanged", got)
	}
	if err := os.Mkdir(filepath.Join(dir, "system"), 0o755); err != nil {
		t.Fatal(err)
	}
	// With a fake systemd runtime directory, the wrapped program must not see it, while the
	// host still does.
	probe := []string{"sh", "-c", `test -e "$1/system" && echo visible || echo hidden`, "sh", dir}
	wrapped := withoutSystemd(probe, dir)
	if wrapped[0] != "unshare" {
		t.Fatalf("systemd present: args %q not wrapped", wrapped)
	}
	if os.Geteuid() != 0 {
		t.Skip("unshare --mount needs root")
	}
	c := Start(t, exec.Command(wrapped[0], wrapped[1:]...))
	expect(t, c, `hidden`)
	if _, err := os.Stat(filepath.Join(dir, "system")); err != nil {
		t.Errorf("host lost the directory: %v", err)
	}
}

func expect(t *testing.T, c *Console, re string) []string {
	t.Helper()
	m, err := c.Expect(regexp.MustCompile(re), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
