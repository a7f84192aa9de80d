package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// cmdVersion prints the version of this binary as its build info records it: the module
// version ("(devel)" for a build from a work tree), the VCS revision with its time and whether
// the tree was modified, and the Go version.
func cmdVersion(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", stderr)
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "cvpn version: unexpected arguments:", fs.Args())
		return exitInvalid
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Fprintln(stderr, "cvpn version: this binary carries no build information")
		return exitRuntime
	}
	fmt.Fprintln(stdout, versionLine(bi))
	return 0
}

// versionLine formats build info as "cvpn VERSION (revision REV, TIME[, modified]) GOVERSION".
func versionLine(bi *debug.BuildInfo) string {
	version := bi.Main.Version
	if version == "" {
		version = "(devel)"
	}
	var rev, at string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	var vcs []string
	if rev != "" {
		vcs = append(vcs, "revision "+rev)
	}
	if at != "" {
		vcs = append(vcs, at)
	}
	if modified {
		vcs = append(vcs, "modified")
	}
	line := "cvpn " + version
	if len(vcs) > 0 {
		line += " (" + strings.Join(vcs, ", ") + ")"
	}
	return line + " " + bi.GoVersion
}
