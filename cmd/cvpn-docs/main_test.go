package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// buildCvpn builds cmd/cvpn into a temporary directory.
func buildCvpn(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cvpn")
	cmd := exec.Command("go", "build", "-o", bin, "../cvpn")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ../cvpn: %v\n%s", err, out)
	}
	return bin
}

// render formats a page as man(1) does for a terminal, without overstriking, with each run of
// white space (a line break too) one space.
func render(t *testing.T, page string) string {
	t.Helper()
	cmd := exec.Command("man", "-l", "-Tutf8", page)
	cmd.Env = append(os.Environ(), "MANWIDTH=200", "MAN_KEEP_FORMATTING=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("man -l %s: %v", page, err)
	}
	// man writes bold and underline as overstrikes when not on a terminal.
	text := regexp.MustCompile(".\b").ReplaceAllString(string(out), "")
	return strings.Join(strings.Fields(text), " ")
}

// TestPagesRender makes both pages from the real binary and README, checks that groff has no
// warning about them, and that man renders every command, flag and key.
func TestPagesRender(t *testing.T) {
	bin := buildCvpn(t)
	out := t.TempDir()
	if err := writePages(bin, "../../README.md", out, pageInfo{Version: "1.2.3", Date: "2026-11-29"}); err != nil {
		t.Fatal(err)
	}
	for _, page := range []string{"cvpn.8", "cvpn-endpoint.5"} {
		groff := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", filepath.Join(out, page))
		msg, err := groff.CombinedOutput()
		if err != nil || len(msg) > 0 {
			t.Errorf("groff %s: %v: %s", page, err, msg)
		}
	}

	man8 := render(t, filepath.Join(out, "cvpn.8"))
	cmds, err := readCommands(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cmds {
		if !strings.Contains(man8, "cvpn "+c.Name) {
			t.Errorf("cvpn(8) lacks the command %q", c.Name)
		}
		for _, f := range c.Flags {
			if !strings.Contains(man8, "--"+f.Name) {
				t.Errorf("cvpn(8) lacks %s --%s", c.Name, f.Name)
			}
		}
	}
	for _, want := range []string{"CVPN(8)", "cvpn 1.2.3", "2026-11-29", "client issue", "SIGHUP", "EXIT STATUS"} {
		if !strings.Contains(man8, want) {
			t.Errorf("cvpn(8) lacks %q", want)
		}
	}

	man5 := render(t, filepath.Join(out, "cvpn-endpoint.5"))
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	ref, err := parseEndpointReference(string(readme))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range ref.Keys {
		key := strings.Trim(strings.Fields(k.Key)[0], "`,")
		if !strings.Contains(man5, key) {
			t.Errorf("cvpn-endpoint(5) lacks the key %q", key)
		}
	}
	for _, want := range []string{"CVPN-ENDPOINT(5)", "client_cidr_block", "authorization_rules[]", "RELOAD", "SIGHUP re-reads the file"} {
		if !strings.Contains(man5, want) {
			t.Errorf("cvpn-endpoint(5) lacks %q", want)
		}
	}
}

func TestParseEndpointReference(t *testing.T) {
	md := "# x\n\n## The endpoint file\n\nIntro `a`\nmore.\n\n| key | default | AWS | meaning |\n|---|---|---|---|\n" +
		"| `k` | 1 | — | a \\| b |\n| `l`, `.m` | none | `L` | text |\n\nAfter one.\n\nAfter two.\n\n## Next\n\n| x | y |\n"
	ref, err := parseEndpointReference(md)
	if err != nil {
		t.Fatal(err)
	}
	if len(ref.Intro) != 1 || ref.Intro[0] != "Intro `a` more." {
		t.Errorf("intro %q", ref.Intro)
	}
	if len(ref.Keys) != 2 || ref.Keys[0] != (keyRow{"`k`", "1", "—", "a | b"}) || ref.Keys[1].Key != "`l`, `.m`" {
		t.Errorf("keys %q", ref.Keys)
	}
	if len(ref.Reload) != 2 || ref.Reload[1] != "After two." {
		t.Errorf("reload %q", ref.Reload)
	}
	if _, err := parseEndpointReference("# x\n"); err == nil {
		t.Error("a README without the section: no error")
	}
	if _, err := parseEndpointReference("\n## The endpoint file\n\nno table\n"); err == nil {
		t.Error("a section without a table: no error")
	}
	if _, err := parseEndpointReference("\n## The endpoint file\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"); err == nil {
		t.Error("a row of 2 cells: no error")
	}
}

func TestInline(t *testing.T) {
	for in, want := range map[string]string{
		"see [the log](#connection-log) now": "see the log now",
		"`--config` a-b":                     `\fB\-\-config\fR a-b`,
		`back\slash`:                         `back\eslash`,
		".starts with a dot":                 `\&.starts with a dot`,
		"/12–/22 → x":                        `/12\(en/22 \[u2192] x`,
		"odd ` quote":                        "odd ` quote",
	} {
		if got := inline(in); got != want {
			t.Errorf("inline(%q) = %q, want %q", in, got, want)
		}
	}
}
