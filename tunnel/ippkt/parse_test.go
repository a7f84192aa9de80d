package ippkt

import (
	"encoding/binary"
	"testing"
)

func TestParse4(t *testing.T) {
	syn := synSegment(mssOption(1460)...)
	for _, tc := range []struct {
		name      string
		pkt       []byte
		want      Reason
		transport int
		frag      Fragment
		fragOff   uint16
	}{
		{name: "tcp", pkt: packet4(client4, server4, 0, ProtoTCP, 0, syn), transport: 20},
		{name: "options", pkt: packet4(client4, server4, 10, ProtoTCP, 0, syn), transport: 60},
		{name: "don't fragment", pkt: packet4(client4, server4, 0, ProtoUDP, 0x4000, make([]byte, 8)), transport: 20},
		{name: "first fragment", pkt: packet4(client4, server4, 0, ProtoUDP, 0x2000, make([]byte, 16)), transport: 20, frag: FirstFragment},
		{name: "middle fragment", pkt: packet4(client4, server4, 0, ProtoUDP, 0x2000|3, make([]byte, 16)), frag: LaterFragment, fragOff: 3},
		{name: "last fragment", pkt: packet4(client4, server4, 0, ProtoUDP, 5, make([]byte, 3)), frag: LaterFragment, fragOff: 5},
		{name: "header only", pkt: packet4(client4, server4, 0, 253, 0, nil), transport: 20},
		{name: "empty", pkt: nil, want: Truncated},
		{name: "short", pkt: packet4(client4, server4, 0, ProtoTCP, 0, syn)[:19], want: Truncated},
		{name: "ihl 4", pkt: func() []byte { p := packet4(client4, server4, 0, ProtoUDP, 0, make([]byte, 8)); p[0] = 0x44; return p }(), want: BadHeaderLength},
		{name: "ihl past total", pkt: func() []byte {
			p := packet4(client4, server4, 0, ProtoUDP, 0, nil)
			p[0] = 0x46
			return append(p, 0, 0, 0, 0)
		}(), want: BadHeaderLength},
		{name: "total past end", pkt: packet4(client4, server4, 0, ProtoTCP, 0, syn)[:30], want: BadLength},
		{name: "version 5", pkt: func() []byte { p := packet4(client4, server4, 0, ProtoUDP, 0, nil); p[0] = 0x55; return p }(), want: BadVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, r := Parse(tc.pkt)
			if r != tc.want {
				t.Fatalf("reason %v, want %v", r, tc.want)
			}
			if r != OK {
				if info != (Info{}) {
					t.Fatalf("refused with info %+v", info)
				}
				return
			}
			if info.Version != 4 || info.Src != client4 || info.Dst != server4 || info.End != len(tc.pkt) ||
				info.Transport != tc.transport || info.Frag != tc.frag || info.FragOffset != tc.fragOff ||
				info.Proto != tc.pkt[9] || info.FragID != 0x1234 {
				t.Fatalf("info %+v", info)
			}
		})
	}
}

func TestParse4TrailingBytes(t *testing.T) {
	pkt := append(packet4(client4, server4, 0, ProtoUDP, 0, make([]byte, 8)), 0xde, 0xad)
	info, r := Parse(pkt)
	if r != OK || info.End != 28 || len(info.Payload(pkt)) != 8 {
		t.Fatalf("%v %+v", r, info)
	}
}

func TestParse6(t *testing.T) {
	udp := make([]byte, 8)
	syn := synSegment(mssOption(1440)...)
	for _, tc := range []struct {
		name      string
		exts      []ext
		proto     uint8
		l4        []byte
		transport int
		frag      Fragment
		fragOff   uint16
		fragID    uint32
		nexts     uint8
	}{
		{name: "udp", proto: ProtoUDP, l4: udp, transport: 40},
		{name: "no next header, empty", proto: ProtoNoNext, transport: 40},
		{name: "no next header, bytes after", proto: ProtoNoNext, l4: []byte{1, 2, 3}, transport: 40},
		{name: "hop-by-hop", exts: []ext{hopByHop(1)}, proto: ProtoICMPv6, l4: icmp6(128, 0, nil), transport: 48, nexts: 1},
		{name: "full chain", exts: []ext{hopByHop(2), destOpts(1), routing(0, 2), fragment(0, true, 77), authHeader(3), destOpts(1)},
			proto: ProtoTCP, l4: syn, transport: 40 + 16 + 8 + 40 + 8 + 24 + 8, frag: FirstFragment, fragID: 77, nexts: 6},
		{name: "atomic fragment", exts: []ext{fragment(0, false, 9)}, proto: ProtoUDP, l4: udp, transport: 48, fragID: 9, nexts: 1},
		{name: "later fragment", exts: []ext{destOpts(1), fragment(100, true, 5)}, proto: ProtoDestOpts, l4: make([]byte, 64),
			frag: LaterFragment, fragOff: 100, fragID: 5, nexts: 2},
		{name: "last fragment, odd length", exts: []ext{fragment(100, false, 5)}, proto: ProtoTCP, l4: make([]byte, 13),
			frag: LaterFragment, fragOff: 100, fragID: 5, nexts: 1},
		{name: "esp", exts: []ext{destOpts(1)}, proto: ProtoESP, l4: make([]byte, 32), transport: 48, nexts: 1},
		{name: "unknown protocol", proto: 253, l4: []byte{1}, transport: 40},
		{name: "mobility header is upper layer", proto: 135, l4: make([]byte, 8), transport: 40},
		{name: "eight headers", exts: []ext{hopByHop(1), destOpts(1), destOpts(1), destOpts(1), destOpts(1), destOpts(1), destOpts(1), destOpts(1)},
			proto: ProtoUDP, l4: udp, transport: 40 + 64, nexts: 8},
		{name: "1024 bytes of headers", exts: []ext{destOpts(128)}, proto: ProtoUDP, l4: udp, transport: 40 + 1024, nexts: 1},
		{name: "first fragment, exactly the tcp header", exts: []ext{fragment(0, true, 1)}, proto: ProtoTCP, l4: syn[:24], transport: 48, frag: FirstFragment, fragID: 1, nexts: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt := packet6(client6, server6, tc.exts, tc.proto, tc.l4)
			info, r := Parse(pkt)
			if r != OK {
				t.Fatalf("reason %v", r)
			}
			// For a later fragment, proto is the Fragment header's Next Header.
			want := Info{Src: client6, Dst: server6, End: len(pkt), Transport: tc.transport, Proto: tc.proto, Version: 6,
				Frag: tc.frag, FragOffset: tc.fragOff, FragID: tc.fragID, Extensions: tc.nexts}
			if info != want {
				t.Fatalf("info\n %+v, want\n %+v", info, want)
			}
		})
	}
}

func TestParse6Refusals(t *testing.T) {
	udp := make([]byte, 8)
	syn := synSegment(mssOption(1440)...)
	ok := packet6(client6, server6, nil, ProtoUDP, udp)
	for _, tc := range []struct {
		name string
		pkt  []byte
		want Reason
	}{
		{"empty", nil, Truncated},
		{"short fixed header", ok[:39], Truncated},
		{"version 7", func() []byte { p := clone(ok); p[0] = 0x70; return p }(), BadVersion},
		{"version 0", make([]byte, 40), BadVersion},
		{"payload length past end", ok[:47], BadLength},
		{"jumbogram", func() []byte {
			p := packet6(client6, server6, []ext{hopByHop(1)}, ProtoUDP, udp)
			p[4], p[5] = 0, 0
			return p
		}(), Jumbogram},
		{"hop-by-hop second", packet6(client6, server6, []ext{destOpts(1), hopByHop(1)}, ProtoUDP, udp), HopByHopNotFirst},
		{"extension past payload length", func() []byte {
			p := packet6(client6, server6, []ext{destOpts(2)}, ProtoUDP, nil)
			binary.BigEndian.PutUint16(p[4:], 8)
			return p
		}(), TruncatedExtension},
		{"extension stub", packet6(client6, server6, nil, ProtoDestOpts, []byte{17, 0, 0, 0}), TruncatedExtension},
		{"fragment header stub", packet6(client6, server6, nil, ProtoFragment, []byte{17, 0, 0, 0, 0, 0, 0}), TruncatedExtension},
		{"ah too short", packet6(client6, server6, []ext{{ProtoAH, []byte{0, 0, 0, 0, 0, 0, 0, 0}}}, ProtoUDP, udp), BadExtension},
		{"nine headers", packet6(client6, server6, []ext{hopByHop(1), destOpts(1), destOpts(1), destOpts(1), destOpts(1), destOpts(1), destOpts(1), destOpts(1), destOpts(1)}, ProtoUDP, udp), TooManyExtensions},
		{"more than 1024 bytes of headers", packet6(client6, server6, []ext{destOpts(120), destOpts(9)}, ProtoUDP, udp), ExtensionsTooLong},
		{"chain split: tcp header cut", packet6(client6, server6, []ext{fragment(0, true, 1)}, ProtoTCP, syn[:16]), ChainNotInFirstFragment},
		{"chain split: udp header cut", packet6(client6, server6, []ext{fragment(0, true, 1)}, ProtoUDP, nil), ChainNotInFirstFragment},
		{"chain split: extension after fragment", packet6(client6, server6, []ext{fragment(0, true, 1)}, ProtoDestOpts, []byte{17, 1, 0, 0, 0, 0, 0, 0}), ChainNotInFirstFragment},
		{"fragment not a multiple of 8", packet6(client6, server6, []ext{fragment(0, true, 1)}, ProtoUDP, make([]byte, 12)), BadFragment},
		{"fragment past 65535", packet6(client6, server6, []ext{fragment(8190, false, 1)}, ProtoUDP, make([]byte, 16)), BadFragment},
		{"reassembled past 65535 with the headers before the fragment header", packet6(client6, server6, []ext{destOpts(1), fragment(8189, false, 1)}, ProtoUDP, make([]byte, 16)), BadFragment},
		{"two fragment headers", packet6(client6, server6, []ext{fragment(0, false, 1), fragment(0, false, 2)}, ProtoUDP, udp), BadFragment},
		{"routing with segments left", packet6(client6, server6, []ext{routing(1, 1)}, ProtoUDP, udp), RoutingHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, r := Parse(tc.pkt)
			if r != tc.want {
				t.Fatalf("reason %v, want %v (info %+v)", r, tc.want, info)
			}
			if info != (Info{}) {
				t.Fatalf("refused with info %+v", info)
			}
		})
	}
}

// TestParse6TrailingBytes: bytes after the payload length are accepted and left out of End,
// as in IPv4; a header chain that needs them is still cut short.
func TestParse6TrailingBytes(t *testing.T) {
	pkt := append(packet6(client6, server6, nil, ProtoUDP, make([]byte, 8)), 1, 2, 3)
	info, r := Parse(pkt)
	if r != OK || info.End != 48 || len(info.Payload(pkt)) != 8 {
		t.Fatalf("%v %+v", r, info)
	}
	pkt = packet6(client6, server6, []ext{destOpts(1)}, ProtoUDP, nil)
	binary.BigEndian.PutUint16(pkt[4:], 0)
	if _, r := Parse(pkt); r != TruncatedExtension {
		t.Fatalf("chain past the payload length: %v", r)
	}
}

func TestParseEmbedded(t *testing.T) {
	syn := synSegment(mssOption(1440)...)
	whole := packet6(client6, server6, []ext{destOpts(1)}, ProtoTCP, syn)
	for _, tc := range []struct {
		name string
		b    []byte
		want Reason
		end  int
	}{
		{"whole", whole, OK, len(whole)},
		{"cut in the tcp header", whole[:48+8], OK, 56},
		{"ports cut", whole[:48+7], Truncated, 0},
		{"chain cut", whole[:47], Truncated, 0},
		{"fixed header cut", whole[:39], Truncated, 0},
		{"ipv4 cut", packet4(client4, server4, 0, ProtoTCP, 0, syn)[:28], OK, 28},
		{"ipv4 ports cut", packet4(client4, server4, 0, ProtoTCP, 0, syn)[:27], Truncated, 0},
		{"ipv4 options cut", packet4(client4, server4, 2, ProtoTCP, 0, syn)[:27], Truncated, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, r := ParseEmbedded(tc.b)
			if r != tc.want || info.End != tc.end {
				t.Fatalf("reason %v end %d, want %v %d", r, info.End, tc.want, tc.end)
			}
			if r == OK && (info.Proto != ProtoTCP || info.Transport == 0) {
				t.Fatalf("info %+v", info)
			}
			if _, r := Parse(tc.b); tc.end != len(whole) && tc.end != 0 && r == OK {
				t.Fatalf("Parse accepts a cut packet")
			}
		})
	}
}

func TestReasonNames(t *testing.T) {
	seen := map[string]bool{}
	for r := range NumReasons {
		s := r.String()
		if s == "" || s == "unknown" || seen[s] {
			t.Fatalf("reason %d named %q", r, s)
		}
		seen[s] = true
	}
	if NumReasons.String() != "unknown" {
		t.Fatal("out of range reason has a name")
	}
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
