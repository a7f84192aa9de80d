package nat

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// Invariants checked by both fuzz targets, for any input of either family:
//   - no panic;
//   - on error the packet is unchanged;
//   - on success only bytes inside the IPv4 total length or the IPv6 payload
//     length change, and a checksum that verified before still verifies
//     after (the NAT adjusts checksums, it neither breaks nor repairs them).
//
// FuzzRoundTrip6 (fuzz6_test.go) checks what a translation must give for
// well-formed IPv6 flows.

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
		tcp6Packet(t, client6A, 40000, server6, 443, "S"),
		udp6Packet(t, client6A, 4000, server6, 53, "q"),
		icmp6Echo(t, client6A, server6, icmp6EchoRequest, 7, 1),
		tcp6Ext(t, client6A, 40000, server6, 443, "PA"),
		tcp6Packet(t, server6, 443, snat6, 40000, "SA"),
		udp6Packet(t, server6, 53, snat6, 4000, "a"),
		icmp6Echo(t, server6, snat6, icmp6EchoReply, 7, 1),
		icmp6Error(t, router6, snat6, icmp6PacketTooBig, 0, 1280, udp6Packet(t, snat6, 4000, server6, 53, "q")),
		icmp6Error(t, router6, snat6, icmp6TimeExceeded, 0, 0, tcp6Packet(t, snat6, 40000, server6, 443, "S")[:48]),
		icmp6Error(t, router6, snat6, icmp6Unreach, 1, 0, icmp6Echo(t, snat6, server6, icmp6EchoRequest, 7, 1)),
		icmp6Error(t, client6A, server6, icmp6Unreach, 4, 0, udp6Packet(t, server6, 53, client6A, 4000, "a")),
		{0x60, 0, 0, 0, 0, 0, 0, 0},
	} {
		f.Add(p)
		if len(p) < 64 {
			continue
		}
		if p[0]>>4 == 6 {
			first, second := fragment6(p, 16, 3)
			f.Add(first)
			f.Add(second)
			continue
		}
		first, second := fragment(p, 8)
		f.Add(first)
		f.Add(second)
	}
}

// fuzzTable returns a table holding mappings the seeds match.
func fuzzTable(t testing.TB) *Table {
	tab, _ := newTable6(t, Config{MaxEntries: 64})
	for _, p := range [][]byte{
		tcpPacket(t, clientA, 40000, server, 443, "S"),
		udpPacket(t, clientA, 4000, server, 53, "q"),
		icmpEcho(t, clientA, server, icmpEchoReq, 7, 1),
		tcp6Packet(t, client6A, 40000, server6, 443, "S"),
		udp6Packet(t, client6A, 4000, server6, 53, "q"),
		icmp6Echo(t, client6A, server6, icmp6EchoRequest, 7, 1),
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
	var end int
	var inOK, outOK [4]bool
	if in[0]>>4 == 6 {
		end = 40 + int(binary.BigEndian.Uint16(in[4:]))
		inOK, outOK = checksums6OK(in[:end]), checksums6OK(out[:end])
	} else {
		end = int(binary.BigEndian.Uint16(in[2:]))
		inOK, outOK = checksumsOK(in[:end]), checksumsOK(out[:end])
	}
	if !bytes.Equal(in[end:], out[end:]) {
		t.Fatal("bytes past the IP packet's length changed")
	}
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

// checksums6OK reports which of the checksums in the IPv6 packet p verify:
// the upper layer's (whole unfragmented packets) and, for an ICMPv6 error
// quoting a whole packet, the quoted upper layer's.
func checksums6OK(p []byte) [4]bool {
	var ok [4]bool
	ok[1] = transport6OK(p)
	if proto, off, frag := upper6(p); !frag && proto == protoICMPv6 && off+8 <= len(p) && p[off] >= 1 && p[off] <= 4 {
		ok[3] = transport6OK(p[off+8:])
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
		switch {
		case err != nil:
		case in[0]>>4 == 6 && !bytes.Equal(out[8:24], snat6.AsSlice()):
			t.Fatalf("translated packet's source is %x", out[8:24])
		case in[0]>>4 == 4 && !bytes.Equal(out[12:16], snatAddr.AsSlice()):
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
		switch {
		case err != nil:
		case in[0]>>4 == 6 && (client != client6A || !bytes.Equal(out[24:40], client6A.AsSlice())):
			t.Fatalf("translated to %v, destination %x", client, out[24:40])
		case in[0]>>4 == 4 && (client != clientA || !bytes.Equal(out[16:20], clientA.AsSlice())):
			t.Fatalf("translated to %v, destination %v", client, out[16:20])
		}
	})
}
