package ippkt

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestSumAgainstReference: Sum folded equals the slow 16-bit sum for every length and offset
// (the 16-, 4-, 2- and 1-byte tails), and pieces of even length add up.
func TestSumAgainstReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 300)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	for n := range len(buf) {
		for _, start := range []uint32{0, 0xffff, 0xffffffff} {
			got := Fold(Sum(buf[:n], start))
			want := refSum(buf[:n], Fold(start))
			if got != want && !(got == 0xffff && want == 0) && !(got == 0 && want == 0xffff) {
				t.Fatalf("len %d start %#x: %#x, want %#x", n, start, got, want)
			}
		}
		split := n &^ 1 / 2 &^ 1
		if got, want := Fold(Sum(buf[split:n], Sum(buf[:split], 0))), Fold(Sum(buf[:n], 0)); got != want {
			t.Fatalf("len %d split %d: %#x, want %#x", n, split, got, want)
		}
	}
	// All ones, 64 KiB: the widest sum a packet gives.
	big := make([]byte, 65536)
	for i := range big {
		big[i] = 0xff
	}
	if got := Fold(Sum(big, 0)); got != 0xffff {
		t.Fatalf("64 KiB of ones: %#x", got)
	}
}

// TestChecksumKnownAnswer: the example of RFC 1071 §3.
func TestChecksumKnownAnswer(t *testing.T) {
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if got := Fold(Sum(b, 0)); got != 0xddf2 {
		t.Fatalf("sum %#x, want 0xddf2", got)
	}
	if got := Checksum(b, 0); got != ^uint16(0xddf2) {
		t.Fatalf("checksum %#x", got)
	}
}

func TestPseudoSum6(t *testing.T) {
	for _, length := range []int{0, 8, 1232, 65535, 70000} {
		want := refSum(refPseudo6(client6, server6, ProtoUDP, length), 0)
		if got := Fold(PseudoSum6(client6, server6, ProtoUDP, length)); got != want {
			t.Fatalf("length %d: %#x, want %#x", length, got, want)
		}
	}
}

func TestPseudoSum4(t *testing.T) {
	b := []byte{10, 2, 0, 2, 10, 0, 1, 10, 0, ProtoTCP, 0x05, 0xdc}
	if got, want := Fold(PseudoSum4(client4, server4, ProtoTCP, 1500)), refSum(b, 0); got != want {
		t.Fatalf("%#x, want %#x", got, want)
	}
}

// TestUpdate: an incremental update of any word, at even or odd offset (byte-swapped), and of
// addresses, gives a checksum that verifies, as recomputing would.
func TestUpdate(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		b := make([]byte, 2+rng.IntN(200))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		b[0], b[1] = 0, 0
		binary.BigEndian.PutUint16(b, Checksum(b, 0))
		at := 2 + rng.IntN(len(b)-1)
		if at+2 > len(b) {
			continue
		}
		old := binary.BigEndian.Uint16(b[at:])
		nv := uint16(rng.Uint32())
		binary.BigEndian.PutUint16(b[at:], nv)
		o, n := old, nv
		if at%2 == 1 {
			o, n = bits.ReverseBytes16(o), bits.ReverseBytes16(n)
		}
		binary.BigEndian.PutUint16(b, Update16(binary.BigEndian.Uint16(b), o, n))
		if Checksum(b, 0) != 0 {
			t.Fatalf("update at %d of %d bytes does not verify", at, len(b))
		}
	}
	// An address in a pseudo-header: UpdateAddr equals recomputing.
	payload := []byte{1, 2, 3, 4, 5}
	from := Checksum(payload, PseudoSum6(client6, server6, ProtoUDP, len(payload)))
	to := Checksum(payload, PseudoSum6(gateway6, server6, ProtoUDP, len(payload)))
	if got := UpdateAddr(from, client6, gateway6); got != to {
		t.Fatalf("UpdateAddr6 %#x, want %#x", got, to)
	}
	from = Checksum(payload, PseudoSum4(client4, server4, ProtoUDP, len(payload)))
	to = Checksum(payload, PseudoSum4(netip.MustParseAddr("192.0.2.1"), server4, ProtoUDP, len(payload)))
	if got := UpdateAddr(from, client4, netip.MustParseAddr("192.0.2.1")); got != to {
		t.Fatalf("UpdateAddr4 %#x, want %#x", got, to)
	}
}
