package authz

import "errors"

// ErrBadRule is returned by New for a rule it cannot enforce: its network is
// not an IP prefix in canonical (masked) form, or it is an IPv4-mapped IPv6
// network.
var ErrBadRule = errors.New("authz: invalid rule")
