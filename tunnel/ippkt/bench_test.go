package ippkt

import "testing"

var benchSink Info

func BenchmarkParse4(b *testing.B) {
	pkt := packet4(client4, server4, 0, ProtoTCP, 0, make([]byte, 1380))
	b.ReportAllocs()
	for b.Loop() {
		benchSink, _ = Parse(pkt)
	}
}

// BenchmarkParse6: the plain packet every dual-stack client sends, and the longest walk the
// caps allow (eight headers), which bounds what any IPv6 input costs.
func BenchmarkParse6(b *testing.B) {
	for _, bc := range []struct {
		name string
		exts []ext
	}{
		{"plain", nil},
		{"fragment", []ext{fragment(0, true, 7)}},
		{"eight_headers", []ext{hopByHop(1), destOpts(1), routing(0, 1), fragment(0, true, 7), authHeader(3), destOpts(2), destOpts(1), destOpts(1)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			pkt := packet6(client6, server6, bc.exts, ProtoTCP, make([]byte, 1360))
			b.ReportAllocs()
			for b.Loop() {
				benchSink, _ = Parse(pkt)
			}
		})
	}
}

func BenchmarkChecksum1500(b *testing.B) {
	pkt := make([]byte, 1500)
	for i := range pkt {
		pkt[i] = byte(i)
	}
	b.SetBytes(int64(len(pkt)))
	var s uint16
	for b.Loop() {
		s += Checksum(pkt, 0)
	}
	_ = s
}

func BenchmarkClampMSS6(b *testing.B) {
	syn, tr := syn6([]ext{hopByHop(1)}, mssOption(1460)...)
	b.ReportAllocs()
	for b.Loop() {
		syn[tr+22], syn[tr+23] = 0x05, 0xb4
		ClampMSS6(syn, 1360)
	}
}

func BenchmarkEchoReply6(b *testing.B) {
	echo, _ := echoRequest6(gateway6, nil, make([]byte, 56))
	work := make([]byte, len(echo))
	b.ReportAllocs()
	for b.Loop() {
		copy(work, echo)
		i, _ := Parse(work)
		EchoReply(work, &i, gateway6)
	}
}

func BenchmarkPacketTooBig(b *testing.B) {
	pkt := packet6(server6, client6, nil, ProtoTCP, make([]byte, 1400))
	buf := make([]byte, PacketTooBigLen)
	info, _ := Parse(pkt)
	b.ReportAllocs()
	for b.Loop() {
		PacketTooBig(buf, pkt, &info, gateway6, 1400)
	}
}
