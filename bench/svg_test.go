package bench

import (
	"encoding/json"
	"strings"
	"testing"
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
	r := &Results{Measurements: []Measurement{m, {Scenario: "sessions-1000", Server: CVPN, Round: 1, Profiles: []CPUProfile{*prof}}}}
	r.Retable()
	txt := r.TableText()
	for _, want := range []string{"connect time p99 (ms)", "gateway echo RTT while holding p99 (µs)", "server RSS per session (after hold) (KiB)", "15.5"} {
		if !strings.Contains(txt, want) {
			t.Errorf("table lacks %q:\n%s", want, txt)
		}
	}
	svg := r.SVG()
	for _, want := range []string{"cvpn scale-5: 5 sessions held, connect p50 10 ms p99 30 ms", "p99 900 µs", "15.5 KiB/session", "sessions-1000 100.00"} {
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
