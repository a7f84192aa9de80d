package sock

import (
	"math/rand/v2"
	"testing"

	"golang.org/x/net/bpf"

	"github.com/cvpn/cvpn/tls/packet"
)

// Known answers: data packets by peer-id, everything else to the network's hash.
func TestSteer(t *testing.T) {
	v2 := func(keyID uint8, peerID uint32, rest ...byte) []byte {
		b := make([]byte, packet.DataV2HeaderLen, packet.DataV2HeaderLen+len(rest))
		packet.PutDataHeader(b, packet.DataV2, keyID, peerID)
		return append(b, rest...)
	}
	for _, tc := range []struct {
		name    string
		payload []byte
		n, want int
	}{
		{"peer 0", v2(0, 0, 1, 2, 3), 2, 0},
		{"peer 5 of 2", v2(1, 5, 1), 2, 1},
		{"peer 5 of 4, key 7", v2(7, 5), 4, 1},
		{"header only", v2(0, 7), 3, 1},
		{"24-bit peer-id", v2(2, 0xabcdef), 1000, 0xabcdef % 1000},
		{"no peer-id (0xffffff)", v2(0, packet.NoPeerID), 7, 0xffffff % 7},
		{"one shard", v2(0, 123), 1, 0},
		{"short", v2(0, 5)[:3], 2, -1},
		{"empty", nil, 2, -1},
		{"P_DATA_V1", []byte{byte(packet.DataV1) << 3, 0, 0, 5, 9}, 2, -1},
		{"hard reset", []byte{byte(packet.HardResetClientV2) << 3, 1, 2, 3, 4, 5, 6, 7, 8}, 2, -1},
		{"P_CONTROL_V1", []byte{byte(packet.ControlV1)<<3 | 1, 0, 0, 1}, 2, -1},
		{"opcode 9 shifted wrong", []byte{9, 0, 0, 1}, 2, -1},
		{"opcode 25 (bit 4 set)", []byte{25 << 3, 0, 0, 1}, 2, -1},
	} {
		if got := Steer(tc.payload, tc.n); got != tc.want {
			t.Errorf("%s: Steer(% x, %d) = %d, want %d", tc.name, tc.payload, tc.n, got, tc.want)
		}
		if got := runSteerProgram(t, tc.payload, tc.n); got != tc.want {
			t.Errorf("%s: program(% x, %d) = %d, want %d", tc.name, tc.payload, tc.n, got, tc.want)
		}
	}
}

func TestSteerProgramBounds(t *testing.T) {
	for _, n := range []int{0, -1, MaxShards + 1} {
		if _, err := SteerProgram(n); err == nil {
			t.Errorf("SteerProgram(%d) took a shard count out of range", n)
		}
	}
	if _, err := SteerProgram(MaxShards); err != nil {
		t.Errorf("SteerProgram(MaxShards): %v", err)
	}
}

// The program agrees with Steer on random payloads, most of them shaped like data packets, for
// shard counts up to and past a host's cores.
func TestSteerProgramAgrees(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 3, 4, 7, 8, 16, 64, 1000, MaxShards} {
		vm := steerVM(t, n)
		for range 2000 {
			p := make([]byte, rng.IntN(12))
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			if len(p) > 0 && rng.IntN(2) == 0 {
				p[0] = byte(packet.DataV2)<<3 | p[0]&7
			}
			checkAgree(t, vm, p, n)
		}
	}
}

// FuzzSteer checks the BPF program against Steer: the kernel must steer each datagram where
// the in-memory network does.
func FuzzSteer(f *testing.F) {
	f.Add([]byte{byte(packet.DataV2) << 3, 0, 0, 5, 1, 2}, uint16(2))
	f.Add([]byte{byte(packet.DataV2)<<3 | 7, 0xff, 0xff, 0xff}, uint16(3))
	f.Add([]byte{byte(packet.DataV2) << 3, 1, 2}, uint16(2))
	f.Add([]byte{byte(packet.DataV1) << 3, 1, 2, 3}, uint16(4))
	f.Add([]byte{byte(packet.HardResetClientV2) << 3, 1, 2, 3, 4, 5, 6, 7, 8, 9}, uint16(1))
	f.Add([]byte{}, uint16(8))
	f.Fuzz(func(t *testing.T, payload []byte, shards uint16) {
		n := int(shards)%MaxShards + 1
		got := Steer(payload, n)
		if got < -1 || got >= n {
			t.Fatalf("Steer(% x, %d) = %d, out of range", payload, n, got)
		}
		checkAgree(t, steerVM(t, n), payload, n)
	})
}

func steerVM(t testing.TB, n int) *bpf.VM {
	t.Helper()
	raw, err := SteerProgram(n)
	if err != nil {
		t.Fatal(err)
	}
	prog, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatalf("SteerProgram(%d) does not disassemble", n)
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatalf("SteerProgram(%d): %v", n, err)
	}
	return vm
}

// runSteerProgram runs the program as the kernel would and maps its answer as the kernel does:
// an index >= n is the kernel's hash, Steer's -1.
func runSteerProgram(t testing.TB, payload []byte, n int) int {
	t.Helper()
	return runVM(t, steerVM(t, n), payload, n)
}

func runVM(t testing.TB, vm *bpf.VM, payload []byte, n int) int {
	t.Helper()
	ret, err := vm.Run(payload)
	if err != nil {
		t.Fatalf("program on % x: %v", payload, err)
	}
	if ret < 0 || ret >= n {
		return -1
	}
	return ret
}

func checkAgree(t testing.TB, vm *bpf.VM, payload []byte, n int) {
	t.Helper()
	if got, want := runVM(t, vm, payload, n), Steer(payload, n); got != want {
		t.Fatalf("program(% x, %d) = %d, Steer = %d", payload, n, got, want)
	}
}
