package connecthandler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const allowJSON = `{"allow":true,"error-msg-on-denied-connection":"","posture-compliance-statuses":[],"schema-version":"v2"}`

// script writes a /bin/sh handler into a fresh directory and returns a
// Config that runs it with that directory as $1.
func script(t *testing.T, body string) (Config, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "handler.sh")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	return Config{Command: []string{path, dir}}, dir
}

func mustNew(t *testing.T, cfg Config) *Handler {
	t.Helper()
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// wantFailure asserts err is a *Failure with the reason and a message
// containing each of parts.
func wantFailure(t *testing.T, d Decision, err error, reason string, parts ...string) *Failure {
	t.Helper()
	var f *Failure
	if !errors.As(err, &f) {
		t.Fatalf("err = %v (%T), want a *Failure %s", err, err, reason)
	}
	if f.Reason != reason {
		t.Fatalf("reason %q, want %q (%v)", f.Reason, reason, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
	if d.Allow {
		t.Error("a failed call allows")
	}
	return f
}

// readPID reads a pid a handler wrote to dir/name.
func readPID(t *testing.T, dir, name string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// waitGone waits until process pid no longer runs: absent, or a zombie
// waiting for init to reap it. SIGKILL is delivered asynchronously, so this
// polls; it fails after 10 s.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return // gone
		}
		// pid (comm) S ...: the state follows the last ')'.
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 && len(s) > i+2 && (s[i+2] == 'Z' || s[i+2] == 'X') {
			return
		}
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d still runs: %s", pid, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestExecAllow(t *testing.T) {
	t.Setenv("CVPN_TEST_SECRET", "leak")
	cfg, dir := script(t, `cat > "$1/request.json"; env > "$1/env"; pwd > "$1/pwd"; printf '%s' '`+
		`{"allow":true,"error-msg-on-denied-connection":"","posture-compliance-statuses":["compliant"],"schema-version":"v2"}'`)
	var mu sync.Mutex
	var outcomes []string
	cfg.Observer = ObserverFunc(func(o string, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		outcomes = append(outcomes, o)
	})
	h := mustNew(t, cfg)
	d, err := h.Call(context.Background(), Request{
		ConnectionID: "cvpn-connection-1", EndpointID: "cvpn-endpoint-1", CommonName: "dev1",
		Username: "alice", PublicIP: "203.0.113.9", Groups: []string{"eng", "ops"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Allow || d.Message != "" || len(d.Posture) != 1 || d.Posture[0] != "compliant" {
		t.Errorf("decision %+v", d)
	}

	var req map[string]string
	b, err := os.ReadFile(filepath.Join(dir, "request.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &req); err != nil {
		t.Fatalf("request %q: %v", b, err)
	}
	if req["username"] != "alice" || req["groups"] != "eng,ops" || req["schema-version"] != "v2" || req["public-ip"] != "203.0.113.9" {
		t.Errorf("request %s", b)
	}
	env, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(env), "CVPN_TEST_SECRET") || !strings.Contains(string(env), handlerEnv[0]) {
		t.Errorf("handler environment:\n%s", env)
	}
	if pwd, _ := os.ReadFile(filepath.Join(dir, "pwd")); strings.TrimSpace(string(pwd)) != "/" {
		t.Errorf("working directory %q, want /", pwd)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(outcomes) != 1 || outcomes[0] != OutcomeAllowed {
		t.Errorf("outcomes %v", outcomes)
	}
}

func TestExecNoShell(t *testing.T) {
	// Arguments reach the program as they are: no shell expands them.
	cfg, dir := script(t, `printf '%s' "$2" > "$1/arg"; printf '%s' '`+allowJSON+`'`)
	cfg.Command = append(cfg.Command, "$(touch injected); *")
	h := mustNew(t, cfg)
	if _, err := h.Call(context.Background(), Request{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "arg")); string(b) != "$(touch injected); *" {
		t.Errorf("argument arrived as %q", b)
	}
	if _, err := os.Stat("/injected"); err == nil {
		t.Error("the argument was run by a shell")
	}
}

func TestExecDeny(t *testing.T) {
	cfg, _ := script(t, `printf '%s' '{"allow":false,"error-msg-on-denied-connection":"Your device is not compliant.\nCall x123.\u001b[2J","posture-compliance-statuses":["quarantined"],"schema-version":"v2"}'`)
	var got []string
	cfg.Observer = ObserverFunc(func(o string, _ time.Duration) { got = append(got, o) })
	h := mustNew(t, cfg)
	d, err := h.Call(context.Background(), Request{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Allow || d.Message != "Your device is not compliant. Call x123.[2J" || len(d.Posture) != 1 || d.Posture[0] != "quarantined" {
		t.Errorf("decision %+v", d)
	}
	if len(got) != 1 || got[0] != OutcomeDenied {
		t.Errorf("outcomes %v", got)
	}
}

func TestExecInvalidResponses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, body string
		parts      []string
	}{
		{"not JSON", `echo "all good"`, []string{"not a JSON object"}},
		{"empty output", `cat >/dev/null; echo oops >&2`, []string{"wrote nothing", `stderr: "oops"`}},
		{"allow missing", `printf '%s' '{"schema-version":"v2"}'`, []string{`"allow" is missing`}},
		{"unknown schema", `printf '%s' '{"allow":true,"schema-version":"v9"}'`, []string{"unknown schema-version"}},
		{"message too long", `printf '{"allow":false,"schema-version":"v2","error-msg-on-denied-connection":"%0256d"}' 0`, []string{"256 characters"}},
		{"too many statuses", `printf '%s' '{"allow":true,"schema-version":"v2","posture-compliance-statuses":["1","2","3","4","5","6","7","8","9","10","11"]}'`, []string{"11 statuses"}},
		{"status too long", `printf '{"allow":true,"schema-version":"v2","posture-compliance-statuses":["%0256d"]}' 0`, []string{"has 256 characters"}},
		{"oversized and exits", `head -c 70000 /dev/zero | tr '\0' ' '; printf '%s' '` + allowJSON + `'`, []string{"more than 65536 bytes"}},
		// Endless output: the group is killed on overflow, long before the
		// 20 s timeout.
		{"endless output", `yes`, []string{"more than 65536 bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, _ := script(t, tc.body)
			cfg.Timeout = 20 * time.Second
			var got []string
			cfg.Observer = ObserverFunc(func(o string, _ time.Duration) { got = append(got, o) })
			h := mustNew(t, cfg)
			d, err := h.Call(context.Background(), Request{})
			wantFailure(t, d, err, ReasonInvalidResponse, tc.parts...)
			if len(got) != 1 || got[0] != ReasonInvalidResponse {
				t.Errorf("outcomes %v", got)
			}
		})
	}
}

func TestExecLimitsAccepted(t *testing.T) {
	// The largest valid response: 255 characters, 10 statuses of 255.
	cfg, _ := script(t, `s=$(printf '%0255d' 0); printf '{"allow":false,"schema-version":"v2","error-msg-on-denied-connection":"%s","posture-compliance-statuses":["%s","%s","%s","%s","%s","%s","%s","%s","%s","%s"]}' $s $s $s $s $s $s $s $s $s $s $s`)
	h := mustNew(t, cfg)
	d, err := h.Call(context.Background(), Request{})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Message) != 255 || len(d.Posture) != 10 || len(d.Posture[9]) != 255 {
		t.Errorf("message %d, statuses %d", len(d.Message), len(d.Posture))
	}
}

func TestExecCrash(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, body string
		parts      []string
	}{
		{"segfault", `echo "about to crash" >&2; kill -SEGV $$`, []string{"killed by signal segmentation fault", `stderr: "about to crash"`}},
		{"exit 2", `printf '%s' '` + allowJSON + `'; printf 'first line\nsecond line\n' >&2; exit 2`, []string{"exited with status 2", `stderr: "first line"`}},
		{"not runnable", `exit 0`, []string{"start"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, _ := script(t, tc.body)
			h := mustNew(t, cfg)
			if tc.name == "not runnable" {
				// Valid at New, gone at the call.
				if err := os.Remove(cfg.Command[0]); err != nil {
					t.Fatal(err)
				}
			}
			d, err := h.Call(context.Background(), Request{})
			f := wantFailure(t, d, err, ReasonOtherExecutionError, tc.parts...)
			if strings.Contains(f.Error(), "second line") {
				t.Errorf("more than the first line of stderr: %v", f)
			}
		})
	}
}

func TestExecTimeoutKillsGroup(t *testing.T) {
	t.Parallel()
	cfg, dir := script(t, `sleep 1000 & echo $! > "$1/child"; echo $$ > "$1/leader"; wait`)
	cfg.Timeout = 300 * time.Millisecond
	var got []string
	cfg.Observer = ObserverFunc(func(o string, _ time.Duration) { got = append(got, o) })
	h := mustNew(t, cfg)
	d, err := h.Call(context.Background(), Request{})
	wantFailure(t, d, err, ReasonTimedOut, "no answer within 300ms")
	waitGone(t, readPID(t, dir, "leader"))
	waitGone(t, readPID(t, dir, "child"))
	if len(got) != 1 || got[0] != ReasonTimedOut {
		t.Errorf("outcomes %v", got)
	}
}

func TestExecCallerDeadline(t *testing.T) {
	t.Parallel()
	cfg, dir := script(t, `echo $$ > "$1/leader"; exec sleep 1000`)
	h := mustNew(t, cfg) // 30 s of its own
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	d, err := h.Call(ctx, Request{})
	wantFailure(t, d, err, ReasonTimedOut, "caller's deadline")
	waitGone(t, readPID(t, dir, "leader"))
}

func TestExecCancelKillsGroup(t *testing.T) {
	t.Parallel()
	cfg, dir := script(t, `sleep 1000 & echo $! > "$1/child"; echo $$ > "$1/leader"; touch "$1/started"; wait`)
	h := mustNew(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		d   Decision
		err error
	}
	done := make(chan result, 1)
	go func() {
		d, err := h.Call(ctx, Request{})
		done <- result{d, err}
	}()
	waitFile(t, filepath.Join(dir, "started"))
	cancel()
	r := <-done
	wantFailure(t, r.d, r.err, ReasonServiceError)
	if !errors.Is(r.err, context.Canceled) {
		t.Errorf("err %v does not wrap context.Canceled", r.err)
	}
	waitGone(t, readPID(t, dir, "leader"))
	waitGone(t, readPID(t, dir, "child"))
}

func TestExecLeftoverChildKilled(t *testing.T) {
	t.Parallel()
	// The handler answers and exits, leaving a child that holds its
	// standard output open. The call succeeds at once and the child dies.
	cfg, dir := script(t, `sleep 1000 & echo $! > "$1/child"; printf '%s' '`+allowJSON+`'`)
	h := mustNew(t, cfg)
	// Had Call waited for the child to close the pipe, it would have
	// failed with "left its process group" after pipeGrace.
	d, err := h.Call(context.Background(), Request{})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Allow {
		t.Error("denied")
	}
	waitGone(t, readPID(t, dir, "child"))
}

func TestExecEscapedDescendant(t *testing.T) {
	t.Parallel()
	// A descendant that leaves the process group and keeps stdout open is
	// out of reach; the call fails rather than hang, after pipeGrace.
	if _, err := os.Stat("/usr/bin/setsid"); err != nil {
		t.Skip("no setsid(1)")
	}
	cfg, dir := script(t, `/usr/bin/setsid sh -c 'echo $$ > "$0/escaped"; exec sleep 1000' "$1" & while [ ! -s "$1/escaped" ]; do :; done; printf '%s' '`+allowJSON+`'`)
	h := mustNew(t, cfg)
	d, err := h.Call(context.Background(), Request{})
	pid := readPID(t, dir, "escaped")
	syscall.Kill(pid, syscall.SIGKILL)
	wantFailure(t, d, err, ReasonOtherExecutionError, "left its process group")
}

func TestExecConcurrencyCap(t *testing.T) {
	t.Parallel()
	cfg, dir := script(t, `if [ -p "$1/gate" ]; then touch "$1/started"; read x < "$1/gate"; rm "$1/gate"; fi; printf '%s' '`+allowJSON+`'`)
	cfg.MaxConcurrent = 1
	var mu sync.Mutex
	var got []string
	cfg.Observer = ObserverFunc(func(o string, _ time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, o)
	})
	h := mustNew(t, cfg)
	gate := filepath.Join(dir, "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() {
		_, err := h.Call(context.Background(), Request{})
		first <- err
	}()
	waitFile(t, filepath.Join(dir, "started"))

	// The only slot is taken: a call that cannot get it in its time fails.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	d, err := h.Call(ctx, Request{})
	wantFailure(t, d, err, ReasonThrottled, "1 call slots")

	w, err := os.OpenFile(gate, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString("go\n")
	w.Close()
	if err := <-first; err != nil {
		t.Fatalf("first call: %v", err)
	}
	// The slot came back.
	if _, err := h.Call(context.Background(), Request{}); err != nil {
		t.Fatalf("third call: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(got, " ") != ReasonThrottled+" allowed allowed" {
		t.Errorf("outcomes %v", got)
	}
}

func TestExecParallelCalls(t *testing.T) {
	t.Parallel()
	// Many calls at once through a small cap all complete: slots are
	// released on every path.
	cfg, _ := script(t, `read line; case "$line" in *'"username":"deny'*) printf '%s' '{"allow":false,"schema-version":"v2"}';; *) printf '%s' '`+allowJSON+`';; esac`)
	cfg.MaxConcurrent = 3
	h := mustNew(t, cfg)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			user := "allow" + strconv.Itoa(i)
			if i%2 == 1 {
				user = "deny" + strconv.Itoa(i)
			}
			d, err := h.Call(context.Background(), Request{Username: user})
			switch {
			case err != nil:
				errs <- err
			case d.Allow != (i%2 == 0):
				errs <- fmt.Errorf("call %d: allow %v", i, d.Allow)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(h.slots) != 0 {
		t.Errorf("%d slots still held", len(h.slots))
	}
}

func TestNewCommandChecks(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	good := write("good", 0o750)
	for _, tc := range []struct {
		name string
		cfg  Config
		want error
		part string
	}{
		{"relative", Config{Command: []string{"handler.sh"}}, ErrBadCommand, "not an absolute path"},
		{"missing", Config{Command: []string{filepath.Join(dir, "nope")}}, ErrBadCommand, "no such file"},
		{"directory", Config{Command: []string{dir}}, ErrBadCommand, "not a regular file"},
		{"not executable", Config{Command: []string{write("plain", 0o640)}}, ErrBadCommand, "not executable"},
		{"world-writable", Config{Command: []string{write("open", 0o777)}}, ErrBadCommand, "writable by all"},
		{"both", Config{Command: []string{good}, URL: "https://127.0.0.1/"}, ErrBothHandlers, ""},
		{"none", Config{}, ErrNoHandler, ""},
		{"negative timeout", Config{Command: []string{good}, Timeout: -time.Second}, ErrBadLimit, "timeout"},
		{"timeout over 30s", Config{Command: []string{good}, Timeout: 31 * time.Second}, ErrBadLimit, "timeout"},
		{"negative concurrency", Config{Command: []string{good}, MaxConcurrent: -1}, ErrBadLimit, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(tc.cfg)
			if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), tc.part) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.part)
			}
			if h != nil {
				t.Error("a Handler with an error")
			}
		})
	}
	h, err := New(Config{Command: []string{good}})
	if err != nil {
		t.Fatal(err)
	}
	if h.timeout != DefaultTimeout || cap(h.slots) != DefaultMaxConcurrent {
		t.Errorf("defaults: timeout %v, slots %d", h.timeout, cap(h.slots))
	}
}

// waitFile waits for a handler to create path (it signals that it runs).
func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
