package bench

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestScaleRowsAndChart: the scale scenario's report becomes cvpn-only rows, the chart carries
// them and the CPU per packet as text, and results files of the earlier schema still read.
func TestScaleRowsAndChart(t *testing.T) {
	rep := &LoadReport{SessionsConnected: 5, SessionsAlive: 5, HandshakesPerSecond: 100, RampSeconds: 0.05,
		HandshakeMs: Latency{P50: 10, P90: 20, P99: 30, Max: 40}, HoldRTTUs: &Latency{Count: 9, P50: 150, P99: 900},
		HoldEchoes: 9, ServerProc: &ServerProc{RSSPerSessKB: 14, RSSHoldKiB: 20480, RSSHeldPerSessKB: 15.5},
		LoadRSSKiB: 4096, LoadRSSPerSessionKiB: 40}
	m := Measurement{Scenario: "scale-5", Server: CVPN, Round: 1, Metrics: map[string]float64{}, Load: rep}
	scaleMetricsOf(rep, m.Metrics)
	_, traces, err := parseTraces(strings.NewReader(tracesText))
	if err != nil {
		t.Fatal(err)
	}
	prof := costOf("sessions-1000", 0, traces, 1000, "given")
	ramp := costOf("big-5-ramp", 0, traces, 2, "handshakes")
	r := &Results{Measurements: []Measurement{m, {Scenario: "sessions-1000", Server: CVPN, Round: 1, Profiles: []CPUProfile{*prof}},
		{Scenario: "big-5", Server: CVPN, Round: 1, Profiles: []CPUProfile{*ramp}}}}
	r.Retable()
	txt := r.TableText()
	for _, want := range []string{"connect time p99 (ms)", "gateway echo RTT while holding p99 (µs)", "server RSS per session (after hold) (KiB)", "15.5"} {
		if !strings.Contains(txt, want) {
			t.Errorf("table lacks %q:\n%s", want, txt)
		}
	}
	svg := r.SVG()
	for _, want := range []string{"cvpn scale-5: 5 sessions held, connect p50 10 ms p99 30 ms", "p99 900 µs", "15.5 KiB/session", "sessions-1000 100.00",
		"cvpn CPU per handshake (µs, from CPU profiles of the ramp): big-5-ramp 50000"} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart lacks %q", want)
		}
	}

	// A file of the earlier schema (no profiles, no cost table) reads and retables.
	var old Results
	if err := json.Unmarshal([]byte(`{"measurements":[{"scenario":"iperf","server":"cvpn","round":1,"metrics":{"up_mbps":900}}]}`), &old); err != nil {
		t.Fatal(err)
	}
	old.Retable()
	if len(old.Table) != 1 || len(old.CPUCost) != 0 || old.CostText() != "" {
		t.Errorf("old results: %d rows, %d cost rows", len(old.Table), len(old.CPUCost))
	}
}

// TestMergeLoadReports: reports of load generators that ramped and held together add up, their
// percentiles come from all samples, a failed one (nil) is left out.
func TestMergeLoadReports(t *testing.T) {
	before := ProcSample{RSSKiB: 1000, CPU: 2 * time.Second}
	a := &LoadReport{SessionsRequested: 3, SessionsConnected: 3, SessionsAlive: 3, HandshakesPerSecond: 3, // 1 s
		HandshakeSamplesMs: []float64{1, 2, 3}, HoldEchoes: 4, HoldEchoReplies: 4, HoldEchoSamplesUs: []float64{10, 20, 30, 40},
		ServerProc: &ServerProc{RSSRampKiB: 1400, RSSHoldKiB: 1500, CPUAtRampEnd: 3}, LoadRSSKiB: 100, LoadRSSPerSessionKiB: 10}
	b := &LoadReport{SessionsRequested: 3, SessionsConnected: 1, ConnectFailures: 2, FailureReasons: map[string]int{"x": 2},
		SessionsAlive: 1, HandshakesPerSecond: 0.5, // 2 s
		HandshakeSamplesMs: []float64{100}, HoldEchoes: 4, HoldEchoReplies: 2, HoldEchoSamplesUs: []float64{50, 60},
		ServerProc: &ServerProc{RSSRampKiB: 1380, RSSHoldKiB: 1480, CPUAtRampEnd: 4}, LoadRSSKiB: 50, LoadRSSPerSessionKiB: 20}
	r := mergeLoadReports([]*LoadReport{a, nil, b}, before)
	if r.SessionsRequested != 6 || r.SessionsConnected != 4 || r.ConnectFailures != 2 || r.FailureReasons["x"] != 2 || r.SessionsAlive != 4 {
		t.Errorf("sessions: %+v", r)
	}
	if r.HandshakesPerSecond != 2 || r.HandshakeMs.Count != 4 || r.HandshakeMs.Max != 100 {
		t.Errorf("ramp: %.2f/s, latency %+v; want 4 sessions over 2 s, 4 samples to 100 ms", r.HandshakesPerSecond, r.HandshakeMs)
	}
	if r.HoldRTTUs == nil || r.HoldRTTUs.Count != 6 || r.HoldEchoLoss != 0.25 {
		t.Errorf("echoes: %+v, loss %.2f", r.HoldRTTUs, r.HoldEchoLoss)
	}
	p := r.ServerProc
	if p.RSSPerSessKB != 100 || p.RSSHeldPerSessKB != 125 || p.CPURampSec != 2 || p.CPUPerHSMs != 500 {
		t.Errorf("server: %+v", p)
	}
	if r.LoadRSSKiB != 150 || r.LoadRSSPerSessionKiB != 12.5 {
		t.Errorf("load RSS %d KiB, %.2f per session; want 150, (30+20)/4", r.LoadRSSKiB, r.LoadRSSPerSessionKiB)
	}
	if mergeLoadReports([]*LoadReport{nil}, before) != nil {
		t.Error("no reports merged into one")
	}
}
