// Command cvpn-bench is cvpn's load generator and side-by-side benchmark.
//
//	cvpn-bench load      N OpenVPN sessions against any server, traffic to a sink, a report
//	cvpn-bench sink      the UDP target in the private network (counts data, echoes probes)
//	cvpn-bench fixtures  a throwaway PKI, tls-crypt key, cvpn endpoint and equivalent openvpn config
//	cvpn-bench run       the harness behind `make bench`: namespaces, cvpn and the stock openvpn
//	                     server side by side, a table of ratios, JSON and SVG under bench/results
//	cvpn-bench report    the table of a results file again, and its chart redrawn
//
// It is the composition root of package bench: flags, signals and files live here only.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cvpn/cvpn/bench"
	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: cvpn-bench <command> [flags]

commands:
  load      connect N sessions to an OpenVPN server, push traffic to a sink, report
  sink      serve as the traffic target in the private network
  fixtures  write a throwaway PKI, tls-crypt key, cvpn endpoint and openvpn server config
  run       the side-by-side benchmark of cvpn and the stock openvpn server (root)
  report    print the table of a results JSON file and draw its chart again

"cvpn-bench <command> -h" lists a command's flags.
Exit status: 0 on success, 2 for a usage error, 1 otherwise.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "load":
		err = cmdLoad(ctx, args[1:], stdout, stderr)
	case "sink":
		err = cmdSink(ctx, args[1:], stderr)
	case "fixtures":
		err = cmdFixtures(args[1:], stdout, stderr)
	case "run":
		err = cmdRun(ctx, args[1:], stdout, stderr)
	case "report":
		err = cmdReport(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "cvpn-bench: unknown command %q\n%s", args[0], usage)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "cvpn-bench %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "cvpn-bench %s: %v\n", args[0], err)
		return 1
	}
}

type usageError struct{ error }

// readStaticKey reads an OpenVPN static key file named by a flag.
func readStaticKey(flag, path string) (*tlscrypt.StaticKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	k, err := tlscrypt.ParseStaticKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, path, err)
	}
	return k, nil
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	return nil
}

func cmdLoad(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "", "server `address:port`, required")
	proto := fs.String("proto", "udp", "transport to the server: udp or tcp")
	sink := fs.String("sink", "", "sink `address:port` in the private network; required with --duration")
	sessions := fs.Int("sessions", 1, "sessions to connect")
	ramp := fs.Float64("ramp", 0, "session starts per second (0: as fast as --concurrency allows)")
	concurrency := fs.Int("concurrency", 64, "handshakes in flight at once")
	rampTimeout := fs.Duration("ramp-timeout", 0, "stop starting sessions after this long and go on with those connected (0: no bound)")
	hsTimeout := fs.Duration("handshake-timeout", 60*time.Second, "bound on each session's handshake")
	settle := fs.Duration("settle", 2*time.Second, "pause after the ramp before reading the server's memory")
	hold := fs.Duration("hold", 0, "keep the sessions idle (keepalives only) this long after the ramp")
	duration := fs.Duration("duration", 0, "measured traffic phase (0: no traffic)")
	warmup := fs.Duration("warmup", 0, "traffic before the measured phase that is not counted")
	pacedMbps := fs.Float64("paced-mbps", 0, "aggregate Mbit/s of a paced phase before the measured one (0: none)")
	pacedDur := fs.Duration("paced-duration", 3*time.Second, "length of the paced phase")
	idle := fs.Duration("idle-probe", 2*time.Second, "probe-only phase before the traffic (unloaded round trip)")
	size := fs.Int("size", 1400, "IP packet size in bytes")
	rate := fs.Float64("rate-mbps", 0, "offered Mbit/s per session (0: as fast as possible)")
	senders := fs.Int("senders", 0, "sending goroutines (0: GOMAXPROCS)")
	probeRate := fs.Float64("probe-rate", 0, "echo probes per second over all sessions (0: min(1000, 20 per session))")
	ca := fs.String("ca", "", "`file` of the CA that signed the server certificate, required")
	cert := fs.String("cert", "", "client certificate `file` shared by every session (with --key)")
	key := fs.String("key", "", "client key `file` (with --cert)")
	issuerCert := fs.String("issuer-cert", "", "CA certificate `file` to issue one client certificate per session (with --issuer-key)")
	issuerKey := fs.String("issuer-key", "", "CA key `file` (with --issuer-cert)")
	tc := fs.String("tls-crypt", "", "tls-crypt static key `file` (OpenVPN format)")
	ta := fs.String("tls-auth", "", "tls-auth static key `file` (OpenVPN format), used with key-direction 1")
	taDigest := fs.String("tls-auth-digest", "SHA1", "tls-auth HMAC: SHA1, SHA256 or SHA512 (the server's --auth)")
	taBidir := fs.Bool("tls-auth-bidirectional", false, "tls-auth without key-direction (the server sets none either)")
	pid := fs.Int("server-pid", 0, "server process to sample memory and CPU of (same PID namespace)")
	jsonOut := fs.String("json", "", "write the report as JSON to `file` (- for stdout)")
	timeout := fs.Duration("timeout", 0, "bound on the whole run (0: none beyond the per-phase bounds)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	sources := fs.Int("sources", 0, "dial the sessions from this many local source addresses in 198.18.0.0/15 (they must exist; 0: the kernel's choice)")
	first := fs.Int("first", 0, "index of this run's first session among several load generators: client names bench-<first+i>, source address (first+i) mod --sources")
	barrierDir := fs.String("barrier-dir", "", "`directory` where --barrier-parties load generators meet after their ramps (each adds a file, all wait for the rest)")
	barrierParties := fs.Int("barrier-parties", 0, "load generators that meet in --barrier-dir")
	rawSamples := fs.Bool("raw-samples", false, "keep every handshake latency and hold echo round trip in the JSON report (for merging reports)")
	holdEchoRate := fs.Float64("hold-echo-rate", 0, "ICMP echoes per second to the sessions' gateway while holding (round trip of idle tunnels)")
	profSocket := fs.String("profile-socket", "", "cvpn admin API `socket`: take a CPU profile of the server during the measured phase")
	profOut := fs.String("profile-out", "", "write that profile to `file` (with --profile-socket)")
	profRamp := fs.Int("profile-ramp", 0, "also profile the server over this many `seconds` of the ramp, from one second in (with --profile-socket and --profile-ramp-out)")
	profRampOut := fs.String("profile-ramp-out", "", "write the ramp's profile to `file`")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *profSocket != "" && *profOut == "" && *profRampOut == "" {
		return usageError{errors.New("--profile-socket needs --profile-out or --profile-ramp-out")}
	}
	if (*profOut != "" || *profRampOut != "") && *profSocket == "" {
		return usageError{errors.New("--profile-out and --profile-ramp-out need --profile-socket")}
	}
	if (*profRamp > 0) != (*profRampOut != "") {
		return usageError{errors.New("give --profile-ramp and --profile-ramp-out together")}
	}
	cfg := bench.LoadConfig{
		Sessions: *sessions, RampRate: *ramp, Concurrency: *concurrency, HandshakeTimeout: *hsTimeout, RampTimeout: *rampTimeout,
		Settle: *settle, Hold: *hold, Duration: *duration, IdleProbe: *idle, PacketSize: *size,
		RateMbps: *rate, Senders: *senders, ProbeRate: *probeRate, ServerPID: *pid,
		PacedMbps: *pacedMbps, PacedDuration: *pacedDur, Warmup: *warmup, HoldProbeRate: *holdEchoRate,
		First: *first, RawSamples: *rawSamples, ProfileRamp: *profRamp,
	}
	if (*barrierDir == "") != (*barrierParties <= 0) {
		return usageError{errors.New("give --barrier-dir and --barrier-parties together")}
	}
	if *barrierDir != "" {
		cfg.Barrier = fileBarrier(*barrierDir, *barrierParties, *first)
	}
	if *sources > 0 {
		cfg.Sources = bench.SourceAddrs(*sources)
	}
	// Every session holds a socket: make room for them and for the process's own files.
	if err := raiseFileLimit(uint64(*sessions) + 4096); err != nil {
		fmt.Fprintf(stderr, "cvpn-bench load: %v (sessions beyond the limit will fail to connect)\n", err)
	}
	var err error
	if cfg.Server, err = netip.ParseAddrPort(*server); err != nil {
		return usageError{fmt.Errorf("--server: %w", err)}
	}
	switch *proto {
	case "udp":
	case "tcp":
		cfg.TCP = true
	default:
		return usageError{fmt.Errorf("--proto %q: want udp or tcp", *proto)}
	}
	if *sink != "" {
		if cfg.Sink, err = netip.ParseAddrPort(*sink); err != nil {
			return usageError{fmt.Errorf("--sink: %w", err)}
		}
	}
	if *ca == "" {
		return usageError{errors.New("--ca is required")}
	}
	if cfg.RootCAs, _, err = pki.LoadCertPool(*ca); err != nil {
		return fmt.Errorf("--ca: %w", err)
	}
	if *tc != "" {
		if cfg.TLSCrypt, err = readStaticKey("--tls-crypt", *tc); err != nil {
			return err
		}
	}
	if *ta != "" {
		if *tc != "" {
			return usageError{errors.New("give --tls-crypt or --tls-auth, not both")}
		}
		digest, err := tlscrypt.AuthDigest(*taDigest)
		if err != nil {
			return usageError{fmt.Errorf("--tls-auth-digest %q: want SHA1, SHA256 or SHA512", *taDigest)}
		}
		key, err := readStaticKey("--tls-auth", *ta)
		if err != nil {
			return err
		}
		cfg.TLSAuth = &client.TLSAuth{Key: key, Bidirectional: *taBidir, Digest: digest}
	}
	switch {
	case *cert != "" && *issuerCert != "":
		return usageError{errors.New("give --cert/--key or --issuer-cert/--issuer-key, not both")}
	case *cert != "":
		id, err := pki.LoadIdentity(*cert, *key)
		if err != nil {
			return fmt.Errorf("--cert/--key: %w", err)
		}
		c, err := id.TLSCertificate()
		if err != nil {
			return fmt.Errorf("--cert/--key: %w", err)
		}
		cfg.Identity = func(int) (tls.Certificate, error) { return c, nil }
	case *issuerCert != "":
		issuer, err := pki.LoadCA(*issuerCert, *issuerKey)
		if err != nil {
			return fmt.Errorf("--issuer-cert/--issuer-key: %w", err)
		}
		certs, err := bench.IdentitiesFrom(issuer, *first, *sessions)
		if err != nil {
			return err
		}
		cfg.Identity = func(i int) (tls.Certificate, error) { return certs[i], nil }
	default:
		return usageError{errors.New("a client identity is required: --cert/--key, or --issuer-cert/--issuer-key")}
	}
	level := slog.LevelInfo
	if *quiet {
		level = slog.LevelWarn
	}
	cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	// Each phase is profiled only when its profile is kept: the admin API takes one at a time.
	fetch := func(ctx context.Context, seconds int) ([]byte, error) {
		return bench.FetchProfile(ctx, *profSocket, seconds)
	}
	if *profOut != "" {
		cfg.Profile = fetch
	}
	if *profRampOut != "" {
		cfg.RampProfile = fetch
	}
	rep, err := bench.RunLoad(ctx, cfg)
	if rep != nil && len(rep.Profile) > 0 {
		if werr := os.WriteFile(*profOut, rep.Profile, 0o644); werr != nil && err == nil {
			err = werr
		}
	}
	if rep != nil && len(rep.RampProfile) > 0 {
		if werr := os.WriteFile(*profRampOut, rep.RampProfile, 0o644); werr != nil && err == nil {
			err = werr
		}
	}
	if rep != nil {
		fmt.Fprint(stdout, rep.Summary())
		if *jsonOut != "" {
			if werr := writeJSON(*jsonOut, rep, stdout); werr != nil && err == nil {
				err = werr
			}
		}
	}
	return err
}

// fileBarrier returns a barrier of parties load generators in dir: each writes a file named by
// its first session and waits until parties files are there. The harness that starts them
// watches the same directory to know when every ramp ended.
func fileBarrier(dir string, parties, first int) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("ramped-%d", first)), nil, 0o644); err != nil {
			return err
		}
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			ents, err := os.ReadDir(dir)
			if err != nil {
				return err
			}
			n := 0
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), "ramped-") {
					n++
				}
			}
			if n >= parties {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
			}
		}
	}
}

func writeJSON(path string, v any, stdout io.Writer) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func cmdSink(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "0.0.0.0:9000", "UDP `address:port` to serve on")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if err := parse(fs, args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return usageError{fmt.Errorf("--listen: %w", err)}
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }
	if *quiet {
		logf = func(format string, a ...any) {
			if strings.HasPrefix(format, "sink listening") {
				fmt.Fprintf(stderr, format+"\n", a...)
			}
		}
	}
	return bench.ServeSink(ctx, ap, logf)
}

func cmdFixtures(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fixtures", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory to write into (created), required")
	cidr := fs.String("client-cidr", bench.DefaultClientCIDR.String(), "client CIDR of both servers")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usageError{errors.New("--dir is required")}
	}
	p, err := netip.ParsePrefix(*cidr)
	if err != nil {
		return usageError{fmt.Errorf("--client-cidr: %w", err)}
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	fx, err := bench.WriteFixtures(*dir, bench.FixtureOptions{ClientCIDR: p})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: ca.crt ca.key server.crt server.key tc.key %s %s %s %s %s %s %s\n", fx.Dir,
		filepath.Base(fx.CVPNConfig), filepath.Base(fx.CVPNLimitConfig), filepath.Base(fx.CVPNTCPConfig), filepath.Base(fx.CVPNIPv6Config),
		filepath.Base(fx.OpenVPNConfig), filepath.Base(fx.OpenVPNTCPConfig), filepath.Base(fx.OpenVPNIPv6Config))
	fmt.Fprintf(stdout, "load: cvpn-bench load --ca %s --issuer-cert %s --issuer-key %s --tls-crypt %s --server ADDR:443 [--proto tcp] ...\n",
		fx.CACertFile, fx.CACertFile, fx.CAKeyFile, fx.TLSCryptFile)
	return nil
}

// intList is a comma-separated list of positive integers.
type intList []int

func (l *intList) String() string {
	s := make([]string, len(*l))
	for i, n := range *l {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(v string) error {
	*l = nil
	for f := range strings.SplitSeq(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return fmt.Errorf("%q is not a positive number", f)
		}
		*l = append(*l, n)
	}
	return nil
}
