package authz

import "errors"

// ErrBadRule is returned by New for a rule it cannot enforce: its network is
// not an IPv4 prefix in canonical (masked) form.
var ErrBadRule = errors.New("authz: invalid rule")
