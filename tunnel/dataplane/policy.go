package dataplane

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cvpn/cvpn/authz"
)

// Policy is the per-packet configuration: an immutable snapshot swapped atomically on reload.
// Build it with NewPolicy.
type Policy struct {
	Authz *authz.Policy
	// Routes are pushed to clients; in split-tunnel mode only destinations they cover are
	// forwarded. ClientToClient (a `target: local` route to the client CIDR) lets clients reach
	// each other, still subject to Authz.
	Routes         []netip.Prefix
	ClientToClient bool
	SplitTunnel    bool
	DNS            []netip.Addr
	// Bandwidth is each connection's limit in bits per second, per direction (0 = unlimited);
	// GroupBandwidth overrides it for members of a group (the largest override of a user's groups
	// applies).
	Bandwidth      float64
	GroupBandwidth map[string]float64
	// Host are the destinations that are the endpoint host itself: its addresses on every
	// interface, the loopback range, its broadcast and multicast destinations and the SNAT
	// address (package tunnel/host finds them; WithHost replaces them when they change).
	// Packets to them that a route covers are dropped (counters.HostAddress), whatever Authz
	// says, unless AllowHostAccess (allow_host_access) lets them on to Authz like any
	// destination. The client CIDR's gateway address belongs to the endpoint whatever these say:
	// it answers ping and nothing else.
	Host            []netip.Prefix
	AllowHostAccess bool

	routeTable *authz.Policy // Routes as a longest-prefix table; nil in full-tunnel mode
	host       hostSet       // Host, for lookups
}

// NewPolicy validates and completes a policy snapshot.
func NewPolicy(p Policy) (*Policy, error) {
	if p.Authz == nil {
		return nil, errors.New("dataplane: policy without authorization rules")
	}
	if p.SplitTunnel {
		rules := make([]authz.Rule, 0, len(p.Routes))
		for _, r := range p.Routes {
			rules = append(rules, authz.Rule{Network: r, AllGroups: true})
		}
		t, err := authz.New(rules)
		if err != nil {
			return nil, fmt.Errorf("dataplane: routes: %w", err)
		}
		p.routeTable = t
	}
	p.host = newHostSet(p.Host)
	return &p, nil
}

// WithHost returns a copy of the policy whose host destinations are host (Policy.Host), for
// when the host's addresses change; invalid prefixes are left out. The copy is a new snapshot:
// SetPolicy installs it.
func (p *Policy) WithHost(host []netip.Prefix) *Policy {
	q := *p
	q.Host = host
	q.host = newHostSet(host)
	return &q
}

// routed reports whether dst is covered by a route (always, in full-tunnel mode).
func (p *Policy) routed(dst netip.Addr) bool {
	return p.routeTable == nil || p.routeTable.Allowed(dst, authz.Groups{})
}

// limitFor returns the bandwidth limit of a user with these groups.
func (p *Policy) limitFor(groups []string) float64 {
	limit, found := p.Bandwidth, false
	for _, g := range groups {
		if l, ok := p.GroupBandwidth[g]; ok {
			if l == 0 {
				return 0 // an unlimited group wins
			}
			if !found || l > limit {
				limit, found = l, true
			}
		}
	}
	return limit
}
