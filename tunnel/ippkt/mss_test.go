package ippkt

import (
	"encoding/binary"
	"testing"
)

// syn6 is an IPv6 TCP SYN through exts with TCP options opts and a valid checksum.
func syn6(exts []ext, opts ...byte) (pkt []byte, transport int) {
	pkt = packet6(client6, server6, exts, ProtoTCP, synSegment(opts...))
	transport = len(pkt) - len(synSegment(opts...))
	setL4Checksum6(pkt, transport, tcpChecksum, ProtoTCP)
	return pkt, transport
}

func mssAt(pkt []byte, at int) uint16 { return binary.BigEndian.Uint16(pkt[at:]) }

func TestClampMSS6(t *testing.T) {
	chain := []ext{hopByHop(1), destOpts(2), fragment(0, false, 3)}
	for _, tc := range []struct {
		name    string
		exts    []ext
		opts    []byte
		at      int // offset of the MSS value in the TCP header
		changed bool
		want    uint16
	}{
		{"first option", nil, mssOption(1460), 22, true, 1360},
		{"after extension headers", chain, mssOption(1460), 22, true, 1360},
		{"odd offset after a no-op", chain, append([]byte{1}, append(mssOption(1460), 1, 3, 3, 7)...), 23, true, 1360},
		{"after window scale", nil, append([]byte{3, 3, 7}, mssOption(9000)...), 25, true, 1360},
		{"already smaller", nil, mssOption(1200), 22, false, 1200},
		{"equal", nil, mssOption(1360), 22, false, 1360},
		{"after end of list", nil, append([]byte{0, 0, 0, 0}, mssOption(1460)...), 26, false, 1460},
		{"bad length before", nil, append([]byte{8, 1, 0, 0}, mssOption(1460)...), 26, false, 1460},
		{"option past the header", nil, []byte{1, 1, 2, 4, 5, 0xb4}, 24, false, 1460},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt, tr := syn6(tc.exts, tc.opts...)
			if tc.name == "option past the header" {
				// data offset covers 4 option bytes: the MSS option straddles its end
				pkt[tr+12] = 6 << 4
				setL4Checksum6(pkt, tr, tcpChecksum, ProtoTCP)
			}
			if got := ClampMSS6(pkt, 1360); got != tc.changed {
				t.Fatalf("changed %v, want %v", got, tc.changed)
			}
			if got := mssAt(pkt, tr+tc.at); got != tc.want {
				t.Fatalf("mss %d, want %d", got, tc.want)
			}
			if !l4ChecksumOK6(pkt, tr, len(pkt), ProtoTCP) {
				t.Fatal("TCP checksum no longer verifies")
			}
		})
	}
}

// TestClampMSSUntouched: what is not the SYN of a whole or first TCP segment passes untouched.
func TestClampMSSUntouched(t *testing.T) {
	ack, tr := syn6(nil, mssOption(1460)...)
	ack[tr+13] = 0x10
	later := packet6(client6, server6, []ext{fragment(8, false, 1)}, ProtoTCP, synSegment(mssOption(1460)...))
	udp := packet6(client6, server6, nil, ProtoUDP, synSegment(mssOption(1460)...))
	short := packet6(client6, server6, nil, ProtoTCP, synSegment(mssOption(1460)...)[:19])
	for name, pkt := range map[string][]byte{"ack": ack, "later fragment": later, "udp": udp, "short": short} {
		before := clone(pkt)
		if ClampMSS6(pkt, 1000) || string(before) != string(pkt) {
			t.Errorf("%s: changed", name)
		}
	}
	v4 := packet4(client4, server4, 0, ProtoTCP, 0, synSegment(mssOption(1460)...))
	if ClampMSS6(v4, 1000) {
		t.Error("ClampMSS6 clamped IPv4")
	}
}

// TestClampMSS4: the family-neutral ClampMSS on IPv4, IPv4 options and an MSS at an odd offset
// (where an update that ignores the alignment leaves a wrong checksum).
func TestClampMSS4(t *testing.T) {
	for _, opts := range [][]byte{mssOption(1460), append([]byte{1}, mssOption(1460)...)} {
		pkt := packet4(client4, server4, 2, ProtoTCP, 0, synSegment(opts...))
		tcp := pkt[28:]
		pseudo := PseudoSum4(client4, server4, ProtoTCP, len(tcp))
		binary.BigEndian.PutUint16(tcp[16:], Checksum(tcp, pseudo))
		info, r := Parse(pkt)
		if r != OK || !ClampMSS(pkt, &info, 1360) {
			t.Fatalf("not clamped: %v", r)
		}
		if Checksum(tcp, pseudo) != 0 {
			t.Fatalf("options %x: checksum does not verify", opts)
		}
		if got := mssAt(tcp, 20+len(opts)-2); got != 1360 {
			t.Fatalf("mss %d", got)
		}
	}
}
