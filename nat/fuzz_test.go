package nat

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// Invariants checked by both fuzz targets, for any input:
//   - no panic;
//   - on error the packet is unchanged;
//   - on success only bytes inside the IPv4 total length change, and a
//     checksum that verified before still verifies after (the NAT adjusts
//     checksums, it neither breaks nor repairs them).

func fuzzSeeds(f *testing.F) {
	t := f
	for _, p := range [][]byte{
		tcpPacket(t, clientA, 40000, server, 443, "S"),
		udpPacket(t, clientA, 4000, server, 53, "q"),
		icmpEcho(t, clientA, server, icmpEchoReq, 7, 1),
		tcpPacket(t, server, 443, snatAddr, 40000, "SA"),
		udpPacket(t, server, 53, snatAddr, 4000, "a"),
		icmpEcho(t, server, snatAddr, icmpEchoReply, 7, 1),
		icmpError(t, router, snatAddr, 3, 3, udpPacket(t, snatAddr, 4000, server, 53, "q")),
		icmpError(t, router, snatAddr, 11, 0, tcpPacket(t, snatAddr, 40000, server, 443, "S")[:28]),
		icmpError(t, router, snatAddr, 3, 1, icmpEcho(t, snatAddr, server, icmpEchoReq, 7, 1)),
		icmpError(t, clientA, server, 3, 3, udpPacket(t, server, 53, clientA, 4000, "a")),
		{0x45, 0, 0, 20},
	} {
		f.Add(p)
		if len(p) < 40 {
			continue
		}
		first, second := fragment(p, 8)
		f.Add(first)
		f.Add(second)
	}
}

// fuzzTable returns a table holding mappings the seeds match.
func fuzzTable(t testing.TB) *Table {
	tab, _ := newTable(t, Config{MaxEntries: 64})
	for _, p := range [][]byte{
		tcpPacket(t, clientA, 40000, server, 443, "S"),
		udpPacket(t, clientA, 4000, server, 53, "q"),
		icmpEcho(t, clientA, server, icmpEchoReq, 7, 1),
	} {
		if err := tab.Outbound(p); err != nil {
			t.Fatal(err)
		}
	}
	return tab
}

func checkFuzzResult(t *testing.T, in, out []byte, err error) {
	if err != nil {
		if !bytes.Equal(in, out) {
			t.Fatalf("error %v, yet the packet changed", err)
		}
		return
	}
	end := int(binary.BigEndian.Uint16(in[2:]))
	if !bytes.Equal(in[end:], out[end:]) {
		t.Fatal("bytes past the IPv4 total length changed")
	}
	inOK, outOK := checksumsOK(in[:end]), checksumsOK(out[:end])
	for i := range inOK {
		if inOK[i] && !outOK[i] {
			t.Fatalf("checksum %d verified before translation and not after\nin  %x\nout %x", i, in, out)
		}
	}
}

// checksumsOK reports which of the checksums in p verify: IPv4 header,
// transport (whole unfragmented packets), and for an ICMP error the quoted
// IPv4 header and, if quoted whole, the quoted transport checksum.
func checksumsOK(p []byte) [4]bool {
	var ok [4]bool
	ok[0] = ipHeaderOK(p)
	frag := binary.BigEndian.Uint16(p[6:])&(flagMoreFragments|fragOffsetMask) != 0
	hl := int(p[0]&0x0f) * 4
	l4 := p[hl:]
	if frag || (p[9] == protoTCP && len(l4) < 20) || (p[9] == protoUDP && len(l4) < 8) || (p[9] == protoICMP && len(l4) < 8) {
		return ok
	}
	if p[9] != protoTCP && p[9] != protoUDP && p[9] != protoICMP {
		return ok
	}
	ok[1] = transportOK(p)
	if p[9] == protoICMP && len(l4) >= 8+20 && l4[8]>>4 == 4 {
		inner := l4[8:]
		ihl := int(inner[0]&0x0f) * 4
		if ihl >= 20 && len(inner) >= ihl {
			ok[2] = ipHeaderOK(inner)
			minLen := ihl + 8
			if inner[9] == protoTCP {
				minLen = ihl + 20
			}
			if tl := int(binary.BigEndian.Uint16(inner[2:])); tl == len(inner) && tl >= minLen {
				ok[3] = transportOK(inner)
			}
		}
	}
	return ok
}

func FuzzOutbound(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		tab := fuzzTable(t)
		out := append([]byte(nil), in...)
		err := tab.Outbound(out)
		checkFuzzResult(t, in, out, err)
		if err == nil && !bytes.Equal(out[12:16], snatAddr.AsSlice()) {
			t.Fatalf("translated packet's source is %v", out[12:16])
		}
	})
}

func FuzzInbound(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		tab := fuzzTable(t)
		out := append([]byte(nil), in...)
		client, err := tab.Inbound(out)
		checkFuzzResult(t, in, out, err)
		if err == nil && (client != clientA || !bytes.Equal(out[16:20], clientA.AsSlice())) {
			t.Fatalf("translated to %v, destination %v", client, out[16:20])
		}
	})
}
