package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/cvpn/cvpn/internal/textdist"
)

// The file is decoded to a yaml.Node tree and walked by hand, not unmarshalled
// into tagged structs: the walk knows the key path and line of every value, so
// each problem names both, and it can keep going after one bad value to
// report the rest.

// decoder collects problems while walking the document.
type decoder struct {
	file string // for ValidationError.File
	dir  string // relative file paths are resolved against it
	// cluster is where the cluster section comes from: its own file names its problems,
	// and its relative paths resolve against its own directory (ParseWithCluster).
	clusterSrc *clusterSource
	errs       []*ValidationError
	keyLines   map[string]int // line of every key path seen, for Endpoint.KeyLine
	// traffic is traffic_ip_address_type, read first: the keys that take networks
	// refuse a family that does not flow through the tunnel.
	traffic string
}

// trafficFamily refuses a block of a family that traffic_ip_address_type leaves out.
func (d *decoder) trafficFamily(p netip.Prefix, path string, line int) bool {
	switch {
	case p.Addr().Is6() && !HasIPv6(d.traffic):
		d.errorf(path, line, "%s is IPv6, but traffic_ip_address_type is %s: set it to %s or %s to carry IPv6", p, d.traffic, IPv6, DualStack)
		return false
	case p.Addr().Is4() && !HasIPv4(d.traffic):
		d.errorf(path, line, "%s is IPv4, but traffic_ip_address_type is %s: set it to %s or %s to carry IPv4", p, d.traffic, IPv4, DualStack)
		return false
	}
	return true
}

func (d *decoder) errorf(path string, line int, format string, args ...any) {
	file := d.file
	if d.clusterSrc != nil && isClusterPath(path) {
		file = d.clusterSrc.file
	}
	d.errs = append(d.errs, &ValidationError{File: file, Path: path, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// result joins the collected problems in file order; problems without a
// line (missing top-level keys) come last.
func (d *decoder) result() error {
	if len(d.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(d.errs, func(a, b *ValidationError) int {
		la, lb := a.Line, b.Line
		if la == 0 {
			la = int(^uint(0) >> 1)
		}
		if lb == 0 {
			lb = int(^uint(0) >> 1)
		}
		return cmp.Compare(la, lb)
	})
	errs := make([]error, len(d.errs))
	for i, e := range d.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// yamlLine matches the position prefix of a yaml.v3 syntax error.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parserProblems are the problems yaml.v3's parser (as opposed to its
// scanner) reports. For these, yaml.v3 v3.0.6 prints the 0-based line of the
// construct being parsed (decode.go parser.fail adds 1 only for scanner
// errors), and prints no line at all when that line is 0.
var parserProblems = []string{
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"did not find expected '-' indicator",
	"did not find expected <document start>",
	"did not find expected <stream-start>",
	"did not find expected key",
	"did not find expected node content",
	"found duplicate %TAG directive",
	"found duplicate %YAML directive",
	"found incompatible YAML document",
	"found undefined tag handle",
}

// syntaxError turns a yaml.v3 error into a ValidationError with a 1-based
// line. The line is where yaml.v3 places the problem, which for unclosed
// brackets and bad indentation is the start of the enclosing construct.
func (d *decoder) syntaxError(err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	switch {
	case slices.Contains(parserProblems, msg):
		line++ // 0-based, and absent when 0
	case line == 0 && !strings.HasPrefix(msg, "unknown anchor"):
		line = 1 // a scanner error on the first line prints no line
	}
	d.errorf("", line, "invalid YAML: %s", msg)
}

// parse decodes an endpoint file. With cluster set, the file's cluster section is replaced by
// that one (ParseWithCluster); otherwise the file's own section, if any, is recorded as the
// Endpoint's, so that it can be spliced into pushed files.
func parse(data []byte, dir, file string, cluster *clusterSource) (*Endpoint, error) {
	d := &decoder{file: file, dir: dir, keyLines: map[string]int{}, clusterSrc: cluster}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && err != io.EOF {
		d.syntaxError(err)
		return nil, d.result()
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == io.EOF:
	case err != nil:
		d.syntaxError(err)
		return nil, d.result()
	default:
		d.errorf("", extra.Line, "the file holds more than one YAML document; an endpoint file is one document")
		return nil, d.result()
	}
	var root *yaml.Node
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = resolve(doc.Content[0])
	}
	if cluster != nil {
		root = splice(root, cluster)
	} else if k, v := findCluster(root); k != nil {
		d.clusterSrc = &clusterSource{key: k, value: v, file: file, dir: dir, own: ownSections(root)}
	}
	ep := d.endpoint(root)
	if err := d.result(); err != nil {
		return nil, err
	}
	ep.file, ep.keyLines = file, d.keyLines
	if ep.Cluster != nil {
		ep.clusterSrc = d.clusterSrc
	}
	return ep, nil
}

// resolve follows aliases to the node they name.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what a node is, for "must be X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing"
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		case "!!int":
			return "the integer " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		case "!!float":
			return "the number " + n.Value
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "an unsupported YAML node"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// mapping is a YAML mapping that passed the key checks.
type mapping struct {
	path   string
	line   int // where a missing key is reported: the line of the key holding this mapping
	values map[string]*yaml.Node
	lines  map[string]int // line of each key
}

// mapping checks that n is a mapping whose keys are unique and all known,
// reporting every key that is not. line is where missing keys are reported.
// A null n is an empty mapping. ok is false when n is not a mapping at all.
func (d *decoder) mapping(n *yaml.Node, path string, line int, known ...string) (m mapping, ok bool) {
	m = mapping{path: path, line: line, values: map[string]*yaml.Node{}, lines: map[string]int{}}
	if isNull(n) {
		return m, true
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(path, n.Line, "must be a mapping of keys, got %s", describe(n))
		return m, false
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(path, k.Line, "keys must be plain names, got %s", describe(k))
			continue
		}
		kp := join(path, k.Value)
		if k.ShortTag() == "!!merge" {
			d.errorf(kp, k.Line, "merge keys (<<) are not supported; write the keys out")
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.errorf(kp, k.Line, "duplicate key (first set at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		if !slices.Contains(known, k.Value) {
			d.errorf(kp, k.Line, "unknown key %q%s", k.Value, suggest(k.Value, known))
			continue
		}
		m.values[k.Value] = resolve(v)
		m.lines[k.Value] = k.Line
		d.keyLines[kp] = k.Line
	}
	return m, true
}

// get returns the value of key and its path; ok is false when the key is
// absent or null (an empty value counts as absent).
func (m mapping) get(key string) (n *yaml.Node, path string, ok bool) {
	n = m.values[key]
	return n, join(m.path, key), !isNull(n)
}

// keyLine is the line of key, or of the mapping when key is absent. A nested
// mapping reports its own missing keys there.
func (m mapping) keyLine(key string) int {
	if l, ok := m.lines[key]; ok {
		return l
	}
	return m.line
}

// required is get, reporting a missing key (at the line of the mapping) or
// a null one (at its own line).
func (d *decoder) required(m mapping, key, why string) (*yaml.Node, string, bool) {
	n, path, ok := m.get(key)
	if !ok {
		d.errorf(path, m.keyLine(key), "required%s", why)
	}
	return n, path, ok
}

// str returns a scalar as a string. Any scalar is accepted (interface names
// and group ids may look like numbers).
func (d *decoder) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.errorf(path, n.Line, "must be a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

// nonEmpty is str that also refuses "".
func (d *decoder) nonEmpty(n *yaml.Node, path string) (string, bool) {
	s, ok := d.str(n, path)
	if ok && strings.TrimSpace(s) == "" {
		d.errorf(path, n.Line, "must not be empty")
		return "", false
	}
	return s, ok
}

// integer returns an integer scalar within [lo, hi].
func (d *decoder) integer(n *yaml.Node, path string, lo, hi int64) (int64, bool) {
	var v int64
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&v) != nil {
		d.errorf(path, n.Line, "must be an integer, got %s", describe(n))
		return 0, false
	}
	if v < lo || v > hi {
		d.errorf(path, n.Line, "%d is outside %d..%d", v, lo, hi)
		return 0, false
	}
	return v, true
}

// number returns a non-negative int or float scalar no greater than hi.
func (d *decoder) number(n *yaml.Node, path string, hi float64) (float64, bool) {
	var v float64
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") || n.Decode(&v) != nil {
		d.errorf(path, n.Line, "must be a number, got %s", describe(n))
		return 0, false
	}
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		d.errorf(path, n.Line, "must be a finite number, got %s", n.Value)
		return 0, false
	case v < 0:
		d.errorf(path, n.Line, "%s is negative (0 means no limit)", n.Value)
		return 0, false
	case v > hi:
		d.errorf(path, n.Line, "%s is more than %g", n.Value, hi)
		return 0, false
	}
	return v, true
}

func (d *decoder) boolean(n *yaml.Node, path string) (bool, bool) {
	var v bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&v) != nil {
		d.errorf(path, n.Line, "must be true or false, got %s", describe(n))
		return false, false
	}
	return v, true
}

func (d *decoder) list(n *yaml.Node, path string) ([]*yaml.Node, bool) {
	if n.Kind != yaml.SequenceNode {
		d.errorf(path, n.Line, "must be a list, got %s", describe(n))
		return nil, false
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		items[i] = resolve(c)
		d.keyLines[index(path, i)] = c.Line
	}
	return items, true
}

// nonEmptyList is list that also refuses [].
func (d *decoder) nonEmptyList(n *yaml.Node, path string) ([]*yaml.Node, bool) {
	items, ok := d.list(n, path)
	if ok && len(items) == 0 {
		d.errorf(path, n.Line, "must list at least one entry")
		return nil, false
	}
	return items, ok
}

// prefix returns a CIDR block of either family with no host bits set.
func (d *decoder) prefix(n *yaml.Node, path string) (netip.Prefix, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			d.errorf(path, n.Line, "%s is an address, not a CIDR block (did you mean %s/%d?)", s, s, a.BitLen())
		} else {
			d.errorf(path, n.Line, "%q is not a CIDR block like 10.0.0.0/16", s)
		}
		return netip.Prefix{}, false
	}
	if p.Addr().Is4In6() {
		d.errorf(path, n.Line, "%s is an IPv4-mapped IPv6 block; write the IPv4 block %s instead", s, netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0)).Masked())
		return netip.Prefix{}, false
	}
	if p.Addr().Zone() != "" {
		d.errorf(path, n.Line, "%s has a zone; a CIDR block has none", s)
		return netip.Prefix{}, false
	}
	if m := p.Masked(); m != p {
		d.errorf(path, n.Line, "%s has host bits set (did you mean %s?)", s, m)
		return netip.Prefix{}, false
	}
	return p, true
}

// Families an address or prefix may be of, for addr and family.
const (
	anyFamily = iota
	only4
	only6
)

// addr returns an IP address of the family fam (anyFamily, only4, only6).
// IPv4-mapped IPv6 addresses and zones are refused: an endpoint file names
// each address in its own family.
func (d *decoder) addr(n *yaml.Node, path string, fam int) (netip.Addr, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		d.errorf(path, n.Line, "%q is not an IP address", s)
		return netip.Addr{}, false
	}
	switch {
	case a.Zone() != "":
		d.errorf(path, n.Line, "%s has a zone (%%%s); give the address alone", s, a.Zone())
		return netip.Addr{}, false
	case a.Is4In6():
		d.errorf(path, n.Line, "%s is an IPv4-mapped IPv6 address; write %s", s, a.Unmap())
		return netip.Addr{}, false
	case fam == only4 && !a.Is4():
		d.errorf(path, n.Line, "%s is not an IPv4 address", s)
		return netip.Addr{}, false
	case fam == only6 && !a.Is6():
		d.errorf(path, n.Line, "%s is not an IPv6 address", s)
		return netip.Addr{}, false
	}
	return a, true
}

// resolve turns a file name from the config into an absolute path, against the config's
// directory, and the name to use in messages.
func (d *decoder) resolve(n *yaml.Node, path string) (abs, name string, ok bool) {
	s, ok := d.nonEmpty(n, path)
	if !ok {
		return "", "", false
	}
	p := s
	if !filepath.IsAbs(p) {
		dir := d.dir
		if d.clusterSrc != nil && isClusterPath(path) {
			dir = d.clusterSrc.dir // a node-local section: against the node's own file
		}
		p = filepath.Join(dir, p)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		d.errorf(path, n.Line, "resolve %s: %v", s, err)
		return "", "", false
	}
	name = abs
	if s != abs {
		name = fmt.Sprintf("%s (resolved to %s)", s, abs)
	}
	return abs, name, true
}

// fileRef resolves a file name against the config's directory and checks that
// it is a readable regular file. Content is checked by whoever loads it.
func (d *decoder) fileRef(n *yaml.Node, path string) (string, bool) {
	abs, name, ok := d.resolve(n, path)
	if !ok {
		return "", false
	}
	// Stat before Open: opening a FIFO would block.
	fi, err := os.Stat(abs)
	if err != nil {
		d.errorf(path, n.Line, "%s: %v", name, unwrapPathError(err))
		return "", false
	}
	if !fi.Mode().IsRegular() {
		d.errorf(path, n.Line, "%s is not a regular file", name)
		return "", false
	}
	f, err := os.Open(abs)
	if err != nil {
		d.errorf(path, n.Line, "%s: %v", name, unwrapPathError(err))
		return "", false
	}
	f.Close()
	return abs, true
}

// outputFile resolves a file name that cvpn will write, against the config's
// directory. The file need not exist, but its directory must, and an
// existing file must be a regular file.
func (d *decoder) outputFile(n *yaml.Node, path string) (string, bool) {
	abs, name, ok := d.resolve(n, path)
	if !ok {
		return "", false
	}
	if fi, err := os.Stat(abs); err == nil && !fi.Mode().IsRegular() {
		d.errorf(path, n.Line, "%s is not a regular file", name)
		return "", false
	}
	dir := filepath.Dir(abs)
	fi, err := os.Stat(dir)
	if err != nil {
		d.errorf(path, n.Line, "%s: directory %s: %v", name, dir, unwrapPathError(err))
		return "", false
	}
	if !fi.IsDir() {
		d.errorf(path, n.Line, "%s: %s is not a directory", name, dir)
		return "", false
	}
	return abs, true
}

// unwrapPathError drops the "open /path:" prefix the message already has.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// suggest returns ` (did you mean "x"?)` for the known key closest to an
// unknown one, or "" when none is close. AWS API spellings
// (ClientCidrBlock) match their snake_case key.
func suggest(key string, known []string) string {
	squash := func(s string) string { return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(s)) }
	best, bestDist := "", 3
	for _, k := range known {
		if squash(k) == squash(key) {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
		if dist := textdist.Distance(key, k); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}
