package privdrop

import (
	"slices"
	"strings"
	"testing"
)

// cvpnCaps are the two capabilities cvpn keeps.
var cvpnCaps = SetOf(NetAdmin, NetBindService)

func TestSetOf(t *testing.T) {
	// /proc prints CAP_NET_BIND_SERVICE (10) and CAP_NET_ADMIN (12) as 0000000000001400.
	if cvpnCaps != 0x1400 {
		t.Errorf("SetOf(NetAdmin, NetBindService) = %#x, want 0x1400", uint64(cvpnCaps))
	}
	if !cvpnCaps.Has(NetAdmin) || !cvpnCaps.Has(NetBindService) || cvpnCaps.Has(13) || cvpnCaps.Has(64) {
		t.Errorf("Has is wrong for %s", cvpnCaps)
	}
	if got := cvpnCaps.Caps(); !slices.Equal(got, []Cap{NetBindService, NetAdmin}) {
		t.Errorf("Caps = %v", got)
	}
	if got := cvpnCaps.String(); got != "cap_net_bind_service,cap_net_admin" {
		t.Errorf("String = %q", got)
	}
	if got := Set(0).String(); got != "none" {
		t.Errorf("empty String = %q", got)
	}
	if got := SetOf(40).String(); got != "cap_40" {
		t.Errorf("unnamed String = %q", got)
	}
}

// TestCapData: the capset argument for cvpn's two capabilities is one word per set, the second
// element (capabilities 32-63) empty; a high capability lands in the second element; and the
// conversion round-trips.
func TestCapData(t *testing.T) {
	d := capData(cvpnCaps, cvpnCaps, 0)
	if d[0].Effective != 0x1400 || d[0].Permitted != 0x1400 || d[0].Inheritable != 0 {
		t.Errorf("element 0 = %+v, want effective and permitted 0x1400", d[0])
	}
	if d[1].Effective != 0 || d[1].Permitted != 0 || d[1].Inheritable != 0 {
		t.Errorf("element 1 = %+v, want zero", d[1])
	}
	high := SetOf(38, 0) // CAP_PERFMON, CAP_CHOWN
	d = capData(high, 0, high)
	if d[0].Effective != 1 || d[1].Effective != 1<<(38-32) || d[1].Inheritable != 1<<(38-32) || d[1].Permitted != 0 {
		t.Errorf("high capabilities: %+v", d)
	}
	for _, sets := range [][3]Set{{cvpnCaps, cvpnCaps, 0}, {high, 0, high}, {^Set(0), 1 << 63, 0x8000_0001}} {
		e, p, i := fromCapData(capData(sets[0], sets[1], sets[2]))
		if e != sets[0] || p != sets[1] || i != sets[2] {
			t.Errorf("round trip of %v: %v %v %v", sets, e, p, i)
		}
	}
}

// sampleStatus is a status file of a process dropped the way Drop does, trimmed.
const sampleStatus = `Name:	cvpn
Umask:	0022
State:	S (sleeping)
Tgid:	4242
Uid:	65534	65534	65534	65534
Gid:	65534	65534	65534	65534
FDSize:	64
Groups:	65534 
CapInh:	0000000000000000
CapPrm:	0000000000001400
CapEff:	0000000000001400
CapBnd:	0000000000001400
CapAmb:	0000000000000000
NoNewPrivs:	1
Seccomp:	0
`

func TestParseStatus(t *testing.T) {
	st, err := ParseStatus(strings.NewReader(sampleStatus))
	if err != nil {
		t.Fatal(err)
	}
	if st.UID != [4]int{65534, 65534, 65534, 65534} || st.GID != [4]int{65534, 65534, 65534, 65534} {
		t.Errorf("ids %v %v", st.UID, st.GID)
	}
	if !slices.Equal(st.Groups, []int{65534}) {
		t.Errorf("groups %v", st.Groups)
	}
	if st.CapEff != cvpnCaps || st.CapPrm != cvpnCaps || st.CapBnd != cvpnCaps || st.CapInh != 0 || st.CapAmb != 0 || !st.NoNewPrivs {
		t.Errorf("status %+v", st)
	}
	nobody := Target{UID: 65534, GID: 65534, Groups: []int{65534}, Keep: cvpnCaps}
	if err := nobody.matches(st); err != nil {
		t.Errorf("matches: %v", err)
	}
	for _, tc := range []struct {
		edit func(*Status)
		want string
	}{
		{func(s *Status) { s.UID[2] = 0 }, "uids [65534 65534 0 65534], want 65534"},
		{func(s *Status) { s.GID[0] = 0 }, "gids"},
		{func(s *Status) { s.Groups = append(s.Groups, 0) }, "groups"},
		{func(s *Status) { s.CapEff |= SetOf(21) }, "effective cap_net_bind_service,cap_net_admin,cap_sys_admin"},
		{func(s *Status) { s.CapPrm = SetOf(NetAdmin) }, "permitted cap_net_admin,"},
		{func(s *Status) { s.CapAmb = SetOf(NetAdmin) }, "ambient cap_net_admin"},
		{func(s *Status) { s.CapInh = SetOf(NetAdmin) }, "inheritable cap_net_admin"},
		{func(s *Status) { s.NoNewPrivs = false }, "no_new_privs"},
	} {
		s := st
		s.Groups = slices.Clone(st.Groups)
		tc.edit(&s)
		if err := nobody.matches(s); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("matches = %v, want %q", err, tc.want)
		}
	}
}

func TestParseStatusRefuses(t *testing.T) {
	for _, tc := range []struct{ edit, want string }{
		{"CapEff:\t0000000000001400\n", "no CapEff line"},
		{"CapEff:\t0000000000001400\n|CapEff:\t1400\n", "want 16 hex digits"},
		{"CapEff:\t0000000000001400\n|CapEff:\t000000000000140g\n", "line CapEff"},
		{"Uid:\t65534\t65534\t65534\t65534\n|Uid:\t1 2 3\n", "want 4 ids"},
		{"Uid:\t65534\t65534\t65534\t65534\n|Uid:\t1 2 3 -4\n", "line Uid"},
		{"NoNewPrivs:\t1\n|NoNewPrivs:\t2\n", "not 0 or 1"},
		{"Groups:\t65534 \n|Groups:\tx\n", "line Groups"},
	} {
		from, to, _ := strings.Cut(tc.edit, "|")
		_, err := ParseStatus(strings.NewReader(strings.Replace(sampleStatus, from, to, 1)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.edit, err, tc.want)
		}
	}
}

// TestReadStatusSelf: the test's own status parses, and its CapEff line is what capget says for
// the calling thread (the same on every thread of a process nobody changed).
func TestReadStatusSelf(t *testing.T) {
	st, err := ReadStatus(0)
	if err != nil {
		t.Fatal(err)
	}
	eff, err := Effective()
	if err != nil {
		t.Fatal(err)
	}
	if st.CapEff != eff {
		t.Errorf("/proc/self/status CapEff %s, capget %s", st.CapEff, eff)
	}
	if _, err := ReadStatus(1 << 30); err == nil {
		t.Error("ReadStatus of a process that cannot exist succeeded")
	}
}
