package browser

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestOutputPaths: screenshot folders follow the test's name, a subtest in
// its parent's folder, and no name escapes test-output.
func TestOutputPaths(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(root, OutputDirName)
	for name, want := range map[string]string{
		"TestPortal":             "TestPortal",
		"TestPortal/sign_in":     "TestPortal/sign_in",
		"TestX/../../etc":        "TestX/_../_../etc",
		"TestX/..":               "TestX/_..",
		"TestX/a b;c":            "TestX/a_b_c",
		"TestX/" + "\x00/passwd": "TestX/_/passwd",
	} {
		dir, err := testOutputDir(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimPrefix(dir, base+string(filepath.Separator)); got != filepath.FromSlash(want) {
			t.Errorf("folder of %q is %s, want %s under %s", name, dir, want, base)
		}
		if !strings.HasPrefix(filepath.Clean(dir), base+string(filepath.Separator)) {
			t.Errorf("folder of %q, %s, is outside %s", name, dir, base)
		}
	}
	for in, want := range map[string]string{"sign-in": "sign-in", "../x": ".._x", "": "_", "..": "_..", "a/b": "a_b"} {
		if got := safeName(in); got != want {
			t.Errorf("safeName(%q) = %q, want %q", in, got, want)
		}
	}
}
