package authz

import (
	"errors"
	"net/netip"
	"testing"
)

// fuzzBases are the addresses fuzzed rules and destinations start from, so
// that they overlap; the input flips bytes of them. They include an
// IPv4-mapped base so that mapped destinations meet ::/0 and short IPv6
// rules, and mapped rules meet New's refusal.
var fuzzBases = [8]netip.Addr{
	addr("10.0.0.0"), addr("10.0.255.0"), addr("192.168.1.0"), addr("0.0.0.0"),
	addr("2001:db8::"), addr("2001:db8:0:ff00::"), addr("::"), addr("::ffff:10.0.0.0"),
}

var fuzzGroups = [8]string{"g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7"}

// fuzzAddr builds an address from 4 bytes of input: a base, then two bytes
// flipped at positions the input picks (counted from the end, where rules
// differ most).
func fuzzAddr(b []byte) netip.Addr {
	base := fuzzBases[b[0]%8]
	if base.Is4() {
		a := base.As4()
		a[3-int(b[1]>>4)%4] ^= b[2]
		a[3-int(b[1]&0xf)%4] ^= b[3]
		return netip.AddrFrom4(a)
	}
	a := base.As16()
	a[15-int(b[1]>>4)] ^= b[2]
	a[15-int(b[1]&0xf)] ^= b[3]
	return netip.AddrFrom16(a)
}

// FuzzAllowed compares Policy.Allowed with slowAllowed over rules of both
// families drawn from the input: 6 bytes a rule (4 for the address, one for
// the length, one for the kind and group), 5 bytes a destination (4 for the
// address, one for the user's groups as a bit set).
func FuzzAllowed(f *testing.F) {
	f.Add([]byte{
		4, 0x00, 0, 0, 0, 0, // ::/0, all groups
		4, 0xd0, 0x0a, 0, 48, 2, // 2001:db8:a::/48, g0
		7, 0x00, 0, 0, 104, 2, // ::ffff:10.0.0.0/104: refused
		0, 0x00, 0, 0, 8, 10, // 10.0.0.0/8, g1
		3, 0x00, 0, 0, 0, 0, // 0.0.0.0/0, all groups
	}, []byte{
		4, 0xd0, 0x0a, 1, 1, // 2001:db8:a::1, g0
		7, 0x00, 0, 1, 0, // ::ffff:10.0.0.1, no group
		0, 0x00, 0, 1, 2, // 10.0.0.1, g1
		6, 0xff, 0xff, 1, 0, // ff00::1
	})
	f.Fuzz(func(t *testing.T, ruleBytes, dstBytes []byte) {
		var rules []Rule
		mapped := false
		for b := ruleBytes; len(b) >= 6 && len(rules) < 64; b = b[6:] {
			a := fuzzAddr(b)
			r := Rule{Network: netip.PrefixFrom(a, int(b[4])%(a.BitLen()+1)).Masked()}
			switch b[5] & 3 {
			case 0:
				r.AllGroups = true
			case 1:
			default:
				r.Group = fuzzGroups[b[5]>>2&7]
			}
			if r.Network.Addr().Is4In6() && r.Network.Bits() >= 96 {
				mapped = true
			}
			rules = append(rules, r)
		}
		p, err := New(rules)
		if mapped {
			// An IPv4-mapped network must be refused; drop those rules and
			// check the rest.
			if !errors.Is(err, ErrBadRule) {
				t.Fatalf("New(%v) = %v, want ErrBadRule", rules, err)
			}
			kept := rules[:0]
			for _, r := range rules {
				if !(r.Network.Addr().Is4In6() && r.Network.Bits() >= 96) {
					kept = append(kept, r)
				}
			}
			rules = kept
			p, err = New(rules)
		}
		if err != nil {
			t.Fatalf("New(%v): %v", rules, err)
		}
		for b := dstBytes; len(b) >= 5; b = b[5:] {
			dst := fuzzAddr(b)
			var user []string
			for i, name := range fuzzGroups {
				if b[4]&(1<<i) != 0 {
					user = append(user, name)
				}
			}
			if got, want := p.Allowed(dst, p.Groups(user)), slowAllowed(rules, dst, user); got != want {
				t.Fatalf("rules %v, groups %v, dst %v: Allowed = %v, want %v", rules, user, dst, got, want)
			}
		}
	})
}
