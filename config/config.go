// Package config reads the endpoint file: the YAML document that describes
// one cvpn endpoint, with keys modelled on AWS CreateClientVpnEndpoint
// (client_cidr_block, vpc_cidr_blocks, authorization_rules, ...).
//
// It owns the file's schema, its defaults and every check that can be made
// from the file alone: types, ranges, CIDR masking, overlaps, references
// between keys, and that the files it names exist and are readable (and,
// for a file holding a password, not readable by every user). Every
// problem is reported with its key path and line. It also owns the rule
// of what may change when a running endpoint reloads its file: Diff names
// the keys that differ, CheckReload refuses those that need a restart. It
// does not read the contents of the certificate, key, CRL and CA files it
// names (package endpoint does, and tells Diff when one changed in place;
// Endpoint.KeyError lets it report their problems in the same form), and
// it does not touch the network or the OS (package endpoint wires the
// result into the engine). The directory, MFA, federated login,
// client-connect handler and portal keys are parsed and checked here;
// packages auth/... and portal use them. So is the cluster section, which
// makes the endpoint one node of several (package cluster runs it);
// ParseWithCluster runs a file pushed to the cluster with the node's own
// section. The one file whose content it
// reads is the SAML IdP metadata (a cheap structural check, so that a
// wrong file is named at validation rather than at the first login).
//
// Each field of Endpoint documents its YAML key, its default and its AWS
// Client VPN counterpart; the README's configuration reference is written
// from them.
package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// Transport protocols a Listener may use.
const (
	ProtocolUDP = "udp"
	ProtocolTCP = "tcp"
)

// Data channel cipher names, as OpenVPN spells them in data-ciphers.
const (
	CipherAES256GCM        = "AES-256-GCM"
	CipherAES128GCM        = "AES-128-GCM"
	CipherChaCha20Poly1305 = "CHACHA20-POLY1305"
)

// tls-auth HMAC digests, as OpenVPN spells them in --auth.
const (
	DigestSHA1   = "SHA1"
	DigestSHA256 = "SHA256"
	DigestSHA512 = "SHA512"
)

// Endpoint is a parsed, validated endpoint file. An Endpoint returned by
// Load or Parse has every default filled in, every file path absolute, and
// satisfies every rule this package checks.
type Endpoint struct {
	// Description (description) is free text for operators; "" when
	// absent. AWS: Description.
	Description string
	// RemoteHostname (remote_hostname) is the public DNS name or IP
	// address clients dial. Exported client profiles put it in their
	// remote lines, and `cvpn init` puts it in the server certificate's
	// SAN. Optional ("" when absent), but a profile cannot be exported
	// without it. AWS: the endpoint's DnsName.
	RemoteHostname string
	// EndpointIPAddressType (endpoint_ip_address_type) is which address
	// families clients reach the endpoint over: IPv4 (the default), IPv6
	// or DualStack (a listener per family for each transport). It cannot
	// change on reload (CheckReload). AWS: EndpointIpAddressType.
	EndpointIPAddressType string
	// TrafficIPAddressType (traffic_ip_address_type) is which address
	// families flow through the tunnel: IPv4 (the default), IPv6 or
	// DualStack. Each family it names needs its client block. It cannot
	// change on reload (CheckReload). AWS: TrafficIpAddressType.
	TrafficIPAddressType string
	// ClientCIDRBlock (client_cidr_block) is the IPv4 block client tunnel
	// addresses come from, /12 to /22, disjoint from VPCCIDRBlocks and from
	// every route. Required unless TrafficIPAddressType is IPv6, and
	// refused then. It cannot change on reload (CheckReload). AWS:
	// ClientCidrBlock.
	ClientCIDRBlock netip.Prefix
	// ClientIPv6CIDRBlock (client_ipv6_cidr_block) is the IPv6 block
	// client tunnel addresses come from, /64 to /120 (ippool's bounds):
	// required when TrafficIPAddressType carries IPv6, refused otherwise.
	// Clients keep their own addresses into the private network, so the
	// block lies inside an IPv6 entry of VPCCIDRBlocks (the target
	// interface's subnet, checked at start), and the endpoint answers
	// neighbour discovery for it there; with
	// TargetNetwork.SNATIPv6Address instead it lies outside them, as the
	// IPv4 block does. It cannot change on reload (CheckReload). AWS: the
	// associated subnet's IPv6 range.
	ClientIPv6CIDRBlock netip.Prefix
	// VPCCIDRBlocks (vpc_cidr_blocks, required) are the private networks
	// behind the endpoint (at least one; IPv6 ones only when
	// TrafficIPAddressType carries IPv6). AWS: the CIDR of the VPC of the
	// associated target network.
	VPCCIDRBlocks []netip.Prefix
	// ListenAddress (listen_address) is the local address the listeners
	// bind: 0.0.0.0 by default; with EndpointIPAddressType IPv6 it is an
	// IPv6 address, :: by default. AWS: none.
	ListenAddress netip.Addr
	// ListenIPv6Address (listen_ipv6_address) is the local IPv6 address
	// the IPv6 listeners bind with EndpointIPAddressType DualStack (::
	// by default); refused with the other types. AWS: none.
	ListenIPv6Address netip.Addr
	// Transport (transport) lists the sockets to listen on, any mix of
	// udp and tcp on any ports (443 and 1194 are the usual ones);
	// [{protocol: udp, port: 443}] by default. No two share a protocol
	// and port. AWS: TransportProtocol and VpnPort (one of each).
	Transport []Listener
	// ServerCertificate (server_certificate, required) is the endpoint's
	// own TLS identity. AWS: ServerCertificateArn.
	ServerCertificate ServerCertificate
	// ControlChannel (control_channel) holds control channel protection
	// options. AWS: none (AWS does not use tls-auth or tls-crypt).
	ControlChannel ControlChannel
	// Authentication (authentication, required) says how clients prove
	// who they are. AWS: AuthenticationOptions.
	Authentication Authentication
	// DataCiphers (data_ciphers) are the data channel AEADs the server
	// accepts, in server preference order, in canonical spelling (the
	// Cipher constants; the file may use any case). Default: AES-256-GCM,
	// AES-128-GCM, CHACHA20-POLY1305. AWS: none (AES-256-GCM).
	DataCiphers []string
	// TargetNetwork (target_network, required) is where client traffic
	// leaves the endpoint. It cannot change on reload (CheckReload). AWS:
	// AssociateClientVpnTargetNetwork.
	TargetNetwork TargetNetwork
	// TUN (tun) is the tunnel interface. It cannot change on reload
	// (CheckReload). AWS: none.
	TUN TUN
	// NAT (nat) sizes the source NAT's mapping table and each client's
	// share of it. It cannot change on reload (CheckReload). AWS: none.
	NAT NAT
	// Routes (routes) are pushed to clients. AWS: CreateClientVpnRoute.
	Routes []Route
	// AuthorizationRules (authorization_rules) say which groups may reach
	// which networks. None means no client may reach anything (AWS
	// semantics: default deny). AWS: AuthorizeClientVpnIngress.
	AuthorizationRules []AuthorizationRule
	// SplitTunnel (split_tunnel), when true (the default), sends only
	// Routes through the tunnel; when false clients send all traffic
	// (pushed redirect-gateway def1). AWS: SplitTunnel (default false
	// there).
	SplitTunnel bool
	// AllowHostAccess (allow_host_access) lets clients reach the endpoint
	// host's own addresses (those of every interface, loopback, broadcast
	// and multicast, and the SNAT address) through the routes and
	// authorization rules like any destination. false by default: packets
	// to them are dropped, so a rule for the whole VPC does not open the
	// host's own services (sshd) to clients. Either way the client CIDR's
	// gateway address answers ping and nothing else. AWS: none (the
	// endpoint is not a host there).
	AllowHostAccess bool
	// DNSServers (dns_servers) are up to two resolvers of each family
	// pushed to clients (dhcp-option DNS, dhcp-option DNS6); none by
	// default, and then clients keep their own. AWS: DnsServers.
	DNSServers []netip.Addr
	// SessionTimeout (session_timeout_hours) is the longest a client
	// session may last before the client must authenticate again: 8, 10,
	// 12 or 24 hours; 24 by default. AWS: SessionTimeoutHours.
	SessionTimeout time.Duration
	// ClientLoginBanner (client_login_banner) is text shown to clients
	// that can show it when a session is established: up to 1400
	// characters of UTF-8, newlines and tabs allowed, no other control
	// characters; "" (no banner) by default. AWS:
	// ClientLoginBannerOptions.BannerText.
	ClientLoginBanner string
	// BandwidthLimitMbps (bandwidth_limit_mbps) caps each client
	// connection's throughput, in megabits per second, in each direction.
	// A non-negative number (fractions allowed, at most 100000); 0 means
	// unlimited; 10 by default. AWS: the fixed 10 Mbps per connection
	// quota.
	BandwidthLimitMbps float64
	// BandwidthLimits (bandwidth_limits) override BandwidthLimitMbps for
	// the clients of a group; a client in several listed groups gets the
	// highest of their limits. At most one entry per group. AWS: none.
	BandwidthLimits []BandwidthLimit
	// Reneg (reneg_seconds) is how often the server renegotiates a
	// session's data channel keys (OpenVPN reneg-sec): 0 disables it,
	// otherwise 10 to 604800 seconds; 3600 by default, as in OpenVPN.
	// Exported profiles set reneg-sec 0, leaving the schedule to the
	// server. AWS: none.
	Reneg time.Duration
	// Keepalive (keepalive) sets the ping interval and the silence after
	// which a session is restarted. AWS: none.
	Keepalive Keepalive
	// MaxConnectionsPerUser (max_connections_per_user) is how many
	// sessions one identity may hold at once, over UDP and TCP together:
	// the username where there is one, else the certificate's common name.
	// A new session beyond it replaces that identity's oldest, which is
	// told why. 0 means unlimited; 5 by default. AWS: none.
	MaxConnectionsPerUser int
	// ConnectionLog (connection_log) records client connections, AWS's
	// connection log as JSON lines (package endpoint/connlog). AWS: ConnectionLogOptions.
	ConnectionLog ConnectionLog
	// Admin (admin) is the local administration API, served on a unix
	// socket. AWS: the EC2 API's Client VPN actions.
	Admin Admin
	// Metrics (metrics) serves Prometheus metrics (package endpoint/metrics).
	// AWS: the AWS/ClientVPN CloudWatch metrics.
	Metrics Metrics
	// StateDir (state_dir) is the directory of the endpoint's persistent
	// state: MFA secrets, used codes, the auth-token key, and the key that
	// seals secrets at rest (StateDir/seal.key). An absolute path (a
	// relative one is resolved against the file's directory);
	// DefaultStateDir when absent. It need not exist (it is created at
	// start), but if it exists it must be a directory. It cannot change on
	// reload (CheckReload). AWS: none (AWS keeps this state itself).
	StateDir string
	// ClientConnectHandler (client_connect_handler) is called after a
	// client authenticates and before authorization, and may refuse the
	// connection with a message; nil when absent. AWS:
	// ClientConnectOptions.
	ClientConnectHandler *ClientConnectHandler
	// Portal (portal) is the self-service portal; nil when absent.
	// Required with Authentication.Federated, whose login links point at
	// it. AWS: SelfServicePortal.
	Portal *Portal
	// Cluster (cluster) makes the endpoint one node of several that serve it together,
	// coordinated through etcd; nil when absent (a single node). Its snat_address and
	// snat_ipv6_address replace target_network's (TargetNetwork holds the node's own).
	// None of its keys can change on reload (CheckReload). AWS: the subnet associations.
	Cluster *Cluster

	// file is the name given to Load, for KeyError and CheckReload.
	file string
	// clusterSrc is where Cluster was read from (nil without one), for ParseWithCluster.
	clusterSrc *clusterSource
	// keyLines maps each key path present in the file to its line.
	keyLines map[string]int
}

// KeyLine returns the line of the key at path (such as
// "server_certificate.cert_file" or "routes[2].destination_cidr_block"), or
// 0 when the key is not in the file (a default) or the Endpoint was not
// made by Load or Parse.
func (e *Endpoint) KeyLine(path string) int { return e.keyLines[path] }

// KeyError reports a problem found outside this package with the value at
// path (for example a certificate file whose content is wrong) in the same
// form as a validation problem: with the file name and the key's line. A
// key of the cluster section is named with the file the section came from
// (the node's local file, for an Endpoint from ParseWithCluster).
func (e *Endpoint) KeyError(path string, err error) *ValidationError {
	return &ValidationError{File: e.fileOf(path), Path: path, Line: e.KeyLine(path), Msg: err.Error()}
}

// Listener is one transport socket.
type Listener struct {
	Protocol string // ProtocolUDP or ProtocolTCP
	Port     uint16 // 1..65535
}

// String returns "udp/443".
func (l Listener) String() string { return fmt.Sprintf("%s/%d", l.Protocol, l.Port) }

// ServerCertificate names the endpoint's certificate and private key files
// (absolute paths). The certificate (cert_file) must carry extended key
// usage serverAuth and be within its validity period; the key (key_file)
// must be its key. cmd checks the content when it loads them.
type ServerCertificate struct {
	CertFile string
	KeyFile  string
}

// KeyDirection is OpenVPN's key-direction of a tls-auth key. Its values are
// OpenVPN's numbers, with -1 for "absent".
type KeyDirection int

// Key directions.
const (
	// KeyDirectionBidirectional (tls_auth_key_direction absent): both
	// sides use the same HMAC key.
	KeyDirectionBidirectional KeyDirection = -1
	// KeyDirectionNormal (0) is what servers usually use; clients then use
	// KeyDirectionInverse.
	KeyDirectionNormal KeyDirection = 0
	// KeyDirectionInverse (1).
	KeyDirectionInverse KeyDirection = 1
)

// ControlChannel holds options of the TLS control channel (control_channel).
// TLSCryptKeyFile and TLSAuthKeyFile exclude each other;
// TLSCryptV2ServerKeyFile may go with either (OpenVPN servers accept
// tls-crypt-v2 clients and legacy ones side by side).
type ControlChannel struct {
	// TLSCryptKeyFile (tls_crypt_key_file) is an OpenVPN static key file
	// for tls-crypt; "" when tls-crypt is off.
	TLSCryptKeyFile string
	// TLSAuthKeyFile (tls_auth_key_file) is an OpenVPN static key file
	// for tls-auth; "" when tls-auth is off.
	TLSAuthKeyFile string
	// TLSAuthKeyDirection (tls_auth_key_direction: 0 or 1) is the
	// server's key-direction; KeyDirectionBidirectional when absent.
	// Exported profiles carry the opposite direction.
	TLSAuthKeyDirection KeyDirection
	// TLSAuthDigest (tls_auth_digest) is the tls-auth HMAC digest: one of
	// the Digest constants, DigestSHA1 by default (OpenVPN's --auth).
	TLSAuthDigest string
	// TLSCryptV2ServerKeyFile (tls_crypt_v2_server_key_file) is an OpenVPN
	// tls-crypt-v2 server key; "" when off.
	TLSCryptV2ServerKeyFile string
}

// Authentication holds the client authentication methods
// (authentication). At least one of Certificate, Directory and Federated is
// set in a loaded Endpoint; Directory and Federated exclude each other.
// Certificate combined with either of them makes a client pass both (AWS:
// mutual authentication together with directory or federated
// authentication).
type Authentication struct {
	// Certificate (certificate) is mutual TLS; nil when absent.
	Certificate *CertificateAuthentication
	// Directory (directory) checks a username and password against an
	// LDAP directory (Active Directory included); nil when absent.
	Directory *DirectoryAuthentication
	// MFA (mfa) asks directory users for a one-time code as well; nil
	// when absent. Allowed only with Directory, since a code belongs to a
	// user.
	MFA *MFA
	// Federated (federated) logs users in at an identity provider (OIDC
	// or SAML 2.0) through a browser; nil when absent. Not with Directory
	// or MFA (the provider asks for its own factors). Requires
	// Endpoint.Portal, which the login link points at. AWS:
	// federated-authentication.
	Federated *FederatedAuthentication
}

// FederatedAuthentication is single sign-on at an identity provider
// (authentication.federated): the client is sent to the portal's login
// link (a CRV1 notice for the stock client, WEB_AUTH for clients that
// announce IV_SSO), the user signs in at the provider in a browser, and the
// provider's groups feed authorization rules and bandwidth limits like
// directory groups. Exactly one of OIDC and SAML is set. Exported profiles
// of such an endpoint carry auth-user-pass, without static-challenge. AWS:
// federated-authentication (SAML only there).
type FederatedAuthentication struct {
	// OIDC (oidc) is an OpenID Connect provider; nil when SAML is set.
	OIDC *OIDCAuthentication
	// SAML (saml) is a SAML 2.0 identity provider; nil when OIDC is set.
	SAML *SAMLAuthentication
}

// OIDCAuthentication is an OpenID Connect provider
// (authentication.federated.oidc), found by discovery at its issuer, with
// which cvpn is registered as a client (authorization code flow with PKCE;
// the redirect URL is under Portal.PublicURL).
type OIDCAuthentication struct {
	// Issuer (issuer, required) is the provider's issuer URL, exactly as
	// its discovery document and ID tokens name it: https://, with a host,
	// no user information, query or fragment.
	Issuer string
	// ClientID (client_id, required) is cvpn's client ID at the provider.
	ClientID string
	// ClientSecretFile (client_secret_file) holds the client secret (one
	// trailing newline is not part of it); "" for a public client, which
	// PKCE alone protects. Like bind_password_file it must not be
	// readable by every user of the host. Absolute path.
	ClientSecretFile string
	// CAFile (ca_file) is a PEM bundle of the roots that sign the
	// provider's certificates; "" for the system roots. Absolute path.
	CAFile string
	// Scopes (scopes) are the scopes requested: scope tokens (RFC 6749
	// section 3.3), no duplicates, openid among them. Default openid,
	// profile, email.
	Scopes []string
	// UsernameClaim (username_claim) is the ID token claim that holds the
	// username; DefaultOIDCUsernameClaim by default.
	UsernameClaim string
	// GroupsClaim (groups_claim) is the claim that lists the user's
	// groups; DefaultOIDCGroupsClaim by default.
	GroupsClaim string
}

// SAMLAuthentication is a SAML 2.0 identity provider
// (authentication.federated.saml), as AWS uses one: signed responses,
// NameID as the username, an attribute for the groups.
type SAMLAuthentication struct {
	// IdPMetadataFile (idp_metadata_file, required) is the provider's
	// metadata: an XML EntityDescriptor (or an EntitiesDescriptor holding
	// one) with an IDPSSODescriptor that has a signing certificate and a
	// SingleSignOnService with the HTTP-Redirect binding. At most 4 MiB.
	// Absolute path. AWS: the SAML provider's metadata document.
	IdPMetadataFile string
	// GroupsAttribute (groups_attribute) is the assertion attribute that
	// lists the user's groups; DefaultSAMLGroupsAttribute (memberOf, as
	// AWS) by default.
	GroupsAttribute string
}

// Defaults of authentication.federated.
const (
	DefaultOIDCUsernameClaim   = "preferred_username"
	DefaultOIDCGroupsClaim     = "groups"
	DefaultSAMLGroupsAttribute = "memberOf"
)

// OIDCScopeOpenID is the scope every OpenID Connect request carries.
const OIDCScopeOpenID = "openid"

// defaultOIDCScopes is authentication.federated.oidc.scopes when absent.
var defaultOIDCScopes = []string{OIDCScopeOpenID, "profile", "email"}

// Portal is the self-service portal (portal): users sign in (with the
// endpoint's directory, MFA included, or its identity provider), download
// their profile, enrol MFA, see and end their sessions, and complete the
// device logins of federated connections. Served over HTTPS. AWS: the
// self-service portal (SelfServicePortal).
type Portal struct {
	// ListenAddress (listen_address) is the IP:port the portal listens
	// on; DefaultPortalListenAddress by default. It must not be a tcp
	// transport listener's socket or metrics.listen_address.
	ListenAddress netip.AddrPort
	// PublicURL (public_url, required) is the portal's address as users
	// and identity providers reach it: https://host[:port], no path but
	// "/", no user information, query or fragment. Login links, the OIDC
	// redirect URL and the SAML service provider's URLs are made from it.
	PublicURL string
	// CertFile (cert_file) is the portal's TLS certificate (PEM, the
	// leaf first), set together with KeyFile; "" to serve the server
	// certificate (server_certificate). Absolute path.
	CertFile string
	// KeyFile (key_file) is CertFile's private key; "" with CertFile "".
	// Absolute path.
	KeyFile string
}

// DefaultPortalListenAddress is portal.listen_address when the file has a
// portal without it.
var DefaultPortalListenAddress = netip.MustParseAddrPort("0.0.0.0:443")

// CertificateAuthentication is mutual TLS (authentication.certificate): a
// client must present a certificate that chains to the CA bundle in
// ClientRootCAFile and is not revoked by CRLFile.
type CertificateAuthentication struct {
	// ClientRootCAFile (client_root_ca_file, required) is the PEM bundle
	// of CAs that sign client certificates; every certificate in it must
	// be a CA. Absolute path. AWS: ClientRootCertificateChainArn.
	ClientRootCAFile string
	// CRLFile (crl_file) is a PEM certificate revocation list signed by a
	// CA of ClientRootCAFile; "" when absent. `cvpn client revoke` writes
	// it. Absolute path. AWS: ImportClientVpnClientCertificateRevocationList.
	CRLFile string
}

// DirectoryAuthentication is username and password login against an LDAP
// directory (authentication.directory): the server searches for the user
// under UserBaseDN with UserFilter, binds as that entry with the password,
// and reads the user's groups, which access_group_id in authorization rules
// and bandwidth limits match (by cn, DN or, in Active Directory, objectSid).
// Exported profiles of such an endpoint carry auth-user-pass. AWS:
// directory-service-authentication.
//
// Groups come either from an attribute of the user entry (GroupAttribute,
// memberOf by default) or from a search (GroupBaseDN and GroupFilter, with
// GroupAttribute ""); never both.
type DirectoryAuthentication struct {
	// URLs (url: one URL or a list) are the directory servers, tried in
	// order: ldaps://host[:port], or ldap://host[:port] with StartTLS. A
	// plain ldap:// URL without StartTLS, which would send passwords in
	// clear, is allowed only to a loopback host (localhost, 127.0.0.0/8,
	// ::1).
	URLs []string
	// StartTLS (start_tls) upgrades ldap:// connections with StartTLS;
	// false by default. Not allowed with ldaps:// URLs.
	StartTLS bool
	// CAFile (ca_file) is a PEM bundle of the roots that sign the
	// directory servers' certificates (ldaps:// and StartTLS); "" for the
	// system roots. Absolute path.
	CAFile string
	// BindDN (bind_dn) is the service account the server searches as;
	// "" for an anonymous search. Set together with BindPasswordFile.
	BindDN string
	// BindPasswordFile (bind_password_file) holds the service account's
	// password (one trailing newline is not part of it). It must not be
	// readable by every user of the host (mode o+r is refused). Absolute
	// path; "" with BindDN "".
	BindPasswordFile string
	// UserBaseDN (user_base_dn, required) is where users are searched,
	// with scope subtree.
	UserBaseDN string
	// UserFilter (user_filter) finds the entry of a user: an LDAP filter
	// (RFC 4515) in which {username} stands for the login name, escaped
	// when substituted. "(uid={username})" by default; Active Directory
	// uses "(sAMAccountName={username})".
	UserFilter string
	// GroupAttribute (group_attribute) is the attribute of the user entry
	// that lists the DNs of its groups; "memberOf" by default, "" to
	// search for groups with GroupBaseDN and GroupFilter instead.
	GroupAttribute string
	// NestedGroups (nested_groups), in Active Directory, also counts the
	// groups a user belongs to through other groups (the
	// LDAP_MATCHING_RULE_IN_CHAIN rule, 1.2.840.113556.1.4.1941); false by
	// default.
	NestedGroups bool
	// GroupBaseDN (group_base_dn) is where groups are searched; "" unless
	// GroupAttribute is "".
	GroupBaseDN string
	// GroupFilter (group_filter) finds the groups of a user under
	// GroupBaseDN: an LDAP filter in which {dn} stands for the user's DN
	// and {username} for the login name; "(member={dn})" by default when
	// GroupBaseDN is set.
	GroupFilter string
	// Timeout (timeout_seconds) bounds each LDAP operation (dial, bind,
	// search): 1 to 120 seconds, 10 by default.
	Timeout time.Duration
}

// MFA is the second factor of directory users (authentication.mfa): a TOTP
// code (RFC 6238) from an authenticator app, enrolled by the operator with
// `cvpn user mfa enroll`. AWS: the directory's MFA (RADIUS there).
type MFA struct {
	// TOTPIssuer (totp.issuer) names the service in authenticator apps
	// (the issuer of the otpauth URI); "cvpn" by default. At most 64
	// printable characters, no ':' (which separates issuer and account in
	// the URI's label).
	TOTPIssuer string
	// Challenge (challenge) is how the client is asked for the code:
	// ChallengeStatic (the default: profiles carry static-challenge and
	// the client asks with the password) or ChallengeDynamic (the server
	// answers the password with a CRV1 challenge, for profiles without
	// static-challenge).
	Challenge string
	// ChallengeText (challenge_text) is the prompt the client shows;
	// DefaultChallengeText by default. 1 to 200 bytes of printable UTF-8.
	// Commas and colons are allowed: in the profile the text is one
	// quoted parameter of static-challenge (OpenVPN options.c
	// parse_line), and in a CRV1 challenge it is the last field, which
	// the client reads to the end (misc.c get_auth_challenge).
	ChallengeText string
}

// MFA challenge modes (authentication.mfa.challenge).
const (
	ChallengeStatic  = "static"
	ChallengeDynamic = "dynamic"
)

// Defaults of authentication.directory and authentication.mfa.
const (
	DefaultUserFilter     = "(uid={username})"
	DefaultGroupAttribute = "memberOf"
	DefaultGroupFilter    = "(member={dn})"
	DefaultTOTPIssuer     = "cvpn"
	DefaultChallengeText  = "Enter your authenticator code"
)

// ClientConnectHandler is the client-connect handler (client_connect_handler):
// after authentication and before authorization, the endpoint sends AWS's
// schema v2 request (JSON) and reads its answer, which may refuse the
// connection with a message. Exactly one of Command and URL is set. AWS:
// ClientConnectOptions (a Lambda function there).
type ClientConnectHandler struct {
	// Command (command) runs a program with the request on its standard
	// input: a list of the program's absolute path, which must be an
	// executable regular file, and its arguments. No shell is involved.
	Command []string
	// URL (url) is an https:// URL the request is POSTed to.
	URL string
	// CAFile (ca_file) is a PEM bundle of the roots that sign URL's
	// certificate; "" for the system roots. Only with URL. Absolute path.
	CAFile string
	// Timeout (timeout_seconds) is how long the handler may take before
	// the connection is refused (client-connect-handler-timed-out): 1 to
	// 30 seconds, 30 by default (AWS's limit).
	Timeout time.Duration
}

// TargetNetwork is where client traffic leaves the endpoint
// (target_network).
type TargetNetwork struct {
	// Interface (interface, required) faces the private network.
	Interface string
	// SNATAddress (snat_address) is the endpoint's own IPv4 address
	// there, which client traffic is source-NATed to; it must lie inside
	// one of VPCCIDRBlocks. Required unless IPv4 traffic is off
	// (traffic_ip_address_type: ipv6), and refused then. On a cluster
	// node it is the node's own cluster.snat_address (Cluster.SNATAddress),
	// whatever the file sets here, and the file may leave it out.
	SNATAddress netip.Addr
	// SNATIPv6Address (snat_ipv6_address) is optional: when set, IPv6
	// client traffic is source-NATed to it (for networks that cannot route
	// the client block) instead of leaving with the clients' own
	// addresses. It must lie inside an IPv6 entry of VPCCIDRBlocks and
	// outside ClientIPv6CIDRBlock. On a cluster node it is the node's own
	// cluster.snat_ipv6_address, which IPv6 traffic requires there. AWS:
	// none (AWS routes IPv6).
	SNATIPv6Address netip.Addr
}

// Address families of EndpointIPAddressType and TrafficIPAddressType, as
// AWS spells them.
const (
	IPv4      = "ipv4"
	IPv6      = "ipv6"
	DualStack = "dual-stack"
)

// HasIPv4 reports whether an address type (EndpointIPAddressType or
// TrafficIPAddressType) includes IPv4.
func HasIPv4(t string) bool { return t != IPv6 }

// HasIPv6 reports whether an address type includes IPv6.
func HasIPv6(t string) bool { return t == IPv6 || t == DualStack }

// TUN is the tunnel device (tun).
type TUN struct {
	Name string // name: default "cvpn0"
	MTU  int    // mtu: 576..9000, default 1500
}

// NAT sizes the source NAT (nat): the table of mappings, one per flow a
// client has open into the private network, and each client's share of it.
type NAT struct {
	// MaxMappings (max_mappings) is how many mappings the table holds in
	// all: 1024 to 4194304, 65536 by default. Each costs about 300 bytes
	// while it exists.
	MaxMappings int
	// MaxMappingsPerClient (max_mappings_per_client) is how many of them
	// one client may hold: 1 to max_mappings. By default the table is
	// shared out among the client CIDR's addresses (max_mappings divided
	// by the block's size: 64 for a /22 and the default table), but never
	// below 64; so unless the floor applies, the table has room for every
	// client at its quota. A client at its quota gets room for a new flow
	// only from its own mappings (one idle 30 seconds that is not an
	// established TCP connection); otherwise the flow is refused and
	// counted.
	MaxMappingsPerClient int
}

// Route is one destination pushed to clients (routes[i]). AWS:
// CreateClientVpnRoute.
type Route struct {
	DestinationCIDRBlock netip.Prefix // destination_cidr_block, required, host bits clear
	Description          string       // description
	// Local is `target: local` (AWS: TargetVpcSubnetId "local"): the route
	// to the client CIDR itself, which lets clients reach each other (still
	// subject to the authorization rules). It is allowed only with
	// destination_cidr_block equal to client_cidr_block, and is not pushed:
	// the client's own ifconfig subnet already covers it.
	Local bool
}

// RouteTargetLocal is the only value of routes[i].target.
const RouteTargetLocal = "local"

// AuthorizationRule allows a group (or every authenticated client) to reach a
// network (authorization_rules[i]). Exactly one of AccessGroupID != "" and
// AuthorizeAllGroups holds.
type AuthorizationRule struct {
	TargetNetworkCIDR netip.Prefix // target_network_cidr, required, host bits clear
	// AccessGroupID (access_group_id) names a group: a client certificate
	// OU, or a directory group by its cn, its DN or (Active Directory) its
	// objectSid string.
	AccessGroupID      string
	AuthorizeAllGroups bool   // authorize_all_groups
	Description        string // description
}

// BandwidthLimit is a per-group override of BandwidthLimitMbps
// (bandwidth_limits[i]).
type BandwidthLimit struct {
	AccessGroupID string  // access_group_id, required
	Mbps          float64 // mbps, required: as bandwidth_limit_mbps, 0 = unlimited
}

// Keepalive is OpenVPN's keepalive: send a ping after Ping of silence,
// restart the session after PingRestart of silence. PingRestart > Ping.
type Keepalive struct {
	Ping        time.Duration // ping_seconds: default 10s
	PingRestart time.Duration // ping_restart_seconds: default 60s
}

// ConnectionLog is the connection log (connection_log). A change applies on reload: the log
// switches files at once.
type ConnectionLog struct {
	// Enabled (enabled) turns the log on; false by default.
	Enabled bool
	// File (file) is where the log goes, an absolute path; required when
	// Enabled. The file need not exist, but its directory must.
	File string
}

// Admin is the administration API (admin): HTTP and JSON on a unix socket
// that only root and the service's own user may use.
type Admin struct {
	// Socket (socket) is the unix socket's path, absolute or relative to
	// the file's directory; DefaultAdminSocket when absent. Its directory
	// is created at start if missing. At most 107 bytes (sun_path).
	Socket string
}

// DefaultAdminSocket is admin.socket when the file has none.
const DefaultAdminSocket = "/run/cvpn/admin.sock"

// Metrics is the Prometheus metrics endpoint (metrics).
type Metrics struct {
	// ListenAddress (listen_address) is the IP:port /metrics is served on
	// over HTTP; DefaultMetricsListenAddress when metrics is present without
	// it, the zero AddrPort (no metrics) when metrics is absent. It must not
	// be a tcp transport listener's socket.
	ListenAddress netip.AddrPort
}

// DefaultStateDir is state_dir when the file has none.
const DefaultStateDir = "/var/lib/cvpn"

// DefaultMetricsListenAddress is metrics.listen_address when the file has
// metrics without it: loopback, on the port registered for OpenTelemetry's
// Prometheus exporter.
var DefaultMetricsListenAddress = netip.MustParseAddrPort("127.0.0.1:9464")

// Defaults applied when keys are absent.
const (
	defaultPort                  = 443
	defaultTUNName               = "cvpn0"
	defaultMTU                   = 1500
	defaultPing                  = 10 // seconds
	defaultPingRestart           = 60 // seconds
	defaultSessionTimeout        = 24 // hours
	defaultBandwidthLimitMbps    = 10
	defaultReneg                 = 3600 // seconds, OpenVPN's reneg-sec default
	defaultMaxConnectionsPerUser = 5
	defaultNATMappings           = 65536 // nat.DefaultMaxEntries
	// minDefaultMappingsPerClient is the least default per-client quota,
	// nat.DefaultMaxPerClient: enough for a client's usual flows.
	minDefaultMappingsPerClient = 64
)

// defaultDataCiphers is also the list of supported ciphers.
var defaultDataCiphers = []string{CipherAES256GCM, CipherAES128GCM, CipherChaCha20Poly1305}

// Load reads the endpoint file at path, resolves the file paths it names
// against the file's directory, applies defaults and validates it. Problems
// with the content come back joined, each a *ValidationError carrying path as
// its File.
func Load(path string) (*Endpoint, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parse(data, filepath.Dir(path), path, nil)
}

// Parse parses an endpoint file's content. Relative file paths in it are
// resolved against dir (the current directory when dir is ""), and the files
// must exist. Problems come back joined, each a *ValidationError.
func Parse(data []byte, dir string) (*Endpoint, error) {
	return parse(data, dir, "", nil)
}
