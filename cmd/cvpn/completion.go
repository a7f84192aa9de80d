package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// The shell completions and the command reference of cvpn(8) are made from what help prints:
// the commands table and each command's flag set, read back from its -h output. So a new
// command or flag reaches `cvpn help`, the completions and the manual page at once, and none of
// them can list a command or flag that cvpn does not have.

// commandDoc is one command of the commands table with its flags: one line of
// `cvpn completion json`, which cmd/cvpn-docs makes cvpn(8) from.
type commandDoc struct {
	Name     string    `json:"name"` // "client issue"
	Synopsis string    `json:"synopsis"`
	Summary  string    `json:"summary"`
	Flags    []flagDoc `json:"flags,omitempty"`
}

// flagDoc is one flag as the flag package prints it.
type flagDoc struct {
	Name  string `json:"name"`            // without dashes: "config"
	Value string `json:"value,omitempty"` // the value's name ("string", "FILE"); "" for a boolean
	Usage string `json:"usage"`           // the help text, with its "(default ...)"
}

// commandDocs returns every command of the commands table with the flags its -h prints.
func commandDocs() []commandDoc {
	docs := make([]commandDoc, 0, len(commands))
	for _, c := range commands {
		d := commandDoc{Name: c.name, Synopsis: c.synopsis, Summary: c.summary}
		var out bytes.Buffer
		run(append(strings.Fields(c.name), "-h"), &out, &out)
		d.Flags = parseFlagDefaults(out.String())
		docs = append(docs, d)
	}
	return docs
}

// parseFlagDefaults reads the flags out of usage text that ends with "flags:" and the flag
// package's PrintDefaults: a line "  -name value" and an indented line of help for each.
func parseFlagDefaults(usage string) []flagDoc {
	_, defaults, ok := strings.Cut(usage, "\nflags:\n")
	if !ok {
		return nil
	}
	var flags []flagDoc
	sc := bufio.NewScanner(strings.NewReader(defaults))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "  -"):
			// PrintDefaults puts the help of a flag whose name and value are short on the same
			// line, after a tab.
			head, usage, _ := strings.Cut(strings.TrimPrefix(line, "  -"), "\t")
			name, value, _ := strings.Cut(strings.TrimSpace(head), " ")
			flags = append(flags, flagDoc{Name: name, Value: strings.TrimSpace(value), Usage: strings.TrimSpace(usage)})
		case strings.HasPrefix(line, "    \t") && len(flags) > 0:
			f := &flags[len(flags)-1]
			f.Usage = strings.TrimSpace(f.Usage + " " + strings.TrimSpace(line))
		}
	}
	return flags
}

// cmdCompletion prints a completion script for bash or zsh, or the command reference as JSON
// lines.
func cmdCompletion(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("completion", stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: cvpn completion bash|zsh|json

bash  a bash completion script: source <(cvpn completion bash), or install it as
      /usr/share/bash-completion/completions/cvpn (the Debian package does)
zsh   a zsh completion function: install it as _cvpn in a directory of $fpath
      (the Debian package puts it in /usr/share/zsh/vendor-completions)
json  one line per command: name, synopsis, summary and flags (cmd/cvpn-docs makes cvpn(8) from it)
`)
	}
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "cvpn completion: name one of bash, zsh, json")
		return exitInvalid
	}
	docs := commandDocs()
	switch fs.Arg(0) {
	case "bash":
		io.WriteString(stdout, bashCompletion(docs))
	case "zsh":
		io.WriteString(stdout, zshCompletion(docs))
	case "json":
		enc := json.NewEncoder(stdout)
		for _, d := range docs {
			if err := enc.Encode(d); err != nil {
				fmt.Fprintln(stderr, "cvpn completion:", err)
				return exitRuntime
			}
		}
	default:
		fmt.Fprintf(stderr, "cvpn completion: unknown shell %q (want bash, zsh or json)\n", fs.Arg(0))
		return exitInvalid
	}
	return 0
}

// completionTree is the command tree as the scripts walk it: each path ("cvpn", "cvpn client")
// with the words that may follow it and, for a command, its flags.
type completionTree struct {
	paths    []string            // every path, sorted
	children map[string][]string // path -> the next words, in the commands table's order
	summary  map[string]string   // path + " " + child -> the summary shown by zsh
	flags    map[string][]flagDoc
}

func newCompletionTree(docs []commandDoc) completionTree {
	t := completionTree{children: map[string][]string{}, summary: map[string]string{}, flags: map[string][]flagDoc{}}
	seen := map[string]bool{}
	add := func(path, child, summary string) {
		key := path + " " + child
		if !seen[key] {
			seen[key] = true
			t.children[path] = append(t.children[path], child)
		}
		if _, ok := t.summary[key]; !ok {
			t.summary[key] = summary
		}
	}
	for _, d := range docs {
		words := strings.Fields(d.Name)
		path := "cvpn"
		for _, w := range words {
			add(path, w, d.Summary)
			path += " " + w
		}
		t.flags[path] = d.Flags
	}
	// A command with subcommands ("client") is summed up by their names.
	for key := range t.summary {
		if kids := t.children[key]; len(kids) > 0 {
			t.summary[key] = strings.Join(kids, ", ")
		}
	}
	// help takes a command's name.
	for _, top := range t.children["cvpn"] {
		if top != "help" {
			add("cvpn help", top, t.summary["cvpn "+top])
		}
	}
	for p := range t.children {
		t.paths = append(t.paths, p)
	}
	for p := range t.flags {
		if _, ok := t.children[p]; !ok {
			t.paths = append(t.paths, p)
		}
	}
	sort.Strings(t.paths)
	return t
}

// flagWords returns the flags of path as --name, and those that take a value.
func (t completionTree) flagWords(path string) (all, valued []string) {
	for _, f := range t.flags[path] {
		all = append(all, "--"+f.Name)
		if f.Value != "" {
			valued = append(valued, "--"+f.Name)
		}
	}
	return all, valued
}

// bashCompletion is a bash completion script: after the command words typed so far it offers
// the next subcommands, or the command's flags after a '-', or files (a flag's value, a file
// argument).
func bashCompletion(docs []commandDoc) string {
	t := newCompletionTree(docs)
	var b strings.Builder
	b.WriteString(`# bash completion for cvpn, generated by 'cvpn completion bash' from its commands and flags.
# Install as /usr/share/bash-completion/completions/cvpn, or: source <(cvpn completion bash)

_cvpn_children() {
    case "$1" in
`)
	for _, p := range t.paths {
		if kids := t.children[p]; len(kids) > 0 {
			fmt.Fprintf(&b, "    %q) echo %q ;;\n", p, strings.Join(kids, " "))
		}
	}
	b.WriteString(`    esac
}

_cvpn_flags() {
    case "$1" in
`)
	for _, p := range t.paths {
		if all, valued := t.flagWords(p); len(all) > 0 {
			fmt.Fprintf(&b, "    %q) echo %q; echo %q ;;\n", p, strings.Join(all, " "), strings.Join(valued, " "))
		}
	}
	b.WriteString(`    esac
}

_cvpn() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" cmdpath="cvpn" i w flags valued kids
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        { read -r flags; read -r valued; } < <(_cvpn_flags "$cmdpath"; echo; echo)
        if [[ $prev == -* && " $valued " == *" ${prev%%=*} "* && $prev != *=* ]]; then
            prev=""  # w is the value of the flag before it
            continue
        fi
        prev="$w"
        [[ $w == -* ]] && continue
        kids="$(_cvpn_children "$cmdpath")"
        [[ " $kids " == *" $w "* ]] && cmdpath="$cmdpath $w"
    done
    { read -r flags; read -r valued; } < <(_cvpn_flags "$cmdpath"; echo; echo)
    if [[ $prev == -* && $prev != *=* && " $valued " == *" $prev "* ]]; then
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$cur"))
        return 0
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
        return 0
    fi
    kids="$(_cvpn_children "$cmdpath")"
    if [[ -n $kids ]]; then
        COMPREPLY=($(compgen -W "$kids" -- "$cur"))
        return 0
    fi
    compopt -o filenames 2>/dev/null
    COMPREPLY=($(compgen -f -- "$cur"))
}

complete -F _cvpn cvpn
`)
	return b.String()
}

// zshQuote quotes s for zsh between single quotes.
func zshQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// zshDescribe escapes the colons of a name for _describe, which splits name:description at the
// first unescaped colon.
func zshDescribe(name, desc string) string {
	return zshQuote(strings.ReplaceAll(name, ":", `\:`) + ":" + desc)
}

// zshCompletion is a zsh completion function (#compdef cvpn) doing what bashCompletion does,
// with each subcommand's and flag's summary shown beside it.
func zshCompletion(docs []commandDoc) string {
	t := newCompletionTree(docs)
	var b strings.Builder
	b.WriteString(`#compdef cvpn
# zsh completion for cvpn, generated by 'cvpn completion zsh' from its commands and flags.
# Install as _cvpn in a directory of $fpath (Debian: /usr/share/zsh/vendor-completions).

_cvpn_children() {
    case "$1" in
`)
	for _, p := range t.paths {
		kids := t.children[p]
		if len(kids) == 0 {
			continue
		}
		items := make([]string, len(kids))
		for i, k := range kids {
			items[i] = zshDescribe(k, t.summary[p+" "+k])
		}
		fmt.Fprintf(&b, "    %s) reply=(%s) ;;\n", zshQuote(p), strings.Join(items, " "))
	}
	b.WriteString(`    *) reply=() ;;
    esac
}

_cvpn_flags() {
    case "$1" in
`)
	for _, p := range t.paths {
		fl := t.flags[p]
		if len(fl) == 0 {
			continue
		}
		items := make([]string, len(fl))
		var valued []string
		for i, f := range fl {
			items[i] = zshDescribe("--"+f.Name, f.Usage)
			if f.Value != "" {
				valued = append(valued, "--"+f.Name)
			}
		}
		fmt.Fprintf(&b, "    %s) reply=(%s); valued=(%s) ;;\n", zshQuote(p), strings.Join(items, " "), strings.Join(valued, " "))
	}
	b.WriteString(`    *) reply=(); valued=() ;;
    esac
}

_cvpn() {
    local cmdpath="cvpn" prev="" w i
    local -a reply valued kids
    for ((i = 2; i < CURRENT; i++)); do
        w="${words[i]}"
        _cvpn_flags "$cmdpath"
        if [[ $prev == -* && $prev != *=* && ${valued[(Ie)$prev]} -gt 0 ]]; then
            prev=""
            continue
        fi
        prev="$w"
        [[ $w == -* ]] && continue
        _cvpn_children "$cmdpath"
        kids=("${reply[@]%%:*}")
        (( ${kids[(Ie)$w]} )) && cmdpath="$cmdpath $w"
    done
    _cvpn_flags "$cmdpath"
    if [[ $prev == -* && $prev != *=* && ${valued[(Ie)$prev]} -gt 0 ]]; then
        _files
        return
    fi
    if [[ ${words[CURRENT]} == -* ]]; then
        _describe -t flags 'flag' reply
        return
    fi
    _cvpn_children "$cmdpath"
    if (( ${#reply} )); then
        _describe -t commands 'command' reply
        return
    fi
    _files
}

if [[ "$funcstack[1]" == _cvpn ]]; then
    _cvpn "$@"
else
    compdef _cvpn cvpn
fi
`)
	return b.String()
}
