package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint/connlog"
)

// cmdReport runs `cvpn report usage`: per user, sessions, connected time, bytes in and out and
// last seen, from the connection log (package endpoint/connlog) and its rotated files, or from
// the logs --log names: several cluster nodes' logs together, with each user's use broken down
// by node.
func cmdReport(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "usage" {
		switch {
		case len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help"):
			fmt.Fprintln(stdout, reportUsage)
			return 0
		case len(args) == 0:
			fmt.Fprintln(stderr, "cvpn report: missing subcommand (usage)")
		default:
			fmt.Fprintf(stderr, "cvpn report: unknown subcommand %q (want usage)\n", args[0])
		}
		fmt.Fprintln(stderr, reportUsage)
		return exitInvalid
	}
	fs := newFlagSet("report usage", stderr)
	path := configFileFlag(fs)
	since := fs.String("since", "24h", "the window: a duration back from now (24h, 7d, 90m), or a time (2006-01-02 or 2006-01-02 15:04:05, UTC)")
	asJSON := fs.Bool("json", false, "print JSON")
	var logs []string
	fs.Func("log", "read the connection log `LOG` instead of connection_log.file: a file (with its rotated files), a directory of logs or a glob (quoted); repeat it for several cluster nodes' logs", func(s string) error {
		if s == "" {
			return errors.New("empty")
		}
		logs = append(logs, s)
		return nil
	})
	if err := fs.Parse(args[1:]); err != nil {
		return flagExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "cvpn report usage: unexpected arguments:", fs.Args())
		return exitInvalid
	}
	from, err := parseSince(*since, timeNow())
	if err != nil {
		fmt.Fprintln(stderr, "cvpn report usage: --since:", err)
		return exitInvalid
	}
	if *path != "" && len(logs) > 0 {
		fmt.Fprintln(stderr, "cvpn report usage: --config or --log, not both (--log names the logs itself)")
		return exitInvalid
	}
	if len(logs) == 0 {
		file, err := resolveConfig(*path)
		if err != nil {
			fmt.Fprintln(stderr, "cvpn report usage:", err)
			return exitInvalid
		}
		ep, err := config.Load(file)
		if err != nil {
			printConfigError(stderr, err)
			return exitInvalid
		}
		if ep.ConnectionLog.File == "" {
			fmt.Fprintf(stderr, "cvpn report usage: %s has no connection_log.file: nothing to report (set connection_log: {enabled: true, file: ...}, or name logs with --log)\n", file)
			return exitInvalid
		}
		logs = []string{ep.ConnectionLog.File}
	}
	files, err := connlog.LogInputs(logs)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn report usage:", err)
		return exitRuntime
	}
	rep, err := connlog.ReadUsage(files, from)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn report usage:", err)
		return exitRuntime
	}
	if rep.Users == nil {
		rep.Users = []connlog.Usage{}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "cvpn report usage:", err)
			return exitRuntime
		}
		return 0
	}
	printUsage(stdout, rep)
	return 0
}

const reportUsage = "usage: cvpn report usage [--config FILE | --log LOG ...] [--since 24h] [--json]"

// parseSince reads --since: a duration back from now (Go's units, and d for days), or a UTC time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if n, ok := cutDays(s); ok {
		return now.Add(-time.Duration(n) * 24 * time.Hour), nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q is negative", s)
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{connlog.TimeLayout, "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: want a duration (24h, 7d) or a time (2006-01-02 15:04:05, UTC)", s)
}

// cutDays reads "7d".
func cutDays(s string) (int, bool) {
	if len(s) < 2 || s[len(s)-1] != 'd' {
		return 0, false
	}
	var n int
	if _, err := fmt.Sscanf(s[:len(s)-1], "%d", &n); err != nil || n < 0 || fmt.Sprint(n) != s[:len(s)-1] {
		return 0, false
	}
	return n, true
}

// printUsage prints the report as a table.
func printUsage(w io.Writer, rep *connlog.Report) {
	fmt.Fprintf(w, "usage since %s UTC (%d file(s)", rep.Since.UTC().Format(connlog.TimeLayout), len(rep.Files))
	if rep.Skipped > 0 {
		fmt.Fprintf(w, ", %d unreadable line(s) skipped", rep.Skipped)
	}
	fmt.Fprintln(w, ")")
	if len(rep.Users) == 0 {
		fmt.Fprintln(w, "no connections")
		return
	}
	usageTable(w, "USER", rep.Users, func(u connlog.Usage) string { return u.User })
	if len(rep.ByNode) > 0 {
		fmt.Fprintf(w, "\nby node (%s)\n", strings.Join(rep.Nodes, ", "))
		usageTable(w, "USER\tNODE", rep.ByNode, func(u connlog.Usage) string {
			node := u.Node
			if node == "" {
				node = "-" // a record from a single node's log, read with a cluster's
			}
			return u.User + "\t" + node
		})
	}
}

// usageTable prints rows of use under head, the columns that name each row.
func usageTable(w io.Writer, head string, rows []connlog.Usage, name func(connlog.Usage) string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, head+"\tSESSIONS\tACTIVE\tFAILED\tCONNECTED\tBYTES IN\tBYTES OUT\tLAST SEEN (UTC)")
	for _, u := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", name(u), u.Sessions, u.Active, u.Failed,
			time.Duration(u.ConnectedSeconds)*time.Second, byteSize(u.IngressBytes), byteSize(u.EgressBytes),
			u.LastSeen.UTC().Format(connlog.TimeLayout))
	}
	tw.Flush()
}

// byteSize writes n in binary units: 512 B, 1.5 KiB, 3.2 GiB.
func byteSize(n uint64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/1024, "KiB"
	for _, u := range []string{"MiB", "GiB", "TiB", "PiB"} {
		if v < 1024 {
			break
		}
		v, unit = v/1024, u
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}
