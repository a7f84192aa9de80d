package dataplane

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/cvpn/cvpn/tunnel/ippkt"
)

// clampMSS is what the packet path does to a packet in either direction.
func clampMSS(pkt []byte, mss uint16) {
	info, r := ippkt.Parse(pkt)
	if r != ippkt.OK {
		return
	}
	p := &Plane{mss: mss}
	p.clampMSS(pkt, &info)
}

func synPacket(t testing.TB, mss uint16) []byte {
	return synPacketOpts(t, []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: binary.BigEndian.AppendUint16(nil, mss)},
		{OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
	})
}

// synPacketOpts is a TCP SYN with these options.
func synPacketOpts(t testing.TB, opts []layers.TCPOption) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: net.IP{10, 2, 0, 2}, DstIP: net.IP{10, 0, 1, 10}}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true, Window: 64240, Seq: 1, Options: opts}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tcpChecksumOK recomputes the TCP checksum with gopacket and compares.
func tcpChecksumOK(t *testing.T, pkt []byte) (uint16, bool) {
	p := gopacket.NewPacket(pkt, layers.LayerTypeIPv4, gopacket.Default)
	tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	var mss uint16
	for _, o := range tcp.Options {
		if o.OptionType == layers.TCPOptionKindMSS {
			mss = binary.BigEndian.Uint16(o.OptionData)
		}
	}
	got := tcp.Checksum
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, ip, tcp, gopacket.Payload(tcp.Payload))
	want := gopacket.NewPacket(buf.Bytes(), layers.LayerTypeIPv4, gopacket.Default).Layer(layers.LayerTypeTCP).(*layers.TCP).Checksum
	return mss, got == want
}

func TestClampMSS(t *testing.T) {
	for _, c := range []struct{ in, want uint16 }{{1460, 1400}, {1400, 1400}, {536, 536}, {65495, 1400}} {
		pkt := synPacket(t, c.in)
		clampMSS(pkt, 1400)
		mss, ok := tcpChecksumOK(t, pkt)
		if mss != c.want || !ok {
			t.Errorf("MSS %d clamped to %d (checksum ok %v), want %d", c.in, mss, ok, c.want)
		}
	}
	// The MSS option at an odd offset (one no-op, or a window scale option, before it): the
	// incremental checksum update must account for the bytes' swapped positions in the sum.
	mssOpt := layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: binary.BigEndian.AppendUint16(nil, 1460)}
	for name, opts := range map[string][]layers.TCPOption{
		"nop first":          {{OptionType: layers.TCPOptionKindNop}, mssOpt},
		"window scale first": {{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}}, mssOpt},
	} {
		pkt := synPacketOpts(t, opts)
		clampMSS(pkt, 1400)
		if mss, ok := tcpChecksumOK(t, pkt); mss != 1400 || !ok {
			t.Errorf("%s: MSS clamped to %d, checksum ok %v; want 1400 and a valid checksum", name, mss, ok)
		}
	}
	// Not a SYN: untouched.
	pkt := synPacket(t, 1460)
	pkt[20+13] &^= 0x02
	before := append([]byte(nil), pkt...)
	clampMSS(pkt, 1400)
	if string(before) != string(pkt) {
		t.Error("non-SYN segment changed")
	}
	if n := testing.AllocsPerRun(100, func() { clampMSS(pkt, 1400) }); n != 0 {
		t.Errorf("clampMSS allocates %v", n)
	}
}

func FuzzClampMSS(f *testing.F) {
	f.Add(synPacket(f, 1460))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		n := len(pkt)
		clampMSS(pkt, 1400)
		if len(pkt) != n {
			t.Fatal("length changed")
		}
	})
}
