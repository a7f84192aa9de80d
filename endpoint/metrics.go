package endpoint

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/cvpn/cvpn/endpoint/metrics"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tunnel"
)

// newMetrics returns the endpoint's metrics, or nil when metrics is off. They read the engine
// and the CRL in force of *r, which Start sets before the metrics server listens (no scrape
// comes earlier), and the pool and NAT table built at start.
func newMetrics(addr netip.AddrPort, r **Running, pool *ippool.Pool, natTable *nat.Table, now func() time.Time) *metrics.Metrics {
	if !addr.IsValid() {
		return nil
	}
	return metrics.New(metrics.Sources{
		Sessions:    func() []tunnel.Status { return (*r).srv.Clients() },
		Drops:       func() map[string]uint64 { return (*r).srv.Drops() },
		Pool:        func() (int, int) { return pool.InUse(), pool.Capacity() },
		NATMappings: func() int { return natTable.Stats().Mappings },
		CRL:         func() *pki.CRLSet { return (*r).crl.Load() },
		Now:         now,
	})
}

// serveMetrics serves m on addr; nothing (nil) when m is nil.
func serveMetrics(m *metrics.Metrics, addr netip.AddrPort, log *slog.Logger) (*metrics.Server, error) {
	if m == nil {
		return nil, nil
	}
	s, err := m.Listen(addr, log)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen_address: %w", err)
	}
	log.Info("metrics listening", "addr", s.Addr())
	return s, nil
}

// closeMetrics stops the metrics server, if there is one.
func (r *Running) closeMetrics() {
	if r.metrics == nil {
		return
	}
	if err := r.metrics.Close(); err != nil {
		r.log.Error("closing the metrics server", "err", err)
	}
}
