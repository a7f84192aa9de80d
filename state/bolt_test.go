package state_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/state"
	"github.com/cvpn/cvpn/state/statetest"
)

func TestBoltConformance(t *testing.T) {
	statetest.Run(t, func(t *testing.T) state.Store {
		s, err := state.OpenBolt(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestBoltPersistsAndModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := state.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Put(ctx, "b", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, state.BoltFile): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s has mode %04o, want %04o", path, got, want)
		}
	}
	s, err = state.OpenBolt(dir)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	if got, err := s.Get(ctx, "b", "k"); err != nil || string(got) != "v" {
		t.Fatalf("after reopen Get = %q, %v; want v", got, err)
	}
}

func TestBoltTightensLooseFile(t *testing.T) {
	dir := t.TempDir()
	s, err := state.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	path := filepath.Join(dir, state.BoltFile)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err = state.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %04o after open, want 0600", fi.Mode().Perm())
	}
}

// TestBoltSecondOpenerFails opens the store twice in this process: bbolt's
// flock belongs to the open file, so the second open conflicts like another
// process would.
func TestBoltSecondOpenerFails(t *testing.T) {
	dir := t.TempDir()
	s, err := state.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	s2, err := state.OpenBolt(dir)
	if err == nil {
		s2.Close()
		t.Fatal("second OpenBolt of a store in use succeeded")
	}
	if !errors.Is(err, state.ErrInUse) {
		t.Fatalf("err = %v, want ErrInUse", err)
	}
	want := "state store " + dir + " is in use by another process (is cvpn serve running?)"
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %q, want it to say %q", err, want)
	}
	// A generous bound: the point is that it does not wait forever.
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("second OpenBolt took %v", d)
	}
}

const helperEnv = "CVPN_STATE_TEST_OPEN_DIR"

// TestMain lets TestBoltSecondProcess re-run this binary as the other process.
func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		s, err := state.OpenBolt(dir)
		if err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(3)
		}
		s.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestBoltSecondProcess(t *testing.T) {
	dir := t.TempDir()
	s, err := state.OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 {
		t.Fatalf("other process: err = %v, output %q; want exit 3", err, out)
	}
	if !strings.Contains(string(out), "is in use by another process (is cvpn serve running?)") {
		t.Fatalf("other process said %q", out)
	}
	// Once this process closes the store, the other one can open it.
	s.Close()
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("other process after Close: %v, %s", err, out)
	}
}
