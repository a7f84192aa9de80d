package endpoint

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/host"
	"github.com/cvpn/cvpn/tunnel/session"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
)

// fakeHostAddrs stands in for the host's address watch.
type fakeHostAddrs struct {
	own     []netip.Prefix
	err     error
	mu      sync.Mutex
	changed func([]netip.Prefix)
	stopped bool
}

func (f *fakeHostAddrs) watch(changed func([]netip.Prefix), _ *slog.Logger) ([]netip.Prefix, func(), error) {
	if f.err != nil {
		return nil, nil, f.err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changed = changed
	return f.own, func() { f.mu.Lock(); defer f.mu.Unlock(); f.stopped = true }, nil
}

// startWithHostAddrs starts the lab's endpoint as lab.start does, with a fake address watch.
func (l *lab) startWithHostAddrs(addrs *fakeHostAddrs) error {
	l.t.Helper()
	ep, err := Load(l.path, time.Now())
	if err != nil {
		l.t.Fatal(err)
	}
	l.net = socktest.NewNetwork()
	l.host = &fakeHost{tun: tuntest.NewChannelTUN(), closed: make(chan struct{})}
	l.run, err = Start(ep, Options{
		Log:       slog.New(slog.NewTextHandler(l.logs, nil)),
		Host:      func(host.Config, *slog.Logger) (Host, error) { return l.host, nil },
		Network:   l.net,
		HostAddrs: addrs.watch,
	})
	if err != nil {
		return err
	}
	l.done = make(chan struct{})
	go func() { defer close(l.done); l.run.Run() }()
	l.t.Cleanup(func() {
		l.run.Stop()
		<-l.done
		if l.t.Failed() {
			l.t.Logf("endpoint log:\n%s", l.logs.String())
		}
	})
	return nil
}

// reaches sends a packet from s to dst and reports whether it left the TUN; a refused one
// must be counted as host_address.
func (l *lab) reaches(s *client.Session, dst netip.Addr, seq byte) bool {
	l.t.Helper()
	return l.reachesOr(s, dst, seq, "host_address")
}

// reachesOr is reaches for a packet that, refused, is counted under the drop reason why.
func (l *lab) reachesOr(s *client.Session, dst netip.Addr, seq byte, why string) bool {
	l.t.Helper()
	before := l.run.Server().Drops()[why]
	if err := s.WritePacket(ipv4UDP(s.Address().Addr(), dst, 40000, seq)); err != nil {
		l.t.Fatalf("WritePacket: %v", err)
	}
	deadline := time.After(2 * time.Second)
	for {
		select {
		case out := <-l.host.tun.Inbound:
			if got := netip.AddrFrom4([4]byte(out[16:20])); got != dst {
				l.t.Fatalf("a packet to %s left the TUN while waiting for one to %s", got, dst)
			}
			return true
		case <-time.After(10 * time.Millisecond):
			if l.run.Server().Drops()[why] > before {
				return false
			}
		case <-deadline:
			l.t.Fatalf("the packet to %s neither left the TUN nor was counted as %s: %v", dst, why, l.run.Server().Drops())
		}
	}
}

// TestHostAddressesKeptFromClients: the running endpoint keeps clients authorized for the
// whole VPC from the host's own addresses and the SNAT address; an address the host gains is
// refused from then on; a reload of the rules keeps them; allow_host_access: true on reload
// lets them through; stopping the endpoint stops the watch.
func TestHostAddressesKeptFromClients(t *testing.T) {
	l := newLab(t)
	hostVPC := netip.MustParseAddr("10.0.1.1")
	addrs := &fakeHostAddrs{own: []netip.Prefix{netip.MustParsePrefix("10.0.1.1/32"), netip.MustParsePrefix("127.0.0.0/8")}}
	if err := l.startWithHostAddrs(addrs); err != nil {
		t.Fatal(err)
	}
	s, _ := l.connect(clientOptions{})
	l.ping(s, 1)
	if l.reaches(s, hostVPC, 2) {
		t.Fatal("a client reached the host's VPC address")
	}
	if l.reaches(s, snatAddr, 3) {
		t.Fatal("a client reached the SNAT address")
	}

	extra := netip.MustParseAddr("10.0.1.3")
	if !l.reaches(s, extra, 4) {
		t.Fatal("10.0.1.3 refused before the host has it")
	}
	addrs.changed(append(addrs.own[:2:2], netip.PrefixFrom(extra, 32)))
	if l.reaches(s, extra, 5) {
		t.Fatal("a client reached the address the host gained")
	}
	if !strings.Contains(l.logs.String(), "the host's own addresses changed") {
		t.Errorf("the change was not logged:\n%s", l.logs.String())
	}

	// A reload that changes the rules keeps the host's addresses in the new policy.
	if _, err := l.reload("bandwidth_limit_mbps: 0", "bandwidth_limit_mbps: 50"); err != nil {
		t.Fatal(err)
	}
	if l.reaches(s, extra, 6) || l.reaches(s, hostVPC, 7) {
		t.Fatal("a reload let a client reach the host")
	}
	l.ping(s, 8)

	rep, err := l.reload("bandwidth_limit_mbps: 0", "bandwidth_limit_mbps: 50\nallow_host_access: true")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.Changed, ",") != "allow_host_access" {
		t.Errorf("reload changed %q, want allow_host_access", rep.Changed)
	}
	if !l.reaches(s, hostVPC, 9) {
		t.Fatal("allow_host_access: true, but the host's VPC address was refused")
	}

	l.run.Stop()
	<-l.done
	addrs.mu.Lock()
	defer addrs.mu.Unlock()
	if !addrs.stopped {
		t.Error("the address watch was not stopped with the endpoint")
	}
}

// TestStartFailsWithoutHostAddrs: an endpoint that cannot learn the host's addresses does not
// start (it could not keep clients from them), and removes the host state it set up.
func TestStartFailsWithoutHostAddrs(t *testing.T) {
	l := newLab(t)
	want := errors.New("list the host's own addresses (local routing table): permission denied")
	err := l.startWithHostAddrs(&fakeHostAddrs{err: want})
	if !errors.Is(err, want) {
		t.Fatalf("Start = %v, want %v", err, want)
	}
	select {
	case <-l.host.closed:
	default:
		t.Error("the host state was not removed")
	}
}

// TestHostConfigIPv6: the host gets the IPv6 block, how many of its addresses the pool indexes
// (its size, capped by the block: a dual-stack pool follows its IPv4 block), and the SNAT6
// address; families whose traffic is off are zero.
func TestHostConfigIPv6(t *testing.T) {
	for _, tc := range []struct {
		v4, v6 string
		snat   string
		count  int
	}{
		{"10.8.0.0/22", "2001:db8:1::1:0/112", "10.0.1.2", 1024},
		{"10.8.0.0/16", "2001:db8:1::100/120", "10.0.1.2", 256},
		{"10.0.0.0/12", "2001:db8:1::/64", "10.0.1.2", 1 << 20},
		{"", "2001:db8:1::/64", "", ippool.MaxSize6},
		{"", "2001:db8:1::100/120", "", 256},
		{"10.8.0.0/22", "", "10.0.1.2", 0},
	} {
		var cfg config.Endpoint
		cfg.TUN.Name, cfg.Admin.Socket = "cvpn0", "/run/cvpn/admin.sock"
		if tc.v4 != "" {
			cfg.ClientCIDRBlock = netip.MustParsePrefix(tc.v4)
			cfg.TargetNetwork.SNATAddress = netip.MustParseAddr(tc.snat)
		}
		if tc.v6 != "" {
			cfg.ClientIPv6CIDRBlock = netip.MustParsePrefix(tc.v6)
			cfg.TargetNetwork.SNATIPv6Address = netip.MustParseAddr("2001:db8:1::53")
		}
		h := hostConfig(&cfg)
		if h.Client6 != cfg.ClientIPv6CIDRBlock || h.Client6Count != tc.count || h.SNAT6 != cfg.TargetNetwork.SNATIPv6Address || h.SNAT != cfg.TargetNetwork.SNATAddress {
			t.Errorf("%s %s: Client6 %s, Client6Count %d (want %d), SNAT6 %s, SNAT %s", tc.v4, tc.v6, h.Client6, h.Client6Count, tc.count, h.SNAT6, h.SNAT)
		}
	}
}

// TestHostPolicySNAT6: the SNAT addresses of both families are among the host's destinations
// the engine refuses; one whose family is off adds nothing.
func TestHostPolicySNAT6(t *testing.T) {
	own := []netip.Prefix{netip.MustParsePrefix("10.0.1.1/32"), netip.MustParsePrefix("2001:db8:1::1/128")}
	snat6 := netip.MustParseAddr("2001:db8:1::53")
	for _, tc := range []struct {
		snat, snat6 netip.Addr
		want        []netip.Prefix
	}{
		{snatAddr, snat6, append(slices.Clone(own), netip.PrefixFrom(snatAddr, 32), netip.PrefixFrom(snat6, 128))},
		{netip.Addr{}, snat6, append(slices.Clone(own), netip.PrefixFrom(snat6, 128))},
		{snatAddr, netip.Addr{}, append(slices.Clone(own), netip.PrefixFrom(snatAddr, 32))},
	} {
		pol := newHostPolicy(&tunnel.Policy{}, tc.snat, slog.New(slog.DiscardHandler)).withSNAT6(tc.snat6)
		if got := pol.first(own).Host; !slices.Equal(got, tc.want) {
			t.Errorf("snat %s, snat6 %s: host destinations %v, want %v", tc.snat, tc.snat6, got, tc.want)
		}
	}
}

// fakeNeighbours records the host's neighbour calls.
type fakeNeighbours struct {
	calls []string
	err   error
}

func (f *fakeNeighbours) AddClient6(a netip.Addr) error {
	f.calls = append(f.calls, "add "+a.String())
	return f.err
}

func (f *fakeNeighbours) RemoveClient6(a netip.Addr) error {
	f.calls = append(f.calls, "remove "+a.String())
	return f.err
}

// TestNeighbourEvents: a client with an IPv6 address gets its proxy entry when connected and
// loses it when gone; one without asks nothing; a failure is logged, not fatal.
func TestNeighbourEvents(t *testing.T) {
	f := &fakeNeighbours{}
	var logs testlog.Buffer
	ev := neighbourEvents{host: f, log: slog.New(slog.NewTextHandler(&logs, nil))}
	a6 := netip.MustParseAddr("2001:db8:1::205")
	with6 := tunnel.Status{Info: &tunnel.Info{ConnectionID: "cvpn-connection-1", Address: netip.MustParseAddr("10.8.0.2"), Address6: a6}}
	only4 := tunnel.Status{Info: &tunnel.Info{ConnectionID: "cvpn-connection-2", Address: netip.MustParseAddr("10.8.0.3")}}
	ev.Connected(with6)
	ev.Connected(only4)
	ev.Refused(session.Attempt{})
	ev.Disconnected(only4, session.End{})
	ev.Disconnected(with6, session.End{})
	if want := []string{"add 2001:db8:1::205", "remove 2001:db8:1::205"}; !slices.Equal(f.calls, want) {
		t.Errorf("calls %v, want %v", f.calls, want)
	}
	f.err = errors.New("netlink says no")
	ev.Connected(with6)
	if !strings.Contains(logs.String(), "netlink says no") || !strings.Contains(logs.String(), "cvpn-connection-1") {
		t.Errorf("the failure is not logged: %s", logs.String())
	}
	var _ clientNeighbours = (*host.Host)(nil) // the real one fits
}
