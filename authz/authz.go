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
	// def is the entry for 0.0.0.0/0, or -1.
	def int32
	// nodes is a multibit trie with 8-bit strides over the destination
	// address: nodes[0] is the root and looks at the first octet, its
	// children the second, and so on. A prefix of length L in (8k, 8k+8]
	// is expanded into the 2^(8k+8-L) slots it covers in a node at depth k;
	// a longer prefix overwrites a shorter one in the same slot. A lookup
	// walks at most four nodes and keeps the last entry it passed.
	nodes []node
}

type node [256]slot

type slot struct {
	entry int32  // index in Policy.entries, or -1
	child uint32 // index in Policy.nodes, or 0 for none (the root is nobody's child)
}

var policyIDs atomic.Uint64

// New builds a Policy from rules. It fails if a rule's network is not a
// masked IPv4 prefix. No rules means every destination is denied.
func New(rules []Rule) (*Policy, error) {
	p := &Policy{
		id:    policyIDs.Add(1),
		group: map[string]int{},
		def:   -1,
	}
	byNet := map[netip.Prefix]int{}
	for i, r := range rules {
		n := r.Network
		switch {
		case !n.IsValid() || !n.Addr().Is4():
			return nil, fmt.Errorf("authz: rule %d: network %v is not IPv4: %w", i, n, ErrBadRule)
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
	p.nodes = []node{emptyNode()}
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
	if bits == 0 {
		p.def = e
		return
	}
	a := addrBits(n.Addr())
	cur := uint32(0)
	shift := 24
	// Walk down to the node at depth (bits-1)/8, creating nodes on the way.
	for depth := 0; depth < (bits-1)/8; depth++ {
		i := (a >> shift) & 0xff
		if p.nodes[cur][i].child == 0 {
			p.nodes = append(p.nodes, emptyNode())
			p.nodes[cur][i].child = uint32(len(p.nodes) - 1)
		}
		cur = p.nodes[cur][i].child
		shift -= 8
	}
	// The prefix fixes the top (bits - 8*depth) bits of this node's octet.
	fixed := bits - (24 - shift)
	first := (a >> shift) & 0xff
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

// Allowed reports whether a user in groups g may reach dst. It does not
// allocate. dst must be IPv4 (an IPv4-mapped IPv6 address is not); anything
// else is denied. Groups from another Policy count as no group, so the user
// keeps only what every group may reach until the caller recomputes them.
func (p *Policy) Allowed(dst netip.Addr, g Groups) bool {
	if !dst.Is4() {
		return false
	}
	e := p.lookup(addrBits(dst))
	if e < 0 {
		return false
	}
	ent := &p.entries[e]
	if ent.all {
		return true
	}
	return g.policy == p.id && ent.groups.intersects(&g)
}

// lookup returns the entry of the longest prefix containing a, or -1.
func (p *Policy) lookup(a uint32) int32 {
	best := p.def
	cur := uint32(0)
	for shift := 24; shift >= 0; shift -= 8 {
		s := p.nodes[cur][(a>>shift)&0xff]
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

func addrBits(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
