package ippkt

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// fuzzSeeds adds packets of both families that reach every branch of the walk.
func fuzzSeeds(f *testing.F, add func(pkt []byte)) {
	syn := synSegment(append([]byte{1}, mssOption(1460)...)...)
	chain := []ext{hopByHop(1), destOpts(1), routing(0, 1), fragment(0, true, 7), authHeader(3), destOpts(2)}
	echo, _ := echoRequest6(gateway6, []ext{hopByHop(1)}, []byte("ping"))
	synChain, _ := syn6(chain, append([]byte{1}, mssOption(1460)...)...)
	for _, p := range [][]byte{
		packet6(client6, server6, nil, ProtoUDP, make([]byte, 8)),
		packet6(client6, server6, chain, ProtoTCP, syn),
		synChain,
		echo,
		packet6(client6, server6, []ext{fragment(3, true, 1)}, ProtoUDP, make([]byte, 16)),
		packet6(client6, server6, []ext{fragment(0, false, 1)}, ProtoESP, make([]byte, 16)),
		packet6(client6, server6, []ext{routing(2, 2)}, ProtoNoNext, nil),
		packet6(server6, client6, nil, ProtoICMPv6, icmp6(2, 1280, packet6(client6, server6, []ext{destOpts(1)}, ProtoUDP, make([]byte, 8)))),
		packet4(client4, server4, 0, ProtoTCP, 0, syn),
		packet4(client4, server4, 2, ProtoUDP, 0x2000, make([]byte, 16)),
		packet4(server4, client4, 0, ProtoICMP, 0, append(icmp6(3, 0, nil), packet4(client4, server4, 0, ProtoUDP, 0, make([]byte, 8))...)),
		{0x60},
	} {
		add(p)
	}
}

// FuzzParse: for any bytes, Parse does not panic or change them; what it accepts is
// consistent with the bytes and in bounds; gopacket agrees where both accept; ParseEmbedded
// stays in bounds too.
func FuzzParse(f *testing.F) {
	fuzzSeeds(f, func(p []byte) { f.Add(p) })
	f.Fuzz(func(t *testing.T, pkt []byte) {
		before := clone(pkt)
		info, r := Parse(pkt)
		if !bytes.Equal(before, pkt) {
			t.Fatal("Parse changed the packet")
		}
		if r != OK {
			if info != (Info{}) {
				t.Fatalf("refused (%v) with info %+v", r, info)
			}
		} else {
			checkInfo(t, pkt, &info, false)
		}
		compareOracle(t, pkt)
		if e, r := ParseEmbedded(pkt); r == OK {
			checkInfo(t, pkt, &e, true)
		}
	})
}

func checkInfo(t *testing.T, pkt []byte, i *Info, embedded bool) {
	t.Helper()
	hl := IPv4HeaderLen
	if i.Version == 6 {
		hl = IPv6HeaderLen
	}
	switch {
	case i.Version != pkt[0]>>4:
		t.Fatalf("version %d", i.Version)
	case i.End < hl || i.End > len(pkt):
		t.Fatalf("end %d of %d bytes", i.End, len(pkt))
	case (i.Transport == 0) != (i.Frag == LaterFragment):
		t.Fatalf("transport %d with fragment %d", i.Transport, i.Frag)
	case i.Transport != 0 && (i.Transport < hl || i.Transport > i.End):
		t.Fatalf("transport %d, end %d", i.Transport, i.End)
	case i.Version == 6 && i.Transport > IPv6HeaderLen+MaxExtensionBytes:
		t.Fatalf("transport %d past the cap", i.Transport)
	case i.Extensions > MaxExtensionHeaders:
		t.Fatalf("%d extension headers", i.Extensions)
	case embedded && i.Transport != 0 && i.Proto != ProtoNoNext && i.End-i.Transport < 8:
		t.Fatalf("embedded packet without ports: %+v", i)
	}
	if i.Version == 4 && (i.Src.As4() != [4]byte(pkt[12:16]) || i.Dst.As4() != [4]byte(pkt[16:20])) ||
		i.Version == 6 && (i.Src.As16() != [16]byte(pkt[8:24]) || i.Dst.As16() != [16]byte(pkt[24:40])) {
		t.Fatalf("addresses %v %v", i.Src, i.Dst)
	}
}

// FuzzClampMSS6: given any packet with a TCP checksum made valid from scratch, ClampMSS6 (and
// ClampMSS for IPv4) leaves a checksum equal to one recomputed from scratch, changes nothing
// when it says so, and never raises the MSS.
func FuzzClampMSS6(f *testing.F) {
	fuzzSeeds(f, func(p []byte) { f.Add(p, uint16(1360)) })
	f.Fuzz(func(t *testing.T, pkt []byte, mss uint16) {
		info, r := Parse(pkt)
		if r != OK || info.Proto != ProtoTCP || info.Transport == 0 || info.End-info.Transport < tcpMinLen {
			if ClampMSS6(pkt, mss) {
				t.Fatal("clamped what is no whole TCP header")
			}
			return
		}
		tcp := pkt[info.Transport:info.End]
		pseudo := refPseudo(&info)
		tcp[16], tcp[17] = 0, 0
		binary.BigEndian.PutUint16(tcp[16:], ^refSum(tcp, refSum(pseudo, 0)))
		before := clone(pkt)
		var changed bool
		if info.Version == 6 {
			changed = ClampMSS6(pkt, mss)
		} else {
			changed = ClampMSS(pkt, &info, mss)
		}
		if !changed {
			if !bytes.Equal(before, pkt) {
				t.Fatal("unchanged, yet the packet changed")
			}
			return
		}
		got := binary.BigEndian.Uint16(tcp[16:])
		tcp[16], tcp[17] = 0, 0
		want := ^refSum(tcp, refSum(pseudo, 0))
		binary.BigEndian.PutUint16(tcp[16:], got)
		if got != want && !(got == 0xffff && want == 0) {
			t.Fatalf("checksum %#04x, recomputed %#04x", got, want)
		}
		diff := 0
		for k := range pkt {
			if pkt[k] != before[k] {
				diff++
				if k < info.Transport+tcpMinLen && k != info.Transport+16 && k != info.Transport+17 {
					t.Fatalf("byte %d changed", k)
				}
			}
		}
		if diff == 0 || diff > 4 {
			t.Fatalf("%d bytes changed", diff)
		}
	})
}

// refPseudo is the pseudo-header of either family as bytes.
func refPseudo(i *Info) []byte {
	if i.Version == 6 {
		return refPseudo6(i.Src, i.Dst, i.Proto, i.End-i.Transport)
	}
	s, d := i.Src.As4(), i.Dst.As4()
	l := i.End - i.Transport
	return append(append(s[:], d[:]...), 0, i.Proto, byte(l>>8), byte(l))
}

// FuzzICMP: for any packet, the ICMP builders stay in bounds, and what they build parses,
// verifies and says what it should: EchoReply from the request's destination back to its
// source, PacketTooBig within 1280 bytes carrying the packet's start, Embedded's offset inside
// the packet.
func FuzzICMP(f *testing.F) {
	fuzzSeeds(f, func(p []byte) { f.Add(p, uint32(1400)) })
	f.Fuzz(func(t *testing.T, pkt []byte, mtu uint32) {
		info, r := Parse(pkt)
		if r != OK {
			return
		}
		if off, ok := Embedded(pkt, &info); ok {
			if off != info.Transport+8 || off > info.End {
				t.Fatalf("embedded at %d, end %d", off, info.End)
			}
			if e, r := ParseEmbedded(pkt[off:info.End]); r == OK {
				checkInfo(t, pkt[off:info.End], &e, true)
			}
		}

		buf := make([]byte, PacketTooBigLen)
		if msg, r := PacketTooBig(buf, pkt, &info, gateway6, mtu); r == OK {
			m, r := Parse(msg)
			if r != OK || len(msg) > MinMTU6 || m.Src != gateway6 || m.Dst != info.Src || m.Proto != ProtoICMPv6 ||
				!bytes.Equal(msg[48:], pkt[:len(msg)-48]) || binary.BigEndian.Uint32(msg[44:]) != mtu {
				t.Fatalf("packet too big %v %+v", r, m)
			}
			if !l4ChecksumOK6(msg, 40, len(msg), ProtoICMPv6) {
				t.Fatal("packet too big: checksum")
			}
		} else if r == ErrorAboutError && info.Proto != ProtoICMPv6 {
			t.Fatal("error about error for a non-ICMPv6 packet")
		}

		req := clone(pkt)
		if reply, r := EchoReply(req, &info, info.Dst); r == OK {
			m, r := Parse(reply)
			if r != OK || m.Src != info.Dst || m.Dst != info.Src || m.Transport != len(reply)-(info.End-info.Transport) {
				t.Fatalf("echo reply %v %+v", r, m)
			}
			var ok bool
			if m.Version == 6 {
				ok = l4ChecksumOK6(reply, m.Transport, m.End, ProtoICMPv6)
			} else {
				ok = refSum(reply[:20], 0) == 0xffff && refSum(reply[20:], 0) == 0xffff
			}
			if !ok {
				t.Fatal("echo reply: checksum")
			}
		} else if !bytes.Equal(req, pkt) {
			t.Fatalf("refused (%v), yet changed", r)
		}
	})
}
