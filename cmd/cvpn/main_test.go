package main

import (
	"bytes"
	"strings"
	"testing"
)

// runCmd runs the command line args as cvpn would and returns its exit status and output.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestUsage(t *testing.T) {
	if code, _, stderr := runCmd(t); code != exitInvalid || !strings.Contains(stderr, "usage: cvpn") {
		t.Errorf("no arguments: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runCmd(t, "frobnicate"); code != exitInvalid || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, stderr %q", code, stderr)
	}
	code, stdout, _ := runCmd(t, "help")
	if code != 0 {
		t.Errorf("help: exit %d", code)
	}
	for _, cmd := range []string{"init", "serve", "validate", "client issue", "client revoke", "client list", "client refresh-crl", "export-client-config"} {
		if !strings.Contains(stdout, "  "+cmd) {
			t.Errorf("usage does not list %q:\n%s", cmd, stdout)
		}
	}
	if code, _, stderr := runCmd(t, "client"); code != exitInvalid || !strings.Contains(stderr, "missing subcommand") {
		t.Errorf("client without subcommand: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runCmd(t, "client", "frob"); code != exitInvalid || !strings.Contains(stderr, `unknown subcommand "frob"`) {
		t.Errorf("client frob: exit %d, stderr %q", code, stderr)
	}
}
