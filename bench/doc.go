// Package bench measures cvpn against the stock openvpn 2.6 server on one machine: a load
// generator that speaks OpenVPN (bench/client, many sessions in one process), the sink it sends
// to in the private network, and the side-by-side harness behind `make bench`.
//
// It owns: the bench wire format (packet.go) between load generator and sink, the sink
// (sink.go), the load generator's phases and report (load.go), the labs that run either server
// in network namespaces with identical PKI and equivalent configuration (lab.go), the A/B
// rounds, medians, ratio table, JSON and SVG (harness.go, svg.go), and reading a server's memory
// and CPU from /proc (proc_linux.go). It does not own the OpenVPN client protocol (bench/client),
// the namespaces' topology (internal/netlab) or flags (cmd/cvpn-bench).
//
// A load run, in order (RunLoad):
//
//	ramp      sessions start, paced (RampRate) and bounded (Concurrency handshakes in flight);
//	          handshake latency is Connect's duration: reset, cookie, TLS, key-method 2, push
//	settle    the server's RSS is read; (RSS after - RSS before) / sessions is its cost per session
//	hold      optional: sessions stay idle, keepalives only; survivors are counted
//	idle      probes only: the round trip through an unloaded tunnel
//	paced     optional: an aggregate load both servers carry; the round trip under load
//	measured  data flat out or at RateMbps per session after Warmup; the sink counts what arrived
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
