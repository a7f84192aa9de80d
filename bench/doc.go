// Package bench measures cvpn against the stock openvpn 2.6 server on one machine: a load
// generator that speaks OpenVPN (bench/client, many sessions in one process), the sink it sends
// to in the private network, and the side-by-side harness behind `make bench`.
//
// It owns: the bench wire format (packet.go) between load generator and sink, the sink
// (sink.go), the load generator's phases and report (load.go), the gateway echoes and the load
// generator's source addresses (echo.go), the labs that run either server in network namespaces
// with identical PKI and equivalent configuration (lab.go), the A/B rounds, medians, ratio
// table, JSON and SVG (harness.go, svg.go), the scale scenario's load generator processes and
// their merged report (harness.go), cvpn's CPU profiles and the cost per packet read from them
// (profile.go), and reading a server's memory and CPU from /proc (proc_linux.go). It does not own the OpenVPN client protocol (bench/client),
// the namespaces' topology (internal/netlab) or flags (cmd/cvpn-bench).
//
// A load run, in order (RunLoad):
//
//	ramp      sessions start, paced (RampRate) and bounded (Concurrency handshakes in flight);
//	          handshake latency is Connect's duration: reset, cookie, TLS, key-method 2, push
//	barrier   optional: load generators that share a run wait for each other (Barrier)
//	settle    the server's RSS is read; (RSS after - RSS before) / sessions is its cost per session
//	hold      optional: sessions stay idle, keepalives only, with ICMP echoes to their gateway
//	          address at a low rate (HoldProbeRate); survivors are counted, the RSS read again
//	idle      probes only: the round trip through an unloaded tunnel
//	paced     optional: an aggregate load both servers carry; the round trip under load
//	measured  data flat out or at RateMbps per session after Warmup; the sink counts what arrived;
//	          optionally the server's CPU profile over it (Profile)
//
// The iperf scenarios run one stock openvpn client and iperf3 (TCP, up then down) through its
// tunnel to the VPC host, with the server's CPU per GB from /proc: iperf over IPv4, and
// iperf-ipv6 in a dual-stack lab (internal/netlab.NewDual) with the dual-stack configurations
// of both servers (Fixtures.CVPNIPv6Config, OpenVPNIPv6Config): the client dials the server's
// IPv6 address (proto udp6) and iperf3 runs over IPv6 inside the tunnel from the client's own
// address in the VPC link's /64. cvpn answers neighbour discovery for that address; the stock
// server's lab routes the client block back through the server instead, as its kernel does
// not. The two scenarios are separate rows of the table, so the ratios compare family by family.
//
// Sessions dial from Sources (many addresses over many /24s) when set: a server limits new
// sessions per address and per network, as it should, and a benchmark must not meet those
// limits as one host would.
//
// Goroutines: one receive goroutine and one control goroutine per session (bench/client), with
// echoes handled on the receive goroutine (client.Config.OnPacket) rather than by a reader per
// session; Senders sending goroutines that each own a slice of the sessions; one prober. Probe
// round trips go into a lock-free log-linear histogram. The sink is one goroutine that owns its
// counters and reads with recvmmsg.
//
// The sink talks to the load generator only through the tunnel: a reset starts an epoch (data
// of other epochs is not counted), a stats request returns the totals and a page of
// per-session counters, so the load generator works against any server with nothing but a UDP
// path to the sink.
package bench
