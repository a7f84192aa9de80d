package connlog

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Usage is one user's use of the endpoint in a report's window: on every node (Report.Users),
// or on one (Report.ByNode).
type Usage struct {
	User string `json:"user"`
	// Node is the cluster node the use was on, in Report.ByNode; "" for a single node's
	// records and in Report.Users, which adds up every node's.
	Node string `json:"node,omitempty"`
	// Sessions counts the user's connections active in the window; Active those with no final
	// record yet (live, or cut off by a crash).
	Sessions int `json:"sessions"`
	Active   int `json:"active"`
	// Failed counts the user's refused attempts in the window.
	Failed int `json:"failed_attempts"`
	// ConnectedSeconds adds up the sessions' durations (to their end, or their last update).
	ConnectedSeconds int64 `json:"connected_seconds"`
	// IngressBytes are bytes from the user's clients, EgressBytes bytes to them.
	IngressBytes uint64 `json:"ingress_bytes"`
	EgressBytes  uint64 `json:"egress_bytes"`
	// LastSeen is the latest time a record shows the user.
	LastSeen time.Time `json:"last_seen"`
}

// Report is what a usage report read.
type Report struct {
	Since time.Time `json:"since"`
	Users []Usage   `json:"users"`
	// Nodes are the cluster node names the records carry, sorted; ByNode breaks Users down by
	// node (sorted by user, then node; records without a node name under Node ""). Both are
	// empty when no record names a node (a single node's logs).
	Nodes  []string `json:"nodes,omitempty"`
	ByNode []Usage  `json:"by_node,omitempty"`
	// Files are the files read; Skipped counts the lines that did not parse (a line cut short
	// by a crash, say).
	Files   []string `json:"files"`
	Skipped int      `json:"skipped_lines"`
}

// LogFiles returns the log at path and the files logrotate made of it beside it (path.1,
// path.2.gz is skipped, path-20260101), oldest first by modification time. A missing path
// with no rotated files is an error.
func LogFiles(path string) ([]string, error) {
	var matches []string
	for _, sep := range []string{".", "-"} {
		m, err := filepath.Glob(globEscape(path) + sep + "*")
		if err != nil {
			return nil, err
		}
		matches = append(matches, m...)
	}
	type file struct {
		name string
		mod  time.Time
	}
	var files []file
	for _, m := range append(matches, path) {
		if compressed(m) {
			continue
		}
		if st, err := os.Stat(m); err == nil && st.Mode().IsRegular() {
			files = append(files, file{m, st.ModTime()})
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("connlog: no connection log at %s: %w", path, os.ErrNotExist)
	}
	slices.SortStableFunc(files, func(a, b file) int { return a.mod.Compare(b.mod) })
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = f.name
	}
	return out, nil
}

func globEscape(s string) string {
	r := strings.NewReplacer(`*`, `\*`, `?`, `\?`, `[`, `\[`, `\`, `\\`)
	return r.Replace(s)
}

// LogInputs turns what a user names as connection logs into files to read, in order, each
// once: a directory gives its regular files (not those compressed, not its subdirectories'),
// a glob pattern its matches, and a file itself and the files logrotate made of it (LogFiles).
// A name that gives no file is an error.
func LogInputs(names []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(f string) {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	for _, name := range names {
		var files []string
		st, err := os.Stat(name)
		switch {
		case err == nil && st.IsDir():
			entries, err := os.ReadDir(name)
			if err != nil {
				return nil, fmt.Errorf("connlog: %w", err)
			}
			for _, e := range entries {
				if p := filepath.Join(name, e.Name()); e.Type().IsRegular() && !compressed(p) {
					files = append(files, p)
				}
			}
		case err != nil && strings.ContainsAny(name, "*?["):
			matches, err := filepath.Glob(name)
			if err != nil {
				return nil, fmt.Errorf("connlog: %s: %w", name, err)
			}
			for _, m := range matches {
				if st, err := os.Stat(m); err == nil && st.Mode().IsRegular() && !compressed(m) {
					files = append(files, m)
				}
			}
		default:
			if files, err = LogFiles(name); err != nil {
				return nil, err
			}
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("connlog: no connection log at %s: %w", name, os.ErrNotExist)
		}
		for _, f := range files {
			add(f)
		}
	}
	return out, nil
}

// compressed reports whether a rotated log is compressed, which the report does not read.
func compressed(name string) bool {
	for _, ext := range []string{".gz", ".bz2", ".xz", ".zst"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// connKey names a connection across nodes: each node's connection ids are its own.
type connKey struct{ node, id string }

// userKey is a row of Report.ByNode.
type userKey struct{ user, node string }

// ReadUsage reads the connection log files (of one node, or several nodes' together) and sums
// each user's use since the given time: a connection (a node's connection-id) counts once, as
// its latest record (by connection-last-update-time, a final one winning a tie) has it, when
// that record is at or after since; a refused attempt counts when it is. Lines that do not
// parse are skipped and counted.
func ReadUsage(files []string, since time.Time) (*Report, error) {
	rep := &Report{Since: since, Files: files}
	latest := map[connKey]Record{}
	var failed []Record
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("connlog: %w", err)
		}
		err = scanRecords(f, func(r Record, ok bool) {
			switch {
			case !ok:
				rep.Skipped++
			case r.AttemptStatus == StatusFailed:
				failed = append(failed, r)
			case r.AttemptStatus == StatusSuccess:
				k := connKey{r.Node, r.ConnectionID}
				if old, seen := latest[k]; !seen || newer(r, old) {
					latest[k] = r
				}
			}
		})
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("connlog: %s: %w", name, err)
		}
	}
	// Each record adds to its user's row and to its user's row on its node.
	users, byNode := map[string]*Usage{}, map[userKey]*Usage{}
	nodes := map[string]bool{}
	rows := func(r Record) [2]*Usage {
		u := users[r.User()]
		if u == nil {
			u = &Usage{User: r.User()}
			users[r.User()] = u
		}
		k := userKey{r.User(), r.Node}
		n := byNode[k]
		if n == nil {
			n = &Usage{User: r.User(), Node: r.Node}
			byNode[k] = n
		}
		if r.Node != "" {
			nodes[r.Node] = true
		}
		return [2]*Usage{u, n}
	}
	for _, r := range latest {
		t, err := ParseTime(r.LastUpdateTime)
		if err != nil || t.Before(since) {
			continue
		}
		d, _ := strconv.ParseInt(r.DurationSeconds, 10, 64)
		in, _ := strconv.ParseUint(r.IngressBytes, 10, 64)
		out, _ := strconv.ParseUint(r.EgressBytes, 10, 64)
		for _, u := range rows(r) {
			u.Sessions++
			if !r.Final() {
				u.Active++
			}
			u.ConnectedSeconds += d
			u.IngressBytes += in
			u.EgressBytes += out
			if t.After(u.LastSeen) {
				u.LastSeen = t
			}
		}
	}
	for _, r := range failed {
		t, err := ParseTime(r.LastUpdateTime)
		if err != nil || t.Before(since) {
			continue
		}
		for _, u := range rows(r) {
			u.Failed++
			if t.After(u.LastSeen) {
				u.LastSeen = t
			}
		}
	}
	for _, u := range users {
		rep.Users = append(rep.Users, *u)
	}
	slices.SortFunc(rep.Users, func(a, b Usage) int { return cmp.Compare(a.User, b.User) })
	if len(nodes) > 0 {
		for n := range nodes {
			rep.Nodes = append(rep.Nodes, n)
		}
		slices.Sort(rep.Nodes)
		for _, u := range byNode {
			rep.ByNode = append(rep.ByNode, *u)
		}
		slices.SortFunc(rep.ByNode, func(a, b Usage) int { return cmp.Or(cmp.Compare(a.User, b.User), cmp.Compare(a.Node, b.Node)) })
	}
	return rep, nil
}

// newer reports whether r is a later state of its connection than old.
func newer(r, old Record) bool {
	if r.LastUpdateTime != old.LastUpdateTime {
		return r.LastUpdateTime > old.LastUpdateTime // the layout sorts as text
	}
	return r.Final() && !old.Final()
}

// scanRecords calls fn with each line of r as a record; ok is false for a line that is not one.
func scanRecords(r io.Reader, fn func(rec Record, ok bool)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			trimmed := strings.TrimSpace(string(line))
			if trimmed != "" {
				var rec Record
				ok := json.Unmarshal([]byte(trimmed), &rec) == nil && rec.ConnectionID != "" && rec.LastUpdateTime != ""
				fn(rec, ok)
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// ReadRecords reads every record of r; lines that do not parse are counted in skipped.
func ReadRecords(r io.Reader) (recs []Record, skipped int, err error) {
	err = scanRecords(r, func(rec Record, ok bool) {
		if ok {
			recs = append(recs, rec)
		} else {
			skipped++
		}
	})
	return recs, skipped, err
}
