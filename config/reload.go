package config

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// What a running endpoint does when it re-reads its file (SIGHUP) is decided here, key by key:
// every key of the file is in reloadKeys, either applied live (restart == "") or refused with
// the reason a restart is needed. A reload that would change a refused key is refused as a
// whole, so the running endpoint never runs half of a file.

// reloadKey is one key of the endpoint file as a reload sees it.
type reloadKey struct {
	path string
	// restart says why a change needs a restart; "" when the running endpoint applies it.
	restart string
	// file, for a key naming a file whose content a reload compares too, returns the file's
	// path ("" when the key is absent); nil for other keys.
	file func(e *Endpoint) string
	// equal reports whether the key has the same value in a and b.
	equal func(a, b *Endpoint) bool
	// show formats the key's value for a refusal; only restart keys need it.
	show func(e *Endpoint) string
}

// Why the refused keys need a restart: each is built into host state or handed out at start.
const (
	restartPool = "client addresses are handed out from it"
	// restartFamilies: AWS fixes both address types at creation too.
	restartFamilies = "the listeners, the address pool and the host are set up for its families at start"
	restartTUN      = "the TUN device is created with it at start"
	restartHost     = "the host route and proxy neighbour entry are set up with it at start"
	restartNAT      = "the NAT table is built with it at start"
	restartAdmin    = "the admin API listens on it from start"
	restartState    = "the state store is opened (and locked) there at start"
	// restartPortal: the portal's socket, certificate and links are set up at start (for now).
	restartPortal = "the portal listens on it from start"
	// restartCluster: the node joins its cluster (its lease, name and address blocks) at start.
	restartCluster = "the node joins its cluster with it at start"
)

// reloadKeys lists every key of the file in file order (the order of Endpoint's fields).
// TestDiffCoversEveryField fails when a field of Endpoint is missing here.
var reloadKeys = []reloadKey{
	{path: "description", equal: same(func(e *Endpoint) string { return e.Description })},
	{path: "remote_hostname", equal: same(func(e *Endpoint) string { return e.RemoteHostname })},
	{path: "endpoint_ip_address_type", restart: restartFamilies, equal: same(func(e *Endpoint) string { return e.EndpointIPAddressType }),
		show: func(e *Endpoint) string { return e.EndpointIPAddressType }},
	{path: "traffic_ip_address_type", restart: restartFamilies, equal: same(func(e *Endpoint) string { return e.TrafficIPAddressType }),
		show: func(e *Endpoint) string { return e.TrafficIPAddressType }},
	{path: "client_cidr_block", restart: restartPool, equal: same(func(e *Endpoint) any { return e.ClientCIDRBlock }),
		show: func(e *Endpoint) string { return e.ClientCIDRBlock.String() }},
	{path: "client_ipv6_cidr_block", restart: restartPool, equal: same(func(e *Endpoint) any { return e.ClientIPv6CIDRBlock }),
		show: func(e *Endpoint) string { return showPrefix(e.ClientIPv6CIDRBlock) }},
	{path: "vpc_cidr_blocks", equal: sameList(func(e *Endpoint) []any { return anys(e.VPCCIDRBlocks) })},
	{path: "listen_address", equal: same(func(e *Endpoint) any { return e.ListenAddress })},
	{path: "listen_ipv6_address", equal: same(func(e *Endpoint) any { return e.ListenIPv6Address })},
	// The listeners are a set: their order means nothing to a running endpoint.
	{path: "transport", equal: func(a, b *Endpoint) bool { return sameSet(a.Transport, b.Transport) }},
	fileKey("server_certificate.cert_file", func(e *Endpoint) string { return e.ServerCertificate.CertFile }),
	fileKey("server_certificate.key_file", func(e *Endpoint) string { return e.ServerCertificate.KeyFile }),
	fileKey("control_channel.tls_crypt_key_file", func(e *Endpoint) string { return e.ControlChannel.TLSCryptKeyFile }),
	fileKey("control_channel.tls_auth_key_file", func(e *Endpoint) string { return e.ControlChannel.TLSAuthKeyFile }),
	{path: "control_channel.tls_auth_key_direction", equal: same(func(e *Endpoint) any { return e.ControlChannel.TLSAuthKeyDirection })},
	{path: "control_channel.tls_auth_digest", equal: same(func(e *Endpoint) string { return e.ControlChannel.TLSAuthDigest })},
	fileKey("control_channel.tls_crypt_v2_server_key_file", func(e *Endpoint) string { return e.ControlChannel.TLSCryptV2ServerKeyFile }),
	fileKey("authentication.certificate.client_root_ca_file", func(e *Endpoint) string { return certAuth(e).ClientRootCAFile }),
	fileKey("authentication.certificate.crl_file", func(e *Endpoint) string { return certAuth(e).CRLFile }),
	// Directory, MFA and handler settings apply to the next login; sessions already up keep
	// theirs until their next renegotiation re-checks the user.
	{path: "authentication.directory.url", equal: sameList(func(e *Endpoint) []any { return anys(dirAuth(e).URLs) })},
	{path: "authentication.directory.start_tls", equal: same(func(e *Endpoint) bool { return dirAuth(e).StartTLS })},
	fileKey("authentication.directory.ca_file", func(e *Endpoint) string { return dirAuth(e).CAFile }),
	{path: "authentication.directory.bind_dn", equal: same(func(e *Endpoint) string { return dirAuth(e).BindDN })},
	fileKey("authentication.directory.bind_password_file", func(e *Endpoint) string { return dirAuth(e).BindPasswordFile }),
	{path: "authentication.directory.user_base_dn", equal: same(func(e *Endpoint) string { return dirAuth(e).UserBaseDN })},
	{path: "authentication.directory.user_filter", equal: same(func(e *Endpoint) string { return dirAuth(e).UserFilter })},
	{path: "authentication.directory.group_attribute", equal: same(func(e *Endpoint) string { return dirAuth(e).GroupAttribute })},
	{path: "authentication.directory.nested_groups", equal: same(func(e *Endpoint) bool { return dirAuth(e).NestedGroups })},
	{path: "authentication.directory.group_base_dn", equal: same(func(e *Endpoint) string { return dirAuth(e).GroupBaseDN })},
	{path: "authentication.directory.group_filter", equal: same(func(e *Endpoint) string { return dirAuth(e).GroupFilter })},
	{path: "authentication.directory.timeout_seconds", equal: same(func(e *Endpoint) any { return dirAuth(e).Timeout })},
	{path: "authentication.mfa.totp.issuer", equal: same(func(e *Endpoint) string { return mfaOf(e).TOTPIssuer })},
	{path: "authentication.mfa.challenge", equal: same(func(e *Endpoint) string { return mfaOf(e).Challenge })},
	{path: "authentication.mfa.challenge_text", equal: same(func(e *Endpoint) string { return mfaOf(e).ChallengeText })},
	// Federated settings apply to the next login; sessions already up keep their auth-tokens.
	{path: "authentication.federated.oidc.issuer", equal: same(func(e *Endpoint) string { return oidcOf(e).Issuer })},
	{path: "authentication.federated.oidc.client_id", equal: same(func(e *Endpoint) string { return oidcOf(e).ClientID })},
	fileKey("authentication.federated.oidc.client_secret_file", func(e *Endpoint) string { return oidcOf(e).ClientSecretFile }),
	fileKey("authentication.federated.oidc.ca_file", func(e *Endpoint) string { return oidcOf(e).CAFile }),
	{path: "authentication.federated.oidc.scopes", equal: sameList(func(e *Endpoint) []any { return anys(oidcOf(e).Scopes) })},
	{path: "authentication.federated.oidc.username_claim", equal: same(func(e *Endpoint) string { return oidcOf(e).UsernameClaim })},
	{path: "authentication.federated.oidc.groups_claim", equal: same(func(e *Endpoint) string { return oidcOf(e).GroupsClaim })},
	fileKey("authentication.federated.saml.idp_metadata_file", func(e *Endpoint) string { return samlOf(e).IdPMetadataFile }),
	{path: "authentication.federated.saml.groups_attribute", equal: same(func(e *Endpoint) string { return samlOf(e).GroupsAttribute })},
	{path: "data_ciphers", equal: sameList(func(e *Endpoint) []any { return anys(e.DataCiphers) })},
	{path: "target_network.interface", restart: restartHost, equal: same(func(e *Endpoint) string { return e.TargetNetwork.Interface }),
		show: func(e *Endpoint) string { return strconv.Quote(e.TargetNetwork.Interface) }},
	{path: "target_network.snat_address", restart: restartHost, equal: same(func(e *Endpoint) any { return e.TargetNetwork.SNATAddress }),
		show: func(e *Endpoint) string { return e.TargetNetwork.SNATAddress.String() }},
	{path: "target_network.snat_ipv6_address", restart: restartHost, equal: same(func(e *Endpoint) any { return e.TargetNetwork.SNATIPv6Address }),
		show: func(e *Endpoint) string { return showAddr(e.TargetNetwork.SNATIPv6Address) }},
	{path: "tun.name", restart: restartTUN, equal: same(func(e *Endpoint) string { return e.TUN.Name }),
		show: func(e *Endpoint) string { return strconv.Quote(e.TUN.Name) }},
	{path: "tun.mtu", restart: restartTUN, equal: same(func(e *Endpoint) int { return e.TUN.MTU }),
		show: func(e *Endpoint) string { return strconv.Itoa(e.TUN.MTU) }},
	{path: "nat.max_mappings", restart: restartNAT, equal: same(func(e *Endpoint) int { return e.NAT.MaxMappings }),
		show: func(e *Endpoint) string { return strconv.Itoa(e.NAT.MaxMappings) }},
	{path: "nat.max_mappings_per_client", restart: restartNAT, equal: same(func(e *Endpoint) int { return e.NAT.MaxMappingsPerClient }),
		show: func(e *Endpoint) string { return strconv.Itoa(e.NAT.MaxMappingsPerClient) }},
	{path: "routes", equal: sameList(func(e *Endpoint) []any { return anys(e.Routes) })},
	{path: "authorization_rules", equal: sameList(func(e *Endpoint) []any { return anys(e.AuthorizationRules) })},
	{path: "split_tunnel", equal: same(func(e *Endpoint) bool { return e.SplitTunnel })},
	{path: "allow_host_access", equal: same(func(e *Endpoint) bool { return e.AllowHostAccess })},
	{path: "dns_servers", equal: sameList(func(e *Endpoint) []any { return anys(e.DNSServers) })},
	{path: "session_timeout_hours", equal: same(func(e *Endpoint) any { return e.SessionTimeout })},
	{path: "client_login_banner", equal: same(func(e *Endpoint) string { return e.ClientLoginBanner })},
	{path: "bandwidth_limit_mbps", equal: same(func(e *Endpoint) float64 { return e.BandwidthLimitMbps })},
	{path: "bandwidth_limits", equal: sameList(func(e *Endpoint) []any { return anys(e.BandwidthLimits) })},
	{path: "reneg_seconds", equal: same(func(e *Endpoint) any { return e.Reneg })},
	{path: "keepalive.ping_seconds", equal: same(func(e *Endpoint) any { return e.Keepalive.Ping })},
	{path: "keepalive.ping_restart_seconds", equal: same(func(e *Endpoint) any { return e.Keepalive.PingRestart })},
	{path: "max_connections_per_user", equal: same(func(e *Endpoint) int { return e.MaxConnectionsPerUser })},
	// The connection log switches files at once: the queued records go to the old one.
	{path: "connection_log.enabled", equal: same(func(e *Endpoint) bool { return e.ConnectionLog.Enabled })},
	{path: "connection_log.file", equal: same(func(e *Endpoint) string { return e.ConnectionLog.File })},
	{path: "admin.socket", restart: restartAdmin, equal: same(func(e *Endpoint) string { return e.Admin.Socket }),
		show: func(e *Endpoint) string { return e.Admin.Socket }},
	// The metrics server moves: the new address opens before the old one closes.
	{path: "metrics.listen_address", equal: same(func(e *Endpoint) any { return e.Metrics.ListenAddress })},
	{path: "state_dir", restart: restartState, equal: same(func(e *Endpoint) string { return e.StateDir }),
		show: func(e *Endpoint) string { return e.StateDir }},
	{path: "client_connect_handler.command", equal: sameList(func(e *Endpoint) []any { return anys(handlerOf(e).Command) })},
	{path: "client_connect_handler.url", equal: same(func(e *Endpoint) string { return handlerOf(e).URL })},
	fileKey("client_connect_handler.ca_file", func(e *Endpoint) string { return handlerOf(e).CAFile }),
	{path: "client_connect_handler.timeout_seconds", equal: same(func(e *Endpoint) any { return handlerOf(e).Timeout })},
	// The portal's keys need a restart. Its certificate files are not compared by content (not
	// file keys): one renewed in place is served from the next restart, and does not refuse
	// a reload of the other keys.
	{path: "portal.listen_address", restart: restartPortal, equal: same(func(e *Endpoint) any { return portalOf(e).ListenAddress }),
		show: func(e *Endpoint) string {
			return showPortal(e, func(p Portal) string { return p.ListenAddress.String() })
		}},
	{path: "portal.public_url", restart: restartPortal, equal: same(func(e *Endpoint) string { return portalOf(e).PublicURL }),
		show: func(e *Endpoint) string { return showPortal(e, func(p Portal) string { return p.PublicURL }) }},
	{path: "portal.cert_file", restart: restartPortal, equal: same(func(e *Endpoint) string { return portalOf(e).CertFile }),
		show: func(e *Endpoint) string { return showPortal(e, func(p Portal) string { return orNone(p.CertFile) }) }},
	{path: "portal.key_file", restart: restartPortal, equal: same(func(e *Endpoint) string { return portalOf(e).KeyFile }),
		show: func(e *Endpoint) string { return showPortal(e, func(p Portal) string { return orNone(p.KeyFile) }) }},
	// The cluster section: a pushed file carries the node's own (ParseWithCluster), so these
	// change only with the node's local file. The etcd files are not compared by content: a
	// client certificate renewed in place is read at the next restart.
	clusterKey("cluster.node_name", restartCluster, func(c Cluster) string { return c.NodeName }, orNone),
	clusterKey("cluster.public_address", restartCluster, func(c Cluster) string { return c.PublicAddress }, orNone),
	clusterKey("cluster.snat_address", restartHost, func(c Cluster) netip.Addr { return c.SNATAddress }, showAddr),
	clusterKey("cluster.snat_ipv6_address", restartHost, func(c Cluster) netip.Addr { return c.SNATIPv6Address }, showAddr),
	clusterKey("cluster.lease_ttl_seconds", restartCluster, func(c Cluster) time.Duration { return c.LeaseTTL },
		func(d time.Duration) string { return strconv.Itoa(int(d / time.Second)) }),
	clusterKey("cluster.address_block_size", restartPool, func(c Cluster) int { return c.AddressBlockSize }, strconv.Itoa),
	{path: "cluster.etcd.endpoints", restart: restartCluster, equal: sameList(func(e *Endpoint) []any { return anys(clusterOf(e).Etcd.Endpoints) }),
		show: func(e *Endpoint) string {
			return showCluster(e, func(c Cluster) string { return "[" + strings.Join(c.Etcd.Endpoints, ", ") + "]" })
		}},
	clusterKey("cluster.etcd.ca_file", restartCluster, func(c Cluster) string { return c.Etcd.CAFile }, orNone),
	clusterKey("cluster.etcd.cert_file", restartCluster, func(c Cluster) string { return c.Etcd.CertFile }, orNone),
	clusterKey("cluster.etcd.key_file", restartCluster, func(c Cluster) string { return c.Etcd.KeyFile }, orNone),
	clusterKey("cluster.etcd.prefix", restartCluster, func(c Cluster) string { return c.Etcd.Prefix }, orNone),
}

// clusterKey is the rule of a key of the cluster section, all of which need a restart.
func clusterKey[T comparable](path, restart string, get func(Cluster) T, show func(T) string) reloadKey {
	return reloadKey{path: path, restart: restart,
		equal: same(func(e *Endpoint) T { return get(clusterOf(e)) }),
		show:  func(e *Endpoint) string { return showCluster(e, func(c Cluster) string { return show(get(c)) }) }}
}

// clusterOf is the cluster section of e; the zero value when it has none.
func clusterOf(e *Endpoint) Cluster {
	if e.Cluster == nil {
		return Cluster{}
	}
	return *e.Cluster
}

// showCluster formats a cluster key for a refusal: "no cluster" when e has none.
func showCluster(e *Endpoint, show func(Cluster) string) string {
	if e.Cluster == nil {
		return "no cluster"
	}
	return show(*e.Cluster)
}

// Diff compares the running endpoint file with the next one key by key and returns the YAML
// paths of the keys that differ, in file order: changed may be applied to the running endpoint,
// refused cannot change while it runs (CheckReload says why). Lists compare in order, except
// transport, whose listeners are a set.
//
// A key naming a file also differs when its path stays but fileChanged(path) reports that the
// file's content did (a certificate renewed in place); fileChanged may be nil, and is asked only
// about keys whose path is the same in both and not empty (a file named in both files).
func Diff(running, next *Endpoint, fileChanged func(key string) bool) (changed, refused []string) {
	for _, k := range reloadKeys {
		differs := !k.equal(running, next)
		if !differs && k.file != nil && k.file(next) != "" && fileChanged != nil {
			differs = fileChanged(k.path)
		}
		switch {
		case !differs:
		case k.restart != "":
			refused = append(refused, k.path)
		default:
			changed = append(changed, k.path)
		}
	}
	return changed, refused
}

// CheckReload reports whether next may replace running in a running endpoint. Keys built into
// the host state, the address pool or the NAT table at start (client_cidr_block, tun.name,
// tun.mtu, target_network.interface, target_network.snat_address, nat.max_mappings,
// nat.max_mappings_per_client), listening from start (admin.socket, the portal's keys) or
// holding the state store (state_dir), and the cluster section's keys, cannot change; each one that differs
// is a *ValidationError naming the key, its line in next, both values and that a restart is
// needed, and they come back joined. Every other key may change (Diff lists them).
func CheckReload(running, next *Endpoint) error {
	var errs []error
	for _, k := range reloadKeys {
		if k.restart == "" || k.equal(running, next) {
			continue
		}
		errs = append(errs, &ValidationError{File: next.fileOf(k.path), Path: k.path, Line: next.KeyLine(k.path),
			Msg: fmt.Sprintf("cannot change on a running endpoint (running %s, file %s): %s; restart the endpoint to change it, which disconnects every client",
				k.show(running), k.show(next), k.restart)})
	}
	return errors.Join(errs...)
}

// ReloadKeys returns every key of the file in file order: live are the keys a running endpoint
// applies when it reloads its file, restart those whose change refuses the reload.
func ReloadKeys() (live, restart []string) {
	for _, k := range reloadKeys {
		if k.restart != "" {
			restart = append(restart, k.path)
		} else {
			live = append(live, k.path)
		}
	}
	return live, restart
}

// fileKey is the rule of a live key that names a file, compared by path and by content.
func fileKey(path string, get func(*Endpoint) string) reloadKey {
	return reloadKey{path: path, file: get, equal: same(get)}
}

func same[T comparable](get func(*Endpoint) T) func(a, b *Endpoint) bool {
	return func(a, b *Endpoint) bool { return get(a) == get(b) }
}

func sameList(get func(*Endpoint) []any) func(a, b *Endpoint) bool {
	return func(a, b *Endpoint) bool { return slices.Equal(get(a), get(b)) }
}

// anys turns a list of comparable values into []any, so that one sameList serves them all.
func anys[T comparable](s []T) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// sameSet reports whether a and b hold the same values, in any order.
func sameSet[T comparable](a, b []T) bool {
	count := make(map[T]int, len(a))
	for _, v := range a {
		count[v]++
	}
	for _, v := range b {
		count[v]--
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}

// certAuth is the certificate authentication of e; the zero value when it has none.
func certAuth(e *Endpoint) CertificateAuthentication {
	if e.Authentication.Certificate == nil {
		return CertificateAuthentication{}
	}
	return *e.Authentication.Certificate
}

// dirAuth is the directory authentication of e; the zero value when it has none.
func dirAuth(e *Endpoint) DirectoryAuthentication {
	if e.Authentication.Directory == nil {
		return DirectoryAuthentication{}
	}
	return *e.Authentication.Directory
}

// mfaOf is the MFA of e; the zero value when it has none.
func mfaOf(e *Endpoint) MFA {
	if e.Authentication.MFA == nil {
		return MFA{}
	}
	return *e.Authentication.MFA
}

// handlerOf is the client-connect handler of e; the zero value when it has none.
func handlerOf(e *Endpoint) ClientConnectHandler {
	if e.ClientConnectHandler == nil {
		return ClientConnectHandler{}
	}
	return *e.ClientConnectHandler
}

// oidcOf is the OIDC provider of e; the zero value when it has none.
func oidcOf(e *Endpoint) OIDCAuthentication {
	if f := e.Authentication.Federated; f == nil || f.OIDC == nil {
		return OIDCAuthentication{}
	}
	return *e.Authentication.Federated.OIDC
}

// samlOf is the SAML IdP of e; the zero value when it has none.
func samlOf(e *Endpoint) SAMLAuthentication {
	if f := e.Authentication.Federated; f == nil || f.SAML == nil {
		return SAMLAuthentication{}
	}
	return *e.Authentication.Federated.SAML
}

// portalOf is the portal of e; the zero value when it has none.
func portalOf(e *Endpoint) Portal {
	if e.Portal == nil {
		return Portal{}
	}
	return *e.Portal
}

// showPortal formats a portal key for a refusal: "no portal" when e has none.
func showPortal(e *Endpoint, show func(Portal) string) string {
	if e.Portal == nil {
		return "no portal"
	}
	return show(*e.Portal)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
