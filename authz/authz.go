// Package authz decides whether a client may send a packet to a destination,
// following AWS Client VPN authorization rules.
//
// It owns the rule semantics and the per-packet lookup. It does not own where
// rules come from (configuration), how a user's groups are learned
// (authentication), nor routing: a destination the policy allows may still
// have no route.
//
// Semantics, as AWS documents them: access is denied by default. For a
// destination address, among all rules the ones with the longest prefix that
// contains it decide, whatever group they name; access is allowed if one of
// them authorizes all groups or names a group the user belongs to. Several
// rules on the same network add up. A rule for 0.0.0.0/0 therefore only
// decides for destinations no more specific rule covers.
//
// Rules and destinations are IPv4 or IPv6, in one table: an IPv6 rule decides
// only for IPv6 destinations and an IPv4 rule only for IPv4 ones, so ::/0 is
// the IPv6 twin of 0.0.0.0/0, evaluated last among IPv6 rules, and neither
// default covers the other family. An IPv4-mapped IPv6 destination
// (::ffff:a.b.c.d) is an IPv6 address here: the packet path reads it from an
// IPv6 header and forwards the packet as IPv6, so an IPv4 rule must not
// authorize it (and such addresses should not appear in packets at all,
// RFC 5156 section 2.2). It matches IPv6 rules that contain it, such as
// ::/0. A rule naming an IPv4-mapped network (inside ::ffff:0:0/96) is
// rejected: it reads like an IPv4 rule but would authorize only those IPv6
// packets, so it is a mistake in the configuration.
//
// A Policy is immutable; a reload builds a new one and swaps it in (an
// atomic.Pointer at the caller). Groups computed by one Policy mean nothing
// to another: recompute them per connection after a swap.
package authz

import (
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
)

// Rule authorizes a group, or all groups, to reach a network.
type Rule struct {
	Network netip.Prefix
	// Group is the group name (for AWS, the directory group ID or SAML
	// group) this rule authorizes. It is ignored when AllGroups is set.
	// A rule with neither authorizes nobody, but still takes part in the
	// longest-prefix match, so it denies its network to everyone.
	Group     string
	AllGroups bool
}

// inlineWords is how many 64-bit words of group bits a Groups value holds
// inline; groups numbered beyond 64*inlineWords live in Groups.more.
const inlineWords = 2

// Groups is the set of a user's groups, as one Policy numbers them. It is a
// small comparable value: == compares two sets from the same Policy.
type Groups struct {
	// policy is the id of the Policy that numbered the groups; 0 when the
	// set is empty, which means the same thing under every policy.
	policy uint64
	w      [inlineWords]uint64
	// more holds group bits from 64*inlineWords up, eight per byte, least
	// significant bit first, with no trailing zero byte. A string keeps
	// Groups comparable and immutable.
	more string
}

// Empty reports whether g has no group.
func (g Groups) Empty() bool { return g.policy == 0 }

// groupSet is a rule entry's set of authorized groups, numbered like Groups.
type groupSet struct {
	w    [inlineWords]uint64
	more []byte
}

// intersects reports whether the user groups g share a group with s.
func (s *groupSet) intersects(g *Groups) bool {
	if s.w[0]&g.w[0] != 0 || s.w[1]&g.w[1] != 0 {
		return true
	}
	n := min(len(s.more), len(g.more))
	for i := range n {
		if s.more[i]&g.more[i] != 0 {
			return true
		}
	}
	return false
}

func (s *groupSet) add(bit int) {
	if bit < 64*inlineWords {
		s.w[bit/64] |= 1 << (bit % 64)
		return
	}
	bit -= 64 * inlineWords
	for len(s.more) <= bit/8 {
		s.more = append(s.more, 0)
	}
	s.more[bit/8] |= 1 << (bit % 8)
}

// entry is what all rules on one network add up to.
type entry struct {
	all    bool // some rule authorizes all groups
	groups groupSet
}

// Policy is an immutable set of authorization rules.
type Policy struct {
	id uint64
	// group numbers each distinct group name that some rule names.
	group   map[string]int
	entries []entry
	// def4 and def6 are the entries for 0.0.0.0/0 and ::/0, or -1.
	def4, def6 int32
	// nodes holds two multibit tries with 8-bit strides over the
	// destination address, one per family: nodes[root4] and nodes[root6]
	// look at the first octet, their children the second, and so on. A
	// prefix of length L in (8k, 8k+8] is expanded into the 2^(8k+8-L)
	// slots it covers in a node at depth k; a longer prefix overwrites a
	// shorter one in the same slot. A lookup walks at most four nodes for
	// IPv4 and sixteen for IPv6 and keeps the last entry it passed.
	//
	// Memory: a prefix of length L adds at most ceil(L/8)-1 nodes of 2 KiB,
	// so a /48 at most 5 and a /128 at most 15; rules come from the
	// operator's configuration, not from the network.
	nodes []node
}

// The roots of the two tries. Neither is anybody's child, so a child index
// of 0 can mean "none".
const (
	root4 = 0
	root6 = 1
)

type node [256]slot

type slot struct {
	entry int32  // index in Policy.entries, or -1
	child uint32 // index in Policy.nodes, or 0 for none (the root is nobody's child)
}

var policyIDs atomic.Uint64

// New builds a Policy from rules. It fails if a rule's network is not a
// masked IPv4 or IPv6 prefix, or is an IPv4-mapped IPv6 network (see the
// package comment). No rules means every destination is denied.
func New(rules []Rule) (*Policy, error) {
	p := &Policy{
		id:    policyIDs.Add(1),
		group: map[string]int{},
		def4:  -1,
		def6:  -1,
	}
	byNet := map[netip.Prefix]int{}
	for i, r := range rules {
		n := r.Network
		switch {
		case !n.IsValid():
			return nil, fmt.Errorf("authz: rule %d: network %v is not an IP prefix: %w", i, n, ErrBadRule)
		case n.Addr().Is4In6() && n.Bits() >= 96:
			return nil, fmt.Errorf("authz: rule %d: network %v is IPv4-mapped IPv6 (write the IPv4 network %v): %w",
				i, n, netip.PrefixFrom(n.Addr().Unmap(), n.Bits()-96), ErrBadRule)
		case n.Masked() != n:
			return nil, fmt.Errorf("authz: rule %d: network %v is not masked (want %v): %w", i, n, n.Masked(), ErrBadRule)
		}
		e, ok := byNet[n]
		if !ok {
			e = len(p.entries)
			byNet[n] = e
			p.entries = append(p.entries, entry{})
		}
		switch {
		case r.AllGroups:
			p.entries[e].all = true
		case r.Group != "":
			bit, ok := p.group[r.Group]
			if !ok {
				bit = len(p.group)
				p.group[r.Group] = bit
			}
			p.entries[e].groups.add(bit)
		}
	}

	// Insert shorter prefixes first so longer ones overwrite them in the
	// slots they share.
	nets := make([]netip.Prefix, 0, len(byNet))
	for n := range byNet {
		nets = append(nets, n)
	}
	slices.SortFunc(nets, func(a, b netip.Prefix) int { return a.Bits() - b.Bits() })
	p.nodes = []node{root4: emptyNode(), root6: emptyNode()}
	for _, n := range nets {
		p.insert(n, int32(byNet[n]))
	}
	return p, nil
}

func emptyNode() node {
	var n node
	for i := range n {
		n[i].entry = -1
	}
	return n
}

func (p *Policy) insert(n netip.Prefix, e int32) {
	bits := n.Bits()
	var a []byte
	var cur uint32
	if n.Addr().Is4() {
		if bits == 0 {
			p.def4 = e
			return
		}
		b := n.Addr().As4()
		a, cur = b[:], root4
	} else {
		if bits == 0 {
			p.def6 = e
			return
		}
		b := n.Addr().As16()
		a, cur = b[:], root6
	}
	// Walk down to the node at depth (bits-1)/8, creating nodes on the way.
	depth := (bits - 1) / 8
	for _, i := range a[:depth] {
		if p.nodes[cur][i].child == 0 {
			p.nodes = append(p.nodes, emptyNode())
			p.nodes[cur][i].child = uint32(len(p.nodes) - 1)
		}
		cur = p.nodes[cur][i].child
	}
	// The prefix fixes the top (bits - 8*depth) bits of this node's octet.
	fixed := bits - 8*depth
	first := int(a[depth])
	for i := first; i < first+1<<(8-fixed); i++ {
		p.nodes[cur][i].entry = e
	}
}

// Groups returns the set of the named groups that this policy's rules name.
// Unknown names are ignored. Call it once per connection, not per packet.
func (p *Policy) Groups(names []string) Groups {
	var s groupSet
	found := false
	for _, name := range names {
		if bit, ok := p.group[name]; ok {
			s.add(bit)
			found = true
		}
	}
	if !found {
		return Groups{}
	}
	return Groups{policy: p.id, w: s.w, more: string(s.more)}
}

// Allowed reports whether a user in groups g may reach dst, an IPv4 or IPv6
// address. It does not allocate. An IPv4-mapped IPv6 address is IPv6 (see
// the package comment); the zero Addr and zoned addresses are denied.
// Groups from another Policy count as no group, so the user keeps only what
// every group may reach until the caller recomputes them.
func (p *Policy) Allowed(dst netip.Addr, g Groups) bool {
	var e int32
	switch {
	case dst.Is4():
		key := dst.As4()
		e = p.lookup(root4, p.def4, key[:])
	case dst.Is6() && dst.Zone() == "":
		key := dst.As16()
		e = p.lookup(root6, p.def6, key[:])
	default:
		return false
	}
	if e < 0 {
		return false
	}
	ent := &p.entries[e]
	if ent.all {
		return true
	}
	return g.policy == p.id && ent.groups.intersects(&g)
}

// lookup returns the entry of the longest prefix containing the address whose bytes are key
// (4 for IPv4, 16 for IPv6), walking the family's trie from root one byte per level; def is
// the family's /0 entry (or -1).
func (p *Policy) lookup(root uint32, def int32, key []byte) int32 {
	best, cur := def, root
	for _, b := range key {
		s := p.nodes[cur][b]
		if s.entry >= 0 {
			best = s.entry
		}
		if s.child == 0 {
			break
		}
		cur = s.child
	}
	return best
}
