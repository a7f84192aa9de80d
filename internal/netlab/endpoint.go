package netlab

import (
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// Endpoint is a throwaway endpoint directory: PKI, tls-crypt key and endpoint.yaml.
type Endpoint struct {
	Dir    string
	Config string // path of endpoint.yaml
	// AdminSocket is the admin API's socket (admin.socket), unless Extra set another.
	AdminSocket string
	CA          *pki.Identity
	TLSKey      []byte // tls-crypt key file contents
	// AuthKey is the tls-auth key file; the client profile inlines it with the opposite direction.
	AuthKey       []byte
	AuthDirection string
	AuthDigest    string
}

// EndpointOptions shape the endpoint file. Zero values give the lab defaults.
type EndpointOptions struct {
	ClientCIDR string // default 10.2.0.0/22
	// EndpointIPAddressType and TrafficIPAddressType are endpoint_ip_address_type and
	// traffic_ip_address_type ("ipv4", "ipv6" or "dual-stack"); "" leaves the key out (ipv4).
	// With IPv6 traffic the defaults below gain the lab's IPv6 networks (a dual-stack lab,
	// NewDual); with IPv6 traffic only, client_cidr_block and snat_address are left out.
	EndpointIPAddressType string
	TrafficIPAddressType  string
	// ClientIPv6CIDR is client_ipv6_cidr_block; "" writes ClientIPv6CIDR when the traffic
	// carries IPv6 (ClientIPv6CIDROutside with SNATIPv6).
	ClientIPv6CIDR string
	// ListenAddress replaces listen_address (0.0.0.0, or :: with endpoint_ip_address_type
	// ipv6); ListenIPv6Address is listen_ipv6_address, left out when "".
	ListenAddress     string
	ListenIPv6Address string
	// SNATIPv6 sets target_network.snat_ipv6_address to SNATIPv6Address: IPv6 traffic is
	// source-NATed like IPv4, instead of leaving with the clients' own addresses.
	SNATIPv6 bool
	// VPCCIDRBlocks replaces vpc_cidr_blocks (YAML flow items): 10.0.0.0/16, and VPCCIDRIPv6
	// with IPv6 traffic, by default.
	VPCCIDRBlocks []string
	TLSCrypt      bool
	// TLSAuth protects the control channel with tls-auth instead; TLSAuthDirection is "0", "1" or
	// "" (bidirectional) for the server; TLSAuthDigest is SHA1 (default), SHA256 or SHA512.
	TLSAuth          bool
	TLSAuthDirection string
	TLSAuthDigest    string
	// Rules replaces the default authorization rule (all groups to 10.0.0.0/16, and to
	// VPCCIDRIPv6 with IPv6 traffic); YAML flow items.
	Rules []string
	// Routes replaces the default route list (10.0.1.0/24, and VPCPrefixIPv6 with IPv6
	// traffic); YAML flow items, e.g.
	// "{destination_cidr_block: 10.2.0.0/22, target: local}".
	Routes []string
	// Transport replaces the default listener list (YAML flow), e.g. "[{protocol: udp, port: 443}, {protocol: tcp, port: 443}]".
	Transport string
	// SplitTunnel false pushes redirect-gateway.
	FullTunnel bool
	// BandwidthMbps is bandwidth_limit_mbps; "" writes 0 (unlimited) so throughput tests are not
	// capped by the product default of 10.
	BandwidthMbps string
	// DefaultBandwidth leaves bandwidth_limit_mbps out of the file, so the product default (10)
	// applies; BandwidthMbps is then ignored.
	DefaultBandwidth bool
	// Keepalive replaces the default keepalive mapping (YAML flow).
	Keepalive string
	// NoCertificate leaves authentication.certificate out: clients are not authenticated by
	// certificate (a directory-only endpoint, with Authentication naming the directory).
	NoCertificate bool
	// Authentication is YAML written under the authentication key after the certificate
	// line, each line indented by two spaces already (e.g. "  directory:\n    url: ...\n").
	Authentication string
	// Extra is appended to the file verbatim.
	Extra string
}

// WriteEndpoint creates the endpoint directory in dir.
func WriteEndpoint(dir string, o EndpointOptions) (*Endpoint, error) {
	now := time.Now()
	ca, err := pki.NewCA("cvpn lab CA", pki.ECDSAP256, 48*time.Hour, now)
	if err != nil {
		return nil, err
	}
	srv, err := pki.IssueServer(ca, "cvpn-lab-server", []string{"server.cvpn.test"}, pki.ECDSAP256, 24*time.Hour, now)
	if err != nil {
		return nil, err
	}
	if err := pki.WriteIdentity(srv, filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.CertPEM, 0o644); err != nil {
		return nil, err
	}
	if o.NoCertificate {
		// Without client_root_ca_file, the CA that profiles carry is the root the server's
		// certificate file chains to: it follows the server's certificate there.
		f, err := os.OpenFile(filepath.Join(dir, "server.crt"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		_, err = f.Write(ca.CertPEM)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
	}
	e := &Endpoint{Dir: dir, Config: filepath.Join(dir, "endpoint.yaml"), CA: ca, AdminSocket: filepath.Join(dir, "admin.sock")}
	v4, v6 := o.TrafficIPAddressType != "ipv6", o.TrafficIPAddressType == "ipv6" || o.TrafficIPAddressType == "dual-stack"
	if o.ClientCIDR == "" {
		o.ClientCIDR = "10.2.0.0/22"
	}
	if o.ClientIPv6CIDR == "" && v6 {
		o.ClientIPv6CIDR = ClientIPv6CIDR.String()
		if o.SNATIPv6 {
			o.ClientIPv6CIDR = ClientIPv6CIDROutside.String()
		}
	}
	if len(o.Rules) == 0 {
		if v4 {
			o.Rules = append(o.Rules, "{target_network_cidr: 10.0.0.0/16, authorize_all_groups: true}")
		}
		if v6 {
			o.Rules = append(o.Rules, fmt.Sprintf("{target_network_cidr: %s, authorize_all_groups: true}", VPCCIDRIPv6))
		}
	}
	if len(o.VPCCIDRBlocks) == 0 {
		if v4 {
			o.VPCCIDRBlocks = append(o.VPCCIDRBlocks, "10.0.0.0/16")
		}
		if v6 {
			o.VPCCIDRBlocks = append(o.VPCCIDRBlocks, VPCCIDRIPv6.String())
		}
	}
	if o.ListenAddress == "" {
		o.ListenAddress = "0.0.0.0"
		if o.EndpointIPAddressType == "ipv6" {
			o.ListenAddress = "'::'"
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "description: cvpn lab endpoint\n")
	if o.EndpointIPAddressType != "" {
		fmt.Fprintf(&b, "endpoint_ip_address_type: %s\n", o.EndpointIPAddressType)
	}
	if o.TrafficIPAddressType != "" {
		fmt.Fprintf(&b, "traffic_ip_address_type: %s\n", o.TrafficIPAddressType)
	}
	if v4 {
		fmt.Fprintf(&b, "client_cidr_block: %s\n", o.ClientCIDR)
	}
	if v6 {
		fmt.Fprintf(&b, "client_ipv6_cidr_block: %s\n", o.ClientIPv6CIDR)
	}
	fmt.Fprintf(&b, "vpc_cidr_blocks: [%s]\n", strings.Join(o.VPCCIDRBlocks, ", "))
	fmt.Fprintf(&b, "listen_address: %s\n", o.ListenAddress)
	if o.ListenIPv6Address != "" {
		fmt.Fprintf(&b, "listen_ipv6_address: %s\n", o.ListenIPv6Address)
	}
	if o.Transport == "" {
		o.Transport = "[{protocol: udp, port: 443}]"
	}
	fmt.Fprintf(&b, "transport: %s\n", o.Transport)
	fmt.Fprintf(&b, "server_certificate: {cert_file: server.crt, key_file: server.key}\n")
	if o.TLSCrypt {
		k, err := tlscrypt.GenerateStaticKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		e.TLSKey = k.Marshal()
		if err := os.WriteFile(filepath.Join(dir, "tc.key"), e.TLSKey, 0o600); err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "control_channel: {tls_crypt_key_file: tc.key}\n")
	}
	if o.TLSAuth {
		k, err := tlscrypt.GenerateStaticKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		e.AuthKey, e.AuthDirection, e.AuthDigest = k.Marshal(), o.TLSAuthDirection, o.TLSAuthDigest
		if err := os.WriteFile(filepath.Join(dir, "ta.key"), e.AuthKey, 0o600); err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "control_channel:\n  tls_auth_key_file: ta.key\n")
		if o.TLSAuthDirection != "" {
			fmt.Fprintf(&b, "  tls_auth_key_direction: %s\n", o.TLSAuthDirection)
		}
		if o.TLSAuthDigest != "" {
			fmt.Fprintf(&b, "  tls_auth_digest: %s\n", o.TLSAuthDigest)
		}
	}
	fmt.Fprintf(&b, "authentication:\n")
	if !o.NoCertificate {
		fmt.Fprintf(&b, "  certificate: {client_root_ca_file: ca.crt}\n")
	}
	b.WriteString(o.Authentication)
	fmt.Fprintf(&b, "data_ciphers: [AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305]\n")
	target := []string{"interface: eth1"}
	if v4 {
		target = append(target, "snat_address: "+SNATAddress.String())
	}
	if o.SNATIPv6 {
		target = append(target, "snat_ipv6_address: "+SNATIPv6Address.String())
	}
	fmt.Fprintf(&b, "target_network: {%s}\n", strings.Join(target, ", "))
	fmt.Fprintf(&b, "tun: {name: cvpn0}\n")
	if len(o.Routes) == 0 {
		if v4 {
			o.Routes = append(o.Routes, fmt.Sprintf("{destination_cidr_block: %s}", VPCPrefix))
		}
		if v6 {
			o.Routes = append(o.Routes, fmt.Sprintf("{destination_cidr_block: %s}", VPCPrefixIPv6))
		}
	}
	fmt.Fprintf(&b, "routes:\n")
	for _, r := range o.Routes {
		fmt.Fprintf(&b, "  - %s\n", r)
	}
	fmt.Fprintf(&b, "authorization_rules:\n")
	for _, r := range o.Rules {
		fmt.Fprintf(&b, "  - %s\n", r)
	}
	fmt.Fprintf(&b, "split_tunnel: %v\n", !o.FullTunnel)
	if o.BandwidthMbps == "" {
		o.BandwidthMbps = "0"
	}
	if !o.DefaultBandwidth {
		fmt.Fprintf(&b, "bandwidth_limit_mbps: %s\n", o.BandwidthMbps)
	}
	if o.Keepalive == "" {
		o.Keepalive = "{ping_seconds: 10, ping_restart_seconds: 60}"
	}
	fmt.Fprintf(&b, "keepalive: %s\n", o.Keepalive)
	if !strings.Contains(o.Extra, "admin:") {
		// Each lab endpoint has its own admin API, so that endpoints may run side by side.
		fmt.Fprintf(&b, "admin: {socket: admin.sock}\n")
	}
	b.WriteString(o.Extra)
	if err := os.WriteFile(e.Config, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	return e, nil
}

// ProfileOptions shape a client profile.
type ProfileOptions struct {
	Groups []string
	// CA signs the client certificate; nil uses the endpoint's CA.
	CA *pki.Identity
	// Proto is the profile's proto: "udp" (default) or "tcp", or one that forces the family
	// (OpenVPN 2.6's socket.c proto_names: "udp4", "udp6", "tcp4-client", "tcp6-client"; "tcp6"
	// is "tcp6-client" in a client). With an IPv6 server address the client dials it over IPv6
	// whichever is given. Port defaults to 443.
	Proto string
	Port  int
	// Extra lines appended to the profile.
	Extra string
	// Remotes, when set, replace the server address: the profile lists a remote for each, in
	// order (a cluster lab's node addresses, Cluster.NodePublic), with server-poll-timeout
	// PollTimeout (default 10, as exported cluster profiles have) so the client moves on from a
	// dead node; RemoteRandom adds remote-random, as exported cluster profiles have. A test
	// that wants a client on a given node first lists that node first without RemoteRandom.
	Remotes      []netip.Addr
	RemoteRandom bool
	PollTimeout  int
}

// ClientProfile issues a client certificate and writes an AWS-style .ovpn for it that dials
// server:443 over UDP (server may be IPv6). It returns the profile's path.
func (e *Endpoint) ClientProfile(name string, server netip.Addr, o ProfileOptions) (string, error) {
	ca := o.CA
	if ca == nil {
		ca = e.CA
	}
	id, err := pki.IssueClient(ca, name, o.Groups, pki.ECDSAP256, 24*time.Hour, time.Now())
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if o.Proto == "" {
		o.Proto = "udp"
	}
	if o.Port == 0 {
		o.Port = 443
	}
	if len(o.Remotes) == 0 {
		fmt.Fprintf(&b, "client\ndev tun\nproto %s\nremote %s %d\nremote-cert-tls server\n", o.Proto, server, o.Port)
	} else {
		fmt.Fprintf(&b, "client\ndev tun\nproto %s\n", o.Proto)
		for _, r := range o.Remotes {
			fmt.Fprintf(&b, "remote %s %d\n", r, o.Port)
		}
		if o.RemoteRandom {
			b.WriteString("remote-random\n")
		}
		if o.PollTimeout == 0 {
			o.PollTimeout = 10
		}
		fmt.Fprintf(&b, "server-poll-timeout %d\nremote-cert-tls server\n", o.PollTimeout)
	}
	fmt.Fprintf(&b, "cipher AES-256-GCM\nreneg-sec 0\nnobind\nresolv-retry 5\nconnect-retry 1\nverb 3\n")
	fmt.Fprintf(&b, "<ca>\n%s</ca>\n<cert>\n%s</cert>\n<key>\n%s</key>\n", e.CA.CertPEM, id.CertPEM, id.KeyPEM)
	if e.TLSKey != nil {
		fmt.Fprintf(&b, "<tls-crypt>\n%s</tls-crypt>\n", e.TLSKey)
	}
	if e.AuthKey != nil {
		fmt.Fprintf(&b, "<tls-auth>\n%s</tls-auth>\n", e.AuthKey)
		switch e.AuthDirection {
		case "0":
			b.WriteString("key-direction 1\n")
		case "1":
			b.WriteString("key-direction 0\n")
		}
		if e.AuthDigest != "" {
			fmt.Fprintf(&b, "auth %s\n", e.AuthDigest)
		}
	}
	b.WriteString(o.Extra)
	path := filepath.Join(e.Dir, name+".ovpn")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}
