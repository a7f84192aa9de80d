// Command cvpn-docs makes cvpn's manual pages from the sources its other documentation comes
// from, so that the three cannot disagree:
//
//   - cvpn(8), the commands, from `cvpn completion json`: the commands table that `cvpn help`
//     prints and each command's flags as its -h prints them;
//   - cvpn-endpoint(5), the endpoint file, from the README's configuration reference (the
//     section "The endpoint file": its introduction, the table of keys and what a reload does).
//
// Usage:
//
//	cvpn-docs man --cvpn bin/cvpn [--readme README.md] [--out DIR] [--version V] [--date YYYY-MM-DD]
//
// writes DIR/cvpn.8 and DIR/cvpn-endpoint.5 (troff, man macros). The date defaults to
// SOURCE_DATE_EPOCH's, else today's, so that a package build can be reproducible.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "man" {
		fmt.Fprintln(stderr, "usage: cvpn-docs man --cvpn BIN [--readme README.md] [--out DIR] [--version V] [--date YYYY-MM-DD]")
		return 2
	}
	fs := flag.NewFlagSet("cvpn-docs man", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("cvpn", "bin/cvpn", "the cvpn binary whose commands are documented")
	readme := fs.String("readme", "README.md", "the README whose section \"The endpoint file\" is documented")
	out := fs.String("out", ".", "directory to write cvpn.8 and cvpn-endpoint.5 to")
	version := fs.String("version", "", "the version named in the pages' footers")
	date := fs.String("date", defaultDate(), "the date named in the pages' footers")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := writePages(*bin, *readme, *out, pageInfo{Version: *version, Date: *date}); err != nil {
		fmt.Fprintln(stderr, "cvpn-docs:", err)
		return 1
	}
	return 0
}

// defaultDate is SOURCE_DATE_EPOCH's date (reproducible builds), else today's, in UTC.
func defaultDate() string {
	t := time.Now()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if sec, err := strconv.ParseInt(s, 10, 64); err == nil {
			t = time.Unix(sec, 0)
		}
	}
	return t.UTC().Format("2006-01-02")
}

// pageInfo is what the pages' title lines name besides the page.
type pageInfo struct {
	Version string
	Date    string
}

func writePages(bin, readme, out string, info pageInfo) error {
	cmds, err := readCommands(bin)
	if err != nil {
		return err
	}
	text, err := os.ReadFile(readme)
	if err != nil {
		return err
	}
	ref, err := parseEndpointReference(string(text))
	if err != nil {
		return fmt.Errorf("%s: %w", readme, err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "cvpn.8"), []byte(commandPage(cmds, info)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "cvpn-endpoint.5"), []byte(endpointPage(ref, info)), 0o644)
}

// command is one line of `cvpn completion json`.
type command struct {
	Name     string `json:"name"`
	Synopsis string `json:"synopsis"`
	Summary  string `json:"summary"`
	Flags    []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
		Usage string `json:"usage"`
	} `json:"flags"`
}

// readCommands runs `bin completion json` and decodes its lines.
func readCommands(bin string) ([]command, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "completion", "json")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s completion json: %w: %s", bin, err, strings.TrimSpace(stderr.String()))
	}
	var cmds []command
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var c command
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return nil, fmt.Errorf("%s completion json: line %d: %w", bin, len(cmds)+1, err)
		}
		cmds = append(cmds, c)
	}
	if len(cmds) == 0 {
		return nil, fmt.Errorf("%s completion json: no commands", bin)
	}
	return cmds, sc.Err()
}
