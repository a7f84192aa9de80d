package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// ServerKind names a server under test.
type ServerKind string

// The two servers the benchmark compares.
const (
	CVPN    ServerKind = "cvpn"
	OpenVPN ServerKind = "openvpn"
)

// The benchmark's fixed addresses inside each lab (see internal/netlab for the topology).
var (
	// DefaultClientCIDR holds 16k clients, enough for the 10,000-session run, and is the same
	// for both servers.
	DefaultClientCIDR = netip.MustParsePrefix("10.64.0.0/18")
	// ScaleClientCIDR holds 128k clients: cvpn's client_cidr_block in the scale scenario.
	ScaleClientCIDR = netip.MustParsePrefix("10.64.0.0/15")
	// SinkAddr is where the sink listens in the VPC namespace.
	SinkAddr = netip.AddrPortFrom(netlab.VPCHost, 9000)
)

// serverPort is where both servers listen (UDP; TCP in the TCP configurations).
const serverPort = 443

// Fixtures are the files both servers and every client share: one PKI and tls-crypt key, cvpn's
// endpoint files and the equivalent stock openvpn server configuration.
type Fixtures struct {
	Dir        string
	Endpoint   *netlab.Endpoint
	ClientCIDR netip.Prefix
	// CVPNConfig has bandwidth_limit_mbps 0; CVPNLimitConfig the limit scenario's value;
	// CVPNScaleConfig has ScaleClientCIDR, room for the scale scenario's sessions.
	CVPNConfig, CVPNLimitConfig, CVPNScaleConfig string
	OpenVPNConfig                                string // server.conf in Dir
	// CVPNTCPConfig and OpenVPNTCPConfig are CVPNConfig and OpenVPNConfig on TCP 443 instead
	// of UDP 443, for load over TCP.
	CVPNTCPConfig, OpenVPNTCPConfig string
	// CVPNIPv6Config and OpenVPNIPv6Config are CVPNConfig and OpenVPNConfig dual-stack, for
	// the iperf-ipv6 scenario in a dual-stack lab (internal/netlab.NewDual): they listen on
	// IPv6 as well and give each client an IPv6 address of netlab.ClientIPv6CIDR (inside the
	// VPC link's /64, so VPC hosts reach clients on-link) with a route to the VPC link.
	CVPNIPv6Config, OpenVPNIPv6Config string
	CACertFile, CAKeyFile             string // the CA that signs clients (and the server)
	TLSCryptFile                      string
	TLSCrypt                          *tlscrypt.StaticKey
	RootCAs                           *x509.CertPool
	// AdminSocket is the admin API socket of the server CVPNConfig starts (its CPU profiles);
	// AdminSocketIPv6 that of the server CVPNIPv6Config starts.
	AdminSocket, AdminSocketIPv6 string
}

// FixtureOptions shape the fixtures; zero values give the benchmark's defaults.
type FixtureOptions struct {
	ClientCIDR netip.Prefix // default DefaultClientCIDR
	LimitMbps  float64      // bandwidth_limit_mbps of CVPNLimitConfig; default 10
	// OpenVPNExtra and CVPNExtra are appended to the server configurations verbatim (for
	// example `connect-freq-initial 100000 10`).
	OpenVPNExtra, CVPNExtra string
}

// WriteFixtures writes the fixtures into dir.
func WriteFixtures(dir string, o FixtureOptions) (*Fixtures, error) {
	if !o.ClientCIDR.IsValid() {
		o.ClientCIDR = DefaultClientCIDR
	}
	if o.LimitMbps == 0 {
		o.LimitMbps = 10
	}
	ep, err := netlab.WriteEndpoint(dir, netlab.EndpointOptions{
		ClientCIDR: o.ClientCIDR.String(),
		TLSCrypt:   true,
		Extra:      o.CVPNExtra,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: endpoint: %w", err)
	}
	fx := &Fixtures{
		Dir:               dir,
		Endpoint:          ep,
		ClientCIDR:        o.ClientCIDR,
		CVPNConfig:        ep.Config,
		CVPNLimitConfig:   filepath.Join(dir, "endpoint-limit.yaml"),
		CVPNScaleConfig:   filepath.Join(dir, "endpoint-scale.yaml"),
		OpenVPNConfig:     filepath.Join(dir, "server.conf"),
		CVPNTCPConfig:     filepath.Join(dir, "endpoint-tcp.yaml"),
		OpenVPNTCPConfig:  filepath.Join(dir, "server-tcp.conf"),
		CVPNIPv6Config:    filepath.Join(dir, "endpoint-ipv6.yaml"),
		OpenVPNIPv6Config: filepath.Join(dir, "server-ipv6.conf"),
		CACertFile:        filepath.Join(dir, "ca.crt"),
		CAKeyFile:         filepath.Join(dir, "ca.key"),
		TLSCryptFile:      filepath.Join(dir, "tc.key"),
		RootCAs:           x509.NewCertPool(),
	}
	fx.RootCAs.AddCert(ep.CA.Cert)
	// admin.socket is relative to the endpoint file's directory (config.Admin).
	fx.AdminSocket = filepath.Join(filepath.Dir(ep.Config), "admin.sock")
	fx.AdminSocketIPv6 = filepath.Join(filepath.Dir(ep.Config), "admin-ipv6.sock")
	if fx.TLSCrypt, err = tlscrypt.ParseStaticKey(ep.TLSKey); err != nil {
		return nil, fmt.Errorf("bench: tls-crypt key: %w", err)
	}
	if err := os.WriteFile(fx.CAKeyFile, ep.CA.KeyPEM, 0o600); err != nil {
		return nil, err
	}
	yaml, err := os.ReadFile(ep.Config)
	if err != nil {
		return nil, err
	}
	const unlimited = "bandwidth_limit_mbps: 0\n"
	if !strings.Contains(string(yaml), unlimited) {
		return nil, fmt.Errorf("bench: %s has no %q line to change for the limit scenario", ep.Config, strings.TrimSpace(unlimited))
	}
	// Each variant gets its own admin socket, so that servers of several variants run side by
	// side (the harness tests run UDP and TCP at once).
	const adminLine = "admin: {socket: admin.sock}\n"
	if !strings.Contains(string(yaml), adminLine) {
		return nil, fmt.Errorf("bench: %s has no %q line to give each variant its own socket", ep.Config, strings.TrimSpace(adminLine))
	}
	variant := func(name string) string {
		return strings.Replace(string(yaml), adminLine, "admin: {socket: admin-"+name+".sock}\n", 1)
	}
	limited := strings.Replace(variant("limit"), unlimited, fmt.Sprintf("bandwidth_limit_mbps: %g\n", o.LimitMbps), 1)
	if err := os.WriteFile(fx.CVPNLimitConfig, []byte(limited), 0o644); err != nil {
		return nil, err
	}
	cidrLine := "client_cidr_block: " + o.ClientCIDR.String() + "\n"
	if !strings.Contains(string(yaml), cidrLine) {
		return nil, fmt.Errorf("bench: %s has no %q line to change for the scale scenario", ep.Config, strings.TrimSpace(cidrLine))
	}
	scale := strings.Replace(variant("scale"), cidrLine, "client_cidr_block: "+ScaleClientCIDR.String()+"\n", 1)
	if err := os.WriteFile(fx.CVPNScaleConfig, []byte(scale), 0o644); err != nil {
		return nil, err
	}
	const udpListener = "transport: [{protocol: udp, port: 443}]\n"
	if !strings.Contains(string(yaml), udpListener) {
		return nil, fmt.Errorf("bench: %s has no %q line to change for TCP", ep.Config, strings.TrimSpace(udpListener))
	}
	tcp := strings.Replace(variant("tcp"), udpListener, "transport: [{protocol: tcp, port: 443}]\n", 1)
	if err := os.WriteFile(fx.CVPNTCPConfig, []byte(tcp), 0o644); err != nil {
		return nil, err
	}
	dual, err := cvpnIPv6Config(variant("ipv6"))
	if err != nil {
		return nil, fmt.Errorf("bench: %s: %w", ep.Config, err)
	}
	if err := os.WriteFile(fx.CVPNIPv6Config, []byte(dual), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(fx.OpenVPNConfig, []byte(openvpnConfig(o.ClientCIDR, "udp4", false, o.OpenVPNExtra)), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(fx.OpenVPNTCPConfig, []byte(openvpnConfig(o.ClientCIDR, "tcp4-server", false, o.OpenVPNExtra)), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(fx.OpenVPNIPv6Config, []byte(openvpnConfig(o.ClientCIDR, "udp6", true, o.OpenVPNExtra)), 0o644); err != nil {
		return nil, err
	}
	return fx, nil
}

// cvpnIPv6Config turns the endpoint file yaml (as internal/netlab writes it for IPv4) into
// its dual-stack twin, with the same PKI: listeners on both families (listen_ipv6_address
// defaults to ::) and IPv6 traffic. The VPC link's /64 is the VPC's IPv6 block (beside the
// IPv4 one), with a route and an authorization rule, and client addresses come from
// netlab.ClientIPv6CIDR inside it. IPv6 traffic is not source-NATed (no snat_ipv6_address):
// VPC hosts see the client's own address, as on AWS.
func cvpnIPv6Config(yaml string) (string, error) {
	for _, r := range [][2]string{
		{"vpc_cidr_blocks: [10.0.0.0/16]\n", fmt.Sprintf("vpc_cidr_blocks: [10.0.0.0/16, %s]\n", netlab.VPCPrefixIPv6)},
		{"routes:\n", fmt.Sprintf("routes:\n  - {destination_cidr_block: %s}\n", netlab.VPCPrefixIPv6)},
		{"authorization_rules:\n", fmt.Sprintf("authorization_rules:\n  - {target_network_cidr: %s, authorize_all_groups: true}\n", netlab.VPCPrefixIPv6)},
	} {
		if strings.Count(yaml, r[0]) != 1 {
			return "", fmt.Errorf("no single %q line to change for IPv6", strings.TrimSpace(r[0]))
		}
		yaml = strings.Replace(yaml, r[0], r[1], 1)
	}
	if !strings.HasSuffix(yaml, "\n") {
		yaml += "\n"
	}
	return yaml + fmt.Sprintf("endpoint_ip_address_type: dual-stack\ntraffic_ip_address_type: dual-stack\nclient_ipv6_cidr_block: %s\n", netlab.ClientIPv6CIDR), nil
}

// openvpnConfig is the stock server configured as cvpn's endpoint file is: UDP 443, tls-crypt,
// AES-256-GCM, topology subnet over the same client CIDR, the VPC route pushed, keepalive
// 10/60, room for every client of the CIDR. The kernel does its SNAT (MASQUERADE, set up by the
// lab). Everything else is OpenVPN's default, including connect-freq-initial (100 per 10 s),
// which cvpn copies.
//
// proto is one of OpenVPN's protocol names (socket.c proto_names: udp4 and tcp4-server bind
// IPv4, udp6 binds an IPv6 socket that takes both families). ipv6 adds IPv6 traffic as cvpn's
// dual-stack file has it: server-ipv6 over netlab.ClientIPv6CIDR (options.c allows /64 to /124; the
// server takes the block's first host address, its pool the rest) and the VPC's /64 pushed
// with route-ipv6. The kernel routes IPv6 without NAT; the lab routes the block back.
func openvpnConfig(cidr netip.Prefix, proto string, ipv6 bool, extra string) string {
	bits := cidr.Bits()
	vpc := netlab.VPCPrefix
	var v6 string
	if ipv6 {
		v6 = fmt.Sprintf("server-ipv6 %s\npush \"route-ipv6 %s\"\n", netlab.ClientIPv6CIDR, netlab.VPCPrefixIPv6)
	}
	return fmt.Sprintf(`# stock openvpn server, equivalent to the cvpn endpoint.yaml next to it
port %d
proto %s
dev tun
topology subnet
server %s %s
push "route %s %s"
%sca ca.crt
cert server.crt
key server.key
dh none
tls-crypt tc.key
data-ciphers AES-256-GCM
keepalive 10 60
max-clients %d
verb 3
%s`, serverPort, proto, cidr.Addr(), netmask(bits), vpc.Addr(), netmask(vpc.Bits()), v6, 1<<(32-bits)-3, extra)
}

func netmask(bits int) netip.Addr {
	v := ^uint32(0) << (32 - bits)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Identities issues n client certificates from the fixtures' CA (CN bench-<i>), spread over the
// CPUs; issuing happens before a ramp so that it does not count in it.
func Identities(ca *pki.Identity, n int) ([]tls.Certificate, error) { return IdentitiesFrom(ca, 0, n) }

// IdentitiesFrom issues the n client certificates bench-<first> to bench-<first+n-1>: load
// generators that share a run take disjoint ranges, so that no two sessions share a name.
func IdentitiesFrom(ca *pki.Identity, first, n int) ([]tls.Certificate, error) {
	certs := make([]tls.Certificate, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				id, err := pki.IssueClient(ca, fmt.Sprintf("bench-%d", first+i), nil, pki.ECDSAP256, 48*time.Hour, time.Now().Add(-time.Hour))
				if err == nil {
					certs[i], err = id.TLSCertificate()
				}
				errs[i] = err
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("bench: issue client certificates: %w", err)
	}
	return certs, nil
}

// Lab is one server under test in its own namespaces: the server namespace, the VPC namespace,
// a client namespace for the stock openvpn client and one for the load generator. Each server
// kind gets its own lab so that the kernel NAT of one cannot tax the other.
type Lab struct {
	Kind ServerKind
	Net  *netlab.Lab
	fx   *Fixtures

	StockNS, BenchNS         string
	StockServer, BenchServer netip.AddrPort // the server as each client namespace dials it
	// StockServer6 is the server as the stock client's namespace dials it over IPv6
	// (LabOptions.IPv6; invalid otherwise).
	StockServer6 netip.AddrPort
	// NAT says how the stock server's client traffic reaches the VPC: "masquerade" (iptables)
	// or "route" (a return route in the VPC namespace, when iptables is missing and
	// LabOptions.RouteIfNoIptables allows it).
	NAT string
	// Sources is how many source addresses the load generator's namespace has (LabOptions).
	Sources int
}

// LabOptions shape a lab.
type LabOptions struct {
	// RouteIfNoIptables lets the openvpn lab use a return route instead of MASQUERADE when the
	// iptables command is missing (the short test; the benchmark insists on MASQUERADE).
	RouteIfNoIptables bool
	// Sources gives the load generator's namespace that many source addresses (SourceAddrs),
	// routed from the server namespace.
	Sources int
	// IPv6 makes the lab dual-stack (internal/netlab.NewDual: IPv6 on every link), and gives
	// the stock server IPv6 forwarding and the VPC host's route to its client block.
	IPv6 bool
}

// NewLab builds the namespaces of one server kind. Close removes them and stops every process
// started through the lab.
func NewLab(ctx context.Context, kind ServerKind, fx *Fixtures, o LabOptions) (*Lab, error) {
	if err := checkRoot(); err != nil {
		return nil, err
	}
	newNet := netlab.New
	if o.IPv6 {
		newNet = netlab.NewDual
	}
	nl, err := newNet()
	if err != nil {
		return nil, fmt.Errorf("bench: lab: %w", err)
	}
	l := &Lab{Kind: kind, Net: nl, fx: fx}
	var stock netlab.ClientLink
	var s2 netip.Addr
	if stock, err = nl.AddClientLink(); err == nil {
		l.BenchNS, s2, err = nl.AddClient()
	}
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("bench: lab: %w", err)
	}
	l.StockNS = stock.NS
	l.StockServer = netip.AddrPortFrom(stock.Server, serverPort)
	if stock.ServerIPv6.IsValid() {
		l.StockServer6 = netip.AddrPortFrom(stock.ServerIPv6, serverPort)
	}
	l.BenchServer = netip.AddrPortFrom(s2, serverPort)
	if kind == OpenVPN {
		if err := l.kernelNAT(ctx, o); err != nil {
			l.Close()
			return nil, err
		}
	}
	if kind == OpenVPN && o.IPv6 {
		if err := l.kernelRoute6(ctx); err != nil {
			l.Close()
			return nil, err
		}
	}
	if o.Sources > 0 {
		if err := l.addSources(ctx, s2, SourceAddrs(o.Sources)); err != nil {
			l.Close()
			return nil, err
		}
		l.Sources = o.Sources
	}
	return l, nil
}

// addSources puts the load generator's source addresses on its namespace's link and routes
// SourcePrefix back to it from the server namespace (server is the server's address on that
// link; the load generator's own is the next one, as internal/netlab numbers them).
func (l *Lab) addSources(ctx context.Context, server netip.Addr, addrs []netip.Addr) error {
	var batch strings.Builder
	for _, a := range addrs {
		fmt.Fprintf(&batch, "addr add %s/32 dev eth0\n", a)
	}
	cmd := exec.CommandContext(ctx, "ip", "-n", l.BenchNS, "-batch", "-")
	cmd.Stdin = strings.NewReader(batch.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("bench: source addresses: %w: %s", err, tail(string(out), 500))
	}
	if err := run(ctx, "ip", "-n", l.Net.Server, "route", "add", SourcePrefix.String(), "via", server.Next().String()); err != nil {
		return fmt.Errorf("bench: route to the source addresses: %w", err)
	}
	return nil
}

// kernelRoute6 sets up what the stock server relies on for IPv6: forwarding, and the VPC
// host's route to its client block via the server. The kernel neither NATs IPv6 for it nor
// answers neighbour discovery for its clients' addresses on the VPC link, which cvpn does
// (tunnel/host), so cvpn's lab needs neither.
func (l *Lab) kernelRoute6(ctx context.Context) error {
	if err := run(ctx, "ip", "netns", "exec", l.Net.Server, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return fmt.Errorf("bench: enable IPv6 forwarding: %w", err)
	}
	if err := run(ctx, "ip", "-n", l.Net.VPC, "-6", "route", "add", netlab.ClientIPv6CIDR.String(), "via", netlab.ServerVPCIPv6.String()); err != nil {
		return fmt.Errorf("bench: route to the IPv6 client block: %w", err)
	}
	return nil
}

// kernelNAT sets up what the stock server relies on: IPv4 forwarding, and MASQUERADE of the
// client CIDR out of the VPC interface.
func (l *Lab) kernelNAT(ctx context.Context, o LabOptions) error {
	if err := run(ctx, "ip", "netns", "exec", l.Net.Server, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
		return fmt.Errorf("bench: enable forwarding: %w", err)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		if !o.RouteIfNoIptables {
			return errors.New("bench: iptables not found: the stock server's SNAT is kernel MASQUERADE (apt-get install iptables)")
		}
		l.NAT = "route"
		return run(ctx, "ip", "-n", l.Net.VPC, "route", "add", l.fx.ClientCIDR.String(), "via", netlab.ServerVPC.String())
	}
	l.NAT = "masquerade"
	return run(ctx, "ip", "netns", "exec", l.Net.Server, "iptables", "-t", "nat", "-A", "POSTROUTING",
		"-s", l.fx.ClientCIDR.String(), "-o", "eth1", "-j", "MASQUERADE")
}

// Start runs a process in namespace ns; Close stops it if it still runs.
func (l *Lab) Start(name, ns string, args ...string) (*Proc, error) {
	return l.Net.Start(name, ns, args...)
}

// ServerOptions choose how a server starts.
type ServerOptions struct {
	CVPNBin    string // path of bin/cvpn
	OpenVPNBin string // default: openvpn on PATH
	Limit      bool   // cvpn with the bandwidth limit
	TCP        bool   // listen on TCP 443 instead of UDP 443
	Scale      bool   // cvpn with ScaleClientCIDR
	IPv6       bool   // dual-stack: CVPNIPv6Config, OpenVPNIPv6Config (UDP only)
}

// StartServer starts the lab's server and waits until it serves.
func (l *Lab) StartServer(ctx context.Context, o ServerOptions) (*Proc, error) {
	var p *Proc
	var err error
	var ready string
	switch l.Kind {
	case CVPN:
		conf := l.fx.CVPNConfig
		switch {
		case o.Limit && o.TCP:
			return nil, errors.New("bench: the limit scenario runs over UDP only")
		case o.IPv6 && (o.Limit || o.TCP || o.Scale):
			return nil, errors.New("bench: the dual-stack configuration is UDP only, without limit or scale")
		case o.IPv6:
			conf = l.fx.CVPNIPv6Config
		case o.Limit:
			conf = l.fx.CVPNLimitConfig
		case o.Scale:
			conf = l.fx.CVPNScaleConfig
		case o.TCP:
			conf = l.fx.CVPNTCPConfig
		}
		if o.CVPNBin == "" {
			return nil, errors.New("bench: no cvpn binary given")
		}
		p, err = l.Start("cvpn", l.Net.Server, o.CVPNBin, "serve", "--config", conf)
		ready = "cvpn listening"
	case OpenVPN:
		if o.Limit {
			return nil, errors.New("bench: the stock openvpn server has no per-client bandwidth limit")
		}
		bin := o.OpenVPNBin
		if bin == "" {
			if bin, err = exec.LookPath("openvpn"); err != nil {
				return nil, errors.New("bench: openvpn not found (apt-get install openvpn)")
			}
		}
		conf := l.fx.OpenVPNConfig
		switch {
		case o.IPv6 && o.TCP:
			return nil, errors.New("bench: the dual-stack configuration is UDP only")
		case o.IPv6:
			conf = l.fx.OpenVPNIPv6Config
		case o.TCP:
			conf = l.fx.OpenVPNTCPConfig
		}
		p, err = l.Start("openvpn server", l.Net.Server, bin, "--cd", l.fx.Dir, "--config", conf)
		ready = "Initialization Sequence Completed"
	default:
		return nil, fmt.Errorf("bench: unknown server kind %q", l.Kind)
	}
	if err != nil {
		return nil, err
	}
	if err := p.WaitForContext(ctx, ready, 20*time.Second); err != nil {
		_ = p.Stop()
		return nil, err
	}
	return p, nil
}

// StartStockClient starts the stock openvpn client in the stock client namespace with a fresh
// AWS-style profile and waits until its tunnel is up.
func (l *Lab) StartStockClient(ctx context.Context, name string) (*Proc, error) {
	return l.startStockClient(ctx, name, l.StockServer, "udp")
}

// StartStockClient6 is StartStockClient dialling the server's IPv6 address with proto udp6
// (OpenVPN's name for UDP over an IPv6 socket, socket.c proto_names); the lab must have been
// built with LabOptions.IPv6.
func (l *Lab) StartStockClient6(ctx context.Context, name string) (*Proc, error) {
	if !l.StockServer6.IsValid() {
		return nil, errors.New("bench: the lab has no IPv6 addresses (LabOptions.IPv6)")
	}
	return l.startStockClient(ctx, name, l.StockServer6, "udp6")
}

func (l *Lab) startStockClient(ctx context.Context, name string, server netip.AddrPort, proto string) (*Proc, error) {
	profile, err := l.fx.Endpoint.ClientProfile(name, server.Addr(), netlab.ProfileOptions{Proto: proto, Port: int(server.Port())})
	if err != nil {
		return nil, fmt.Errorf("bench: client profile: %w", err)
	}
	p, err := l.Start("openvpn client "+name, l.StockNS, "openvpn", "--config", profile)
	if err != nil {
		return nil, err
	}
	if err := p.WaitForContext(ctx, "Initialization Sequence Completed", 30*time.Second); err != nil {
		_ = p.Stop()
		return nil, err
	}
	return p, nil
}

// Close stops every process the lab started, newest first, and deletes its namespaces.
func (l *Lab) Close() { l.Net.Close() }
