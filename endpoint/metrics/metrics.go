// Package metrics serves a running endpoint's Prometheus metrics: the AWS/ClientVPN CloudWatch
// metrics under Prometheus names (cvpn_active_connections for ActiveConnectionsCount, and so on)
// and what AWS lacks (drops by reason, handshake durations, pool and NAT use, sessions by
// transport and cipher, build info).
//
// It costs the packet path nothing: the traffic, drop, pool and NAT numbers are read from the
// engine's own counters when Prometheus scrapes (Metrics is a prometheus.Collector), and the
// session events (Metrics is a tunnel.Events) record only what ends with a session or never
// reaches the engine's tables: refusals, handshake durations, the final counters of ended
// sessions. It does not own the engine, the pool, the NAT table or the CRL; Sources reads them.
// On a cluster node every metric carries the node's name as a constant label (WithNode).
package metrics

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cvpn/cvpn/auth/connecthandler"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/session"
)

// Sources are where a scrape reads the engine's state. Each is called once per scrape, from
// the scraping goroutine; a nil one leaves its metrics out.
type Sources struct {
	// Sessions lists the established sessions with their live counters ((*tunnel.Server).Clients).
	Sessions func() []tunnel.Status
	// Drops are the drop counters by reason name ((*tunnel.Server).Drops).
	Drops func() map[string]uint64
	// Pool is the client address pool's use: addresses leased, addresses it can lease.
	Pool func() (inUse, capacity int)
	// NATMappings is the number of NAT mappings in the table.
	NATMappings func() int
	// CRL is the CRL set in force (nil: none).
	CRL func() *pki.CRLSet
}

// RefusalCodes are the reasons cvpn_authentication_failures_total is exported with from the
// start (at 0), so that a query or an alert on one of them has a series before it first happens.
var RefusalCodes = []session.RefusalCode{
	session.RefusedUnknownCA, session.RefusedRevoked, session.RefusedExpired, session.RefusedNoCertificate,
	session.RefusedCertificate, session.RefusedNoSharedCipher, session.RefusedPoolExhausted,
	session.RefusedByHook, session.RefusedKeyMethod, session.RefusedIdentity,
}

// HandshakeBuckets are the bounds of cvpn_handshake_duration_seconds: 10 ms to about 20 s, a
// LAN client to one that waits on a slow network or a user.
var HandshakeBuckets = prometheus.ExponentialBuckets(0.01, 2, 12)

// Metric descriptions. The HELP text names the AWS/ClientVPN metric where there is one.
var (
	descActive = prometheus.NewDesc("cvpn_active_connections",
		"Established client sessions (AWS/ClientVPN ActiveConnectionsCount).", nil, nil)
	descIngressBytes = prometheus.NewDesc("cvpn_ingress_bytes_total",
		"Bytes received from clients through the tunnel, ended sessions included (AWS/ClientVPN IngressBytes).", nil, nil)
	descEgressBytes = prometheus.NewDesc("cvpn_egress_bytes_total",
		"Bytes sent to clients through the tunnel, ended sessions included (AWS/ClientVPN EgressBytes).", nil, nil)
	descIngressPackets = prometheus.NewDesc("cvpn_ingress_packets_total",
		"Packets received from clients through the tunnel, ended sessions included (AWS/ClientVPN IngressPackets).", nil, nil)
	descEgressPackets = prometheus.NewDesc("cvpn_egress_packets_total",
		"Packets sent to clients through the tunnel, ended sessions included (AWS/ClientVPN EgressPackets).", nil, nil)
	// AWS's CrlDaysToExpiry is a duration in days, which Prometheus's conventions (and promtool)
	// refuse as a unit; the instant in seconds is exported instead, and the recording rule
	// cvpn:crl_days_to_expiry of deploy/prometheus/cvpn-rules.yml turns it into AWS's number.
	descCRLNextUpdate = prometheus.NewDesc("cvpn_crl_next_update_timestamp_seconds",
		"When the first CRL in force passes its next update (then its CA's clients are refused), in seconds since the epoch. "+
			"AWS/ClientVPN CrlDaysToExpiry is (cvpn_crl_next_update_timestamp_seconds - time()) / 86400: "+
			"the recording rule cvpn:crl_days_to_expiry.", nil, nil)
	descDropped = prometheus.NewDesc("cvpn_packets_dropped_total",
		"Packets and handshakes dropped, by reason.", []string{"reason"}, nil)
	descPool = prometheus.NewDesc("cvpn_ip_pool_addresses",
		"Client addresses of the pool, by state (in_use, free).", []string{"state"}, nil)
	descNAT = prometheus.NewDesc("cvpn_nat_mappings",
		"NAT mappings in use, idle ones not yet removed included.", nil, nil)
	descSessions = prometheus.NewDesc("cvpn_sessions",
		"Established client sessions by transport (udp, tcp), the address family the client reached the endpoint over (ipv4, ipv6) and data cipher.",
		[]string{"transport", "family", "cipher"}, nil)
	descBuild = prometheus.NewDesc("cvpn_build_info",
		"Always 1; the labels say which cvpn build runs.", []string{"version", "revision", "goversion"}, nil)
)

// Metrics keeps and exports an endpoint's metrics. Register it in tunnel.Config.Events to hear
// sessions; it is a prometheus.Collector that reads Sources at each scrape.
type Metrics struct {
	src     Sources
	reg     *prometheus.Registry
	version string
	rev     string

	authFailures *prometheus.CounterVec
	handshake    prometheus.Histogram
	handlerCalls *prometheus.CounterVec
	handlerTime  prometheus.Histogram
	downloads    *prometheus.CounterVec

	// mu guards the fields below, and serialises scrapes so that each one's traffic totals are
	// at least the last one's (a scrape lists the sessions with mu held, then sends without).
	mu sync.Mutex
	// ended is the sum of the final counters of the sessions that ended.
	ended counters.TrafficSnapshot
	// endedIDs are sessions whose final counters are in ended, until a scrape no longer lists
	// them: a listing taken just before a session's end must not count it twice.
	endedIDs map[uint64]struct{}
	// seen are the counters of each session at the last scrape that listed it. A session that
	// has left the listing but whose end has not been heard yet is counted at its last-seen
	// value, so that the totals never fall back.
	seen map[uint64]counters.TrafficSnapshot
}

// Option sets up New.
type Option func(*options)

type options struct {
	node string
}

// WithNode labels every metric (the Go runtime's and the process's too) node="name": a cluster
// node's (config.Cluster.NodeName), so that one Prometheus scraping every node of an endpoint
// tells their series apart, and sum without(node) (...) gives the endpoint's. A single node's
// metrics have no such label; "" leaves it out.
func WithNode(name string) Option { return func(o *options) { o.node = name } }

// New returns metrics reading src. Its registry holds the cvpn metrics, the Go runtime's and
// the process's (go_*, process_*).
func New(src Sources, opts ...Option) *Metrics {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	m := &Metrics{
		src: src,
		reg: prometheus.NewRegistry(),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvpn_authentication_failures_total",
			Help: "Refused attempts to connect or renegotiate, by reason (AWS/ClientVPN AuthenticationFailures).",
		}, []string{"reason"}),
		handshake: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cvpn_handshake_duration_seconds",
			Help:    "Time from a session's first packet to its admission (TLS handshake, authentication, address).",
			Buckets: HandshakeBuckets,
		}),
		handlerCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvpn_client_connect_handler_calls_total",
			Help: "Client-connect handler calls by outcome: allowed, denied, or AWS's failure reason (client-connect-handler-timed-out, ...).",
		}, []string{"outcome"}),
		handlerTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cvpn_client_connect_handler_duration_seconds",
			Help:    "How long client-connect handler calls took, whatever their outcome.",
			Buckets: HandshakeBuckets,
		}),
		downloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cvpn_portal_configuration_downloads_total",
			Help: "Client profiles downloaded from the self-service portal, by transport (AWS/ClientVPN SelfServicePortalClientConfigurationDownloads).",
		}, []string{"transport"}),
		endedIDs: map[uint64]struct{}{},
		seen:     map[uint64]counters.TrafficSnapshot{},
	}
	m.version, m.rev = buildVersion()
	for _, t := range []string{"udp", "tcp"} {
		m.downloads.WithLabelValues(t)
	}
	for _, c := range RefusalCodes {
		m.authFailures.WithLabelValues(string(c))
	}
	for _, o := range connecthandler.Outcomes() {
		m.handlerCalls.WithLabelValues(o)
	}
	// The node label is a constant label of each metric, added as the registry gathers: the
	// collectors and the hot counters stay as they are.
	reg := prometheus.Registerer(m.reg)
	if o.node != "" {
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"node": o.node}, m.reg)
	}
	reg.MustRegister(m, m.authFailures, m.handshake, m.handlerCalls, m.handlerTime, m.downloads,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in Prometheus's text format (or OpenMetrics, as negotiated).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Gatherer is the registry, for tests and tools that read the metrics without HTTP.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// Connected records the session's handshake duration.
func (m *Metrics) Connected(s tunnel.Status) {
	m.handshake.Observe(s.HandshakeDuration.Seconds())
}

// PrepareRefusals exports cvpn_authentication_failures_total at 0 for more codes than
// RefusalCodes: those of the endpoint's admission pipeline.
func (m *Metrics) PrepareRefusals(codes ...session.RefusalCode) {
	for _, c := range codes {
		m.authFailures.WithLabelValues(string(c))
	}
}

// Observe records a client-connect handler call (Metrics is a connecthandler.Observer).
func (m *Metrics) Observe(outcome string, d time.Duration) {
	m.handlerCalls.WithLabelValues(outcome).Inc()
	m.handlerTime.Observe(d.Seconds())
}

// PortalDownload counts a profile downloaded from the self-service portal.
func (m *Metrics) PortalDownload(transport string) {
	if transport != "udp" && transport != "tcp" {
		transport = "other"
	}
	m.downloads.WithLabelValues(transport).Inc()
}

// Refused counts an authentication failure under its code.
func (m *Metrics) Refused(a session.Attempt) {
	m.authFailures.WithLabelValues(string(a.Code)).Inc()
}

// Disconnected adds the session's final counters to the totals.
func (m *Metrics) Disconnected(s tunnel.Status, _ session.End) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ended = add(m.ended, s.Traffic)
	m.endedIDs[s.ID] = struct{}{}
	delete(m.seen, s.ID)
}

// Describe sends the descriptions of the metrics Collect sends.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descActive, descIngressBytes, descEgressBytes, descIngressPackets,
		descEgressPackets, descCRLNextUpdate, descDropped, descPool, descNAT, descSessions, descBuild} {
		ch <- d
	}
}

// Collect reads the sources and sends the metrics.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, m.version, m.rev, runtime.Version())
	if m.src.Sessions != nil {
		m.collectSessions(ch)
	}
	if m.src.Drops != nil {
		for reason, n := range m.src.Drops() {
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(n), reason)
		}
	}
	if m.src.Pool != nil {
		inUse, capacity := m.src.Pool()
		ch <- prometheus.MustNewConstMetric(descPool, prometheus.GaugeValue, float64(inUse), "in_use")
		ch <- prometheus.MustNewConstMetric(descPool, prometheus.GaugeValue, float64(capacity-inUse), "free")
	}
	if m.src.NATMappings != nil {
		ch <- prometheus.MustNewConstMetric(descNAT, prometheus.GaugeValue, float64(m.src.NATMappings()))
	}
	if m.src.CRL != nil {
		if next, ok := crlNextUpdate(m.src.CRL()); ok {
			ch <- prometheus.MustNewConstMetric(descCRLNextUpdate, prometheus.GaugeValue, float64(next.UnixMilli())/1e3)
		}
	}
}

// collectSessions sends the connection count, the sessions by transport and cipher and the
// traffic totals: the live sessions' counters plus the ended sessions' final ones.
func (m *Metrics) collectSessions(ch chan<- prometheus.Metric) {
	active, kinds, total := m.sessions()
	ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(active))
	for k, n := range kinds {
		ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(n), k.transport, k.family, k.cipher)
	}
	ch <- prometheus.MustNewConstMetric(descIngressBytes, prometheus.CounterValue, float64(total.RxBytes))
	ch <- prometheus.MustNewConstMetric(descEgressBytes, prometheus.CounterValue, float64(total.TxBytes))
	ch <- prometheus.MustNewConstMetric(descIngressPackets, prometheus.CounterValue, float64(total.RxPackets))
	ch <- prometheus.MustNewConstMetric(descEgressPackets, prometheus.CounterValue, float64(total.TxPackets))
}

// sessionKind is the labels of cvpn_sessions.
type sessionKind struct{ transport, family, cipher string }

// endpointFamily names the family a client reached the endpoint over, as
// endpoint_ip_address_type spells it.
func endpointFamily(remote netip.AddrPort) string {
	if a := remote.Addr(); a.Is6() && !a.Is4In6() {
		return "ipv6"
	}
	return "ipv4"
}

// sessions lists the established sessions and sums the traffic totals, holding mu (and only
// for that: the metrics are sent after, so that Disconnected never waits on a slow scraper).
func (m *Metrics) sessions() (active int, kinds map[sessionKind]int, total counters.TrafficSnapshot) {
	m.mu.Lock()
	defer m.mu.Unlock()
	list := m.src.Sessions()
	total = m.ended
	kinds = map[sessionKind]int{}
	listed := make(map[uint64]counters.TrafficSnapshot, len(list))
	for _, s := range list {
		kinds[sessionKind{transportName(s.Transport), endpointFamily(s.Remote), s.Cipher}]++
		if _, ended := m.endedIDs[s.ID]; ended {
			continue // listed before it ended: its final counters are in ended
		}
		listed[s.ID] = s.Traffic
		total = add(total, s.Traffic)
	}
	// Sessions that left the listing but whose end is not heard yet count as last seen.
	for id, t := range m.seen {
		if _, ok := listed[id]; !ok {
			listed[id] = t
			total = add(total, t)
		}
	}
	m.seen = listed
	for id := range m.endedIDs {
		if !slicesHasID(list, id) {
			delete(m.endedIDs, id)
		}
	}
	return len(list), kinds, total
}

// transportName is a session's transport as the endpoint file and AWS name it, udp or tcp,
// from OpenVPN's protocol names (UDPv4, TCPv4_SERVER).
func transportName(proto string) string {
	switch p := strings.ToLower(proto); {
	case strings.HasPrefix(p, "udp"):
		return "udp"
	case strings.HasPrefix(p, "tcp"):
		return "tcp"
	default:
		return p
	}
}

func slicesHasID(list []tunnel.Status, id uint64) bool {
	for _, s := range list {
		if s.ID == id {
			return true
		}
	}
	return false
}

func add(a, b counters.TrafficSnapshot) counters.TrafficSnapshot {
	return counters.TrafficSnapshot{RxBytes: a.RxBytes + b.RxBytes, RxPackets: a.RxPackets + b.RxPackets,
		TxBytes: a.TxBytes + b.TxBytes, TxPackets: a.TxPackets + b.TxPackets}
}

// crlNextUpdate returns the earliest next update of set's CRLs; ok is false when there is no
// CRL.
func crlNextUpdate(set *pki.CRLSet) (first time.Time, ok bool) {
	if set == nil {
		return first, false
	}
	for _, c := range set.CRLs() {
		if next := c.List.NextUpdate; !next.IsZero() && (first.IsZero() || next.Before(first)) {
			first = next
		}
	}
	return first, !first.IsZero()
}

// buildVersion returns the main module's version and VCS revision as the build info records
// them (as cvpn version prints them), "unknown" where it does not.
func buildVersion() (version, revision string) {
	version, revision = "unknown", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return version, revision
	}
	if v := bi.Main.Version; v != "" {
		version = v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			revision = s.Value
		}
	}
	return version, revision
}

// Server serves /metrics on a TCP listener.
type Server struct {
	ln   net.Listener
	http *http.Server
	done chan struct{}
}

// Listen opens addr and serves m's metrics at /metrics on it until Close. A serving error
// other than the close is logged. Its error is net.Listen's, which names the address.
func (m *Metrics) Listen(addr netip.AddrPort, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return nil, err // "listen tcp ADDR: ...": the caller names its key
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	s := &Server{ln: ln, done: make(chan struct{}),
		http: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}}
	go func() {
		defer close(s.done)
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "addr", ln.Addr(), "err", err)
		}
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() netip.AddrPort {
	return s.ln.Addr().(*net.TCPAddr).AddrPort()
}

// Close stops the server and waits until it has.
func (s *Server) Close() error {
	err := s.http.Close()
	<-s.done
	return err
}
