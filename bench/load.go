package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
)

// LoadConfig describes one load-generator run: N sessions ramped up against one server, then
// optionally traffic to a sink in the private network behind it.
type LoadConfig struct {
	// Server is the OpenVPN server's address (UDP, or TCP with TCP set). Required.
	Server netip.AddrPort
	// Sink is the bench sink's address in the private network; required when Duration > 0.
	Sink netip.AddrPort
	// Sessions is how many sessions to connect. Required.
	Sessions int
	// RampRate paces session starts (per second); 0 starts them as fast as Concurrency allows.
	RampRate float64
	// Concurrency bounds handshakes in flight; default 64.
	Concurrency int
	// RampTimeout, when set, stops starting sessions after this long; those not started count
	// as connect failures (errRampTimeout) and the run goes on with the sessions connected.
	RampTimeout time.Duration
	// HandshakeTimeout bounds each session's Connect; default 60 s (OpenVPN's hand-window).
	HandshakeTimeout time.Duration
	// Settle is the pause after the ramp before the server's memory is read; default 2 s.
	Settle time.Duration
	// Hold keeps the sessions idle (keepalives only) for this long after the ramp and reports
	// how many survived; 0 skips it.
	Hold time.Duration
	// IdleProbe is a probe-only phase before the traffic that measures the round trip through
	// an unloaded tunnel; default 2 s when Duration > 0.
	IdleProbe time.Duration
	// PacedMbps, when set, adds a phase of PacedDuration before the measured one in which all
	// sessions together offer PacedMbps: the round trip under a load the server should carry.
	PacedMbps     float64
	PacedDuration time.Duration
	// Duration is the measured traffic phase; 0 sends no traffic. Warmup precedes it with the
	// same traffic, not counted (bucket bursts, queues filling).
	Duration time.Duration
	Warmup   time.Duration
	// PacketSize is the IP packet size of data and probes; default 1400.
	PacketSize int
	// RateMbps is the offered rate of each session (IP bytes); 0 sends as fast as the senders go.
	RateMbps float64
	// Senders is the number of sending goroutines; default GOMAXPROCS.
	Senders int
	// ProbeRate is the echo probes sent per second over all sessions; default min(1000, 20 per
	// session).
	ProbeRate float64
	// Identity returns the client certificate of session i. Required.
	Identity func(i int) (tls.Certificate, error)
	// RootCAs verify the server. Required.
	RootCAs *x509.CertPool
	// TLSCrypt wraps the control channel when set; TLSAuth signs it instead (client.Config has
	// the details).
	TLSCrypt *tlscrypt.StaticKey
	TLSAuth  *client.TLSAuth
	// Ciphers announced; nil means AES-256-GCM only, which is what the benchmark compares.
	Ciphers []datacrypto.Cipher
	// TCP connects the sessions over TCP instead of UDP.
	TCP bool
	// Dial opens each session's UDP socket, DialTCP its TCP connection; nil dials Server from
	// the current namespace, from Sources when set.
	Dial    func(ctx context.Context) (net.PacketConn, error)
	DialTCP func(ctx context.Context) (net.Conn, error)
	// Sources are local addresses the sessions dial from, session i from
	// Sources[(First+i) % len] (SourceAddrs); nil lets the kernel choose. First is the index of
	// this load generator's first session among several that share a run.
	Sources []netip.Addr
	First   int
	// Barrier, when set, is called after the ramp and before the server's memory is read: load
	// generators that share a run wait there for each other, so that all hold their sessions
	// at once and the memory read after it counts every session.
	Barrier func(ctx context.Context) error
	// RawSamples keeps every handshake latency and hold echo round trip in the report, for a
	// caller that merges the reports of several load generators.
	RawSamples bool
	// HoldProbeRate is the gateway echoes per second over all sessions while they are held
	// (the round trip through an idle tunnel, keepalives flowing); 0 sends none.
	HoldProbeRate float64
	// ServerPID, when set, is the server process whose memory and CPU time are sampled.
	ServerPID int
	// Profile, when set, takes a CPU profile of the server of the given whole seconds (cvpn's
	// admin API: FetchProfile); the measured phase calls it once, after its warm-up, and the
	// report keeps the profile (LoadReport.Profile) and the packets delivered in its window.
	Profile func(ctx context.Context, seconds int) ([]byte, error)
	// RampProfile, when set, takes a CPU profile of the server (as Profile does) over
	// ProfileRamp whole seconds of the ramp, from one second after its start; the report keeps
	// it with the handshakes that completed in that window (LoadReport.RampProfile...).
	RampProfile func(ctx context.Context, seconds int) ([]byte, error)
	ProfileRamp int
	// Log receives progress lines; nil discards.
	Log *slog.Logger
}

// LoadReport is what a run measured. Rates are per second, sizes of packets are IP bytes.
type LoadReport struct {
	Server            string `json:"server"`
	SessionsRequested int    `json:"sessions_requested"`
	SessionsConnected int    `json:"sessions_connected"`
	ConnectFailures   int    `json:"connect_failures"`
	// FailureReasons counts failed Connects by their error text (truncated).
	FailureReasons map[string]int `json:"failure_reasons,omitempty"`

	RampSeconds float64 `json:"ramp_seconds"`
	// HandshakesPerSecond is the connected sessions over the time from the first start to the
	// last successful handshake.
	HandshakesPerSecond float64 `json:"handshakes_per_second"`
	// HandshakeMs is the Connect latency (reset, TLS, key-method 2, push) in milliseconds.
	HandshakeMs Latency `json:"handshake_ms"`

	ServerProc *ServerProc `json:"server_proc,omitempty"`

	HoldSeconds float64 `json:"hold_seconds,omitempty"`
	// HoldRTTUs is the gateway echo round trip while holding (LoadConfig.HoldProbeRate);
	// HoldEchoes the echoes sent and HoldEchoLoss the share that did not come back.
	HoldRTTUs    *Latency `json:"hold_rtt_us,omitempty"`
	HoldEchoes   uint64   `json:"hold_echoes,omitempty"`
	HoldEchoLoss float64  `json:"hold_echo_loss,omitempty"`
	// Sources is how many local addresses the sessions came from (LoadConfig.Sources).
	Sources int `json:"sources,omitempty"`
	// HoldEchoReplies counts the echoes that came back. With LoadConfig.RawSamples,
	// HandshakeSamplesMs and HoldEchoSamplesUs are every sample behind HandshakeMs and
	// HoldRTTUs.
	HoldEchoReplies    uint64    `json:"hold_echo_replies,omitempty"`
	HandshakeSamplesMs []float64 `json:"handshake_samples_ms,omitempty"`
	HoldEchoSamplesUs  []float64 `json:"hold_echo_samples_us,omitempty"`

	SessionsAlive  int `json:"sessions_alive"` // at the end of the run, before closing
	SessionsFailed int `json:"sessions_failed,omitempty"`

	Traffic *TrafficReport `json:"traffic,omitempty"`

	// LoadRSSKiB is the load generator's own RSS at the end, LoadRSSPerSessionKiB its growth
	// from the start of RunLoad over the sessions (its cost per session; identities issued
	// before RunLoad are not in it).
	LoadRSSKiB           int64   `json:"load_rss_kib,omitempty"`
	LoadRSSPerSessionKiB float64 `json:"load_rss_per_session_kib,omitempty"`

	// Profile is the server's CPU profile of the measured phase (LoadConfig.Profile), written
	// apart from the report.
	Profile []byte `json:"-"`
	// RampProfile is the server's CPU profile of the ramp (LoadConfig.ProfileRamp), written
	// apart from the report; RampProfileHandshakes the handshakes that completed while it ran,
	// RampProfileServerCPU the server's CPU seconds over it by /proc, RampProfileError why
	// there is none.
	RampProfile           []byte  `json:"-"`
	RampProfileSeconds    float64 `json:"ramp_profile_seconds,omitempty"`
	RampProfileHandshakes int64   `json:"ramp_profile_handshakes,omitempty"`
	RampProfileServerCPU  float64 `json:"ramp_profile_server_cpu_seconds,omitempty"`
	RampProfileError      string  `json:"ramp_profile_error,omitempty"`
}

// ServerProc is the server process's memory and CPU over the run.
type ServerProc struct {
	PID          int     `json:"pid"`
	Name         string  `json:"name"`
	RSSBeforeKiB int64   `json:"rss_before_kib"`
	RSSRampKiB   int64   `json:"rss_after_ramp_kib"`
	RSSEndKiB    int64   `json:"rss_end_kib"`
	RSSPerSessKB float64 `json:"rss_per_session_kib"`
	// RSSHoldKiB is the RSS at the end of the hold, RSSHeldPerSessKB its growth over the
	// connected sessions: the cost of a session that has lived through keepalives.
	RSSHoldKiB       int64   `json:"rss_after_hold_kib,omitempty"`
	RSSHeldPerSessKB float64 `json:"rss_held_per_session_kib,omitempty"`
	CPURampSec       float64 `json:"cpu_ramp_seconds"`
	// CPUAtRampEnd is the server's total CPU time when the ramp ended (seconds since it
	// started), for merging the ramps of several load generators.
	CPUAtRampEnd float64 `json:"cpu_at_ramp_end_seconds,omitempty"`
	CPUPerHSMs   float64 `json:"cpu_ms_per_handshake"`
	CPUTraffic   float64 `json:"cpu_traffic_seconds,omitempty"`
	CPUPerGB     float64 `json:"cpu_seconds_per_gb,omitempty"`
}

// TrafficReport is the traffic phase: data to the sink, probes echoed by it.
type TrafficReport struct {
	Seconds    float64 `json:"seconds"`
	PacketSize int     `json:"packet_size"`
	OfferedMbp float64 `json:"offered_mbps_per_session,omitempty"`
	SentPkts   uint64  `json:"sent_packets"`
	SentBytes  uint64  `json:"sent_bytes"`
	SendErrors uint64  `json:"send_errors,omitempty"`
	// Delivered counts data packets the sink received in the window (including the in-flight
	// tail drained after it).
	DeliveredPkts  uint64  `json:"delivered_packets"`
	DeliveredBytes uint64  `json:"delivered_bytes"`
	PPS            float64 `json:"pps"`
	Mbps           float64 `json:"mbps"`
	Loss           float64 `json:"loss"` // 1 - delivered/sent
	// PerSessionMbps spreads the delivered rate over sessions (the bandwidth-limit check).
	PerSessionMbps Spread `json:"per_session_mbps"`
	// RTTIdleUs is the probe round trip client -> server -> sink -> server -> client with no
	// other traffic; RTTPacedUs the same during the paced phase, RTTLoadUs during the measured
	// phase.
	RTTIdleUs Latency `json:"rtt_idle_us"`
	// The paced phase: offered and delivered aggregate rates and loss.
	PacedMbps          float64 `json:"paced_mbps,omitempty"`
	PacedDeliveredMbps float64 `json:"paced_delivered_mbps,omitempty"`
	PacedLoss          float64 `json:"paced_loss,omitempty"`
	RTTPacedUs         Latency `json:"rtt_paced_us"`
	RTTLoadUs          Latency `json:"rtt_load_us"`
	ProbesSent         uint64  `json:"probes_sent"`
	ProbeLoss          float64 `json:"probe_loss"`
	// SinkSeconds is the time from the first data packet of the measured phase at the sink to
	// the last: Mbps and PerSessionMbps count over Seconds, the senders' window; a server that
	// delivers a backlog after the senders stop shows a longer SinkSeconds.
	SinkSeconds float64 `json:"sink_seconds"`
	// ServerCPUSeconds is the server's CPU time over the measured phase and its drain.
	ServerCPUSeconds float64 `json:"server_cpu_seconds,omitempty"`
	// ProfileSeconds is the length of the server's CPU profile of the measured phase (it starts
	// with the phase's count), ProfilePackets the packets delivered in it (the phase's
	// delivered packets in proportion), ProfileError why there is none.
	ProfileSeconds float64 `json:"profile_seconds,omitempty"`
	ProfilePackets float64 `json:"profile_packets,omitempty"`
	// ProfileServerCPU is the server's CPU seconds over the profile by /proc (with ServerPID).
	ProfileServerCPU float64 `json:"profile_server_cpu_seconds,omitempty"`
	ProfileError     string  `json:"profile_error,omitempty"`
}

// Load is one run in progress.
type load struct {
	cfg      LoadConfig
	log      *slog.Logger
	epoch0   time.Time // monotonic base of probe timestamps
	sessions []*client.Session

	rtt    atomic.Pointer[Histogram]
	echoes atomic.Uint64
	// echoRTT records gateway echo round trips while holding; echoReplies counts them.
	echoRTT     atomic.Pointer[Histogram]
	echoReplies atomic.Uint64
	// echoMu guards echoSamples, every echo round trip (µs) while holding with RawSamples.
	echoMu      sync.Mutex
	echoSamples []float64
	waitMu      sync.Mutex
	waiters     map[uint64]chan []byte // control replies from the sink by sequence
	seq         atomic.Uint64
	selfRSS0    int64  // own RSS before the ramp
	profile     []byte // the server's CPU profile of the measured phase
	// rampProfile is the profile of the ramp in progress (LoadConfig.ProfileRamp); its
	// results go into the report once it is waited for.
	rampProfile sync.WaitGroup
}

// RunLoad connects cfg.Sessions sessions, optionally holds them and runs traffic, then closes
// them. Sessions that fail to connect or die are counted in the report, not returned as errors;
// an error means a phase could not run (bad configuration, no session connected, the sink
// unreachable, ctx ended), and the report then holds what was measured before it.
func RunLoad(ctx context.Context, cfg LoadConfig) (*LoadReport, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	l := &load{cfg: cfg, log: cfg.Log, epoch0: time.Now(), waiters: map[uint64]chan []byte{}}
	rep := &LoadReport{Server: cfg.Server.String(), SessionsRequested: cfg.Sessions, Sources: len(cfg.Sources)}
	defer l.closeAll()
	if self, err := SampleProc(os.Getpid()); err == nil {
		l.selfRSS0 = self.RSSKiB
	}

	var before ProcSample
	if cfg.ServerPID > 0 {
		var err error
		if before, err = SampleProc(cfg.ServerPID); err != nil {
			return nil, err
		}
		rep.ServerProc = &ServerProc{PID: cfg.ServerPID, Name: ProcName(cfg.ServerPID), RSSBeforeKiB: before.RSSKiB}
	}

	err := l.ramp(ctx, rep)
	var rampEnd ProcSample
	if cfg.ServerPID > 0 {
		rampEnd, _ = SampleProc(cfg.ServerPID)
	}
	l.rampProfile.Wait()
	if err != nil {
		return rep, err
	}
	if cfg.Barrier != nil {
		if err := cfg.Barrier(ctx); err != nil {
			return rep, fmt.Errorf("bench: waiting for the other load generators: %w", err)
		}
	}
	if err := sleepCtx(ctx, cfg.Settle); err != nil {
		return rep, err
	}
	if p := rep.ServerProc; p != nil {
		s, err := SampleProc(cfg.ServerPID)
		if err != nil {
			return rep, err
		}
		p.RSSRampKiB = s.RSSKiB
		p.RSSPerSessKB = float64(s.RSSKiB-before.RSSKiB) / float64(max(1, rep.SessionsConnected))
		p.CPURampSec = (rampEnd.CPU - before.CPU).Seconds()
		p.CPUAtRampEnd = rampEnd.CPU.Seconds()
		p.CPUPerHSMs = 1e3 * p.CPURampSec / float64(max(1, rep.SessionsConnected))
	}
	l.log.Info("ramp done", "connected", rep.SessionsConnected, "failed", rep.ConnectFailures,
		"handshakes_per_s", fmt.Sprintf("%.1f", rep.HandshakesPerSecond), "handshake_ms_p50", rep.HandshakeMs.P50)

	if cfg.Hold > 0 {
		l.log.Info("holding idle sessions", "for", cfg.Hold, "echoes_per_s", cfg.HoldProbeRate)
		if err := l.hold(ctx, rep); err != nil {
			return rep, err
		}
		if p := rep.ServerProc; p != nil {
			if s, err := SampleProc(cfg.ServerPID); err == nil {
				p.RSSHoldKiB = s.RSSKiB
				p.RSSHeldPerSessKB = float64(s.RSSKiB-before.RSSKiB) / float64(max(1, rep.SessionsConnected))
			}
		}
	}

	if cfg.Duration > 0 {
		var err error
		rep.Traffic, err = l.traffic(ctx)
		if err != nil {
			return rep, err
		}
		if p := rep.ServerProc; p != nil {
			p.CPUTraffic = rep.Traffic.ServerCPUSeconds
			if gb := float64(rep.Traffic.DeliveredBytes) / 1e9; gb > 0 {
				p.CPUPerGB = p.CPUTraffic / gb
			}
		}
	}
	if p := rep.ServerProc; p != nil {
		if s, err := SampleProc(cfg.ServerPID); err == nil {
			p.RSSEndKiB = s.RSSKiB
		}
	}
	for _, s := range l.sessions {
		if s.Err() == nil {
			rep.SessionsAlive++
		}
	}
	if self, err := SampleProc(os.Getpid()); err == nil && len(l.sessions) > 0 {
		rep.LoadRSSKiB = self.RSSKiB
		rep.LoadRSSPerSessionKiB = float64(self.RSSKiB-l.selfRSS0) / float64(len(l.sessions))
	}
	rep.SessionsFailed = len(l.sessions) - rep.SessionsAlive
	rep.Profile = l.profile
	return rep, nil
}

func (c *LoadConfig) defaults() error {
	switch {
	case !c.Server.IsValid():
		return errors.New("bench: LoadConfig.Server is not set")
	case c.Sessions <= 0:
		return errors.New("bench: LoadConfig.Sessions must be positive")
	case c.Identity == nil || c.RootCAs == nil:
		return errors.New("bench: LoadConfig.Identity and RootCAs are required")
	case c.Duration > 0 && !c.Sink.IsValid():
		return errors.New("bench: LoadConfig.Sink is required for traffic")
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 64
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 60 * time.Second
	}
	if c.Settle <= 0 {
		c.Settle = 2 * time.Second
	}
	if c.Duration > 0 && c.IdleProbe <= 0 {
		c.IdleProbe = 2 * time.Second
	}
	if c.PacketSize == 0 {
		c.PacketSize = 1400
	}
	if c.PacketSize < MinPacketSize || c.PacketSize > client.MaxPacketSize {
		return fmt.Errorf("bench: packet size %d outside %d..%d", c.PacketSize, MinPacketSize, client.MaxPacketSize)
	}
	if c.Senders <= 0 {
		c.Senders = runtime.GOMAXPROCS(0)
	}
	if c.ProbeRate <= 0 {
		c.ProbeRate = min(1000, 20*float64(c.Sessions))
	}
	if c.Ciphers == nil {
		c.Ciphers = []datacrypto.Cipher{datacrypto.AES256GCM}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// ramp connects the sessions: starts paced by RampRate, at most Concurrency in flight.
func (l *load) ramp(ctx context.Context, rep *LoadReport) error {
	cfg := &l.cfg
	type result struct {
		i   int
		s   *client.Session
		d   time.Duration
		err error
	}
	results := make(chan result, cfg.Concurrency)
	sem := make(chan struct{}, cfg.Concurrency)
	start := time.Now()
	var connected atomic.Int64
	if cfg.RampProfile != nil && cfg.ProfileRamp > 0 {
		l.rampProfile.Go(func() { l.profileRamp(ctx, rep, &connected) })
	}
	var lastOK time.Time
	var lat []float64
	reasons := map[string]int{}
	got := make([]*client.Session, cfg.Sessions)

	go func() {
		for i := range cfg.Sessions {
			if cfg.RampRate > 0 {
				due := start.Add(time.Duration(float64(i) / cfg.RampRate * float64(time.Second)))
				_ = sleepCtx(ctx, time.Until(due))
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
			}
			stop := ctx.Err()
			if stop == nil && cfg.RampTimeout > 0 && time.Since(start) > cfg.RampTimeout {
				stop = errRampTimeout
			}
			if stop != nil {
				if ctx.Err() == nil {
					<-sem
				}
				// Stop starting; the collector counts the rest as failed.
				for j := i; j < cfg.Sessions; j++ {
					results <- result{i: j, err: stop}
				}
				return
			}
			go func() {
				defer func() { <-sem }()
				cert, err := cfg.Identity(i)
				if err != nil {
					results <- result{i: i, err: err}
					return
				}
				hctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
				defer cancel()
				dial, dialTCP := l.dialers(i)
				t0 := time.Now()
				s, err := client.Connect(hctx, client.Config{
					Server:      cfg.Server,
					TCP:         cfg.TCP,
					DialTCP:     dialTCP,
					Certificate: cert,
					RootCAs:     cfg.RootCAs,
					TLSCrypt:    cfg.TLSCrypt,
					TLSAuth:     cfg.TLSAuth,
					Ciphers:     cfg.Ciphers,
					Dial:        dial,
					OnPacket:    l.onPacket,
				})
				results <- result{i: i, s: s, d: time.Since(t0), err: err}
			}()
		}
	}()

	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	for n := 0; n < cfg.Sessions; {
		select {
		case r := <-results:
			n++
			if r.err != nil {
				rep.ConnectFailures++
				msg := r.err.Error()
				if len(msg) > 100 {
					msg = msg[:100]
				}
				reasons[msg]++
				continue
			}
			got[r.i] = r.s
			connected.Add(1)
			lastOK = time.Now()
			lat = append(lat, float64(r.d)/1e6)
		case <-progress.C:
			l.log.Info("ramping", "connected", len(lat), "failed", rep.ConnectFailures, "of", cfg.Sessions,
				"elapsed", time.Since(start).Round(time.Second))
		}
	}
	for _, s := range got {
		if s != nil {
			l.sessions = append(l.sessions, s)
		}
	}
	rep.SessionsConnected = len(l.sessions)
	rep.RampSeconds = time.Since(start).Seconds()
	if len(reasons) > 0 {
		rep.FailureReasons = reasons
	}
	rep.HandshakeMs = summarize(lat)
	if cfg.RawSamples {
		rep.HandshakeSamplesMs = lat
	}
	if rep.SessionsConnected > 0 {
		rep.HandshakesPerSecond = float64(rep.SessionsConnected) / lastOK.Sub(start).Seconds()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if rep.SessionsConnected == 0 {
		return fmt.Errorf("bench: no session connected to %s: %s", cfg.Server, firstReason(reasons))
	}
	return nil
}

// profileRamp profiles the server over cfg.ProfileRamp seconds from one second into the ramp
// and records it in rep with the handshakes that completed meanwhile (connected counts them).
func (l *load) profileRamp(ctx context.Context, rep *LoadReport, connected *atomic.Int64) {
	cfg := &l.cfg
	if sleepCtx(ctx, time.Second) != nil {
		return
	}
	var s0, s1 ProcSample
	if cfg.ServerPID > 0 {
		s0, _ = SampleProc(cfg.ServerPID)
	}
	n0 := connected.Load()
	b, err := cfg.RampProfile(ctx, cfg.ProfileRamp)
	n1 := connected.Load()
	if err != nil {
		rep.RampProfileError = err.Error()
		return
	}
	if cfg.ServerPID > 0 {
		s1, _ = SampleProc(cfg.ServerPID)
		rep.RampProfileServerCPU = (s1.CPU - s0.CPU).Seconds()
	}
	rep.RampProfile = b
	rep.RampProfileSeconds = float64(cfg.ProfileRamp)
	rep.RampProfileHandshakes = n1 - n0
}

// dialers returns session i's dial functions: the configured ones, or from Sources[i % len].
func (l *load) dialers(i int) (func(context.Context) (net.PacketConn, error), func(context.Context) (net.Conn, error)) {
	cfg := &l.cfg
	if len(cfg.Sources) == 0 || cfg.Dial != nil || cfg.DialTCP != nil {
		return cfg.Dial, cfg.DialTCP
	}
	src := cfg.Sources[(cfg.First+i)%len(cfg.Sources)]
	dial := func(context.Context) (net.PacketConn, error) {
		return net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(cfg.Server))
	}
	dialTCP := func(ctx context.Context) (net.Conn, error) {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		return d.DialContext(ctx, "tcp4", cfg.Server.String())
	}
	return dial, dialTCP
}

// hold keeps the sessions idle for Hold (their keepalives flow) and sends gateway echoes
// round-robin over them at HoldProbeRate, recording their round trips.
func (l *load) hold(ctx context.Context, rep *LoadReport) error {
	cfg := &l.cfg
	hist := &Histogram{}
	l.echoRTT.Store(hist)
	echoes0 := l.echoReplies.Load()
	hctx, cancel := context.WithTimeout(ctx, cfg.Hold)
	defer cancel()
	var sent uint64
	if cfg.HoldProbeRate > 0 && len(l.sessions) > 0 {
		t := time.NewTicker(max(time.Duration(float64(time.Second)/cfg.HoldProbeRate), 50*time.Microsecond))
		defer t.Stop()
		buf := make([]byte, echoLen)
	loop:
		for n := 0; ; n++ {
			select {
			case <-hctx.Done():
				break loop
			case <-t.C:
			}
			s := l.sessions[n%len(l.sessions)]
			if s.Err() != nil {
				continue
			}
			pkt := buildEcho(buf, s.Address().Addr(), s.Gateway(), uint16(n), int64(time.Since(l.epoch0)))
			if s.WritePacket(pkt) == nil {
				sent++
			}
		}
	} else {
		<-hctx.Done()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// The last echoes' answers.
	_ = sleepCtx(ctx, 500*time.Millisecond)
	l.echoRTT.Store(nil)
	rep.HoldSeconds = cfg.Hold.Seconds()
	if sent > 0 {
		sum := hist.Summary()
		rep.HoldRTTUs = &sum
		rep.HoldEchoes = sent
		rep.HoldEchoReplies = l.echoReplies.Load() - echoes0
		rep.HoldEchoLoss = max(0, 1-float64(rep.HoldEchoReplies)/float64(sent))
		l.echoMu.Lock()
		rep.HoldEchoSamplesUs = l.echoSamples
		l.echoMu.Unlock()
	}
	return nil
}

// errRampTimeout is the failure of the sessions a ramp did not start within RampTimeout.
var errRampTimeout = errors.New("bench: not started: the ramp ran out of time (RampTimeout)")

func firstReason(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	if len(keys) == 0 {
		return "no error recorded"
	}
	return fmt.Sprintf("%s (%d times)", keys[0], m[keys[0]])
}

// onPacket handles what the sink sends back: probe echoes and control replies. It runs on the
// receiving session's goroutine.
func (l *load) onPacket(_ *client.Session, ip []byte) {
	payload, _, _, ok := udpPayload(ip)
	if !ok {
		if sent, ok := parseEchoReply(ip); ok {
			if hist := l.echoRTT.Load(); hist != nil {
				d := time.Since(l.epoch0) - time.Duration(sent)
				hist.Record(d)
				l.echoReplies.Add(1)
				if l.cfg.RawSamples {
					l.echoMu.Lock()
					l.echoSamples = append(l.echoSamples, float64(d)/1e3)
					l.echoMu.Unlock()
				}
			}
		}
		return
	}
	h, err := parseHeader(payload)
	if err != nil {
		return
	}
	switch h.typ {
	case msgProbe:
		if hist := l.rtt.Load(); hist != nil {
			hist.Record(time.Since(l.epoch0) - time.Duration(h.sent))
			l.echoes.Add(1)
		}
	case msgResetAck, msgStatsReply:
		l.waitMu.Lock()
		ch := l.waiters[h.seq]
		delete(l.waiters, h.seq)
		l.waitMu.Unlock()
		if ch != nil {
			ch <- append([]byte(nil), payload...)
		}
	}
}

// alive returns a session that still runs, for control requests to the sink.
func (l *load) alive() *client.Session {
	for _, s := range l.sessions {
		if s.Err() == nil {
			return s
		}
	}
	return nil
}

// request sends a control message to the sink through a live session and waits for the answer,
// retrying a few times.
func (l *load) request(ctx context.Context, typ uint8, epoch uint16, session uint32, arg int64) ([]byte, error) {
	buf := make([]byte, MinPacketSize)
	for attempt := range 5 {
		s := l.alive()
		if s == nil {
			return nil, errors.New("bench: no live session left to reach the sink")
		}
		seq := l.seq.Add(1)
		ch := make(chan []byte, 1)
		l.waitMu.Lock()
		l.waiters[seq] = ch
		l.waitMu.Unlock()
		t := newUDPTemplate(netip.AddrPortFrom(s.Address().Addr(), 39999), l.cfg.Sink, MinPacketSize)
		pkt := t.build(buf, &header{typ: typ, epoch: epoch, session: session, seq: seq, sent: arg})
		if err := s.WritePacket(pkt); err != nil && attempt == 4 {
			return nil, fmt.Errorf("bench: request to the sink: %w", err)
		}
		select {
		case b := <-ch:
			return b, nil
		case <-time.After(time.Second):
			l.waitMu.Lock()
			delete(l.waiters, seq)
			l.waitMu.Unlock()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return nil, fmt.Errorf("bench: the sink at %s did not answer through the tunnel (5 tries)", l.cfg.Sink)
}

// traffic runs the probe-only phase, the paced phase and the data phase, reading the sink's
// counters after each phase with data.
func (l *load) traffic(ctx context.Context) (*TrafficReport, error) {
	cfg := &l.cfg
	tr := &TrafficReport{PacketSize: cfg.PacketSize, OfferedMbp: cfg.RateMbps}

	// Unloaded round trip.
	idle := &Histogram{}
	l.rtt.Store(idle)
	pctx, stop := context.WithTimeout(ctx, cfg.IdleProbe)
	tr.ProbesSent += l.probe(pctx)
	stop()
	l.rtt.Store(nil)
	tr.RTTIdleUs = idle.Summary()

	// Round trip under a moderate load the server should carry without loss.
	if cfg.PacedMbps > 0 && cfg.PacedDuration > 0 {
		ph, err := l.phase(ctx, cfg.PacedDuration, 0, cfg.PacedMbps/float64(len(l.sessions)), false)
		if err != nil {
			return nil, err
		}
		tr.PacedMbps = cfg.PacedMbps
		tr.PacedDeliveredMbps = ph.mbps
		tr.PacedLoss = ph.loss
		tr.RTTPacedUs = ph.rtt
		tr.ProbesSent += ph.probes
	}

	// The measured phase.
	ph, err := l.phase(ctx, cfg.Duration, cfg.Warmup, cfg.RateMbps, true)
	if err != nil {
		return nil, err
	}
	if ph.profileSec > 0 && ph.seconds > 0 {
		tr.ProfileSeconds = float64(ph.profileSec)
		tr.ProfilePackets = float64(ph.delivered.packets) * float64(ph.profileSec) / ph.seconds
		tr.ProfileServerCPU = ph.profileCPU
	}
	if ph.profileErr != nil {
		tr.ProfileError = ph.profileErr.Error()
	}
	l.profile = ph.profile
	tr.Seconds = ph.seconds
	tr.SentPkts, tr.SentBytes, tr.SendErrors = ph.sent.packets, ph.sent.bytes, ph.sent.errors
	tr.DeliveredPkts, tr.DeliveredBytes = ph.delivered.packets, ph.delivered.bytes
	tr.PerSessionMbps = spreadOf(ph.perSession)
	tr.PPS = float64(tr.DeliveredPkts) / tr.Seconds
	tr.Mbps = ph.mbps
	tr.Loss = ph.loss
	tr.RTTLoadUs = ph.rtt
	tr.ProbesSent += ph.probes
	tr.ProbeLoss = ph.probeLoss
	tr.ServerCPUSeconds = ph.serverCPU
	tr.SinkSeconds = ph.sinkSpan
	return tr, nil
}

// phaseResult is one data phase as the senders and the sink saw it.
type phaseResult struct {
	seconds    float64
	sent       senderCount
	delivered  counter
	perSession []float64 // Mbit/s, when asked for
	mbps, loss float64
	rtt        Latency
	probes     uint64
	probeLoss  float64
	serverCPU  float64 // seconds, 0 without ServerPID
	sinkSpan   float64 // seconds from the first data message at the sink to the last
	profile    []byte  // the server's CPU profile of profileSec from the count's start
	profileSec int
	profileCPU float64 // the server's CPU seconds over the profile
	profileErr error
}

// phase sends data through every session for d (perSessionMbps each, 0 = flat out) with probes
// alongside, then reads what the sink counted.
func (l *load) phase(ctx context.Context, d, warmup time.Duration, perSessionMbps float64, perSession bool) (*phaseResult, error) {
	cfg := &l.cfg
	epoch := uint16(1 + rand.IntN(0xfffe))
	if _, err := l.request(ctx, msgReset, epoch, 0, int64(warmup)); err != nil {
		return nil, err
	}
	ph := &phaseResult{}
	hist := &Histogram{}
	l.rtt.Store(hist)
	echoes0 := l.echoes.Load()
	dctx, stop := context.WithTimeout(ctx, warmup+d)
	defer stop()
	var wg sync.WaitGroup
	var cpu0 ProcSample
	if cfg.ServerPID > 0 {
		wg.Go(func() {
			_ = sleepCtx(dctx, warmup)
			cpu0, _ = SampleProc(cfg.ServerPID)
		})
	}
	if sec := int(d / time.Second); perSession && cfg.Profile != nil && sec >= 1 {
		// The profile runs alongside the counted window (whole seconds of it) and is waited
		// for with the senders.
		wg.Go(func() {
			if sleepCtx(ctx, warmup) != nil {
				return
			}
			var s0, s1 ProcSample
			if cfg.ServerPID > 0 {
				s0, _ = SampleProc(cfg.ServerPID)
			}
			ph.profile, ph.profileErr = cfg.Profile(ctx, sec)
			if cfg.ServerPID > 0 {
				s1, _ = SampleProc(cfg.ServerPID)
			}
			if ph.profileErr == nil {
				ph.profileSec = sec
				ph.profileCPU = (s1.CPU - s0.CPU).Seconds()
			}
		})
	}
	wg.Go(func() { ph.probes = l.probe(dctx) })
	senders := min(cfg.Senders, len(l.sessions))
	sent := make([]senderCount, senders)
	start := time.Now().Add(warmup) // what is sent before counts for nothing
	for w := range senders {
		var mine []int
		for i := w; i < len(l.sessions); i += senders {
			mine = append(mine, i)
		}
		wg.Go(func() { sent[w] = l.send(dctx, epoch, mine, perSessionMbps, start) })
	}
	wg.Wait()
	ph.seconds = time.Since(start).Seconds()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	// Let the in-flight tail arrive and the last probes come back.
	_ = sleepCtx(ctx, 500*time.Millisecond)
	if cfg.ServerPID > 0 {
		if cpu1, err := SampleProc(cfg.ServerPID); err == nil {
			ph.serverCPU = (cpu1.CPU - cpu0.CPU).Seconds()
		}
	}
	l.rtt.Store(nil)
	ph.rtt = hist.Summary()
	if ph.probes > 0 {
		ph.probeLoss = max(0, 1-float64(l.echoes.Load()-echoes0)/float64(ph.probes))
	}
	for _, c := range sent {
		ph.sent.packets += c.packets
		ph.sent.bytes += c.bytes
		ph.sent.errors += c.errors
	}

	// The sink's counters, a page at a time (one page beyond the sessions for totals only).
	pages := 1
	if perSession {
		ph.perSession = make([]float64, len(l.sessions))
		pages = (len(l.sessions) + statsPage - 1) / statsPage
	}
	for p := range pages {
		first := p * statsPage
		if !perSession {
			first = len(l.sessions)
		}
		b, err := l.request(ctx, msgStatsReq, epoch, uint32(first), 0)
		if err != nil {
			return nil, err
		}
		r, err := parseStatsReply(b)
		if err != nil {
			return nil, fmt.Errorf("bench: sink stats reply: %w", err)
		}
		if r.hdr.epoch != epoch {
			return nil, fmt.Errorf("bench: the sink counts epoch %d, not ours (%d): another load generator shares it", r.hdr.epoch, epoch)
		}
		ph.delivered = counter{r.packets, r.bytes}
		ph.sinkSpan = time.Duration(r.span).Seconds()
		for j, c := range r.sessions {
			if perSession && first+j < len(ph.perSession) {
				ph.perSession[first+j] = float64(c.bytes) * 8 / ph.seconds / 1e6
			}
		}
	}
	ph.mbps = float64(ph.delivered.bytes) * 8 / ph.seconds / 1e6
	if ph.sent.packets > 0 {
		ph.loss = max(0, 1-float64(ph.delivered.packets)/float64(ph.sent.packets))
	}
	return ph, nil
}

type senderCount struct{ packets, bytes, errors uint64 }

// send pushes data messages through sessions idx round-robin until ctx ends, paced to
// perSessionMbps each when set.
func (l *load) send(ctx context.Context, epoch uint16, idx []int, perSessionMbps float64, countFrom time.Time) senderCount {
	cfg := &l.cfg
	var c senderCount
	tmpl := make([]*udpTemplate, len(idx))
	for k, i := range idx {
		tmpl[k] = newUDPTemplate(netip.AddrPortFrom(l.sessions[i].Address().Addr(), 40000), cfg.Sink, cfg.PacketSize)
	}
	buf := make([]byte, cfg.PacketSize)
	seq := make([]uint64, len(idx))
	var interval time.Duration // between two packets of this sender
	if perSessionMbps > 0 {
		interval = time.Duration(float64(cfg.PacketSize*8) / (perSessionMbps * 1e6 * float64(len(idx))) * float64(time.Second))
	}
	start := time.Now()
	next := start
	deadline, _ := ctx.Deadline()
	counting := false // past countFrom
	for n := 0; ; n++ {
		if n%64 == 0 {
			now := time.Now()
			if ctx.Err() != nil || (!deadline.IsZero() && !now.Before(deadline)) {
				return c
			}
		}
		if interval > 0 {
			next = next.Add(interval)
			if d := time.Until(next); d > time.Millisecond {
				if sleepCtx(ctx, d) != nil {
					return c
				}
			} else if d < -100*time.Millisecond {
				next = time.Now() // fell behind: do not burst to catch up
			}
		}
		k := n % len(idx)
		s := l.sessions[idx[k]]
		seq[k]++
		pkt := tmpl[k].build(buf, &header{typ: msgData, epoch: epoch, session: uint32(idx[k]), seq: seq[k]})
		if err := s.WritePacket(pkt); err != nil {
			c.errors++
			if s.Err() != nil && n%len(idx) == 0 {
				// Every session of this sender may be gone; do not spin.
				if allDead(l.sessions, idx) {
					return c
				}
			}
			continue
		}
		if counting || !time.Now().Before(countFrom) {
			counting = true
			c.packets++
			c.bytes += uint64(len(pkt))
		}
	}
}

func allDead(ss []*client.Session, idx []int) bool {
	for _, i := range idx {
		if ss[i].Err() == nil {
			return false
		}
	}
	return true
}

// probe sends echo probes round-robin over the sessions at ProbeRate until ctx ends and returns
// how many it sent.
func (l *load) probe(ctx context.Context) uint64 {
	interval := time.Duration(float64(time.Second) / l.cfg.ProbeRate)
	t := time.NewTicker(max(interval, 50*time.Microsecond))
	defer t.Stop()
	buf := make([]byte, l.cfg.PacketSize)
	var sent uint64
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return sent
		case <-t.C:
		}
		i := n % len(l.sessions)
		s := l.sessions[i]
		if s.Err() != nil {
			continue
		}
		tmpl := newUDPTemplate(netip.AddrPortFrom(s.Address().Addr(), 40001), l.cfg.Sink, l.cfg.PacketSize)
		h := header{typ: msgProbe, session: uint32(i), seq: uint64(n), sent: int64(time.Since(l.epoch0))}
		if s.WritePacket(tmpl.build(buf, &h)) == nil {
			sent++
		}
	}
}

// closeAll closes every session, many at a time, within a bounded time.
func (l *load) closeAll() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sem := make(chan struct{}, 256)
	var wg sync.WaitGroup
	for _, s := range l.sessions {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Go(func() {
			defer func() { <-sem }()
			_ = s.Close()
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Summary is a few human-readable lines.
func (r *LoadReport) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sessions: %d/%d connected, %d failed to connect, %d alive at the end\n",
		r.SessionsConnected, r.SessionsRequested, r.ConnectFailures, r.SessionsAlive)
	for reason, n := range r.FailureReasons {
		fmt.Fprintf(&b, "  connect failure x%d: %s\n", n, reason)
	}
	fmt.Fprintf(&b, "ramp: %.1f s, %.1f handshakes/s, latency ms p50 %.1f p90 %.1f p99 %.1f max %.1f\n",
		r.RampSeconds, r.HandshakesPerSecond, r.HandshakeMs.P50, r.HandshakeMs.P90, r.HandshakeMs.P99, r.HandshakeMs.Max)
	if p := r.ServerProc; p != nil {
		fmt.Fprintf(&b, "server %s (pid %d): RSS %d -> %d KiB after ramp (%.1f KiB/session), %d KiB at the end; CPU %.2f s for the ramp (%.2f ms/handshake)",
			p.Name, p.PID, p.RSSBeforeKiB, p.RSSRampKiB, p.RSSPerSessKB, p.RSSEndKiB, p.CPURampSec, p.CPUPerHSMs)
		if p.CPUTraffic > 0 {
			fmt.Fprintf(&b, ", %.2f s for the traffic (%.1f s/GB)", p.CPUTraffic, p.CPUPerGB)
		}
		b.WriteString("\n")
	}
	if h := r.HoldRTTUs; h != nil {
		fmt.Fprintf(&b, "hold: %.0f s, %d gateway echoes (loss %.2f%%), rtt µs p50 %.0f p90 %.0f p99 %.0f max %.0f\n",
			r.HoldSeconds, r.HoldEchoes, 100*r.HoldEchoLoss, h.P50, h.P90, h.P99, h.Max)
	}
	if p := r.ServerProc; p != nil && p.RSSHoldKiB > 0 {
		fmt.Fprintf(&b, "server RSS after the hold: %d KiB (%.1f KiB/session)\n", p.RSSHoldKiB, p.RSSHeldPerSessKB)
	}
	if r.LoadRSSKiB > 0 {
		fmt.Fprintf(&b, "load generator RSS: %d KiB (%.1f KiB/session)\n", r.LoadRSSKiB, r.LoadRSSPerSessionKiB)
	}
	if t := r.Traffic; t != nil {
		fmt.Fprintf(&b, "traffic: %.1f s of %d-byte packets: sent %d, delivered %d (%.0f pps, %.1f Mbit/s), loss %.2f%%\n",
			t.Seconds, t.PacketSize, t.SentPkts, t.DeliveredPkts, t.PPS, t.Mbps, 100*t.Loss)
		fmt.Fprintf(&b, "  per session Mbit/s: min %.2f p10 %.2f p50 %.2f p90 %.2f max %.2f\n",
			t.PerSessionMbps.Min, t.PerSessionMbps.P10, t.PerSessionMbps.P50, t.PerSessionMbps.P90, t.PerSessionMbps.Max)
		if t.PacedMbps > 0 {
			fmt.Fprintf(&b, "  paced phase: %.0f Mbit/s offered, %.1f delivered, loss %.2f%%, rtt µs p50 %.0f p90 %.0f p99 %.0f\n",
				t.PacedMbps, t.PacedDeliveredMbps, 100*t.PacedLoss, t.RTTPacedUs.P50, t.RTTPacedUs.P90, t.RTTPacedUs.P99)
		}
		fmt.Fprintf(&b, "  rtt µs idle p50 %.0f p99 %.0f; measured phase p50 %.0f p90 %.0f p99 %.0f (probe loss %.2f%%)\n",
			t.RTTIdleUs.P50, t.RTTIdleUs.P99, t.RTTLoadUs.P50, t.RTTLoadUs.P90, t.RTTLoadUs.P99, 100*t.ProbeLoss)
	}
	return b.String()
}
