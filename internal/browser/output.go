package browser

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/chromedp/chromedp"
)

// OutputDirName is the folder at the repository root that holds the
// screenshots of the tests, one folder per test; it is not committed.
const OutputDirName = "test-output"

// shots numbers the screenshots of each test folder. The first screenshot
// of a run of a test (a new testing.TB: -count runs a test again in the
// same process) empties its folder of the PNGs of earlier runs, so the
// folder shows one run.
var shots struct {
	mu   sync.Mutex
	runs map[string]*shotRun // folder -> the run that writes there now
}

// shotRun is one test's run writing into a folder.
type shotRun struct {
	tb   testing.TB
	next int // number of the next screenshot
}

// Screenshot saves a PNG of the whole page, not only the window, as
// test-output/<TestName>/<NN>-<name>.png at the repository root, NN
// counting the test's screenshots from 01, and returns its path.
func (b *Browser) Screenshot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, b.timeout)
	defer cancel()
	path, err := b.saveScreenshot(ctx, name)
	if err != nil {
		b.t.Fatalf("browser: screenshot %q: %v", name, err)
	}
	return path
}

// saveScreenshot takes and saves a screenshot; it is Screenshot without
// failing the test, for use on the way to a failure.
func (b *Browser) saveScreenshot(ctx context.Context, name string) (string, error) {
	dir, err := testOutputDir(b.t.Name())
	if err != nil {
		return "", err
	}
	data, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		return "", err
	}
	if _, err := png.DecodeConfig(bytes.NewReader(data)); err != nil {
		return "", fmt.Errorf("browser sent no PNG: %w", err)
	}
	shots.mu.Lock()
	defer shots.mu.Unlock()
	if shots.runs == nil {
		shots.runs = map[string]*shotRun{}
	}
	r := shots.runs[dir]
	if r == nil || r.tb != b.t {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		old, _ := filepath.Glob(filepath.Join(dir, "*.png"))
		for _, f := range old {
			_ = os.Remove(f)
		}
		r = &shotRun{tb: b.t, next: 1}
		shots.runs[dir] = r
	}
	path := filepath.Join(dir, fmt.Sprintf("%02d-%s.png", r.next, safeName(name)))
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return "", err
	}
	r.next++
	return path, nil
}

// testOutputDir is the folder of the test named testName (t.Name(); a
// subtest is a folder inside its parent's).
func testOutputDir(testName string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	parts := []string{root, OutputDirName}
	for p := range strings.SplitSeq(testName, "/") {
		parts = append(parts, safeName(p))
	}
	return filepath.Join(parts...), nil
}

// safeName keeps letters, digits, '.', '_' and '-' of s, and replaces
// anything else, so that a name is one file name and never a path.
func safeName(s string) string {
	if len(s) > 100 {
		s = s[:100]
	}
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	s = string(b)
	if s == "" || strings.Trim(s, ".") == "" {
		s = "_" + s
	}
	return s
}

var (
	rootOnce sync.Once
	root     string
	rootErr  error
)

// repoRoot is the folder holding go.mod, found from the working directory
// (a test runs in its package's folder).
func repoRoot() (string, error) {
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			rootErr = err
			return
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				root = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				rootErr = errors.New("no go.mod above the working directory")
				return
			}
			dir = parent
		}
	})
	return root, rootErr
}
