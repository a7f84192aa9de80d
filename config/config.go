// Package config reads the endpoint file: the YAML document that describes
// one cvpn endpoint, with keys modelled on AWS CreateClientVpnEndpoint
// (client_cidr_block, vpc_cidr_blocks, authorization_rules, ...).
//
// It owns the file's schema, its defaults and every check that can be made
// from the file alone: types, ranges, CIDR masking, overlaps, references
// between keys, and that the files it names exist and are readable. Every
// problem is reported with its key path and line. It does not read the
// contents of the certificate, key and CA files it names (pki and the
// control channel do, when they load them), and it does not touch the
// network or the OS (cmd wires the result into the engine).
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

// Endpoint is a parsed, validated endpoint file. An Endpoint returned by
// Load or Parse has every default filled in, every file path absolute, and
// satisfies every rule this package checks.
type Endpoint struct {
	// Description is free text for operators; "" when absent.
	Description string
	// ClientCIDRBlock is the IPv4 block client tunnel addresses come from,
	// /12 to /22, disjoint from VPCCIDRBlocks and from every route.
	ClientCIDRBlock netip.Prefix
	// VPCCIDRBlocks are the private networks behind the endpoint (IPv4,
	// at least one).
	VPCCIDRBlocks []netip.Prefix
	// ListenAddress is the local address the listeners bind; 0.0.0.0 by
	// default.
	ListenAddress netip.Addr
	// Transport lists the sockets to listen on; [{udp 443}] by default.
	// No two share a protocol and port.
	Transport []Listener
	// ServerCertificate is the endpoint's own TLS identity.
	ServerCertificate ServerCertificate
	// ControlChannel holds control channel protection options.
	ControlChannel ControlChannel
	// Authentication says how clients prove who they are.
	Authentication Authentication
	// DataCiphers are the data channel AEADs the server accepts, in
	// server preference order, in canonical spelling (the Cipher
	// constants). Default: AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305.
	DataCiphers []string
	// TargetNetwork is where client traffic leaves the endpoint.
	TargetNetwork TargetNetwork
	// TUN is the tunnel interface.
	TUN TUN
	// Routes are pushed to clients.
	Routes []Route
	// AuthorizationRules say which groups may reach which networks. None
	// means no client may reach anything (AWS semantics: default deny).
	AuthorizationRules []AuthorizationRule
	// SplitTunnel, when true (the default), sends only Routes through the
	// tunnel; when false clients send all traffic (redirect-gateway).
	SplitTunnel bool
	// Keepalive sets the ping interval and the silence after which a
	// session is restarted.
	Keepalive Keepalive
}

// Listener is one transport socket.
type Listener struct {
	Protocol string // ProtocolUDP or ProtocolTCP
	Port     uint16 // 1..65535
}

// String returns "udp/443".
func (l Listener) String() string { return fmt.Sprintf("%s/%d", l.Protocol, l.Port) }

// ServerCertificate names the endpoint's certificate and private key files
// (absolute paths).
type ServerCertificate struct {
	CertFile string
	KeyFile  string
}

// ControlChannel holds options of the TLS control channel.
type ControlChannel struct {
	// TLSCryptKeyFile is an OpenVPN static key file for tls-crypt; ""
	// when tls-crypt is off.
	TLSCryptKeyFile string
}

// Authentication holds the client authentication methods. Mutual TLS is the
// only method so far, so Certificate is never nil in a loaded Endpoint; it is
// a pointer because later methods (federated, directory) may stand alone.
type Authentication struct {
	Certificate *CertificateAuthentication
}

// CertificateAuthentication is mutual TLS: a client must present a
// certificate that chains to the CA bundle in ClientRootCAFile.
type CertificateAuthentication struct {
	ClientRootCAFile string // absolute path
}

// TargetNetwork is the interface facing the private network and the
// endpoint's own address there, which client traffic is source-NATed to.
type TargetNetwork struct {
	Interface   string
	SNATAddress netip.Addr // IPv4, inside one of VPCCIDRBlocks
}

// TUN is the tunnel device.
type TUN struct {
	Name string // default "cvpn0"
	MTU  int    // 576..9000, default 1500
}

// Route is one destination pushed to clients.
type Route struct {
	DestinationCIDRBlock netip.Prefix
	Description          string
}

// AuthorizationRule allows a group (or every authenticated client) to reach a
// network. Exactly one of AccessGroupID != "" and AuthorizeAllGroups holds.
type AuthorizationRule struct {
	TargetNetworkCIDR  netip.Prefix
	AccessGroupID      string
	AuthorizeAllGroups bool
	Description        string
}

// Keepalive is OpenVPN's keepalive: send a ping after Ping of silence,
// restart the session after PingRestart of silence. PingRestart > Ping.
type Keepalive struct {
	Ping        time.Duration // default 10s
	PingRestart time.Duration // default 60s
}

// Defaults applied when keys are absent.
const (
	defaultPort        = 443
	defaultTUNName     = "cvpn0"
	defaultMTU         = 1500
	defaultPing        = 10 // seconds
	defaultPingRestart = 60 // seconds
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
	return parse(data, filepath.Dir(path), path)
}

// Parse parses an endpoint file's content. Relative file paths in it are
// resolved against dir (the current directory when dir is ""), and the files
// must exist. Problems come back joined, each a *ValidationError.
func Parse(data []byte, dir string) (*Endpoint, error) {
	return parse(data, dir, "")
}
