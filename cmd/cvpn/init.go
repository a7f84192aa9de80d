package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// Lifetimes of what cvpn init signs. The server certificate lives almost as long as the CA
// (a certificate may not outlive its issuer): there is no renewal command yet, and an endpoint
// whose certificate expires stops admitting clients.
const (
	caValidity     = 10 * 365 * day
	serverValidity = caValidity - day
)

// Names cvpn init gives files under DIR.
const (
	endpointFile = "endpoint.yaml"
	pkiDir       = "pki"
)

// initFlags maps the keys cvpn init fills from flags to those flags, so that a problem the
// endpoint file's validation finds is reported against the flag that caused it.
var initFlags = map[string]string{
	"remote_hostname":             "--remote",
	"client_cidr_block":           "--client-cidr",
	"vpc_cidr_blocks":             "--vpc-cidr",
	"transport":                   "--transport",
	"target_network.interface":    "--target-interface",
	"target_network.snat_address": "--snat-address",
	"routes":                      "--vpc-cidr",
	"authorization_rules":         "--vpc-cidr",
}

func flagOf(path string) string {
	for p := path; p != ""; {
		if f, ok := initFlags[p]; ok {
			return f + " (" + path + ")"
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return path
}

func cmdInit(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("init", stderr)
	dir := fl.String("dir", "", "endpoint directory to create (required)")
	remote := fl.String("remote", "", "public DNS name or IP address clients dial (required); goes into the server certificate")
	clientCIDR := fl.String("client-cidr", "10.2.0.0/22", "IPv4 block client addresses come from, /12 to /22")
	var vpc stringList
	fl.Var(&vpc, "vpc-cidr", "private network behind the endpoint, routed and authorized for all clients (several: --vpc-cidr a,b or repeat the flag; default 10.0.0.0/16)")
	iface := fl.String("target-interface", "eth1", "interface facing the private network")
	snat := fl.String("snat-address", "10.0.1.2", "the endpoint's own IPv4 address on that interface")
	transport := fl.String("transport", "udp/443", "comma-separated listeners, such as udp/443,tcp/443")
	keyType := fl.String("key-type", pki.ECDSAP256.String(), "ecdsa-p256, rsa2048 or ed25519 (ed25519 needs clients on OpenSSL, not mbed TLS)")
	force := fl.Bool("force", false, "replace an endpoint already in DIR (its files are moved aside, not deleted)")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 0 {
		fmt.Fprintln(stderr, "cvpn init: unexpected arguments:", pos)
		return exitInvalid
	}
	if len(vpc) == 0 {
		vpc = stringList{"10.0.0.0/16"}
	}
	var missing []string
	if *dir == "" {
		missing = append(missing, "--dir")
	}
	if *remote == "" {
		missing = append(missing, "--remote")
	}
	if len(missing) > 0 {
		fmt.Fprintf(stderr, "cvpn init: %s required\n", strings.Join(missing, " and "))
		return exitInvalid
	}
	if err := config.CheckRemoteHostname(*remote); err != nil {
		fmt.Fprintln(stderr, "cvpn init: --remote:", err)
		return exitInvalid
	}
	kt, err := pki.ParseKeyType(*keyType)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn init: --key-type:", err)
		return exitInvalid
	}
	listeners, err := parseTransportFlag(*transport)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn init: --transport:", err)
		return exitInvalid
	}

	existing := existingEndpoint(*dir)
	if len(existing) > 0 && !*force {
		fmt.Fprintf(stderr, "cvpn init: %s already holds an endpoint (%s); pass --force to replace it (the old files are moved aside)\n",
			*dir, strings.Join(existing, ", "))
		return exitRuntime
	}

	// Everything is made in a staging directory inside DIR and checked as `cvpn validate`
	// would, then moved into place: a bad flag leaves nothing behind.
	createdDir := false
	if _, err := os.Stat(*dir); errors.Is(err, os.ErrNotExist) {
		createdDir = true
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(stderr, "cvpn init:", err)
		return exitRuntime
	}
	staging, err := os.MkdirTemp(*dir, ".cvpn-init-")
	if err != nil {
		fmt.Fprintln(stderr, "cvpn init:", err)
		return exitRuntime
	}
	defer os.RemoveAll(staging)
	fail := func(code int) int {
		os.RemoveAll(staging)
		if createdDir {
			os.Remove(*dir) // only if still empty
		}
		return code
	}

	now := timeNow()
	params := initParams{
		Created:    now.UTC().Format(time.RFC3339),
		Remote:     *remote,
		ClientCIDR: *clientCIDR,
		VPCCIDRs:   vpc,
		Transport:  listeners,
		Interface:  *iface,
		SNAT:       *snat,
	}
	if code := writePKI(filepath.Join(staging, pkiDir), *remote, kt, now, stderr); code != 0 {
		return fail(code)
	}
	yml, err := params.render()
	if err != nil {
		fmt.Fprintln(stderr, "cvpn init:", err)
		return fail(exitRuntime)
	}
	stagedFile := filepath.Join(staging, endpointFile)
	if err := os.WriteFile(stagedFile, yml, 0o644); err != nil {
		fmt.Fprintln(stderr, "cvpn init:", err)
		return fail(exitRuntime)
	}
	if _, err := loadEndpoint(stagedFile); err != nil {
		var errs []error
		var joined interface{ Unwrap() []error }
		if errors.As(err, &joined) {
			errs = joined.Unwrap()
		} else {
			errs = []error{err}
		}
		for _, e := range errs {
			var ve *config.ValidationError
			if errors.As(e, &ve) {
				fmt.Fprintf(stderr, "cvpn init: %s: %s\n", flagOf(ve.Path), ve.Msg)
			} else {
				fmt.Fprintln(stderr, "cvpn init:", e)
			}
		}
		return fail(exitInvalid)
	}

	if len(existing) > 0 {
		suffix := ".replaced-" + now.UTC().Format("20060102T150405Z")
		for _, name := range existing {
			old := filepath.Join(*dir, name)
			if err := os.Rename(old, old+suffix); err != nil {
				fmt.Fprintln(stderr, "cvpn init: move the old endpoint aside:", err)
				return fail(exitRuntime)
			}
			fmt.Fprintf(stdout, "moved %s to %s\n", old, old+suffix)
		}
	}
	for _, name := range []string{pkiDir, endpointFile} {
		if err := os.Rename(filepath.Join(staging, name), filepath.Join(*dir, name)); err != nil {
			fmt.Fprintln(stderr, "cvpn init:", err)
			return exitRuntime
		}
	}
	cfgPath := filepath.Join(*dir, endpointFile)
	p := filepath.Join(*dir, pkiDir)
	fmt.Fprintf(stdout, "created %s\n", cfgPath)
	fmt.Fprintf(stdout, "created %s/: ca.crt, ca.key, server.crt, server.key, tc.key, crl.pem, clients/\n", p)
	fmt.Fprintf(stdout, "%s signs every client: keep it private, or offline once clients are issued (pass --ca-key to the client commands)\n",
		filepath.Join(p, "ca.key"))
	fmt.Fprintf(stdout, "next:\n  cvpn client issue alice --config %[1]s\n  cvpn export-client-config --config %[1]s --client alice > alice.ovpn\n  cvpn serve --config %[1]s\n", cfgPath)
	return 0
}

// existingEndpoint lists what cvpn init would replace in dir.
func existingEndpoint(dir string) []string {
	var out []string
	for _, name := range []string{pkiDir, endpointFile} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			out = append(out, name)
		}
	}
	return out
}

// parseTransportFlag parses "udp/443,tcp/443". Protocol names and port ranges are left to the
// endpoint file's validation, which names the flag.
func parseTransportFlag(s string) ([]config.Listener, error) {
	var out []config.Listener
	for _, item := range strings.Split(s, ",") {
		proto, port, ok := strings.Cut(strings.TrimSpace(item), "/")
		n, err := strconv.ParseUint(port, 10, 16)
		if !ok || err != nil {
			return nil, fmt.Errorf("%q is not PROTOCOL/PORT like udp/443", item)
		}
		out = append(out, config.Listener{Protocol: proto, Port: uint16(n)})
	}
	return out, nil
}

// writePKI makes the CA, the server identity, the tls-crypt key, an empty CRL and the clients
// directory in dir.
func writePKI(dir, remote string, kt pki.KeyType, now time.Time, stderr io.Writer) int {
	if err := os.Mkdir(dir, 0o700); err != nil {
		fmt.Fprintln(stderr, "cvpn init:", err)
		return exitRuntime
	}
	caName := "cvpn CA " + remote
	if len(caName) > 64 {
		caName = "cvpn CA"
	}
	serverName := remote
	if len(serverName) > 64 {
		serverName = "cvpn server"
	}
	ca, err := pki.NewCA(caName, kt, caValidity, now)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn init:", err)
		return exitRuntime
	}
	srv, err := pki.IssueServer(ca, serverName, []string{remote}, kt, serverValidity, now)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn init:", err)
		return exitRuntime
	}
	tc, err := tlscrypt.GenerateStaticKey(rand.Reader)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn init:", err)
		return exitRuntime
	}
	crl, err := pki.NewCRL(ca, now, defaultCRLDays*day)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn init:", err)
		return exitRuntime
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	steps := []func() error{
		func() error { return pki.WriteIdentity(ca, p("ca.crt"), p("ca.key")) },
		func() error { return pki.WriteIdentity(srv, p("server.crt"), p("server.key")) },
		func() error { return os.WriteFile(p("tc.key"), tc.Marshal(), 0o600) },
		func() error { return pki.WriteCRL(crl, p("crl.pem")) },
		func() error { return os.Mkdir(p("clients"), 0o700) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			fmt.Fprintln(stderr, "cvpn init:", err)
			return exitRuntime
		}
	}
	return 0
}

// initParams fill the endpoint file cvpn init writes.
type initParams struct {
	Created    string
	Remote     string
	ClientCIDR string
	VPCCIDRs   []string
	Transport  []config.Listener
	Interface  string
	SNAT       string
}

func (p initParams) render() ([]byte, error) {
	var b bytes.Buffer
	if err := initTemplate.Execute(&b, p); err != nil {
		return nil, fmt.Errorf("render %s: %w", endpointFile, err)
	}
	return b.Bytes(), nil
}

// plainYAML matches the values that are the same string written plain in YAML (CIDR blocks,
// addresses, interface and host names).
var plainYAML = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]*$`)

// yamlString writes s as a YAML scalar: plain when that is safe, else double-quoted (JSON
// strings are YAML), so no flag value can change the document's structure.
func yamlString(s string) string {
	if plainYAML.MatchString(s) {
		return s
	}
	q, _ := json.Marshal(s)
	return string(q)
}

var initTemplate = template.Must(template.New(endpointFile).Funcs(template.FuncMap{"q": yamlString}).Parse(
	`# cvpn endpoint, made by cvpn init on {{.Created}}.
# Check it with: cvpn validate --config endpoint.yaml. File paths are relative to this file.
# Every key is described in the README's configuration reference.

description: {{q (print "cvpn endpoint " .Remote)}}

# The public DNS name or IP address clients dial; exported profiles use it.
remote_hostname: {{q .Remote}}

# Client tunnel addresses come from this block (/12 to /22). It cannot change on reload.
client_cidr_block: {{q .ClientCIDR}}

# The private networks behind the endpoint.
vpc_cidr_blocks:
{{- range .VPCCIDRs}}
  - {{q .}}
{{- end}}

# Listeners: any mix of udp and tcp.
transport:
{{- range .Transport}}
  - {protocol: {{q .Protocol}}, port: {{.Port}}}
{{- end}}

server_certificate:
  cert_file: pki/server.crt
  key_file: pki/server.key

control_channel:
  tls_crypt_key_file: pki/tc.key

authentication:
  certificate:
    # The CA that signs client certificates (cvpn client issue). Its key, pki/ca.key, is read
    # only by the client commands; the server never needs it.
    client_root_ca_file: pki/ca.crt
    # Revoked clients (cvpn client revoke). Re-sign it before its next update with
    # cvpn client refresh-crl.
    crl_file: pki/crl.pem

# Where client traffic leaves the endpoint: the interface facing the private network and the
# endpoint's own address there, which client traffic is source-NATed to.
target_network:
  interface: {{q .Interface}}
  snat_address: {{q .SNAT}}

# Routes pushed to clients.
routes:
{{- range .VPCCIDRs}}
  - destination_cidr_block: {{q .}}
{{- end}}

# Who may reach what. Without a rule nobody reaches anything. These let every client reach the
# private networks; narrow them to groups (access_group_id: GROUP, matched against the groups
# given to cvpn client issue --group).
authorization_rules:
{{- range .VPCCIDRs}}
  - target_network_cidr: {{q .}}
    authorize_all_groups: true
{{- end}}

# Only the routes above go through the tunnel. false sends all client traffic through it.
split_tunnel: true
`))
