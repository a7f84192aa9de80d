// Package directory authenticates users against an LDAP directory (OpenLDAP, Active Directory)
// and reads their groups, for AWS Client VPN's directory-service-authentication.
//
// Authenticate searches the user with the service account (bind_dn), binds as the user's DN with
// the password on a connection of its own, then reads the groups: the values of group_attribute
// (memberOf) on the user entry, AD nested groups with the in-chain matching rule, or a search
// under group_base_dn with group_filter. Lookup repeats the search without a password, for the
// re-check at renegotiation. Connections are pooled per kind (service searches, user binds),
// every operation is bounded by Config.Timeout and the caller's context, and the configured URLs
// are tried in order, a failed one being skipped for Config.Backoff.
//
// The package owns the LDAP conversation only: which groups grant what (authz), MFA and tokens
// live elsewhere. It never logs a password.
package directory

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-ldap/ldap/v3"
)

// Limits on what is sent and read.
const (
	// MaxUsernameLen is the longest username sent to the directory, in bytes.
	MaxUsernameLen = 256
	// MaxPasswordLen is the longest password sent to the directory, in bytes.
	MaxPasswordLen = 4096
	// MaxGroups caps the groups kept per user; more are dropped with a warning.
	MaxGroups = 1024
)

// Defaults for the zero values of Config.
const (
	DefaultUserFilter       = "(uid={username})"
	DefaultGroupAttribute   = "memberOf"
	DefaultGroupFilter      = "(member={dn})"
	DefaultTimeout          = 10 * time.Second
	DefaultPoolSize         = 4
	DefaultBackoff          = 3 * time.Second
	DefaultIdleTimeout      = 2 * time.Minute
	DefaultMaxResponseBytes = 4 << 20
)

// inChainRule is LDAP_MATCHING_RULE_IN_CHAIN (AD): a filter (member:1.2.840.113556.1.4.1941:=DN)
// matches every group that has DN as a member directly or through nested groups.
const inChainRule = "1.2.840.113556.1.4.1941"

// AD userAccountControl flag ACCOUNTDISABLE (MS-ADTS 2.2.16).
const uacAccountDisable = 0x2

// Config says where the directory is and how users and groups are found.
//
// Groups are read one way, chosen in this order: NestedGroups (an in-chain search under
// GroupBaseDN, or the parent of UserBaseDN when GroupBaseDN is empty); GroupBaseDN set (a search
// there with GroupFilter); otherwise the values of GroupAttribute on the user entry.
type Config struct {
	URLs     []string       // ldap://host[:port] or ldaps://host[:port], tried in order
	StartTLS bool           // upgrade ldap:// URLs with StartTLS
	RootCAs  *x509.CertPool // for ldaps and StartTLS; nil means the system roots

	BindDN       string // service account; empty means anonymous searches
	BindPassword string

	UserBaseDN string
	UserFilter string // must contain {username}; default "(uid={username})"

	GroupAttribute string // default "memberOf"
	NestedGroups   bool   // AD: resolve nested groups with the in-chain matching rule
	GroupBaseDN    string
	GroupFilter    string // {dn} and/or {username}; default "(member={dn})"

	Timeout  time.Duration // per LDAP operation (and per dial); default 10 s
	PoolSize int           // connections per pool (service searches, user binds); default 4

	Backoff          time.Duration    // how long a failed URL is skipped; default 3 s
	IdleTimeout      time.Duration    // a pooled connection idle longer is redialled; default 2 min
	MaxResponseBytes int64            // bytes one operation may read; default 4 MiB
	Log              *slog.Logger     // default: discard
	Now              func() time.Time // clock for back-off and idle expiry; default time.Now
}

// User is an authenticated (or looked-up) directory user.
type User struct {
	DN   string
	Name string // the username as the directory spells it (the filter's attribute), else as given
	// Groups the user belongs to, at most MaxGroups.
	Groups []Group
}

// Directory is a client of one directory (with failover URLs). It is safe for concurrent use.
type Directory struct {
	cfg      Config
	log      *slog.Logger
	servers  []server
	nameAttr string // attribute in UserFilter compared with {username}, if the filter is simple
	groupDN  string // base of nested-group searches

	search *pool // bound as the service account
	binds  *pool // user binds only

	failMu      sync.Mutex // guards the fields below
	failedUntil map[string]time.Time
	lastErr     error
	probing     bool // a dial is trying the server whose back-off ends first (dialAny)
}

var simpleFilter = regexp.MustCompile(`\(\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*\{username\}\s*\)`)

// New checks cfg and returns a Directory. It does not connect: the first operation does.
func New(cfg Config) (*Directory, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("directory: no url")
	}
	if cfg.UserBaseDN == "" {
		return nil, errors.New("directory: no user_base_dn")
	}
	if cfg.UserFilter == "" {
		cfg.UserFilter = DefaultUserFilter
	}
	if !strings.Contains(cfg.UserFilter, "{username}") {
		return nil, fmt.Errorf("directory: user_filter %q does not contain {username}", cfg.UserFilter)
	}
	if _, err := ldap.CompileFilter(strings.ReplaceAll(cfg.UserFilter, "{username}", "x")); err != nil {
		return nil, fmt.Errorf("directory: user_filter %q: %w", cfg.UserFilter, err)
	}
	if cfg.GroupAttribute == "" {
		cfg.GroupAttribute = DefaultGroupAttribute
	}
	if cfg.GroupFilter == "" {
		cfg.GroupFilter = DefaultGroupFilter
	}
	if !strings.Contains(cfg.GroupFilter, "{dn}") && !strings.Contains(cfg.GroupFilter, "{username}") {
		return nil, fmt.Errorf("directory: group_filter %q contains neither {dn} nor {username}", cfg.GroupFilter)
	}
	gf := strings.NewReplacer("{dn}", "x", "{username}", "x").Replace(cfg.GroupFilter)
	if _, err := ldap.CompileFilter(gf); err != nil {
		return nil, fmt.Errorf("directory: group_filter %q: %w", cfg.GroupFilter, err)
	}
	for _, dn := range []string{cfg.UserBaseDN, cfg.GroupBaseDN, cfg.BindDN} {
		if dn == "" {
			continue
		}
		if _, err := ldap.ParseDN(dn); err != nil {
			return nil, fmt.Errorf("directory: %q is not a DN: %w", dn, err)
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = DefaultPoolSize
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d := &Directory{cfg: cfg, log: cfg.Log, failedUntil: map[string]time.Time{}}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	for _, u := range cfg.URLs {
		srv, err := parseServer(u)
		if err != nil {
			return nil, err
		}
		if srv.ldaps && cfg.StartTLS {
			return nil, fmt.Errorf("directory: url %q: start_tls applies to ldap:// URLs only", u)
		}
		if !srv.ldaps && !cfg.StartTLS {
			d.log.Warn("directory: passwords to this server cross the network in the clear; use ldaps:// or start_tls", "url", u)
		}
		d.servers = append(d.servers, srv)
	}
	if m := simpleFilter.FindStringSubmatch(cfg.UserFilter); m != nil {
		d.nameAttr = m[1]
	}
	d.groupDN = cfg.GroupBaseDN
	if d.groupDN == "" {
		d.groupDN = parentDN(cfg.UserBaseDN)
	}
	d.search = newPool(d, true, cfg.PoolSize)
	d.binds = newPool(d, false, cfg.PoolSize)
	return d, nil
}

// parentDN returns the DN one level above dn, unless that would leave only domain components
// (ou=people,dc=example,dc=com -> dc=example,dc=com, but dc=example,dc=com stays).
func parentDN(dn string) string {
	p, err := ldap.ParseDN(dn)
	if err != nil || len(p.RDNs) < 2 {
		return dn
	}
	first := p.RDNs[0].Attributes
	if len(first) == 1 && strings.EqualFold(first[0].Type, "dc") {
		return dn
	}
	parent := &ldap.DN{RDNs: p.RDNs[1:]}
	return parent.String()
}

func (d *Directory) now() time.Time { return d.cfg.Now() }

// Close closes the idle connections; operations under way finish and close theirs.
func (d *Directory) Close() error {
	d.search.close()
	d.binds.close()
	return nil
}

// checkUsername refuses what is never sent to the directory.
func checkUsername(username string) error {
	switch {
	case username == "":
		return fmt.Errorf("%w: empty username", ErrInvalidCredentials)
	case len(username) > MaxUsernameLen:
		return fmt.Errorf("%w: username of %d bytes (limit %d)", ErrInvalidCredentials, len(username), MaxUsernameLen)
	case !utf8.ValidString(username):
		return fmt.Errorf("%w: username is not UTF-8", ErrInvalidCredentials)
	}
	for _, r := range username {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: username contains control character %U", ErrInvalidCredentials, r)
		}
	}
	return nil
}

// Authenticate checks username and password against the directory and returns the user with
// their groups. Wrong password, unknown or ambiguous user: ErrInvalidCredentials. Directory
// unreachable: ErrUnavailable. Disabled account (with the right password): ErrDisabled.
func (d *Directory) Authenticate(ctx context.Context, username, password string) (*User, error) {
	if err := checkUsername(username); err != nil {
		return nil, err
	}
	// An empty password would make an unauthenticated bind (RFC 4513 5.1.2), which servers
	// answer with success.
	if password == "" {
		return nil, fmt.Errorf("%w: empty password", ErrInvalidCredentials)
	}
	if len(password) > MaxPasswordLen {
		return nil, fmt.Errorf("%w: password longer than %d bytes", ErrInvalidCredentials, MaxPasswordLen)
	}
	entry, err := d.findUser(ctx, username)
	if errors.Is(err, ErrNoSuchUser) {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCredentials, err)
	}
	if err != nil {
		return nil, err
	}
	err = d.do(ctx, d.binds, func(c *ldap.Conn) error { return c.Bind(entry.DN, password) })
	if err != nil {
		if ldap.IsErrorAnyOf(err, ldap.LDAPResultInvalidCredentials, ldap.LDAPResultInsufficientAccessRights,
			ldap.LDAPResultUnwillingToPerform, ldap.LDAPResultInappropriateAuthentication) {
			d.log.Info("directory: bind refused", "user", username, "dn", entry.DN, "result", ldapResult(err))
			return nil, fmt.Errorf("%w: bind as %s refused", ErrInvalidCredentials, entry.DN)
		}
		return nil, fmt.Errorf("directory: bind as %s: %w", entry.DN, err)
	}
	if reason := disabled(entry); reason != "" {
		d.log.Info("directory: account disabled", "user", username, "dn", entry.DN, "reason", reason)
		return nil, fmt.Errorf("%w: %s (%s)", ErrDisabled, entry.DN, reason)
	}
	return d.user(ctx, username, entry)
}

// Lookup re-reads a user without a password, for the check at renegotiation: the user must
// still exist (else ErrNoSuchUser) and not be disabled (ErrDisabled); the groups are fresh.
func (d *Directory) Lookup(ctx context.Context, username string) (*User, error) {
	if err := checkUsername(username); err != nil {
		return nil, err
	}
	entry, err := d.findUser(ctx, username)
	if err != nil {
		return nil, err
	}
	if reason := disabled(entry); reason != "" {
		return nil, fmt.Errorf("%w: %s (%s)", ErrDisabled, entry.DN, reason)
	}
	return d.user(ctx, username, entry)
}

func ldapResult(err error) string {
	var le *ldap.Error
	if errors.As(err, &le) {
		return strconv.Itoa(int(le.ResultCode)) + " " + ldap.LDAPResultCodeMap[le.ResultCode]
	}
	return ""
}

// disabled returns why the entry is disabled, or "".
func disabled(e *ldap.Entry) string {
	if v := e.GetEqualFoldAttributeValue("userAccountControl"); v != "" {
		if uac, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && uac&uacAccountDisable != 0 {
			return "userAccountControl ACCOUNTDISABLE"
		}
	}
	if e.GetEqualFoldAttributeValue("pwdAccountLockedTime") != "" {
		return "pwdAccountLockedTime set"
	}
	return ""
}

// findUser searches the one entry matching the user filter.
func (d *Directory) findUser(ctx context.Context, username string) (*ldap.Entry, error) {
	filter := userFilter(d.cfg.UserFilter, username)
	attrs := []string{"userAccountControl", "pwdAccountLockedTime"}
	if d.nameAttr != "" {
		attrs = append(attrs, d.nameAttr)
	}
	if !d.cfg.NestedGroups && d.cfg.GroupBaseDN == "" {
		attrs = append(attrs, d.cfg.GroupAttribute)
	}
	req := ldap.NewSearchRequest(d.cfg.UserBaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, d.timeLimit(), false, filter, attrs, nil)
	req.EnforceSizeLimit = true
	var entries []*ldap.Entry
	err := d.do(ctx, d.search, func(c *ldap.Conn) error {
		res, err := c.Search(req)
		if res != nil {
			entries = res.Entries
		}
		if err != nil && (errors.Is(err, ldap.ErrSizeLimitExceeded) || ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded)) {
			return nil
		}
		return err
	})
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return nil, err
		}
		return nil, fmt.Errorf("directory: search %s for %s: %w", d.cfg.UserBaseDN, filter, err)
	}
	switch {
	case len(entries) == 0:
		return nil, fmt.Errorf("%w: %q under %s", ErrNoSuchUser, username, d.cfg.UserBaseDN)
	case len(entries) > 1:
		d.log.Warn("directory: username matches several entries; refusing it", "user", username,
			"filter", filter, "base", d.cfg.UserBaseDN, "first", entries[0].DN, "second", entries[1].DN)
		return nil, fmt.Errorf("%w: %q matches several entries", ErrInvalidCredentials, username)
	}
	return entries[0], nil
}

// userFilter puts username, escaped per RFC 4515 section 3, into the user_filter template.
func userFilter(template, username string) string {
	return strings.ReplaceAll(template, "{username}", ldap.EscapeFilter(username))
}

// canonicalName is the username as the directory spells it: the value of the filter's attribute
// that the directory matched. LDAP equality rules ignore case and insignificant spaces, so
// "ALICE " finds alice; state kept per user (MFA secrets, tokens) must not tell them apart.
func canonicalName(entry *ldap.Entry, attr, username string) string {
	if attr == "" {
		return username
	}
	values := entry.GetEqualFoldAttributeValues(attr)
	norm := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	for _, v := range values {
		if strings.EqualFold(norm(v), norm(username)) {
			return v
		}
	}
	if len(values) == 1 {
		return values[0]
	}
	return username
}

// timeLimit is the server-side time limit of searches, in whole seconds.
func (d *Directory) timeLimit() int {
	s := int(d.cfg.Timeout / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// user builds the User of entry, reading the groups.
func (d *Directory) user(ctx context.Context, username string, entry *ldap.Entry) (*User, error) {
	u := &User{DN: entry.DN, Name: canonicalName(entry, d.nameAttr, username)}
	var err error
	switch {
	case d.cfg.NestedGroups:
		filter := "(member:" + inChainRule + ":=" + ldap.EscapeFilter(entry.DN) + ")"
		u.Groups, err = d.searchGroups(ctx, d.groupDN, filter, username)
	case d.cfg.GroupBaseDN != "":
		filter := strings.NewReplacer("{dn}", ldap.EscapeFilter(entry.DN), "{username}", ldap.EscapeFilter(u.Name)).Replace(d.cfg.GroupFilter)
		u.Groups, err = d.searchGroups(ctx, d.cfg.GroupBaseDN, filter, username)
	default:
		dns := entry.GetEqualFoldAttributeValues(d.cfg.GroupAttribute)
		if len(dns) > MaxGroups {
			d.log.Warn("directory: user has more groups than kept", "user", username, "groups", len(dns), "kept", MaxGroups)
			dns = dns[:MaxGroups]
		}
		for _, dn := range dns {
			u.Groups = append(u.Groups, groupFromDN(dn))
		}
	}
	if err != nil {
		return nil, err
	}
	return u, nil
}

func (d *Directory) searchGroups(ctx context.Context, base, filter, username string) ([]Group, error) {
	req := ldap.NewSearchRequest(base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		MaxGroups, d.timeLimit(), false, filter, []string{"cn", "objectSid"}, nil)
	req.EnforceSizeLimit = true
	var entries []*ldap.Entry
	truncated := false
	err := d.do(ctx, d.search, func(c *ldap.Conn) error {
		res, err := c.Search(req)
		entries = nil
		if res != nil {
			entries = res.Entries
		}
		if err != nil && (errors.Is(err, ldap.ErrSizeLimitExceeded) || ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded)) {
			truncated = true
			return nil
		}
		return err
	})
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return nil, err
		}
		return nil, fmt.Errorf("directory: search groups under %s with %s: %w", base, filter, err)
	}
	if truncated {
		d.log.Warn("directory: user has more groups than kept", "user", username, "kept", len(entries))
	}
	groups := make([]Group, 0, len(entries))
	for _, e := range entries {
		groups = append(groups, groupFromEntry(e))
	}
	return groups, nil
}
