package directory

import (
	"errors"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"
)

func TestDecodeSID(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
	}{
		// BUILTIN\Administrators (MS-DTYP 2.4.2.4 well-known SIDs).
		{[]byte{1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0}, "S-1-5-32-544"},
		// Everyone: S-1-1-0.
		{[]byte{1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, "S-1-1-0"},
		// A domain account: S-1-5-21-3623811015-3361044348-30300820-1013.
		{[]byte{1, 5, 0, 0, 0, 0, 0, 5, 0x15, 0, 0, 0, 0xc7, 0xf7, 0xfe, 0xd7, 0x7c, 0x77, 0x55, 0xc8, 0x94, 0x5a, 0xce, 0x01, 0xf5, 0x03, 0, 0}, "S-1-5-21-3623811015-3361044348-30300820-1013"},
		// An authority of 2^32 or more is written in hex.
		{[]byte{1, 0, 0, 1, 0, 0, 0, 0}, "S-1-0x000100000000"},
	} {
		got, err := decodeSID(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("decodeSID(% x) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range [][]byte{nil, {1}, {2, 0, 0, 0, 0, 0, 0, 5}, {1, 1, 0, 0, 0, 0, 0, 5}, {1, 16, 0, 0, 0, 0, 0, 5}, {1, 0, 0, 0, 0, 0, 0, 5, 0}} {
		if s, err := decodeSID(bad); !errors.Is(err, errBadSID) {
			t.Errorf("decodeSID(% x) = %q, %v; want errBadSID", bad, s, err)
		}
	}
}

func FuzzDecodeSID(f *testing.F) {
	f.Add([]byte{1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0})
	f.Add([]byte{1, 0, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeSID(b)
		if err != nil {
			return
		}
		if !strings.HasPrefix(s, "S-1-") || strings.Count(s, "-") != 2+int(b[1]) {
			t.Fatalf("decodeSID(% x) = %q", b, s)
		}
	})
}

func TestGroupMatches(t *testing.T) {
	g := Group{DN: "CN=VPN Users,OU=Groups,DC=corp,DC=example,DC=com", CN: "VPN Users", SID: "S-1-5-21-1-2-3-1105"}
	for _, id := range []string{"vpn users", "VPN USERS", " VPN Users ", "cn=vpn users,ou=groups,dc=corp,dc=example,dc=com",
		"CN=VPN Users, OU=Groups, DC=corp, DC=example, DC=com", "s-1-5-21-1-2-3-1105"} {
		if !g.Matches(id) {
			t.Errorf("%+v does not match %q", g, id)
		}
	}
	for _, id := range []string{"", "vpn", "VPN Users2", "cn=VPN Users,dc=corp,dc=example,dc=com", "S-1-5-21-1-2-3-110",
		"cn=VPN Users", "=", "cn=vpn users,ou=groups,dc=corp,dc=example,dc=com,dc=x"} {
		if g.Matches(id) {
			t.Errorf("%+v matches %q", g, id)
		}
	}
	if (Group{}).Matches("") {
		t.Error("the empty group matches the empty id")
	}
	if got := groupFromDN(`cn=a\2cb,ou=g,dc=x`); got.CN != "a,b" {
		t.Errorf("groupFromDN: CN %q, want a,b", got.CN)
	}
	if got := groupFromDN("ou=g,dc=x"); got.CN != "" {
		t.Errorf("groupFromDN without cn: CN %q", got.CN)
	}
}

// FuzzUserFilter: whatever a client sends as its username, the filter sent to the directory is
// one equality assertion on uid whose value is exactly that username, or the username is refused.
func FuzzUserFilter(f *testing.F) {
	for _, s := range []string{"alice", "*", "*)(uid=*", `a\2a`, "\x00", "é", ")(|(objectClass=*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if checkUsername(name) != nil {
			return
		}
		filter := userFilter("(uid={username})", name)
		p, err := ldap.CompileFilter(filter)
		if err != nil {
			t.Fatalf("username %q gives filter %q that does not compile: %v", name, filter, err)
		}
		if p.Tag != ldap.FilterEqualityMatch || len(p.Children) != 2 || p.Children[1].Data.String() != name {
			t.Fatalf("username %q gives filter %q, not (uid=<literal>)", name, filter)
		}
	})
}
