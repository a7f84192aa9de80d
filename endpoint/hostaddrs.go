package endpoint

import (
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/host"
)

// HostAddrs finds the host's own destinations (its addresses of both families on every
// interface, loopback, broadcast, multicast, IPv6 link-local) and watches them: it returns them as they are now, then calls changed
// with the whole new list whenever they change, until stop is called. host.WatchOwnAddrs is
// the real one.
type HostAddrs func(changed func([]netip.Prefix), log *slog.Logger) (own []netip.Prefix, stop func(), err error)

// watchHostAddrs is host.WatchOwnAddrs as a HostAddrs.
func watchHostAddrs(changed func([]netip.Prefix), log *slog.Logger) ([]netip.Prefix, func(), error) {
	own, w, err := host.WatchOwnAddrs(changed, log)
	if err != nil {
		return nil, nil, err
	}
	return own, w.Close, nil
}

// hostPolicy is the per-packet policy the engine runs with: the endpoint file's (which a
// reload replaces) completed with the host's own destinations and the SNAT addresses of both
// families (which the address watch replaces), so that clients do not reach the host unless
// allow_host_access says they may. Either change builds a new snapshot from both and hands it
// to the engine.
type hostPolicy struct {
	snat  netip.Addr // target_network.snat_address; invalid when IPv4 traffic is off
	snat6 netip.Addr // target_network.snat_ipv6_address; invalid unless IPv6 is source-NATed
	log   *slog.Logger

	mu      sync.Mutex // guards the fields below; held while handing the engine a policy
	srv     *tunnel.Server
	file    *tunnel.Policy
	own     []netip.Prefix
	watched bool           // own came from the watch, which is newer than its first list
	cur     *tunnel.Policy // file and own together: what the engine has (or starts with)
}

func newHostPolicy(file *tunnel.Policy, snat netip.Addr, log *slog.Logger) *hostPolicy {
	return &hostPolicy{snat: snat, log: log, file: file}
}

// withSNAT6 adds target_network.snat_ipv6_address (when valid) to the host's destinations, as
// newHostPolicy does the IPv4 SNAT address; call it before first.
func (h *hostPolicy) withSNAT6(snat6 netip.Addr) *hostPolicy {
	h.snat6 = snat6
	return h
}

// compose builds cur from file and own; h.mu is held.
func (h *hostPolicy) compose() {
	own := slices.Clone(h.own)
	for _, a := range []netip.Addr{h.snat, h.snat6} {
		if a.IsValid() {
			own = append(own, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	h.cur = h.file.WithHost(own)
	if h.srv != nil {
		h.srv.Reload(h.cur)
	}
}

// first takes the list the watch started with, unless the watch reported a newer one already,
// and returns the policy for the engine to start with.
func (h *hostPolicy) first(own []netip.Prefix) *tunnel.Policy {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.watched {
		h.own = own
		h.compose()
	}
	return h.cur
}

// attach hands the engine, which started with the policy started, every later one.
func (h *hostPolicy) attach(srv *tunnel.Server, started *tunnel.Policy) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.srv = srv
	if h.cur != started {
		srv.Reload(h.cur) // the host's addresses changed while the engine started
	}
}

// setFile takes the policy of a reloaded endpoint file.
func (h *hostPolicy) setFile(file *tunnel.Policy) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.file = file
	h.compose()
}

// setOwn takes a new list of the host's own destinations; the address watch calls it.
func (h *hostPolicy) setOwn(own []netip.Prefix) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.own, h.watched = own, true
	h.compose()
	h.log.Info("the host's own addresses changed", "addresses", own, "snat", h.snat, "snat6", h.snat6, "allow_host_access", h.file.AllowHostAccess)
}
