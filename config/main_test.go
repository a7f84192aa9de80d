package config

import (
	"fmt"
	"os"
	"testing"
)

// TestMain makes testdata/bind-password and testdata/oidc-client-secret
// unreadable to other users, as the rule for secret files demands: git
// records no read bits, so a checkout leaves the files 0644.
func TestMain(m *testing.M) {
	for _, f := range []string{"testdata/bind-password", "testdata/oidc-client-secret"} {
		if err := os.Chmod(f, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, "config tests:", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}
