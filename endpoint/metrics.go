package endpoint

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint/metrics"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tunnel"
)

// newMetrics returns the endpoint's metrics, built whether metrics is on or not, so that a
// reload that turns them on serves totals since start. They read the engine and the CRL in
// force of *r, which Start sets before the metrics server listens (no scrape comes earlier),
// and the pool and NAT table built at start. They need no clock (the CRL's expiry is exported
// as an instant), so the last argument is unused.
func newMetrics(r **Running, pool *ippool.Pool, natTable *nat.Table, node string) *metrics.Metrics {
	return metrics.New(metrics.Sources{
		Sessions:    func() []tunnel.Status { return (*r).srv.Clients() },
		Drops:       func() map[string]uint64 { return (*r).srv.Drops() },
		Pool:        func() (int, int) { return pool.InUse(), pool.Capacity() },
		NATMappings: func() int { return natTable.Stats().Mappings },
		CRL:         func() *pki.CRLSet { return (*r).crl.Load() },
	}, metrics.WithNode(node))
}

// serveMetrics serves m on addr; nothing (nil) when addr is the zero AddrPort (metrics off).
func serveMetrics(m *metrics.Metrics, addr netip.AddrPort, log *slog.Logger) (*metrics.Server, error) {
	if !addr.IsValid() {
		return nil, nil
	}
	s, err := m.Listen(addr, log)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen_address: %w", err)
	}
	log.Info("metrics listening", "addr", s.Addr())
	return s, nil
}

// closeMetrics stops the metrics server, if there is one. r.mu is held.
func (r *Running) closeMetrics() {
	if r.metrics == nil {
		return
	}
	if err := r.metrics.Close(); err != nil {
		r.log.Error("closing the metrics server", "err", err)
	}
	r.metrics = nil
}

// openMetrics serves the metrics on next's metrics.listen_address for a reload, before the
// running server closes (switchMetrics): a move to an address the running server's port blocks
// is refused like a listener's. It returns nil when next has metrics off.
func (r *Running) openMetrics(next *config.Endpoint) (*metrics.Server, error) {
	s, err := serveMetrics(r.mx, next.Metrics.ListenAddress, r.log)
	if err != nil {
		return nil, next.KeyError("metrics.listen_address", errors.Unwrap(err))
	}
	return s, nil
}

// switchMetrics puts s (nil: none) in place of the running metrics server. r.mu is held.
func (r *Running) switchMetrics(s *metrics.Server) {
	r.closeMetrics()
	r.metrics = s
}
