package config

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/cvpn/cvpn/ippool"
)

// This file is the schema: which keys exist, what each must hold, the
// defaults, and the rules that relate one key to another.

var topKeys = []string{
	"description", "remote_hostname", "endpoint_ip_address_type", "traffic_ip_address_type",
	"client_cidr_block", "client_ipv6_cidr_block", "vpc_cidr_blocks", "listen_address", "listen_ipv6_address",
	"transport", "server_certificate", "control_channel", "authentication",
	"data_ciphers", "target_network", "tun", "nat", "routes", "authorization_rules",
	"split_tunnel", "allow_host_access", "dns_servers", "session_timeout_hours", "client_login_banner",
	"bandwidth_limit_mbps", "bandwidth_limits", "reneg_seconds", "keepalive", "max_connections_per_user",
	"connection_log", "admin", "metrics", "state_dir", "client_connect_handler", "portal", "cluster",
}

// Limits.
const (
	maxSocketPath   = 107 // sun_path less its terminating NUL
	minClientPrefix = 12  // AWS Client VPN allows client CIDR blocks /12../22
	maxClientPrefix = 22
	minMTU          = 576 // RFC 791 minimum reassembly size
	minMTU6         = 1280
	maxMTU          = 9000
	maxKeepalive    = 24 * 60 * 60 // seconds; also keeps Duration far from overflow
	ifNameMax       = 15           // Linux IFNAMSIZ less the NUL
	maxDNSServers   = 2            // per family; AWS Client VPN pushes at most two
	maxBannerRunes  = 1400         // AWS ClientLoginBannerOptions.BannerText
	maxBandwidth    = 100000       // Mbps; far above any one connection
	minReneg        = 10           // seconds; shorter only burns CPU on handshakes
	// maxConnectionsPerUser bounds max_connections_per_user; 0 there means unlimited.
	maxConnectionsPerUser = 1 << 20
	maxReneg              = 7 * 24 * 60 * 60
	// nat.max_mappings: below 1024 a few clients exhaust it; 4194304
	// mappings take over a gigabyte.
	minNATMappings = 1024
	maxNATMappings = 1 << 22
)

// sessionTimeouts are the values AWS Client VPN allows for
// SessionTimeoutHours.
var sessionTimeouts = []int64{8, 10, 12, 24}

// placed remembers where a value that passed its own checks came from, for
// rules that compare it with other keys.
type placed struct {
	path string
	line int
}

// endpoint walks the top-level mapping. It returns nil only when root is not
// a mapping; otherwise the result is meaningful only if no error was
// reported.
func (d *decoder) endpoint(root *yaml.Node) *Endpoint {
	top, ok := d.mapping(root, "", 0, topKeys...)
	if !ok {
		return nil
	}
	ep := &Endpoint{
		EndpointIPAddressType: IPv4,
		TrafficIPAddressType:  IPv4,
		Transport:             []Listener{{Protocol: ProtocolUDP, Port: defaultPort}},
		DataCiphers:           slices.Clone(defaultDataCiphers),
		TUN:                   TUN{Name: defaultTUNName, MTU: defaultMTU},
		NAT:                   NAT{MaxMappings: defaultNATMappings},
		SplitTunnel:           true,
		Keepalive:             Keepalive{Ping: defaultPing * time.Second, PingRestart: defaultPingRestart * time.Second},
		Admin:                 Admin{Socket: DefaultAdminSocket},
		ControlChannel: ControlChannel{
			TLSAuthKeyDirection: KeyDirectionBidirectional,
			TLSAuthDigest:       DigestSHA1,
		},
		SessionTimeout:        defaultSessionTimeout * time.Hour,
		BandwidthLimitMbps:    defaultBandwidthLimitMbps,
		Reneg:                 defaultReneg * time.Second,
		MaxConnectionsPerUser: defaultMaxConnectionsPerUser,
		StateDir:              DefaultStateDir,
	}

	if n, path, ok := top.get("description"); ok {
		ep.Description, _ = d.str(n, path)
	}
	var remote placed
	if n, path, ok := top.get("remote_hostname"); ok {
		ep.RemoteHostname, _ = d.hostname(n, path)
		remote = placed{path, n.Line}
	}
	if n, path, ok := top.get("endpoint_ip_address_type"); ok {
		ep.EndpointIPAddressType, _ = d.addressType(n, path)
	}
	if n, path, ok := top.get("traffic_ip_address_type"); ok {
		ep.TrafficIPAddressType, _ = d.addressType(n, path)
	}
	d.traffic = ep.TrafficIPAddressType
	if a, err := netip.ParseAddr(ep.RemoteHostname); err == nil && remote.path != "" {
		// Clients dial this address: it must be of a family the endpoint listens on.
		if t := ep.EndpointIPAddressType; a.Unmap().Is4() && !HasIPv4(t) || a.Is6() && !a.Is4In6() && !HasIPv6(t) {
			d.errorf(remote.path, remote.line, "%s is %s, but endpoint_ip_address_type is %s: clients could not reach it", a, family(a.Unmap()), t)
		}
	}
	var client, client6 placed
	if HasIPv4(ep.TrafficIPAddressType) {
		if n, path, ok := d.required(top, "client_cidr_block", ""); ok {
			if p, ok := d.prefix(n, path); ok {
				switch b := p.Bits(); {
				case !p.Addr().Is4():
					d.errorf(path, n.Line, "%s is not IPv4; IPv6 client addresses come from client_ipv6_cidr_block", p)
				case b < minClientPrefix || b > maxClientPrefix:
					d.errorf(path, n.Line, "%s: prefix length must be /%d to /%d, got /%d", p, minClientPrefix, maxClientPrefix, b)
				default:
					ep.ClientCIDRBlock, client = p, placed{path, n.Line}
				}
			}
		}
	} else if _, path, ok := top.get("client_cidr_block"); ok {
		d.errorf(path, top.keyLine("client_cidr_block"), "IPv4 traffic is off (traffic_ip_address_type: %s): leave client_cidr_block out, or carry IPv4 with %s", ep.TrafficIPAddressType, DualStack)
	}
	if HasIPv6(ep.TrafficIPAddressType) {
		if n, path, ok := d.required(top, "client_ipv6_cidr_block", fmt.Sprintf(" (traffic_ip_address_type %s carries IPv6)", ep.TrafficIPAddressType)); ok {
			if p, ok := d.prefix(n, path); ok {
				switch b := p.Bits(); {
				case !p.Addr().Is6():
					d.errorf(path, n.Line, "%s is not IPv6", p)
				case b < ippool.MinPrefixBits6 || b > ippool.MaxPrefixBits6:
					d.errorf(path, n.Line, "%s: prefix length must be /%d to /%d, got /%d", p, ippool.MinPrefixBits6, ippool.MaxPrefixBits6, b)
				default:
					ep.ClientIPv6CIDRBlock, client6 = p, placed{path, n.Line}
				}
			}
		}
	} else if _, path, ok := top.get("client_ipv6_cidr_block"); ok {
		d.errorf(path, top.keyLine("client_ipv6_cidr_block"), "IPv6 traffic is off (traffic_ip_address_type: %s): set traffic_ip_address_type to %s or %s, or leave client_ipv6_cidr_block out", ep.TrafficIPAddressType, IPv6, DualStack)
	}
	vpcAt, vpcOK := d.vpcCIDRBlocks(top, ep)
	d.listenAddresses(top, ep)
	if n, path, ok := top.get("transport"); ok {
		ep.Transport = d.transport(n, path)
	}
	if n, path, ok := d.required(top, "server_certificate", ""); ok {
		if m, ok := d.mapping(n, path, top.keyLine("server_certificate"), "cert_file", "key_file"); ok {
			if n, path, ok := d.required(m, "cert_file", ""); ok {
				ep.ServerCertificate.CertFile, _ = d.fileRef(n, path)
			}
			if n, path, ok := d.required(m, "key_file", ""); ok {
				ep.ServerCertificate.KeyFile, _ = d.fileRef(n, path)
			}
		}
	}
	if n, path, ok := top.get("control_channel"); ok {
		d.controlChannel(n, path, top.keyLine("control_channel"), ep)
	}
	federated := d.authentication(top, ep)
	if n, path, ok := top.get("data_ciphers"); ok {
		ep.DataCiphers = d.dataCiphers(n, path)
	}
	// The cluster section comes before target_network: its SNAT addresses replace that one's.
	var nodeAt clusterPlaces
	_, _, clustered := top.get("cluster")
	if n, path, ok := top.get("cluster"); ok {
		nodeAt = d.cluster(n, path, top.keyLine("cluster"), ep)
	}
	var snat, snat6 placed
	var ifName string
	if n, path, ok := d.required(top, "target_network", ""); ok {
		if m, ok := d.mapping(n, path, top.keyLine("target_network"), "interface", "snat_address", "snat_ipv6_address"); ok {
			if n, path, ok := d.required(m, "interface", " (the interface facing the private network)"); ok {
				if s, ok := d.ifName(n, path); ok {
					ep.TargetNetwork.Interface, ifName = s, s
				}
			}
			if HasIPv4(ep.TrafficIPAddressType) {
				// In a cluster each node's own cluster.snat_address replaces it, and may.
				if n, path, ok := m.get("snat_address"); ok || !clustered {
					if !ok {
						d.errorf(path, m.keyLine("snat_address"), "required (the endpoint's own IPv4 address in the private network)")
					} else if a, ok := d.addr(n, path, only4); ok {
						ep.TargetNetwork.SNATAddress, snat = a, placed{path, n.Line}
					}
				}
			} else if n, path, ok := m.get("snat_address"); ok {
				d.errorf(path, n.Line, "IPv4 traffic is off (traffic_ip_address_type: %s): leave snat_address out", ep.TrafficIPAddressType)
			}
			if n, path, ok := m.get("snat_ipv6_address"); ok {
				if !HasIPv6(ep.TrafficIPAddressType) {
					d.errorf(path, n.Line, "IPv6 traffic is off (traffic_ip_address_type: %s): leave snat_ipv6_address out", ep.TrafficIPAddressType)
				} else if a, ok := d.addr(n, path, only6); ok {
					ep.TargetNetwork.SNATIPv6Address, snat6 = a, placed{path, n.Line}
				}
			}
		}
	}
	// A node source-NATs to its own addresses: the rules of target_network's apply to them.
	if nodeAt.snat.path != "" {
		ep.TargetNetwork.SNATAddress, snat = ep.Cluster.SNATAddress, nodeAt.snat
	}
	if nodeAt.snat6.path != "" {
		ep.TargetNetwork.SNATIPv6Address, snat6 = ep.Cluster.SNATIPv6Address, nodeAt.snat6
	}
	var tunName placed
	if n, path, ok := top.get("tun"); ok {
		if m, ok := d.mapping(n, path, top.keyLine("tun"), "name", "mtu"); ok {
			if n, path, ok := m.get("name"); ok {
				if s, ok := d.ifName(n, path); ok {
					ep.TUN.Name, tunName = s, placed{path, n.Line}
				}
			}
			if n, path, ok := m.get("mtu"); ok {
				if v, ok := d.integer(n, path, minMTU, maxMTU); ok {
					if v < minMTU6 && HasIPv6(ep.TrafficIPAddressType) {
						d.errorf(path, n.Line, "%d is below %d, the least an IPv6 link may carry (RFC 8200 §5), and traffic_ip_address_type %s carries IPv6",
							v, minMTU6, ep.TrafficIPAddressType)
					} else {
						ep.TUN.MTU = int(v)
					}
				}
			}
		}
	}
	if n, path, ok := top.get("nat"); ok {
		d.nat(n, path, top.keyLine("nat"), ep)
	}
	var routeAt []routePlaces
	if n, path, ok := top.get("routes"); ok {
		ep.Routes, routeAt = d.routes(n, path)
	}
	if n, path, ok := top.get("authorization_rules"); ok {
		ep.AuthorizationRules = d.authorizationRules(n, path)
	}
	if n, path, ok := top.get("split_tunnel"); ok {
		if v, ok := d.boolean(n, path); ok {
			ep.SplitTunnel = v
		}
	}
	if n, path, ok := top.get("allow_host_access"); ok {
		if v, ok := d.boolean(n, path); ok {
			ep.AllowHostAccess = v
		}
	}
	if n, path, ok := top.get("dns_servers"); ok {
		ep.DNSServers = d.dnsServers(n, path)
	}
	if n, path, ok := top.get("session_timeout_hours"); ok {
		if v, ok := d.integer(n, path, math.MinInt64, math.MaxInt64); ok {
			if !slices.Contains(sessionTimeouts, v) {
				d.errorf(path, n.Line, "%d is not 8, 10, 12 or 24 (the session timeouts AWS Client VPN offers)", v)
			} else {
				ep.SessionTimeout = time.Duration(v) * time.Hour
			}
		}
	}
	if n, path, ok := top.get("client_login_banner"); ok {
		ep.ClientLoginBanner, _ = d.banner(n, path)
	}
	if n, path, ok := top.get("bandwidth_limit_mbps"); ok {
		if v, ok := d.number(n, path, maxBandwidth); ok {
			ep.BandwidthLimitMbps = v
		}
	}
	if n, path, ok := top.get("bandwidth_limits"); ok {
		ep.BandwidthLimits = d.bandwidthLimits(n, path)
	}
	if n, path, ok := top.get("reneg_seconds"); ok {
		if v, ok := d.integer(n, path, 0, maxReneg); ok {
			if v != 0 && v < minReneg {
				d.errorf(path, n.Line, "%d is shorter than %d seconds; use 0 to turn renegotiation off", v, minReneg)
			} else {
				ep.Reneg = time.Duration(v) * time.Second
			}
		}
	}
	if n, path, ok := top.get("keepalive"); ok {
		d.keepalive(n, path, top.keyLine("keepalive"), ep)
	}
	if n, path, ok := top.get("max_connections_per_user"); ok {
		if v, ok := d.integer(n, path, 0, maxConnectionsPerUser); ok {
			ep.MaxConnectionsPerUser = int(v)
		}
	}
	if n, path, ok := top.get("connection_log"); ok {
		d.connectionLog(n, path, top.keyLine("connection_log"), ep)
	}
	if n, path, ok := top.get("admin"); ok {
		d.admin(n, path, top.keyLine("admin"), ep)
	}
	var metrics placed
	if n, path, ok := top.get("metrics"); ok {
		metrics = d.metrics(n, path, top.keyLine("metrics"), ep)
	}
	if n, path, ok := top.get("state_dir"); ok {
		ep.StateDir, _ = d.stateDir(n, path)
	}
	if n, path, ok := top.get("client_connect_handler"); ok {
		ep.ClientConnectHandler = d.clientConnectHandler(n, path, top.keyLine("client_connect_handler"))
	}
	var portal placed
	_, _, hasPortal := top.get("portal")
	if n, path, ok := top.get("portal"); ok {
		portal = d.portal(n, path, top.keyLine("portal"), ep)
	}

	// Rules across keys, checked on values that passed their own checks.
	if client.path != "" {
		for i, v := range ep.VPCCIDRBlocks {
			if v.Overlaps(ep.ClientCIDRBlock) {
				d.errorf(client.path, client.line, "%s overlaps %s %s; client addresses must lie outside the private network",
					ep.ClientCIDRBlock, vpcAt[i].path, v)
			}
		}
	}
	if client6.path != "" && vpcOK {
		d.clientIPv6Block(ep, client6, vpcAt)
	}
	d.routeRules(ep, routeAt)
	// With a bad vpc_cidr_blocks entry the address may belong to it, so the
	// check would only add noise.
	if snat.path != "" && vpcOK && len(ep.VPCCIDRBlocks) > 0 {
		inside := slices.ContainsFunc(ep.VPCCIDRBlocks, func(p netip.Prefix) bool { return p.Contains(ep.TargetNetwork.SNATAddress) })
		if !inside {
			d.errorf(snat.path, snat.line, "%s is not inside any of vpc_cidr_blocks (%s)", ep.TargetNetwork.SNATAddress, joinPrefixes(ep.VPCCIDRBlocks))
		}
	}
	if snat6.path != "" && vpcOK && len(ep.VPCCIDRBlocks) > 0 {
		a := ep.TargetNetwork.SNATIPv6Address
		switch {
		case !slices.ContainsFunc(ep.VPCCIDRBlocks, func(p netip.Prefix) bool { return p.Contains(a) }):
			d.errorf(snat6.path, snat6.line, "%s is not inside any of vpc_cidr_blocks (%s)", a, joinPrefixes(ep.VPCCIDRBlocks))
		case ep.ClientIPv6CIDRBlock.Contains(a):
			d.errorf(snat6.path, snat6.line, "%s is inside client_ipv6_cidr_block %s; the SNAT address is the endpoint's own, not a client's", a, ep.ClientIPv6CIDRBlock)
		}
	}
	if ep.NAT.MaxMappingsPerClient == 0 {
		client := ep.ClientCIDRBlock
		if !client.IsValid() {
			client = ep.ClientIPv6CIDRBlock
		}
		ep.NAT.MaxMappingsPerClient = defaultMappingsPerClient(ep.NAT.MaxMappings, client)
	}
	if tunName.path != "" && ifName != "" && ep.TUN.Name == ifName {
		d.errorf(tunName.path, tunName.line, "%q is also target_network.interface; the tunnel needs its own device", ep.TUN.Name)
	}
	if metrics.path != "" {
		d.offListeners(ep, metrics, ep.Metrics.ListenAddress)
	}
	if portal.path != "" {
		a := ep.Portal.ListenAddress
		d.offListeners(ep, portal, a)
		if m := ep.Metrics.ListenAddress; metrics.path != "" && sameSocket(a, m) {
			d.errorf(portal.path, portal.line, "%s is also metrics.listen_address (%s); the portal needs a socket of its own", a, m)
		}
	}
	// A federated login sends the user to the portal's login link.
	if ep.Authentication.Federated != nil && !hasPortal {
		d.errorf("portal", federated.line, "required when authentication.federated is set: the login link clients are sent to is on the portal (set portal.public_url)")
	}
	return ep
}

// offListeners reports a TCP socket (metrics' or the portal's, from at)
// that is also a tcp transport listener's socket.
func (d *decoder) offListeners(ep *Endpoint, at placed, a netip.AddrPort) {
	for _, l := range ep.Transport {
		if l.Protocol == ProtocolTCP && sameSocket(a, netip.AddrPortFrom(ep.ListenAddress, l.Port)) {
			d.errorf(at.path, at.line, "%s is also the %s listener's socket (%s:%d)", a, l, ep.ListenAddress, l.Port)
		}
	}
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// vpcCIDRBlocks fills ep.VPCCIDRBlocks with the valid entries and returns
// where each came from; ok is false when any entry (or the key) was bad.
func (d *decoder) vpcCIDRBlocks(top mapping, ep *Endpoint) (at []placed, ok bool) {
	n, path, ok := d.required(top, "vpc_cidr_blocks", " (the private networks behind the endpoint)")
	if !ok {
		return nil, false
	}
	items, ok := d.nonEmptyList(n, path)
	if !ok {
		return nil, false
	}
	first := map[netip.Prefix]string{}
	for i, item := range items {
		ipath := index(path, i)
		p, good := d.prefix(item, ipath)
		if !good || !d.trafficFamily(p, ipath, item.Line) {
			ok = false
			continue
		}
		if prev, dup := first[p]; dup {
			d.errorf(ipath, item.Line, "%s is already listed at %s", p, prev)
			continue
		}
		first[p] = ipath
		ep.VPCCIDRBlocks = append(ep.VPCCIDRBlocks, p)
		at = append(at, placed{ipath, item.Line})
	}
	return at, ok
}

func (d *decoder) transport(n *yaml.Node, path string) []Listener {
	items, ok := d.nonEmptyList(n, path)
	if !ok {
		return nil
	}
	var out []Listener
	first := map[Listener]string{}
	for i, item := range items {
		ipath := index(path, i)
		m, ok := d.mapping(item, ipath, item.Line, "protocol", "port")
		if !ok {
			continue
		}
		var l Listener
		good := true
		if n, path, ok := d.required(m, "protocol", " (udp or tcp)"); ok {
			if s, ok := d.str(n, path); ok {
				switch p := strings.ToLower(s); p {
				case ProtocolUDP, ProtocolTCP:
					l.Protocol = p
				default:
					d.errorf(path, n.Line, "%q is not udp or tcp", s)
					good = false
				}
			} else {
				good = false
			}
		} else {
			good = false
		}
		if n, path, ok := d.required(m, "port", ""); ok {
			if v, ok := d.integer(n, path, 1, 65535); ok {
				l.Port = uint16(v)
			} else {
				good = false
			}
		} else {
			good = false
		}
		if !good {
			continue
		}
		if prev, dup := first[l]; dup {
			d.errorf(ipath, item.Line, "%s is already listed at %s", l, prev)
			continue
		}
		first[l] = ipath
		out = append(out, l)
	}
	return out
}

// authentication walks authentication and returns where federated is, for
// the rule that it needs a portal; placed{} when it is absent.
func (d *decoder) authentication(top mapping, ep *Endpoint) (federated placed) {
	n, path, ok := d.required(top, "authentication", " (set certificate.client_root_ca_file under it to the CA that signs client certificates, directory to log users in against LDAP, or federated to log them in at an identity provider)")
	if !ok {
		return placed{}
	}
	m, ok := d.mapping(n, path, top.keyLine("authentication"), "certificate", "directory", "mfa", "federated")
	if !ok {
		return placed{}
	}
	_, _, hasCert := m.get("certificate")
	_, _, hasDir := m.get("directory")
	_, _, hasFed := m.get("federated")
	if !hasCert && !hasDir && !hasFed {
		d.errorf(join(path, "certificate"), m.keyLine("certificate"),
			"required unless directory or federated is set (set certificate, directory or federated; certificate with either of the others makes a client pass both)")
	}
	if n, path, ok := m.get("certificate"); ok {
		d.certificateAuthentication(n, path, m.keyLine("certificate"), ep)
	}
	if n, path, ok := m.get("directory"); ok {
		ep.Authentication.Directory = d.directory(n, path, m.keyLine("directory"))
	}
	if n, mpath, ok := m.get("mfa"); ok {
		switch {
		case hasFed && !hasDir:
			d.errorf(mpath, m.keyLine("mfa"), "does not apply with federated: the identity provider asks for a second factor itself (mfa applies only with directory)")
		case !hasDir:
			d.errorf(mpath, m.keyLine("mfa"), "applies only with directory (a one-time code belongs to a directory user)")
		default:
			ep.Authentication.MFA = d.mfa(n, mpath, m.keyLine("mfa"))
		}
	}
	if n, fpath, ok := m.get("federated"); ok {
		federated = placed{fpath, m.keyLine("federated")}
		if hasDir {
			d.errorf(fpath, m.keyLine("federated"), "set directory or federated, not both (users log in against the directory or at the identity provider; certificate may go with either)")
		} else {
			ep.Authentication.Federated = d.federated(n, fpath, m.keyLine("federated"))
		}
	}
	return federated
}

func (d *decoder) certificateAuthentication(n *yaml.Node, path string, line int, ep *Endpoint) {
	cm, ok := d.mapping(n, path, line, "client_root_ca_file", "crl_file")
	if !ok {
		return
	}
	ca := &CertificateAuthentication{}
	if n, path, ok := d.required(cm, "client_root_ca_file", " (the CA bundle that signs client certificates)"); ok {
		if f, ok := d.fileRef(n, path); ok {
			ca.ClientRootCAFile = f
			ep.Authentication.Certificate = ca
		}
	}
	if n, path, ok := cm.get("crl_file"); ok {
		ca.CRLFile, _ = d.fileRef(n, path)
	}
}

// dataCiphers accepts cipher names in any case and returns them in canonical
// spelling, in the file's order.
func (d *decoder) dataCiphers(n *yaml.Node, path string) []string {
	items, ok := d.nonEmptyList(n, path)
	if !ok {
		return nil
	}
	var out []string
	first := map[string]string{}
	for i, item := range items {
		ipath := index(path, i)
		s, ok := d.str(item, ipath)
		if !ok {
			continue
		}
		idx := slices.IndexFunc(defaultDataCiphers, func(c string) bool { return strings.EqualFold(c, s) })
		if idx < 0 {
			d.errorf(ipath, item.Line, "%q is not supported (supported: %s)", s, strings.Join(defaultDataCiphers, ", "))
			continue
		}
		c := defaultDataCiphers[idx]
		if prev, dup := first[c]; dup {
			d.errorf(ipath, item.Line, "%s is already listed at %s", c, prev)
			continue
		}
		first[c] = ipath
		out = append(out, c)
	}
	return out
}

// ifName checks a Linux network interface name (net/core/dev.c
// dev_valid_name).
func (d *decoder) ifName(n *yaml.Node, path string) (string, bool) {
	s, ok := d.nonEmpty(n, path)
	if !ok {
		return "", false
	}
	switch {
	case len(s) > ifNameMax:
		d.errorf(path, n.Line, "%q is longer than %d bytes, the Linux limit for interface names", s, ifNameMax)
		return "", false
	case s == "." || s == "..":
		d.errorf(path, n.Line, "%q is not a valid interface name", s)
		return "", false
	case strings.ContainsFunc(s, func(r rune) bool { return r == '/' || r == ':' || r <= ' ' || r == 0x7f }):
		d.errorf(path, n.Line, "%q is not a valid interface name (no '/', ':', spaces or control characters)", s)
		return "", false
	}
	return s, true
}

// addressType reads endpoint_ip_address_type or traffic_ip_address_type.
func (d *decoder) addressType(n *yaml.Node, path string) (string, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return "", false
	}
	switch s {
	case IPv4, IPv6, DualStack:
		return s, true
	}
	d.errorf(path, n.Line, "%q is not %s, %s or %s", s, IPv4, IPv6, DualStack)
	return "", false
}

// listenAddresses reads listen_address and listen_ipv6_address, whose
// families and defaults follow endpoint_ip_address_type.
func (d *decoder) listenAddresses(top mapping, ep *Endpoint) {
	t := ep.EndpointIPAddressType
	fam := only4
	ep.ListenAddress = netip.IPv4Unspecified()
	if t == IPv6 {
		fam, ep.ListenAddress = only6, netip.IPv6Unspecified()
	}
	if n, path, ok := top.get("listen_address"); ok {
		if a, ok := d.addr(n, path, anyFamily); ok {
			switch {
			case fam == only4 && !a.Is4() && t == DualStack:
				d.errorf(path, n.Line, "%s is not IPv4; with endpoint_ip_address_type %s, listen_address is the IPv4 listeners' address and listen_ipv6_address the IPv6 ones'", a, t)
			case fam == only4 && !a.Is4():
				d.errorf(path, n.Line, "%s is not IPv4; set endpoint_ip_address_type to %s (or %s) to listen on IPv6", a, IPv6, DualStack)
			case fam == only6 && !a.Is6():
				d.errorf(path, n.Line, "%s is not IPv6; with endpoint_ip_address_type %s the listeners are IPv6", a, t)
			default:
				ep.ListenAddress = a
			}
		}
	}
	if t == DualStack {
		ep.ListenIPv6Address = netip.IPv6Unspecified()
	}
	if n, path, ok := top.get("listen_ipv6_address"); ok {
		if t != DualStack {
			d.errorf(path, n.Line, "only with endpoint_ip_address_type %s (it is %s): set listen_address instead", DualStack, t)
		} else if a, ok := d.addr(n, path, only6); ok {
			ep.ListenIPv6Address = a
		}
	}
}

// clientIPv6Block checks client_ipv6_cidr_block against the private
// networks: clients keep their own IPv6 addresses there, so the block lies
// inside an IPv6 network behind the endpoint (AWS gives clients addresses
// of the associated subnet); with snat_ipv6_address they leave with the
// endpoint's address instead, and the block lies outside them all, as the
// IPv4 block does.
func (d *decoder) clientIPv6Block(ep *Endpoint, at placed, vpcAt []placed) {
	c := ep.ClientIPv6CIDRBlock
	if ep.TargetNetwork.SNATIPv6Address.IsValid() {
		for i, v := range ep.VPCCIDRBlocks {
			if v.Overlaps(c) {
				d.errorf(at.path, at.line, "%s overlaps %s %s; with target_network.snat_ipv6_address client addresses must lie outside the private network (or leave snat_ipv6_address out so clients keep their own addresses there)",
					c, vpcAt[i].path, v)
			}
		}
		return
	}
	inside := false
	for i, v := range ep.VPCCIDRBlocks {
		switch {
		case v.Contains(c.Addr()) && v.Bits() <= c.Bits():
			inside = true
		case v.Overlaps(c):
			d.errorf(at.path, at.line, "%s overlaps %s %s without lying inside it", c, vpcAt[i].path, v)
			return
		}
	}
	if !inside {
		var six []netip.Prefix
		for _, v := range ep.VPCCIDRBlocks {
			if v.Addr().Is6() {
				six = append(six, v)
			}
		}
		list := "none is IPv6"
		if len(six) > 0 {
			list = joinPrefixes(six)
		}
		d.errorf(at.path, at.line, "%s is not inside an IPv6 entry of vpc_cidr_blocks (%s); clients keep their own IPv6 addresses, which come from the target network's subnet (or set target_network.snat_ipv6_address to source-NAT them)", c, list)
	}
}

// routeRules checks the routes against the client blocks: a local route is
// exactly one of them; no other route covers IPv4 client addresses, nor
// lies within the IPv6 block (a route to the whole IPv6 subnet the block
// is part of is how clients reach it, and covers the block); with
// snat_ipv6_address the IPv6 block is kept apart like the IPv4 one.
func (d *decoder) routeRules(ep *Endpoint, routeAt []routePlaces) {
	c4, c6 := ep.ClientCIDRBlock, ep.ClientIPv6CIDRBlock
	for i, r := range ep.Routes {
		dst := r.DestinationCIDRBlock
		switch {
		case r.Local && (!c4.IsValid() || dst != c4) && (!c6.IsValid() || dst != c6):
			blocks := "client_cidr_block is " + showPrefix(c4)
			if c6.IsValid() {
				blocks += ", client_ipv6_cidr_block is " + c6.String()
			}
			d.errorf(routeAt[i].target.path, routeAt[i].target.line, "%q routes only a client block: destination_cidr_block is %s, %s",
				RouteTargetLocal, dst, blocks)
		case r.Local:
			// The one route that may (must) cover client addresses.
		case c4.IsValid() && dst.Overlaps(c4):
			d.errorf(routeAt[i].dest.path, routeAt[i].dest.line, "%s overlaps client_cidr_block %s; a pushed route must not cover client addresses (for client-to-client traffic add target: local to a route to exactly %s; for a full tunnel use split_tunnel: false)",
				dst, c4, c4)
		case c6.IsValid() && dst.Overlaps(c6) && (ep.TargetNetwork.SNATIPv6Address.IsValid() || dst.Bits() >= c6.Bits()):
			d.errorf(routeAt[i].dest.path, routeAt[i].dest.line, "%s overlaps client_ipv6_cidr_block %s; a pushed route must not single out client addresses (for client-to-client traffic add target: local to a route to exactly %s; for a full tunnel use split_tunnel: false)",
				dst, c6, c6)
		}
	}
}

// showPrefix formats a prefix for a message, "none" when absent.
func showPrefix(p netip.Prefix) string {
	if !p.IsValid() {
		return "none"
	}
	return p.String()
}

// showAddr formats an address for a message, "none" when absent.
func showAddr(a netip.Addr) string {
	if !a.IsValid() {
		return "none"
	}
	return a.String()
}

// routePlaces says where a route's keys are, for the rules that compare it
// with client_cidr_block; target.path is empty unless the route is local.
type routePlaces struct {
	dest, target placed
}

func (d *decoder) routes(n *yaml.Node, path string) ([]Route, []routePlaces) {
	items, ok := d.list(n, path)
	if !ok {
		return nil, nil
	}
	var (
		out   []Route
		at    []routePlaces
		first = map[netip.Prefix]string{}
	)
	for i, item := range items {
		ipath := index(path, i)
		m, ok := d.mapping(item, ipath, item.Line, "destination_cidr_block", "target", "description")
		if !ok {
			continue
		}
		var (
			r      Route
			where  routePlaces
			target = true // the target key is absent or valid
		)
		if n, path, ok := m.get("description"); ok {
			r.Description, _ = d.str(n, path)
		}
		if n, tpath, ok := m.get("target"); ok {
			switch s, ok := d.str(n, tpath); {
			case !ok:
				target = false
			case s != RouteTargetLocal:
				d.errorf(tpath, n.Line, "%q is not a route target; the only one is %q (client-to-client, with destination_cidr_block equal to client_cidr_block); leave target out for a route into the private network",
					s, RouteTargetLocal)
				target = false
			default:
				r.Local, where.target = true, placed{tpath, n.Line}
			}
		}
		n, dpath, ok := d.required(m, "destination_cidr_block", "")
		if !ok {
			continue
		}
		p, ok := d.prefix(n, dpath)
		if !ok || !d.trafficFamily(p, dpath, n.Line) {
			continue
		}
		if prev, dup := first[p]; dup {
			d.errorf(dpath, n.Line, "%s is already routed by %s", p, prev)
			continue
		}
		first[p] = ipath
		if !target {
			continue
		}
		r.DestinationCIDRBlock, where.dest = p, placed{dpath, n.Line}
		out = append(out, r)
		at = append(at, where)
	}
	return out, at
}

func (d *decoder) authorizationRules(n *yaml.Node, path string) []AuthorizationRule {
	items, ok := d.list(n, path)
	if !ok {
		return nil
	}
	var out []AuthorizationRule
	first := map[AuthorizationRule]string{}
	for i, item := range items {
		ipath := index(path, i)
		m, ok := d.mapping(item, ipath, item.Line, "target_network_cidr", "access_group_id", "authorize_all_groups", "description")
		if !ok {
			continue
		}
		var r AuthorizationRule
		good := true
		if n, path, ok := d.required(m, "target_network_cidr", ""); ok {
			r.TargetNetworkCIDR, ok = d.prefix(n, path)
			good = good && ok && d.trafficFamily(r.TargetNetworkCIDR, path, n.Line)
		} else {
			good = false
		}
		// who is known when the group keys that are present are valid.
		who := true
		if n, path, ok := m.get("access_group_id"); ok {
			r.AccessGroupID, ok = d.nonEmpty(n, path)
			who = who && ok
		}
		if n, path, ok := m.get("authorize_all_groups"); ok {
			r.AuthorizeAllGroups, ok = d.boolean(n, path)
			who = who && ok
		}
		if n, path, ok := m.get("description"); ok {
			r.Description, _ = d.str(n, path)
		}
		if !who {
			continue
		}
		switch {
		case r.AccessGroupID != "" && r.AuthorizeAllGroups:
			d.errorf(ipath, item.Line, "set access_group_id or authorize_all_groups: true, not both")
			continue
		case r.AccessGroupID == "" && !r.AuthorizeAllGroups:
			d.errorf(ipath, item.Line, "needs access_group_id or authorize_all_groups: true")
			continue
		}
		if !good {
			continue
		}
		key := r
		key.Description = ""
		if prev, dup := first[key]; dup {
			d.errorf(ipath, item.Line, "same network and group as %s", prev)
			continue
		}
		first[key] = ipath
		out = append(out, r)
	}
	return out
}

// nat walks nat. max_mappings_per_client may not exceed max_mappings (its
// default or the file's); when max_mappings is invalid, that is not checked.
func (d *decoder) nat(n *yaml.Node, path string, line int, ep *Endpoint) {
	m, ok := d.mapping(n, path, line, "max_mappings", "max_mappings_per_client")
	if !ok {
		return
	}
	tableOK := true
	if n, path, ok := m.get("max_mappings"); ok {
		var v int64
		if v, tableOK = d.integer(n, path, minNATMappings, maxNATMappings); tableOK {
			ep.NAT.MaxMappings = int(v)
		}
	}
	if n, path, ok := m.get("max_mappings_per_client"); ok {
		v, ok := d.integer(n, path, 1, maxNATMappings)
		switch {
		case !ok:
		case tableOK && int(v) > ep.NAT.MaxMappings:
			d.errorf(path, n.Line, "%d is more than nat.max_mappings (%d), which all clients share", v, ep.NAT.MaxMappings)
		default:
			ep.NAT.MaxMappingsPerClient = int(v)
		}
	}
}

// defaultMappingsPerClient is nat.max_mappings_per_client when the file
// leaves it out: the table shared out among the addresses of the client
// CIDR, at least minDefaultMappingsPerClient.
func defaultMappingsPerClient(table int, client netip.Prefix) int {
	share := table
	if client.IsValid() {
		// An IPv6 block holds at most ippool.MaxSize6 clients.
		share = table >> min(client.Addr().BitLen()-client.Bits(), 16)
	}
	return min(table, max(share, minDefaultMappingsPerClient))
}

func (d *decoder) keepalive(n *yaml.Node, path string, line int, ep *Endpoint) {
	m, ok := d.mapping(n, path, line, "ping_seconds", "ping_restart_seconds")
	if !ok {
		return
	}
	ping, restart := int64(defaultPing), int64(defaultPingRestart)
	restartSet := false
	if n, path, ok := m.get("ping_seconds"); ok {
		if ping, ok = d.integer(n, path, 1, maxKeepalive); !ok {
			return
		}
	}
	if n, path, ok := m.get("ping_restart_seconds"); ok {
		if restart, ok = d.integer(n, path, 1, maxKeepalive); !ok {
			return
		}
		restartSet = true
	}
	if restart <= ping {
		what := fmt.Sprint(restart)
		if !restartSet {
			what += " (the default)"
		}
		d.errorf(join(path, "ping_restart_seconds"), m.keyLine("ping_restart_seconds"),
			"%s must be greater than ping_seconds (%d)", what, ping)
		return
	}
	ep.Keepalive = Keepalive{Ping: time.Duration(ping) * time.Second, PingRestart: time.Duration(restart) * time.Second}
}

// controlChannel walks control_channel. tls-auth and tls-crypt exclude each
// other (OpenVPN refuses both); tls-crypt-v2 may go with either, since a
// server accepts v2 clients and legacy ones side by side.
func (d *decoder) controlChannel(n *yaml.Node, path string, line int, ep *Endpoint) {
	m, ok := d.mapping(n, path, line, "tls_crypt_key_file", "tls_auth_key_file", "tls_auth_key_direction",
		"tls_auth_digest", "tls_crypt_v2_server_key_file")
	if !ok {
		return
	}
	cc := &ep.ControlChannel
	// Presence, not validity, decides the exclusion and the tls-auth-only
	// keys: a missing file is its own error.
	_, _, crypt := m.get("tls_crypt_key_file")
	_, _, auth := m.get("tls_auth_key_file")
	if n, path, ok := m.get("tls_crypt_key_file"); ok {
		cc.TLSCryptKeyFile, _ = d.fileRef(n, path)
	}
	if n, path, ok := m.get("tls_auth_key_file"); ok {
		if crypt {
			d.errorf(path, n.Line, "set tls_auth_key_file or tls_crypt_key_file, not both (tls_crypt_v2_server_key_file may go with either)")
		} else {
			cc.TLSAuthKeyFile, _ = d.fileRef(n, path)
		}
	}
	if n, path, ok := m.get("tls_auth_key_direction"); ok {
		var v int64
		switch {
		case !auth:
			d.errorf(path, n.Line, "applies only with tls_auth_key_file")
		case n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&v) != nil || (v != 0 && v != 1):
			d.errorf(path, n.Line, "must be 0 or 1 (leave it out for a bidirectional key), got %s", describe(n))
		default:
			cc.TLSAuthKeyDirection = KeyDirection(v)
		}
	}
	if n, path, ok := m.get("tls_auth_digest"); ok {
		if !auth {
			d.errorf(path, n.Line, "applies only with tls_auth_key_file")
		} else if s, ok := d.str(n, path); ok {
			digests := []string{DigestSHA1, DigestSHA256, DigestSHA512}
			i := slices.IndexFunc(digests, func(dg string) bool { return strings.EqualFold(dg, s) })
			if i < 0 {
				d.errorf(path, n.Line, "%q is not supported (supported: %s)", s, strings.Join(digests, ", "))
			} else {
				cc.TLSAuthDigest = digests[i]
			}
		}
	}
	if n, path, ok := m.get("tls_crypt_v2_server_key_file"); ok {
		cc.TLSCryptV2ServerKeyFile, _ = d.fileRef(n, path)
	}
}

// hostname accepts an IP address or a DNS host name (RFC 1123 labels), the
// forms an OpenVPN client's remote line takes.
func (d *decoder) hostname(n *yaml.Node, path string) (string, bool) {
	s, ok := d.nonEmpty(n, path)
	if !ok {
		return "", false
	}
	if err := CheckRemoteHostname(s); err != nil {
		d.errorf(path, n.Line, "%v", err)
		return "", false
	}
	return s, true
}

// CheckRemoteHostname applies the rule of remote_hostname to s: an IP
// address clients can dial, or a DNS host name. cvpn init uses it to check
// its --remote flag before it signs anything.
func CheckRemoteHostname(s string) error {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("%s is not an address clients can dial", s)
		}
		return nil
	}
	if err := checkHostname(s); err != nil {
		return fmt.Errorf("%q is not an IP address or DNS name: %v", s, err)
	}
	return nil
}

// checkHostname checks a DNS host name: at most 253 bytes, labels of 1 to 63
// letters, digits and hyphens that neither start nor end with a hyphen, and
// a last label that is not all digits (which would be a mistyped address).
func checkHostname(s string) error {
	name := strings.TrimSuffix(s, ".")
	if len(name) > 253 {
		return fmt.Errorf("longer than 253 bytes")
	}
	labels := strings.Split(name, ".")
	for _, label := range labels {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("label %q is empty or longer than 63 bytes", label)
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%q is not allowed in a host name", c)
			}
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
	}
	last := labels[len(labels)-1]
	if strings.Trim(last, "0123456789") == "" {
		return fmt.Errorf("the last label is all digits")
	}
	return nil
}

func (d *decoder) dnsServers(n *yaml.Node, path string) []netip.Addr {
	items, ok := d.list(n, path)
	if !ok {
		return nil
	}
	var out []netip.Addr
	first := map[netip.Addr]string{}
	perFamily := map[bool]int{} // by Is6
	for i, item := range items {
		ipath := index(path, i)
		a, ok := d.addr(item, ipath, anyFamily)
		if !ok {
			continue
		}
		if a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			d.errorf(ipath, item.Line, "%s is not a unicast address", a)
			continue
		}
		if prev, dup := first[a]; dup {
			d.errorf(ipath, item.Line, "%s is already listed at %s", a, prev)
			continue
		}
		if perFamily[a.Is6()]++; perFamily[a.Is6()] > maxDNSServers {
			d.errorf(ipath, item.Line, "%s is the %s %s server; at most %d of each family can be pushed", a, ordinal(perFamily[a.Is6()]), family(a), maxDNSServers)
			continue
		}
		first[a] = ipath
		out = append(out, a)
	}
	return out
}

// family names an address's family for messages.
func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// ordinal spells small counts for messages: 1st, 2nd, 3rd, 4th...
func ordinal(n int) string {
	switch {
	case n%100 >= 11 && n%100 <= 13:
	case n%10 == 1:
		return fmt.Sprintf("%dst", n)
	case n%10 == 2:
		return fmt.Sprintf("%dnd", n)
	case n%10 == 3:
		return fmt.Sprintf("%drd", n)
	}
	return fmt.Sprintf("%dth", n)
}

// banner checks client_login_banner: AWS's limit of 1400 characters, and no
// control characters but newline and tab, since clients print it.
func (d *decoder) banner(n *yaml.Node, path string) (string, bool) {
	s, ok := d.nonEmpty(n, path)
	if !ok {
		return "", false
	}
	if !utf8.ValidString(s) {
		d.errorf(path, n.Line, "is not valid UTF-8")
		return "", false
	}
	if c := utf8.RuneCountInString(s); c > maxBannerRunes {
		d.errorf(path, n.Line, "is %d characters long; at most %d are allowed", c, maxBannerRunes)
		return "", false
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return unicode.IsControl(r) && r != '\n' && r != '\t' }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		d.errorf(path, n.Line, "holds the control character %U at byte %d; only newlines and tabs are allowed", r, i)
		return "", false
	}
	return s, true
}

func (d *decoder) bandwidthLimits(n *yaml.Node, path string) []BandwidthLimit {
	items, ok := d.list(n, path)
	if !ok {
		return nil
	}
	var out []BandwidthLimit
	first := map[string]string{}
	for i, item := range items {
		ipath := index(path, i)
		m, ok := d.mapping(item, ipath, item.Line, "access_group_id", "mbps")
		if !ok {
			continue
		}
		var l BandwidthLimit
		good := true
		if n, gpath, ok := d.required(m, "access_group_id", ""); ok {
			if l.AccessGroupID, ok = d.nonEmpty(n, gpath); ok {
				if prev, dup := first[l.AccessGroupID]; dup {
					d.errorf(gpath, n.Line, "group %q already has a limit at %s", l.AccessGroupID, prev)
					good = false
				} else {
					first[l.AccessGroupID] = ipath
				}
			} else {
				good = false
			}
		} else {
			good = false
		}
		if n, mpath, ok := d.required(m, "mbps", " (megabits per second; 0 for no limit)"); ok {
			if l.Mbps, ok = d.number(n, mpath, maxBandwidth); !ok {
				good = false
			}
		} else {
			good = false
		}
		if good {
			out = append(out, l)
		}
	}
	return out
}

func (d *decoder) connectionLog(n *yaml.Node, path string, line int, ep *Endpoint) {
	m, ok := d.mapping(n, path, line, "enabled", "file")
	if !ok {
		return
	}
	if n, path, ok := m.get("enabled"); ok {
		ep.ConnectionLog.Enabled, _ = d.boolean(n, path)
	}
	if n, path, ok := m.get("file"); ok {
		ep.ConnectionLog.File, _ = d.outputFile(n, path)
	} else if ep.ConnectionLog.Enabled {
		d.errorf(path, m.keyLine("file"), "required when enabled is true")
	}
}

// metrics decodes the metrics mapping: present (even empty) turns metrics on, at
// DefaultMetricsListenAddress unless listen_address says where.
func (d *decoder) metrics(n *yaml.Node, path string, line int, ep *Endpoint) placed {
	m, ok := d.mapping(n, path, line, "listen_address")
	if !ok {
		return placed{}
	}
	ep.Metrics.ListenAddress = DefaultMetricsListenAddress
	n, kpath, ok := m.get("listen_address")
	if !ok {
		return placed{path, line}
	}
	a, ok := d.addrPort(n, kpath, "127.0.0.1:9464")
	if !ok {
		return placed{}
	}
	ep.Metrics.ListenAddress = a
	return placed{kpath, n.Line}
}

func (d *decoder) admin(n *yaml.Node, path string, line int, ep *Endpoint) {
	m, ok := d.mapping(n, path, line, "socket")
	if !ok {
		return
	}
	n, path, ok = m.get("socket")
	if !ok {
		return // the default
	}
	abs, name, ok := d.resolve(n, path)
	if !ok {
		return
	}
	if len(abs) > maxSocketPath {
		d.errorf(path, n.Line, "%s is %d bytes long; a unix socket's path is at most %d", name, len(abs), maxSocketPath)
		return
	}
	if fi, err := os.Stat(abs); err == nil && fi.Mode()&os.ModeSocket == 0 {
		d.errorf(path, n.Line, "%s exists and is not a socket", name)
		return
	}
	ep.Admin.Socket = abs
}
