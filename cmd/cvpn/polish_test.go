package main

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// commandWords returns each entry of commands as its words ("client issue" -> client, issue).
func commandWords() [][]string {
	var out [][]string
	for _, c := range commands {
		out = append(out, strings.Fields(c.name))
	}
	return out
}

// TestHelpEveryCommand: -h, -help and --help on every command and subcommand, and cvpn help
// with its name, print its usage and exit 0; help goes to stdout.
func TestHelpEveryCommand(t *testing.T) {
	for _, words := range commandWords() {
		name := strings.Join(words, " ")
		for _, h := range []string{"-h", "-help", "--help"} {
			code, stdout, stderr := runCmd(t, append(slices.Clone(words), h)...)
			if code != 0 {
				t.Errorf("cvpn %s %s: exit %d, want 0\nstderr:\n%s", name, h, code, stderr)
			}
			if !strings.Contains(strings.ToLower(stdout+stderr), "usage") {
				t.Errorf("cvpn %s %s prints no usage:\n%s%s", name, h, stdout, stderr)
			}
		}
		code, stdout, _ := runCmd(t, append([]string{"help"}, words...)...)
		if code != 0 || !strings.Contains(strings.ToLower(stdout), "usage") {
			t.Errorf("cvpn help %s: exit %d, stdout:\n%s", name, code, stdout)
		}
		if name != "help" && name != "client list" && name != "version" && !strings.Contains(stdout, "-") {
			t.Errorf("cvpn help %s lists no flags:\n%s", name, stdout)
		}
	}
	code, stdout, _ := runCmd(t, "help", "client", "issue")
	if code != 0 || !strings.Contains(stdout, "usage: cvpn client issue NAME") || !strings.Contains(stdout, "-group") {
		t.Errorf("cvpn help client issue: exit %d:\n%s", code, stdout)
	}
	code, stdout, _ = runCmd(t, "client", "--help")
	if code != 0 || !strings.Contains(stdout, "refresh-crl") {
		t.Errorf("cvpn client --help: exit %d:\n%s", code, stdout)
	}
	if code, _, stderr := runCmd(t, "help", "serv"); code != exitInvalid || !strings.Contains(stderr, `did you mean "serve"?`) {
		t.Errorf("cvpn help serv: exit %d, stderr %q", code, stderr)
	}
}

// TestCommandsListed: every command run dispatches is in the commands table (which help and
// the suggestions read), and every command of the table is dispatched. The switch is read
// from main.go's source, so a command registered with a case alone fails here.
func TestCommandsListed(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "main.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cases []string
	ast.Inspect(f, func(n ast.Node) bool {
		if fn, ok := n.(*ast.FuncDecl); ok && fn.Name.Name != "run" {
			return false
		}
		if cc, ok := n.(*ast.CaseClause); ok {
			for _, e := range cc.List {
				if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					s, _ := strconv.Unquote(lit.Value)
					cases = append(cases, s)
				}
			}
		}
		return true
	})
	if len(cases) < 5 {
		t.Fatalf("found only %q as run's cases", cases)
	}
	for _, c := range cases {
		if strings.HasPrefix(c, "-") {
			continue // --version, -h, --help: spellings of listed commands
		}
		if !knownCommand(c) {
			t.Errorf("run dispatches %q but commands does not list it: add a line to commands in main.go", c)
		}
	}
	for _, words := range commandWords() {
		if !slices.Contains(cases, words[0]) {
			t.Errorf("commands lists %q but run does not dispatch it", words[0])
		}
	}
	_, stdout, _ := runCmd(t, "help")
	for _, c := range commands {
		if !strings.Contains(stdout, "  "+c.name+" ") || !strings.Contains(stdout, c.summary) {
			t.Errorf("help lacks %q with its summary:\n%s", c.name, stdout)
		}
	}
}

// TestMistypedCommand: an unknown command names the closest one; a word close to none gets no
// guess.
func TestMistypedCommand(t *testing.T) {
	for typed, want := range map[string]string{
		"serv":                 "serve",
		"sevre":                "serve",
		"valdiate":             "validate",
		"clinet":               "client",
		"exprot-client-config": "export-client-config",
		"export":               "export-client-config",
		"verison":              "version",
	} {
		code, _, stderr := runCmd(t, typed)
		if code != exitInvalid || !strings.Contains(stderr, `unknown command "`+typed+`" (did you mean "`+want+`"?)`) {
			t.Errorf("cvpn %s: exit %d, stderr %q; want a suggestion of %q", typed, code, stderr, want)
		}
	}
	if code, _, stderr := runCmd(t, "frobnicate"); code != exitInvalid || strings.Contains(stderr, "did you mean") {
		t.Errorf("cvpn frobnicate: exit %d, stderr %q; want no suggestion", code, stderr)
	}
	if code, _, stderr := runCmd(t, "client", "isue"); code != exitInvalid || !strings.Contains(stderr, `did you mean "issue"?`) {
		t.Errorf("cvpn client isue: exit %d, stderr %q", code, stderr)
	}
}

// TestVersion: cvpn version and --version print the version line of the build info, with the
// Go version; versionLine shows the VCS revision and a modified tree.
func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		code, stdout, stderr := runCmd(t, arg)
		if code != 0 || !strings.HasPrefix(stdout, "cvpn ") || !strings.Contains(stdout, runtime.Version()) {
			t.Errorf("cvpn %s: exit %d, stdout %q, stderr %q", arg, code, stdout, stderr)
		}
	}
	if code, _, _ := runCmd(t, "version", "extra"); code != exitInvalid {
		t.Errorf("cvpn version extra: exit %d, want %d", code, exitInvalid)
	}
	bi := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/cvpn/cvpn", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-11-29T12:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	if got, want := versionLine(bi), "cvpn v1.2.3 (revision 0123abcd, 2026-11-29T12:00:00Z, modified) go1.26.0"; got != want {
		t.Errorf("versionLine = %q, want %q", got, want)
	}
	if got, want := versionLine(&debug.BuildInfo{GoVersion: "go1.26.0"}), "cvpn (devel) go1.26.0"; got != want {
		t.Errorf("versionLine without VCS = %q, want %q", got, want)
	}
}

// TestValidateFileArgument: cvpn validate FILE works without --config; two different files
// are refused.
func TestValidateFileArgument(t *testing.T) {
	path := newEndpoint(t)
	code, stdout, stderr := runCmd(t, "validate", path)
	if code != 0 || !strings.HasPrefix(stdout, path+": valid\n") {
		t.Errorf("validate FILE: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, stdout, _ := runCmd(t, "validate", "--config", path, path); code != 0 || !strings.HasPrefix(stdout, path+": valid") {
		t.Errorf("validate --config FILE FILE: exit %d, stdout %q", code, stdout)
	}
	other := filepath.Join(t.TempDir(), "other.yaml")
	if code, _, stderr := runCmd(t, "validate", "--config", path, other); code != exitInvalid || !strings.Contains(stderr, "two endpoint files") {
		t.Errorf("validate with two files: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runCmd(t, "validate", path, other); code != exitInvalid || !strings.Contains(stderr, "want one endpoint file") {
		t.Errorf("validate A B: exit %d, stderr %q", code, stderr)
	}
}

// TestConfigDefault: without --config the commands read ./endpoint.yaml, else systemConfig,
// and say where they looked when neither exists; errors name the file read.
func TestConfigDefault(t *testing.T) {
	path := newEndpoint(t)
	t.Chdir(t.TempDir())
	saved := systemConfig
	t.Cleanup(func() { systemConfig = saved })

	systemConfig = filepath.Join(t.TempDir(), "absent.yaml")
	code, _, stderr := runCmd(t, "validate")
	if code != exitInvalid || !strings.Contains(stderr, "neither ./endpoint.yaml nor "+systemConfig+" exists") {
		t.Errorf("validate with no file anywhere: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runCmd(t, "client", "list"); code != exitInvalid || !strings.Contains(stderr, "neither ./endpoint.yaml") {
		t.Errorf("client list with no file anywhere: exit %d, stderr %q", code, stderr)
	}

	systemConfig = path
	if code, stdout, stderr := runCmd(t, "validate"); code != 0 || !strings.HasPrefix(stdout, path+": valid") {
		t.Errorf("validate with the system file: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, stdout, stderr := runCmd(t, "client", "issue", "alice"); code != 0 || !strings.Contains(stdout, "--config "+path) {
		t.Errorf("client issue with the system file: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	// ./endpoint.yaml comes first; a problem in it is reported against it.
	if err := os.WriteFile("endpoint.yaml", []byte("client_cidr_block: 10.2.0.0/22\nbogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCmd(t, "validate"); code != exitInvalid || !strings.Contains(stderr, "endpoint.yaml:2: ") {
		t.Errorf("validate with a broken ./endpoint.yaml: exit %d, stderr %q", code, stderr)
	}
}

// TestCommaLists: --group a,b is two groups and --vpc-cidr a,b two networks, as repeating
// the flag is.
func TestCommaLists(t *testing.T) {
	path := newEndpoint(t, "--vpc-cidr", "10.0.0.0/16,172.16.0.0/12")
	stdout := mustRun(t, "validate", path)
	for _, want := range []string{"route      10.0.0.0/16\n", "route      172.16.0.0/12\n", "authorize  all groups -> 172.16.0.0/12\n"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("--vpc-cidr a,b: summary lacks %q:\n%s", want, stdout)
		}
	}
	stdout = mustRun(t, "client", "issue", "alice", "--group", "dev,ops", "--group", "qa", "--config", path)
	if !strings.Contains(stdout, "groups dev,ops,qa,") {
		t.Errorf("--group dev,ops --group qa: %q", stdout)
	}
	list := mustRun(t, "client", "list", "--config", path)
	if !strings.Contains(list, "alice  dev,ops,qa ") {
		t.Errorf("client list does not show three groups:\n%s", list)
	}
}

// TestSerialsOneFormat: issue, list and revoke print a client's serial the same way: hex.
func TestSerialsOneFormat(t *testing.T) {
	path := newEndpoint(t)
	issued := mustRun(t, "client", "issue", "bob", "--config", path)
	_, rest, ok := strings.Cut(issued, "serial ")
	if !ok {
		t.Fatalf("issue prints no serial: %q", issued)
	}
	serial, _, _ := strings.Cut(rest, ",")
	if _, ok := new(big.Int).SetString(serial, 16); !ok || strings.ToUpper(serial) != serial {
		t.Fatalf("issued serial %q is not upper-case hex", serial)
	}
	if list := mustRun(t, "client", "list", "--config", path); !strings.Contains(list, " "+serial+" ") {
		t.Errorf("client list does not show serial %s:\n%s", serial, list)
	}
	if revoked := mustRun(t, "client", "revoke", "bob", "--config", path); !strings.Contains(revoked, "(serial "+serial+")") {
		t.Errorf("client revoke does not show serial %s: %q", serial, revoked)
	}
}

// TestExportOut: --out writes the profile with mode 0600, refuses an existing file unless
// --force, and --force replaces it with mode 0600 whatever the old file's mode.
func TestExportOut(t *testing.T) {
	path := newEndpoint(t)
	mustRun(t, "client", "issue", "alice", "--config", path)
	want := mustRun(t, "export-client-config", "--config", path, "--client", "alice")
	out := filepath.Join(t.TempDir(), "alice.ovpn")
	code, stdout, stderr := runCmd(t, "export-client-config", "--config", path, "--client", "alice", "--out", out)
	if code != 0 || stdout != "" || !strings.Contains(stderr, "wrote "+out) {
		t.Fatalf("--out: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	checkFile := func(what string) {
		t.Helper()
		fi, err := os.Stat(out)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", what, fi.Mode().Perm())
		}
		if got := readFile(t, out); got != want {
			t.Errorf("%s: the file is not the profile:\n%s", what, got)
		}
	}
	checkFile("new file")

	if err := os.WriteFile(out, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(out, 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCmd(t, "export-client-config", "--config", path, "--client", "alice", "--out", out)
	if code != exitRuntime || !strings.Contains(stderr, "pass --force") || readFile(t, out) != "old\n" {
		t.Errorf("--out over an existing file: exit %d, stderr %q, file %q", code, stderr, readFile(t, out))
	}
	mustRun(t, "export-client-config", "--config", path, "--client", "alice", "--out", out, "--force")
	checkFile("replaced file")
	if matches, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*tmp*")); len(matches) != 0 {
		t.Errorf("temporary files left: %v", matches)
	}
	if code, _, stderr := runCmd(t, "export-client-config", "--config", path, "--force"); code != exitInvalid || !strings.Contains(stderr, "--force applies only with --out") {
		t.Errorf("--force without --out: exit %d, stderr %q", code, stderr)
	}
}

// TestServeLogFormat: --log-format json writes every log line as a JSON object; an unknown
// format is a usage error.
func TestServeLogFormat(t *testing.T) {
	if code, _, stderr := runCmd(t, "serve", "--log-format", "xml", "--config", "x.yaml"); code != exitInvalid || !strings.Contains(stderr, `--log-format: "xml": want text or json`) {
		t.Errorf("--log-format xml: exit %d, stderr %q", code, stderr)
	}
	f := &fakeHost{dev: tuntest.NewChannelTUN().TUN()}
	useFakeHost(t, f)
	free, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := free.LocalAddr().(*net.UDPAddr).Port
	free.Close()
	path := newEndpoint(t, "--transport", "udp/"+strconv.Itoa(port))
	fh, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(fh, "listen_address: 127.0.0.1\nadmin: {socket: admin.sock}\n"); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	var log lockedBuffer
	code := make(chan int, 1)
	go func() { code <- run([]string{"serve", "--log-format", "json", "--config", path}, io.Discard, &log) }()
	waitLog(t, &log, `"msg":"cvpn listening"`)
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-code:
		if c != 0 {
			t.Errorf("serve exited with %d after SIGTERM:\n%s", c, log.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop after SIGTERM")
	}
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) < 3 {
		t.Fatalf("only %d log lines:\n%s", len(lines), log.String())
	}
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec["msg"] == nil || rec["level"] == nil || rec["time"] == nil {
			t.Errorf("log line is not a JSON record with time, level and msg: %q (%v)", l, err)
		}
	}
}

// TestSuggest checks the distance bound: a guess must be close for its length.
func TestSuggest(t *testing.T) {
	known := []string{"serve", "validate", "init"}
	for word, want := range map[string]string{"int": "init", "valid": "validate", "xyz": "", "serveX": "serve", "zzzzzzzz": ""} {
		got := suggest(word, known)
		if want == "" && got != "" || want != "" && got != ` (did you mean "`+want+`"?)` {
			t.Errorf("suggest(%q) = %q, want %q", word, got, want)
		}
	}
}
