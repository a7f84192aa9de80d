package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvpn/cvpn/bench"
)

// TestLoadFlagErrors: a bad load flag is a usage error (exit 2) that names the flag, before
// anything is dialled.
func TestLoadFlagErrors(t *testing.T) {
	fx, err := bench.WriteFixtures(t.TempDir(), bench.FixtureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"load", "--server", "127.0.0.1:1", "--ca", fx.CACertFile, "--cert", fx.CACertFile, "--key", fx.CAKeyFile}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--proto", "sctp"}, `--proto "sctp": want udp or tcp`},
		{[]string{"--tls-auth", fx.TLSCryptFile, "--tls-auth-digest", "MD5"}, `--tls-auth-digest "MD5"`},
		{[]string{"--tls-auth", fx.TLSCryptFile, "--tls-crypt", fx.TLSCryptFile}, "--tls-crypt or --tls-auth, not both"},
		{[]string{"--profile-socket", "/run/cvpn/admin.sock"}, "--profile-socket needs --profile-out or --profile-ramp-out"},
		{[]string{"--profile-out", "cpu.pprof"}, "--profile-out and --profile-ramp-out need --profile-socket"},
		{[]string{"--profile-socket", "/run/cvpn/admin.sock", "--profile-ramp-out", "ramp.pprof"}, "--profile-ramp and --profile-ramp-out together"},
		{[]string{"--barrier-dir", t.TempDir()}, "--barrier-dir and --barrier-parties together"},
		{[]string{"--barrier-parties", "3"}, "--barrier-dir and --barrier-parties together"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append(append([]string(nil), base...), tc.args...), &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}

// TestFileBarrier: each party adds its file and returns once all are there; one alone waits
// until its context ends.
func TestFileBarrier(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	alone := make(chan error, 1)
	go func() { alone <- fileBarrier(dir, 2, 0)(ctx) }()
	cancel()
	if err := <-alone; !errors.Is(err, context.Canceled) {
		t.Fatalf("a party alone: %v, want context.Canceled", err)
	}
	done := make(chan error, 2)
	for _, first := range []int{0, 100} {
		go func() { done <- fileBarrier(dir, 2, first)(context.Background()) }()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ramped-100")); err != nil {
		t.Errorf("the second party's file: %v", err)
	}
}
