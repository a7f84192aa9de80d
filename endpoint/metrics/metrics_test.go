package metrics

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cvpn/cvpn/auth/connecthandler"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/session"
)

// fakeEngine is the engine's state as Sources reads it, set by the test.
type fakeEngine struct {
	mu       sync.Mutex
	sessions []tunnel.Status
}

func (f *fakeEngine) set(s ...tunnel.Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sessions = s
}

func (f *fakeEngine) list() []tunnel.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]tunnel.Status(nil), f.sessions...)
}

func status(id uint64, transport, cipher string, rxB, rxP, txB, txP uint64) tunnel.Status {
	return tunnel.Status{
		Info:    &tunnel.Info{ID: id, Transport: transport, Cipher: cipher, HandshakeDuration: 300 * time.Millisecond},
		Traffic: counters.TrafficSnapshot{RxBytes: rxB, RxPackets: rxP, TxBytes: txB, TxPackets: txP},
	}
}

// scrape fetches h's metrics in the text format and parses them.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	body := scrapeText(t, h)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse scrape: %v\n%s", err, body)
	}
	return fams
}

func scrapeText(t *testing.T, h http.Handler) []byte {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.Bytes()
}

// value returns the value of the series of name whose labels include labels (name=value
// pairs), and whether there is one.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

func want(t *testing.T, fams map[string]*dto.MetricFamily, w float64, name string, labels ...string) {
	t.Helper()
	got, ok := value(fams, name, labels...)
	if !ok {
		t.Errorf("%s%v: no such series", name, labels)
		return
	}
	if got != w {
		t.Errorf("%s%v = %v, want %v", name, labels, got, w)
	}
}

func testCRL(t *testing.T, now time.Time, validity time.Duration) *pki.CRLSet {
	t.Helper()
	ca, err := pki.NewCA("metrics test CA", pki.ECDSAP256, 365*24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := pki.NewCRL(ca, now, validity)
	if err != nil {
		t.Fatal(err)
	}
	set, err := pki.NewCRLSet([]*pki.CRL{crl}, []*x509.Certificate{ca.Cert}, now)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestScrapeAfterEvents(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	crl := testCRL(t, now, 10*24*time.Hour)
	eng := &fakeEngine{}
	m := New(Sources{
		Sessions:    eng.list,
		Drops:       func() map[string]uint64 { return map[string]uint64{"replay": 3, "no_route": 7} },
		Pool:        func() (int, int) { return 2, 8190 },
		NATMappings: func() int { return 5 },
		CRL:         func() *pki.CRLSet { return crl },
	})
	a := status(1, "UDPv4", "AES-256-GCM", 1000, 10, 2000, 20)
	b := status(2, "TCPv6_SERVER", "AES-256-GCM", 500, 5, 700, 7)
	b.Remote = netip.MustParseAddrPort("[fd31:1::2]:50000") // reached the endpoint over IPv6
	c := status(3, "udp", "CHACHA20-POLY1305", 40, 4, 60, 6)
	eng.set(a, b, c)
	for _, s := range []tunnel.Status{a, b, c} {
		m.Connected(s)
	}
	m.Refused(session.Attempt{Code: session.RefusedUnknownCA})
	m.Refused(session.Attempt{Code: session.RefusedUnknownCA})
	m.Refused(session.Attempt{Code: session.RefusedRevoked})
	// c ends with more traffic than last listed.
	eng.set(a, b)
	m.Disconnected(status(3, "udp", "CHACHA20-POLY1305", 50, 5, 80, 8), session.End{Time: now, Reason: "exit"})

	fams := scrape(t, m.Handler())
	want(t, fams, 2, "cvpn_active_connections")
	want(t, fams, 1000+500+50, "cvpn_ingress_bytes_total")
	want(t, fams, 10+5+5, "cvpn_ingress_packets_total")
	want(t, fams, 2000+700+80, "cvpn_egress_bytes_total")
	want(t, fams, 20+7+8, "cvpn_egress_packets_total")
	want(t, fams, 2, "cvpn_authentication_failures_total", "reason", "unknown_ca")
	want(t, fams, 1, "cvpn_authentication_failures_total", "reason", "revoked")
	want(t, fams, 0, "cvpn_authentication_failures_total", "reason", "no_shared_cipher")
	want(t, fams, 3, "cvpn_packets_dropped_total", "reason", "replay")
	want(t, fams, 7, "cvpn_packets_dropped_total", "reason", "no_route")
	want(t, fams, 2, "cvpn_ip_pool_addresses", "state", "in_use")
	want(t, fams, 8188, "cvpn_ip_pool_addresses", "state", "free")
	want(t, fams, 5, "cvpn_nat_mappings")
	want(t, fams, float64(now.Add(10*24*time.Hour).Unix()), "cvpn_crl_next_update_timestamp_seconds")
	if _, ok := fams["cvpn_crl_days_to_expiry"]; ok {
		t.Error("cvpn_crl_days_to_expiry is exported: it is the recording rule cvpn:crl_days_to_expiry now")
	}
	want(t, fams, 1, "cvpn_sessions", "transport", "udp", "family", "ipv4", "cipher", "AES-256-GCM")
	want(t, fams, 1, "cvpn_sessions", "transport", "tcp", "family", "ipv6", "cipher", "AES-256-GCM")
	if _, ok := value(fams, "cvpn_sessions", "cipher", "CHACHA20-POLY1305"); ok {
		t.Error("cvpn_sessions lists the ended session's cipher")
	}
	want(t, fams, 3, "cvpn_handshake_duration_seconds")
	h := fams["cvpn_handshake_duration_seconds"].Metric[0].Histogram
	if got := h.GetSampleSum(); got < 0.899 || got > 0.901 {
		t.Errorf("handshake duration sum = %v, want 0.9", got)
	}
	want(t, fams, 1, "cvpn_build_info")
	for name, aws := range map[string]string{
		"cvpn_active_connections": "ActiveConnectionsCount", "cvpn_authentication_failures_total": "AuthenticationFailures",
		"cvpn_crl_next_update_timestamp_seconds": "CrlDaysToExpiry", "cvpn_ingress_bytes_total": "IngressBytes",
		"cvpn_egress_bytes_total": "EgressBytes", "cvpn_ingress_packets_total": "IngressPackets",
		"cvpn_egress_packets_total": "EgressPackets",
	} {
		if f := fams[name]; f == nil || !strings.Contains(f.GetHelp(), "AWS/ClientVPN "+aws) {
			t.Errorf("HELP of %s does not name AWS/ClientVPN %s", name, aws)
		}
	}
	if _, ok := value(fams, "go_goroutines"); !ok {
		t.Error("no Go runtime metrics")
	}
}

// The traffic totals never fall back, whatever the order in which a session leaves the listing
// and its end is heard, and no session is counted twice.
func TestTotalsMonotonic(t *testing.T) {
	eng := &fakeEngine{}
	m := New(Sources{Sessions: eng.list})
	ingress := func() float64 {
		t.Helper()
		v, _ := value(scrape(t, m.Handler()), "cvpn_ingress_bytes_total")
		return v
	}
	steps := []struct {
		name string
		do   func()
		want float64
	}{
		{"none", func() {}, 0},
		{"one live", func() { eng.set(status(1, "udp", "AES-256-GCM", 100, 1, 0, 0)) }, 100},
		{"grows", func() { eng.set(status(1, "udp", "AES-256-GCM", 150, 2, 0, 0)) }, 150},
		// Torn down: out of the listing before its end is heard; counted as last seen.
		{"left, end not heard", func() { eng.set() }, 150},
		{"end heard", func() { m.Disconnected(status(1, "udp", "AES-256-GCM", 170, 3, 0, 0), session.End{}) }, 170},
		// Its end heard while a listing still holds it: counted once, at its final counters.
		{"second live", func() { eng.set(status(2, "tcp", "AES-256-GCM", 30, 1, 0, 0)) }, 200},
		{"end heard while listed", func() {
			m.Disconnected(status(2, "tcp", "AES-256-GCM", 40, 2, 0, 0), session.End{})
		}, 210},
		{"gone", func() { eng.set() }, 210},
		{"ended unseen", func() { m.Disconnected(status(3, "udp", "AES-256-GCM", 5, 1, 0, 0), session.End{}) }, 215},
	}
	for _, s := range steps {
		s.do()
		if got := ingress(); got != s.want {
			t.Errorf("%s: cvpn_ingress_bytes_total = %v, want %v", s.name, got, s.want)
		}
	}
	if len(m.endedIDs) != 0 || len(m.seen) != 0 {
		t.Errorf("state kept for gone sessions: ended %v, seen %v", m.endedIDs, m.seen)
	}
}

// Without a CRL, or without pool and NAT sources, those metrics are absent rather than zero.
func TestAbsentSources(t *testing.T) {
	m := New(Sources{CRL: func() *pki.CRLSet { return nil }})
	fams := scrape(t, m.Handler())
	for _, name := range []string{"cvpn_crl_next_update_timestamp_seconds", "cvpn_ip_pool_addresses", "cvpn_nat_mappings", "cvpn_active_connections"} {
		if _, ok := fams[name]; ok {
			t.Errorf("%s exported without its source", name)
		}
	}
	want(t, fams, 0, "cvpn_authentication_failures_total", "reason", "revoked")
}

// promtool, Prometheus's own linter, accepts a scrape with every cvpn metric in it without a
// remark, and exits 0.
func TestPromtoolCheckMetrics(t *testing.T) {
	now := time.Now()
	crl := testCRL(t, now, 30*24*time.Hour)
	eng := &fakeEngine{}
	eng.set(status(1, "udp", "AES-256-GCM", 1, 1, 1, 1))
	m := New(Sources{
		Sessions: eng.list, Drops: func() map[string]uint64 { return map[string]uint64{"replay": 1} },
		Pool: func() (int, int) { return 1, 10 }, NATMappings: func() int { return 0 },
		CRL: func() *pki.CRLSet { return crl },
	})
	m.Connected(eng.list()[0])
	m.Refused(session.Attempt{Code: session.RefusedNoSharedCipher})
	body := scrapeText(t, m.Handler())
	for _, name := range []string{"cvpn_crl_next_update_timestamp_seconds", "cvpn_active_connections", "cvpn_ip_pool_addresses",
		"cvpn_nat_mappings", "cvpn_packets_dropped_total", "cvpn_handshake_duration_seconds"} {
		if !bytes.Contains(body, []byte("\n# TYPE "+name+" ")) {
			t.Errorf("no %s in the scrape promtool checks", name)
		}
	}
	out, err := promtool(body)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// rulesFile is the recording rules shipped for Prometheus.
const rulesFile = "../../deploy/prometheus/cvpn-rules.yml"

// The shipped rules pass promtool check rules, and promtool's rule unit test evaluates
// cvpn:crl_days_to_expiry to AWS's CrlDaysToExpiry: a CRL whose next update is 10 days after
// the epoch has 9 days left one day after it, and its labels are kept.
func TestPromtoolRules(t *testing.T) {
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("promtool", "check", "rules", rules).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS: 1 rules found") {
		t.Fatalf("promtool check rules %s: %v\n%s", rules, err, out)
	}
	unit := filepath.Join(t.TempDir(), "cvpn-rules-test.yml")
	test := fmt.Sprintf(`rule_files: [%q]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'cvpn_crl_next_update_timestamp_seconds{job="cvpn",instance="vpn:9464"}'
        values: '864000x1500'
    promql_expr_test:
      - expr: cvpn:crl_days_to_expiry
        eval_time: 1d
        exp_samples:
          - labels: 'cvpn:crl_days_to_expiry{job="cvpn",instance="vpn:9464"}'
            value: 9
      - expr: cvpn:crl_days_to_expiry
        eval_time: 12h
        exp_samples:
          - labels: 'cvpn:crl_days_to_expiry{job="cvpn",instance="vpn:9464"}'
            value: 9.5
`, rules)
	if err := os.WriteFile(unit, []byte(test), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("promtool", "test", "rules", unit).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
}

// promtool runs "promtool check metrics" on a scrape and returns what it says.
func promtool(scrape []byte) (string, error) {
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = bytes.NewReader(scrape)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestListen(t *testing.T) {
	eng := &fakeEngine{}
	eng.set(status(1, "udp", "AES-256-GCM", 1, 1, 1, 1))
	m := New(Sources{Sessions: eng.list})
	srv, err := m.Listen(netip.MustParseAddrPort("127.0.0.1:0"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + srv.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("\ncvpn_active_connections 1\n")) {
		t.Errorf("GET /metrics: %d\n%s", resp.StatusCode, body)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + srv.Addr().String() + "/metrics"); err == nil {
		t.Error("still serving after Close")
	}
	if _, err := m.Listen(srv.Addr(), slog.New(slog.DiscardHandler)); err != nil {
		t.Errorf("the address is not free again after Close: %v", err)
	}
}

// Under churn (sessions growing, leaving the listing, their ends heard later) and concurrent
// scrapes, no scrape's totals fall below an earlier one's, and once all have ended the totals are
// exactly the sum of their final counters.
func TestTotalsMonotonicUnderChurn(t *testing.T) {
	eng := &fakeEngine{}
	m := New(Sources{Sessions: eng.list})
	const sessions, steps = 40, 25
	var wantIngress uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for id := uint64(1); id <= sessions; id++ {
			var rx uint64
			for i := 0; i < steps; i++ {
				rx += id
				eng.mu.Lock()
				eng.sessions = append(eng.sessions[:0:0], status(id, "udp", "AES-256-GCM", rx, uint64(i+1), 0, 0))
				eng.mu.Unlock()
				time.Sleep(100 * time.Microsecond) // scrapes see it live
			}
			eng.set()                        // torn down: out of the listing first,
			time.Sleep(2 * time.Millisecond) // a while before its end is heard
			rx += id                         // a last packet counted before the final snapshot
			m.Disconnected(status(id, "udp", "AES-256-GCM", rx, steps+1, 0, 0), session.End{})
			wantIngress += rx
		}
	}()
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last float64
			for {
				select {
				case <-done:
					return
				default:
				}
				mfs, err := m.Gatherer().Gather()
				if err != nil {
					t.Error(err)
					return
				}
				for _, f := range mfs {
					if f.GetName() != "cvpn_ingress_bytes_total" {
						continue
					}
					v := f.Metric[0].Counter.GetValue()
					if v < last {
						t.Errorf("cvpn_ingress_bytes_total fell from %v to %v", last, v)
					}
					last = v
				}
			}
		}()
	}
	<-done
	wg.Wait()
	v, _ := value(scrape(t, m.Handler()), "cvpn_ingress_bytes_total")
	if v != float64(wantIngress) {
		t.Errorf("cvpn_ingress_bytes_total = %v after all ended, want %v", v, wantIngress)
	}
}

// TestClientConnectHandlerMetrics: every outcome has a series from the start, and each call
// counts under its outcome and in the duration histogram; refusal codes of the admission
// pipeline are exported at 0 once prepared.
func TestClientConnectHandlerMetrics(t *testing.T) {
	m := New(Sources{})
	m.PrepareRefusals("invalid_credentials", "client-connect-handler-timed-out")
	fams := scrape(t, m.Handler())
	for _, o := range connecthandler.Outcomes() {
		want(t, fams, 0, "cvpn_client_connect_handler_calls_total", "outcome", o)
	}
	want(t, fams, 0, "cvpn_authentication_failures_total", "reason", "invalid_credentials")
	m.Observe(connecthandler.OutcomeAllowed, 20*time.Millisecond)
	m.Observe(connecthandler.ReasonTimedOut, 30*time.Second)
	m.Observe(connecthandler.ReasonTimedOut, 30*time.Second)
	fams = scrape(t, m.Handler())
	want(t, fams, 1, "cvpn_client_connect_handler_calls_total", "outcome", connecthandler.OutcomeAllowed)
	want(t, fams, 2, "cvpn_client_connect_handler_calls_total", "outcome", connecthandler.ReasonTimedOut)
	want(t, fams, 3, "cvpn_client_connect_handler_duration_seconds")
}

func TestPortalDownloads(t *testing.T) {
	m := New(Sources{})
	fams := scrape(t, m.Handler())
	want(t, fams, 0, "cvpn_portal_configuration_downloads_total", "transport", "udp")
	m.PortalDownload("tcp")
	m.PortalDownload("tcp")
	m.PortalDownload("bogus")
	fams = scrape(t, m.Handler())
	want(t, fams, 2, "cvpn_portal_configuration_downloads_total", "transport", "tcp")
	want(t, fams, 1, "cvpn_portal_configuration_downloads_total", "transport", "other")
}

// TestNodeLabel: a cluster node's metrics, every one (the runtime's and the process's too),
// carry node="name"; a single node's carry no node label.
func TestNodeLabel(t *testing.T) {
	src := Sources{
		Sessions:    func() []tunnel.Status { return []tunnel.Status{status(1, "udp", "AES-256-GCM", 1, 1, 1, 1)} },
		Drops:       func() map[string]uint64 { return map[string]uint64{"replay": 1} },
		Pool:        func() (int, int) { return 1, 10 },
		NATMappings: func() int { return 1 },
	}
	for _, node := range []string{"node-a", ""} {
		var opts []Option
		if node != "" {
			opts = append(opts, WithNode(node))
		}
		m := New(src, opts...)
		m.Refused(session.Attempt{Code: session.RefusedRevoked})
		m.Observe("allowed", time.Millisecond)
		fams := scrape(t, m.Handler())
		if len(fams) < 20 {
			t.Fatalf("node %q: only %d metric families", node, len(fams))
		}
		for name, f := range fams {
			for _, mt := range f.Metric {
				got, has := "", false
				for _, l := range mt.Label {
					if l.GetName() == "node" {
						got, has = l.GetValue(), true
					}
				}
				if has != (node != "") || got != node {
					t.Errorf("node %q: %s has node label %q (present %v)", node, name, got, has)
				}
			}
		}
		if node != "" {
			want(t, fams, 1, "cvpn_authentication_failures_total", "reason", "revoked", "node", node)
			want(t, fams, 1, "cvpn_active_connections", "node", node)
		}
	}
}
