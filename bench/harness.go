package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

// Scenario names, in the order the harness runs them.
const (
	ScenarioIperf = "iperf" // one stock openvpn client, iperf3 TCP up and down
	// ScenarioIperfIPv6 is ScenarioIperf over IPv6 end to end: the client dials the server's
	// IPv6 address (udp6), iperf3 runs over IPv6 inside the tunnel to the VPC host's IPv6
	// address, which sees the client's own address (neither server NATs IPv6).
	ScenarioIperfIPv6 = "iperf-ipv6"
	ScenarioSessions  = "sessions" // N bench sessions: ramp, then traffic
	ScenarioLimit     = "limit"    // cvpn with bandwidth_limit_mbps, sessions offered twice the limit
	ScenarioBig       = "big"      // many idle sessions held with keepalives, then a little traffic
	ScenarioScale     = "scale"    // cvpn only: 100,000 sessions held, gateway echoes while holding
)

// allScenarios are the scenarios in the order the harness runs them.
var allScenarios = []string{ScenarioIperf, ScenarioIperfIPv6, ScenarioSessions, ScenarioLimit, ScenarioBig, ScenarioScale}

// HarnessConfig describes a side-by-side run.
type HarnessConfig struct {
	CVPNBin string // bin/cvpn
	Self    string // this program (cvpn-bench), run as `load` and `sink` inside the namespaces
	Rounds  int    // A/B rounds per scenario; default 2
	// Scenarios to run; nil runs all. Servers to run them against; nil means both.
	Scenarios []string
	Servers   []ServerKind
	// PacedMbps is the aggregate offered load of the paced phase of the sessions scenarios,
	// which measures the round trip under a load both servers carry; default 100.
	PacedMbps float64
	// Sessions are the session counts of the sessions scenario; default 1, 64, 1000.
	Sessions []int
	// Duration is each sessions scenario's traffic phase; default 10 s.
	Duration time.Duration
	// IperfSeconds is each iperf3 direction's length; default 10.
	IperfSeconds int
	// Big is the session count of the big scenario (cvpn; default 10000); BigOpenVPN runs it
	// against the stock server too; BigRounds defaults to 1; BigHold is how long the idle
	// sessions are held (default 30 s, three keepalive intervals).
	Big        int
	BigOpenVPN bool
	BigRounds  int
	BigHold    time.Duration
	// Scale is the session count of the scale scenario (cvpn only; default 100000), ScaleHold
	// how long they are held (default 30 s), ScaleEchoRate the gateway echoes per second over
	// all of them while holding (default 1000).
	Scale         int
	ScaleHold     time.Duration
	ScaleEchoRate float64
	// ScaleRampTimeout bounds the scale scenario's ramp (default 10 min): a server slower
	// than that holds fewer sessions, and the report says how many.
	ScaleRampTimeout time.Duration
	// SessionsPerProcess bounds the sessions of one load generator process in the scale
	// scenario (each holds a socket; the open-files limit bounds them); default 15000.
	SessionsPerProcess int
	// Sources is how many source addresses the load generator's namespace gets (default 1024,
	// SourceAddrs): servers limit new sessions per address and per /24.
	Sources int
	// LimitMbps is cvpn's bandwidth_limit_mbps in the limit scenario (default 10); each of
	// LimitSessions sessions (default 8) offers LimitOffered Mbit/s (default 2x the limit).
	LimitMbps     float64
	LimitSessions int
	LimitOffered  float64
	// OpenVPNExtra and CVPNExtra are appended to the server configurations.
	OpenVPNExtra, CVPNExtra string
	// Out receives progress and the table.
	Out io.Writer
	// LogDir, when set, receives every server's and load generator's output, one file per
	// measurement.
	LogDir string
	// GoBin is the go command that reads cvpn's CPU profiles (`go tool pprof`); empty looks
	// for go on PATH, and without one the profiles are kept but not analysed.
	GoBin string
	// NoProfile skips cvpn's CPU profiles.
	NoProfile bool
}

func (c *HarnessConfig) defaults() error {
	if c.CVPNBin == "" || c.Self == "" {
		return errors.New("bench: HarnessConfig needs CVPNBin and Self")
	}
	for _, p := range []*string{&c.CVPNBin, &c.Self} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		*p = abs
	}
	if c.Rounds <= 0 {
		c.Rounds = 2
	}
	if c.Scenarios == nil {
		c.Scenarios = allScenarios
	}
	for _, s := range c.Scenarios {
		if !slices.Contains(allScenarios, s) {
			return fmt.Errorf("bench: unknown scenario %q", s)
		}
	}
	if c.Sessions == nil {
		c.Sessions = []int{1, 64, 1000}
	}
	if c.Servers == nil {
		c.Servers = []ServerKind{CVPN, OpenVPN}
	}
	for _, k := range c.Servers {
		if k != CVPN && k != OpenVPN {
			return fmt.Errorf("bench: unknown server %q", k)
		}
	}
	if c.PacedMbps <= 0 {
		c.PacedMbps = 100
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.IperfSeconds <= 0 {
		c.IperfSeconds = 10
	}
	if c.Big <= 0 {
		c.Big = 10000
	}
	if c.BigRounds <= 0 {
		c.BigRounds = 1
	}
	if c.BigHold <= 0 {
		c.BigHold = 30 * time.Second
	}
	if c.Scale <= 0 {
		c.Scale = 100000
	}
	if c.ScaleHold <= 0 {
		c.ScaleHold = 30 * time.Second
	}
	if c.ScaleEchoRate <= 0 {
		c.ScaleEchoRate = 1000
	}
	if c.ScaleRampTimeout <= 0 {
		c.ScaleRampTimeout = 10 * time.Minute
	}
	if c.Sources <= 0 {
		c.Sources = 1024
	}
	if c.SessionsPerProcess <= 0 {
		c.SessionsPerProcess = 15000
	}
	if c.LimitMbps <= 0 {
		c.LimitMbps = 10
	}
	if c.LimitSessions <= 0 {
		c.LimitSessions = 8
	}
	if c.LimitOffered <= 0 {
		c.LimitOffered = 2 * c.LimitMbps
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.GoBin == "" {
		c.GoBin, _ = exec.LookPath("go")
	}
	return nil
}

// Measurement is one server's result of one scenario in one round.
type Measurement struct {
	Scenario string             `json:"scenario"` // e.g. "sessions-1000"
	Server   ServerKind         `json:"server"`
	Round    int                `json:"round"`
	Metrics  map[string]float64 `json:"metrics"`
	Load     *LoadReport        `json:"load,omitempty"`
	Iperf    []IperfResult      `json:"iperf,omitempty"`
	// Profiles are cvpn's CPU profiles of the measured phases and their cost per packet.
	Profiles []CPUProfile `json:"profiles,omitempty"`
	Error    string       `json:"error,omitempty"`
}

// IperfResult is one iperf3 transfer through the stock client's tunnel.
type IperfResult struct {
	Direction    string  `json:"direction"` // "upload" (client to VPC) or "download"
	Bytes        int64   `json:"bytes"`     // received
	Mbps         float64 `json:"mbps"`
	Retransmits  int64   `json:"retransmits"`
	ServerCPU    float64 `json:"server_cpu_seconds"`
	CPUSecPerGB  float64 `json:"server_cpu_seconds_per_gb"`
	ServerRSSKiB int64   `json:"server_rss_kib"`
}

// Machine describes where the numbers were taken.
type Machine struct {
	NProc       int    `json:"nproc"`
	CPUModel    string `json:"cpu_model"`
	MemTotalMiB int64  `json:"mem_total_mib"`
	Kernel      string `json:"kernel"`
	GoVersion   string `json:"go_version"`
	OpenVPN     string `json:"openvpn_version"`
	Iperf3      string `json:"iperf3_version"`
	CVPNCommit  string `json:"cvpn_commit,omitempty"`
}

// Row is one line of the ratio table: medians over rounds and cvpn's ratio to openvpn.
type Row struct {
	Scenario string    `json:"scenario"`
	Metric   string    `json:"metric"`
	Unit     string    `json:"unit"`
	Better   string    `json:"better"` // "higher", "lower" or "" (informational)
	CVPN     *float64  `json:"cvpn,omitempty"`
	OpenVPN  *float64  `json:"openvpn,omitempty"`
	Ratio    *float64  `json:"ratio_cvpn_to_openvpn,omitempty"`
	CVPNRuns []float64 `json:"cvpn_runs,omitempty"`
	OVPNRuns []float64 `json:"openvpn_runs,omitempty"`
	Chart    bool      `json:"chart,omitempty"` // drawn in the SVG
}

// Results is everything a run produced; it is the JSON file under bench/results.
type Results struct {
	Date         time.Time      `json:"date"`
	Machine      Machine        `json:"machine"`
	Config       map[string]any `json:"config"`
	Notes        []string       `json:"notes"`
	Table        []Row          `json:"table"`
	Measurements []Measurement  `json:"measurements"`
	// CPUCost is where cvpn's CPU goes per packet in the profiled phases (costTableOf).
	CPUCost []CostRow `json:"cpu_cost_per_packet,omitempty"`
	Seconds float64   `json:"seconds"`
	// ProfileData holds the first round's profile of each phase, by phase, for the caller to
	// write next to the JSON (<date>-<phase>.pprof); each CPUProfile.File names its file.
	ProfileData map[string][]byte `json:"-"`
}

// metricDef says how a metric reads in the table.
type metricDef struct {
	key, label, unit, better string
	chart                    bool // drawn in the SVG
}

var iperfMetrics = []metricDef{
	{"up_mbps", "TCP upload", "Mbit/s", "higher", true},
	{"up_cpu_s_per_gb", "server CPU, upload", "s/GB", "lower", true},
	{"down_mbps", "TCP download", "Mbit/s", "higher", true},
	{"down_cpu_s_per_gb", "server CPU, download", "s/GB", "lower", true},
	{"server_rcvbuf_drops", "server socket overflow drops", "pkts", "lower", false},
}

var sessionMetrics = []metricDef{
	{"connected", "sessions connected", "", "", false},
	{"handshakes_per_s", "handshakes/s (ramp)", "1/s", "higher", true},
	{"handshake_p50_ms", "handshake latency p50", "ms", "lower", false},
	{"handshake_p99_ms", "handshake latency p99", "ms", "lower", false},
	{"cpu_ms_per_handshake", "server CPU per handshake", "ms", "lower", true},
	{"rss_kib_per_session", "server RSS per session", "KiB", "lower", true},
	{"mbps", "aggregate throughput", "Mbit/s", "higher", true},
	{"pps", "aggregate packets", "pkt/s", "higher", false},
	{"loss_pct", "loss (offered flat out)", "%", "lower", true},
	{"cpu_s_per_gb", "server CPU per GB", "s/GB", "lower", true},
	{"server_rcvbuf_drops", "server socket overflow drops", "pkts", "lower", false},
	{"rtt_idle_p50_us", "RTT idle p50", "µs", "lower", true},
	{"rtt_paced_p50_us", "RTT at paced load p50", "µs", "lower", false},
	{"rtt_paced_p99_us", "RTT at paced load p99", "µs", "lower", true},
	{"paced_loss_pct", "loss at paced load", "%", "lower", false},
	{"rtt_load_p50_us", "RTT flat out p50", "µs", "lower", false},
	{"rtt_load_p99_us", "RTT flat out p99", "µs", "lower", false},
}

var bigMetrics = []metricDef{
	{"connected", "sessions connected", "", "higher", false},
	{"alive_after_hold", "sessions alive after hold", "", "higher", false},
	{"handshakes_per_s", "handshakes/s (ramp)", "1/s", "higher", true},
	{"cpu_ms_per_handshake", "server CPU per handshake", "ms", "lower", true},
	{"rss_kib_per_session", "server RSS per idle session", "KiB", "lower", true},
	{"mbps", "aggregate throughput", "Mbit/s", "higher", true},
	{"min_session_mbps", "slowest session", "Mbit/s", "higher", false},
}

// scaleMetrics have no openvpn column (cvpn only); none is charted, as the chart draws ratios.
var scaleMetrics = []metricDef{
	{"connected", "sessions connected", "", "higher", false},
	{"alive_after_hold", "sessions alive after hold", "", "higher", false},
	{"ramp_s", "ramp", "s", "lower", false},
	{"handshakes_per_s", "handshakes/s (ramp)", "1/s", "higher", false},
	{"handshake_p50_ms", "connect time p50", "ms", "lower", false},
	{"handshake_p90_ms", "connect time p90", "ms", "lower", false},
	{"handshake_p99_ms", "connect time p99", "ms", "lower", false},
	{"handshake_max_ms", "connect time max", "ms", "lower", false},
	{"cpu_ms_per_handshake", "server CPU per handshake", "ms", "lower", false},
	{"echo_p50_us", "gateway echo RTT while holding p50", "µs", "lower", false},
	{"echo_p90_us", "gateway echo RTT while holding p90", "µs", "lower", false},
	{"echo_p99_us", "gateway echo RTT while holding p99", "µs", "lower", false},
	{"echo_max_us", "gateway echo RTT while holding max", "µs", "lower", false},
	{"echo_loss_pct", "gateway echo loss", "%", "lower", false},
	{"rss_kib_per_session", "server RSS per session (after ramp)", "KiB", "lower", false},
	{"rss_held_kib_per_session", "server RSS per session (after hold)", "KiB", "lower", false},
	{"server_rss_mib", "server RSS (after hold)", "MiB", "lower", false},
	{"load_rss_mib", "load generator RSS", "MiB", "lower", false},
	{"load_rss_kib_per_session", "load generator RSS per session", "KiB", "lower", false},
	{"load_generators", "load generator processes", "", "", false},
}

var limitMetrics = []metricDef{
	{"limit_mbps", "configured limit", "Mbit/s", "", false},
	{"offered_mbps", "offered per session", "Mbit/s", "", false},
	{"session_mbps_mean", "per-session mean", "Mbit/s", "", false},
	{"session_mbps_min", "per-session min", "Mbit/s", "", false},
	{"session_mbps_max", "per-session max", "Mbit/s", "", false},
	{"deviation_pct", "mean |rate - limit| / limit", "%", "lower", false},
}

// harness is one run in progress.
type harness struct {
	cfg  HarnessConfig
	fx   *Fixtures
	labs map[ServerKind]*Lab
	tmp  string
	res  *Results
	dco  string // what the stock server said about data channel offload
}

// RunHarness runs the side-by-side benchmark. It always removes what it created; ctx ending
// (SIGINT) stops it at the next step with what was measured so far.
func RunHarness(ctx context.Context, cfg HarnessConfig) (*Results, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := checkRoot(); err != nil {
		return nil, err
	}
	for _, bin := range []string{"openvpn", "iperf3", "ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("bench: %s not found (apt-get install openvpn iperf3 iproute2 iptables)", bin)
		}
	}
	start := time.Now()
	h := &harness{cfg: cfg, labs: map[ServerKind]*Lab{}}
	var err error
	if h.tmp, err = os.MkdirTemp("", "cvpn-bench-"); err != nil {
		return nil, err
	}
	defer os.RemoveAll(h.tmp)
	if h.fx, err = WriteFixtures(h.tmp, FixtureOptions{LimitMbps: cfg.LimitMbps, OpenVPNExtra: cfg.OpenVPNExtra, CVPNExtra: cfg.CVPNExtra}); err != nil {
		return nil, err
	}
	h.res = &Results{Date: start.UTC(), Machine: describeMachine(), Config: map[string]any{
		"rounds": cfg.Rounds, "scenarios": cfg.Scenarios, "servers": cfg.Servers, "sessions": cfg.Sessions, "paced_mbps": cfg.PacedMbps,
		"traffic_seconds": cfg.Duration.Seconds(), "iperf_seconds": cfg.IperfSeconds,
		"big": cfg.Big, "big_openvpn": cfg.BigOpenVPN, "big_hold_seconds": cfg.BigHold.Seconds(),
		"limit_mbps": cfg.LimitMbps, "limit_sessions": cfg.LimitSessions, "limit_offered_mbps": cfg.LimitOffered,
		"scale": cfg.Scale, "scale_hold_seconds": cfg.ScaleHold.Seconds(), "scale_echoes_per_second": cfg.ScaleEchoRate,
		"scale_client_cidr": ScaleClientCIDR.String(), "sources": cfg.Sources, "sessions_per_process": cfg.SessionsPerProcess,
		"client_cidr": h.fx.ClientCIDR.String(), "packet_size": 1400,
		"openvpn_config": readFile(h.fx.OpenVPNConfig), "cvpn_config": readFile(h.fx.CVPNConfig),
	}}
	ipv6 := slices.Contains(cfg.Scenarios, ScenarioIperfIPv6)
	if ipv6 {
		h.res.Config["openvpn_ipv6_config"] = readFile(h.fx.OpenVPNIPv6Config)
		h.res.Config["cvpn_ipv6_config"] = readFile(h.fx.CVPNIPv6Config)
		h.res.Config["client_ipv6_cidr"] = netlab.ClientIPv6CIDR.String()
		h.res.Config["vpc_ipv6_prefix"] = netlab.VPCPrefixIPv6.String()
	}
	defer func() {
		for _, l := range h.labs {
			l.Close()
		}
	}()
	for _, kind := range cfg.Servers {
		l, err := NewLab(ctx, kind, h.fx, LabOptions{Sources: cfg.Sources, IPv6: ipv6})
		if err != nil {
			return nil, err
		}
		h.labs[kind] = l
		sink, err := l.Start("sink", l.Net.VPC, cfg.Self, "sink", "--quiet", "--listen", SinkAddr.String())
		if err != nil {
			return nil, err
		}
		if err := sink.WaitForContext(ctx, "sink listening", 10*time.Second); err != nil {
			return nil, err
		}
	}
	for _, kind := range cfg.Servers {
		h.logf("lab ready: %s in namespace %s", kind, h.labs[kind].Net.Server)
	}

	kinds := cfg.Servers
	only := func(ks ...ServerKind) []ServerKind {
		var out []ServerKind
		for _, k := range ks {
			if slices.Contains(kinds, k) {
				out = append(out, k)
			}
		}
		return out
	}
	for _, sc := range cfg.Scenarios {
		switch sc {
		case ScenarioIperf:
			h.rounds(ctx, ScenarioIperf, kinds, cfg.Rounds, func(ctx context.Context, kind ServerKind, m *Measurement) error {
				return h.iperf(ctx, kind, false, m)
			})
		case ScenarioIperfIPv6:
			h.rounds(ctx, ScenarioIperfIPv6, kinds, cfg.Rounds, func(ctx context.Context, kind ServerKind, m *Measurement) error {
				return h.iperf(ctx, kind, true, m)
			})
		case ScenarioSessions:
			for _, n := range cfg.Sessions {
				h.rounds(ctx, fmt.Sprintf("sessions-%d", n), kinds, cfg.Rounds, func(ctx context.Context, kind ServerKind, m *Measurement) error {
					return h.sessions(ctx, kind, n, m)
				})
			}
		case ScenarioLimit:
			h.rounds(ctx, "limit", only(CVPN), cfg.Rounds, h.limit)
		case ScenarioBig:
			ks := only(CVPN)
			if cfg.BigOpenVPN {
				ks = kinds
			}
			h.rounds(ctx, fmt.Sprintf("big-%d", cfg.Big), ks, cfg.BigRounds, h.big)
		case ScenarioScale:
			// The stock server needs about 143 KiB per session (big-10000): 100,000 would
			// not fit beside the load generator.
			h.rounds(ctx, fmt.Sprintf("scale-%d", cfg.Scale), only(CVPN), 1, h.scale)
		}
		if ctx.Err() != nil {
			break
		}
	}
	h.res.Seconds = time.Since(start).Seconds()
	h.res.Retable()
	h.res.Notes = h.notes()
	if ctx.Err() != nil {
		return h.res, fmt.Errorf("bench: interrupted after %s: %w", time.Since(start).Round(time.Second), ctx.Err())
	}
	return h.res, nil
}

// saveLog writes a process's output into LogDir, if set.
func (h *harness) saveLog(name, out string) {
	if h.cfg.LogDir == "" {
		return
	}
	if err := os.MkdirAll(h.cfg.LogDir, 0o755); err == nil {
		_ = os.WriteFile(filepath.Join(h.cfg.LogDir, name+".log"), []byte(out), 0o644)
	}
}

func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(h.cfg.Out, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// rounds runs one scenario: for each round, each server in turn (A/B/A/B), each on a fresh
// server process.
func (h *harness) rounds(ctx context.Context, scenario string, kinds []ServerKind, n int, f func(context.Context, ServerKind, *Measurement) error) {
	for r := 1; r <= n; r++ {
		for _, kind := range kinds {
			if ctx.Err() != nil {
				return
			}
			m := Measurement{Scenario: scenario, Server: kind, Round: r, Metrics: map[string]float64{}}
			t0 := time.Now()
			if err := f(ctx, kind, &m); err != nil {
				m.Error = err.Error()
				h.logf("%-16s %-7s round %d: FAILED after %s: %v", scenario, kind, r, time.Since(t0).Round(time.Second), err)
			} else {
				h.logf("%-16s %-7s round %d: %s (%s)", scenario, kind, r, brief(&m), time.Since(t0).Round(time.Second))
			}
			h.res.Measurements = append(h.res.Measurements, m)
		}
	}
}

// brief is a progress line's summary of a measurement.
func brief(m *Measurement) string {
	keys := []string{"up_mbps", "up_cpu_s_per_gb", "down_mbps", "down_cpu_s_per_gb", "connected", "handshakes_per_s",
		"cpu_ms_per_handshake", "rss_kib_per_session", "mbps", "loss_pct", "rtt_load_p50_us", "alive_after_hold", "session_mbps_mean", "deviation_pct"}
	var parts []string
	for _, k := range keys {
		if v, ok := m.Metrics[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%s", k, fmtNum(v)))
		}
	}
	return strings.Join(parts, " ")
}

// udpRcvbufErrors reads the UDP receive-buffer drop counters of namespace ns (/proc/net/snmp
// and /proc/net/snmp6 are per namespace): datagrams the kernel dropped because the server's
// socket was full. A datagram that arrived over IPv6 counts in Udp6RcvbufErrors, even on a
// socket that takes both families, so the two are added.
func udpRcvbufErrors(ctx context.Context, ns string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "cat", "/proc/net/snmp").Output()
	if err != nil {
		return 0, err
	}
	v4, err := parseSNMPRcvbufErrors(string(out))
	if err != nil {
		return 0, err
	}
	// Without IPv6 in the namespace there is no snmp6 and nothing to add.
	out6, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "cat", "/proc/net/snmp6").Output()
	if err != nil {
		return v4, nil
	}
	v6, err := parseSNMP6RcvbufErrors(string(out6))
	if err != nil {
		return 0, err
	}
	return v4 + v6, nil
}

// parseSNMPRcvbufErrors reads RcvbufErrors from /proc/net/snmp's pair of Udp lines (names,
// then values).
func parseSNMPRcvbufErrors(snmp string) (uint64, error) {
	var names []string
	for line := range strings.SplitSeq(snmp, "\n") {
		rest, ok := strings.CutPrefix(line, "Udp: ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(f) {
				return strconv.ParseUint(f[i], 10, 64)
			}
		}
	}
	return 0, errors.New("bench: no Udp RcvbufErrors in /proc/net/snmp")
}

// parseSNMP6RcvbufErrors reads Udp6RcvbufErrors from /proc/net/snmp6 (one "name value" a line).
func parseSNMP6RcvbufErrors(snmp6 string) (uint64, error) {
	for line := range strings.SplitSeq(snmp6, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "Udp6RcvbufErrors" {
			return strconv.ParseUint(f[1], 10, 64)
		}
	}
	return 0, errors.New("bench: no Udp6RcvbufErrors in /proc/net/snmp6")
}

// withServer starts the lab's server, runs f with its pid, and stops it; a server that died
// during f turns into an error with the end of its output.
func (h *harness) withServer(ctx context.Context, kind ServerKind, limit bool, m *Measurement, f func(pid int) error) error {
	return h.withServerOpts(ctx, kind, ServerOptions{CVPNBin: h.cfg.CVPNBin, Limit: limit}, m, f)
}

func (h *harness) withServerOpts(ctx context.Context, kind ServerKind, o ServerOptions, m *Measurement, f func(pid int) error) error {
	l := h.labs[kind]
	srv, err := l.StartServer(ctx, o)
	if err != nil {
		return err
	}
	if kind == OpenVPN && h.dco == "" {
		for line := range strings.SplitSeq(srv.Output(), "\n") {
			if strings.Contains(strings.ToLower(line), "dco") {
				h.dco = strings.TrimSpace(line)
				break
			}
		}
	}
	drops0, _ := udpRcvbufErrors(ctx, l.Net.Server)
	ferr := f(srv.PID())
	if drops1, err := udpRcvbufErrors(ctx, l.Net.Server); err == nil && m != nil {
		m.Metrics["server_rcvbuf_drops"] = float64(drops1 - drops0)
	}
	died := srv.Exited()
	_ = srv.Stop()
	h.saveLog(fmt.Sprintf("%s-%d", kind, time.Now().UnixNano()), srv.Output())
	if died {
		return fmt.Errorf("%s exited during the measurement (%v); its output ends:\n%s", kind, ferr, tail(srv.Output(), 3000))
	}
	return ferr
}

// iperf runs iperf3 up and down through one stock client's tunnel; ipv6 runs the dual-stack
// configuration with IPv6 both as transport and inside the tunnel.
func (h *harness) iperf(ctx context.Context, kind ServerKind, ipv6 bool, m *Measurement) error {
	l := h.labs[kind]
	o := ServerOptions{CVPNBin: h.cfg.CVPNBin, IPv6: ipv6}
	return h.withServerOpts(ctx, kind, o, m, func(pid int) error {
		start, target := l.StartStockClient, iperfIPv4
		if ipv6 {
			start, target = l.StartStockClient6, iperfIPv6
		}
		cl, err := start(ctx, fmt.Sprintf("%s-%s-%d", m.Scenario, kind, m.Round))
		if err != nil {
			return err
		}
		defer func() { _ = cl.Stop() }()
		for i, dir := range []string{"upload", "download"} {
			r, prof, err := h.iperfOnce(ctx, l, pid, target, 5201+i, dir == "download", m.Round)
			if p := prof(); p != nil {
				m.Profiles = append(m.Profiles, *p)
			}
			if err != nil {
				return fmt.Errorf("iperf3 %s: %w", dir, err)
			}
			m.Iperf = append(m.Iperf, r)
			p := "up"
			if dir == "download" {
				p = "down"
			}
			m.Metrics[p+"_mbps"] = r.Mbps
			m.Metrics[p+"_cpu_s_per_gb"] = r.CPUSecPerGB
		}
		return nil
	})
}

// iperfTarget is the VPC host's address iperf3 runs to and what names its CPU profiles.
type iperfTarget struct {
	host    netip.Addr
	flag    string  // iperf3's family flag
	phase   string  // profile phases are <phase>-upload and <phase>-download
	segment float64 // TCP payload of a full-sized segment
}

// adminSocket is the admin API socket of the cvpn that the target's configuration starts.
func (t iperfTarget) adminSocket(fx *Fixtures) string {
	if t.host.Is6() {
		return fx.AdminSocketIPv6
	}
	return fx.AdminSocket
}

var (
	iperfIPv4 = iperfTarget{host: netlab.VPCHost, flag: "-4", phase: ScenarioIperf, segment: tcpSegment}
	iperfIPv6 = iperfTarget{host: netlab.VPCHostIPv6, flag: "-6", phase: ScenarioIperfIPv6, segment: tcpSegment6}
)

// iperfOnce runs one iperf3 TCP transfer between the stock client and the VPC host and reads
// the server process's CPU time around it.
//
// For cvpn it also profiles the server from the second second to the second last: prof, called
// once the transfer ended, waits for the profile and returns it with its cost per packet (nil
// when not profiled).
func (h *harness) iperfOnce(ctx context.Context, l *Lab, pid int, to iperfTarget, port int, reverse bool, round int) (r IperfResult, prof func() *CPUProfile, err error) {
	r = IperfResult{Direction: "upload"}
	if reverse {
		r.Direction = "download"
	}
	prof = func() *CPUProfile { return nil }
	srv, err := l.Start("iperf3 server", l.Net.VPC, "iperf3", "-s", "-1", "--forceflush", "-p", strconv.Itoa(port), "-B", to.host.String())
	if err != nil {
		return r, prof, err
	}
	defer srv.Kill()
	if err := srv.WaitForContext(ctx, "Server listening", 10*time.Second); err != nil {
		return r, prof, err
	}
	args := []string{"iperf3", to.flag, "-c", to.host.String(), "-p", strconv.Itoa(port), "-t", strconv.Itoa(h.cfg.IperfSeconds),
		"-J", "--connect-timeout", "5000"}
	if reverse {
		args = append(args, "-R")
	}
	before, err := SampleProc(pid)
	if err != nil {
		return r, prof, err
	}
	cctx, cancel := context.WithTimeout(ctx, time.Duration(h.cfg.IperfSeconds+30)*time.Second)
	defer cancel()
	// The profile leaves out the first second (TCP's slow start) and the last.
	profFrom, profSec := 1.0, h.cfg.IperfSeconds-2
	wait := h.profileAsync(ctx, l.Kind, pid, to.adminSocket(h.fx), time.Second, profSec)
	out, err := exec.CommandContext(cctx, "ip", append([]string{"netns", "exec", l.StockNS}, args...)...).Output()
	after, serr := SampleProc(pid)
	if err != nil {
		return r, prof, fmt.Errorf("%w: %s", err, tail(string(out), 1500))
	}
	if serr != nil {
		return r, prof, serr
	}
	var rep struct {
		Intervals []struct {
			Sum struct {
				Start float64 `json:"start"`
				End   float64 `json:"end"`
				Bytes int64   `json:"bytes"`
			} `json:"sum"`
		} `json:"intervals"`
		End struct {
			SumSent struct {
				Retransmits int64 `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Bytes         int64   `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return r, prof, fmt.Errorf("iperf3 output: %w: %s", err, tail(string(out), 500))
	}
	if rep.Error != "" {
		return r, prof, errors.New(rep.Error)
	}
	if wait != nil {
		// The data packets in the profile's window: the bytes of iperf3's one-second
		// intervals inside it, in full-sized TCP segments.
		var bytes int64
		for _, iv := range rep.Intervals {
			if iv.Sum.Start >= profFrom-0.01 && iv.Sum.End <= profFrom+float64(profSec)+0.01 {
				bytes += iv.Sum.Bytes
			}
		}
		prof = func() *CPUProfile {
			return h.analyze(ctx, wait, to.phase+"-"+r.Direction, round, float64(bytes)/to.segment,
				fmt.Sprintf("iperf3 bytes in the window / %g (TCP segments; ACKs not counted)", to.segment))
		}
	}
	r.Bytes = rep.End.SumReceived.Bytes
	r.Mbps = rep.End.SumReceived.BitsPerSecond / 1e6
	r.Retransmits = rep.End.SumSent.Retransmits
	r.ServerCPU = (after.CPU - before.CPU).Seconds()
	r.ServerRSSKiB = after.RSSKiB
	if r.Bytes > 0 {
		r.CPUSecPerGB = r.ServerCPU / (float64(r.Bytes) / 1e9)
	}
	return r, prof, nil
}

// tcpSegment and tcpSegment6 are the TCP payload of a full-sized segment through the stock
// client's tunnel (MTU 1500 less 20 bytes of IPv4 or 40 of IPv6, 20 of TCP and 12 of
// timestamps).
const (
	tcpSegment  = 1448
	tcpSegment6 = 1428
)

// profileAsync starts a CPU profile of cvpn (kind CVPN only, unless profiles are off) of
// seconds after delay, through the admin API at socket; the returned function waits for it. It returns nil when no profile is
// taken.
func (h *harness) profileAsync(ctx context.Context, kind ServerKind, pid int, socket string, delay time.Duration, seconds int) func() ([]byte, float64, error) {
	if kind != CVPN || h.cfg.NoProfile || seconds < 1 {
		return nil
	}
	type result struct {
		b   []byte
		cpu float64 // the server's CPU seconds over the profile (/proc)
		err error
	}
	ch := make(chan result, 1)
	go func() {
		if err := sleepCtx(ctx, delay); err != nil {
			ch <- result{err: err}
			return
		}
		s0, _ := SampleProc(pid)
		b, err := FetchProfile(ctx, socket, seconds)
		s1, _ := SampleProc(pid)
		ch <- result{b, (s1.CPU - s0.CPU).Seconds(), err}
	}()
	return func() ([]byte, float64, error) { r := <-ch; return r.b, r.cpu, r.err }
}

// analyze waits for a profile, keeps the first round's bytes for the results directory, and
// computes its cost per packet; a profile that failed is logged and yields nil.
func (h *harness) analyze(ctx context.Context, wait func() ([]byte, float64, error), phase string, round int, packets float64, from string) *CPUProfile {
	b, cpu, err := wait()
	if err == nil {
		return h.analyzeBytes(ctx, b, phase, round, packets, from, cpu)
	}
	h.logf("cpu profile %s: %v", phase, err)
	return nil
}

func (h *harness) analyzeBytes(ctx context.Context, b []byte, phase string, round int, packets float64, from string, serverCPU float64) *CPUProfile {
	path := filepath.Join(h.tmp, fmt.Sprintf("%s-%d.pprof", phase, round))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		h.logf("cpu profile %s: %v", phase, err)
		return nil
	}
	if round == 1 {
		if h.res.ProfileData == nil {
			h.res.ProfileData = map[string][]byte{}
		}
		h.res.ProfileData[phase] = b
	}
	if h.cfg.GoBin == "" {
		h.logf("cpu profile %s: no go command to read it (HarnessConfig.GoBin, --go)", phase)
		return &CPUProfile{Phase: phase, Packets: packets, PacketsFrom: from}
	}
	p, err := AnalyzeProfile(ctx, h.cfg.GoBin, path, phase, packets, from)
	if err != nil {
		h.logf("cpu profile %s: %v", phase, err)
		return nil
	}
	if serverCPU > 0 {
		p.addServerCPU(serverCPU)
	}
	return p
}

// loadArgs are the flags of one `cvpn-bench load` run in the bench namespace.
type loadArgs struct {
	sessions  int
	duration  time.Duration
	hold      time.Duration
	rateMbps  float64
	pacedMbps float64
	paced     time.Duration // 0: the load generator's default
	probeRate float64       // 0: the load generator's default
	warmup    time.Duration
	// profileOut, when set, has the load generator profile cvpn over the measured phase into
	// this file.
	profileOut string
	// rampProfileOut, when set, has it profile cvpn over rampProfileSec seconds of the ramp
	// into this file.
	rampProfileOut string
	rampProfileSec int
	echoRate       float64 // gateway echoes per second while holding
	// One of several load generators of a run: its first session's index, the barrier they
	// meet at after their ramps, the handshakes each keeps in flight (0: the default), and
	// every sample kept for merging.
	first       int
	barrierDir  string
	parties     int
	concurrency int
	raw         bool
	rampTimeout time.Duration
}

// runLoad runs the load generator as a process in the lab's bench namespace and reads its
// JSON report.
func (h *harness) runLoad(ctx context.Context, kind ServerKind, pid int, a loadArgs) (*LoadReport, error) {
	l := h.labs[kind]
	out := filepath.Join(h.tmp, fmt.Sprintf("load-%s-%d.json", kind, time.Now().UnixNano()))
	args := []string{h.cfg.Self, "load", "--quiet",
		"--server", l.BenchServer.String(), "--sink", SinkAddr.String(),
		"--ca", h.fx.CACertFile, "--issuer-cert", h.fx.CACertFile, "--issuer-key", h.fx.CAKeyFile,
		"--tls-crypt", h.fx.TLSCryptFile, "--server-pid", strconv.Itoa(pid),
		"--sessions", strconv.Itoa(a.sessions), "--duration", a.duration.String(), "--hold", a.hold.String(),
		"--rate-mbps", strconv.FormatFloat(a.rateMbps, 'f', -1, 64), "--json", out,
		"--paced-mbps", strconv.FormatFloat(a.pacedMbps, 'f', -1, 64),
	}
	if a.warmup > 0 {
		args = append(args, "--warmup", a.warmup.String())
	}
	if a.paced > 0 {
		args = append(args, "--paced-duration", a.paced.String())
	}
	if a.probeRate > 0 {
		args = append(args, "--probe-rate", strconv.FormatFloat(a.probeRate, 'f', -1, 64))
	}
	if a.profileOut != "" || a.rampProfileOut != "" {
		args = append(args, "--profile-socket", h.fx.AdminSocket)
	}
	if a.profileOut != "" {
		args = append(args, "--profile-out", a.profileOut)
	}
	if a.rampProfileOut != "" {
		args = append(args, "--profile-ramp", strconv.Itoa(a.rampProfileSec), "--profile-ramp-out", a.rampProfileOut)
	}
	if l.Sources > 0 {
		args = append(args, "--sources", strconv.Itoa(l.Sources))
	}
	if a.echoRate > 0 {
		args = append(args, "--hold-echo-rate", strconv.FormatFloat(a.echoRate, 'f', -1, 64))
	}
	if a.first > 0 {
		args = append(args, "--first", strconv.Itoa(a.first))
	}
	if a.barrierDir != "" {
		args = append(args, "--barrier-dir", a.barrierDir, "--barrier-parties", strconv.Itoa(a.parties))
	}
	if a.concurrency > 0 {
		args = append(args, "--concurrency", strconv.Itoa(a.concurrency))
	}
	if a.raw {
		args = append(args, "--raw-samples")
	}
	if a.rampTimeout > 0 {
		args = append(args, "--ramp-timeout", a.rampTimeout.String())
	}
	// Bounds: OpenVPN's reset limiter (and cvpn's copy of it) admits 10 new sessions a second
	// after a burst of 100, so a ramp can take N/10 s; then the phases; then closing.
	limit := time.Duration(a.sessions)*150*time.Millisecond + a.duration + a.hold + 3*time.Minute
	if a.rampTimeout > 0 {
		// Identities, the ramp, the last handshakes, the hold, closing.
		limit = min(limit, 2*time.Minute+a.rampTimeout+time.Minute+a.duration+a.hold+3*time.Minute)
	}
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	p, err := l.Start("load", l.BenchNS, args...)
	if err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- p.Wait(context.Background()) }()
	var werr error
	select {
	case werr = <-exited:
	case <-cctx.Done():
		// SIGTERM first: the load generator reports what it measured before it ends.
		_ = p.Stop()
		werr = fmt.Errorf("load: %w", cctx.Err())
	}
	h.saveLog(fmt.Sprintf("load-%s-%d", kind, time.Now().UnixNano()), p.Output())
	b, rerr := os.ReadFile(out)
	if rerr != nil {
		return nil, fmt.Errorf("load generator (%v) wrote no report; its output ends:\n%s", werr, tail(p.Output(), 2000))
	}
	var rep LoadReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("load report: %w", err)
	}
	if werr != nil {
		return &rep, fmt.Errorf("load generator: %v; its output ends:\n%s", werr, tail(p.Output(), 2000))
	}
	return &rep, nil
}

func (h *harness) sessions(ctx context.Context, kind ServerKind, n int, m *Measurement) error {
	return h.withServer(ctx, kind, false, m, func(pid int) error {
		a := loadArgs{sessions: n, duration: h.cfg.Duration, pacedMbps: h.cfg.PacedMbps, warmup: time.Second}
		// cvpn is profiled in the flat-out phase of the largest session count.
		if kind == CVPN && !h.cfg.NoProfile && n == slices.Max(h.cfg.Sessions) {
			a.profileOut = filepath.Join(h.tmp, fmt.Sprintf("load-profile-%d.pprof", time.Now().UnixNano()))
		}
		rep, err := h.runLoad(ctx, kind, pid, a)
		m.Load = rep
		if rep != nil {
			sessionMetricsOf(rep, m.Metrics)
			if t := rep.Traffic; a.profileOut != "" && t != nil {
				if b, rerr := os.ReadFile(a.profileOut); rerr == nil {
					if p := h.analyzeBytes(ctx, b, m.Scenario, m.Round, t.ProfilePackets,
						"packets the sink received in the window (1400-byte UDP, flat out)", t.ProfileServerCPU); p != nil {
						m.Profiles = append(m.Profiles, *p)
					}
				} else {
					h.logf("cpu profile %s: none (%s)", m.Scenario, t.ProfileError)
				}
			}
		}
		return err
	})
}

func sessionMetricsOf(rep *LoadReport, out map[string]float64) {
	out["connected"] = float64(rep.SessionsConnected)
	out["handshakes_per_s"] = rep.HandshakesPerSecond
	out["handshake_p50_ms"] = rep.HandshakeMs.P50
	out["handshake_p99_ms"] = rep.HandshakeMs.P99
	// Per-session memory and CPU need enough sessions to rise above a process's fixed costs
	// and the 10 ms CPU tick.
	if p := rep.ServerProc; p != nil && rep.SessionsConnected >= 64 {
		out["cpu_ms_per_handshake"] = p.CPUPerHSMs
		out["rss_kib_per_session"] = p.RSSPerSessKB
		if p.CPUPerGB > 0 {
			out["cpu_s_per_gb"] = p.CPUPerGB
		}
	}
	if t := rep.Traffic; t != nil {
		out["mbps"] = t.Mbps
		out["pps"] = t.PPS
		out["loss_pct"] = 100 * t.Loss
		out["rtt_idle_p50_us"] = t.RTTIdleUs.P50
		if t.PacedMbps > 0 {
			out["rtt_paced_p50_us"] = t.RTTPacedUs.P50
			out["rtt_paced_p99_us"] = t.RTTPacedUs.P99
			out["paced_loss_pct"] = 100 * t.PacedLoss
		}
		out["rtt_load_p50_us"] = t.RTTLoadUs.P50
		out["rtt_load_p99_us"] = t.RTTLoadUs.P99
		out["min_session_mbps"] = t.PerSessionMbps.Min
	}
}

func (h *harness) limit(ctx context.Context, kind ServerKind, m *Measurement) error {
	return h.withServer(ctx, kind, true, m, func(pid int) error {
		// Two seconds of warm-up spend the buckets' burst (300 ms at the limit) before the
		// count starts; one probe per session per second keeps probes out of the rate.
		n := h.cfg.LimitSessions
		rep, err := h.runLoad(ctx, kind, pid, loadArgs{sessions: n, duration: h.cfg.Duration, rateMbps: h.cfg.LimitOffered,
			warmup: 2 * time.Second, probeRate: float64(n)})
		m.Load = rep
		if rep == nil || rep.Traffic == nil {
			return err
		}
		t := rep.Traffic
		m.Metrics["limit_mbps"] = h.cfg.LimitMbps
		m.Metrics["offered_mbps"] = h.cfg.LimitOffered
		m.Metrics["session_mbps_mean"] = t.PerSessionMbps.Mean
		m.Metrics["session_mbps_min"] = t.PerSessionMbps.Min
		m.Metrics["session_mbps_max"] = t.PerSessionMbps.Max
		m.Metrics["deviation_pct"] = 100 * math.Abs(t.PerSessionMbps.Mean-h.cfg.LimitMbps) / h.cfg.LimitMbps
		return err
	})
}

// rampProfileSeconds is how much of the big scenario's ramp is profiled, from a second in: at
// the 500-800 handshakes a second of this machine the 10,000-session ramp lasts over 12 s.
const rampProfileSeconds = 5

func (h *harness) big(ctx context.Context, kind ServerKind, m *Measurement) error {
	return h.withServer(ctx, kind, false, m, func(pid int) error {
		a := loadArgs{sessions: h.cfg.Big, hold: h.cfg.BigHold, duration: 5 * time.Second}
		// cvpn's CPU per handshake is explained by a profile of the ramp.
		if kind == CVPN && !h.cfg.NoProfile {
			a.rampProfileOut = filepath.Join(h.tmp, fmt.Sprintf("ramp-profile-%d.pprof", time.Now().UnixNano()))
			a.rampProfileSec = rampProfileSeconds
		}
		rep, err := h.runLoad(ctx, kind, pid, a)
		m.Load = rep
		if rep != nil {
			sessionMetricsOf(rep, m.Metrics)
			m.Metrics["alive_after_hold"] = float64(rep.SessionsAlive)
			if a.rampProfileOut != "" {
				if b, rerr := os.ReadFile(a.rampProfileOut); rerr == nil && rep.RampProfileHandshakes > 0 {
					if p := h.analyzeBytes(ctx, b, m.Scenario+"-ramp", m.Round, float64(rep.RampProfileHandshakes),
						"handshakes completed in the window (TLS 1.3, tls-crypt, an ECDSA P-256 client certificate each)", rep.RampProfileServerCPU); p != nil {
						m.Profiles = append(m.Profiles, *p)
					}
				} else {
					h.logf("cpu profile %s-ramp: none (%d handshakes in the window; %s)", m.Scenario, rep.RampProfileHandshakes, rep.RampProfileError)
				}
			}
		}
		return err
	})
}

// scale holds many sessions against cvpn: connect-time percentiles, gateway echo round trips
// while holding, the server's RSS per held session and the load generators'. A process has
// a limited number of open files (one socket per session), so the sessions are split over
// load generators of at most SessionsPerProcess each; they ramp together (handshakes in flight
// shared out as one load generator would keep them), meet after their ramps, and hold together.
func (h *harness) scale(ctx context.Context, kind ServerKind, m *Measurement) error {
	return h.withServerOpts(ctx, kind, ServerOptions{CVPNBin: h.cfg.CVPNBin, Scale: true}, m, func(pid int) error {
		n := h.cfg.Scale
		parties := (n + h.cfg.SessionsPerProcess - 1) / h.cfg.SessionsPerProcess
		dir, err := os.MkdirTemp(h.tmp, "barrier-")
		if err != nil {
			return err
		}
		before, err := SampleProc(pid)
		if err != nil {
			return err
		}
		reps := make([]*LoadReport, parties)
		errs := make([]error, parties)
		var wg sync.WaitGroup
		for k := range parties {
			first, count := k*n/parties, (k+1)*n/parties-k*n/parties
			wg.Go(func() {
				reps[k], errs[k] = h.runLoad(ctx, kind, pid, loadArgs{sessions: count, hold: h.cfg.ScaleHold,
					echoRate: h.cfg.ScaleEchoRate / float64(parties), first: first, barrierDir: dir, parties: parties,
					concurrency: max(8, 64/parties), raw: true, rampTimeout: h.cfg.ScaleRampTimeout})
				// One that ended before the barrier must not hold the others there.
				if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("ramped-%d", first))); err != nil {
					_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("ramped-exit-%d", first)), nil, 0o644)
				}
			})
		}
		wg.Wait()
		rep := mergeLoadReports(reps, before)
		m.Load = rep
		if rep != nil {
			scaleMetricsOf(rep, m.Metrics)
			m.Metrics["load_generators"] = float64(parties)
		}
		return errors.Join(errs...)
	})
}

// mergeLoadReports makes one report of the reports of load generators that ramped and held
// together against the server sampled in before (nil reports are of ones that failed):
// sessions and echoes add up, percentiles come from every sample (RawSamples), the ramp ends
// with the last one, and the server's memory is the largest any of them read after the common
// barrier.
func mergeLoadReports(reps []*LoadReport, before ProcSample) *LoadReport {
	var out *LoadReport
	var hs, echoes []float64
	var rampEnd, cpuEnd, loadGrowth float64
	for _, r := range reps {
		if r == nil {
			continue
		}
		if out == nil {
			out = &LoadReport{Server: r.Server, Sources: r.Sources, HoldSeconds: r.HoldSeconds}
		}
		out.SessionsRequested += r.SessionsRequested
		out.SessionsConnected += r.SessionsConnected
		out.ConnectFailures += r.ConnectFailures
		out.SessionsAlive += r.SessionsAlive
		out.SessionsFailed += r.SessionsFailed
		for reason, c := range r.FailureReasons {
			if out.FailureReasons == nil {
				out.FailureReasons = map[string]int{}
			}
			out.FailureReasons[reason] += c
		}
		out.RampSeconds = max(out.RampSeconds, r.RampSeconds)
		if r.HandshakesPerSecond > 0 {
			rampEnd = max(rampEnd, float64(r.SessionsConnected)/r.HandshakesPerSecond)
		}
		hs = append(hs, r.HandshakeSamplesMs...)
		echoes = append(echoes, r.HoldEchoSamplesUs...)
		out.HoldEchoes += r.HoldEchoes
		out.HoldEchoReplies += r.HoldEchoReplies
		out.LoadRSSKiB += r.LoadRSSKiB
		loadGrowth += r.LoadRSSPerSessionKiB * float64(r.SessionsConnected)
		if p := r.ServerProc; p != nil {
			if out.ServerProc == nil {
				out.ServerProc = &ServerProc{PID: p.PID, Name: p.Name, RSSBeforeKiB: before.RSSKiB}
			}
			q := out.ServerProc
			q.RSSRampKiB = max(q.RSSRampKiB, p.RSSRampKiB)
			q.RSSHoldKiB = max(q.RSSHoldKiB, p.RSSHoldKiB)
			q.RSSEndKiB = max(q.RSSEndKiB, p.RSSEndKiB)
			cpuEnd = max(cpuEnd, p.CPUAtRampEnd)
		}
	}
	if out == nil {
		return nil
	}
	if rampEnd > 0 {
		out.HandshakesPerSecond = float64(out.SessionsConnected) / rampEnd
	}
	out.HandshakeMs = summarize(hs)
	if out.HoldEchoes > 0 {
		sum := summarize(echoes)
		out.HoldRTTUs = &sum
		out.HoldEchoLoss = max(0, 1-float64(out.HoldEchoReplies)/float64(out.HoldEchoes))
	}
	conn := float64(max(1, out.SessionsConnected))
	if q := out.ServerProc; q != nil {
		q.RSSPerSessKB = float64(q.RSSRampKiB-q.RSSBeforeKiB) / conn
		if q.RSSHoldKiB > 0 {
			q.RSSHeldPerSessKB = float64(q.RSSHoldKiB-q.RSSBeforeKiB) / conn
		}
		q.CPUAtRampEnd = cpuEnd
		q.CPURampSec = cpuEnd - before.CPU.Seconds()
		q.CPUPerHSMs = 1e3 * q.CPURampSec / conn
	}
	// The load generators' growth over their sessions (identities issued before are not in it).
	out.LoadRSSPerSessionKiB = loadGrowth / conn
	return out
}

func scaleMetricsOf(rep *LoadReport, out map[string]float64) {
	out["connected"] = float64(rep.SessionsConnected)
	out["alive_after_hold"] = float64(rep.SessionsAlive)
	out["handshakes_per_s"] = rep.HandshakesPerSecond
	out["ramp_s"] = rep.RampSeconds
	out["handshake_p50_ms"] = rep.HandshakeMs.P50
	out["handshake_p90_ms"] = rep.HandshakeMs.P90
	out["handshake_p99_ms"] = rep.HandshakeMs.P99
	out["handshake_max_ms"] = rep.HandshakeMs.Max
	if e := rep.HoldRTTUs; e != nil {
		out["echo_p50_us"] = e.P50
		out["echo_p90_us"] = e.P90
		out["echo_p99_us"] = e.P99
		out["echo_max_us"] = e.Max
		out["echo_loss_pct"] = 100 * rep.HoldEchoLoss
	}
	if p := rep.ServerProc; p != nil {
		out["cpu_ms_per_handshake"] = p.CPUPerHSMs
		out["rss_kib_per_session"] = p.RSSPerSessKB
		if p.RSSHoldKiB > 0 {
			out["rss_held_kib_per_session"] = p.RSSHeldPerSessKB
			out["server_rss_mib"] = float64(p.RSSHoldKiB) / 1024
		}
	}
	if rep.LoadRSSKiB > 0 {
		out["load_rss_mib"] = float64(rep.LoadRSSKiB) / 1024
		out["load_rss_kib_per_session"] = rep.LoadRSSPerSessionKiB
	}
}

// Retable recomputes the table from the measurements (for results written by an older
// version, or after editing the metric definitions).
func (r *Results) Retable() {
	r.Table = tableOf(r.Measurements)
	r.CPUCost = costTableOf(r.Measurements)
}

// tableOf computes the medians and ratios, in scenario order.
func tableOf(ms []Measurement) []Row {
	var rows []Row
	var scenarios []string
	for _, m := range ms {
		if !slices.Contains(scenarios, m.Scenario) {
			scenarios = append(scenarios, m.Scenario)
		}
	}
	for _, sc := range scenarios {
		defs := sessionMetrics
		switch {
		case sc == ScenarioIperf || sc == ScenarioIperfIPv6:
			defs = iperfMetrics
		case sc == "limit":
			defs = limitMetrics
		case strings.HasPrefix(sc, "big-"):
			defs = bigMetrics
		case strings.HasPrefix(sc, "scale-"):
			defs = scaleMetrics
		}
		for _, d := range defs {
			row := Row{Scenario: sc, Metric: d.label, Unit: d.unit, Better: d.better, Chart: d.chart}
			for _, m := range ms {
				if m.Scenario != sc || m.Error != "" {
					continue
				}
				v, ok := m.Metrics[d.key]
				if !ok {
					continue
				}
				if m.Server == CVPN {
					row.CVPNRuns = append(row.CVPNRuns, v)
				} else {
					row.OVPNRuns = append(row.OVPNRuns, v)
				}
			}
			if len(row.CVPNRuns) == 0 && len(row.OVPNRuns) == 0 {
				continue
			}
			if len(row.CVPNRuns) > 0 {
				row.CVPN = ptr(median(row.CVPNRuns))
			}
			if len(row.OVPNRuns) > 0 {
				row.OpenVPN = ptr(median(row.OVPNRuns))
			}
			if row.CVPN != nil && row.OpenVPN != nil && *row.OpenVPN != 0 {
				row.Ratio = ptr(*row.CVPN / *row.OpenVPN)
			}
			rows = append(rows, row)
		}
	}
	return rows
}

func ptr(v float64) *float64 { return &v }

// notes are what a reader of the numbers must know.
func (h *harness) notes() []string {
	n := []string{
		"ratio = cvpn / openvpn (medians over rounds); 'better' says which direction favours cvpn",
		"both servers run as shipped: UDP 443, tls-crypt, AES-256-GCM, topology subnet, keepalive 10/60; openvpn's SNAT is kernel MASQUERADE (iptables) in its own namespaces",
		"the load generator, the sink, the stock client, iperf3 and the server share the machine's cores, so absolute numbers are lower than on separate hosts; only the ratios are the point",
		"server CPU is utime+stime of the server process from /proc/<pid>/stat (10 ms ticks); openvpn's kernel work (TUN, MASQUERADE, conntrack) is not in it, cvpn's userspace NAT is",
		fmt.Sprintf("the load generator's sessions come from %d source addresses spread over /24s of %s (session i from address i mod %d): cvpn limits reset replies and pending handshakes per address and per /24 (tunnel/session), the stock server's connect-freq-initial (100 per 10 s) is global and refunds completed handshakes", h.cfg.Sources, SourcePrefix, h.cfg.Sources),
		"server CPU per handshake is the server's CPU over the ramp divided by the sessions, so a long ramp also charges the upkeep (keepalives, timers) of the sessions already up",
		"sessions scenarios: 2 s of probes only (RTT idle), 3 s at a paced aggregate load both servers carry (RTT at paced load), then the measured phase flat out (1400-byte UDP packets round-robin over the sessions; loss is what the server could not take, its RTT is mostly queueing in full socket buffers)",
	}
	if h.dco != "" {
		n = append(n, "stock server data channel: "+h.dco)
	}
	if slices.Contains(h.cfg.Scenarios, ScenarioIperfIPv6) {
		n = append(n, fmt.Sprintf("iperf-ipv6 is iperf over IPv6 end to end: the stock client dials the server's IPv6 address (proto udp6), gets an IPv6 address of %s inside the VPC link's %s (ifconfig-ipv6) and runs iperf3 -6 to the VPC host's %s, which sees the client's own address: cvpn routes it and answers neighbour discovery for it (no snat_ipv6_address), the stock server's kernel routes it (server-ipv6, a route back on the VPC host); TCP segments carry 1428 bytes instead of 1448",
			netlab.ClientIPv6CIDR, netlab.VPCPrefixIPv6, netlab.VPCHostIPv6))
	}
	if c := ipv6Comparison(h.res.Table); c != nil {
		n = append(n, "cvpn/openvpn ratios over IPv4 (iperf) and IPv6 (iperf-ipv6) in the same run: "+strings.Join(c, "; "))
	}
	if slices.Contains(h.cfg.Scenarios, ScenarioScale) {
		n = append(n, fmt.Sprintf("scale-%d runs against cvpn only (client_cidr_block %s): the stock server needs about 143 KiB per session (big-10000), 14 GiB for 100,000, which would not fit beside the load generator; the sessions are held %s with keepalives (ping 10 s) while %g ICMP echoes a second go round-robin to the sessions' gateway address, which cvpn answers in its data plane; connect time is each session's whole handshake (reset, cookie, TLS, key-method 2, push); server RSS per session is (RSS after the ramp or the hold - RSS before) / sessions",
			h.cfg.Scale, ScaleClientCIDR, h.cfg.ScaleHold, h.cfg.ScaleEchoRate))
	}
	if len(h.res.CPUCost) > 0 {
		n = append(n, "cvpn CPU per packet: CPU profiles (admin API /debug/pprof/profile, 100 Hz samples) of iperf3's seconds 1 to N-1 in each direction, of the largest sessions run's measured phase and of seconds 1 to 6 of the big scenario's ramp (its unit is a handshake completed in the window, not a packet); each sample is filed under the innermost frame of its stack that names a category (a syscall under its caller: recvmmsg/sendmmsg/ppoll are UDP, read/write the TUN device); iperf packets are 1448-byte TCP segments (ACKs not counted), sessions packets the 1400-byte UDP packets the sink received; 'not in the profile's samples' is the server's CPU time over the window by /proc less what the samples hold; the profile's own cost (100 Hz SIGPROF) is in the numbers; the first round's profiles are the .pprof files next to the JSON")
	}
	return n
}

// ipv6Comparison puts the ratios of iperf-ipv6 beside those of iperf, one string per charted
// metric: IPv6 should cost cvpn what IPv4 does, relative to the stock server. It is nil when
// the table lacks either scenario's ratios.
func ipv6Comparison(rows []Row) []string {
	ratio := func(sc, metric string) *float64 {
		for _, r := range rows {
			if r.Scenario == sc && r.Metric == metric {
				return r.Ratio
			}
		}
		return nil
	}
	var parts []string
	for _, d := range iperfMetrics {
		if d.better == "" || !d.chart {
			continue
		}
		v4, v6 := ratio(ScenarioIperf, d.label), ratio(ScenarioIperfIPv6, d.label)
		if v4 == nil || v6 == nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.2fx over IPv4, %.2fx over IPv6", d.label, *v4, *v6))
	}
	return parts
}

// Table renders the rows as text.
func (r *Results) TableText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s %-38s %12s %12s %9s  %s\n", "scenario", "metric", "cvpn", "openvpn", "ratio", "better")
	last := ""
	for _, row := range r.Table {
		sc := row.Scenario
		if sc == last {
			sc = ""
		}
		last = row.Scenario
		metric := row.Metric
		if row.Unit != "" {
			metric += " (" + row.Unit + ")"
		}
		f := func(p *float64) string {
			if p == nil {
				return "-"
			}
			return fmtNum(*p)
		}
		ratio := "-"
		if row.Ratio != nil {
			ratio = fmt.Sprintf("%.2fx", *row.Ratio)
		}
		fmt.Fprintf(&b, "%-16s %-38s %12s %12s %9s  %s\n", sc, metric, f(row.CVPN), f(row.OpenVPN), ratio, row.Better)
	}
	return b.String()
}

func fmtNum(v float64) string {
	a := math.Abs(v)
	switch {
	case v == math.Trunc(v) && a < 1e7:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// describeMachine reads what identifies this machine and the software under test.
func describeMachine() Machine {
	m := Machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				f := strings.Fields(v)
				if len(f) > 0 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					m.MemTotalMiB = kb / 1024
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	first := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		line, _, _ := strings.Cut(string(out), "\n")
		return strings.TrimSpace(line)
	}
	m.OpenVPN = first("openvpn", "--version")
	m.Iperf3 = first("iperf3", "--version")
	m.CVPNCommit = first("git", "describe", "--always", "--dirty", "--abbrev=12")
	if strings.Contains(m.CVPNCommit, "fatal") {
		m.CVPNCommit = ""
	}
	return m
}
