// Command cvpn is the cvpn endpoint: a VPN server that stock OpenVPN clients connect to.
// It is the only composition root: it reads flags and the endpoint file and wires the packages.
//
//	cvpn init --dir DIR --remote HOST       create an endpoint directory: PKI and endpoint.yaml
//	cvpn serve --config endpoint.yaml       run the endpoint in the foreground
//	cvpn validate [--config] endpoint.yaml  check an endpoint file and print a summary
//	cvpn client issue|revoke|list|refresh-crl   manage client identities and the CRL
//	cvpn export-client-config [--client NAME]   print an .ovpn profile for the stock client
//	cvpn connections list|terminate         list or halt client connections (admin API)
//	cvpn status                             the running endpoint on one screen (admin API)
//	cvpn version                            print the version, VCS revision and Go version
//	cvpn help [COMMAND]                     print the commands, or one command's flags
//
// Exit status: 0 on success, 2 for a usage error or an invalid endpoint file, 1 for any other
// failure.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cvpn/cvpn/internal/textdist"
)

// Exit statuses.
const (
	exitRuntime = 1 // something failed while doing what was asked
	exitInvalid = 2 // a usage error or an invalid endpoint file
)

// timeNow is the clock of the commands; tests move it.
var timeNow = time.Now

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches args[0] to its command. A new command adds one case here and one line to
// commands (which help and the suggestion for a mistyped command read); TestCommandsListed
// checks that the two agree.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitInvalid
	}
	switch args[0] {
	case "serve":
		return cmdServe(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "init":
		return cmdInit(args[1:], stdout, stderr)
	case "client":
		return cmdClient(args[1:], stdout, stderr)
	case "export-client-config":
		return cmdExport(args[1:], stdout, stderr)
	case "report":
		return cmdReport(args[1:], stdout, stderr)
	case "connections":
		return cmdConnections(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "user":
		return cmdUser(args[1:], stdout, stderr)
	case "cluster":
		return cmdCluster(args[1:], stdout, stderr)
	case "completion":
		return cmdCompletion(args[1:], stdout, stderr)
	case "version", "--version":
		return cmdVersion(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		return cmdHelp(args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "cvpn: unknown command %q%s\n", args[0], suggestCommand(args[0]))
		fmt.Fprintln(stderr, "run 'cvpn help' for the list of commands")
		return exitInvalid
	}
}

// commands lists every command with its synopsis and a one-line summary, in the order help
// prints them. Subcommands are listed under their command's name ("client issue").
var commands = []struct{ name, synopsis, summary string }{
	{"init", "--dir DIR --remote HOST [flags]", "create DIR/endpoint.yaml and DIR/pki (CA, server certificate, tls-crypt key, CRL)"},
	{"serve", "[--config FILE] [--log-format text|json|journal]", "run the endpoint in the foreground (SIGTERM/SIGINT stop, SIGHUP reloads)"},
	{"validate", "[--config] FILE", "check an endpoint file and print a summary; exit status 2 if it is invalid"},
	{"client issue", "NAME [--group G[,G...]]", "issue a client certificate (CN=NAME, groups as OU)"},
	{"client revoke", "NAME", "add a client to the CRL"},
	{"client list", "", "list issued clients: groups, serial, expiry, status"},
	{"client refresh-crl", "[--create FILE]", "re-sign the CRL before it expires (or create one)"},
	{"export-client-config", "[--client NAME] [--protocol udp|tcp] [--out FILE [--force]]", "write an .ovpn profile for the stock OpenVPN 2.6 client"},
	{"connections list", "--config FILE [--username U] [--connection-id ID] [--json]", "list the active connections and those ended in the last 60 minutes (admin API)"},
	{"connections terminate", "--config FILE (--connection-id ID | --username U) [--json]", "halt a connection or a user's connections; the client does not reconnect (admin API)"},
	{"status", "--config FILE", "one screen: endpoint, listeners, sessions, pool, traffic, drops (admin API)"},
	{"user mfa enroll", "NAME [--config FILE] [--force]", "give a directory user a TOTP secret: prints its otpauth URI and QR code"},
	{"user mfa reset", "NAME [--config FILE]", "remove a directory user's TOTP secret"},
	{"report usage", "[--config FILE | --log LOG ...] [--since 24h] [--json]", "per user (and per node of a cluster): sessions, connected time, bytes in and out, last seen, from connection logs"},
	{"cluster push", "--config FILE [--timeout 30s]", "propose an endpoint file to every node of a cluster; stored and applied only if every live node accepts it"},
	{"cluster forget", "NODE --config FILE", "remove a node that will not come back from the cluster's member list (and so from profiles)"},
	{"completion", "bash|zsh|json", "print a shell completion script, or the commands and flags as JSON lines"},
	{"version", "", "print the cvpn version, VCS revision and Go version (also --version)"},
	{"help", "[COMMAND]", "print this list, or one command's flags (also -h on any command)"},
}

func usage(w io.Writer) {
	fmt.Fprint(w, "usage: cvpn <command> [flags]\n\ncommands:\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	tw.Flush()
	fmt.Fprintf(w, `
The commands that read an endpoint file take --config FILE (default ./endpoint.yaml, else
%s). 'cvpn help COMMAND' or 'cvpn COMMAND -h' shows a command's flags.
Exit status: 0 on success, 2 for a usage error or an invalid endpoint file, 1 otherwise.
`, systemConfig)
}

// cmdHelp prints the command list, or the flags of the command named in args (as its -h does,
// but on stdout).
func cmdHelp(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stdout)
		return 0
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		usage(stdout)
		return 0
	}
	if !knownCommand(args[0]) {
		fmt.Fprintf(stderr, "cvpn help: unknown command %q%s\n", args[0], suggestCommand(args[0]))
		return exitInvalid
	}
	return run(append(append([]string{}, args...), "-h"), stdout, stdout)
}

// knownCommand reports whether name is a command (the first word of an entry of commands).
func knownCommand(name string) bool {
	for _, c := range commands {
		if first, _, _ := strings.Cut(c.name, " "); first == name {
			return true
		}
	}
	return false
}

// suggestCommand returns ` (did you mean "x"?)` for the command closest to a mistyped one, or
// "" when none is close.
func suggestCommand(name string) string {
	var names []string
	for _, c := range commands {
		if first, _, _ := strings.Cut(c.name, " "); len(names) == 0 || names[len(names)-1] != first {
			names = append(names, first)
		}
	}
	return suggest(name, names)
}

// suggest returns ` (did you mean "x"?)` for the word of known closest to word: within an
// edit distance of a third of its length (at least 2), or known's word that word begins
// or which begins with word.
func suggest(word string, known []string) string {
	best, bestDist := "", max(2, len(word)/3)+1
	for _, k := range known {
		d := textdist.Distance(word, k)
		if len(word) >= 3 && (strings.HasPrefix(k, word) || strings.HasPrefix(word, k)) {
			d = min(d, 1)
		}
		if d < bestDist {
			best, bestDist = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// newFlagSet is a flag set for the command name ("client issue") whose -h prints its
// synopsis and flags; parse errors go to stderr.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		out := fs.Output()
		for _, c := range commands {
			if c.name == name {
				fmt.Fprintf(out, "usage: cvpn %s %s\n\n%s\n", name, c.synopsis, c.summary)
			}
		}
		fmt.Fprintln(out, "\nflags:")
		fs.PrintDefaults()
	}
	return fs
}

// flagExit is the exit status for an error from parsing flags: 0 for -h (the usage is
// printed), else a usage error (the flag package printed it).
func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return exitInvalid
}

// systemConfig is where --config looks when ./endpoint.yaml is absent; tests move it.
var systemConfig = "/etc/cvpn/endpoint.yaml"

// configUsage is the help of every --config flag.
const configUsage = "endpoint file (default ./endpoint.yaml, else /etc/cvpn/endpoint.yaml)"

// configFileFlag defines --config on fs; its value is resolved by resolveConfig after parsing.
func configFileFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "", configUsage)
}

// resolveConfig returns the endpoint file to read: the one given, else ./endpoint.yaml when it
// exists, else systemConfig when it exists. With neither, the error says where it looked.
func resolveConfig(given string) (string, error) {
	if given != "" {
		return given, nil
	}
	for _, p := range []string{"endpoint.yaml", systemConfig} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no endpoint file: neither ./endpoint.yaml nor %s exists (pass --config FILE): %w", systemConfig, fs.ErrNotExist)
}

// configFlag parses the flags of a command whose only flag is --config and that takes no
// arguments, and returns the endpoint file. It prints what is wrong; the int is the exit
// status when not ok.
func configFlag(name string, args []string, stderr io.Writer) (string, int, bool) {
	fs := newFlagSet(name, stderr)
	path := configFileFlag(fs)
	if err := fs.Parse(args); err != nil {
		return "", flagExit(err), false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cvpn %s: unexpected arguments: %v\n", name, fs.Args())
		return "", exitInvalid, false
	}
	file, err := resolveConfig(*path)
	if err != nil {
		fmt.Fprintf(stderr, "cvpn %s: %v\n", name, err)
		return "", exitInvalid, false
	}
	return file, 0, true
}

// parseInterleaved parses fs from args where flags may come before, between or after the
// positional arguments (cvpn client issue alice --group dev), which flag.FlagSet alone stops at.
// Everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// stringList is a repeatable string flag; each value may also hold several, comma-separated
// (--group dev,ops is --group dev --group ops). Empty items are dropped.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}
