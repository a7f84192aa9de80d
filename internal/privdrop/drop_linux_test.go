package privdrop

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary act as the helper process of TestDropToNobody.
const helperEnv = "CVPN_PRIVDROP_HELPER"

// helperReport is what the helper process prints (JSON) after it has dropped to nobody.
type helperReport struct {
	DropErr     string // "" when Drop succeeded
	Threads     int    // the process's threads when it dropped
	Status      Status // its /proc/self/status afterwards
	VerifyErr   string // Verify again, afterwards
	BoundPort   int    // a port below 1024 it bound on 127.0.0.1 (0: none)
	BindErr     string
	EtcErr      string // creating a file in /etc
	SetuidErr   string // setuid(0)
	ChildStatus Status // a program it executed
	ChildErr    string
}

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		helper()
		return
	}
	os.Exit(m.Run())
}

// helper drops to nobody keeping cvpn's two capabilities, from a process that has many threads
// by then (goroutines blocked in system calls), and reports what it can do afterwards.
func helper() {
	var r helperReport
	release := make(chan struct{})
	for range 8 {
		go func() {
			// Each sleeps in a system call, holding a thread of its own.
			for {
				select {
				case <-release:
					return
				default:
					_ = syscall.Nanosleep(&syscall.Timespec{Nsec: 5e6}, nil)
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // not a timing assertion: lets the runtime start threads
	if tasks, err := filepath.Glob("/proc/self/task/*"); err == nil {
		r.Threads = len(tasks)
	}
	t, err := Lookup("nobody", "", SetOf(NetAdmin, NetBindService))
	if err == nil {
		err = Drop(t)
	}
	if err != nil {
		r.DropErr = err.Error()
	}
	close(release)
	if st, err := ReadStatus(0); err == nil {
		r.Status = st
	}
	if err := Verify(t); err != nil {
		r.VerifyErr = err.Error()
	}
	// Port 80, or another below 1024 when something here has it already.
	for _, port := range []int{80, 443, 992, 1000, 1001, 1002, 1003} {
		l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			r.BoundPort, r.BindErr = port, ""
			l.Close()
			break
		}
		r.BindErr = err.Error()
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	probe := filepath.Join("/etc", fmt.Sprintf("cvpn-privdrop-test-%d", os.Getpid()))
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		r.EtcErr = err.Error()
	} else {
		os.Remove(probe)
	}
	if err := syscall.Setuid(0); err != nil {
		r.SetuidErr = err.Error()
	}
	out, err := exec.Command("cat", "/proc/self/status").Output()
	if err == nil {
		r.ChildStatus, err = ParseStatus(strings.NewReader(string(out)))
	}
	if err != nil {
		r.ChildErr = err.Error()
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		os.Exit(2)
	}
	os.Exit(0)
}

// TestDropToNobody runs a helper process (this test binary again, without cgo so that Drop can
// reach every thread) that starts as root, drops to nobody keeping CAP_NET_ADMIN and
// CAP_NET_BIND_SERVICE, and reports. It needs root, as CI has.
func TestDropToNobody(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CI runs the tests as root)")
	}
	nobody, err := Lookup("nobody", "", SetOf(NetAdmin, NetBindService))
	if err != nil {
		t.Fatal(err)
	}
	bin := helperBinary(t)
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, stderr.String())
	}
	var r helperReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("helper's report %q: %v", out, err)
	}
	t.Logf("helper: %+v", r)
	if r.DropErr != "" || r.VerifyErr != "" {
		t.Fatalf("Drop: %s; Verify: %s", r.DropErr, r.VerifyErr)
	}
	if r.Threads < 2 {
		t.Errorf("the helper had %d threads when it dropped: the test shows nothing about threads", r.Threads)
	}
	st := r.Status
	if st.UID != [4]int{nobody.UID, nobody.UID, nobody.UID, nobody.UID} || st.GID[1] != nobody.GID {
		t.Errorf("uids %v gids %v, want nobody's (%d, %d)", st.UID, st.GID, nobody.UID, nobody.GID)
	}
	want := SetOf(NetAdmin, NetBindService)
	if st.CapEff != want || st.CapPrm != want || st.CapInh != 0 || st.CapAmb != 0 || st.CapBnd != want || !st.NoNewPrivs {
		t.Errorf("effective %s, permitted %s, inheritable %s, ambient %s, bounding %s, no_new_privs %v; want effective, permitted and bounding %s, nothing else",
			st.CapEff, st.CapPrm, st.CapInh, st.CapAmb, st.CapBnd, st.NoNewPrivs, want)
	}
	if r.BoundPort == 0 {
		t.Errorf("no port below 1024 bound on 127.0.0.1: %s", r.BindErr)
	}
	if !strings.Contains(r.EtcErr, "permission denied") {
		t.Errorf("creating a file in /etc: %q, want permission denied", r.EtcErr)
	}
	if r.SetuidErr == "" {
		t.Error("setuid(0) succeeded after the drop")
	}
	if r.ChildErr != "" {
		t.Fatalf("executing a program after the drop: %s", r.ChildErr)
	}
	c := r.ChildStatus
	if c.CapEff != 0 || c.CapPrm != 0 || c.CapInh != 0 || c.CapAmb != 0 || !c.NoNewPrivs || c.UID[0] != nobody.UID {
		t.Errorf("an executed program has effective %s, permitted %s, ambient %s, no_new_privs %v, uid %d: want no capabilities, no_new_privs, nobody",
			c.CapEff, c.CapPrm, c.CapAmb, c.NoNewPrivs, c.UID[0])
	}
}

// helperBinary is this test binary when it can drop (built without cgo), else a copy of the
// test built with CGO_ENABLED=0 (the race detector needs cgo).
func helperBinary(t *testing.T) string {
	t.Helper()
	if Supported() == nil {
		bin, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		return bin
	}
	bin := filepath.Join(t.TempDir(), "privdrop.test")
	build := exec.Command("go", "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the helper without cgo: %v\n%s", err, out)
	}
	return bin
}

// TestDropRefusals: Drop refuses without root, to root, and (built with cgo) at all, each with
// a reason; a refused Drop changes nothing.
func TestDropRefusals(t *testing.T) {
	target := Target{User: "nobody", UID: 65534, GID: 65534, Groups: []int{65534}, Keep: SetOf(NetAdmin)}
	err := Drop(Target{UID: 0})
	switch {
	case os.Geteuid() != 0:
		if !errors.Is(err, ErrNotRoot) {
			t.Errorf("Drop as uid %d = %v, want ErrNotRoot", os.Geteuid(), err)
		}
	case err == nil || !strings.Contains(err.Error(), "target user is root"):
		t.Errorf("Drop to root = %v", err)
	}
	if Supported() != nil {
		if err := Drop(target); err == nil || (os.Geteuid() == 0 && !errors.Is(err, ErrCgo)) {
			t.Errorf("Drop with cgo = %v, want ErrCgo", err)
		}
	}
	if got := os.Geteuid(); got != 0 && got != os.Getuid() {
		t.Errorf("euid changed to %d", got)
	}
	if st, err := ReadStatus(0); err != nil || st.NoNewPrivs {
		t.Errorf("after refused drops: no_new_privs %v, %v", st.NoNewPrivs, err)
	}
}

func TestLookup(t *testing.T) {
	nobody, err := Lookup("nobody", "", SetOf(NetAdmin))
	if err != nil {
		t.Skipf("no user nobody here: %v", err)
	}
	if nobody.UID == 0 || len(nobody.Groups) == 0 || nobody.Groups[0] != nobody.GID || nobody.Keep != SetOf(NetAdmin) {
		t.Errorf("Lookup(nobody) = %+v", nobody)
	}
	byID, err := Lookup(fmt.Sprint(nobody.UID), "0", 0)
	if err != nil || byID.UID != nobody.UID || byID.GID != 0 {
		t.Errorf("Lookup by number with group 0 = %+v, %v", byID, err)
	}
	for _, tc := range []struct{ user, group, want string }{
		{"root", "", "is root"},
		{"cvpn-no-such-user", "", `no user "cvpn-no-such-user" in the user database (create it: useradd`},
		{"nobody", "cvpn-no-such-group", `no group "cvpn-no-such-group"`},
	} {
		if _, err := Lookup(tc.user, tc.group, 0); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Lookup(%q, %q) = %v, want %q", tc.user, tc.group, err, tc.want)
		}
	}
}
