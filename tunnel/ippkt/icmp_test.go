package ippkt

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// echoRequest6 is an ICMPv6 echo request from the client to dst through exts, with a valid
// checksum, and the offset of the message.
func echoRequest6(dst netip.Addr, exts []ext, data []byte) ([]byte, int) {
	msg := icmp6(icmp6EchoRequest, 0x00070001, data)
	pkt := packet6(client6, dst, exts, ProtoICMPv6, msg)
	tr := len(pkt) - len(msg)
	setL4Checksum6(pkt, tr, 2, ProtoICMPv6)
	return pkt, tr
}

func TestEchoReply6(t *testing.T) {
	data := []byte("abcdefghijklmnopqrstuvwxyz")
	for name, exts := range map[string][]ext{
		"plain":           nil,
		"with extensions": {hopByHop(1), destOpts(2), fragment(0, false, 4)},
	} {
		t.Run(name, func(t *testing.T) {
			pkt, tr := echoRequest6(gateway6, exts, data)
			pkt[0], pkt[1] = 0x6b, 0x80 // traffic class 0xb8
			info, r := Parse(pkt)
			if r != OK {
				t.Fatal(r)
			}
			reply, r := EchoReply(pkt, &info, gateway6)
			if r != OK {
				t.Fatal(r)
			}
			if &reply[0] != &pkt[tr-IPv6HeaderLen] || len(reply) != IPv6HeaderLen+8+len(data) {
				t.Fatal("reply not in place over the request")
			}
			got, r := Parse(reply)
			if r != OK || got.Src != gateway6 || got.Dst != client6 || got.Proto != ProtoICMPv6 || got.Transport != 40 || got.Extensions != 0 {
				t.Fatalf("reply %v %+v", r, got)
			}
			if reply[0] != 0x6b || reply[1] != 0x80 || reply[2] != 0 || reply[3] != 0 || reply[7] != ReplyHopLimit {
				t.Fatalf("reply header % x", reply[:8])
			}
			msg := reply[40:]
			if msg[0] != icmp6EchoReply || msg[1] != 0 || binary.BigEndian.Uint32(msg[4:]) != 0x00070001 || !bytes.Equal(msg[8:], data) {
				t.Fatalf("reply message % x", msg)
			}
			if !l4ChecksumOK6(reply, 40, len(reply), ProtoICMPv6) {
				t.Fatal("reply checksum does not verify")
			}
		})
	}
}

func TestEchoReply4(t *testing.T) {
	msg := []byte{icmpEchoRequest, 0, 0, 0, 0, 7, 0, 1, 'p', 'i', 'n', 'g', '!'}
	binary.BigEndian.PutUint16(msg[2:], ^refSum(msg, 0))
	pkt := packet4(client4, gateway4, 3, ProtoICMP, 0x4000, msg)
	pkt[1] = 0x10
	info, r := Parse(pkt)
	if r != OK {
		t.Fatal(r)
	}
	reply, r := EchoReply(pkt, &info, gateway4)
	if r != OK {
		t.Fatal(r)
	}
	if len(reply) != 20+len(msg) || refSum(reply[:20], 0) != 0xffff || refSum(reply[20:], 0) != 0xffff {
		t.Fatal("bad length or checksums")
	}
	got, r := Parse(reply)
	if r != OK || got.Src != gateway4 || got.Dst != client4 || got.Transport != 20 || reply[1] != 0x10 ||
		reply[8] != ReplyHopLimit || got.FragID != 0x1234 || reply[20] != icmpEchoReply {
		t.Fatalf("reply %v %+v % x", r, got, reply[:24])
	}
}

func TestEchoReplyRefusals(t *testing.T) {
	good, tr := echoRequest6(gateway6, nil, []byte("x"))
	badSum := clone(good)
	badSum[tr+8] ^= 1
	notEcho := clone(good)
	notEcho[tr] = icmp6EchoReply
	setL4Checksum6(notEcho, tr, 2, ProtoICMPv6)
	code := clone(good)
	code[tr+1] = 1
	frag, _ := echoRequest6(gateway6, []ext{fragment(0, true, 1)}, make([]byte, 8))
	udp := packet6(client6, gateway6, nil, ProtoUDP, make([]byte, 8))
	short := packet6(client6, gateway6, nil, ProtoICMPv6, []byte{128, 0, 0, 0})
	for _, tc := range []struct {
		name string
		pkt  []byte
		from netip.Addr
		want Reason
	}{
		{"bad checksum", badSum, gateway6, BadChecksum},
		{"echo reply", notEcho, gateway6, NotEchoRequest},
		{"code 1", code, gateway6, NotEchoRequest},
		{"first fragment", frag, gateway6, Fragmented},
		{"udp", udp, gateway6, NotEchoRequest},
		{"short", short, gateway6, NotEchoRequest},
		{"ipv4 answering address", good, gateway4, NotEchoRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, r := Parse(tc.pkt)
			if r != OK {
				t.Fatal(r)
			}
			before := clone(tc.pkt)
			if _, r := EchoReply(tc.pkt, &info, tc.from); r != tc.want {
				t.Fatalf("reason %v, want %v", r, tc.want)
			}
			if !bytes.Equal(before, tc.pkt) {
				t.Fatal("a refused request was changed")
			}
		})
	}
}

func TestPacketTooBig(t *testing.T) {
	for _, size := range []int{60, 1232, 1233, 1500, 9000} {
		offending := packet6(server6, client6, []ext{destOpts(1)}, ProtoUDP, make([]byte, size-48))
		for i := 48; i < len(offending); i++ {
			offending[i] = byte(i)
		}
		info, r := Parse(offending)
		if r != OK {
			t.Fatal(r)
		}
		buf := make([]byte, PacketTooBigLen)
		msg, r := PacketTooBig(buf, offending, &info, gateway6, 1400)
		if r != OK {
			t.Fatal(r)
		}
		want := min(MinMTU6, 48+size)
		if len(msg) != want {
			t.Fatalf("size %d: message of %d bytes, want %d", size, len(msg), want)
		}
		got, r := Parse(msg)
		if r != OK || got.Src != gateway6 || got.Dst != server6 || got.Proto != ProtoICMPv6 || got.Transport != 40 || msg[7] != ReplyHopLimit {
			t.Fatalf("%v %+v", r, got)
		}
		if msg[40] != icmp6PacketTooBig || msg[41] != 0 || binary.BigEndian.Uint32(msg[44:]) != 1400 {
			t.Fatalf("header % x", msg[40:48])
		}
		if !bytes.Equal(msg[48:], offending[:len(msg)-48]) {
			t.Fatal("offending packet not carried")
		}
		if !l4ChecksumOK6(msg, 40, len(msg), ProtoICMPv6) {
			t.Fatal("checksum does not verify")
		}
		off, ok := Embedded(msg, &got)
		if !ok || off != 48 {
			t.Fatalf("Embedded %d %v", off, ok)
		}
		emb, r := ParseEmbedded(msg[off:])
		if r != OK || emb.Src != server6 || emb.Dst != client6 || emb.Proto != ProtoUDP || emb.Transport != 48 {
			t.Fatalf("embedded %v %+v", r, emb)
		}
	}
}

// TestPacketTooBigOverlap: the message may be built over the offending packet's own buffer,
// 48 bytes before it, as the data plane's headroom allows.
func TestPacketTooBigOverlap(t *testing.T) {
	buf := make([]byte, 48+1500)
	offending := buf[48:]
	copy(offending, packet6(server6, client6, nil, ProtoUDP, make([]byte, 1460)))
	for i := 48; i < len(offending); i++ {
		offending[i] = byte(i)
	}
	want := clone(offending)
	info, _ := Parse(offending)
	msg, r := PacketTooBig(buf, offending, &info, gateway6, 1400)
	if r != OK || !bytes.Equal(msg[48:], want[:MinMTU6-48]) || !l4ChecksumOK6(msg, 40, len(msg), ProtoICMPv6) {
		t.Fatalf("%v: overlapping build broke the message", r)
	}
}

func TestPacketTooBigRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		pkt  []byte
		buf  int
		want Reason
	}{
		{"about an error", packet6(server6, client6, nil, ProtoICMPv6, icmp6(1, 0, make([]byte, 48))), 1280, ErrorAboutError},
		{"about packet too big", packet6(server6, client6, []ext{destOpts(1)}, ProtoICMPv6, icmp6(2, 1280, make([]byte, 48))), 1280, ErrorAboutError},
		{"about a redirect", packet6(server6, client6, nil, ProtoICMPv6, icmp6(137, 0, make([]byte, 32))), 1280, ErrorAboutError},
		{"about an empty icmpv6", packet6(server6, client6, nil, ProtoICMPv6, nil), 1280, ErrorAboutError},
		{"to the unspecified address", packet6(netip.IPv6Unspecified(), client6, nil, ProtoUDP, make([]byte, 8)), 1280, NoErrorToSource},
		{"to a multicast source", packet6(netip.MustParseAddr("ff02::1"), client6, nil, ProtoUDP, make([]byte, 8)), 1280, NoErrorToSource},
		{"short buffer", packet6(server6, client6, nil, ProtoUDP, make([]byte, 8)), 87, ShortBuffer},
		{"ipv4", packet4(server4, client4, 0, ProtoUDP, 0, make([]byte, 8)), 1280, BadVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, r := Parse(tc.pkt)
			if r != OK {
				t.Fatal(r)
			}
			if _, r := PacketTooBig(make([]byte, tc.buf), tc.pkt, &info, gateway6, 1400); r != tc.want {
				t.Fatalf("reason %v, want %v", r, tc.want)
			}
		})
	}
	// Allowed: an echo request, a multicast destination (RFC 4443 §2.4 (e.3)), a later
	// fragment of an ICMPv6 message, a buffer that takes less than all that fits.
	for name, pkt := range map[string][]byte{
		"echo request":       packet6(server6, client6, nil, ProtoICMPv6, icmp6(128, 0, make([]byte, 1400))),
		"multicast":          packet6(server6, netip.MustParseAddr("ff0e::1"), nil, ProtoUDP, make([]byte, 1400)),
		"later icmpv6 frags": packet6(server6, client6, []ext{fragment(10, false, 1)}, ProtoICMPv6, make([]byte, 1400)),
	} {
		info, r := Parse(pkt)
		if r != OK {
			t.Fatal(name, r)
		}
		if msg, r := PacketTooBig(make([]byte, 600), pkt, &info, gateway6, 1400); r != OK || len(msg) != 600 {
			t.Fatalf("%s: %v, %d bytes", name, r, len(msg))
		}
	}
}

func TestEmbedded(t *testing.T) {
	inner4 := packet4(client4, server4, 0, ProtoUDP, 0, make([]byte, 8))
	for _, tc := range []struct {
		name string
		pkt  []byte
		ok   bool
	}{
		{"icmpv6 unreachable", packet6(server6, client6, nil, ProtoICMPv6, icmp6(1, 0, make([]byte, 48))), true},
		{"icmpv6 parameter problem", packet6(server6, client6, []ext{destOpts(1)}, ProtoICMPv6, icmp6(4, 0, make([]byte, 48))), true},
		{"icmpv6 echo", packet6(server6, client6, nil, ProtoICMPv6, icmp6(128, 0, nil)), false},
		{"icmpv6 type 0", packet6(server6, client6, nil, ProtoICMPv6, icmp6(0, 0, nil)), false},
		{"icmpv6 short", packet6(server6, client6, nil, ProtoICMPv6, []byte{1, 0, 0, 0}), false},
		{"icmp unreachable", packet4(server4, client4, 0, ProtoICMP, 0, append(icmp6(3, 0, nil), inner4...)), true},
		{"icmp time exceeded", packet4(server4, client4, 0, ProtoICMP, 0, append(icmp6(11, 0, nil), inner4...)), true},
		{"icmp echo", packet4(server4, client4, 0, ProtoICMP, 0, icmp6(8, 0, nil)), false},
		{"icmpv6 in ipv4", packet4(server4, client4, 0, ProtoICMPv6, 0, icmp6(1, 0, nil)), false},
		{"later fragment", packet6(server6, client6, []ext{fragment(1, false, 1)}, ProtoICMPv6, icmp6(1, 0, nil)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, r := Parse(tc.pkt)
			if r != OK {
				t.Fatal(r)
			}
			off, ok := Embedded(tc.pkt, &info)
			if ok != tc.ok || ok && off != info.Transport+8 {
				t.Fatalf("%d %v", off, ok)
			}
		})
	}
}
