package datacrypto

import (
	"bytes"
	"testing"
)

// FuzzOpen feeds arbitrary packets to Open with and without tail room. Open
// must never panic, must only succeed on packets the peer sealed, and its
// plaintext must lie inside the packet buffer.
func FuzzOpen(f *testing.F) {
	server := mustKeys(f, ChaCha20Poly1305, Server)
	client := mustKeys(f, ChaCha20Poly1305, Client)
	for _, hdr := range [][]byte{hdrV1, hdrV2} {
		pkt := server.Seal(packetBuf(hdr, []byte("seed")), len(hdr), 1)
		f.Add(pkt, len(hdr) == HeaderV2, true)
		f.Add(pkt, len(hdr) == HeaderV2, false)
		f.Add(pkt[:len(pkt)-1], len(hdr) == HeaderV2, true)
	}
	f.Add([]byte{}, false, false)
	f.Add(make([]byte, 24), true, true)

	f.Fuzz(func(t *testing.T, data []byte, v2, tail bool) {
		hdr := HeaderV1
		if v2 {
			hdr = HeaderV2
		}
		pkt := bytes.Clone(data)
		if tail {
			pkt = withTail(data)
		}
		id, pt, err := client.Open(pkt, hdr)
		if err != nil {
			return
		}
		if len(pt) != len(data)-hdr-Overhead {
			t.Fatalf("plaintext length %d from %d-byte packet", len(pt), len(data))
		}
		// With tail room the plaintext stays where the ciphertext was;
		// without, the ciphertext was shifted over the tag slot.
		start := hdr + Overhead
		if !tail {
			start = hdr + packetIDSize
		}
		if &pt[0] != &pkt[start] {
			t.Fatalf("plaintext does not alias the packet at offset %d", start)
		}
		// Whatever opened was sealed by the peer: re-sealing the plaintext
		// under the same header and packet-id reproduces it.
		re := server.Seal(packetBuf(data[:hdr], pt), hdr, id)
		if !bytes.Equal(re, data) {
			t.Fatalf("opened packet does not re-seal to itself")
		}
	})
}
