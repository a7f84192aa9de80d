package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-ldap/ldap/v3"
	"go.yaml.in/yaml/v3"
)

// This file is the schema of the keys for users rather than certificates:
// authentication.directory, authentication.mfa, client_connect_handler, and
// state_dir, where what they need persists.

// Limits of the user keys.
const (
	defaultDirectoryTimeout = 10 // seconds, per LDAP operation
	maxDirectoryTimeout     = 120
	defaultHandlerTimeout   = 30 // seconds: AWS's limit for a client-connect handler
	maxHandlerTimeout       = 30
	maxDNBytes              = 1024 // far above any real DN; bounds what goes into log lines
	maxFilterBytes          = 1024
	maxTOTPIssuerBytes      = 64
	// maxChallengeTextBytes keeps the static-challenge line of a profile
	// and the AUTH_FAILED,CRV1:... message (1024 bytes at most, OpenVPN
	// ssl.c) well within their limits.
	maxChallengeTextBytes = 200
	// optionLineSize is OpenVPN's OPTION_LINE_SIZE (src/openvpn/options.h):
	// the longest config line it reads, the profile's static-challenge line
	// included.
	optionLineSize = 256
)

// Placeholders of the LDAP filters.
const (
	placeholderUsername = "{username}"
	placeholderDN       = "{dn}"
)

func (d *decoder) directory(n *yaml.Node, path string, line int) *DirectoryAuthentication {
	m, ok := d.mapping(n, path, line, "url", "start_tls", "ca_file", "bind_dn", "bind_password_file",
		"user_base_dn", "user_filter", "group_attribute", "nested_groups", "group_base_dn", "group_filter", "timeout_seconds")
	if !ok {
		return nil
	}
	dir := &DirectoryAuthentication{
		UserFilter:     DefaultUserFilter,
		GroupAttribute: DefaultGroupAttribute,
		Timeout:        defaultDirectoryTimeout * time.Second,
	}
	good := true
	check := func(ok bool) {
		good = good && ok
	}
	// start_tls first: the URL rules depend on it.
	startTLS := placed{}
	if n, p, ok := m.get("start_tls"); ok {
		v, ok := d.boolean(n, p)
		check(ok)
		if ok {
			dir.StartTLS, startTLS = v, placed{p, n.Line}
		}
	}
	if n, p, ok := d.required(m, "url", " (ldaps://host, or ldap://host with start_tls: true)"); ok {
		dir.URLs, ok = d.ldapURLs(n, p, dir.StartTLS)
		check(ok)
		if ok && dir.StartTLS {
			for _, u := range dir.URLs {
				if strings.HasPrefix(strings.ToLower(u), "ldaps://") {
					d.errorf(startTLS.path, startTLS.line, "applies only to ldap:// URLs; %s is already TLS", u)
					good = false
					break
				}
			}
		}
	} else {
		good = false
	}
	if n, p, ok := m.get("ca_file"); ok {
		dir.CAFile, ok = d.fileRef(n, p)
		check(ok)
	}
	_, bindDNPath, hasBindDN := m.get("bind_dn")
	_, pwPath, hasPW := m.get("bind_password_file")
	switch {
	case hasBindDN && !hasPW:
		d.errorf(pwPath, m.keyLine("bind_password_file"), "required with bind_dn (the file holding the service account's password)")
		good = false
	case hasPW && !hasBindDN:
		d.errorf(bindDNPath, m.keyLine("bind_dn"), "required with bind_password_file (the service account's DN)")
		good = false
	}
	if n, p, ok := m.get("bind_dn"); ok {
		dir.BindDN, ok = d.dn(n, p)
		check(ok)
	}
	if n, p, ok := m.get("bind_password_file"); ok {
		dir.BindPasswordFile, ok = d.secretFile(n, p, "a password")
		check(ok)
	}
	if n, p, ok := d.required(m, "user_base_dn", " (where users are searched, such as ou=people,dc=example,dc=com)"); ok {
		dir.UserBaseDN, ok = d.dn(n, p)
		check(ok)
	} else {
		good = false
	}
	if n, p, ok := m.get("user_filter"); ok {
		dir.UserFilter, ok = d.ldapFilter(n, p, []string{placeholderUsername}, []string{placeholderUsername})
		check(ok)
	}
	// group_attribute, or group_base_dn with group_filter.
	attrNamed, attrEmpty := false, false
	if n, p, ok := m.get("group_attribute"); ok {
		switch s, ok := d.str(n, p); {
		case !ok:
			good = false
		case s == "":
			dir.GroupAttribute, attrEmpty = "", true
		case !isAttributeName(s):
			d.errorf(p, n.Line, "%q is not an LDAP attribute name like memberOf (or \"\" to search under group_base_dn)", s)
			good = false
		default:
			dir.GroupAttribute, attrNamed = s, true
		}
	}
	_, _, hasBase := m.get("group_base_dn")
	if n, p, ok := m.get("group_base_dn"); ok {
		dir.GroupBaseDN, ok = d.dn(n, p)
		check(ok)
		if attrNamed {
			d.errorf(p, n.Line, "set group_attribute or group_base_dn with group_filter, not both (leave group_attribute out to search for groups)")
			good = false
		}
		dir.GroupAttribute = "" // a search replaces the default attribute
	}
	if n, p, ok := m.get("group_filter"); ok {
		if !hasBase {
			d.errorf(p, n.Line, "applies only with group_base_dn (where groups are searched)")
			good = false
		} else {
			dir.GroupFilter, ok = d.ldapFilter(n, p, []string{placeholderDN, placeholderUsername}, nil)
			check(ok)
		}
	} else if hasBase {
		dir.GroupFilter = DefaultGroupFilter
	}
	if attrEmpty && !hasBase {
		d.errorf(join(path, "group_base_dn"), m.keyLine("group_attribute"),
			"required when group_attribute is \"\" (groups come from an attribute of the user entry or from a search under group_base_dn)")
		good = false
	}
	if n, p, ok := m.get("nested_groups"); ok {
		dir.NestedGroups, ok = d.boolean(n, p)
		check(ok)
	}
	if n, p, ok := m.get("timeout_seconds"); ok {
		v, ok := d.integer(n, p, 1, maxDirectoryTimeout)
		check(ok)
		dir.Timeout = time.Duration(v) * time.Second
	}
	if !good {
		return nil
	}
	return dir
}

// ldapURLs reads url: one URL or a list of them, each ldaps:// or ldap://
// with a host, no path beyond "/", and no user, query or fragment. A plain
// ldap:// URL needs startTLS unless its host is loopback.
func (d *decoder) ldapURLs(n *yaml.Node, path string, startTLS bool) ([]string, bool) {
	var items []*yaml.Node
	var paths []string
	if n.Kind == yaml.SequenceNode {
		list, ok := d.nonEmptyList(n, path)
		if !ok {
			return nil, false
		}
		items = list
		for i := range list {
			paths = append(paths, index(path, i))
		}
	} else {
		items, paths = []*yaml.Node{n}, []string{path}
	}
	var out []string
	seen := map[string]string{}
	good := true
	for i, item := range items {
		s, ok := d.nonEmpty(item, paths[i])
		if !ok {
			good = false
			continue
		}
		canon, err := checkLDAPURL(s, startTLS)
		if err != nil {
			d.errorf(paths[i], item.Line, "%v", err)
			good = false
			continue
		}
		if prev, dup := seen[canon]; dup {
			d.errorf(paths[i], item.Line, "%s is already listed at %s", s, prev)
			good = false
			continue
		}
		seen[canon] = paths[i]
		out = append(out, s)
	}
	return out, good
}

// checkLDAPURL checks one directory URL and returns a canonical form for
// spotting duplicates.
func checkLDAPURL(s string, startTLS bool) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a URL like ldaps://dc1.example.com", s)
	}
	scheme := strings.ToLower(u.Scheme)
	switch {
	case scheme != "ldap" && scheme != "ldaps":
		return "", fmt.Errorf("%q is not an ldaps:// or ldap:// URL", s)
	case u.Opaque != "" || u.Hostname() == "":
		return "", fmt.Errorf("%q names no host (want %s://host[:port])", s, scheme)
	case u.User != nil:
		return "", fmt.Errorf("%q holds user information; set bind_dn and bind_password_file instead", s)
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("%q has a DN, query or fragment; give only %s://host[:port] (the DNs are user_base_dn and group_base_dn)", s, scheme)
	}
	if p := u.Port(); p != "" {
		if port, err := strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
			return "", fmt.Errorf("%q: port %s is outside 1..65535", s, p)
		}
	}
	if scheme == "ldap" && !startTLS && !isLoopbackHost(u.Hostname()) {
		return "", fmt.Errorf("%s would send passwords in clear: use ldaps://, or set start_tls: true (plain ldap:// is allowed only to a loopback host)", s)
	}
	return scheme + "://" + strings.ToLower(u.Host), nil
}

// isLoopbackHost reports whether host is localhost or a loopback address.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// dn checks a distinguished name's shape: attribute=value pairs separated by
// commas (RFC 4514), with no control characters. The directory parses it
// for real; this catches a value that is not a DN at all.
func (d *decoder) dn(n *yaml.Node, path string) (string, bool) {
	s, ok := d.nonEmpty(n, path)
	if !ok {
		return "", false
	}
	switch {
	case len(s) > maxDNBytes:
		d.errorf(path, n.Line, "is %d bytes long; at most %d are allowed", len(s), maxDNBytes)
		return "", false
	case !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl):
		d.errorf(path, n.Line, "%q holds control characters or invalid UTF-8", s)
		return "", false
	}
	first, _, _ := strings.Cut(s, ",")
	if k, _, ok := strings.Cut(first, "="); !ok || !isAttributeName(strings.TrimSpace(k)) {
		d.errorf(path, n.Line, "%q is not a DN like ou=people,dc=example,dc=com", s)
		return "", false
	}
	return s, true
}

// isAttributeName reports whether s is an attribute description: a name
// (letter, then letters, digits and hyphens) or a numeric OID (RFC 4512
// section 1.4).
func isAttributeName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	if s[0] >= '0' && s[0] <= '9' { // numericoid
		for _, part := range strings.Split(s, ".") {
			if part == "" || strings.Trim(part, "0123456789") != "" {
				return false
			}
		}
		return true
	}
	for i, c := range []byte(s) {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !(letter || i > 0 && (c >= '0' && c <= '9' || c == '-')) {
			return false
		}
	}
	return true
}

// ldapFilter checks a filter template: the shape of an RFC 4515 filter
// (parenthesised, balanced, not empty), only the placeholders in allowed,
// and at least one of need (all of need's members are alternatives).
func (d *decoder) ldapFilter(n *yaml.Node, path string, allowed, need []string) (string, bool) {
	s, ok := d.nonEmpty(n, path)
	if !ok {
		return "", false
	}
	if err := checkFilter(s, allowed, need); err != nil {
		d.errorf(path, n.Line, "%q: %v", s, err)
		return "", false
	}
	return s, true
}

// checkFilter is the rule of ldapFilter. Placeholders are found as {name};
// a literal brace in a filter value is written \7b or \7d (RFC 4515 escapes),
// so every brace pair is a placeholder.
func checkFilter(s string, allowed, need []string) error {
	if len(s) > maxFilterBytes {
		return fmt.Errorf("is %d bytes long; at most %d are allowed", len(s), maxFilterBytes)
	}
	if !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) {
		return fmt.Errorf("holds control characters or invalid UTF-8")
	}
	if s == "" || s[0] != '(' || s[len(s)-1] != ')' {
		return fmt.Errorf("an LDAP filter is enclosed in parentheses, like (uid={username})")
	}
	depth := 0
	for i, c := range []byte(s) {
		switch c {
		case '(':
			depth++
		case ')':
			depth-- // never below 0: at 0 the filter must end
			if i > 0 && s[i-1] == '(' {
				return fmt.Errorf("empty () at byte %d", i-1)
			}
			if depth == 0 && i != len(s)-1 {
				return fmt.Errorf("text after the filter's closing ')' at byte %d (wrap several conditions in (&...))", i)
			}
		}
	}
	if depth != 0 {
		return fmt.Errorf("%d '(' not closed", depth)
	}
	found := map[string]bool{}
	for rest := s; ; {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			if strings.IndexByte(rest, '}') >= 0 {
				return fmt.Errorf("'}' without '{' (write a literal brace as \\7d)")
			}
			break
		}
		if strings.IndexByte(rest[:i], '}') >= 0 {
			return fmt.Errorf("'}' without '{' (write a literal brace as \\7d)")
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return fmt.Errorf("'{' without '}' (write a literal brace as \\7b)")
		}
		ph := rest[i : i+j+1]
		if !slices.Contains(allowed, ph) {
			return fmt.Errorf("unknown placeholder %s (known: %s)", ph, strings.Join(allowed, ", "))
		}
		found[ph] = true
		rest = rest[i+j+1:]
	}
	switch {
	case len(need) > 0 && !slices.ContainsFunc(need, func(ph string) bool { return found[ph] }):
		return fmt.Errorf("must contain %s, where the login name goes", strings.Join(need, " or "))
	case len(need) == 0 && len(found) == 0:
		return fmt.Errorf("must contain %s, or it matches the same groups for every user", strings.Join(allowed, " or "))
	}
	// The full RFC 4515 grammar, as the directory client will compile it: with each
	// placeholder replaced by a value like the escaped one it will hold.
	sample := strings.NewReplacer(placeholderUsername, "alice", placeholderDN, "uid=alice,dc=example,dc=com").Replace(s)
	if _, err := ldap.CompileFilter(sample); err != nil {
		var lerr *ldap.Error
		if errors.As(err, &lerr) && lerr.Err != nil {
			err = lerr.Err
		}
		return fmt.Errorf("is not an LDAP filter (RFC 4515): %v", err)
	}
	return nil
}

// secretFile is fileRef for a file holding a secret (what: "a password"):
// it must also not be readable by every user of the host. Only the mode is
// checked here; the content is read by whoever uses it.
func (d *decoder) secretFile(n *yaml.Node, path, what string) (string, bool) {
	abs, ok := d.fileRef(n, path)
	if !ok {
		return "", false
	}
	fi, err := os.Stat(abs)
	if err != nil {
		d.errorf(path, n.Line, "%s: %v", abs, unwrapPathError(err))
		return "", false
	}
	if perm := fi.Mode().Perm(); perm&0o004 != 0 {
		d.errorf(path, n.Line, "%s is readable by every user of the host (mode %04o); it holds %s: chmod o-r %s (0600 or 0640)",
			abs, perm, what, abs)
		return "", false
	}
	return abs, true
}

func (d *decoder) mfa(n *yaml.Node, path string, line int) *MFA {
	m, ok := d.mapping(n, path, line, "totp", "challenge", "challenge_text")
	if !ok {
		return nil
	}
	mfa := &MFA{TOTPIssuer: DefaultTOTPIssuer, Challenge: ChallengeStatic, ChallengeText: DefaultChallengeText}
	good := true
	if n, p, ok := m.get("totp"); ok {
		tm, ok := d.mapping(n, p, m.keyLine("totp"), "issuer")
		good = good && ok
		if n, p, ok := tm.get("issuer"); ok {
			s, ok := d.nonEmpty(n, p)
			switch {
			case !ok:
				good = false
			case len(s) > maxTOTPIssuerBytes:
				d.errorf(p, n.Line, "is %d bytes long; at most %d are allowed", len(s), maxTOTPIssuerBytes)
				good = false
			case !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }):
				d.errorf(p, n.Line, "%q holds characters that are not printable", s)
				good = false
			case strings.Contains(s, ":"):
				d.errorf(p, n.Line, "%q holds ':', which separates the issuer from the account in an otpauth URI's label", s)
				good = false
			default:
				mfa.TOTPIssuer = s
			}
		}
	}
	if n, p, ok := m.get("challenge"); ok {
		s, ok := d.str(n, p)
		switch {
		case !ok:
			good = false
		case strings.EqualFold(s, ChallengeStatic):
			mfa.Challenge = ChallengeStatic
		case strings.EqualFold(s, ChallengeDynamic):
			mfa.Challenge = ChallengeDynamic
		default:
			d.errorf(p, n.Line, "%q is not %s (profiles carry static-challenge) or %s (the server asks with a CRV1 challenge)",
				s, ChallengeStatic, ChallengeDynamic)
			good = false
		}
	}
	if n, p, ok := m.get("challenge_text"); ok {
		s, ok := d.nonEmpty(n, p)
		if ok {
			if err := CheckChallengeText(s); err != nil {
				d.errorf(p, n.Line, "%v", err)
				ok = false
			}
		}
		if ok {
			mfa.ChallengeText = s
		} else {
			good = false
		}
	}
	if !good {
		return nil
	}
	return mfa
}

// CheckChallengeText applies the rule of authentication.mfa.challenge_text to
// s: 1 to 200 bytes of printable UTF-8 (spaces allowed, no other white space
// or control characters, which a client would print to its console), short
// enough that the profile line `static-challenge "s" 1`, quoted as OpenVPN
// reads it, fits in OpenVPN's option line. Commas and colons are fine (see
// MFA.ChallengeText).
func CheckChallengeText(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("must not be empty")
	case !utf8.ValidString(s):
		return fmt.Errorf("is not valid UTF-8")
	case len(s) > maxChallengeTextBytes:
		return fmt.Errorf("is %d bytes long; at most %d are allowed", len(s), maxChallengeTextBytes)
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		return fmt.Errorf("holds %U at byte %d; only printable characters and spaces are allowed", r, i)
	}
	quoted := len(s) + 2 + strings.Count(s, `"`) + strings.Count(s, `\`)
	if l := len("static-challenge ") + quoted + len(" 1"); l >= optionLineSize {
		return fmt.Errorf("makes a static-challenge line of %d bytes once quoted; OpenVPN reads lines of at most %d", l, optionLineSize-1)
	}
	return nil
}

func (d *decoder) clientConnectHandler(n *yaml.Node, path string, line int) *ClientConnectHandler {
	m, ok := d.mapping(n, path, line, "command", "url", "ca_file", "timeout_seconds")
	if !ok {
		return nil
	}
	h := &ClientConnectHandler{Timeout: defaultHandlerTimeout * time.Second}
	good := true
	_, _, hasCmd := m.get("command")
	_, _, hasURL := m.get("url")
	switch {
	case hasCmd && hasURL:
		d.errorf(join(path, "url"), m.keyLine("url"), "set command or url, not both")
		good = false
	case !hasCmd && !hasURL:
		d.errorf(join(path, "command"), m.keyLine("command"), "required unless url is set (the program to run, or an https:// URL to POST to)")
		good = false
	}
	if n, p, ok := m.get("command"); ok && !hasURL {
		h.Command, ok = d.command(n, p)
		good = good && ok
	}
	if n, p, ok := m.get("url"); ok && !hasCmd {
		s, ok := d.nonEmpty(n, p)
		if ok {
			if err := checkHandlerURL(s); err != nil {
				d.errorf(p, n.Line, "%v", err)
				ok = false
			}
		}
		h.URL = s
		good = good && ok
	}
	if n, p, ok := m.get("ca_file"); ok {
		if !hasURL {
			d.errorf(p, n.Line, "applies only with url (the roots that sign its certificate)")
			good = false
		} else {
			h.CAFile, ok = d.fileRef(n, p)
			good = good && ok
		}
	}
	if n, p, ok := m.get("timeout_seconds"); ok {
		v, ok := d.integer(n, p, 1, maxHandlerTimeout)
		h.Timeout = time.Duration(v) * time.Second
		good = good && ok
	}
	if !good {
		return nil
	}
	return h
}

// command reads the handler's argv: a non-empty list of strings whose first
// is the absolute path of an executable regular file. Arguments may be
// anything but NUL (which cannot go into an argv).
func (d *decoder) command(n *yaml.Node, path string) ([]string, bool) {
	items, ok := d.nonEmptyList(n, path)
	if !ok {
		return nil, false
	}
	var argv []string
	good := true
	for i, item := range items {
		ipath := index(path, i)
		s, ok := d.str(item, ipath)
		if !ok {
			good = false
			continue
		}
		if strings.ContainsRune(s, 0) {
			d.errorf(ipath, item.Line, "holds a NUL byte")
			good = false
			continue
		}
		argv = append(argv, s)
	}
	if !good {
		return nil, false
	}
	prog, ppath := argv[0], index(path, 0)
	line := items[0].Line
	if !filepath.IsAbs(prog) {
		d.errorf(ppath, line, "%q is not an absolute path; name the program by its full path (no search of $PATH, no shell)", prog)
		return nil, false
	}
	fi, err := os.Stat(prog)
	switch {
	case err != nil:
		d.errorf(ppath, line, "%s: %v", prog, unwrapPathError(err))
		return nil, false
	case !fi.Mode().IsRegular():
		d.errorf(ppath, line, "%s is not a regular file", prog)
		return nil, false
	case fi.Mode().Perm()&0o111 == 0:
		d.errorf(ppath, line, "%s is not executable (mode %04o)", prog, fi.Mode().Perm())
		return nil, false
	}
	return argv, true
}

// checkHandlerURL allows https:// URLs with a host and no user information
// (which would be logged with the URL).
func checkHandlerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL like https://handler.example.com/connect", s)
	}
	switch {
	case !strings.EqualFold(u.Scheme, "https"):
		return fmt.Errorf("%q is not an https:// URL (the request carries user names and groups)", s)
	case u.Opaque != "" || u.Hostname() == "":
		return fmt.Errorf("%q names no host", s)
	case u.User != nil:
		return fmt.Errorf("%q holds user information, which would be logged with the URL", s)
	case u.Fragment != "":
		return fmt.Errorf("%q has a fragment, which is never sent", s)
	}
	if p := u.Port(); p != "" {
		if port, err := strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
			return fmt.Errorf("%q: port %s is outside 1..65535", s, p)
		}
	}
	return nil
}

// stateDir resolves state_dir against the file's directory. It need not
// exist (the endpoint creates it at start); if it does, it must be a
// directory.
func (d *decoder) stateDir(n *yaml.Node, path string) (string, bool) {
	abs, name, ok := d.resolve(n, path)
	if !ok {
		return "", false
	}
	if fi, err := os.Stat(abs); err == nil && !fi.IsDir() {
		d.errorf(path, n.Line, "%s exists and is not a directory", name)
		return "", false
	}
	return abs, true
}
