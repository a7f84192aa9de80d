package sock

import (
	"errors"

	"golang.org/x/net/bpf"

	"github.com/cvpn/cvpn/tls/packet"
)

// Steering: which shard of a listener (ShardedNetwork) receives a datagram. A data packet
// (protocol §8.1) names its session in its header:
//
//	P_DATA_V2: [1] 9<<3 | key_id  [3] peer-id, 24 bits big-endian
//
// so it goes to shard peer-id mod n, where that session's replay windows live, whichever address
// it comes from (a client that floats keeps its shard). Everything else (control packets,
// P_DATA_V1, short or unknown datagrams) is left to the network, which hashes the addresses, so
// one client's handshake stays on one shard too.
//
// An attacker can send any peer-id from any address; that costs it what sending to one socket
// costs: the shard drops what does not open, as a single socket would.

// MaxShards bounds the shards of one listener: far more than a host has cores, and small enough
// that a shard index is never mistaken for the program's "fall back" answer.
const MaxShards = 1 << 16

// dataV2First is the first byte of a P_DATA_V2 packet with key id 0; the key id is the low 3
// bits.
const dataV2First = byte(packet.DataV2) << 3

// Steer returns the shard, in [0, n), that receives payload, a UDP datagram's payload, on a
// listener of n shards: for a P_DATA_V2 packet its peer-id mod n; -1 for anything else, which
// the network spreads by a hash of the addresses. n must be at least 1.
func Steer(payload []byte, n int) int {
	if len(payload) < packet.DataV2HeaderLen || payload[0]&^0x07 != dataV2First {
		return -1
	}
	peerID := int(payload[1])<<16 | int(payload[2])<<8 | int(payload[3])
	return peerID % n
}

// SteerProgram returns Steer(payload, n) as a classic BPF program for SO_ATTACH_REUSEPORT_CBPF.
// The kernel runs it on the UDP payload (it pulls the UDP header first, for IPv4 and IPv6 alike:
// net/ipv4/udp.c and net/ipv6/udp.c pass sizeof(struct udphdr) to reuseport_select_sock, so one
// program steers the shards of either family's listener) and takes its answer as
// the index of the socket in the reuseport group; an index >= n makes it fall back to its hash
// of the addresses (net/core/sock_reuseport.c, run_bpf_filter), which is Steer's -1: the program
// answers n for those. The length is checked before any load, since a load past the end aborts
// a classic program with 0, which would steer short datagrams to shard 0.
func SteerProgram(n int) ([]bpf.RawInstruction, error) {
	if n < 1 || n > MaxShards {
		return nil, errors.New("sock: shard count out of range")
	}
	prog := []bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtLen},
		bpf.JumpIf{Cond: bpf.JumpLessThan, Val: packet.DataV2HeaderLen, SkipTrue: 7},
		bpf.LoadAbsolute{Off: 0, Size: 1},
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf8},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(dataV2First), SkipTrue: 4},
		bpf.LoadAbsolute{Off: 0, Size: 4}, // big-endian: opcode and key id, then the peer-id
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xffffff},
		bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: uint32(n)},
		bpf.RetA{},
		bpf.RetConstant{Val: uint32(n)}, // not a P_DATA_V2 packet: the kernel's hash
	}
	// The jumps above skip to the last instruction; keep them right when editing.
	return bpf.Assemble(prog)
}
