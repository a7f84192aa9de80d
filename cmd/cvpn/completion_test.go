package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestCompletionJSON checks that every command of the table is listed with the flags its -h
// prints.
func TestCompletionJSON(t *testing.T) {
	code, stdout, stderr := runCmd(t, "completion", "json")
	if code != 0 {
		t.Fatalf("completion json: exit %d: %s", code, stderr)
	}
	var docs []commandDoc
	sc := bufio.NewScanner(strings.NewReader(stdout))
	for sc.Scan() {
		var d commandDoc
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		docs = append(docs, d)
	}
	if len(docs) != len(commands) {
		t.Fatalf("%d commands in the JSON, %d in the table", len(docs), len(commands))
	}
	flagsOf := map[string][]flagDoc{}
	for _, d := range docs {
		flagsOf[d.Name] = d.Flags
	}
	has := func(cmd, flag string, valued bool) {
		t.Helper()
		for _, f := range flagsOf[cmd] {
			if f.Name == flag {
				if (f.Value != "") != valued || f.Usage == "" {
					t.Errorf("%s --%s: %+v", cmd, flag, f)
				}
				return
			}
		}
		t.Errorf("%s: no flag %q in %+v", cmd, flag, flagsOf[cmd])
	}
	has("serve", "config", true)
	has("client issue", "group", true)
	has("export-client-config", "force", false)
	has("user mfa enroll", "force", false)
	if len(flagsOf["help"]) != 0 || len(flagsOf["version"]) != 0 {
		t.Errorf("help or version has flags: %+v %+v", flagsOf["help"], flagsOf["version"])
	}
}

func TestParseFlagDefaults(t *testing.T) {
	got := parseFlagDefaults("usage: x\n\nflags:\n  -config string\n    \tendpoint file\n  -f\tforce it\n  -json\n    \tJSON output (default true)\n")
	want := []flagDoc{{"config", "string", "endpoint file"}, {"f", "", "force it"}, {"json", "", "JSON output (default true)"}}
	if !slices.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if got := parseFlagDefaults("usage: cvpn help\n"); got != nil {
		t.Errorf("no flags section: got %+v", got)
	}
}

func TestCompletionUsage(t *testing.T) {
	if code, _, stderr := runCmd(t, "completion", "fish"); code != exitInvalid || !strings.Contains(stderr, `unknown shell "fish"`) {
		t.Errorf("fish: exit %d, %q", code, stderr)
	}
	if code, _, stderr := runCmd(t, "completion"); code != exitInvalid || !strings.Contains(stderr, "bash, zsh, json") {
		t.Errorf("no shell: exit %d, %q", code, stderr)
	}
}

// writeScript writes cvpn completion SHELL to a file and returns its path.
func writeScript(t *testing.T, shell string) string {
	t.Helper()
	code, stdout, stderr := runCmd(t, "completion", shell)
	if code != 0 {
		t.Fatalf("completion %s: exit %d: %s", shell, code, stderr)
	}
	file := filepath.Join(t.TempDir(), "cvpn."+shell)
	if err := os.WriteFile(file, []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestBashCompletion runs the bash script as bash-completion would: COMP_WORDS and COMP_CWORD
// set, _cvpn called, COMPREPLY read.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash is needed to test the bash completion:", err)
	}
	file := writeScript(t, "bash")
	if out, err := exec.Command(bash, "-n", file).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v: %s", err, out)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "endpoint.yaml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		line string // the words; the last is completed
		want string
	}{
		{"cvpn cli", "client"},
		{"cvpn clu", "cluster"},
		{"cvpn cluster ", "push forget"},
		{"cvpn co", strings.Join(withPrefix(newCompletionTree(commandDocs()).children["cvpn"], "co"), " ")},
		{"cvpn client ", "issue revoke list refresh-crl"},
		{"cvpn client issue alice --g", "--group"},
		{"cvpn --config x.yaml cli", "client"},
		{"cvpn user mfa e", "enroll"},
		{"cvpn help exp", "export-client-config"},
		{"cvpn serve --config end", "endpoint.yaml"},        // a flag's value is a file
		{"cvpn client issue --config end", "endpoint.yaml"}, // not a subcommand
		{"cvpn export-client-config --f", "--force"},
	} {
		words := strings.Split(tc.line, " ")
		script := "source " + file + "; COMP_WORDS=(" + strings.Join(quoteAll(words), " ") + "); COMP_CWORD=" +
			strconv.Itoa(len(words)-1) + "; _cvpn; echo \"${COMPREPLY[*]}\""
		cmd := exec.Command(bash, "-c", script)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v: %s", tc.line, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("%q completes to %q, want %q", tc.line, got, tc.want)
		}
	}
}

// TestZshCompletion runs the zsh function with the completion system's builtins replaced by
// functions that print what they were given.
func TestZshCompletion(t *testing.T) {
	zsh, err := exec.LookPath("zsh")
	if err != nil {
		t.Fatal("zsh is needed to test the zsh completion (make deps installs it):", err)
	}
	file := writeScript(t, "zsh")
	if out, err := exec.Command(zsh, "-n", file).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v: %s", err, out)
	}
	tree := newCompletionTree(commandDocs())
	issueFlags, _ := tree.flagWords("cvpn client issue")
	if !slices.Contains(issueFlags, "--group") || !slices.Contains(tree.children["cvpn"], "serve") {
		t.Fatalf("the tree lacks client issue --group or serve: %v %v", issueFlags, tree.children["cvpn"])
	}
	for _, tc := range []struct {
		line string
		want string
	}{
		{"cvpn cl", "commands: " + strings.Join(tree.children["cvpn"], " ")},
		{"cvpn client ", "commands: issue revoke list refresh-crl"},
		{"cvpn client issue alice --", "flags: " + strings.Join(issueFlags, " ")},
		{"cvpn serve --config ", "files"},
		{"cvpn user mfa ", "commands: enroll reset"},
	} {
		words := strings.Split(tc.line, " ")
		script := `compdef() { :; }
_describe() { local -a items; items=("${(@P)4}"); echo "$2: ${items[@]%%:*}"; }
_files() { echo files; }
source ` + file + `
words=(` + strings.Join(quoteAll(words), " ") + `); CURRENT=` + strconv.Itoa(len(words)) + `
_cvpn`
		out, err := exec.Command(zsh, "-f", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v: %s", tc.line, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("%q completes to %q, want %q", tc.line, got, tc.want)
		}
	}
}

// withPrefix returns the words that begin with prefix, in order.
func withPrefix(words []string, prefix string) []string {
	var out []string
	for _, w := range words {
		if strings.HasPrefix(w, prefix) {
			out = append(out, w)
		}
	}
	return out
}

func quoteAll(words []string) []string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = "'" + w + "'"
	}
	return q
}
