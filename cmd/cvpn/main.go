// Command cvpn is the cvpn endpoint: a VPN server that stock OpenVPN clients connect to.
// It is the only composition root: it reads flags and the endpoint file and wires the packages.
//
//	cvpn init --dir DIR --remote HOST       create an endpoint directory: PKI and endpoint.yaml
//	cvpn serve --config endpoint.yaml       run the endpoint in the foreground
//	cvpn validate --config endpoint.yaml    check an endpoint file and print a summary
//	cvpn client issue|revoke|list|refresh-crl   manage client identities and the CRL
//	cvpn export-client-config [--client NAME]   print an .ovpn profile for the stock client
//	cvpn connections list|terminate         list or halt client connections (admin API)
//	cvpn status                             the running endpoint on one screen (admin API)
//
// Exit status: 0 on success, 2 for a usage error or an invalid endpoint file, 1 for any other
// failure.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Exit statuses.
const (
	exitRuntime = 1 // something failed while doing what was asked
	exitInvalid = 2 // a usage error or an invalid endpoint file
)

// timeNow is the clock of the commands; tests move it.
var timeNow = time.Now

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitInvalid
	}
	switch args[0] {
	case "serve":
		return cmdServe(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "init":
		return cmdInit(args[1:], stdout, stderr)
	case "client":
		return cmdClient(args[1:], stdout, stderr)
	case "export-client-config":
		return cmdExport(args[1:], stdout, stderr)
	case "connections":
		return cmdConnections(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "cvpn: unknown command %q\n", args[0])
		usage(stderr)
		return exitInvalid
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: cvpn <command> [flags]

commands:
  init      --dir DIR --remote HOST [--client-cidr CIDR] [--vpc-cidr CIDR ...]
            [--target-interface IF] [--snat-address IP] [--transport udp/443,tcp/443]
            [--key-type ecdsa-p256|rsa2048] [--force]
                            create DIR/endpoint.yaml and DIR/pki (CA, server certificate,
                            tls-crypt key, CRL)
  serve     --config FILE   run the endpoint in the foreground (SIGTERM/SIGINT stop, SIGHUP reloads)
  validate  --config FILE   check an endpoint file; exit status 2 if it is invalid
  client issue NAME [--group G ...]   issue a client certificate (CN=NAME, groups as OU)
  client revoke NAME                  add a client to the CRL
  client list                         list issued clients: groups, serial, expiry, status
  client refresh-crl [--create FILE]  re-sign the CRL before it expires (or create one)
  export-client-config [--client NAME] [--protocol udp|tcp]
                            print an .ovpn profile for the stock OpenVPN 2.6 client
  connections list [--username U] [--connection-id ID] [--json]
                            list the active connections and those ended in the last 60
                            minutes (admin API)
  connections terminate (--connection-id ID | --username U) [--json]
                            halt a connection or a user's connections (admin API)
  status                    the running endpoint on one screen (admin API)

Every command but init takes --config FILE (default ./endpoint.yaml).
Exit status: 0 on success, 2 for a usage error or an invalid endpoint file, 1 otherwise.
`)
}

// configFlag parses the flags shared by the commands that read an endpoint file.
func configFlag(name string, args []string, stderr io.Writer) (string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "endpoint.yaml", "endpoint file")
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() > 0 {
		return "", errors.New("unexpected arguments: " + fmt.Sprint(fs.Args()))
	}
	return *path, nil
}

// parseInterleaved parses fs from args where flags may come before, between or after the
// positional arguments (cvpn client issue alice --group dev), which flag.FlagSet alone stops at.
// Everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}
