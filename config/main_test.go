package config

import (
	"fmt"
	"os"
	"testing"
)

// TestMain makes testdata/bind-password unreadable to other users, as the
// rule for bind_password_file demands: git records no read bits, so a
// checkout leaves the file 0644.
func TestMain(m *testing.M) {
	if err := os.Chmod("testdata/bind-password", 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "config tests:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
