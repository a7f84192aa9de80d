package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/pki"
)

// metricsAddr is where the endpoint under test serves /metrics, inside the server namespace;
// prometheusAddr is where the test's Prometheus listens, in the same namespace.
var (
	metricsAddr    = netip.MustParseAddrPort("127.0.0.1:9464")
	prometheusAddr = netip.MustParseAddrPort("127.0.0.1:9090")
)

// httpIn is an HTTP client whose connections are opened inside namespace ns.
func httpIn(ns string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			return netlab.DialTCPIn(ns, ap)
		}},
	}
}

// promQuery runs an instant query through Prometheus's HTTP API and returns the value of its
// one sample; ok is false when the result holds no sample.
func promQuery(t *testing.T, c *http.Client, query string) (v float64, ok bool) {
	t.Helper()
	resp, err := c.Get("http://" + prometheusAddr.String() + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		t.Fatalf("query %s: %v", query, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"` // [unix time, "value"]
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Status != "success" {
		t.Fatalf("query %s: %d %v %s", query, resp.StatusCode, err, body)
	}
	if r.Data.ResultType != "vector" || len(r.Data.Result) == 0 {
		return 0, false
	}
	if len(r.Data.Result) != 1 {
		t.Fatalf("query %s: %d samples, want one: %s", query, len(r.Data.Result), body)
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err = strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("query %s: value %q: %v", query, s, err)
	}
	return v, true
}

// waitQuery polls query until ok(value) holds and returns the value; it fails the test after
// timeout.
func waitQuery(t *testing.T, c *http.Client, query string, timeout time.Duration, ok func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, present := promQuery(t, c, query)
		if present && ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("query %s: %v (present %v) after %v", query, v, present, timeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// rulesFile is the recording rules cvpn ships for Prometheus.
const rulesFile = "../deploy/prometheus/cvpn-rules.yml"

// startPrometheus starts Debian's prometheus in namespace ns with its own configuration and data
// directory, scraping cvpn's metrics and evaluating cvpn's recording rules every second, and
// waits until it serves.
func startPrometheus(t *testing.T, lab *netlab.Lab, ns string) *netlab.Proc {
	t.Helper()
	dir := t.TempDir()
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: cvpn
    static_configs:
      - targets: [%q]
`, rules, metricsAddr.String())
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := lab.Start("prometheus", ns, "prometheus", "--config.file="+path, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+prometheusAddr.String(), "--log.level=warn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("prometheus output:\n%s", netlab.Tail(p.Output(), 40))
		}
	})
	c := httpIn(ns)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get("http://" + prometheusAddr.String() + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 30 s: %v\n%s", err, p.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// crlValidity is how long the CRL of TestPrometheusScrapesMetrics is valid from its start.
const crlValidity = 36 * time.Hour

// newSetupWithCRL is newSetup with a CRL of the lab CA in crl_file, valid crlValidity from now;
// it returns the CRL's next update and when it was made.
func newSetupWithCRL(t *testing.T, o netlab.EndpointOptions) (s *setup, made, nextUpdate time.Time) {
	t.Helper()
	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	s = &setup{t: t, lab: lab}
	t.Cleanup(func() {
		lab.Close()
		if t.Failed() && s.srv != nil {
			t.Logf("cvpn output:\n%s", s.srv.Output())
		}
	})
	if s.ep, err = netlab.WriteEndpoint(t.TempDir(), o); err != nil {
		t.Fatal(err)
	}
	made = time.Now()
	crl, err := pki.NewCRL(s.ep.CA, made, crlValidity)
	if err != nil {
		t.Fatal(err)
	}
	crlFile := filepath.Join(s.ep.Dir, "crl.pem")
	if err := pki.WriteCRLs([]*pki.CRL{crl}, crlFile); err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(s.ep.Config)
	if err != nil {
		t.Fatal(err)
	}
	const auth = "certificate: {client_root_ca_file: ca.crt}"
	if !bytes.Contains(file, []byte(auth)) {
		t.Fatalf("the lab's endpoint file has no %q to add crl_file to:\n%s", auth, file)
	}
	file = bytes.Replace(file, []byte(auth), []byte(fmt.Sprintf("certificate: {client_root_ca_file: ca.crt, crl_file: %q}", crlFile)), 1)
	if err := os.WriteFile(s.ep.Config, file, 0o600); err != nil {
		t.Fatal(err)
	}
	if s.srv, err = lab.Start("cvpn", lab.Server, cvpnBin, "serve", "--config", s.ep.Config); err != nil {
		t.Fatal(err)
	}
	if err := s.srv.WaitFor("cvpn listening", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return s, made, crl.List.NextUpdate
}

// TestPrometheusScrapesMetrics: a real Prometheus server scrapes cvpn's /metrics every second
// and evaluates cvpn's recording rules while a stock client pings through the tunnel; queries
// through Prometheus's HTTP API see one active connection, ingress bytes that grow, the target
// up, a foreign CA's client counted as an authentication failure by its reason, the CRL's next
// update and AWS's CrlDaysToExpiry as the rule cvpn:crl_days_to_expiry; promtool accepts cvpn's
// scrape without a remark.
func TestPrometheusScrapesMetrics(t *testing.T) {
	t.Parallel()
	for _, bin := range []string{"prometheus", "promtool"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: make deps installs it (apt-get install prometheus)", bin)
		}
	}
	s, crlMade, crlNext := newSetupWithCRL(t, netlab.EndpointOptions{TLSCrypt: true, Extra: "metrics: {listen_address: \"" + metricsAddr.String() + "\"}\n"})
	if err := s.srv.WaitFor("metrics listening", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	c := s.connect("alice", netlab.ProfileOptions{})
	s.ping(c, netlab.VPCHost.String())
	// Steady traffic for the rest of the test.
	if _, err := s.lab.Start("ping alice", c.ns, "ping", "-i", "0.2", "-s", "200", netlab.VPCHost.String()); err != nil {
		t.Fatal(err)
	}
	// A client of a foreign CA is refused: an authentication failure by reason.
	otherCA, err := pki.NewCA("someone else's CA", pki.ECDSAP256, 48*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	mallory := s.start("mallory", netlab.ProfileOptions{CA: otherCA})
	if err := s.srv.WaitFor(`msg="authentication refused"`, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	mallory.proc.Kill()
	startPrometheus(t, s.lab, s.lab.Server)
	api := httpIn(s.lab.Server)

	waitQuery(t, api, `up{job="cvpn"}`, 20*time.Second, func(v float64) bool { return v == 1 })
	waitQuery(t, api, "cvpn_active_connections", 20*time.Second, func(v float64) bool { return v == 1 })
	first := waitQuery(t, api, "cvpn_ingress_bytes_total", 20*time.Second, func(v float64) bool { return v > 0 })
	grown := waitQuery(t, api, "cvpn_ingress_bytes_total", 20*time.Second, func(v float64) bool { return v > first })
	// Pings of 200 bytes every 0.2 s: the rate over the last seconds is well above nothing.
	rate := waitQuery(t, api, "rate(cvpn_ingress_bytes_total[5s])", 20*time.Second, func(v float64) bool { return v > 200 })
	waitQuery(t, api, "cvpn_egress_packets_total", 20*time.Second, func(v float64) bool { return v > 0 })
	waitQuery(t, api, `cvpn_sessions{transport="udp"}`, 20*time.Second, func(v float64) bool { return v == 1 })
	waitQuery(t, api, `cvpn_ip_pool_addresses{state="in_use"}`, 20*time.Second, func(v float64) bool { return v == 1 })
	waitQuery(t, api, "cvpn_handshake_duration_seconds_count", 20*time.Second, func(v float64) bool { return v == 1 })
	waitQuery(t, api, `cvpn_authentication_failures_total{reason="unknown_ca"}`, 20*time.Second, func(v float64) bool { return v >= 1 })
	waitQuery(t, api, `cvpn_authentication_failures_total{reason="revoked"}`, 20*time.Second, func(v float64) bool { return v == 0 })
	waitQuery(t, api, `cvpn_packets_dropped_total{reason="tls_handshake_failed"}`, 20*time.Second, func(v float64) bool { return v >= 1 })
	t.Logf("ingress bytes %v then %v, rate %.0f B/s", first, grown, rate)

	// The CRL: its next update as scraped, and AWS's CrlDaysToExpiry through the recording rule,
	// just under the days the CRL had left when it was made (36 hours: 1.5).
	waitQuery(t, api, "cvpn_crl_next_update_timestamp_seconds", 20*time.Second, func(v float64) bool { return v == float64(crlNext.Unix()) })
	days := waitQuery(t, api, `cvpn:crl_days_to_expiry{job="cvpn"}`, 20*time.Second, func(v float64) bool { return v > 0 })
	const day = float64(24 * time.Hour)
	hi := float64(crlNext.Sub(crlMade)) / day
	lo := float64(time.Until(crlNext))/day - 1e-4 // the rule was evaluated before now
	if days > hi || days < lo {
		t.Errorf("cvpn:crl_days_to_expiry = %v, want in [%v, %v]: the days the CRL has left", days, lo, hi)
	}
	t.Logf("cvpn:crl_days_to_expiry %v (CRL of %v)", days, crlValidity)
	if v, ok := promQuery(t, api, "cvpn_crl_days_to_expiry"); ok {
		t.Errorf("cvpn_crl_days_to_expiry is scraped (%v): it is the recording rule cvpn:crl_days_to_expiry", v)
	}

	// promtool lints cvpn's own scrape: no remark at all, and it exits 0.
	resp, err := httpIn(s.lab.Server).Get("http://" + metricsAddr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	scrape, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(scrape, []byte("\ncvpn_crl_next_update_timestamp_seconds ")) {
		t.Errorf("the scrape promtool checks has no CRL metric:\n%s", scrape)
	}
	lint := exec.Command("promtool", "check", "metrics")
	lint.Stdin = bytes.NewReader(scrape)
	out, err := lint.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
