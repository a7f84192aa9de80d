package tunnel

import (
	"time"

	"golang.org/x/sys/unix"
)

// Receive moderation. When a UDP read shows that a flow is busy (it returned more than one
// datagram), the receive loop sleeps coalesceDelay before reading again, as a NIC's interrupt
// moderation does: the next read returns a batch instead of a packet or two, so the receive, the
// AEAD loop, the TUN write (whose GRO merges the batch's TCP segments into one super-packet for
// the kernel to forward) and the private host's TCP stack all run once per batch, and the loop
// wakes far less often. On this machine (a 2-core KVM guest) a wake-up, through the Go netpoller
// and the scheduler, costs more than decrypting and forwarding the packets it brings; the stock
// client sends one datagram at a time, so without moderation batches averaged 2.2 datagrams.
//
// A lone packet (ping, DNS, a keepalive) is handled as soon as it arrives: only packets that
// arrive while the loop sleeps after a busy read wait, at most coalesceDelay.

// coalesceDelay is how long the receive loop sleeps after a busy read. Measured with the bench
// harness (one stock client, iperf3 upload, server CPU per GB): 200 µs cut it by 40%; 500 µs
// and 1 ms gained nothing more and slowed TCP download, whose ACKs the delay holds.
const coalesceDelay = 200 * time.Microsecond

// coalesce sleeps coalesceDelay in the kernel: time.Sleep rounds sub-millisecond sleeps up to a
// millisecond when the runtime is otherwise idle.
func coalesce() {
	ts := unix.NsecToTimespec(int64(coalesceDelay))
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}
