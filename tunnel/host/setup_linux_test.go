package host

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cvpn/cvpn/internal/privdrop"
)

// TestSetupMissingInterface: Setup with a target interface that does not exist returns a clear
// error and no Host; it used to panic in its own cleanup ((*Host).Close on nil). It needs no
// root: the lookup fails before anything is changed.
func TestSetupMissingInterface(t *testing.T) {
	root := procSys(t, map[string]string{"net/ipv4/ip_forward": "0\n"})
	h, err := Setup(Config{TUNName: "cvpntest0", MTU: 1500, Interface: "cvpnnone0", SNAT: netip.MustParseAddr("10.0.1.2"), procSys: root}, nil)
	if h != nil {
		t.Errorf("Setup returned a Host with error %v", err)
	}
	if !errors.Is(err, ErrNoInterface) {
		t.Fatalf("Setup = %v, want ErrNoInterface", err)
	}
	want := `target_network.interface "cvpnnone0": no such network interface: list the interfaces with ` + "`ip link show`"
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q\ndoes not start with %q", err, want)
	}
	if got := readSysctl(t, root, "net/ipv4/ip_forward"); got != "0" {
		t.Errorf("ip_forward = %q, want it untouched", got)
	}
}

func TestSetupRefusesIPv6SNAT(t *testing.T) {
	_, err := Setup(Config{TUNName: "cvpntest0", MTU: 1500, Interface: "lo", SNAT: netip.MustParseAddr("fd00::2")}, nil)
	if err == nil || !strings.Contains(err.Error(), "fd00::2 is not an IPv4 address") {
		t.Errorf("Setup = %v, want an IPv4-only error", err)
	}
}

func TestCheckSNAT(t *testing.T) {
	addrs := []netip.Prefix{netip.MustParsePrefix("10.0.1.1/24"), netip.MustParsePrefix("192.168.5.7/30")}
	for _, tc := range []struct {
		snat  string
		addrs []netip.Prefix
		want  string // "" for accepted
	}{
		{"10.0.1.2", addrs, ""},
		{"192.168.5.6", addrs, ""},
		{"10.0.1.1", addrs, "target_network.snat_address: 10.0.1.1 is eth1's own address: use a free address in 10.0.1.0/24"},
		{"10.0.2.2", addrs, "target_network.snat_address: 10.0.2.2 is not inside a subnet of eth1 (10.0.1.0/24, 192.168.5.4/30): use a free address in one of them"},
		{"10.0.1.2", nil, "target_network.snat_address: 10.0.1.2 is not inside a subnet of eth1, which has no IPv4 address: give eth1 its address"},
	} {
		err := checkSNAT("eth1", tc.addrs, netip.MustParseAddr(tc.snat))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want accepted", tc.snat, err)
		case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
			t.Errorf("%s: %v\nwant %q", tc.snat, err, tc.want)
		}
	}
}

// TestTUNErrors: the reasons a TUN cannot be created each say how to fix it.
func TestTUNErrors(t *testing.T) {
	for _, tc := range []struct {
		err  unix.Errno
		fix  func(error) string
		want string
	}{
		{unix.EPERM, tunSetFix, "needs root or CAP_NET_ADMIN"},
		{unix.EACCES, tunSetFix, "needs root or CAP_NET_ADMIN"},
		{unix.EBUSY, tunSetFix, "in use by another process (another cvpn?): stop it or choose another tun.name"},
		{unix.EINVAL, tunSetFix, "is not a TUN device cvpn can use: choose another tun.name"},
		{unix.EACCES, tunOpenFix, "needs root, or CAP_NET_ADMIN and read-write access to /dev/net/tun"},
		{unix.ENOENT, tunOpenFix, "modprobe tun"},
	} {
		if got := tc.fix(tc.err); !strings.Contains(got, tc.want) {
			t.Errorf("%v: %q does not contain %q", tc.err, got, tc.want)
		}
	}
	e := &Error{Op: `create TUN device "cvpn0"`, Err: unix.EBUSY, Fix: tunSetFix(unix.EBUSY)}
	want := `create TUN device "cvpn0": device or resource busy: the device is in use by another process (another cvpn?): stop it or choose another tun.name`
	if e.Error() != want {
		t.Errorf("got  %q\nwant %q", e, want)
	}
}

// TestCheckNetAdmin: the capability check passes exactly when the process has CAP_NET_ADMIN
// (root in CI), and otherwise says what cvpn serve needs, in the TUN step's name.
func TestCheckNetAdmin(t *testing.T) {
	eff, err := privdrop.Effective()
	if err != nil {
		t.Fatal(err)
	}
	err = checkNetAdmin("cvpn0")
	if eff.Has(privdrop.NetAdmin) {
		if err != nil {
			t.Errorf("with CAP_NET_ADMIN: %v", err)
		}
	} else if !errors.Is(err, ErrNoNetAdmin) {
		t.Errorf("without CAP_NET_ADMIN: %v, want ErrNoNetAdmin", err)
	}
	e := &Error{Op: `create TUN device "cvpn0"`, Err: ErrNoNetAdmin, Fix: netAdminFix}
	want := `create TUN device "cvpn0": the process does not have CAP_NET_ADMIN: cvpn serve needs root, or CAP_NET_ADMIN (and CAP_NET_BIND_SERVICE for ports below 1024): under systemd, AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE`
	if e.Error() != want {
		t.Errorf("got  %q\nwant %q", e, want)
	}
}
