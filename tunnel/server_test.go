package tunnel

import (
	"crypto/x509"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
)

func newTestServer(t *testing.T, network *socktest.Network, udp, tcp []netip.AddrPort) (*Server, error) {
	t.Helper()
	ca, err := pki.NewCA("tunnel test CA", pki.ECDSAP256, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	id, err := pki.IssueServer(ca, "server", nil, pki.ECDSAP256, 30*time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := id.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	pool, _ := ippool.New(netip.MustParsePrefix("10.2.0.0/22"))
	natTable, _ := nat.New(nat.Config{Addr: netip.MustParseAddr("10.0.1.2")})
	az, _ := authz.New(nil)
	return New(Config{
		UDP: udp, TCP: tcp, Network: network, Certificate: cert, ClientCAs: roots,
		Ciphers: []datacrypto.Cipher{datacrypto.AES256GCM}, Pool: pool, NAT: natTable,
		Device: tuntest.NewChannelTUN().TUN(), Policy: &Policy{Authz: az}, Log: testlog.New(t),
	})
}

// TestSetListeners: a listener set changes by difference; one that cannot open changes
// nothing and is named.
func TestSetListeners(t *testing.T) {
	network := socktest.NewNetwork()
	a := netip.MustParseAddrPort("192.0.2.1:443")
	b := netip.MustParseAddrPort("192.0.2.1:1194")
	s, err := newTestServer(t, network, []netip.AddrPort{a}, []netip.AddrPort{a})
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan struct{})
	go func() { defer close(ran); s.Run() }()
	t.Cleanup(func() { s.Close(); <-ran })
	if got := s.Addrs(); !slices.Equal(got, []netip.AddrPort{a}) {
		t.Fatalf("UDP listeners %v", got)
	}
	first := s.udp[a]
	if err := s.SetListeners([]netip.AddrPort{a, b}, []netip.AddrPort{a}); err != nil {
		t.Fatal(err)
	}
	if s.udp[a] != first || len(s.udp) != 2 {
		t.Fatal("a kept listener was reopened, or the new one is missing")
	}
	// Someone else holds b over TCP: opening it fails, and the UDP change in the same call is
	// not applied either.
	squatter, err := network.ListenTCP(b)
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	err = s.SetListeners([]netip.AddrPort{a}, []netip.AddrPort{a, b})
	if err == nil || !strings.Contains(err.Error(), "listen tcp "+b.String()) {
		t.Fatalf("error %v does not name the listener", err)
	}
	if len(s.udp) != 2 || len(s.tcp) != 1 {
		t.Fatalf("a failed change was partly applied: udp %v tcp %v", s.Addrs(), s.TCPAddrs())
	}
	if err := s.SetListeners([]netip.AddrPort{b}, nil); err != nil {
		t.Fatal(err)
	}
	if got := s.Addrs(); !slices.Equal(got, []netip.AddrPort{b}) || len(s.TCPAddrs()) != 0 {
		t.Fatalf("after removing: udp %v tcp %v", got, s.TCPAddrs())
	}
}
