package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/cluster"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/endpoint/clientstore"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// The client commands are flags and output over package endpoint/clientstore, which keeps the
// client identities and the CRL.

// Lifetimes of what the client commands sign, in days (flag defaults).
const (
	defaultClientDays = clientstore.DefaultClientDays
	defaultCRLDays    = clientstore.DefaultCRLDays
)

const day = 24 * time.Hour

func cmdClient(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "cvpn client: missing subcommand (issue, revoke, list or refresh-crl)")
		clientUsage(stderr)
		return exitInvalid
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		clientUsage(stdout)
		return 0
	case "issue":
		return clientIssue(args[1:], stdout, stderr)
	case "revoke":
		return clientRevoke(args[1:], stdout, stderr)
	case "list":
		return clientList(args[1:], stdout, stderr)
	case "refresh-crl":
		return clientRefreshCRL(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "cvpn client: unknown subcommand %q%s (want issue, revoke, list or refresh-crl)\n",
		args[0], suggest(args[0], clientSubcommands))
	return exitInvalid
}

var clientSubcommands = []string{"issue", "revoke", "list", "refresh-crl"}

// clientUsage lists the client subcommands (the "client ..." entries of commands).
func clientUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: cvpn client <subcommand> [flags]\n\nsubcommands:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range commands {
		if sub, ok := strings.CutPrefix(c.name, "client "); ok {
			fmt.Fprintf(tw, "  %s %s\t%s\n", sub, c.synopsis, c.summary)
		}
	}
	tw.Flush()
	fmt.Fprintln(w, "\n'cvpn client SUBCOMMAND -h' shows its flags.")
}

// loadConfig is config.Load for the client commands, printing problems. The client commands
// read only the endpoint file and the CA, CRL and client files, not the server's files: the
// CRL must stay manageable even when something else is wrong (or expired) in the endpoint.
// *path is the --config value; it is replaced by the file read (see resolveConfig).
func loadConfig(path *string, stderr io.Writer) (*config.Endpoint, bool) {
	file, err := resolveConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client:", err)
		return nil, false
	}
	*path = file
	cfg, err := config.Load(file)
	if err != nil {
		printConfigError(stderr, err)
		return nil, false
	}
	if cfg.Authentication.Certificate == nil {
		fmt.Fprintf(stderr, "cvpn client: %s has no authentication.certificate: its clients log in through the directory and need no certificate\n", file)
		return nil, false
	}
	return cfg, true
}

func clientIssue(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("client issue", stderr)
	cfgPath := configFileFlag(fl)
	var groups stringList
	fl.Var(&groups, "group", "group the client belongs to, carried as a certificate OU (several: --group a,b or repeat the flag)")
	keyType := fl.String("key-type", "", "ecdsa-p256, rsa2048 or ed25519 (default: the CA's key type; ed25519 needs clients on OpenSSL, not mbed TLS)")
	days := fl.Int("days", defaultClientDays, "days the certificate is valid (at most until the CA expires)")
	caKey := fl.String("ca-key", "", "CA private key (default: client_root_ca_file with extension .key)")
	v2 := fl.Bool("tls-crypt-v2", false, "also issue the client its own tls-crypt-v2 key (needs control_channel.tls_crypt_v2_server_key_file)")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return flagExit(err)
	}
	name, ok := oneClientName("cvpn client issue", pos, stderr)
	if !ok {
		return exitInvalid
	}
	if *days <= 0 {
		fmt.Fprintf(stderr, "cvpn client issue: --days %d is not positive\n", *days)
		return exitInvalid
	}
	// Without --days the store's default applies, which it cuts short to the CA's life.
	var validity time.Duration
	fl.Visit(func(f *flag.Flag) {
		if f.Name == "days" {
			validity = time.Duration(*days) * day
		}
	})

	cfg, ok := loadConfig(cfgPath, stderr)
	if !ok {
		return exitInvalid
	}
	store := clientstore.Of(cfg, *caKey)
	ca, err := store.LoadCA()
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client issue:", err)
		return exitRuntime
	}
	var v2Server *tlscrypt.V2ServerKey
	if *v2 {
		f := cfg.ControlChannel.TLSCryptV2ServerKeyFile
		if f == "" {
			fmt.Fprintln(stderr, "cvpn client issue: --tls-crypt-v2: the endpoint has no control_channel.tls_crypt_v2_server_key_file")
			return exitInvalid
		}
		if v2Server, err = endpoint.LoadTLSCryptV2ServerKey(f); err != nil {
			fmt.Fprintln(stderr, "cvpn client issue: control_channel.tls_crypt_v2_server_key_file:", err)
			return exitInvalid
		}
	}
	kt := clientstore.CAKeyType(ca)
	if *keyType != "" {
		if kt, err = pki.ParseKeyType(*keyType); err != nil {
			fmt.Fprintln(stderr, "cvpn client issue: --key-type:", err)
			return exitInvalid
		}
	}
	c, err := store.Issue(ca, clientstore.Request{Name: name, Groups: groups, KeyType: kt, Validity: validity, TLSCryptV2: v2Server}, timeNow())
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client issue:", err)
		return exitRuntime
	}
	if c.TLSCryptV2KeyFile != "" {
		fmt.Fprintf(stdout, "  tls-crypt-v2 key %s\n", c.TLSCryptV2KeyFile)
	}
	for _, g := range clientstore.GroupsWithoutRule(cfg, groups) {
		fmt.Fprintf(stderr, "cvpn client issue: warning: no authorization rule names group %q yet "+
			"(rules match groups by exact name)\n", g)
	}
	cert := c.Identity.Cert
	fmt.Fprintf(stdout, "issued client %s: serial %X, groups %s, valid until %s\n", name, cert.SerialNumber,
		groupList(pki.Groups(cert)), cert.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(stdout, "  certificate %s\n  key         %s\n", c.CertFile, c.KeyFile)
	fmt.Fprintf(stdout, "profile: cvpn export-client-config --config %s --client %s > %s.ovpn\n", *cfgPath, name, name)
	return 0
}

func groupList(groups []string) string {
	if len(groups) == 0 {
		return "-"
	}
	return strings.Join(groups, ",")
}

// crlFileOf returns the CRL the endpoint names, or prints what to do when it names none.
func crlFileOf(cfg *config.Endpoint, cmd string, stderr io.Writer) (string, bool) {
	if f := cfg.Authentication.Certificate.CRLFile; f != "" {
		return f, true
	}
	fmt.Fprintln(stderr, cfg.KeyError("authentication.certificate.crl_file", errors.New(
		"not set: revocation needs a CRL the server reads. Create an empty one with "+
			"`cvpn client refresh-crl --create pki/crl.pem`, set crl_file: pki/crl.pem under "+
			"authentication.certificate, and run "+cmd+" again")))
	return "", false
}

func clientRevoke(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("client revoke", stderr)
	cfgPath := configFileFlag(fl)
	caKey := fl.String("ca-key", "", "CA private key (default: client_root_ca_file with extension .key)")
	crlDays := fl.Int("crl-days", defaultCRLDays, "days until the new CRL's next update")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return flagExit(err)
	}
	name, ok := oneClientName("cvpn client revoke", pos, stderr)
	if !ok {
		return exitInvalid
	}
	if *crlDays <= 0 {
		fmt.Fprintf(stderr, "cvpn client revoke: --crl-days %d is not positive\n", *crlDays)
		return exitInvalid
	}
	cfg, ok := loadConfig(cfgPath, stderr)
	if !ok {
		return exitInvalid
	}
	crlFile, ok := crlFileOf(cfg, "cvpn client revoke "+name, stderr)
	if !ok {
		return exitInvalid
	}
	store := clientstore.Of(cfg, *caKey)
	cert, err := store.ClientCert(name)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client revoke:", err)
		return exitRuntime
	}
	ca, err := store.LoadCA()
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client revoke:", err)
		return exitRuntime
	}
	// A node file's cluster: the revocation builds on the cluster's CRL and goes back to it.
	if cfg.Cluster != nil {
		if err := pullClusterCRL(cfg, store, crlFile); err != nil {
			// Revoke here all the same: storing the result below says whether the cluster
			// took it.
			fmt.Fprintln(stderr, "cvpn client revoke: warning: the cluster's CRL is not used:", err)
		}
	}
	crl, err := store.Revoke(ca, cert, time.Duration(*crlDays)*day, timeNow())
	if cfg.Cluster != nil && errors.Is(err, pki.ErrAlreadyRevoked) {
		// Revoked here before: store it in the cluster again, in case that failed then.
		fmt.Fprintf(stdout, "client %s (serial %X) is revoked already\n", name, cert.SerialNumber)
		return pushClusterCRL(cfg, store, crlFile, cert, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client revoke:", err)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "revoked client %s (serial %X)\n", name, cert.SerialNumber)
	fmt.Fprintf(stdout, "wrote CRL number %v to %s: %d revoked, next update %s\n", crl.List.Number, crlFile,
		crl.Len(), crl.List.NextUpdate.UTC().Format(time.RFC3339))
	if cfg.Cluster != nil {
		return pushClusterCRL(cfg, store, crlFile, cert, stdout, stderr)
	}
	return 0
}

// dialClusterCRL dials the etcd of cfg's cluster section and loads the client root CAs the
// cluster's CRL is checked against.
func dialClusterCRL(cfg *config.Endpoint, store clientstore.Store) (*clientv3.Client, string, []*x509.Certificate, error) {
	cas, err := store.LoadCAs()
	if err != nil {
		return nil, "", nil, err
	}
	ccfg, err := endpoint.ClusterConfig(cfg, endpoint.Options{})
	if err != nil {
		return nil, "", nil, err
	}
	cli, err := cluster.Dial(ccfg)
	if err != nil {
		return nil, "", nil, err
	}
	return cli, ccfg.Prefix, cas, nil
}

// pullClusterCRL writes the cluster's CRL to crlFile when it is newer, so that a revocation
// made on another host is not lost by this one.
func pullClusterCRL(cfg *config.Endpoint, store clientstore.Store, crlFile string) error {
	cli, prefix, cas, err := dialClusterCRL(cfg, store)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pem, _, ok, err := cluster.CRL(ctx, cli, prefix)
	if err != nil || !ok {
		return err
	}
	if err := endpoint.InstallCRL(crlFile, cas, pem, timeNow()); err != nil && !errors.Is(err, endpoint.ErrCRLNotNewer) {
		return err
	}
	return nil
}

// pushClusterCRL stores crlFile's CRLs, which revoke cert, as the cluster's, from which every
// node writes them to its own CRL file within seconds.
func pushClusterCRL(cfg *config.Endpoint, store clientstore.Store, crlFile string, cert *x509.Certificate, stdout, stderr io.Writer) int {
	cli, prefix, cas, err := dialClusterCRL(cfg, store)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client revoke: the revocation is in", crlFile, "only; run the command again when etcd is reachable:", err)
		return exitRuntime
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rev, err := endpoint.PublishCRL(ctx, cli, prefix, crlFile, cas)
	switch {
	case errors.Is(err, endpoint.ErrCRLNotNewer):
		pem, _, _, rerr := cluster.CRL(ctx, cli, prefix)
		crls, perr := pki.ParseCRLs(pem)
		set, serr := pki.NewCRLSet(crls, cas, timeNow())
		if rerr != nil || perr != nil || serr != nil || !set.IsRevoked(cert) {
			// Another host stored a newer list at the same time: this one pulls it first.
			fmt.Fprintln(stderr, "cvpn client revoke: the cluster's CRL does not list the client, and the revocation here is not newer; run the command again:", err)
			return exitRuntime
		}
		fmt.Fprintln(stdout, "the cluster's CRL revokes the client already")
	case err != nil:
		fmt.Fprintln(stderr, "cvpn client revoke: the revocation is in", crlFile, "only; run the command again when etcd is reachable:", err)
		return exitRuntime
	default:
		fmt.Fprintf(stdout, "stored the CRL in the cluster (etcd revision %d): every node puts it in force within seconds\n", rev)
	}
	return 0
}

func clientRefreshCRL(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("client refresh-crl", stderr)
	cfgPath := configFileFlag(fl)
	caKey := fl.String("ca-key", "", "CA private key (default: client_root_ca_file with extension .key)")
	crlDays := fl.Int("crl-days", defaultCRLDays, "days until the CRL's next update")
	create := fl.String("create", "", "write a new, empty CRL to this file (relative to the endpoint file) instead")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 0 {
		fmt.Fprintln(stderr, "cvpn client refresh-crl: unexpected arguments:", pos)
		return exitInvalid
	}
	if *crlDays <= 0 {
		fmt.Fprintf(stderr, "cvpn client refresh-crl: --crl-days %d is not positive\n", *crlDays)
		return exitInvalid
	}
	cfg, ok := loadConfig(cfgPath, stderr)
	if !ok {
		return exitInvalid
	}
	store := clientstore.Of(cfg, *caKey)
	ca, err := store.LoadCA()
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client refresh-crl:", err)
		return exitRuntime
	}
	validity := time.Duration(*crlDays) * day
	if *create != "" {
		file := *create
		if !filepath.IsAbs(file) {
			file = filepath.Join(filepath.Dir(*cfgPath), file)
		}
		_, err := clientstore.CreateCRL(ca, file, validity, timeNow())
		if errors.Is(err, fs.ErrExist) {
			fmt.Fprintf(stderr, "cvpn client refresh-crl: --create %s: %s already exists\n", *create, file)
			return exitRuntime
		}
		if err != nil {
			fmt.Fprintln(stderr, "cvpn client refresh-crl:", err)
			return exitRuntime
		}
		fmt.Fprintf(stdout, "wrote an empty CRL to %s; set crl_file: %s under authentication.certificate in %s\n",
			file, *create, *cfgPath)
		return 0
	}
	crlFile, ok := crlFileOf(cfg, "cvpn client refresh-crl", stderr)
	if !ok {
		return exitInvalid
	}
	crl, err := store.RefreshCRL(ca, validity, timeNow())
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client refresh-crl:", err)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "wrote CRL number %v to %s: %d revoked, next update %s\n", crl.List.Number, crlFile,
		crl.Len(), crl.List.NextUpdate.UTC().Format(time.RFC3339))
	return 0
}

func clientList(args []string, stdout, stderr io.Writer) int {
	path, code, ok := configFlag("client list", args, stderr)
	if !ok {
		return code
	}
	cfg, ok := loadConfig(&path, stderr)
	if !ok {
		return exitInvalid
	}
	store := clientstore.Of(cfg, "")
	cas, err := store.LoadCAs()
	if err != nil {
		fmt.Fprintln(stderr, cfg.KeyError("authentication.certificate.client_root_ca_file", err))
		return exitRuntime
	}
	clients, problems, err := store.List(cas, timeNow())
	code = 0
	for _, p := range problems {
		fmt.Fprintln(stderr, "cvpn client list:", p)
		code = exitRuntime
	}
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client list:", err)
		return exitRuntime
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tGROUPS\tSERIAL\tNOT-AFTER\tSTATUS")
	for _, c := range clients {
		fmt.Fprintf(tw, "%s\t%s\t%X\t%s\t%s\n", c.Name, groupList(pki.Groups(c.Cert)), c.Cert.SerialNumber,
			c.Cert.NotAfter.UTC().Format(time.RFC3339), c.Status)
	}
	tw.Flush()
	if len(clients) == 0 {
		fmt.Fprintf(stderr, "no clients in %s yet (cvpn client issue NAME)\n", store.Dir)
	}
	return code
}

// oneClientName is the single NAME argument of a client command, checked; it reports a problem
// on stderr, prefixed with the command.
func oneClientName(cmd string, pos []string, stderr io.Writer) (string, bool) {
	if len(pos) != 1 {
		fmt.Fprintln(stderr, cmd+": want exactly one NAME, got", len(pos))
		return "", false
	}
	if err := clientstore.CheckName(pos[0]); err != nil {
		fmt.Fprintln(stderr, cmd+":", err)
		return "", false
	}
	return pos[0], true
}
