// Package counters owns the engine's typed counters: refused packets by reason (Drops) and each
// session's traffic (Traffic). Counting costs one atomic add per counter and never logs; a
// Logger, run from the engine's timer, reads the drop counters and writes at most one line per
// reason per interval. It does not decide what is dropped, and it knows nothing of sessions.
package counters

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/sys/cpu"

	"github.com/cvpn/cvpn/tunnel/ippkt"
)

// Reason says why a packet was refused.
type Reason uint8

// Drop reasons.
const (
	Malformed            Reason = iota // too short, unknown opcode, unparsable
	ControlAuth                        // tls-auth/tls-crypt unwrap failed (forged, corrupt, wrong key)
	NoSession                          // control or data packet for no known session
	BadCookie                          // third handshake packet with a cookie that does not verify
	KeyMethod1                         // P_CONTROL_HARD_RESET_CLIENT_V1: key-method 1 is not supported
	WrongDirection                     // server-only opcode received
	HandshakeRateLimited               // handshake reply refused by the rate limiter
	ControlRejected                    // control packet refused by the session (replay, wrong sid, key id)
	NoKey                              // data packet for a key id without keys
	Decrypt                            // data packet failed authentication
	Replay                             // data packet id seen before or too old
	WrongSource                        // data packet from another listener than its session's
	FamilyOff                          // tunnel payload of an address family the tunnel does not carry (traffic_ip_address_type)
	SpoofedSource                      // client sent a packet with a source other than its address
	Unauthorized                       // no authorization rule allows the destination
	NAT                                // NAT refused the packet (unsupported protocol, table full)
	NoMapping                          // packet from the private network matches no NAT mapping
	NoClient                           // packet from the private network for a client that left
	TLSHandshake                       // TLS handshake failed (bad certificate, timeout, protocol)
	HandshakeLimit                     // too many handshakes in progress, in all or from one source
	Compressed                         // client sent a compressed payload (cvpn never decompresses)
	TCPBackpressure                    // a TCP client does not read fast enough; its queue is full
	NoRoute                            // destination covered by no route (split tunnel), or client-to-client not enabled
	RateLimit                          // over the connection's bandwidth limit
	FloatConflict                      // data packet that would move its session onto an address another session holds
	PacketIDExhausted                  // a send key reached its last packet id before a new key was ready
	WrongListener                      // packet for a session of another listener
	TCPSilent                          // a TCP connection sent no complete first packet in time
	TCPLimit                           // too many unauthenticated TCP connections from the source, or in all
	ControlRateLimited                 // a session's control packets beyond its rate
	HostAddress                        // destination is the endpoint host itself (allow_host_access is off), or the gateway address and not a ping
	LocalScope                         // IPv6 from a client to a link-local or multicast destination (router solicitations, MLD, mDNS): nothing beyond the tunnel link
	// ipHeader is the first of the reasons the IP header checks give (package ippkt, one counter
	// per ippkt.Reason): IP(r) maps them.
	ipHeader
	NumReasons = ipHeader + Reason(ippkt.NumReasons)
)

// IP returns the reason for a packet whose IP header ippkt refused with r ("ip_" and ippkt's
// label, such as ip_routing_header).
func IP(r ippkt.Reason) Reason { return ipHeader + Reason(r) }

var names = [NumReasons]string{
	Malformed:            "malformed",
	ControlAuth:          "control_auth_failed",
	NoSession:            "no_session",
	BadCookie:            "bad_cookie",
	KeyMethod1:           "key_method_1",
	WrongDirection:       "wrong_direction",
	HandshakeRateLimited: "handshake_rate_limited",
	ControlRejected:      "control_rejected",
	NoKey:                "no_data_key",
	Decrypt:              "decrypt_failed",
	Replay:               "replay",
	WrongSource:          "wrong_source",
	FamilyOff:            "family_off",
	SpoofedSource:        "spoofed_source",
	Unauthorized:         "unauthorized",
	NAT:                  "nat_refused",
	NoMapping:            "no_nat_mapping",
	NoClient:             "no_client",
	TLSHandshake:         "tls_handshake_failed",
	HandshakeLimit:       "handshake_limit",
	Compressed:           "compressed_payload",
	TCPBackpressure:      "tcp_backpressure",
	NoRoute:              "no_route",
	RateLimit:            "bandwidth_limit",
	FloatConflict:        "float_conflict",
	PacketIDExhausted:    "packet_id_exhausted",
	WrongListener:        "wrong_listener",
	TCPSilent:            "tcp_silent",
	TCPLimit:             "tcp_limit",
	ControlRateLimited:   "control_rate_limited",
	HostAddress:          "host_address",
	LocalScope:           "local_scope",
}

func init() {
	for r := range ippkt.Reason(ippkt.NumReasons) {
		names[IP(r)] = "ip_" + r.String()
	}
}

func (r Reason) String() string {
	if r >= NumReasons {
		return "unknown"
	}
	return names[r]
}

// Expected reports whether a refusal is part of normal operation (policy at work, the IPv6 of
// dual-stack clients on an IPv4 tunnel, their link-local chatter) rather than a sign of a fault
// or an attack; those log at Info, not Warn.
func (r Reason) Expected() bool {
	switch r {
	case FamilyOff, LocalScope, Unauthorized, NoRoute, RateLimit, NoMapping, NoClient:
		return true
	}
	return false
}

// logLevel is the level the Logger reports drops of r at: Warn for faults and attacks, Info for
// policy at work, Debug for family_off and local_scope, which every dual-stack client sends
// (IPv6 router solicitations and the like).
func (r Reason) logLevel() slog.Level {
	switch {
	case r == FamilyOff || r == LocalScope:
		return slog.LevelDebug
	case r.Expected():
		return slog.LevelInfo
	}
	return slog.LevelWarn
}

// Drops counts refused packets by reason. The zero value is ready; it is safe for concurrent use.
type Drops struct {
	n [NumReasons]atomic.Uint64
	// sampled[r] is set once the logger has the details of a drop of r for its next line; Add
	// asks for details only while it is clear, so a flood builds them once per interval.
	sampled [NumReasons]atomic.Bool
	detail  [NumReasons]atomic.Pointer[[]any]
}

// Add counts one drop of r. It reports whether the logger wants the details of this one: then
// the caller passes them to Detail. Only the first drop of a reason in each log interval does,
// so attributes (which allocate) are built once per interval, never per packet.
func (d *Drops) Add(r Reason) bool {
	d.n[r].Add(1)
	return !d.sampled[r].Load() && d.sampled[r].CompareAndSwap(false, true)
}

// Detail records the attributes of the drop of r that Add asked for.
func (d *Drops) Detail(r Reason, attrs ...any) { d.detail[r].Store(&attrs) }

// Count returns the drops of r so far.
func (d *Drops) Count(r Reason) uint64 { return d.n[r].Load() }

// Snapshot returns the non-zero counters by reason name.
func (d *Drops) Snapshot() map[string]uint64 {
	m := make(map[string]uint64)
	for i := range d.n {
		if v := d.n[i].Load(); v > 0 {
			m[Reason(i).String()] = v
		}
	}
	return m
}

// Logger writes what Drops counted: at most one line per reason per interval, with the count
// since the last line, the total and the details of one drop. Flush is called by one goroutine
// (the engine's timer), which owns the Logger's state.
type Logger struct {
	Drops *Drops
	Log   *slog.Logger
	Every time.Duration
	last  [NumReasons]struct {
		at    time.Time
		count uint64
	}
}

// Flush logs the reasons with new drops whose interval has passed.
func (l *Logger) Flush(now time.Time) {
	for r := range NumReasons {
		total := l.Drops.n[r].Load()
		st := &l.last[r]
		if total == st.count || (!st.at.IsZero() && now.Sub(st.at) < l.Every) {
			continue
		}
		attrs := []any{"reason", r.String(), "count_since_last_log", total - st.count, "total", total}
		if p := l.Drops.detail[r].Swap(nil); p != nil {
			attrs = append(attrs, *p...)
		}
		l.Drops.sampled[r].Store(false)
		st.at, st.count = now, total
		l.Log.Log(context.Background(), r.logLevel(), "packets dropped", attrs...)
	}
}

// Traffic counts one session's traffic: each direction costs two atomic adds per packet. The
// two directions sit on separate cache lines, since one core may count a session's upload while
// another counts its download.
type Traffic struct {
	rxBytes, rxPackets atomic.Uint64
	_                  cpu.CacheLinePad
	txBytes, txPackets atomic.Uint64
}

// Received counts a packet of n bytes from the client.
func (t *Traffic) Received(n int) {
	t.rxBytes.Add(uint64(n))
	t.rxPackets.Add(1)
}

// Sent counts a packet of n bytes to the client.
func (t *Traffic) Sent(n int) {
	t.txBytes.Add(uint64(n))
	t.txPackets.Add(1)
}

// TrafficSnapshot is a Traffic read at one moment.
type TrafficSnapshot struct {
	RxBytes, RxPackets, TxBytes, TxPackets uint64
}

// Snapshot reads the counters.
func (t *Traffic) Snapshot() TrafficSnapshot {
	return TrafficSnapshot{RxBytes: t.rxBytes.Load(), RxPackets: t.rxPackets.Load(), TxBytes: t.txBytes.Load(), TxPackets: t.txPackets.Load()}
}
