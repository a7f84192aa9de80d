package config

import (
	"fmt"
	"strings"
)

// ValidationError is one problem with an endpoint file. Parse and Load
// return every problem they find, joined with errors.Join, so a user fixes
// them all in one pass; use errors.As or the Unwrap() []error method of the
// joined error to get at each one.
type ValidationError struct {
	// File is the config file name as given to Load; empty from Parse.
	File string
	// Path names the key, e.g. "routes[2].destination_cidr_block". It is
	// empty for problems with the file as a whole (YAML syntax).
	Path string
	// Line is the 1-based line the problem is on. For a missing key it is
	// the line of the mapping that should hold it; 0 when the missing key
	// is at the top level.
	Line int
	// Msg says what is wrong, and where it can, what would be right.
	Msg string
}

// Error formats the problem like a compiler diagnostic:
//
//	endpoint.yaml:12: routes[2].destination_cidr_block: 10.0.1.1/24 has host bits set (did you mean 10.0.1.0/24?)
//	line 12: routes[2].destination_cidr_block: ...    (from Parse, which has no file name)
func (e *ValidationError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		fmt.Fprintf(&b, "%s: ", e.File)
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}
