package main

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// Client identities need no database: the issued certificates are the index. Each client is
// NAME.crt and NAME.key in the clients directory, its status is the certificate's own dates
// and the CRL. So there is nothing to drift out of step with what was issued, a backup is a
// copy of the directory, and `ls` tells the truth. The price: a client whose files were
// removed cannot be revoked by name (its serial stays in the CRL if it was revoked before).

// Lifetimes of what the client commands sign.
const (
	defaultClientDays = 825 // the CA/Browser Forum's former ceiling, and easy-rsa's default
	defaultCRLDays    = 180 // OpenVPN refuses every client once the CRL's nextUpdate passes
)

const day = 24 * time.Hour

// clientNamePattern is what a client name (its CN and its file name) may be: it must be safe as
// a file name and in an OpenVPN status line.
var clientNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$`)

func checkClientName(name string) error {
	if !clientNamePattern.MatchString(name) || strings.HasSuffix(name, ".") {
		return fmt.Errorf("client name %q: use 1 to 64 letters, digits and . _ @ + -, starting with a letter or digit", name)
	}
	return nil
}

// clientStore is where an endpoint's client identities live. By convention (the layout cvpn
// init makes) the CA key sits beside authentication.certificate.client_root_ca_file with the
// extension .key (pki/ca.crt, pki/ca.key), and the issued identities in the clients directory
// beside it (pki/clients/NAME.crt and NAME.key).
type clientStore struct {
	caCert, caKey, dir string
}

func storeOf(cfg *config.Endpoint, caKey string) clientStore {
	ca := cfg.Authentication.Certificate.ClientRootCAFile
	if caKey == "" {
		caKey = strings.TrimSuffix(ca, filepath.Ext(ca)) + ".key"
	}
	return clientStore{caCert: ca, caKey: caKey, dir: filepath.Join(filepath.Dir(ca), "clients")}
}

func (s clientStore) certFile(name string) string { return filepath.Join(s.dir, name+".crt") }
func (s clientStore) keyFile(name string) string  { return filepath.Join(s.dir, name+".key") }

// v2KeyFile is the client's own tls-crypt-v2 key, when it has one.
func (s clientStore) v2KeyFile(name string) string {
	return filepath.Join(s.dir, name+".tls-crypt-v2.key")
}

// loadCA loads the issuing CA: client_root_ca_file and its key.
func (s clientStore) loadCA() (*pki.Identity, error) {
	ca, err := pki.LoadCA(s.caCert, s.caKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load the issuing CA: %w (pass --ca-key FILE if the CA key is kept elsewhere)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("load the issuing CA: %w", err)
	}
	return ca, nil
}

// loadClientCert reads the certificate of the client called name.
func (s clientStore) loadClientCert(name string) (*x509.Certificate, error) {
	certs, err := pki.LoadCertificates(s.certFile(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no client named %q (no %s; issue one with: cvpn client issue %s)", name, s.certFile(name), name)
	}
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

func cmdClient(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "cvpn client: missing subcommand (issue, revoke, list or refresh-crl)")
		usage(stderr)
		return exitInvalid
	}
	switch args[0] {
	case "issue":
		return clientIssue(args[1:], stdout, stderr)
	case "revoke":
		return clientRevoke(args[1:], stdout, stderr)
	case "list":
		return clientList(args[1:], stdout, stderr)
	case "refresh-crl":
		return clientRefreshCRL(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "cvpn client: unknown subcommand %q (want issue, revoke, list or refresh-crl)\n", args[0])
	return exitInvalid
}

// loadConfig is config.Load for the client commands, printing problems. The client commands
// read only the endpoint file and the CA, CRL and client files, not the server's files: the
// CRL must stay manageable even when something else is wrong (or expired) in the endpoint.
func loadConfig(path string, stderr io.Writer) (*config.Endpoint, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		printConfigError(stderr, err)
		return nil, false
	}
	return cfg, true
}

func clientIssue(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("client issue", flag.ContinueOnError)
	fl.SetOutput(stderr)
	cfgPath := fl.String("config", "endpoint.yaml", "endpoint file")
	var groups stringList
	fl.Var(&groups, "group", "group the client belongs to, carried as a certificate OU (repeat for several)")
	keyType := fl.String("key-type", "", "ecdsa-p256 or rsa2048 (default: the CA's key type)")
	days := fl.Int("days", defaultClientDays, "days the certificate is valid (at most until the CA expires)")
	caKey := fl.String("ca-key", "", "CA private key (default: client_root_ca_file with extension .key)")
	v2 := fl.Bool("tls-crypt-v2", false, "also issue the client its own tls-crypt-v2 key (needs control_channel.tls_crypt_v2_server_key_file)")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return exitInvalid
	}
	name, ok := oneClientName("cvpn client issue", pos, stderr)
	if !ok {
		return exitInvalid
	}
	if *days <= 0 {
		fmt.Fprintf(stderr, "cvpn client issue: --days %d is not positive\n", *days)
		return exitInvalid
	}
	daysSet := false
	fl.Visit(func(f *flag.Flag) { daysSet = daysSet || f.Name == "days" })

	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return exitInvalid
	}
	store := storeOf(cfg, *caKey)
	ca, err := store.loadCA()
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
		if v2Server, err = loadTLSCryptV2ServerKey(f); err != nil {
			fmt.Fprintln(stderr, "cvpn client issue: control_channel.tls_crypt_v2_server_key_file:", err)
			return exitInvalid
		}
	}
	kt, err := keyTypeOf(*keyType, ca)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client issue: --key-type:", err)
		return exitInvalid
	}
	for _, f := range []string{store.certFile(name), store.keyFile(name)} {
		if _, err := os.Lstat(f); err == nil {
			fmt.Fprintf(stderr, "cvpn client issue: client %q already exists (%s); names are unique. "+
				"To replace it: cvpn client revoke %s, remove %s and %s, and issue again\n",
				name, f, name, store.certFile(name), store.keyFile(name))
			return exitRuntime
		}
	}
	now := timeNow()
	validity := time.Duration(*days) * day
	if left := ca.Cert.NotAfter.Sub(now); !daysSet && validity > left {
		validity = left // the default must not fail near the end of the CA's life
	}
	id, err := pki.IssueClient(ca, name, groups, kt, validity, now)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client issue:", err)
		return exitRuntime
	}
	if err := os.MkdirAll(store.dir, 0o700); err != nil {
		fmt.Fprintln(stderr, "cvpn client issue: clients directory:", err)
		return exitRuntime
	}
	if err := pki.WriteIdentity(id, store.certFile(name), store.keyFile(name)); err != nil {
		fmt.Fprintln(stderr, "cvpn client issue:", err)
		return exitRuntime
	}
	if v2Server != nil {
		ck, err := tlscrypt.NewV2ClientKey(rand.Reader, v2Server, nil)
		if err == nil {
			err = writeNewFile(store.v2KeyFile(name), ck.Marshal(), 0o600)
		}
		if err != nil {
			fmt.Fprintln(stderr, "cvpn client issue: tls-crypt-v2 key:", err)
			return exitRuntime
		}
		fmt.Fprintf(stdout, "  tls-crypt-v2 key %s\n", store.v2KeyFile(name))
	}
	for _, g := range groups {
		if !groupUsed(cfg, g) {
			fmt.Fprintf(stderr, "cvpn client issue: warning: no authorization rule names group %q yet "+
				"(rules match groups by exact name)\n", g)
		}
	}
	fmt.Fprintf(stdout, "issued client %s: serial %X, groups %s, valid until %s\n", name, id.Cert.SerialNumber,
		groupList(pki.Groups(id.Cert)), id.Cert.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(stdout, "  certificate %s\n  key         %s\n", store.certFile(name), store.keyFile(name))
	fmt.Fprintf(stdout, "profile: cvpn export-client-config --config %s --client %s > %s.ovpn\n", *cfgPath, name, name)
	return 0
}

// keyTypeOf is the --key-type flag, defaulting to the CA's own key type.
func keyTypeOf(flagValue string, ca *pki.Identity) (pki.KeyType, error) {
	if flagValue != "" {
		return pki.ParseKeyType(flagValue)
	}
	if _, ok := ca.Key.(*rsa.PrivateKey); ok {
		return pki.RSA2048, nil
	}
	if _, ok := ca.Key.(*ecdsa.PrivateKey); ok {
		return pki.ECDSAP256, nil
	}
	return pki.ECDSAP256, nil
}

func groupUsed(cfg *config.Endpoint, g string) bool {
	for _, r := range cfg.AuthorizationRules {
		if r.AccessGroupID == g {
			return true
		}
	}
	return false
}

func groupList(groups []string) string {
	if len(groups) == 0 {
		return "-"
	}
	return strings.Join(groups, ",")
}

// lockDir takes an exclusive lock on dir, so two revocations at once cannot both read the old
// CRL and the second write lose the first's entry. It returns the unlock function.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil // closing drops the lock
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
	fl := flag.NewFlagSet("client revoke", flag.ContinueOnError)
	fl.SetOutput(stderr)
	cfgPath := fl.String("config", "endpoint.yaml", "endpoint file")
	caKey := fl.String("ca-key", "", "CA private key (default: client_root_ca_file with extension .key)")
	crlDays := fl.Int("crl-days", defaultCRLDays, "days until the new CRL's next update")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return exitInvalid
	}
	name, ok := oneClientName("cvpn client revoke", pos, stderr)
	if !ok {
		return exitInvalid
	}
	if *crlDays <= 0 {
		fmt.Fprintf(stderr, "cvpn client revoke: --crl-days %d is not positive\n", *crlDays)
		return exitInvalid
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return exitInvalid
	}
	crlFile, ok := crlFileOf(cfg, "cvpn client revoke "+name, stderr)
	if !ok {
		return exitInvalid
	}
	store := storeOf(cfg, *caKey)
	cert, err := store.loadClientCert(name)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client revoke:", err)
		return exitRuntime
	}
	ca, err := store.loadCA()
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client revoke:", err)
		return exitRuntime
	}
	unlock, err := lockDir(filepath.Dir(crlFile))
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client revoke:", err)
		return exitRuntime
	}
	defer unlock()
	prev, err := pki.LoadCRL(crlFile)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client revoke:", err)
		return exitRuntime
	}
	crl, err := pki.Revoke(ca, prev, cert, timeNow(), time.Duration(*crlDays)*day)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client revoke:", err)
		return exitRuntime
	}
	if err := pki.WriteCRL(crl, crlFile); err != nil {
		fmt.Fprintln(stderr, "cvpn client revoke:", err)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "revoked client %s (serial %X)\n", name, cert.SerialNumber)
	fmt.Fprintf(stdout, "wrote CRL number %v to %s: %d revoked, next update %s\n", crl.List.Number, crlFile,
		crl.Len(), crl.List.NextUpdate.UTC().Format(time.RFC3339))
	return 0
}

func clientRefreshCRL(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("client refresh-crl", flag.ContinueOnError)
	fl.SetOutput(stderr)
	cfgPath := fl.String("config", "endpoint.yaml", "endpoint file")
	caKey := fl.String("ca-key", "", "CA private key (default: client_root_ca_file with extension .key)")
	crlDays := fl.Int("crl-days", defaultCRLDays, "days until the CRL's next update")
	create := fl.String("create", "", "write a new, empty CRL to this file (relative to the endpoint file) instead")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return exitInvalid
	}
	if len(pos) != 0 {
		fmt.Fprintln(stderr, "cvpn client refresh-crl: unexpected arguments:", pos)
		return exitInvalid
	}
	if *crlDays <= 0 {
		fmt.Fprintf(stderr, "cvpn client refresh-crl: --crl-days %d is not positive\n", *crlDays)
		return exitInvalid
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return exitInvalid
	}
	store := storeOf(cfg, *caKey)
	ca, err := store.loadCA()
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
		if _, err := os.Lstat(file); err == nil {
			fmt.Fprintf(stderr, "cvpn client refresh-crl: --create %s: %s already exists\n", *create, file)
			return exitRuntime
		}
		crl, err := pki.NewCRL(ca, timeNow(), validity)
		if err == nil {
			err = pki.WriteCRL(crl, file)
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
	unlock, err := lockDir(filepath.Dir(crlFile))
	if err != nil {
		fmt.Fprintln(stderr, "cvpn client refresh-crl:", err)
		return exitRuntime
	}
	defer unlock()
	prev, err := pki.LoadCRL(crlFile)
	if err == nil {
		var crl *pki.CRL
		if crl, err = pki.RefreshCRL(ca, prev, timeNow(), validity); err == nil {
			if err = pki.WriteCRL(crl, crlFile); err == nil {
				fmt.Fprintf(stdout, "wrote CRL number %v to %s: %d revoked, next update %s\n", crl.List.Number, crlFile,
					crl.Len(), crl.List.NextUpdate.UTC().Format(time.RFC3339))
				return 0
			}
		}
	}
	fmt.Fprintln(stderr, "cvpn client refresh-crl:", err)
	return exitRuntime
}

// Client statuses in cvpn client list.
const (
	statusValid     = "valid"
	statusRevoked   = "revoked"
	statusExpired   = "expired"
	statusUntrusted = "untrusted" // not signed by any CA of client_root_ca_file (an old CA's client)
)

func clientList(args []string, stdout, stderr io.Writer) int {
	path, err := configFlag("client list", args, stderr)
	if err != nil {
		return exitInvalid
	}
	cfg, ok := loadConfig(path, stderr)
	if !ok {
		return exitInvalid
	}
	store := storeOf(cfg, "")
	_, cas, err := pki.LoadCertPool(store.caCert)
	if err != nil {
		fmt.Fprintln(stderr, cfg.KeyError("authentication.certificate.client_root_ca_file", err))
		return exitRuntime
	}
	var crl *pki.CRL
	code := 0
	if f := cfg.Authentication.Certificate.CRLFile; f != "" {
		if crl, err = pki.LoadCRL(f); err != nil {
			fmt.Fprintln(stderr, "cvpn client list: revocation status unknown:", err)
			code = exitRuntime
		}
	}
	entries, err := os.ReadDir(store.dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintln(stderr, "cvpn client list:", err)
		return exitRuntime
	}
	now := timeNow()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tGROUPS\tSERIAL\tNOT-AFTER\tSTATUS")
	n := 0
	for _, e := range entries {
		name, isCert := strings.CutSuffix(e.Name(), ".crt")
		if !isCert || !e.Type().IsRegular() {
			continue
		}
		certs, err := pki.LoadCertificates(filepath.Join(store.dir, e.Name()))
		if err != nil {
			fmt.Fprintln(stderr, "cvpn client list:", err)
			code = exitRuntime
			continue
		}
		c := certs[0]
		status := statusValid
		switch {
		case crl.IsRevoked(c):
			status = statusRevoked
		case now.After(c.NotAfter):
			status = statusExpired
		case !slices.ContainsFunc(cas, func(ca *x509.Certificate) bool { return c.CheckSignatureFrom(ca) == nil }):
			status = statusUntrusted
		}
		fmt.Fprintf(tw, "%s\t%s\t%X\t%s\t%s\n", name, groupList(pki.Groups(c)), c.SerialNumber,
			c.NotAfter.UTC().Format(time.RFC3339), status)
		n++
	}
	tw.Flush()
	if n == 0 {
		fmt.Fprintf(stderr, "no clients in %s yet (cvpn client issue NAME)\n", store.dir)
	}
	return code
}

// writeNewFile writes data to a file that must not exist yet, with mode perm.
func writeNewFile(name string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// oneClientName is the single NAME argument of a client command, checked; it reports a problem
// on stderr, prefixed with the command.
func oneClientName(cmd string, pos []string, stderr io.Writer) (string, bool) {
	if len(pos) != 1 {
		fmt.Fprintln(stderr, cmd+": want exactly one NAME, got", len(pos))
		return "", false
	}
	if err := checkClientName(pos[0]); err != nil {
		fmt.Fprintln(stderr, cmd+":", err)
		return "", false
	}
	return pos[0], true
}
