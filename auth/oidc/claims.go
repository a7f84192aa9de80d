package oidc

import (
	"fmt"
	"slices"
	"unicode"
	"unicode/utf8"
)

// Limits on what an ID token's claims may carry into cvpn. The groups feed authorization rules,
// logs and the admin API; a provider misconfigured to put every group of a large directory in
// the token, or a claim of another shape, is refused rather than truncated, so that access never
// depends on which groups happened to fit.
const (
	// MaxGroups is the most groups an ID token may carry.
	MaxGroups = 256
	// MaxNameLength is the longest username or group name, in bytes.
	MaxNameLength = 256
)

// defaultUsernameClaims is the chain used when Config.UsernameClaim is empty.
var defaultUsernameClaims = []string{"preferred_username", "email", "sub"}

// username returns the first usable claim of names: a non-empty string within MaxNameLength
// without control characters. A claim that is present but unusable is an error, not skipped: a
// provider sending a malformed preferred_username should be noticed, not silently bypassed.
func username(claims map[string]any, names []string) (string, error) {
	for _, name := range names {
		v, ok := claims[name]
		if !ok || v == nil {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("%w: username claim %q is a %s, not a string", ErrClaims, name, jsonType(v))
		}
		if s == "" {
			continue
		}
		if err := checkName(s); err != nil {
			return "", fmt.Errorf("%w: username claim %q: %v", ErrClaims, name, err)
		}
		return s, nil
	}
	return "", fmt.Errorf("%w: no username claim (tried %q)", ErrClaims, names)
}

// groups reads the groups claim: absent or null is no groups; a string is one group (some
// providers send a lone group that way); a list must hold only strings. Empty names are dropped
// and duplicates removed, the order kept.
func groups(claims map[string]any, name string) ([]string, error) {
	v, ok := claims[name]
	if !ok || v == nil {
		return nil, nil
	}
	var list []any
	switch g := v.(type) {
	case string:
		list = []any{g}
	case []any:
		list = g
	default:
		return nil, fmt.Errorf("%w: groups claim %q is a %s, not a list of strings", ErrClaims, name, jsonType(v))
	}
	if len(list) > MaxGroups {
		return nil, fmt.Errorf("%w: groups claim %q has %d entries, more than %d", ErrClaims, name, len(list), MaxGroups)
	}
	out := make([]string, 0, len(list))
	for i, e := range list {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("%w: groups claim %q entry %d is a %s, not a string", ErrClaims, name, i, jsonType(e))
		}
		if s == "" || slices.Contains(out, s) {
			continue
		}
		if err := checkName(s); err != nil {
			return nil, fmt.Errorf("%w: groups claim %q entry %d: %v", ErrClaims, name, i, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// checkName refuses names too long, not UTF-8, or with control characters (they end up in logs
// and in the management interface's line protocol).
func checkName(s string) error {
	if len(s) > MaxNameLength {
		return fmt.Errorf("%d bytes, more than %d", len(s), MaxNameLength)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("not UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("control character %U", r)
		}
	}
	return nil
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "string"
	case bool:
		return "boolean"
	case float64:
		return "number"
	case []any:
		return "list"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}
