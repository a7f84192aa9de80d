package nat

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// FuzzRoundTrip6 builds a well-formed IPv6 flow from the fuzzer's choices
// (protocol, client, ports, TCP flags, payload, extension headers), with
// checksums gopacket computes, and checks what the NAT must make of it:
//   - Outbound rewrites the source to the SNAT address, the source port (or
//     echo identifier) to the mapping's, and nothing else but the checksum,
//     which verifies by the test's own arithmetic and, without extension
//     headers, by gopacket's;
//   - the reply to that port goes back to the client, restored to what the
//     client expects (its address and port), its checksum verifying;
//   - an ICMPv6 Packet Too Big about the translated packet reaches the client
//     quoting exactly the packet it sent, with a checksum that verifies.
func FuzzRoundTrip6(f *testing.F) {
	f.Add(uint8(0), uint8(0), uint16(40000), uint16(443), uint8(0x02), []byte("hello"), uint8(0))
	f.Add(uint8(1), uint8(1), uint16(5555), uint16(53), uint8(0), []byte("query"), uint8(3))
	f.Add(uint8(2), uint8(1), uint16(5555), uint16(0), uint8(0), []byte{}, uint8(1))
	f.Add(uint8(1), uint8(0), uint16(123), uint16(123), uint8(0), bytes.Repeat([]byte{0xff}, 300), uint8(2))
	f.Fuzz(func(t *testing.T, proto, who uint8, sport, dport uint16, flags uint8, payload []byte, ext uint8) {
		if len(payload) > 1100 {
			payload = payload[:1100]
		}
		tab, _ := newTable6(t, Config{})
		// Client B already holds port 5555 toward the server for every
		// protocol, so A's flow on it is remapped.
		for _, p := range [][]byte{
			tcp6Packet(t, client6B, 5555, server6, dport, "S"),
			udp6Packet(t, client6B, 5555, server6, dport, "q"),
			icmp6Echo(t, client6B, server6, icmp6EchoRequest, 5555, 1),
		} {
			if err := tab.Outbound(p); err != nil {
				t.Fatal(err)
			}
		}
		client := client6A
		if who&1 == 1 {
			client = client6B
		}
		build := func(src netip.Addr, sp uint16, dst netip.Addr, dp uint16, reply bool) []byte {
			ipl := ipv6Layer(src, dst, 0)
			var l4 gopacket.SerializableLayer
			var extra []gopacket.SerializableLayer
			switch proto % 3 {
			case 0:
				ipl.NextHeader = layers.IPProtocolTCP
				tcp := &layers.TCP{SrcPort: layers.TCPPort(sp), DstPort: layers.TCPPort(dp), Seq: 7, Ack: 9, Window: 1000,
					FIN: flags&1 != 0, SYN: flags&2 != 0, RST: flags&4 != 0, PSH: flags&8 != 0, ACK: flags&16 != 0}
				tcp.SetNetworkLayerForChecksum(ipl)
				l4 = tcp
			case 1:
				ipl.NextHeader = layers.IPProtocolUDP
				udp := &layers.UDP{SrcPort: layers.UDPPort(sp), DstPort: layers.UDPPort(dp)}
				udp.SetNetworkLayerForChecksum(ipl)
				l4 = udp
			default:
				ipl.NextHeader = layers.IPProtocolICMPv6
				typ := uint8(icmp6EchoRequest)
				if reply {
					typ = icmp6EchoReply
				}
				ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
				ic.SetNetworkLayerForChecksum(ipl)
				l4 = ic
				extra = append(extra, &layers.ICMPv6Echo{Identifier: sp, SeqNumber: dp})
			}
			p := serialize(t, append(append([]gopacket.SerializableLayer{ipl, l4}, extra...), gopacket.Payload(payload))...)
			var hdrs [][]byte
			if ext&1 != 0 {
				hdrs = append(hdrs, hopByHop())
			}
			if ext&2 != 0 {
				hdrs = append(hdrs, destOpts())
			}
			if len(hdrs) > 0 {
				p = withExtensions(p, hdrs...)
			}
			return fixUDPZero6(p)
		}
		checkOne := func(what string, p []byte) {
			t.Helper()
			if !transport6OK(p) {
				t.Fatalf("%s: checksum does not verify\n%x", what, p)
			}
			if ext&3 == 0 && !gopacketAgrees(t, p) {
				t.Fatalf("%s: gopacket computes another checksum\n%x", what, p)
			}
		}
		isEcho := proto%3 == 2
		if isEcho {
			dport = 0
		}

		sent := build(client, sport, server6, dport, false)
		out := bytes.Clone(sent)
		if err := tab.Outbound(out); err != nil {
			t.Fatalf("Outbound: %v", err)
		}
		checkOne("outbound", out)
		_, off, _ := upper6(out)
		extPort := be16(out, off)
		if isEcho {
			extPort = be16(out, off+icmpEchoID)
		}
		want := bytes.Clone(sent)
		copy(want[8:24], snat6.AsSlice())
		if isEcho {
			put16(want, off+icmpEchoID, extPort)
		} else {
			put16(want, off, extPort)
		}
		if !equalBut(out, want, checksumRange(out)) {
			t.Fatalf("outbound\n%x, want\n%x", out, want)
		}
		if (client == client6A && sport == 5555) == (extPort == sport) {
			t.Fatalf("client %v port %d went out as %d", client, sport, extPort)
		}

		reply := build(server6, dport, snat6, extPort, true)
		if isEcho {
			reply = build(server6, extPort, snat6, dport, true)
		}
		c, err := tab.Inbound(reply)
		if err != nil || c != client {
			t.Fatalf("Inbound = %v, %v, want %v", c, err, client)
		}
		checkOne("inbound", reply)
		wantReply := build(server6, dport, client, sport, true)
		if isEcho {
			wantReply = build(server6, sport, client, dport, true)
		}
		if !bytes.Equal(reply, wantReply) {
			t.Fatalf("reply\n%x, want what the server would send the client itself\n%x", reply, wantReply)
		}

		quoted := out[:min(len(out), 1280-48)]
		ptb := icmp6Error(t, router6, snat6, icmp6PacketTooBig, 0, 1280, quoted)
		if c, err := tab.Inbound(ptb); err != nil || c != client {
			t.Fatalf("Packet Too Big: %v, %v, want %v", c, err, client)
		}
		if !transport6OK(ptb) || !bytes.Equal(ptb[24:40], client.AsSlice()) {
			t.Fatalf("Packet Too Big translated to\n%x", ptb)
		}
		if !bytes.Equal(ptb[48:], sent[:len(quoted)]) {
			t.Fatalf("Packet Too Big quotes\n%x, want what the client sent\n%x", ptb[48:], sent[:len(quoted)])
		}
	})
}
