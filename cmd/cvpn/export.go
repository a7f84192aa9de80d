package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/pki"
)

// cmdExport prints a client profile (.ovpn) that the stock OpenVPN 2.6 client uses as is.
// Like AWS ExportClientVpnClientConfiguration, it carries only what a client needs: the CA
// that signed the server certificate, the control channel key every client shares, and, when a
// client is named, that client's own certificate and key. Never the CA key, the server key or
// the tls-crypt-v2 server key.
func cmdExport(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("export-client-config", flag.ContinueOnError)
	fl.SetOutput(stderr)
	cfgPath := fl.String("config", "endpoint.yaml", "endpoint file")
	client := fl.String("client", "", "include this client's certificate and key (from cvpn client issue)")
	protocol := fl.String("protocol", "", "udp or tcp (default: the protocol of the first transport listener)")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return exitInvalid
	}
	if len(pos) != 0 {
		fmt.Fprintln(stderr, "cvpn export-client-config: unexpected arguments:", pos)
		return exitInvalid
	}
	if *client != "" {
		if err := checkClientName(*client); err != nil {
			fmt.Fprintln(stderr, "cvpn export-client-config: --client:", err)
			return exitInvalid
		}
	}
	ep, err := loadEndpoint(*cfgPath)
	if err != nil {
		printConfigError(stderr, err)
		return exitInvalid
	}
	cfg := ep.Config
	if cfg.RemoteHostname == "" {
		fmt.Fprintln(stderr, cfg.KeyError("remote_hostname", errors.New(
			"not set: a profile needs the public DNS name or IP address clients dial")))
		return exitInvalid
	}
	proto := strings.ToLower(*protocol)
	switch proto {
	case "":
		proto = cfg.Transport[0].Protocol
	case config.ProtocolUDP, config.ProtocolTCP:
	default:
		fmt.Fprintf(stderr, "cvpn export-client-config: --protocol %q: want udp or tcp\n", *protocol)
		return exitInvalid
	}
	var ports []uint16
	var all []string
	for _, l := range cfg.Transport {
		all = append(all, l.String())
		if l.Protocol == proto {
			ports = append(ports, l.Port)
		}
	}
	if len(ports) == 0 {
		fmt.Fprintf(stderr, "cvpn export-client-config: --protocol %s: the endpoint has no %s listener (transport: %s)\n",
			proto, proto, strings.Join(all, ", "))
		return exitInvalid
	}

	p := profile{remote: cfg.RemoteHostname, proto: proto, ports: ports, ciphers: cfg.DataCiphers, description: cfg.Description}
	p.serverName = ep.Server.Cert.Subject.CommonName
	if err := checkProfileToken("the server certificate's CN", p.serverName); err != nil {
		fmt.Fprintln(stderr, cfg.KeyError("server_certificate.cert_file", err))
		return exitRuntime
	}
	if p.caPEM, err = serverRootPEM(ep); err != nil {
		fmt.Fprintln(stderr, cfg.KeyError("server_certificate.cert_file", err))
		return exitRuntime
	}
	cc := cfg.ControlChannel
	switch {
	case ep.ControlKey != nil:
		p.tlsCrypt = ep.ControlKey.Marshal()
	case ep.TLSAuthKey != nil:
		p.tlsAuth = ep.TLSAuthKey.Marshal()
		p.keyDirection = -1
		if cc.TLSAuthKeyDirection != config.KeyDirectionBidirectional {
			p.keyDirection = 1 - int(cc.TLSAuthKeyDirection) // the client uses the other direction
		}
		p.authDigest = cc.TLSAuthDigest
	}
	if ep.TLSCryptV2ServerKey != nil && *client != "" {
		// A client issued with --tls-crypt-v2 gets its own key, which replaces the shared one.
		if data, err := os.ReadFile(storeOf(cfg, "").v2KeyFile(*client)); err == nil {
			p.tlsCryptV2, p.tlsCrypt, p.tlsAuth = data, nil, nil
		}
	}
	if ep.TLSCryptV2ServerKey != nil && ep.ControlKey == nil && ep.TLSAuthKey == nil && p.tlsCryptV2 == nil {
		fmt.Fprintln(stderr, cfg.KeyError("control_channel.tls_crypt_v2_server_key_file", errors.New(
			"this endpoint accepts only tls-crypt-v2 clients: name a client issued with "+
				"`cvpn client issue NAME --tls-crypt-v2` (or add tls_crypt_key_file for shared profiles)")))
		return exitRuntime
	}
	if *client != "" {
		store := storeOf(cfg, "")
		if _, err := store.loadClientCert(*client); err != nil {
			fmt.Fprintln(stderr, "cvpn export-client-config:", err)
			return exitRuntime
		}
		id, err := pki.LoadIdentity(store.certFile(*client), store.keyFile(*client))
		if err != nil {
			fmt.Fprintln(stderr, "cvpn export-client-config:", err)
			return exitRuntime
		}
		if err := checkClient(ep, id.Cert); err != nil {
			fmt.Fprintf(stderr, "cvpn export-client-config: client %q: %v\n", *client, err)
			return exitRuntime
		}
		p.client, p.groups, p.certPEM, p.keyPEM = *client, pki.Groups(id.Cert), id.CertPEM, id.KeyPEM
	}
	if _, err := stdout.Write(p.render()); err != nil {
		fmt.Fprintln(stderr, "cvpn export-client-config:", err)
		return exitRuntime
	}
	return 0
}

// checkClient refuses to export a client the server would refuse: one that does not chain to
// client_root_ca_file, is not for clientAuth, has expired or is revoked.
func checkClient(ep *endpoint, cert *x509.Certificate) error {
	now := timeNow()
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

// serverRootPEM returns the root CA that the server certificate chains to, for the profile's
// <ca>: a CA of client_root_ca_file (as cvpn init makes it) or a self-signed CA in the server
// certificate file after the leaf. The server sends any intermediates itself.
func serverRootPEM(ep *endpoint) ([]byte, error) {
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
		CurrentTime:   timeNow(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot find the CA clients should trust: the server certificate chains neither to "+
			"client_root_ca_file nor to a root appended to its own file: %w", err)
	}
	chain := chains[0]
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[len(chain)-1].Raw}), nil
}

// checkProfileToken refuses a value that cannot be written on one line of an OpenVPN config.
func checkProfileToken(what, s string) error {
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

// profile is what goes into a client profile.
type profile struct {
	description  string
	remote       string
	proto        string
	ports        []uint16
	serverName   string // the server certificate's CN
	ciphers      []string
	caPEM        []byte
	tlsCryptV2   []byte // the client's own tls-crypt-v2 key, or
	tlsCrypt     []byte // tls-crypt key file, or
	tlsAuth      []byte // tls-auth key file, with
	keyDirection int    // the client's key-direction, -1 for none (bidirectional)
	authDigest   string // the tls-auth HMAC digest
	client       string // "" for a profile without a client identity
	groups       []string
	certPEM      []byte
	keyPEM       []byte
}

func (p *profile) render() []byte {
	var b bytes.Buffer
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("# cvpn client profile for OpenVPN 2.6")
	if d := strings.TrimSpace(p.description); d != "" && !strings.ContainsFunc(d, unicode.IsControl) {
		line("# endpoint: %s", d)
	}
	if p.client != "" {
		groups := "no groups"
		if len(p.groups) > 0 {
			groups = "groups " + strings.Join(p.groups, ",")
		}
		line("# client: %s (%s). This file holds the client's private key: keep it private.", p.client, groups)
	} else {
		line("# No client identity: add the client's cert and key blocks (cvpn export-client-config --client NAME does).")
	}
	line("client")
	line("dev tun")
	line("proto %s", p.proto)
	for _, port := range p.ports {
		line("remote %s %d", quoteOption(p.remote), port)
	}
	line("resolv-retry infinite")
	line("nobind")
	line("persist-key")
	line("persist-tun")
	line("remote-cert-tls server")
	line("verify-x509-name %s name", quoteOption(p.serverName))
	line("cipher %s", p.ciphers[0])
	line("data-ciphers %s", strings.Join(p.ciphers, ":"))
	line("reneg-sec 0")
	if p.tlsAuth != nil && p.authDigest != config.DigestSHA1 {
		line("auth %s", p.authDigest)
	}
	line("verb 3")
	block := func(tag string, data []byte) {
		line("<%s>", tag)
		b.Write(bytes.TrimRight(data, "\n"))
		line("")
		line("</%s>", tag)
	}
	block("ca", p.caPEM)
	if p.client != "" {
		block("cert", p.certPEM)
		block("key", p.keyPEM)
	}
	switch {
	case p.tlsCryptV2 != nil:
		block("tls-crypt-v2", p.tlsCryptV2)
	case p.tlsCrypt != nil:
		block("tls-crypt", p.tlsCrypt)
	case p.tlsAuth != nil:
		if p.keyDirection >= 0 {
			line("key-direction %d", p.keyDirection)
		}
		block("tls-auth", p.tlsAuth)
	}
	return b.Bytes()
}
