package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

// profileVariant is one stock client profile the interoperability matrix runs.
type profileVariant struct {
	name  string
	proto string
	extra string
	// authFailed, when set, is the AUTH_FAILED reason the client must be told; the client must
	// not connect.
	authFailed string
}

// matrixVariants are the profile variants served by one tls-crypt endpoint on UDP and TCP 443.
// The README's interoperability table lists them.
var matrixVariants = []profileVariant{
	{name: "udp", proto: "udp"},
	{name: "tcp", proto: "tcp"},
	{name: "aes-256-gcm", extra: "data-ciphers AES-256-GCM\n"},
	{name: "aes-128-gcm", extra: "data-ciphers AES-128-GCM\n"},
	{name: "chacha20-poly1305", extra: "data-ciphers CHACHA20-POLY1305\n"},
	{name: "tcp-chacha20", proto: "tcp", extra: "data-ciphers CHACHA20-POLY1305\n"},
	{name: "comp-lzo", extra: "comp-lzo\n"},
	{name: "comp-lzo-no", extra: "comp-lzo no\n"},
	{name: "compress", extra: "compress\n"},
	{name: "compress-stub-v2", extra: "compress stub-v2\n"},
	{name: "compress-lz4-v2", extra: "compress lz4-v2\n"},
	{name: "tcp-comp-lzo", proto: "tcp", extra: "comp-lzo no\n"},
	{name: "max-packet-size-145", extra: "max-packet-size 145\n"},
	{name: "no-shared-cipher", extra: "data-ciphers AES-256-CBC\n", authFailed: "AUTH_FAILED,Data channel cipher negotiation failed (no shared cipher)"},
}

// TestInteropMatrix runs the stock openvpn 2.6 client with each profile variant against one cvpn
// endpoint: each must connect and pass traffic (or be refused with the expected reason).
func TestInteropMatrix(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{
		TLSCrypt:  true,
		Transport: "[{protocol: udp, port: 443}, {protocol: tcp, port: 443}]",
	})
	for i, v := range matrixVariants {
		port := 6000 + i
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			sub := *s
			sub.t = t
			o := netlab.ProfileOptions{Proto: v.proto, Extra: v.extra}
			if v.authFailed != "" {
				c := sub.start("client-"+v.name, o)
				if err := c.proc.WaitFor(v.authFailed, 30*time.Second); err != nil {
					t.Fatalf("%v\nclient log:\n%s", err, c.proc.Output())
				}
				if strings.Contains(c.proc.Output(), "Initialization Sequence Completed") {
					t.Fatal("client connected although it must be refused")
				}
				return
			}
			c := sub.connect("client-"+v.name, o)
			sub.ping(c, netlab.VPCHost.String())
			// Traffic must pass; how fast is the benchmark's business (max-packet-size 145 also
			// shrinks data packets to about 100 bytes of payload).
			_, r := sub.iperf(c, port, "2s", false)
			if r.End.SumReceived.Bytes < 256<<10 {
				t.Fatalf("moved %d bytes through the tunnel in 2 s", r.End.SumReceived.Bytes)
			}
		})
	}
}

// matrixIPv6 are the cells of the matrix run again over IPv6 transport (udp6, tcp6-client to the
// server's IPv6 address): those where the transport's family could matter (the socket of either
// protocol, the sizes of max-packet-size, a cipher over each protocol, compression framing on
// the longer IPv6 path, the refusal). Variants that differ only in negotiation or framing that
// the IPv4 rows already cover (aes-256-gcm is the udp cell's own cipher; comp-lzo no, compress,
// stub-v2 and tcp comp-lzo frame alike) are left out, so the IPv6 rows add 9 clients, not 14.
var matrixIPv6 = []string{"udp", "tcp", "aes-128-gcm", "chacha20-poly1305", "tcp-chacha20", "comp-lzo",
	"compress-lz4-v2", "max-packet-size-145", "no-shared-cipher"}

// TestInteropMatrixIPv6 runs the IPv6 cells of the matrix against an endpoint that listens on
// IPv6 only (endpoint_ip_address_type ipv6) and carries both families: each client dials the
// server's IPv6 address, connects (or is refused as in the IPv4 row), pings the VPC host on
// both families and moves data over IPv6 inside the tunnel.
func TestInteropMatrixIPv6(t *testing.T) {
	t.Parallel()
	s := newDualSetup(t, netlab.EndpointOptions{
		TLSCrypt:              true,
		EndpointIPAddressType: "ipv6",
		TrafficIPAddressType:  "dual-stack",
		Transport:             "[{protocol: udp, port: 443}, {protocol: tcp, port: 443}]",
	})
	for _, name := range matrixIPv6 {
		if !slices.ContainsFunc(matrixVariants, func(v profileVariant) bool { return v.name == name }) {
			t.Fatalf("matrixIPv6 names %q, which is no cell of the matrix", name)
		}
	}
	for i, v := range matrixVariants {
		if !slices.Contains(matrixIPv6, v.name) {
			continue
		}
		port := 6100 + i
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			sub := *s
			sub.t = t
			proto := "udp6"
			if v.proto == "tcp" {
				proto = "tcp6-client"
			}
			o := netlab.ProfileOptions{Proto: proto, Extra: v.extra}
			name := "client6-" + v.name
			if v.authFailed != "" {
				c := sub.startDual(name, true, o)
				if err := c.proc.WaitFor(v.authFailed, 30*time.Second); err != nil {
					t.Fatalf("%v\nclient log:\n%s", err, c.proc.Output())
				}
				if strings.Contains(c.proc.Output(), "Initialization Sequence Completed") {
					t.Fatal("client connected although it must be refused")
				}
				return
			}
			c := sub.connectDual(name, true, o)
			sub.ping(c.vpnClient, netlab.VPCHost.String())
			sub.ping(c.vpnClient, netlab.VPCHostIPv6.String())
			_, r := sub.iperfTo(c.vpnClient, netlab.VPCHostIPv6, port, "2s", false)
			if r.End.SumReceived.Bytes < 256<<10 {
				t.Fatalf("moved %d bytes over IPv6 through the tunnel in 2 s", r.End.SumReceived.Bytes)
			}
		})
	}
}

// TestClientRekeyKeepsTraffic renegotiates three times (client reneg-sec 4) while a ping runs every
// 0.2 s: no ping may be lost.
func TestClientRekeyKeepsTraffic(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	c := s.connect("rekeyer", netlab.ProfileOptions{Extra: "reneg-sec 4\n"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := s.lab.Output(ctx, c.ns, "ping", "-c", "70", "-i", "0.2", "-W", "2", netlab.VPCHost.String())
	if err != nil {
		t.Fatalf("ping across renegotiations: %v\n%s", err, out)
	}
	if !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("pings lost across renegotiations:\n%s", out)
	}
	if n := strings.Count(s.srv.Output(), "client renegotiated"); n < 3 {
		t.Fatalf("%d renegotiations in 14 s with reneg-sec 4, want >= 3\n%s", n, s.srv.Output())
	}
}

// TestExplicitExitFreesAtOnce stops a client with explicit-exit-notify: the server ends the session
// when told, not after ping-restart.
func TestExplicitExitFreesAtOnce(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	c := s.connect("leaver", netlab.ProfileOptions{Extra: "explicit-exit-notify 1\n"})
	s.ping(c, netlab.VPCHost.String())
	_ = c.proc.Stop()
	if err := s.srv.WaitFor(`reason="client sent EXIT"`, 5*time.Second); err != nil {
		if err2 := s.srv.WaitFor("explicit exit notification", time.Second); err2 != nil {
			t.Fatal(err)
		}
	}
}

// TestFullTunnel pushes redirect-gateway: the client's default route goes through cvpn and it still
// reaches cvpn itself and the VPC.
func TestFullTunnel(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true, FullTunnel: true})
	c := s.connect("roamer", netlab.ProfileOptions{})
	if !strings.Contains(c.proc.Output(), "redirect-gateway def1") {
		t.Fatalf("redirect-gateway not pushed:\n%s", c.proc.Output())
	}
	out, err := s.lab.Output(context.Background(), c.ns, "ip", "route", "get", "10.0.9.9")
	if err != nil || !strings.Contains(out, "dev tun0") {
		t.Fatalf("route to an arbitrary address does not use the tunnel: %v\n%s", err, out)
	}
	s.ping(c, netlab.VPCHost.String())
}

// TestShutdownTellsClientsToRestart stops cvpn: connected clients are told RESTART and reconnect
// when it is back.
func TestShutdownTellsClientsToRestart(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	c := s.connect("patient", netlab.ProfileOptions{})
	if err := s.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.proc.WaitFor("server-pushed-connection-reset", 5*time.Second); err != nil {
		t.Fatalf("client not told to restart: %v\n%s", err, c.proc.Output())
	}
}

// TestTLSAuthProfiles runs tls-auth endpoints: with key-direction, bidirectional, other digests,
// and with tiny control packets (max-packet-size 145).
func TestTLSAuthProfiles(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, dir, digest, extra string
	}{
		{name: "direction-0", dir: "0"},
		{name: "bidirectional", dir: ""},
		{name: "sha256", dir: "0", digest: "SHA256"},
		{name: "sha512-max-packet-size-145", dir: "1", digest: "SHA512", extra: "max-packet-size 145\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := newSetup(t, netlab.EndpointOptions{TLSAuth: true, TLSAuthDirection: c.dir, TLSAuthDigest: c.digest,
				Transport: "[{protocol: udp, port: 443}, {protocol: tcp, port: 443}]"})
			u := s.connect("udp-"+c.name, netlab.ProfileOptions{Extra: c.extra})
			s.ping(u, netlab.VPCHost.String())
			tc := s.connect("tcp-"+c.name, netlab.ProfileOptions{Proto: "tcp", Extra: c.extra})
			s.ping(tc, netlab.VPCHost.String())
		})
	}
}

// TestServerRekeyKeepsTraffic has the server renegotiate every 10 s (reneg_seconds, its minimum)
// while a ping runs every 0.2 s: nothing may be lost across three renegotiations.
func TestServerRekeyKeepsTraffic(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true, Extra: "reneg_seconds: 10\n"})
	c := s.connect("rekeyed", netlab.ProfileOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := s.lab.Output(ctx, c.ns, "ping", "-c", "170", "-i", "0.2", "-W", "2", netlab.VPCHost.String())
	if err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("pings lost across server renegotiations: %v\n%s", err, out)
	}
	if n := strings.Count(s.srv.Output(), "client renegotiated"); n < 3 {
		t.Fatalf("%d renegotiations in 34 s with reneg_seconds 10, want >= 3\n%s", n, s.srv.Output())
	}
}

// TestFloatingClient changes the client's source address mid-session, as NAT rebinding does: the
// session follows once a packet from the new address authenticates.
func TestFloatingClient(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	c := s.connect("floater", netlab.ProfileOptions{})
	s.ping(c, netlab.VPCHost.String())
	// The client is unbound (nobind): its datagrams take the source the route gives them.
	ctx := context.Background()
	out, err := s.lab.Output(ctx, c.ns, "ip", "-4", "route", "show", "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	var server, newSrc string
	for _, f := range strings.Fields(out) {
		if strings.HasSuffix(f, ".0/24") {
			base := strings.TrimSuffix(f, ".0/24")
			server, newSrc = base+".1", base+".3"
		}
	}
	if server == "" {
		t.Fatalf("cannot find the client's subnet in:\n%s", out)
	}
	for _, args := range [][]string{
		{"ip", "addr", "add", newSrc + "/24", "dev", "eth0"},
		{"ip", "route", "replace", server, "dev", "eth0", "src", newSrc},
	} {
		if _, err := s.lab.Output(ctx, c.ns, args...); err != nil {
			t.Fatal(err)
		}
	}
	s.ping(c, netlab.VPCHost.String())
	if err := s.srv.WaitFor("client floated", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.srv.Output(), "to="+newSrc+":") {
		t.Fatalf("session did not move to %s:\n%s", newSrc, s.srv.Output())
	}
	s.ping(c, netlab.VPCHost.String())
}

// TestTwentyClients connects twenty stock clients at once, half over UDP and half over TCP, and has
// all of them pass traffic at the same time.
func TestTwentyClients(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true, Transport: "[{protocol: udp, port: 443}, {protocol: tcp, port: 443}]"})
	clients := make([]*vpnClient, 20)
	for i := range clients {
		proto := "udp"
		if i%2 == 1 {
			proto = "tcp"
		}
		clients[i] = s.start(fmt.Sprintf("user%02d", i), netlab.ProfileOptions{Proto: proto})
	}
	for i, c := range clients {
		if err := c.proc.WaitFor("Initialization Sequence Completed", 60*time.Second); err != nil {
			t.Fatalf("client %d: %v\n%s", i, err, c.proc.Output())
		}
	}
	errs := make(chan error, len(clients))
	for _, c := range clients {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := s.lab.Output(ctx, c.ns, "ping", "-c", "10", "-i", "0.2", "-W", "2", netlab.VPCHost.String())
			if err == nil && !strings.Contains(out, " 0% packet loss") {
				err = fmt.Errorf("loss:\n%s", out)
			}
			errs <- err
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	addrs := map[string]bool{}
	for _, c := range clients {
		addrs[s.tunAddress(c)] = true
	}
	if len(addrs) != len(clients) {
		t.Fatalf("%d distinct addresses for %d clients", len(addrs), len(clients))
	}
}

// TestPushedDNSAndBanner pushes dns_servers and shows client_login_banner to the stock client.
func TestPushedDNSAndBanner(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true,
		Extra: "dns_servers: [10.0.1.53]\nclient_login_banner: \"Authorized use only.\\nConnections are logged.\"\n"})
	c := s.connect("reader", netlab.ProfileOptions{Extra: "verb 4\n"})
	if err := c.proc.WaitFor("dhcp-option DNS 10.0.1.53", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.proc.WaitFor("Authorized use only. Connections are logged.", 5*time.Second); err != nil {
		t.Fatalf("banner not shown: %v", err)
	}
}

// TestCompressingClientRefused: a client that ignores the pushed stub and really compresses is
// told why and disconnected, instead of keeping a tunnel that passes nothing.
func TestCompressingClientRefused(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	c := s.connect("squeezer", netlab.ProfileOptions{Extra: "compress lz4-v2\nallow-compression yes\npull-filter ignore \"compress\"\n"})
	// Compressible traffic: zero-filled pings.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, _ = s.lab.Output(ctx, c.ns, "ping", "-c", "3", "-s", "1200", "-p", "00", "-W", "1", netlab.VPCHost.String())
	if err := c.proc.WaitFor("AUTH_FAILED,this server does not support compression", 10*time.Second); err != nil {
		t.Fatalf("compressing client not refused: %v", err)
	}
	if err := s.srv.WaitFor(`reason="client compresses its traffic"`, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}
