package client

import (
	"crypto/x509"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/pki"
)

// testLogger logs to t until the test ends.
func testLogger(t *testing.T) *slog.Logger { return testlog.New(t) }

// testPKI is a CA with its pool.
type testPKI struct {
	ca    *pki.Identity
	roots *x509.CertPool
}

func newPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	ca, err := pki.NewCA(name, pki.ECDSAP256, 48*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	return &testPKI{ca: ca, roots: roots}
}

func (p *testPKI) client(t *testing.T, cn string, groups ...string) Config {
	t.Helper()
	id, err := pki.IssueClient(p.ca, cn, groups, pki.ECDSAP256, 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := id.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return Config{Certificate: cert, RootCAs: p.roots, Log: testLogger(t)}
}

func (p *testPKI) server(t *testing.T) *pki.Identity {
	t.Helper()
	id, err := pki.IssueServer(p.ca, "bench-server", nil, pki.ECDSAP256, 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// icmpEcho builds an IPv4 ICMP echo request (or reply) with valid checksums.
func icmpEcho(src, dst netip.Addr, reply bool, id, seq uint16, payload []byte) []byte {
	typ := uint8(layers.ICMPv4TypeEchoRequest)
	if reply {
		typ = layers.ICMPv4TypeEchoReply
	}
	ip := &layers.IPv4{Version: 4, TTL: 64, Id: seq, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: id, Seq: seq}
	return serialize(ip, icmp, gopacket.Payload(payload))
}

// udpPacket builds an IPv4 UDP datagram with valid checksums.
func udpPacket(src netip.AddrPort, dst netip.AddrPort, payload []byte) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return serialize(ip, udp, gopacket.Payload(payload))
}

func serialize(ls ...gopacket.SerializableLayer) []byte {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ls...); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// ipv4 is the decoded part of an IPv4 packet the tests look at.
type ipv4 struct {
	src, dst netip.Addr
	proto    uint8
	payload  []byte // transport header and data
}

// decodeIPv4 decodes pkt and checks the IPv4 header checksum and the ICMP or UDP checksum.
func decodeIPv4(t *testing.T, pkt []byte) ipv4 {
	t.Helper()
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		t.Fatalf("not an IPv4 packet: %x", pkt)
	}
	ihl := int(pkt[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(pkt[2:]))
	if total != len(pkt) || ihl < 20 || ihl > total {
		t.Fatalf("IPv4 lengths: ihl %d total %d, packet %d bytes", ihl, total, len(pkt))
	}
	if c := checksum(pkt[:ihl]); c != 0 {
		t.Fatalf("bad IPv4 header checksum (residue %#04x): %x", c, pkt[:ihl])
	}
	p := ipv4{
		src:     netip.AddrFrom4([4]byte(pkt[12:16])),
		dst:     netip.AddrFrom4([4]byte(pkt[16:20])),
		proto:   pkt[9],
		payload: pkt[ihl:total],
	}
	switch p.proto {
	case 1:
		if c := checksum(p.payload); c != 0 {
			t.Fatalf("bad ICMP checksum (residue %#04x)", c)
		}
	case 17:
		if binary.BigEndian.Uint16(p.payload[6:]) != 0 {
			pseudo := make([]byte, 0, 12)
			pseudo = append(pseudo, pkt[12:20]...)
			pseudo = append(pseudo, 0, 17)
			pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(p.payload)))
			if c := checksum(pseudo, p.payload); c != 0 {
				t.Fatalf("bad UDP checksum (residue %#04x)", c)
			}
		}
	}
	return p
}

// checksum is the Internet checksum (RFC 1071) over the concatenation of bs, each of even
// length except the last; it is 0 over data that includes a correct checksum field.
func checksum(bs ...[]byte) uint16 {
	var sum uint32
	for _, b := range bs {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// sessionGoroutines counts live goroutines running this package's Session code.
func sessionGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "bench/client.(*Session)") {
			n++
		}
	}
	return n
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
