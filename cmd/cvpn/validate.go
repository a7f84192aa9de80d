package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/cvpn/cvpn/endpoint"
)

// cmdValidate loads an endpoint file and everything it names, and prints a summary. The file is
// given as --config FILE or as the one argument (cvpn validate endpoint.yaml).
func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("validate", stderr)
	given := configFileFlag(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagExit(err)
	}
	switch {
	case len(pos) > 1:
		fmt.Fprintln(stderr, "cvpn validate: want one endpoint file, got", len(pos), "arguments:", pos)
		return exitInvalid
	case len(pos) == 1 && *given != "" && pos[0] != *given:
		fmt.Fprintf(stderr, "cvpn validate: two endpoint files: --config %s and %s; give one\n", *given, pos[0])
		return exitInvalid
	case len(pos) == 1:
		*given = pos[0]
	}
	path, err := resolveConfig(*given)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn validate:", err)
		return exitInvalid
	}
	ep, err := loadEndpoint(path)
	if err != nil {
		printConfigError(stderr, err)
		return exitInvalid
	}
	pool, err := endpoint.NewPool(ep.Config)
	if err != nil { // config checked the blocks: not reached
		fmt.Fprintln(stderr, "cvpn validate:", err)
		return exitInvalid
	}
	fmt.Fprintf(stdout, "%s: valid\n", path)
	udp, tcp := endpoint.Listeners(ep.Config)
	for _, a := range udp {
		fmt.Fprintf(stdout, "listener   %s/udp\n", a)
	}
	for _, a := range tcp {
		fmt.Fprintf(stdout, "listener   %s/tcp\n", a)
	}
	var blocks []string
	for _, b := range []netip.Prefix{pool.Prefix(), pool.Prefix6()} {
		if b.IsValid() {
			blocks = append(blocks, b.String())
		}
	}
	fmt.Fprintf(stdout, "clients    %s: %d concurrent connections\n", strings.Join(blocks, " and "), pool.Capacity())
	for _, r := range ep.Config.Routes {
		if r.Local {
			fmt.Fprintf(stdout, "route      %s (local: client-to-client)\n", r.DestinationCIDRBlock)
			continue
		}
		fmt.Fprintf(stdout, "route      %s\n", r.DestinationCIDRBlock)
	}
	for _, r := range ep.Config.AuthorizationRules {
		who := "group " + r.AccessGroupID
		if r.AuthorizeAllGroups {
			who = "all groups"
		}
		fmt.Fprintf(stdout, "authorize  %s -> %s\n", who, r.TargetNetworkCIDR)
	}
	if f := ep.Config.Authentication.Federated; f != nil {
		switch {
		case f.OIDC != nil:
			fmt.Fprintf(stdout, "login      single sign-on: OIDC issuer %s, client %s\n", f.OIDC.Issuer, f.OIDC.ClientID)
		case f.SAML != nil:
			fmt.Fprintf(stdout, "login      single sign-on: SAML IdP metadata %s\n", f.SAML.IdPMetadataFile)
		}
	}
	if c := ep.Config.Cluster; c != nil {
		fmt.Fprintf(stdout, "cluster    node %s (%s), SNAT %s, etcd %s under %s, lease %v, blocks of %d addresses\n",
			c.NodeName, c.PublicAddress, ep.Config.TargetNetwork.SNATAddress, strings.Join(c.Etcd.Endpoints, ","), c.Etcd.Prefix, c.LeaseTTL, c.AddressBlockSize)
	}
	if p := ep.Config.Portal; p != nil {
		cert := "the server certificate"
		if p.CertFile != "" {
			cert = p.CertFile
		}
		fmt.Fprintf(stdout, "portal     %s on %s (%s)\n", p.PublicURL, p.ListenAddress, cert)
	}
	return 0
}

// printConfigError prints each joined error on its own line.
func printConfigError(w io.Writer, err error) {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		for _, e := range joined.Unwrap() {
			printConfigError(w, e)
		}
		return
	}
	fmt.Fprintln(w, err)
}
