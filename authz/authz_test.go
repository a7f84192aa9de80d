package authz

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func mustPolicy(t testing.TB, rules []Rule) *Policy {
	t.Helper()
	p, err := New(rules)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAWSScenario is the example from the AWS Client VPN administrator guide
// ("Authorization rules: example scenarios"): a broad rule for the dev group,
// a host route for managers, and 0.0.0.0/0 for everyone.
func TestAWSScenario(t *testing.T) {
	p := mustPolicy(t, []Rule{
		{Network: pfx("10.0.0.0/16"), Group: "dev"},
		{Network: pfx("10.0.2.119/32"), Group: "managers"},
		{Network: pfx("0.0.0.0/0"), AllGroups: true},
	})
	dev := p.Groups([]string{"dev"})
	managers := p.Groups([]string{"managers"})
	both := p.Groups([]string{"dev", "managers"})
	others := p.Groups([]string{"sales"})
	for _, tc := range []struct {
		who  string
		g    Groups
		dst  string
		want bool
	}{
		{"dev", dev, "10.0.1.5", true},
		{"dev", dev, "10.0.2.119", false}, // the /32 beats the /16
		{"dev", dev, "8.8.8.8", true},
		{"managers", managers, "10.0.2.119", true},
		{"managers", managers, "10.0.1.5", false}, // the /16 beats 0/0
		{"managers", managers, "8.8.8.8", true},
		{"both", both, "10.0.1.5", true},
		{"both", both, "10.0.2.119", true},
		{"others", others, "10.0.1.5", false},
		{"others", others, "10.0.2.119", false},
		{"others", others, "8.8.8.8", true},
		{"others", others, "10.1.0.1", true},
		{"nobody", Groups{}, "10.0.0.0", false},
		{"nobody", Groups{}, "192.168.1.1", true},
	} {
		if got := p.Allowed(addr(tc.dst), tc.g); got != tc.want {
			t.Errorf("%s → %s: Allowed = %v, want %v", tc.who, tc.dst, got, tc.want)
		}
	}
}

func TestRulesOnSameNetworkAddUp(t *testing.T) {
	p := mustPolicy(t, []Rule{
		{Network: pfx("172.31.0.0/16"), Group: "a"},
		{Network: pfx("172.31.0.0/16"), Group: "b"},
		{Network: pfx("172.31.5.0/24"), Group: "c"},
		{Network: pfx("172.31.5.0/24"), AllGroups: true},
	})
	for _, tc := range []struct {
		groups []string
		dst    string
		want   bool
	}{
		{[]string{"a"}, "172.31.1.1", true},
		{[]string{"b"}, "172.31.1.1", true},
		{[]string{"c"}, "172.31.1.1", false},
		{nil, "172.31.5.9", true}, // AllGroups on the /24
		{[]string{"a"}, "172.31.5.9", true},
		{[]string{"a"}, "172.32.0.1", false}, // no rule: default deny
	} {
		if got := p.Allowed(addr(tc.dst), p.Groups(tc.groups)); got != tc.want {
			t.Errorf("%v → %s: Allowed = %v, want %v", tc.groups, tc.dst, got, tc.want)
		}
	}
}

func TestNoRulesDeniesAll(t *testing.T) {
	p := mustPolicy(t, nil)
	for _, d := range []string{"0.0.0.0", "10.0.0.1", "255.255.255.255"} {
		if p.Allowed(addr(d), p.Groups([]string{"x"})) {
			t.Errorf("empty policy allows %s", d)
		}
	}
}

func TestRuleWithoutGroupDeniesItsNetwork(t *testing.T) {
	p := mustPolicy(t, []Rule{
		{Network: pfx("0.0.0.0/0"), AllGroups: true},
		{Network: pfx("10.9.0.0/16")},
	})
	if p.Allowed(addr("10.9.1.1"), Groups{}) {
		t.Error("rule with no group authorized someone")
	}
	if !p.Allowed(addr("10.8.1.1"), Groups{}) {
		t.Error("0.0.0.0/0 for all groups does not apply")
	}
}

func TestNewRejects(t *testing.T) {
	for _, r := range []Rule{
		{Network: pfx("10.0.0.1/16"), AllGroups: true},
		{Network: pfx("2001:db8::1/48"), AllGroups: true},
		{Network: pfx("::ffff:10.0.0.0/104"), AllGroups: true},
		{Network: pfx("::ffff:0:0/96"), AllGroups: true},
		{AllGroups: true},
	} {
		if _, err := New([]Rule{r}); !errors.Is(err, ErrBadRule) {
			t.Errorf("New(%+v) = %v, want ErrBadRule", r, err)
		}
	}
}

func TestNonIPv4DestinationDenied(t *testing.T) {
	p := mustPolicy(t, []Rule{{Network: pfx("0.0.0.0/0"), AllGroups: true}})
	for _, d := range []netip.Addr{addr("::1"), addr("::ffff:10.0.0.1"), {}} {
		if p.Allowed(d, Groups{}) {
			t.Errorf("Allowed(%v) = true", d)
		}
	}
}

// TestIPv6Scenario is TestAWSScenario with IPv6 networks: the same
// longest-prefix-then-groups decision, ::/0 in the place of 0.0.0.0/0.
func TestIPv6Scenario(t *testing.T) {
	p := mustPolicy(t, []Rule{
		{Network: pfx("2001:db8:a::/48"), Group: "dev"},
		{Network: pfx("2001:db8:a:2::119/128"), Group: "managers"},
		{Network: pfx("::/0"), AllGroups: true},
	})
	dev := p.Groups([]string{"dev"})
	managers := p.Groups([]string{"managers"})
	others := p.Groups([]string{"sales"})
	for _, tc := range []struct {
		who  string
		g    Groups
		dst  string
		want bool
	}{
		{"dev", dev, "2001:db8:a:1::5", true},
		{"dev", dev, "2001:db8:a:2::119", false}, // the /128 beats the /48
		{"dev", dev, "2001:4860:4860::8888", true},
		{"managers", managers, "2001:db8:a:2::119", true},
		{"managers", managers, "2001:db8:a:2::118", false}, // the /48 beats ::/0
		{"managers", managers, "2606:4700::1111", true},
		{"others", others, "2001:db8:a:ffff::1", false},
		{"others", others, "2001:db8:b::1", true},
		{"nobody", Groups{}, "2001:db8:a::", false},
		{"nobody", Groups{}, "::", true},
		{"nobody", Groups{}, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true},
		// No IPv4 rule: the IPv6 default does not cover IPv4.
		{"dev", dev, "8.8.8.8", false},
		{"nobody", Groups{}, "10.0.0.1", false},
	} {
		if got := p.Allowed(addr(tc.dst), tc.g); got != tc.want {
			t.Errorf("%s → %s: Allowed = %v, want %v", tc.who, tc.dst, got, tc.want)
		}
	}
}

// TestFamiliesDoNotCross checks that a rule decides only for its own family,
// whatever its length: ::/0 is not more specific than 10.0.0.0/8 for an
// IPv4 destination, nor 0.0.0.0/0 for an IPv6 one.
func TestFamiliesDoNotCross(t *testing.T) {
	p := mustPolicy(t, []Rule{
		{Network: pfx("0.0.0.0/0"), AllGroups: true},
		{Network: pfx("10.0.0.0/8"), Group: "dev"},
		{Network: pfx("::/0"), Group: "v6"},
		{Network: pfx("fd00::/8")}, // denies fd00::/8 to everyone
	})
	dev, v6 := p.Groups([]string{"dev"}), p.Groups([]string{"v6"})
	for _, tc := range []struct {
		g    Groups
		dst  string
		want bool
	}{
		{v6, "10.1.1.1", false},
		{dev, "10.1.1.1", true},
		{v6, "8.8.8.8", true},
		{Groups{}, "8.8.8.8", true},
		{Groups{}, "2001:db8::1", false}, // 0.0.0.0/0 for all does not reach IPv6
		{dev, "2001:db8::1", false},
		{v6, "2001:db8::1", true},
		{v6, "fd00::1", false},
		{v6, "fe00::1", true},
	} {
		if got := p.Allowed(addr(tc.dst), tc.g); got != tc.want {
			t.Errorf("%v → %s: Allowed = %v, want %v", tc.g, tc.dst, got, tc.want)
		}
	}
}

// TestMappedDestinationIsIPv6 pins the choice for ::ffff:a.b.c.d: it is an
// IPv6 destination, never matched by an IPv4 rule, matched by IPv6 rules
// that contain it.
func TestMappedDestinationIsIPv6(t *testing.T) {
	p := mustPolicy(t, []Rule{{Network: pfx("10.0.0.0/8"), AllGroups: true}})
	if p.Allowed(addr("::ffff:10.0.0.1"), Groups{}) {
		t.Error("an IPv4 rule authorizes an IPv4-mapped IPv6 destination")
	}
	p = mustPolicy(t, []Rule{
		{Network: pfx("10.0.0.0/8"), AllGroups: true},
		{Network: pfx("::/0"), Group: "v6"},
		{Network: pfx("::/80"), AllGroups: true}, // contains ::ffff:0:0/96
	})
	if !p.Allowed(addr("::ffff:10.0.0.1"), Groups{}) {
		t.Error("::/80 for all groups does not cover ::ffff:10.0.0.1")
	}
	if p.Allowed(addr("::1:0:0:0"), Groups{}) || !p.Allowed(addr("::1:0:0:0"), p.Groups([]string{"v6"})) {
		t.Error("::/0 does not decide outside ::/80")
	}
}

func TestZonedDestinationDenied(t *testing.T) {
	p := mustPolicy(t, []Rule{{Network: pfx("::/0"), AllGroups: true}})
	if !p.Allowed(addr("fe80::1"), Groups{}) {
		t.Fatal("::/0 for all groups denies fe80::1")
	}
	if p.Allowed(addr("fe80::1%eth0"), Groups{}) {
		t.Error("zoned address allowed")
	}
}

func TestGroupsFromAnotherPolicyCountAsNone(t *testing.T) {
	rules := []Rule{
		{Network: pfx("10.0.0.0/8"), Group: "dev"},
		{Network: pfx("0.0.0.0/0"), AllGroups: true},
	}
	p1, p2 := mustPolicy(t, rules), mustPolicy(t, rules)
	g1 := p1.Groups([]string{"dev"})
	if !p1.Allowed(addr("10.1.1.1"), g1) {
		t.Fatal("dev denied 10.1.1.1 under its own policy")
	}
	if p2.Allowed(addr("10.1.1.1"), g1) {
		t.Error("Groups from p1 grant access under p2")
	}
	if !p2.Allowed(addr("8.8.8.8"), g1) {
		t.Error("Groups from p1 lose all-groups access under p2")
	}
	if g1 != p1.Groups([]string{"ops", "dev"}) {
		t.Error("Groups not comparable by value")
	}
	if !p1.Groups([]string{"ops"}).Empty() || g1.Empty() {
		t.Error("Empty wrong")
	}
}

// TestManyGroups uses more groups than fit inline.
func TestManyGroups(t *testing.T) {
	var rules []Rule
	for i := range 300 {
		rules = append(rules, Rule{Network: pfx(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)), Group: fmt.Sprintf("g%d", i)})
	}
	p := mustPolicy(t, rules)
	for _, i := range []int{0, 63, 64, 127, 128, 129, 200, 299} {
		g := p.Groups([]string{fmt.Sprintf("g%d", i)})
		for _, j := range []int{0, 63, 64, 127, 128, 129, 200, 299} {
			dst := addr(fmt.Sprintf("10.%d.%d.7", j/256, j%256))
			if got := p.Allowed(dst, g); got != (i == j) {
				t.Errorf("g%d → %v: Allowed = %v", i, dst, got)
			}
		}
	}
	if a, b := p.Groups([]string{"g250", "g5"}), p.Groups([]string{"g5", "g250", "nope"}); a != b {
		t.Error("equal group sets compare unequal")
	}
}

// slowAllowed is the rule semantics written as directly as possible.
func slowAllowed(rules []Rule, dst netip.Addr, groups []string) bool {
	best := -1
	for _, r := range rules {
		if r.Network.Contains(dst) && r.Network.Bits() > best {
			best = r.Network.Bits()
		}
	}
	for _, r := range rules {
		if r.Network.Bits() != best || !r.Network.Contains(dst) {
			continue
		}
		if r.AllGroups {
			return true
		}
		for _, g := range groups {
			if r.Group != "" && g == r.Group {
				return true
			}
		}
	}
	return false
}

func TestDifferential(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	// Addresses are drawn near a few bases so that random prefixes overlap.
	bases := []uint32{0x0a000000, 0x0a00ff00, 0xac1f0000, 0xc0a80100}
	randAddr := func() netip.Addr {
		u := bases[rng.IntN(len(bases))] ^ rng.Uint32()>>(8+rng.IntN(25))
		return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
	}
	randNetwork := func() (netip.Prefix, bool) { return netip.PrefixFrom(randAddr(), rng.IntN(33)).Masked(), true }
	n := differential(t, rng, 140, randNetwork, randAddr) // more groups than the inline words hold
	// Both answers must be common, or the test proves little.
	if n.allowed[4] < 5000 || n.denied[4] < 5000 {
		t.Errorf("differential drew %d allows and %d denies", n.allowed[4], n.denied[4])
	}
}

// tally counts a differential run's answers by the destination's family (4 or 6).
type tally struct{ allowed, denied [7]int }

// differential compares Allowed with slowAllowed over 300 random policies of up to 40 rules
// (networks from randNetwork, which may decline one) over groups of that many names, 200
// random users and destinations (randAddr) each, and counts the answers.
func differential(t *testing.T, rng *rand.Rand, groups int, randNetwork func() (netip.Prefix, bool), randAddr func() netip.Addr) tally {
	t.Helper()
	names := make([]string, groups)
	for i := range names {
		names[i] = fmt.Sprintf("group-%d", i)
	}
	var n tally
	for round := range 300 {
		var rules []Rule
		for range rng.IntN(40) {
			network, ok := randNetwork()
			if !ok {
				continue
			}
			r := Rule{Network: network}
			switch rng.IntN(10) {
			case 0:
				r.AllGroups = true
			case 1:
			default:
				r.Group = names[rng.IntN(len(names))]
			}
			rules = append(rules, r)
		}
		p := mustPolicy(t, rules)
		for range 200 {
			var user []string
			for range rng.IntN(4) {
				user = append(user, names[rng.IntN(len(names))])
			}
			g := p.Groups(user)
			dst := randAddr()
			got, want := p.Allowed(dst, g), slowAllowed(rules, dst, user)
			if got != want {
				t.Fatalf("round %d: rules %v, groups %v, dst %v: Allowed = %v, want %v", round, rules, user, dst, got, want)
			}
			family := 4
			if dst.Is6() {
				family = 6
			}
			if got {
				n.allowed[family]++
			} else {
				n.denied[family]++
			}
		}
	}
	return n
}

// mixedAddr draws IPv4 and IPv6 addresses (some IPv4-mapped) near a few
// bases, so that random prefixes overlap and both families meet in one
// policy.
func mixedAddr(rng *rand.Rand) netip.Addr {
	bases := []string{
		"10.0.0.0", "10.0.255.0", "192.168.1.0",
		"2001:db8::", "2001:db8:0:ff00::", "fd00:1:2:3::", "::", "::ffff:10.0.0.0",
	}
	b := addr(bases[rng.IntN(len(bases))])
	if b.Is4() {
		u := addrBits(b) ^ rng.Uint32()>>(8+rng.IntN(25))
		return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
	}
	a := b.As16()
	// Flip random bits in the low part, more often in the last bytes.
	for range 1 + rng.IntN(3) {
		i := 15 - rng.IntN(1+rng.IntN(16))
		a[i] ^= byte(rng.Uint32())
	}
	return netip.AddrFrom16(a)
}

func TestDifferentialMixedFamilies(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 17))
	randNetwork := func() (netip.Prefix, bool) {
		a := mixedAddr(rng)
		n := netip.PrefixFrom(a, rng.IntN(a.BitLen()+1)).Masked()
		// New rejects IPv4-mapped networks (TestNewRejects).
		return n, !n.Addr().Is4In6() || n.Bits() < 96
	}
	n := differential(t, rng, 70, randNetwork, func() netip.Addr { return mixedAddr(rng) })
	if n.allowed[4] < 2000 || n.denied[4] < 2000 || n.allowed[6] < 2000 || n.denied[6] < 2000 {
		t.Errorf("differential drew %d/%d IPv4 and %d/%d IPv6 allows/denies", n.allowed[4], n.denied[4], n.allowed[6], n.denied[6])
	}
}

func benchPolicy(tb testing.TB) (*Policy, Groups) {
	rules := []Rule{
		{Network: pfx("0.0.0.0/0"), AllGroups: true},
		{Network: pfx("10.0.0.0/16"), Group: "dev"},
		{Network: pfx("10.0.2.119/32"), Group: "managers"},
	}
	for i := range 50 {
		rules = append(rules, Rule{Network: pfx(fmt.Sprintf("172.%d.%d.0/24", 16+i%16, i)), Group: fmt.Sprintf("team%d", i)})
	}
	// The same shape in IPv6, in the same table.
	rules = append(rules,
		Rule{Network: pfx("::/0"), AllGroups: true},
		Rule{Network: pfx("2001:db8:a::/48"), Group: "dev"},
		Rule{Network: pfx("2001:db8:a:2::119/128"), Group: "managers"},
	)
	for i := range 50 {
		rules = append(rules, Rule{Network: pfx(fmt.Sprintf("2001:db8:%x:%x::/64", 16+i%16, i)), Group: fmt.Sprintf("team%d", i)})
	}
	p := mustPolicy(tb, rules)
	return p, p.Groups([]string{"dev", "team3"})
}

func TestAllowedAllocs(t *testing.T) {
	p, g := benchPolicy(t)
	for _, dst := range []netip.Addr{addr("10.0.2.119"), addr("2001:db8:a:2::119"), addr("::ffff:10.0.2.119"), addr("2001:db8:13:3::1")} {
		if n := testing.AllocsPerRun(1000, func() { p.Allowed(dst, g) }); n != 0 {
			t.Errorf("Allowed(%v) allocates %v times per call", dst, n)
		}
	}
}

func BenchmarkAllowed(b *testing.B) {
	p, g := benchPolicy(b)
	dsts := []netip.Addr{addr("10.0.2.119"), addr("10.0.1.5"), addr("172.19.3.4"), addr("8.8.8.8")}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p.Allowed(dsts[i&3], g)
		i++
	}
}

// BenchmarkAllowed6 is BenchmarkAllowed for IPv6 destinations in the same
// table: a /128 host (a walk of sixteen nodes), a /48, a /64 and the default.
func BenchmarkAllowed6(b *testing.B) {
	p, g := benchPolicy(b)
	dsts := []netip.Addr{addr("2001:db8:a:2::119"), addr("2001:db8:a:1::5"), addr("2001:db8:13:3::4"), addr("2001:4860:4860::8888")}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p.Allowed(dsts[i&3], g)
		i++
	}
}

// TestTrieNodes pins the memory the Policy comment promises: a prefix of
// length L adds at most ceil(L/8)-1 nodes, and prefixes share their path.
func TestTrieNodes(t *testing.T) {
	for _, tc := range []struct {
		rules []string
		nodes int // beyond the two roots
	}{
		{[]string{"0.0.0.0/0", "::/0", "10.0.0.0/8", "2000::/3"}, 0},
		{[]string{"10.0.0.0/16"}, 1},
		{[]string{"10.0.2.119/32"}, 3},
		{[]string{"2001:db8:a::/48"}, 5},
		{[]string{"2001:db8:a::/48", "2001:db8:b::/48"}, 5}, // they differ in the last octet they fix
		{[]string{"2001:db8:a::/48", "2001:db9:a::/48"}, 7}, // three shared, two each
		{[]string{"2001:db8:a:2::119/128"}, 15},
		{[]string{"2001:db8:a::/48", "2001:db8:a:2::119/128"}, 15},
	} {
		var rules []Rule
		for _, s := range tc.rules {
			rules = append(rules, Rule{Network: pfx(s), AllGroups: true})
		}
		if p := mustPolicy(t, rules); len(p.nodes) != 2+tc.nodes {
			t.Errorf("%v: %d nodes, want 2 + %d", tc.rules, len(p.nodes), tc.nodes)
		}
	}
}

// addrBits is an IPv4 address as a number.
func addrBits(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
