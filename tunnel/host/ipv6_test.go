package host

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/ippool"
)

// sysctls6 is a fake /proc/sys with IPv6 off (forwarding, proxy NDP and delay as a new
// namespace has them) and one interface that learns routes from router advertisements.
func sysctls6(t *testing.T) (string, map[string]string) {
	t.Helper()
	files := map[string]string{
		"net/ipv6/conf/all/forwarding":    "0\n",
		"net/ipv6/conf/eth1/proxy_ndp":    "0\n",
		"net/ipv6/neigh/eth1/proxy_delay": "80\n",
		"net/ipv6/conf/eth1/accept_ra":    "1\n",
		"net/ipv6/conf/cvpn0/accept_ra":   "1\n",
		"net/ipv6/conf/eth2/accept_ra":    "2\n",
	}
	return procSys(t, files), files
}

// TestSysctls6SetAndRestored: as root, IPv6 traffic sets forwarding, proxy NDP and no proxy delay,
// leaves IPv4's alone, warns about router advertisements, and Close restores them.
func TestSysctls6SetAndRestored(t *testing.T) {
	root, files := sysctls6(t)
	var log testlog.Buffer
	h := newHost(Config{procSys: root, euid: asRoot}, slog.New(slog.NewTextHandler(&log, nil)))
	if err := h.setSysctls("eth1", families{v6: true}); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"net/ipv6/conf/all/forwarding": "1", "net/ipv6/conf/eth1/proxy_ndp": "1", "net/ipv6/neigh/eth1/proxy_delay": "0"} {
		if got := readSysctl(t, root, k); got != want {
			t.Errorf("%s = %s, want %s", k, got, want)
		}
	}
	// This host has no TUN, so cvpn0 is an interface like eth1; eth2 accepts them anyway.
	if !strings.Contains(log.String(), "ignore router advertisements") || !strings.Contains(log.String(), `interfaces="[cvpn0 eth1]"`) {
		t.Errorf("no warning about router advertisements on cvpn0 and eth1 alone: %s", log.String())
	}
	// The TUN is no interface a router advertises on.
	var tunLog testlog.Buffer
	tunHost := newHost(Config{procSys: root, euid: asRoot}, slog.New(slog.NewTextHandler(&tunLog, nil)))
	tunHost.warnAcceptRA("cvpn0")
	if !strings.Contains(tunLog.String(), "interfaces=[eth1]") {
		t.Errorf("the TUN is among the interfaces warned about: %s", tunLog.String())
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	for k, want := range files {
		if got := readSysctl(t, root, k); got != strings.TrimSpace(want) {
			t.Errorf("after Close: %s = %s, want %s back", k, got, want)
		}
	}
}

// TestSysctls6CheckedWhenNotRoot: not root, each IPv6 sysctl is checked and named in turn with
// its sysctl.d line; forwarding's error says what it does to router advertisements.
func TestSysctls6CheckedWhenNotRoot(t *testing.T) {
	root, _ := sysctls6(t)
	h := newHost(Config{procSys: root, euid: asUser}, nil)
	f := families{v6: true}
	for _, step := range []struct{ key, value, want string }{
		{"net/ipv6/conf/all/forwarding", "1", "`net.ipv6.conf.all.forwarding = 1`"},
		{"net/ipv6/conf/eth1/proxy_ndp", "1", "`net.ipv6.conf.eth1.proxy_ndp = 1`"},
		{"net/ipv6/neigh/eth1/proxy_delay", "0", "`net.ipv6.neigh.eth1.proxy_delay = 0`"},
	} {
		err := h.setSysctls("eth1", f)
		if !errors.Is(err, ErrSysctlNotSet) || !strings.Contains(err.Error(), step.want) || !strings.Contains(err.Error(), SysctlFile) {
			t.Fatalf("setSysctls = %v, want %s named", err, step.want)
		}
		ra := strings.Contains(err.Error(), "accept_ra = 2")
		if ra != (step.key == forwarding6) {
			t.Errorf("%s: the router advertisement note is there: %v: %v", step.key, ra, err)
		}
		if err := os.WriteFile(filepath.Join(root, step.key), []byte(step.value+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.setSysctls("eth1", f); err != nil {
		t.Errorf("with all set: %v", err)
	}
	if len(h.undo) != 0 {
		t.Errorf("%d undo steps recorded by checks", len(h.undo))
	}
	// There are no IPv4 files here: IPv6 alone passed without them, dual stack checks them.
	if err := h.setSysctls("eth1", families{v4: true, v6: true}); err == nil || !strings.Contains(err.Error(), "net.ipv4.ip_forward") {
		t.Errorf("dual stack without the IPv4 files: %v", err)
	}
}

func TestCheckFamilies(t *testing.T) {
	for _, tc := range []struct {
		cfg   Config
		want  string // "" when accepted
		count int
	}{
		{Config{SNAT: netip.MustParseAddr("10.0.1.2")}, "", 0},
		{Config{Client6: netip.MustParsePrefix("2001:db8::/120")}, "", 256},
		{Config{Client6: netip.MustParsePrefix("2001:db8::/112"), Client6Count: 1024}, "", 1024},
		{Config{Client6: netip.MustParsePrefix("2001:db8::/64")}, "", ippool.MaxSize6},
		{Config{Client6: netip.MustParsePrefix("2001:db8::/64"), Client6Count: 1 << 20}, "", 1 << 20}, // dual stack with a /12
		{Config{Client6: netip.MustParsePrefix("2001:db8::/120"), SNAT6: netip.MustParseAddr("2001:db8:1::5")}, "", 256},
		{Config{}, "host setup: neither IPv4", 0},
		{Config{SNAT: netip.MustParseAddr("fd00::2")}, "target_network.snat_address: fd00::2 is not an IPv4 address", 0},
		{Config{Client6: netip.MustParsePrefix("2001:db8::/121")}, "client_ipv6_cidr_block: 2001:db8::/121 is not an IPv6 block of /64 to /120", 0},
		{Config{Client6: netip.MustParsePrefix("2001:db8::1/120")}, "client_ipv6_cidr_block: 2001:db8::1/120 is not", 0},
		{Config{Client6: netip.MustParsePrefix("10.0.0.0/8")}, "client_ipv6_cidr_block: 10.0.0.0/8 is not", 0},
		{Config{Client6: netip.MustParsePrefix("2001:db8::/120"), Client6Count: 257}, "client_ipv6_cidr_block: 257 addresses of 2001:db8::/120 indexed, want 1 to 256", 0},
		{Config{SNAT: netip.MustParseAddr("10.0.1.2"), SNAT6: netip.MustParseAddr("2001:db8::5")}, "target_network.snat_ipv6_address: set without client_ipv6_cidr_block", 0},
		{Config{Client6: netip.MustParsePrefix("2001:db8::/120"), SNAT6: netip.MustParseAddr("10.0.0.1")}, "target_network.snat_ipv6_address: 10.0.0.1 is not an IPv6 address", 0},
		{Config{Client6: netip.MustParsePrefix("2001:db8::/120"), SNAT6: netip.MustParseAddr("2001:db8::5")}, "target_network.snat_ipv6_address: 2001:db8::5 is inside client_ipv6_cidr_block", 0},
	} {
		cfg := tc.cfg
		_, err := checkFamilies(&cfg)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		case tc.want == "" && cfg.Client6Count != tc.count:
			t.Errorf("%+v: Client6Count %d, want %d", tc.cfg, cfg.Client6Count, tc.count)
		}
	}
}

// TestClientRange6 against a walk of the addresses: the range is base+2..base+count-1.
func TestClientRange6(t *testing.T) {
	for _, tc := range []struct {
		block string
		count int
	}{{"2001:db8::/120", 256}, {"2001:db8::ff00/120", 256}, {"2001:db8:0:0:ffff:ffff:ffff:0/112", 100}, {"2001:db8::/64", 3}, {"2001:db8::/120", 2}} {
		b := netip.MustParsePrefix(tc.block)
		r := newClientRange6(b, tc.count)
		in := map[netip.Addr]bool{}
		a := b.Addr()
		for i := range tc.count {
			if i >= 2 {
				in[a] = true
				if got := r.at(i - 2); got != a {
					t.Errorf("%s: at(%d) = %s, want %s", tc.block, i-2, got, a)
				}
			}
			a = a.Next()
		}
		if r.n != len(in) {
			t.Errorf("%s %d: n = %d, want %d", tc.block, tc.count, r.n, len(in))
		}
		probe := []netip.Addr{b.Addr(), b.Addr().Next(), b.Addr().Prev(), a, a.Prev(), netip.MustParseAddr("10.0.0.2"),
			netip.MustParseAddr("2001:db9::2"), b.Addr().Next().Next().WithZone("eth0")}
		for k := range in {
			probe = append(probe, k)
		}
		for _, p := range probe {
			if got, want := r.contains(p), in[p] && p.Zone() == ""; got != want {
				t.Errorf("%s %d: contains(%s) = %v, want %v", tc.block, tc.count, p, got, want)
			}
		}
	}
}

// TestClaimsFile: lines are added and removed one by one, the file goes with the last, and a
// file of one line (what cvpn wrote before IPv6) reads as that claim.
func TestClaimsFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "run", "claim")
	if err := os.MkdirAll(filepath.Dir(file), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("proxy neighbour 10.0.1.2 dev eth1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := readClaims(file, nil)
	if !c.previous("proxy neighbour 10.0.1.2 dev eth1") || c.previous("proxy neighbour 10.0.1.3 dev eth1") {
		t.Errorf("previous claims %q", c.prev)
	}
	// A failed Setup undoes a claim it never made: the previous cvpn's file stays, since what
	// it claims is still there.
	c.remove("proxy neighbours 2001:db8::/120 dev eth1")
	if b, _ := os.ReadFile(file); string(b) != "proxy neighbour 10.0.1.2 dev eth1\n" {
		t.Errorf("file after removing a claim never made: %q", b)
	}
	c.add("a")
	c.add("b")
	if b, _ := os.ReadFile(file); string(b) != "a\nb\n" {
		t.Errorf("file %q", b)
	}
	c.remove("a")
	if b, _ := os.ReadFile(file); string(b) != "b\n" {
		t.Errorf("file %q", b)
	}
	c.remove("b")
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file after the last claim: %v", err)
	}
	none := readClaims("", nil)
	none.add("x") // no file: nothing to write, nothing fails
	if none.previous("x") {
		t.Error("no file claims something")
	}
}
