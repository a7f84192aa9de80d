package ippkt

import "testing"

// TestNoAllocs: parsing, checksums, MSS clamping and the ICMP builders allocate nothing, for
// either family, on the packets the data plane sees most and on the longest walks.
func TestNoAllocs(t *testing.T) {
	v4 := packet4(client4, server4, 0, ProtoTCP, 0, synSegment(mssOption(1460)...))
	chain := packet6(client6, server6, []ext{hopByHop(1), destOpts(1), routing(0, 1), fragment(0, false, 7), authHeader(3), destOpts(2), destOpts(1), destOpts(1)}, ProtoUDP, make([]byte, 1200))
	syn, _ := syn6([]ext{hopByHop(1)}, mssOption(1460)...)
	echo, _ := echoRequest6(gateway6, nil, make([]byte, 56))
	embedded := packet6(server6, client6, nil, ProtoICMPv6, icmp6(1, 0, chain[:200]))
	buf := make([]byte, PacketTooBigLen)
	work := make([]byte, len(echo))
	var sink int
	for name, fn := range map[string]func(){
		"Parse4": func() { i, _ := Parse(v4); sink += i.End },
		"Parse6 eight extension headers": func() {
			i, r := Parse(chain)
			if r != OK || i.Extensions != 8 {
				t.Fatal(r)
			}
			sink += i.Transport
		},
		"ParseEmbedded": func() {
			i, _ := Parse(embedded)
			off, _ := Embedded(embedded, &i)
			e, r := ParseEmbedded(embedded[off:])
			if r != OK {
				t.Fatal(r)
			}
			sink += e.Transport
		},
		"Checksum":   func() { sink += int(Checksum(chain, PseudoSum6(client6, server6, ProtoUDP, len(chain)))) },
		"UpdateAddr": func() { sink += int(UpdateAddr(0x1234, client6, server6)) },
		"ClampMSS6": func() {
			syn[40+8+22], syn[40+8+23] = 0x05, 0xb4
			ClampMSS6(syn, 1360)
		},
		"ClampMSS4": func() { i, _ := Parse(v4); ClampMSS(v4, &i, 1400) },
		"EchoReply6": func() {
			copy(work, echo)
			i, _ := Parse(work)
			if _, r := EchoReply(work, &i, gateway6); r != OK {
				t.Fatal(r)
			}
		},
		"PacketTooBig": func() {
			i, _ := Parse(chain)
			if _, r := PacketTooBig(buf, chain, &i, gateway6, 1400); r != OK {
				t.Fatal(r)
			}
		},
	} {
		if n := testing.AllocsPerRun(100, fn); n != 0 {
			t.Errorf("%s: %.1f allocations per run", name, n)
		}
	}
	_ = sink
}
