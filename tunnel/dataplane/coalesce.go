package dataplane

import "time"

// Receive moderation. When a UDP read shows that the endpoint is busy (it returned at least
// coalesceMinBatch datagrams), the receive loop sleeps coalesceDelay before reading again, as a
// NIC's interrupt moderation does: the next read returns a batch instead of a packet or two, so
// the receive, the AEAD loop, the TUN write (whose GRO merges the batch's TCP segments into one
// super-packet for the kernel to forward) and the private host's TCP stack all run once per batch,
// and the loop wakes far less often. On this machine (a 2-core KVM guest) a wake-up costs more
// than decrypting and forwarding the packets it brings, and the stock client sends one datagram
// at a time: without moderation, reads averaged 2.2 datagrams.
//
// A lone packet (ping, DNS, a keepalive) is handled as soon as it arrives: only packets that
// arrive while the loop sleeps after a busy read wait, at most coalesceDelay. Under light and
// moderate load reads stay small and the loop never sleeps; under heavy load (coalesceMinBatch
// datagrams per coalesceDelay is about 40,000 a second) moderation sustains itself, because each
// sleep lets the next batch grow.

// coalesceDelay is how long the receive loop sleeps after a busy read. Measured with the bench
// harness (one stock client, iperf3 upload, server CPU per GB): 200 µs cut it by 40%; 500 µs
// and 1 ms gained nothing more and slowed TCP download, whose ACKs the delay holds.
const coalesceDelay = 200 * time.Microsecond

// coalesceMinBatch is the smallest read that counts as busy. Measured (bench, 64 sessions at a
// paced 100 Mbit/s): with 2, moderation started at that load and the p50 round trip rose from 258
// to 424 µs; with 8 it stayed at 258 µs, and iperf3 upload cost the same CPU per GB as with 2.
const coalesceMinBatch = 8

// coalesce pauses a shard's receive loop for coalesceDelay when its socket moderates
// (sock.Moderator: the host's sockets; the in-memory ones of tests and engine benchmarks do not).
func (s *udpShard) coalesce() {
	if s.mod != nil {
		s.mod.Pause(coalesceDelay)
	}
}
