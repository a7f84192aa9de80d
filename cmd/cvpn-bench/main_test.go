package main

import (
	"bytes"
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
	} {
		var stdout, stderr bytes.Buffer
		code := run(append(append([]string(nil), base...), tc.args...), &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}
