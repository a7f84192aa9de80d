package endpoint

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/tunnel/host"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
)

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// scrapeMetrics fetches url and returns the value of each unlabelled series and of each
// labelled one by its full name ("cvpn_ip_pool_addresses{state=\"in_use\"}").
func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d %s", resp.StatusCode, body)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// TestMetricsServed: with metrics on, a started endpoint serves /metrics on its address with the
// engine's sessions, traffic, pool, NAT and CRL, and stops serving when Run returns.
func TestMetricsServed(t *testing.T) {
	l := newLab(t)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	l.writeFile("endpoint.yaml", []byte(baseFile+"metrics: {listen_address: \""+addr+"\"}\n"))
	l.start()
	url := "http://" + addr + "/metrics"
	m := scrapeMetrics(t, url)
	if m["cvpn_active_connections"] != 0 || m["cvpn_ingress_bytes_total"] != 0 || m[`cvpn_ip_pool_addresses{state="free"}`] != 1021 {
		t.Errorf("before any client: active %v, ingress %v, free %v", m["cvpn_active_connections"], m["cvpn_ingress_bytes_total"],
			m[`cvpn_ip_pool_addresses{state="free"}`])
	}
	// AWS's CrlDaysToExpiry, as the recording rule cvpn:crl_days_to_expiry computes it.
	if d := (m["cvpn_crl_next_update_timestamp_seconds"] - float64(time.Now().UnixMilli())/1e3) / 86400; d < 0.99 || d > 1 {
		t.Errorf("cvpn_crl_next_update_timestamp_seconds is %v days away, want just under 1 (a CRL of 24 hours)", d)
	}
	if _, ok := m["cvpn_crl_days_to_expiry"]; ok {
		t.Error("cvpn_crl_days_to_expiry is served: promtool refuses its unit; it is the recording rule cvpn:crl_days_to_expiry")
	}
	s, _ := l.connect(clientOptions{})
	l.ping(s, 1)
	l.ping(s, 2)
	m = scrapeMetrics(t, url)
	for series, want := range map[string]float64{
		"cvpn_active_connections":                                           1,
		`cvpn_ip_pool_addresses{state="in_use"}`:                            1,
		`cvpn_ip_pool_addresses{state="free"}`:                              1020,
		"cvpn_nat_mappings":                                                 1,
		`cvpn_sessions{cipher="AES-256-GCM",family="ipv4",transport="udp"}`: 1,
		"cvpn_handshake_duration_seconds_count":                             1,
		`cvpn_authentication_failures_total{reason="unknown_ca"}`:           0,
		"cvpn_ingress_packets_total":                                        2,
		"cvpn_egress_packets_total":                                         2,
	} {
		if got, ok := m[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if m["cvpn_ingress_bytes_total"] < 2*29 || m["cvpn_egress_bytes_total"] < 2*29 {
		t.Errorf("ingress %v, egress %v bytes: less than two 29-byte packets", m["cvpn_ingress_bytes_total"], m["cvpn_egress_bytes_total"])
	}
	// The client leaves: its traffic stays in the totals.
	before := m["cvpn_ingress_bytes_total"]
	s.Close()
	deadline := time.Now().Add(10 * time.Second)
	for m["cvpn_active_connections"] != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		m = scrapeMetrics(t, url)
	}
	if m["cvpn_active_connections"] != 0 || m["cvpn_ingress_bytes_total"] < before {
		t.Errorf("after the client left: active %v, ingress %v (was %v)", m["cvpn_active_connections"], m["cvpn_ingress_bytes_total"], before)
	}
	l.run.Stop()
	<-l.done
	if _, err := http.Get(url); err == nil {
		t.Error("metrics still served after Run returned")
	}
}

// TestMetricsAddressInUse: a metrics.listen_address another socket holds fails Start, naming the
// key, and the host state is removed again.
func TestMetricsAddressInUse(t *testing.T) {
	l := newLab(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	l.writeFile("endpoint.yaml", []byte(baseFile+"metrics: {listen_address: \""+taken.Addr().String()+"\"}\n"))
	ep, err := Load(l.path, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	h := &fakeHost{tun: tuntest.NewChannelTUN(), closed: make(chan struct{})}
	_, err = Start(ep, Options{Host: func(host.Config, *slog.Logger) (Host, error) { return h, nil }, Network: socktest.NewNetwork()})
	if err == nil || !strings.Contains(err.Error(), "metrics.listen_address") || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Start = %v, want metrics.listen_address named as in use", err)
	}
	select {
	case <-h.closed:
	default:
		t.Error("a failed Start left the host state")
	}
}

// TestMetricsReload: a reload turns metrics on (with the totals since start), moves them to
// another address (the old one closes), is refused whole when the new address is taken (the
// old one serves on), and turns them off.
func TestMetricsReload(t *testing.T) {
	l := newLab(t)
	l.start()
	s, _ := l.connect(clientOptions{})
	l.ping(s, 1)
	l.ping(s, 2)

	a := "127.0.0.1:" + strconv.Itoa(freePort(t))
	l.writeFile("endpoint.yaml", []byte(baseFile+"metrics: {listen_address: \""+a+"\"}\n"))
	rep, err := l.run.Reload(l.path)
	if err != nil || len(rep.Changed) != 1 || rep.Changed[0] != "metrics.listen_address" {
		t.Fatalf("turning metrics on: %+v, %v", rep, err)
	}
	m := scrapeMetrics(t, "http://"+a+"/metrics")
	if m["cvpn_active_connections"] != 1 || m["cvpn_ingress_packets_total"] != 2 || m["cvpn_handshake_duration_seconds_count"] != 1 {
		t.Errorf("metrics turned on after the client came: active %v, ingress packets %v, handshakes %v; want 1, 2, 1",
			m["cvpn_active_connections"], m["cvpn_ingress_packets_total"], m["cvpn_handshake_duration_seconds_count"])
	}

	b := "127.0.0.1:" + strconv.Itoa(freePort(t))
	l.writeFile("endpoint.yaml", []byte(baseFile+"metrics: {listen_address: \""+b+"\"}\n"))
	if _, err := l.run.Reload(l.path); err != nil {
		t.Fatalf("moving metrics: %v", err)
	}
	if _, err := http.Get("http://" + a + "/metrics"); err == nil {
		t.Errorf("the old metrics address %s still serves after the move", a)
	}
	if m := scrapeMetrics(t, "http://"+b+"/metrics"); m["cvpn_active_connections"] != 1 {
		t.Errorf("after the move: active %v", m["cvpn_active_connections"])
	}

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	l.writeFile("endpoint.yaml", []byte(baseFile+"metrics: {listen_address: \""+taken.Addr().String()+"\"}\ndescription: with it\n"))
	_, err = l.run.Reload(l.path)
	var re *ReloadError
	if !errors.As(err, &re) || re.Reason != reasonMetrics || !strings.Contains(err.Error(), "metrics.listen_address") {
		t.Fatalf("reload to a taken metrics address = %v, want refused naming metrics.listen_address", err)
	}
	if got := l.run.Endpoint().Config; got.Description != "" || got.Metrics.ListenAddress.String() != b {
		t.Errorf("a refused reload applied: description %q, metrics %v", got.Description, got.Metrics.ListenAddress)
	}
	if m := scrapeMetrics(t, "http://"+b+"/metrics"); m["cvpn_active_connections"] != 1 {
		t.Errorf("after the refused move: active %v", m["cvpn_active_connections"])
	}

	// A reload that fails after the metrics opened closes them again: a listener that cannot open.
	c := "127.0.0.1:" + strconv.Itoa(freePort(t))
	busy, err := l.net.ListenPacket(netip.MustParseAddrPort("0.0.0.0:1194"))
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	l.writeFile("endpoint.yaml", []byte(strings.Replace(baseFile, "transport: [{protocol: udp, port: 443}]",
		"transport: [{protocol: udp, port: 443}, {protocol: udp, port: 1194}]", 1)+"metrics: {listen_address: \""+c+"\"}\n"))
	if _, err = l.run.Reload(l.path); !errors.As(err, &re) || re.Reason != reasonListener {
		t.Fatalf("reload with a busy listener = %v, want refused for the listener", err)
	}
	if _, err := http.Get("http://" + c + "/metrics"); err == nil {
		t.Errorf("the metrics address %s of a refused reload serves", c)
	}
	if m := scrapeMetrics(t, "http://"+b+"/metrics"); m["cvpn_active_connections"] != 1 {
		t.Errorf("after the refused reload: active %v", m["cvpn_active_connections"])
	}

	l.writeFile("endpoint.yaml", []byte(baseFile))
	if _, err := l.run.Reload(l.path); err != nil {
		t.Fatalf("turning metrics off: %v", err)
	}
	if _, err := http.Get("http://" + b + "/metrics"); err == nil {
		t.Errorf("metrics still served at %s after they were turned off", b)
	}
}
