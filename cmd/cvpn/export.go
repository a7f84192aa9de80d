package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/endpoint/clientstore"
	"github.com/cvpn/cvpn/endpoint/profile"
)

// cmdExport prints a client profile (.ovpn) that the stock OpenVPN 2.6 client uses as is
// (package endpoint/profile says what goes in it and what never does). An endpoint without
// certificate authentication (directory or federated users only) has no clients to name: its
// profiles carry auth-user-pass and no certificate, and --client is refused.
func cmdExport(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("export-client-config", stderr)
	cfgPath := configFileFlag(fl)
	client := fl.String("client", "", "include this client's certificate and key (from cvpn client issue)")
	protocol := fl.String("protocol", "", "udp or tcp (default: the protocol of the first transport listener)")
	out := fl.String("out", "", "write the profile to this file, mode 0600, instead of stdout")
	force := fl.Bool("force", false, "with --out: replace the file if it exists")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return flagExit(err)
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
	if *force && *out == "" {
		fmt.Fprintln(stderr, "cvpn export-client-config: --force applies only with --out FILE")
		return exitInvalid
	}
	file, err := resolveConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn export-client-config:", err)
		return exitInvalid
	}
	if *out != "" && !*force {
		// Checked again when the file is created; this only spares the work before it.
		if _, err := os.Lstat(*out); err == nil {
			fmt.Fprintf(stderr, "cvpn export-client-config: --out %s: the file exists; pass --force to replace it\n", *out)
			return exitRuntime
		}
	}
	ep, members, err := endpoint.LoadForCluster(context.Background(), file, timeNow())
	if err != nil {
		printConfigError(stderr, err)
		return exitInvalid
	}
	cfg := ep.Config
	certAuth := cfg.Authentication.Certificate != nil
	if *client != "" && !certAuth {
		how := "with their directory username and password"
		if cfg.Authentication.Federated != nil {
			how = "at the identity provider (single sign-on)"
		}
		fmt.Fprintf(stderr, "cvpn export-client-config: --client %s: this endpoint has no certificate authentication "+
			"(authentication.certificate): its users log in %s, and its profiles carry no client certificate; "+
			"leave out --client\n", *client, how)
		return exitInvalid
	}
	var remotes []string
	for _, m := range members {
		remotes = append(remotes, m.PublicAddress)
	}
	if cfg.Cluster != nil && len(remotes) == 0 {
		fmt.Fprintln(stderr, "cvpn export-client-config: no node of the cluster has joined yet: start one, then export")
		return exitRuntime
	}
	if cfg.RemoteHostname == "" && cfg.Cluster == nil {
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
	if len(remotes) > 0 {
		// A cluster's profile lists every node that joined (cluster.public_address).
		if err := p.SetRemotes(remotes); err != nil {
			fmt.Fprintln(stderr, "cvpn export-client-config:", err)
			return exitRuntime
		}
	}
	var store clientstore.Store
	if certAuth {
		store = clientstore.Of(cfg, "")
	}
	if ep.TLSCryptV2ServerKey != nil && *client != "" {
		// A client issued with --tls-crypt-v2 gets its own key, which replaces the shared one.
		if key, err := store.TLSCryptV2Key(*client); err == nil {
			p.SetTLSCryptV2Key(key)
		}
	}
	if ep.TLSCryptV2ServerKey != nil && ep.ControlKey == nil && ep.TLSAuthKey == nil && p.TLSCryptV2 == nil {
		msg := "this endpoint accepts only tls-crypt-v2 clients: name a client issued with " +
			"`cvpn client issue NAME --tls-crypt-v2` (or add tls_crypt_key_file for shared profiles)"
		if !certAuth {
			msg = "this endpoint accepts only tls-crypt-v2 clients, whose keys are issued with client " +
				"certificates, and it has no certificate authentication: add tls_crypt_key_file for its profiles"
		}
		fmt.Fprintln(stderr, cfg.KeyError("control_channel.tls_crypt_v2_server_key_file", errors.New(msg)))
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
	if *out != "" {
		if err := writeProfile(*out, p.Render(), *force); err != nil {
			fmt.Fprintln(stderr, "cvpn export-client-config: --out:", err)
			return exitRuntime
		}
		fmt.Fprintf(stderr, "wrote %s (mode 0600)\n", *out)
		return 0
	}
	if _, err := stdout.Write(p.Render()); err != nil {
		fmt.Fprintln(stderr, "cvpn export-client-config:", err)
		return exitRuntime
	}
	return 0
}

// writeProfile writes a profile, which may hold a private key, readable by its owner only: a
// new file is created exclusively with mode 0600; with replace, the profile is written to a new
// file beside it and renamed over it, so the old file's mode never applies to the new content
// and no reader sees half a profile.
func writeProfile(file string, data []byte, replace bool) error {
	if !replace {
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s exists; pass --force to replace it", file)
		}
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			os.Remove(file)
			return err
		}
		return f.Close()
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}
