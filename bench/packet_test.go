package bench

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// TestUDPTemplateChecksums checks the incrementally computed checksums against gopacket's
// decoding, over sizes of both parities and random headers.
func TestUDPTemplateChecksums(t *testing.T) {
	src := netip.MustParseAddrPort("10.64.3.7:40000")
	dst := netip.MustParseAddrPort("10.0.1.10:9000")
	r := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{MinPacketSize, MinPacketSize + 1, 100, 1399, 1400, 1500} {
		tmpl := newUDPTemplate(src, dst, size)
		buf := make([]byte, size)
		for range 50 {
			h := header{typ: msgData, epoch: uint16(r.Uint32()), session: r.Uint32(), seq: r.Uint64(), sent: int64(r.Uint64())}
			pkt := tmpl.build(buf, &h)
			p := gopacket.NewPacket(pkt, layers.LayerTypeIPv4, gopacket.Default)
			ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if ip == nil || udp == nil {
				t.Fatalf("size %d: not IPv4/UDP: %v", size, p)
			}
			if got := checksumOf(pkt[:20]); got != 0 {
				t.Fatalf("size %d: IPv4 header checksum residue %#x", size, got)
			}
			pseudo := append(append(append([]byte{}, pkt[12:20]...), 0, 17), byte((size-20)>>8), byte(size-20))
			if got := checksumOf(append(pseudo, pkt[20:]...)); got != 0 {
				t.Fatalf("size %d: UDP checksum residue %#x", size, got)
			}
			payload, s, d, ok := udpPayload(pkt)
			if !ok || s != src || d != dst || len(payload) != size-28 {
				t.Fatalf("udpPayload: %v %v %v %d", ok, s, d, len(payload))
			}
			if got, err := parseHeader(payload); err != nil || got != h {
				t.Fatalf("header round trip: %+v %v, want %+v", got, err, h)
			}
		}
	}
}

// checksumOf is the slow Internet checksum: 0 over data that includes a correct checksum.
func checksumOf(b []byte) uint16 {
	var sum uint32
	for i := 0; i < len(b); i += 2 {
		w := uint32(b[i]) << 8
		if i+1 < len(b) {
			w |= uint32(b[i+1])
		}
		sum += w
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func TestSinkCountsAndAnswers(t *testing.T) {
	s := &Sink{epochStart: -1, start: time.Now()}
	reply := make([]byte, 0, statsReplyLen)
	msg := func(h header, size int) []byte {
		b := make([]byte, size)
		h.put(b)
		return b
	}
	if ack := s.handle(msg(header{typ: msgReset, epoch: 7}, headerLen), reply); ack == nil || ack[4] != msgResetAck {
		t.Fatalf("reset answered %x", ack)
	}
	for i := range 10 {
		if out := s.handle(msg(header{typ: msgData, epoch: 7, session: uint32(i % 3)}, 100), reply); out != nil {
			t.Fatal("data answered")
		}
	}
	s.handle(msg(header{typ: msgData, epoch: 8, session: 0}, 100), reply) // another epoch
	s.handle([]byte("not a bench message at all......"), reply)
	probe := msg(header{typ: msgProbe, seq: 42}, 200)
	if out := s.handle(probe, reply); len(out) != 200 {
		t.Fatalf("probe echoed %d bytes", len(out))
	}
	r, err := parseStatsReply(s.handle(msg(header{typ: msgStatsReq, epoch: 7, session: 1, seq: 9}, headerLen), reply))
	if err != nil {
		t.Fatal(err)
	}
	if r.hdr.seq != 9 || r.hdr.epoch != 7 || r.packets != 10 || r.bytes != 10*128 || r.other != 2 || r.first != 1 {
		t.Fatalf("stats %+v", r)
	}
	if len(r.sessions) != 2 || r.sessions[0] != (counter{3, 384}) || r.sessions[1] != (counter{3, 384}) {
		t.Fatalf("sessions from 1: %+v", r.sessions)
	}
	// A warm-up longer than the test: nothing counts.
	s.handle(msg(header{typ: msgReset, epoch: 9, sent: int64(time.Hour)}, headerLen), reply)
	s.handle(msg(header{typ: msgData, epoch: 9}, 100), reply)
	if r, _ := parseStatsReply(s.handle(msg(header{typ: msgStatsReq, epoch: 9}, headerLen), reply)); r.packets != 0 || s.warm != 1 {
		t.Fatalf("counted during the warm-up: %+v", r)
	}
}

// TestHistogramAgainstExact compares the histogram's percentiles with exact ones.
func TestHistogramAgainstExact(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var h Histogram
	var xs []float64
	for range 20000 {
		d := time.Duration(math.Exp(r.Float64()*14)) * time.Microsecond // 1 µs .. 1.2 s
		h.Record(d)
		xs = append(xs, float64(d/time.Microsecond))
	}
	got, want := h.Summary(), summarize(xs)
	for _, c := range [][2]float64{{got.P50, want.P50}, {got.P90, want.P90}, {got.P99, want.P99}} {
		if math.Abs(c[0]-c[1]) > 0.05*c[1]+1 {
			t.Fatalf("histogram %+v, exact %+v", got, want)
		}
	}
	if got.Count != 20000 || math.Abs(got.Max-want.Max) > 1 {
		t.Fatalf("count %d max %v, want max %v", got.Count, got.Max, want.Max)
	}
}

// FuzzParse feeds random bytes to the parsers of what comes back through the tunnel: they must
// not panic, and a stats reply that parses must re-encode to its own prefix.
func FuzzParse(f *testing.F) {
	r := statsReply{hdr: header{typ: msgStatsReply, seq: 3}, packets: 1, bytes: 2, first: 64, sessions: []counter{{1, 2}}}
	f.Add(r.append(make([]byte, 0, statsReplyLen)))
	f.Add(newUDPTemplate(netip.MustParseAddrPort("1.2.3.4:5"), netip.MustParseAddrPort("6.7.8.9:10"), 60).build(make([]byte, 60), &header{typ: msgProbe}))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _, _ = udpPayload(b)
		_, _ = parseHeader(b)
		sr, err := parseStatsReply(b)
		if err != nil {
			return
		}
		again := sr.append(make([]byte, 0, statsReplyLen))
		again[5] = b[5] // the flags byte is not kept
		if len(again) > len(b) || string(again) != string(b[:len(again)]) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, b)
		}
		if binary.BigEndian.Uint32(b[headerLen+36:]) > statsPage {
			t.Fatal("accepted more sessions than a page holds")
		}
	})
}
