// Package profile renders client profiles: the .ovpn file the stock OpenVPN 2.6 client uses as
// is, with everything inline. Like AWS ExportClientVpnClientConfiguration, a profile carries
// only what a client needs: the CA that signed the server certificate, the control-channel key
// every client shares (or the client's own tls-crypt-v2 key), and, when a client is named, that
// client's own certificate and key. Never the CA key, the server key or the tls-crypt-v2 server
// key. For an endpoint with directory authentication it makes the client ask for a username
// and password (and, with a static MFA challenge, for the code); for an endpoint with federated
// authentication it does the same without a challenge, so that the stock client shows the
// server's CRV1 login notice (the link to the portal) at its console and sends the answer once
// the user pressed Enter. A profile of an endpoint without certificate authentication carries
// no certificate at all.
//
// A profile lists one remote per port of the chosen transport, and for an endpoint that clients
// reach over IPv6 too (endpoint_ip_address_type ipv6 or dual-stack) one per port and family, with
// OpenVPN's family-specific protocol names, so that the client tries each family the endpoint
// listens on (Profile.Families). An endpoint that runs on several nodes (a cluster) lists each
// node's host in turn (Profile.SetRemotes), and the client picks them in a random order.
//
// It does not read the endpoint file or the client store (packages endpoint and
// endpoint/clientstore load them), choose listeners for a protocol, or write files: cmd/cvpn
// does that.
package profile

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/pki"
)

// Profile is what goes into a client profile.
type Profile struct {
	Description string // the endpoint's description, as a comment
	Remote      string // the name or address clients dial (remote)
	// Remotes are the hosts clients dial when the endpoint runs on several nodes, in the order
	// listed (SetRemotes); nil lists Remote alone. Each host has the remote lines Remote would
	// have, narrowed to its own family when it is an IP address.
	Remotes    []string
	Proto      string   // udp or tcp (proto)
	Ports      []uint16 // one remote line each (per family)
	ServerName string   // the server certificate's CN (verify-x509-name)
	Ciphers    []string // data-ciphers, the first also as cipher
	CAPEM      []byte   // <ca>
	// Families are the address families clients dial (config.IPv4, config.IPv6), in the order
	// they try them: RemoteFamilies. With IPv4 alone (or none) each port has one remote line
	// without a protocol, as before IPv6 listeners existed; else each port has one line per
	// family whose protocol names the family (udp4, udp6, tcp4-client, tcp6-client: OpenVPN
	// src/openvpn/socket.c proto_names), which makes the client resolve and connect in that
	// family alone.
	Families []string
	// At most one control-channel key is rendered, in this order of preference.
	TLSCryptV2   []byte // the client's own tls-crypt-v2 key, or
	TLSCrypt     []byte // the tls-crypt key file, or
	TLSAuth      []byte // the tls-auth key file, with
	KeyDirection int    // the client's key-direction, -1 for none (bidirectional)
	AuthDigest   string // the tls-auth HMAC digest (auth)
	// Client is the name of the client whose identity the profile holds; "" for a profile
	// without one, which the user completes with their own cert and key.
	Client  string
	Groups  []string
	CertPEM []byte
	KeyPEM  []byte
	// Certificate says the endpoint authenticates clients by certificate, so a profile
	// without Client needs the user's own cert and key added.
	Certificate bool
	// UserPass says the endpoint logs users in against its directory or at an identity
	// provider: the client asks for a username and password (auth-user-pass), forgets them
	// once the server has pushed an auth-token (auth-nocache), and asks again after
	// AUTH_FAILED, answering a CRV1 challenge there (auth-retry interact; OpenVPN
	// src/openvpn/ssl.c and misc.c get_auth_challenge).
	UserPass bool
	// Federated says the login is single sign-on (authentication.federated): the password is
	// not checked, and the CRV1 challenge the server answers with is the portal's login link.
	// Only the profile's comment differs; the directives are UserPass's.
	Federated bool
	// StaticChallenge is the prompt for the MFA code that the client asks for together with
	// the password (static-challenge, echoed as typed); "" for none.
	StaticChallenge string

	// addressType is the endpoint's endpoint_ip_address_type, which SetRemotes checks hosts
	// against.
	addressType string
}

// MaxRemotes bounds the hosts of one profile: each costs a client that finds it dead a
// server-poll-timeout, and a profile is read by hand as well as by the client.
const MaxRemotes = 64

// New starts the profile of ep for clients dialling proto on ports: the remote, the server's
// name, the CA clients trust at now, the data ciphers and the control-channel key every client
// shares. A server certificate that cannot be named or verified in a profile is an error
// naming server_certificate.cert_file (a *config.ValidationError).
func New(ep *endpoint.Endpoint, proto string, ports []uint16, now time.Time) (*Profile, error) {
	cfg := ep.Config
	p := &Profile{Remote: cfg.RemoteHostname, Proto: proto, Ports: ports, Ciphers: cfg.DataCiphers, Description: cfg.Description,
		addressType: cfg.EndpointIPAddressType}
	var err error
	if p.Families, err = RemoteFamilies(cfg.EndpointIPAddressType, cfg.RemoteHostname); err != nil {
		return nil, cfg.KeyError("remote_hostname", err)
	}
	p.Certificate = cfg.Authentication.Certificate != nil
	p.Federated = cfg.Authentication.Federated != nil
	p.UserPass = cfg.Authentication.Directory != nil || p.Federated
	// A static challenge belongs to directory MFA; a federated login's only challenge is the
	// server's login notice, which a static-challenge prompt would get in the way of.
	if m := cfg.Authentication.MFA; p.UserPass && !p.Federated && m != nil && m.Challenge == config.ChallengeStatic {
		if err := config.CheckChallengeText(m.ChallengeText); err != nil {
			return nil, cfg.KeyError("authentication.mfa.challenge_text", err)
		}
		p.StaticChallenge = m.ChallengeText
	}
	p.ServerName = ep.Server.Cert.Subject.CommonName
	if err := CheckToken("the server certificate's CN", p.ServerName); err != nil {
		return nil, cfg.KeyError("server_certificate.cert_file", err)
	}
	if p.CAPEM, err = ServerRootPEM(ep, now); err != nil {
		return nil, cfg.KeyError("server_certificate.cert_file", err)
	}
	cc := cfg.ControlChannel
	switch {
	case ep.ControlKey != nil:
		p.TLSCrypt = ep.ControlKey.Marshal()
	case ep.TLSAuthKey != nil:
		p.TLSAuth = ep.TLSAuthKey.Marshal()
		p.KeyDirection = -1
		if cc.TLSAuthKeyDirection != config.KeyDirectionBidirectional {
			p.KeyDirection = 1 - int(cc.TLSAuthKeyDirection) // the client uses the other direction
		}
		p.AuthDigest = cc.TLSAuthDigest
	}
	return p, nil
}

// RemoteFamilies returns the address families a profile lists remotes for, IPv4 first: those of
// endpoint_ip_address_type (addressType: config.IPv4, config.IPv6 or config.DualStack; "" is
// IPv4), narrowed to the family of remote_hostname (remote) when that is an IP address, since a
// client cannot reach an IPv4 address over IPv6 or the reverse. An IP address of a family the
// endpoint does not listen on is an error naming both keys.
//
// IPv4 comes first on a dual-stack endpoint: a client that connects today keeps connecting the
// same way, and one without IPv4 moves on to the IPv6 remote after server-poll-timeout (Render).
func RemoteFamilies(addressType, remote string) ([]string, error) {
	var fams []string
	if config.HasIPv4(addressType) {
		fams = append(fams, config.IPv4)
	}
	if config.HasIPv6(addressType) {
		fams = append(fams, config.IPv6)
	}
	a, err := netip.ParseAddr(remote)
	if err != nil {
		return fams, nil // a DNS name: the client resolves it in each family
	}
	fam, name := config.IPv4, "IPv4"
	if !a.Unmap().Is4() {
		fam, name = config.IPv6, "IPv6"
	}
	if !slices.Contains(fams, fam) {
		if addressType == "" {
			addressType = config.IPv4
		}
		return nil, fmt.Errorf("%s is an %s address, but endpoint_ip_address_type is %s: clients could not reach "+
			"the endpoint at it (set remote_hostname to a DNS name or an address of the endpoint's family, "+
			"or endpoint_ip_address_type to %s)", remote, name, addressType, config.DualStack)
	}
	return []string{fam}, nil
}

// SetRemotes makes the profile list hosts, in order, instead of remote_hostname: one host per
// node of an endpoint that runs on several (each node's cluster.public_address). Each host must
// pass the checks remote_hostname passes (config.CheckRemoteHostname and RemoteFamilies against
// the endpoint's endpoint_ip_address_type); hosts must differ, and there are at most MaxRemotes.
// One host is remote_hostname by another name: the profile reads as a single node's.
func (p *Profile) SetRemotes(hosts []string) error {
	if len(hosts) == 0 || len(hosts) > MaxRemotes {
		return fmt.Errorf("profile: %d remote hosts: want 1 to %d", len(hosts), MaxRemotes)
	}
	seen := make(map[string]bool, len(hosts))
	var fams []string
	for _, h := range hosts {
		if err := config.CheckRemoteHostname(h); err != nil {
			return fmt.Errorf("profile: remote host: %w", err)
		}
		f, err := RemoteFamilies(p.addressType, h)
		if err != nil {
			return fmt.Errorf("profile: remote host: %w", err)
		}
		key := strings.ToLower(strings.TrimSuffix(h, "."))
		if a, err := netip.ParseAddr(h); err == nil {
			key = a.Unmap().String()
		}
		if seen[key] {
			return fmt.Errorf("profile: remote host %s is listed twice", h)
		}
		seen[key] = true
		fams = f
	}
	if len(hosts) == 1 {
		p.Remote, p.Remotes, p.Families = hosts[0], nil, fams
		return nil
	}
	// Every family the endpoint listens on; each host's lines narrow it to the host's own.
	p.Remotes = slices.Clone(hosts)
	p.Families, _ = RemoteFamilies(p.addressType, "")
	return nil
}

// hosts are the hosts the remote lines name, in order.
func (p *Profile) hosts() []string {
	if len(p.Remotes) > 1 {
		return p.Remotes
	}
	return []string{p.Remote}
}

// hostFamilies are the families of host's remote lines: Families, narrowed to the host's family
// when it is an IP address of one of them.
func (p *Profile) hostFamilies(host string) []string {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return p.Families
	}
	fam := config.IPv4
	if !a.Unmap().Is4() {
		fam = config.IPv6
	}
	if slices.Contains(p.Families, fam) {
		return []string{fam}
	}
	return p.Families
}

// perFamily says whether remote lines in families fams name their family: when any family but
// IPv4 is listed.
func perFamily(fams []string) bool {
	return slices.ContainsFunc(fams, func(f string) bool { return f != config.IPv4 })
}

// remoteProto is the protocol of a remote line of proto (udp or tcp) in family fam: the name
// OpenVPN's remote option takes for that transport in that family alone (socket.c proto_names;
// options.c reads it with ascii2proto and ascii2af). tcp-client, not tcp: a client turns tcp into
// tcp-client anyway (options.c options_postprocess_mutate_ce), and the explicit name reads the
// same in any mode.
func remoteProto(proto, fam string) string {
	digit := "4"
	if fam == config.IPv6 {
		digit = "6"
	}
	if proto == config.ProtocolTCP {
		return "tcp" + digit + "-client"
	}
	return proto + digit
}

// SetTLSCryptV2Key gives the profile the client's own tls-crypt-v2 key, which replaces the
// shared control-channel key.
func (p *Profile) SetTLSCryptV2Key(key []byte) {
	p.TLSCryptV2, p.TLSCrypt, p.TLSAuth = key, nil, nil
}

// SetClient puts the identity of the client called name in the profile.
func (p *Profile) SetClient(name string, id *pki.Identity) {
	p.Client, p.Groups, p.CertPEM, p.KeyPEM = name, pki.Groups(id.Cert), id.CertPEM, id.KeyPEM
}

// CheckClient refuses to export a client the server would refuse at now: one that does not
// chain to client_root_ca_file, is not for clientAuth, has expired or is revoked.
func CheckClient(ep *endpoint.Endpoint, cert *x509.Certificate, now time.Time) error {
	_, err := cert.Verify(x509.VerifyOptions{
		Roots:       ep.ClientCAs,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return fmt.Errorf("the server would refuse its certificate: %w", err)
	}
	if at, ok := ep.CRL.RevokedAt(cert); ok {
		return fmt.Errorf("revoked on %s (serial %X)", at.UTC().Format(time.RFC3339), cert.SerialNumber)
	}
	return nil
}

// ServerRootPEM returns the root CA that the server certificate chains to at now, for the
// profile's <ca>: a CA of client_root_ca_file (as cvpn init makes it) or a self-signed CA in the
// server certificate file after the leaf. The server sends any intermediates itself.
func ServerRootPEM(ep *endpoint.Endpoint, now time.Time) ([]byte, error) {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range ep.ClientCACerts {
		roots.AddCert(c)
	}
	rest := ep.Server.CertPEM
	for first := true; ; first = false {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if first || b.Type != "CERTIFICATE" || err != nil {
			continue
		}
		if bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil {
			roots.AddCert(c)
		} else {
			inter.AddCert(c)
		}
	}
	chains, err := ep.Server.Cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil && ep.Config.Authentication.Certificate == nil {
		return nil, fmt.Errorf("cannot find the CA clients should trust: the endpoint has no client_root_ca_file, "+
			"and the server certificate chains to no root appended to its own file (append the CA's certificate "+
			"after the server's): %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot find the CA clients should trust: the server certificate chains neither to "+
			"client_root_ca_file nor to a root appended to its own file: %w", err)
	}
	chain := chains[0]
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[len(chain)-1].Raw}), nil
}

// CheckToken refuses a value that cannot be written on one line of an OpenVPN config.
func CheckToken(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty; verify-x509-name needs it", what)
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return fmt.Errorf("%s %q holds control characters and cannot go in a profile", what, s)
	}
	return nil
}

// quoteOption quotes a value for an OpenVPN config line when it needs it: OpenVPN splits lines
// on white space and reads backslash escapes and double quotes (options.c parse_line).
func quoteOption(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"\\'#;") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// quoteAlways quotes s as one parameter of an OpenVPN config line, whether or not it needs it.
func quoteAlways(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// Render writes the profile as an OpenVPN 2.6 client config with every file inline.
func (p *Profile) Render() []byte {
	var b bytes.Buffer
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("# cvpn client profile for OpenVPN 2.6")
	if d := strings.TrimSpace(p.Description); d != "" && !strings.ContainsFunc(d, unicode.IsControl) {
		line("# endpoint: %s", d)
	}
	switch {
	case p.Client != "":
		groups := "no groups"
		if len(p.Groups) > 0 {
			groups = "groups " + strings.Join(p.Groups, ",")
		}
		line("# client: %s (%s). This file holds the client's private key: keep it private.", p.Client, groups)
	case p.Certificate:
		line("# No client identity: add the client's cert and key blocks (cvpn export-client-config --client NAME does).")
	}
	switch {
	case p.Federated:
		line("# Single sign-on: give your username (the password is not checked); the client then prints a link:")
		line("# open it in a browser, sign in at your identity provider, and press Enter.")
	case p.UserPass:
		line("# Log in with your directory username and password.")
	}
	multi := len(p.Families) > 1
	if multi {
		line("# The endpoint listens on IPv4 and IPv6: the client tries each remote in turn.")
	}
	hosts := p.hosts()
	nodes := len(hosts) > 1
	if nodes {
		line("# The endpoint runs on %d nodes: the client tries their remotes in a random order, moving on from one that does not answer.", len(hosts))
	}
	line("client")
	line("dev tun")
	line("proto %s", p.Proto)
	// Host by host, so that a profile reads node by node; a single host's lines are as they
	// were before clusters.
	for _, host := range hosts {
		fams := p.hostFamilies(host)
		for _, port := range p.Ports {
			if !perFamily(fams) {
				line("remote %s %d", quoteOption(host), port)
				continue
			}
			for _, fam := range fams {
				line("remote %s %d %s", quoteOption(host), port, remoteProto(p.Proto, fam))
			}
		}
	}
	if nodes {
		// The client shuffles its connection entries once at start (init.c
		// init_connection_list), so clients spread over the nodes; it keeps that order after.
		line("remote-random")
	}
	// With infinite, a name that does not resolve costs one try and the client moves on to the
	// next remote (socket.c: GETADDR_TRY_ONCE), so it never holds up the other nodes.
	line("resolv-retry infinite")
	if multi || nodes {
		// A client without a working route in one family, or whose node is dead, waits this
		// long for the server's first packet before it tries the next remote, rather than the
		// default 120 s (options.c: server-poll-timeout is connect_timeout; forward.c
		// check_server_poll_timeout restarts without a pause). A live node answers a first
		// packet within a round trip, so 10 s is slack for a node busy with its share of a
		// reconnect storm, not a wait: a lower value would send clients away from a slow live
		// node to crowd the next. After a node dies its clients first notice by ping-restart
		// (the keepalive the server pushes), retry the same node once (init.c no_advance after
		// a completed connection), and then move on: ping-restart plus 10 s per dead remote they
		// happen to try. connect-retry stays at its default of 1 s between tries, with a backoff
		// only after five full rounds of the list (init.c socket_restart_pause).
		line("server-poll-timeout 10")
	}
	line("nobind")
	line("persist-key")
	line("persist-tun")
	if p.Proto == config.ProtocolUDP {
		// Over UDP the server cannot see a client leave: the exit notification frees its
		// session and address at once instead of after ping-restart.
		line("explicit-exit-notify 1")
	}
	line("remote-cert-tls server")
	line("verify-x509-name %s name", quoteOption(p.ServerName))
	line("cipher %s", p.Ciphers[0])
	line("data-ciphers %s", strings.Join(p.Ciphers, ":"))
	line("reneg-sec 0")
	if p.TLSAuth != nil && p.AuthDigest != config.DigestSHA1 {
		line("auth %s", p.AuthDigest)
	}
	if p.UserPass {
		line("auth-user-pass")
		line("auth-nocache")
		line("auth-retry interact")
		if p.StaticChallenge != "" {
			// options.c: static-challenge TEXT ECHO, TEXT one parameter (quoted), ECHO 1 to
			// show the code as it is typed.
			line("static-challenge %s 1", quoteAlways(p.StaticChallenge))
		}
	}
	line("verb 3")
	block := func(tag string, data []byte) {
		line("<%s>", tag)
		b.Write(bytes.TrimRight(data, "\n"))
		line("")
		line("</%s>", tag)
	}
	block("ca", p.CAPEM)
	if p.Client != "" {
		block("cert", p.CertPEM)
		block("key", p.KeyPEM)
	}
	switch {
	case p.TLSCryptV2 != nil:
		block("tls-crypt-v2", p.TLSCryptV2)
	case p.TLSCrypt != nil:
		block("tls-crypt", p.TLSCrypt)
	case p.TLSAuth != nil:
		if p.KeyDirection >= 0 {
			line("key-direction %d", p.KeyDirection)
		}
		block("tls-auth", p.TLSAuth)
	}
	return b.Bytes()
}
