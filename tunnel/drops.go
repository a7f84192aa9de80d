package tunnel

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// DropReason says why a packet was refused. Every refusal is counted, never logged per packet.
type DropReason int

// Drop reasons.
const (
	DropMalformed            DropReason = iota // too short, unknown opcode, unparsable
	DropControlAuth                            // tls-auth/tls-crypt unwrap failed (forged, corrupt, wrong key)
	DropNoSession                              // control or data packet for no known session
	DropBadCookie                              // third handshake packet with a cookie that does not verify
	DropKeyMethod1                             // P_CONTROL_HARD_RESET_CLIENT_V1: key-method 1 is not supported
	DropWrongDirection                         // server-only opcode received
	DropHandshakeRateLimited                   // handshake reply refused by the rate limiter
	DropControlRejected                        // control packet refused by the session (replay, wrong sid, key id)
	DropNoKey                                  // data packet for a key id without keys
	DropDecrypt                                // data packet failed authentication
	DropReplay                                 // data packet id seen before or too old
	DropWrongSource                            // data packet from an address other than the session's
	DropNotIPv4                                // tunnel payload is not an IPv4 packet
	DropSpoofedSource                          // client sent a packet with a source other than its address
	DropUnauthorized                           // no authorization rule allows the destination
	DropNAT                                    // NAT refused the packet (unsupported protocol, table full)
	DropNoMapping                              // packet from the private network matches no NAT mapping
	DropNoClient                               // packet from the private network for a client that left
	DropTLSHandshake                           // TLS handshake failed (bad certificate, timeout, protocol)
	DropHandshakeLimit                         // too many handshakes in progress
	DropCompressed                             // client sent a compressed payload (cvpn never decompresses)
	DropTCPBackpressure                        // a TCP client does not read fast enough; its queue is full
	DropNoRoute                                // destination covered by no route (split tunnel), or client-to-client not enabled
	DropRateLimit                              // over the connection's bandwidth limit
	numDropReasons
)

var dropNames = [numDropReasons]string{
	DropMalformed:            "malformed",
	DropControlAuth:          "control_auth_failed",
	DropNoSession:            "no_session",
	DropBadCookie:            "bad_cookie",
	DropKeyMethod1:           "key_method_1",
	DropWrongDirection:       "wrong_direction",
	DropHandshakeRateLimited: "handshake_rate_limited",
	DropControlRejected:      "control_rejected",
	DropNoKey:                "no_data_key",
	DropDecrypt:              "decrypt_failed",
	DropReplay:               "replay",
	DropWrongSource:          "wrong_source",
	DropNotIPv4:              "not_ipv4",
	DropSpoofedSource:        "spoofed_source",
	DropUnauthorized:         "unauthorized",
	DropNAT:                  "nat_refused",
	DropNoMapping:            "no_nat_mapping",
	DropNoClient:             "no_client",
	DropTLSHandshake:         "tls_handshake_failed",
	DropHandshakeLimit:       "handshake_limit",
	DropCompressed:           "compressed_payload",
	DropTCPBackpressure:      "tcp_backpressure",
	DropNoRoute:              "no_route",
	DropRateLimit:            "bandwidth_limit",
}

// expected reports whether a refusal is part of normal operation (policy at work, IPv6 from
// dual-stack clients) rather than a sign of a fault or an attack; those log at Info, not Warn.
func (r DropReason) expected() bool {
	switch r {
	case DropNotIPv4, DropUnauthorized, DropNoRoute, DropRateLimit, DropNoMapping, DropNoClient:
		return true
	}
	return false
}

func (r DropReason) String() string {
	if r < 0 || r >= numDropReasons {
		return "unknown"
	}
	return dropNames[r]
}

// dropCounters counts refusals by reason and logs the first of each reason, and then at most one
// summary per reason per interval, so a flood of bad packets cannot become a flood of log lines.
type dropCounters struct {
	n      [numDropReasons]atomic.Uint64
	log    *slog.Logger
	now    func() time.Time
	every  time.Duration
	mu     sync.Mutex
	logged [numDropReasons]loggedState
}

type loggedState struct {
	at    time.Time
	count uint64
}

func (d *dropCounters) add(r DropReason, attrs ...any) {
	total := d.n[r].Add(1)
	d.mu.Lock()
	st := &d.logged[r]
	now := d.now()
	if !st.at.IsZero() && now.Sub(st.at) < d.every {
		d.mu.Unlock()
		return
	}
	since := total - st.count
	st.at, st.count = now, total
	d.mu.Unlock()
	level := slog.LevelWarn
	if r.expected() {
		level = slog.LevelInfo
	}
	d.log.Log(context.Background(), level, "packet dropped", append([]any{"reason", r.String(), "count_since_last_log", since, "total", total}, attrs...)...)
}

// snapshot returns the counters by reason name.
func (d *dropCounters) snapshot() map[string]uint64 {
	m := make(map[string]uint64)
	for i := range d.n {
		if v := d.n[i].Load(); v > 0 {
			m[DropReason(i).String()] = v
		}
	}
	return m
}
