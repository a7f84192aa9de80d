package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cvpn/cvpn/bench"
)

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cvpnBin := fs.String("cvpn", "bin/cvpn", "cvpn binary `path`")
	out := fs.String("out", "bench/results", "`directory` for <date>.json and <date>.svg (\"\" writes nothing)")
	rounds := fs.Int("rounds", 2, "A/B rounds per scenario (medians are reported)")
	scenarios := fs.String("scenarios", "iperf,iperf-ipv6,sessions,limit,big,scale", "comma-separated `list` of iperf, iperf-ipv6 (iperf over IPv6 transport and IPv6 in the tunnel), sessions, limit, big, scale")
	servers := fs.String("servers", "cvpn,openvpn", "comma-separated `list` of the servers to run")
	paced := fs.Float64("paced-mbps", 100, "aggregate offered Mbit/s of the paced phase (round trip under a load both carry)")
	sessions := intList{1, 64, 1000}
	fs.Var(&sessions, "sessions", "session counts of the sessions scenario (comma-separated)")
	duration := fs.Duration("duration", 10*time.Second, "traffic phase of each sessions and limit run")
	iperfSecs := fs.Int("iperf-seconds", 10, "length of each iperf3 transfer")
	big := fs.Int("big", 10000, "sessions of the big scenario")
	bigOpenVPN := fs.Bool("big-openvpn", true, "run the big scenario against the stock server too (it holds 10,000 sessions on this machine)")
	bigRounds := fs.Int("big-rounds", 1, "rounds of the big scenario")
	bigHold := fs.Duration("big-hold", 30*time.Second, "how long the big scenario holds its idle sessions")
	scale := fs.Int("scale", 100000, "sessions of the scale scenario (cvpn only)")
	scaleHold := fs.Duration("scale-hold", 30*time.Second, "how long the scale scenario holds its sessions")
	scaleEchoes := fs.Float64("scale-echo-rate", 1000, "gateway echoes per second over all sessions while the scale scenario holds them")
	scaleRamp := fs.Duration("scale-ramp-timeout", 10*time.Minute, "bound on the scale scenario's ramp: sessions not started by then are reported as not connected")
	perProcess := fs.Int("sessions-per-process", 15000, "most sessions of one load generator process in the scale scenario (each holds a socket; the open files limit, ulimit -n, bounds it)")
	sources := fs.Int("sources", 1024, "source addresses of the load generator (servers limit new sessions per address and per /24)")
	limit := fs.Float64("limit-mbps", 10, "cvpn bandwidth_limit_mbps in the limit scenario")
	limitSessions := fs.Int("limit-sessions", 8, "sessions of the limit scenario")
	openvpnExtra := fs.String("openvpn-extra", "", "lines appended to the stock server's configuration (\\n separates lines)")
	cvpnExtra := fs.String("cvpn-extra", "", "YAML appended to cvpn's endpoint file (\\n separates lines)")
	timeout := fs.Duration("timeout", 3*time.Hour, "bound on the whole run")
	logDir := fs.String("log-dir", "", "`directory` to keep every server's and load generator's output in")
	goBin := fs.String("go", "", "go `command` that reads cvpn's CPU profiles (go tool pprof); default: go on PATH")
	noProfile := fs.Bool("no-profile", false, "take no CPU profiles of cvpn")
	if err := parse(fs, args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("own path: %w", err)
	}
	cfg := bench.HarnessConfig{
		CVPNBin: *cvpnBin, Self: self, Rounds: *rounds, Sessions: sessions, Duration: *duration,
		IperfSeconds: *iperfSecs, Big: *big, BigOpenVPN: *bigOpenVPN, BigRounds: *bigRounds, BigHold: *bigHold,
		LimitMbps: *limit, LimitSessions: *limitSessions,
		Scale: *scale, ScaleHold: *scaleHold, ScaleEchoRate: *scaleEchoes, Sources: *sources, SessionsPerProcess: *perProcess, ScaleRampTimeout: *scaleRamp,
		OpenVPNExtra: unescapeLines(*openvpnExtra), CVPNExtra: unescapeLines(*cvpnExtra),
		PacedMbps: *paced, LogDir: *logDir, GoBin: *goBin, NoProfile: *noProfile,
		Out: stderr,
	}
	for s := range strings.SplitSeq(*servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Servers = append(cfg.Servers, bench.ServerKind(s))
		}
	}
	for s := range strings.SplitSeq(*scenarios, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Scenarios = append(cfg.Scenarios, s)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	res, err := bench.RunHarness(ctx, cfg)
	if res == nil {
		return err
	}
	fmt.Fprintf(stdout, "\n%s\n", res.TableText())
	if c := res.CostText(); c != "" {
		fmt.Fprintf(stdout, "%s\n", c)
	}
	for _, n := range res.Notes {
		fmt.Fprintf(stdout, "note: %s\n", n)
	}
	if *out != "" {
		if werr := writeResults(*out, res, stdout); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	return err
}

// writeResults writes <date>.json and <date>.svg into dir.
func writeResults(dir string, res *bench.Results, stdout io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	base := filepath.Join(dir, res.Date.Format("2006-01-02"))
	for i := 2; ; i++ { // a second run on the same day does not overwrite the first
		if _, err := os.Stat(base + ".json"); errors.Is(err, os.ErrNotExist) {
			break
		}
		base = filepath.Join(dir, fmt.Sprintf("%s-%d", res.Date.Format("2006-01-02"), i))
		if i > 100 {
			return fmt.Errorf("too many result files for %s in %s", res.Date.Format("2006-01-02"), dir)
		}
	}
	// The profiles first, so that the JSON names their files.
	for i := range res.Measurements {
		for j := range res.Measurements[i].Profiles {
			p := &res.Measurements[i].Profiles[j]
			if res.Measurements[i].Round == 1 && res.ProfileData[p.Phase] != nil {
				p.File = filepath.Base(base) + "-" + p.Phase + ".pprof"
			}
		}
	}
	for phase, b := range res.ProfileData {
		if err := os.WriteFile(base+"-"+phase+".pprof", b, 0o644); err != nil {
			return err
		}
	}
	if err := writeJSON(base+".json", res, stdout); err != nil {
		return err
	}
	if err := os.WriteFile(base+".svg", []byte(res.SVG()), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s.json and %s.svg\n", base, base)
	return nil
}

// cmdReport recomputes the table of a results file from its measurements, prints it, and
// optionally writes the chart and the updated file.
func cmdReport(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "", "results `file` (JSON) written by run, required")
	svg := fs.String("svg", "", "write the chart to `file`")
	rewrite := fs.Bool("rewrite", false, "write the recomputed table back into the results file")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *in == "" {
		return usageError{errors.New("--in is required")}
	}
	b, err := os.ReadFile(*in)
	if err != nil {
		return err
	}
	var res bench.Results
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	res.Retable()
	fmt.Fprint(stdout, res.TableText())
	if c := res.CostText(); c != "" {
		fmt.Fprintf(stdout, "\n%s", c)
	}
	for _, n := range res.Notes {
		fmt.Fprintf(stdout, "note: %s\n", n)
	}
	if *svg != "" {
		if err := os.WriteFile(*svg, []byte(res.SVG()), 0o644); err != nil {
			return err
		}
	}
	if *rewrite {
		return writeJSON(*in, &res, stdout)
	}
	return nil
}

func unescapeLines(s string) string {
	if s == "" {
		return ""
	}
	return strings.ReplaceAll(s, `\n`, "\n") + "\n"
}
