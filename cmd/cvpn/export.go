package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint/clientstore"
	"github.com/cvpn/cvpn/endpoint/profile"
)

// cmdExport prints a client profile (.ovpn) that the stock OpenVPN 2.6 client uses as is
// (package endpoint/profile says what goes in it and what never does).
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
		if err := clientstore.CheckName(*client); err != nil {
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

	p, err := profile.New(ep, proto, ports, timeNow())
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitRuntime
	}
	store := clientstore.Of(cfg, "")
	if ep.TLSCryptV2ServerKey != nil && *client != "" {
		// A client issued with --tls-crypt-v2 gets its own key, which replaces the shared one.
		if key, err := store.TLSCryptV2Key(*client); err == nil {
			p.SetTLSCryptV2Key(key)
		}
	}
	if ep.TLSCryptV2ServerKey != nil && ep.ControlKey == nil && ep.TLSAuthKey == nil && p.TLSCryptV2 == nil {
		fmt.Fprintln(stderr, cfg.KeyError("control_channel.tls_crypt_v2_server_key_file", errors.New(
			"this endpoint accepts only tls-crypt-v2 clients: name a client issued with "+
				"`cvpn client issue NAME --tls-crypt-v2` (or add tls_crypt_key_file for shared profiles)")))
		return exitRuntime
	}
	if *client != "" {
		id, err := store.Identity(*client)
		if err != nil {
			fmt.Fprintln(stderr, "cvpn export-client-config:", err)
			return exitRuntime
		}
		if err := profile.CheckClient(ep, id.Cert, timeNow()); err != nil {
			fmt.Fprintf(stderr, "cvpn export-client-config: client %q: %v\n", *client, err)
			return exitRuntime
		}
		p.SetClient(*client, id)
	}
	if _, err := stdout.Write(p.Render()); err != nil {
		fmt.Fprintln(stderr, "cvpn export-client-config:", err)
		return exitRuntime
	}
	return 0
}
