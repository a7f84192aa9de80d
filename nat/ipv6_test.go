package nat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// These tests mirror nat_test.go and quota_test.go for IPv6, and check what
// is new with it: both families in one table, Pair, ICMPv6 errors
// (Packet Too Big above all), extension headers and IPv6 fragments.

func TestNewConfig6(t *testing.T) {
	for _, a := range []string{"10.0.1.2", "::ffff:10.0.1.2", "::", "::1", "ff02::1", "fe80::1%eth0"} {
		if _, err := New(Config{Addr: snatAddr, Addr6: netip.MustParseAddr(a)}); !errors.Is(err, ErrConfig) {
			t.Errorf("New with Addr6 %s = %v, want ErrConfig", a, err)
		}
	}
	// Neither family: every packet is refused as of a family not
	// translated.
	none, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := none.Outbound(udpPacket(t, clientA, 4000, server, 53, "q")); err != ErrNoIPv4 {
		t.Errorf("Outbound IPv4 with no SNAT address: %v, want ErrNoIPv4", err)
	}
	if _, err := none.Inbound(udp6Packet(t, server6, 53, snat6, 4000, "a")); err != ErrNoIPv6 {
		t.Errorf("Inbound IPv6 with no SNAT address: %v, want ErrNoIPv6", err)
	}
	// IPv6 alone.
	tab, err := New(Config{Addr6: snat6})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][]byte{udpPacket(t, clientA, 4000, server, 53, "q"), udpPacket(t, server, 53, snatAddr, 4000, "a")} {
		orig := slices.Clone(p)
		if err := tab.Outbound(p); err != ErrNoIPv4 {
			t.Errorf("Outbound IPv4 without Addr: %v, want ErrNoIPv4", err)
		}
		if _, err := tab.Inbound(p); err != ErrNoIPv4 {
			t.Errorf("Inbound IPv4 without Addr: %v, want ErrNoIPv4", err)
		}
		if !bytes.Equal(p, orig) {
			t.Error("a refused IPv4 packet was modified")
		}
	}
	if err := tab.Outbound(udp6Packet(t, client6A, 4000, server6, 53, "q")); err != nil {
		t.Errorf("Outbound IPv6 with Addr6 alone: %v", err)
	}
	// IPv4 alone: IPv6 is the caller's to route.
	tab, _ = newTable(t, Config{})
	for _, p := range [][]byte{udp6Packet(t, client6A, 4000, server6, 53, "q"), udp6Packet(t, server6, 53, snat6, 4000, "a")} {
		orig := slices.Clone(p)
		if err := tab.Outbound(p); err != ErrNoIPv6 {
			t.Errorf("Outbound IPv6 without Addr6: %v, want ErrNoIPv6", err)
		}
		if _, err := tab.Inbound(p); err != ErrNoIPv6 {
			t.Errorf("Inbound IPv6 without Addr6: %v, want ErrNoIPv6", err)
		}
		if !bytes.Equal(p, orig) {
			t.Error("a refused IPv6 packet was modified")
		}
	}
	if errors.Is(ErrNoIPv6, ErrMalformed) || errors.Is(ErrNoIPv6, ErrUnsupported) || errors.Is(ErrNoIPv6, ErrNoMapping) {
		t.Error("ErrNoIPv6 wraps a drop reason: the caller cannot tell it apart")
	}
}

// tcp6Ext is a TCP packet with a Hop-by-Hop and a Destination Options header.
func tcp6Ext(t testing.TB, src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags string) []byte {
	return withExtensions(tcp6Packet(t, src, sport, dst, dport, flags), hopByHop(), destOpts())
}

func TestRoundTrip6(t *testing.T) {
	for _, tc := range []struct {
		name  string
		out   []byte
		reply func(ext uint16) []byte
		ext   bool // extension headers: gopacket cannot check
	}{
		{
			name:  "tcp",
			out:   tcp6Packet(t, client6A, 40000, server6, 443, "S"),
			reply: func(ext uint16) []byte { return tcp6Packet(t, server6, 443, snat6, ext, "SA") },
		},
		{
			name:  "udp",
			out:   udp6Packet(t, client6A, 40000, server6, 53, "query"),
			reply: func(ext uint16) []byte { return udp6Packet(t, server6, 53, snat6, ext, "answer!") },
		},
		{
			name:  "icmpv6 echo",
			out:   icmp6Echo(t, client6A, server6, icmp6EchoRequest, 40000, 1),
			reply: func(ext uint16) []byte { return icmp6Echo(t, server6, snat6, icmp6EchoReply, ext, 1) },
		},
		{
			name:  "tcp with extension headers",
			out:   tcp6Ext(t, client6A, 40000, server6, 443, "S"),
			reply: func(ext uint16) []byte { return tcp6Ext(t, server6, 443, snat6, ext, "SA") },
			ext:   true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, _ := newTable6(t, Config{})
			pkt := slices.Clone(tc.out)
			if err := tab.Outbound(pkt); err != nil {
				t.Fatal(err)
			}
			checkSums6(t, "outbound", pkt)
			if !tc.ext && !gopacketAgrees(t, pkt) {
				t.Error("outbound: gopacket computes other checksums")
			}
			// Only the source address and the checksum may change: the
			// client's port is free, so it is kept.
			want := slices.Clone(tc.out)
			copy(want[8:24], snat6.AsSlice())
			if !equalBut(pkt, want, checksumRange(pkt)) {
				t.Errorf("outbound\n%x, want\n%x (checksum aside)", pkt, want)
			}

			reply := tc.reply(40000)
			client, err := tab.Inbound(reply)
			if err != nil || client != client6A {
				t.Fatalf("Inbound = %v, %v, want %v", client, err, client6A)
			}
			checkSums6(t, "inbound", reply)
			if !tc.ext && !gopacketAgrees(t, reply) {
				t.Error("inbound: gopacket computes other checksums")
			}
			if !bytes.Equal(reply[24:40], client6A.AsSlice()) {
				t.Errorf("inbound to %x", reply[24:40])
			}
			if tab.Len() != 1 {
				t.Errorf("Len = %d, want 1", tab.Len())
			}
		})
	}
}

// checksumRange returns where the upper-layer checksum of IPv6 packet p is.
func checksumRange(p []byte) [2]int {
	proto, off, _ := upper6(p)
	switch proto {
	case protoTCP:
		off += tcpChecksum
	case protoUDP:
		off += udpChecksum
	default:
		off += icmpChecksum
	}
	return [2]int{off, off + 2}
}

// equalBut reports whether a and b are equal outside skip.
func equalBut(a, b []byte, skip [2]int) bool {
	return len(a) == len(b) && bytes.Equal(a[:skip[0]], b[:skip[0]]) && bytes.Equal(a[skip[1]:], b[skip[1]:])
}

func TestTwoClientsSamePort6(t *testing.T) {
	for _, proto := range []string{"tcp", "udp", "icmpv6"} {
		t.Run(proto, func(t *testing.T) {
			tab, _ := newTable6(t, Config{})
			out := func(c, dst netip.Addr) []byte {
				switch proto {
				case "tcp":
					return tcp6Packet(t, c, 5555, dst, 80, "S")
				case "udp":
					return udp6Packet(t, c, 5555, dst, 80, "x")
				}
				return icmp6Echo(t, c, dst, icmp6EchoRequest, 5555, 9)
			}
			reply := func(ext uint16) []byte {
				switch proto {
				case "tcp":
					return tcp6Packet(t, server6, 80, snat6, ext, "SA")
				case "udp":
					return udp6Packet(t, server6, 80, snat6, ext, "y")
				}
				return icmp6Echo(t, server6, snat6, icmp6EchoReply, ext, 9)
			}
			// An IPv4 flow on the same port does not collide with IPv6 ones.
			if err := tab.Outbound(udpPacket(t, clientA, 5555, server, 80, "x")); err != nil {
				t.Fatal(err)
			}
			var ext [2]uint16
			for i, c := range []netip.Addr{client6A, client6B} {
				p := out(c, server6)
				if err := tab.Outbound(p); err != nil {
					t.Fatal(err)
				}
				checkSums6(t, "outbound", p)
				if !gopacketAgrees(t, p) {
					t.Error("outbound: gopacket computes other checksums")
				}
				_, ext[i], _, _ = fields6(t, p)
			}
			if ext[0] != 5555 || ext[1] == 5555 {
				t.Fatalf("external ports %v: want the first kept and the second changed", ext)
			}
			if proto != "icmpv6" && ext[1] < 1024 {
				t.Errorf("unprivileged port remapped to %d", ext[1])
			}
			p := out(client6B, server6)
			if err := tab.Outbound(p); err != nil {
				t.Fatal(err)
			} else if _, sport, _, _ := fields6(t, p); sport != ext[1] {
				t.Fatalf("second packet of B from port %d, want %d", sport, ext[1])
			}
			for i, want := range []netip.Addr{client6A, client6B} {
				r := reply(ext[i])
				got, err := tab.Inbound(r)
				if err != nil || got != want {
					t.Fatalf("reply to %d: %v, %v, want %v", ext[i], got, err, want)
				}
				checkSums6(t, "inbound", r)
				if !gopacketAgrees(t, r) {
					t.Error("inbound: gopacket computes other checksums")
				}
				_, sport, dst, dport := fields6(t, r)
				if proto == "icmpv6" {
					dport = sport
				}
				if dst != want || dport != 5555 {
					t.Errorf("reply to %d reaches %v port %d, want %v port 5555", ext[i], dst, dport, want)
				}
			}
			if c, err := tab.Inbound(udpPacket(t, server, 80, snatAddr, 5555, "y")); err != nil || c != clientA {
				t.Errorf("IPv4 reply on the same port: %v, %v, want %v", c, err, clientA)
			}
		})
	}
}

// TestChecksumZeroBecomesOnes6: a UDP checksum that computes to zero is sent
// as 0xffff (RFC 8200 §8.1); TCP and ICMPv6 keep a zero.
func TestChecksumZeroBecomesOnes6(t *testing.T) {
	for _, proto := range []uint8{protoUDP, protoTCP} {
		found := false
		for old := 1; old <= 0xffff && !found; old++ {
			l4 := make([]byte, 20)
			put16(l4, udpChecksum, uint16(old))
			put16(l4, tcpChecksum, uint16(old))
			_, sum, ok := fixTransport6(l4, proto, l4SrcPort, client6A, snat6, 4000, 4001)
			raw := ^foldAdd(^uint16(old), 4000^0xffff, 4001, client6A, snat6)
			if !ok || raw != 0 {
				continue
			}
			found = true
			want := uint16(0)
			if proto == protoUDP {
				want = 0xffff
			}
			if sum != want {
				t.Errorf("proto %d: a checksum computing to zero is written %#x, want %#x", proto, sum, want)
			}
		}
		if !found {
			t.Fatalf("proto %d: no checksum computes to zero", proto)
		}
	}
}

// foldAdd is the ones' complement sum of sum, the words a and b and the
// difference between the addresses to and from, with the test's own
// arithmetic.
func foldAdd(sum, a, b uint16, from, to netip.Addr) uint16 {
	s := uint32(sum) + uint32(a) + uint32(b)
	f, n := from.As16(), to.As16()
	for i := 0; i < 16; i += 2 {
		s += uint32(^binary.BigEndian.Uint16(f[i:])) + uint32(binary.BigEndian.Uint16(n[i:]))
	}
	return folded(s)
}

func TestExpiry6(t *testing.T) {
	for _, tc := range []struct {
		name    string
		out     []byte
		reply   []byte
		timeout time.Duration
	}{
		{"udp", udp6Packet(t, client6A, 4000, server6, 53, "q"), udp6Packet(t, server6, 53, snat6, 4000, "a"), DefaultUDPTimeout},
		{"icmpv6", icmp6Echo(t, client6A, server6, icmp6EchoRequest, 9, 1), icmp6Echo(t, server6, snat6, icmp6EchoReply, 9, 1), DefaultICMPTimeout},
		{"tcp", tcp6Packet(t, client6A, 40000, server6, 443, "S"), tcp6Packet(t, server6, 443, snat6, 40000, "SA"), DefaultTCPTransitoryTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, clk := newTable6(t, Config{})
			if err := tab.Outbound(slices.Clone(tc.out)); err != nil {
				t.Fatal(err)
			}
			clk.Advance(tc.timeout - time.Second)
			if _, err := tab.Inbound(slices.Clone(tc.reply)); err != nil {
				t.Fatalf("reply within the timeout: %v", err)
			}
			// The reply did not refresh the mapping.
			clk.Advance(2 * time.Second)
			if _, err := tab.Inbound(slices.Clone(tc.reply)); !errors.Is(err, ErrNoMapping) {
				t.Fatalf("reply after the timeout: %v, want ErrNoMapping", err)
			}
			tab.Expire()
			if tab.Len() != 0 {
				t.Errorf("Len after Expire = %d", tab.Len())
			}
		})
	}
}

// TestTCPStates6 walks the handshake cases of TestTCPStates over IPv6.
func TestTCPStates6(t *testing.T) {
	type seg struct {
		in    bool
		flags string
	}
	out := func(f string) seg { return seg{false, f} }
	in := func(f string) seg { return seg{true, f} }
	for _, tc := range []struct {
		name        string
		segs        []seg
		established bool
	}{
		{"three-way handshake", []seg{out("S"), in("SA"), out("A")}, true},
		{"SYN only", []seg{out("S")}, false},
		{"SYN answered, never acknowledged", []seg{out("S"), in("SA")}, false},
		{"SYN-ACK without a SYN", []seg{out("A"), in("SA"), out("A")}, false},
		{"FIN from the server", []seg{out("S"), in("SA"), out("A"), in("FA")}, false},
		{"RST from the server, then data", []seg{out("S"), in("SA"), out("A"), in("R"), out("PA"), in("PA")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, clk := newTable6(t, Config{})
			for i, s := range tc.segs {
				var err error
				if s.in {
					_, err = tab.Inbound(tcp6Packet(t, server6, 443, snat6, 40000, s.flags))
				} else {
					err = tab.Outbound(tcp6Packet(t, client6A, 40000, server6, 443, s.flags))
				}
				if err != nil {
					t.Fatalf("segment %d (%v): %v", i, s, err)
				}
			}
			clk.Advance(DefaultTCPTransitoryTimeout + time.Second)
			_, err := tab.Inbound(tcp6Packet(t, server6, 443, snat6, 40000, "A"))
			if got := err == nil; got != tc.established {
				t.Errorf("after the transitory timeout: %v; want established %v", err, tc.established)
			}
		})
	}
}

// TestClientQuota6: an IPv6 client has a share like an IPv4 one, recycles
// its own idle mappings and never takes another's.
func TestClientQuota6(t *testing.T) {
	tab, clk := newTable6(t, Config{MaxPerClient: 2})
	for port := uint16(4000); port < 4002; port++ {
		if err := tab.Outbound(udp6Packet(t, client6A, port, server6, 53, "q")); err != nil {
			t.Fatal(err)
		}
	}
	p := udp6Packet(t, client6A, 4002, server6, 53, "q")
	orig := slices.Clone(p)
	if err := tab.Outbound(p); !errors.Is(err, ErrClientQuota) || !bytes.Equal(p, orig) {
		t.Fatalf("A's third flow: %v (packet changed %v), want ErrClientQuota", err, !bytes.Equal(p, orig))
	}
	// Without Pair, the client's IPv4 address has a share of its own.
	for port := uint16(4000); port < 4002; port++ {
		if err := udpOut(t, tab, clientA, port); err != nil {
			t.Fatalf("IPv4 flow of an unpaired address: %v", err)
		}
	}
	clk.Advance(DefaultRecycleIdle)
	if err := tab.Outbound(p); err != nil {
		t.Fatalf("A's third flow once the others idled: %v", err)
	}
	if st := tab.Stats(); st.QuotaRefused != 1 || st.Recycled != 1 || st.Mappings != 4 {
		t.Errorf("Stats = %+v, want one refusal, one recycled, 4 mappings", st)
	}
}

// TestPair: a paired client's two addresses share one quota, recycle each
// other's idle mappings, and go together.
func TestPair(t *testing.T) {
	tab, clk := newTable6(t, Config{MaxPerClient: 4})
	// A mapping made before Pair joins the common share.
	if err := tab.Outbound(udp6Packet(t, client6A, 3999, server6, 53, "q")); err != nil {
		t.Fatal(err)
	}
	if err := tab.Pair(clientA, client6A); err != nil {
		t.Fatal(err)
	}
	if err := tab.Pair(clientA, client6A); err != nil {
		t.Errorf("Pair again with the same partner: %v", err)
	}
	for _, bad := range [][2]netip.Addr{{clientA, client6B}, {clientB, client6A}, {client6A, clientA}, {clientB, netip.MustParseAddr("::ffff:10.2.0.6")}} {
		if err := tab.Pair(bad[0], bad[1]); !errors.Is(err, ErrConfig) {
			t.Errorf("Pair(%v, %v) = %v, want ErrConfig", bad[0], bad[1], err)
		}
	}
	if err := udpOut(t, tab, clientA, 4000); err != nil {
		t.Fatal(err)
	}
	if err := udpOut(t, tab, clientA, 4001); err != nil {
		t.Fatal(err)
	}
	if err := tab.Outbound(udp6Packet(t, client6A, 4000, server6, 53, "q")); err != nil {
		t.Fatal(err)
	}
	// Four mappings over both families: the share is spent for both.
	if err := udpOut(t, tab, clientA, 4002); !errors.Is(err, ErrClientQuota) {
		t.Fatalf("IPv4 flow with the share spent over both families: %v, want ErrClientQuota", err)
	}
	if err := tab.Outbound(udp6Packet(t, client6A, 4001, server6, 53, "q")); !errors.Is(err, ErrClientQuota) {
		t.Fatalf("IPv6 flow with the share spent over both families: %v, want ErrClientQuota", err)
	}
	// Another client is not affected.
	if err := tab.Outbound(udp6Packet(t, client6B, 4000, server6, 53, "q")); err != nil {
		t.Fatalf("B: %v", err)
	}
	// An IPv6 flow recycles the oldest idle mapping: the IPv6 one made first.
	clk.Advance(DefaultRecycleIdle)
	if err := udpOut(t, tab, clientA, 4000); err != nil { // keep it busy
		t.Fatal(err)
	}
	if err := tab.Outbound(udp6Packet(t, client6A, 4001, server6, 53, "q")); err != nil {
		t.Fatalf("IPv6 flow with idle mappings: %v", err)
	}
	if _, err := tab.Inbound(udp6Packet(t, server6, 53, snat6, 3999, "a")); !errors.Is(err, ErrNoMapping) {
		t.Errorf("the oldest idle mapping was not the one recycled: %v", err)
	}
	// And an IPv4 one an IPv6 one.
	if err := udpOut(t, tab, clientA, 4002); err != nil {
		t.Fatalf("IPv4 flow with idle mappings: %v", err)
	}
	if got := tab.Stats(); got.Mappings != 5 || got.Recycled != 2 {
		t.Errorf("Stats = %+v, want 5 mappings, 2 recycled", got)
	}
	// Forgetting the IPv6 address forgets the IPv4 one's mappings too,
	// and the pairing: the addresses may be paired anew.
	tab.ForgetClient(client6A)
	if tab.Len() != 1 {
		t.Errorf("Len after ForgetClient of the IPv6 address = %d, want B's 1", tab.Len())
	}
	if c, err := udpReply(t, tab, 4000); !errors.Is(err, ErrNoMapping) {
		t.Errorf("reply to the IPv4 address after ForgetClient of its partner: %v, %v", c, err)
	}
	if err := tab.Pair(clientA, client6B); err != nil {
		t.Errorf("Pair after ForgetClient: %v", err)
	}
	tab.ForgetClient(clientA)
	if tab.Len() != 0 || len(tab.clients) != 0 || len(tab.pairs) != 0 {
		t.Errorf("after forgetting all: Len %d, clients %d, pairs %d", tab.Len(), len(tab.clients), len(tab.pairs))
	}
}

func TestForgetClient6(t *testing.T) {
	tab, _ := newTable6(t, Config{})
	for _, c := range []netip.Addr{client6A, client6B} {
		for port := uint16(4000); port < 4010; port++ {
			if err := tab.Outbound(udp6Packet(t, c, port, server6, 53, "q")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := udpOut(t, tab, clientA, 4000); err != nil {
		t.Fatal(err)
	}
	tab.ForgetClient(client6A)
	if tab.Len() != 11 {
		t.Fatalf("Len after ForgetClient = %d, want 11", tab.Len())
	}
	for port := uint16(4000); port < 4010; port++ {
		if c, err := tab.Inbound(udp6Packet(t, server6, 53, snat6, port, "a")); !errors.Is(err, ErrNoMapping) {
			t.Fatalf("reply to A's old port %d: %v, %v", port, c, err)
		}
	}
	// Unpaired, the IPv4 address of the same client keeps its mapping.
	if c, err := udpReply(t, tab, 4000); err != nil || c != clientA {
		t.Errorf("IPv4 mapping after ForgetClient of another address: %v, %v", c, err)
	}
	tab.ForgetClient(client6B)
	tab.ForgetClient(clientA)
	if tab.Len() != 0 || len(tab.clients) != 0 || len(tab.in) != 0 {
		t.Fatalf("after forgetting all: Len %d, clients %d, in %d", tab.Len(), len(tab.clients), len(tab.in))
	}
}

// TestICMPv6ErrorInbound: each ICMPv6 error about a TCP, UDP or echo flow
// reaches the client with the quoted packet translated back, a remapped
// port included, and its type, code and MTU or pointer as sent.
func TestICMPv6ErrorInbound(t *testing.T) {
	flows := []struct {
		name     string
		out      func(c netip.Addr) []byte
		quoteLen int // bytes of the translated packet quoted; 0 = all
	}{
		{"udp", func(c netip.Addr) []byte { return udp6Packet(t, c, 4000, server6, 53, "query") }, 0},
		{"tcp", func(c netip.Addr) []byte { return tcp6Packet(t, c, 4000, server6, 443, "PA") }, 0},
		{"tcp, 8 bytes quoted", func(c netip.Addr) []byte { return tcp6Packet(t, c, 4000, server6, 443, "PA") }, 48},
		{"echo", func(c netip.Addr) []byte { return icmp6Echo(t, c, server6, icmp6EchoRequest, 4000, 3) }, 0},
		{"udp with extension headers", func(c netip.Addr) []byte {
			return withExtensions(udp6Packet(t, c, 4000, server6, 53, "query"), destOpts())
		}, 0},
	}
	errs := []struct {
		name      string
		typ, code uint8
		word      uint32
	}{
		{"port unreachable", icmp6Unreach, 4, 0},
		{"packet too big", icmp6PacketTooBig, 0, 1400},
		{"time exceeded", icmp6TimeExceeded, 0, 0},
		{"parameter problem", icmp6ParamProblem, 0, 6},
	}
	for _, fl := range flows {
		for _, e := range errs {
			t.Run(fl.name+"/"+e.name, func(t *testing.T) {
				tab, _ := newTable6(t, Config{})
				// A takes port 4000, so B's flow is remapped.
				if err := tab.Outbound(fl.out(client6A)); err != nil {
					t.Fatal(err)
				}
				sent := fl.out(client6B)
				if err := tab.Outbound(sent); err != nil {
					t.Fatal(err)
				}
				quoted := sent
				if fl.quoteLen > 0 {
					quoted = sent[:fl.quoteLen]
				}
				p := icmp6Error(t, router6, snat6, e.typ, e.code, e.word, quoted)
				checkSums6(t, "error as built", p)
				c, err := tab.Inbound(p)
				if err != nil || c != client6B {
					t.Fatalf("Inbound = %v, %v, want %v", c, err, client6B)
				}
				if !transport6OK(p) || !gopacketAgrees(t, p) {
					t.Errorf("translated error's ICMPv6 checksum invalid")
				}
				if !bytes.Equal(p[8:24], router6.AsSlice()) || !bytes.Equal(p[24:40], client6B.AsSlice()) ||
					p[40] != e.typ || p[41] != e.code || binary.BigEndian.Uint32(p[44:]) != e.word {
					t.Errorf("outer header %x", p[:48])
				}
				inner := p[48:]
				want := fl.out(client6B)[:len(inner)]
				if !bytes.Equal(inner, want) {
					t.Errorf("quoted packet\n%x, want what B sent\n%x", inner, want)
				}
				if fl.quoteLen == 0 && !transport6OK(inner) {
					t.Error("quoted transport checksum invalid")
				}
			})
		}
	}
}

func TestICMPv6ErrorInboundRejects(t *testing.T) {
	tab, _ := newTable6(t, Config{})
	sent := udp6Packet(t, client6A, 4000, server6, 53, "q")
	if err := tab.Outbound(sent); err != nil {
		t.Fatal(err)
	}
	other := udp6Packet(t, snat6, 4001, server6, 53, "q") // no mapping uses 4001
	notOurs := udp6Packet(t, router6, 4000, server6, 53, "q")
	first, later := fragment6(sent, 8, 7)
	gre := slices.Clone(sent)
	gre[6] = 47
	echoReply := icmp6Echo(t, snat6, server6, icmp6EchoReply, 4000, 1)
	for _, tc := range []struct {
		name string
		p    []byte
		want error
	}{
		{"unknown flow", icmp6Error(t, router6, snat6, 1, 4, 0, other), ErrNoMapping},
		{"quote not from SNAT address", icmp6Error(t, router6, snat6, 1, 4, 0, notOurs), ErrNoMapping},
		{"quote truncated", icmp6Error(t, router6, snat6, 1, 4, 0, sent[:44]), ErrMalformed},
		{"quoted later fragment", icmp6Error(t, router6, snat6, 1, 4, 0, later), ErrUnsupported},
		{"quoted GRE", icmp6Error(t, router6, snat6, 1, 4, 0, gre), ErrUnsupported},
		{"quoted IPv4", icmp6Error(t, router6, snat6, 1, 4, 0, udpPacket(t, snatAddr, 4000, server, 53, "q")), ErrMalformed},
		{"quoted echo reply", icmp6Error(t, router6, snat6, 1, 4, 0, echoReply), ErrUnsupported},
		{"redirect", icmp6Error(t, router6, snat6, 137, 0, 0, sent), ErrUnsupported},
		{"neighbour solicitation", icmp6Error(t, router6, snat6, 135, 0, 0, sent), ErrUnsupported},
	} {
		orig := slices.Clone(tc.p)
		if _, err := tab.Inbound(tc.p); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if !bytes.Equal(orig, tc.p) {
			t.Errorf("%s: dropped packet modified", tc.name)
		}
	}
	// A quoted first fragment is translated.
	p := icmp6Error(t, router6, snat6, icmp6PacketTooBig, 0, 1280, first)
	if c, err := tab.Inbound(p); err != nil || c != client6A {
		t.Errorf("error quoting a first fragment: %v, %v", c, err)
	}
	checkSums6(t, "error quoting a first fragment", p)
}

// TestICMPv6ErrorOutbound: a client answers a reply that reached it with
// port unreachable; the error leaves translated, and only that client may
// send it.
func TestICMPv6ErrorOutbound(t *testing.T) {
	tab, _ := newTable6(t, Config{})
	for _, c := range []netip.Addr{client6A, client6B} {
		if err := tab.Outbound(udp6Packet(t, c, 4000, server6, 53, "q")); err != nil {
			t.Fatal(err)
		}
	}
	ext := tab.out[outKey{client: addrOf(client6B), remote: addrOf(server6), clientPort: 4000, remotePort: 53, proto: protoUDP}].extPort
	wire := udp6Packet(t, server6, 53, snat6, ext, "late answer")
	reply := slices.Clone(wire)
	if c, err := tab.Inbound(reply); err != nil || c != client6B {
		t.Fatalf("Inbound = %v, %v", c, err)
	}
	spoof := icmp6Error(t, client6A, server6, 1, 4, 0, reply)
	if err := tab.Outbound(spoof); !errors.Is(err, ErrNoMapping) {
		t.Errorf("A sending an error about B's flow: %v, want ErrNoMapping", err)
	}
	p := icmp6Error(t, client6B, server6, 1, 4, 0, reply)
	if err := tab.Outbound(p); err != nil {
		t.Fatal(err)
	}
	if !transport6OK(p) || !gopacketAgrees(t, p) {
		t.Error("outbound error's checksum invalid")
	}
	if !bytes.Equal(p[8:24], snat6.AsSlice()) {
		t.Errorf("outer source %x", p[8:24])
	}
	if inner := p[48:]; !bytes.Equal(inner, wire) {
		t.Errorf("quoted packet\n%x, want the reply as the server sent it\n%x", inner, wire)
	}
	// An echo reply the client got, quoted back.
	if err := tab.Outbound(icmp6Echo(t, client6B, server6, icmp6EchoRequest, 4000, 1)); err != nil {
		t.Fatal(err)
	}
	echo := icmp6Echo(t, server6, snat6, icmp6EchoReply, 4000, 1)
	echoWire := slices.Clone(echo)
	if _, err := tab.Inbound(echo); err != nil {
		t.Fatal(err)
	}
	p = icmp6Error(t, client6B, server6, icmp6ParamProblem, 0, 0, echo)
	if err := tab.Outbound(p); err != nil || !bytes.Equal(p[48:], echoWire) || !transport6OK(p) {
		t.Errorf("error about an echo reply: %v, quoted %x", err, p[48:])
	}
}

func TestFragments6(t *testing.T) {
	tab, _ := newTable6(t, Config{})
	whole := udp6Packet(t, client6A, 4000, server6, 53, string(bytes.Repeat([]byte("x"), 92)))
	first, second := fragment6(whole, 40, 0xabcdef01)
	if err := tab.Outbound(first); err != nil {
		t.Fatal(err)
	}
	if err := tab.Outbound(second); err != nil {
		t.Fatal(err)
	}
	got := reassemble6(t, first, second)
	checkSums6(t, "reassembled outbound datagram", got)
	if src, sport, _, _ := fields6(t, got); src != snat6 || sport != 4000 {
		t.Errorf("reassembled outbound from %v:%d", src, sport)
	}

	reply := udp6Packet(t, server6, 53, snat6, 4000, string(bytes.Repeat([]byte("y"), 200)))
	rfirst, rsecond := fragment6(reply, 80, 0x5555)
	if c, err := tab.Inbound(slices.Clone(rsecond)); !errors.Is(err, ErrNoMapping) {
		t.Errorf("second fragment before the first: %v, %v", c, err)
	}
	for _, f := range [][]byte{rfirst, rsecond} {
		if c, err := tab.Inbound(f); err != nil || c != client6A {
			t.Fatalf("inbound fragment: %v, %v", c, err)
		}
	}
	got = reassemble6(t, rfirst, rsecond)
	checkSums6(t, "reassembled reply", got)
	if _, _, dst, dport := fields6(t, got); dst != client6A || dport != 4000 {
		t.Errorf("reassembled reply to %v:%d", dst, dport)
	}
	// Another identification, or the same one from another source, goes
	// nowhere.
	_, other := fragment6(reply, 80, 0x5556)
	if _, err := tab.Inbound(other); !errors.Is(err, ErrNoMapping) {
		t.Errorf("fragment of another datagram: %v", err)
	}
	tab.ForgetClient(client6A)
	_, again := fragment6(reply, 80, 0x5555)
	if _, err := tab.Inbound(again); !errors.Is(err, ErrNoMapping) {
		t.Errorf("fragment after ForgetClient: %v", err)
	}
}

func TestDropReasons6(t *testing.T) {
	tab, _ := newTable6(t, Config{})
	udp := udp6Packet(t, client6A, 4000, server6, 53, "q")
	mut := func(f func(p []byte) []byte) []byte { return f(slices.Clone(udp)) }
	v4mapped := netip.MustParseAddr("::ffff:10.0.5.10")
	routing := []byte{43, 0, 0, 1, 0, 0, 0, 0} // type 0, segments left 1
	many := make([][]byte, 9)
	for i := range many {
		many[i] = destOpts()
	}
	for _, tc := range []struct {
		name string
		p    []byte
		want error
	}{
		{"short", udp[:39], ErrMalformed},
		{"payload length past end", udp[:len(udp)-1], ErrMalformed},
		{"UDP header truncated", mut(func(p []byte) []byte { put16(p, 4, 4); return p[:44] }), ErrMalformed},
		{"TCP header truncated", func() []byte {
			p := tcp6Packet(t, client6A, 1, server6, 2, "S")[:58]
			put16(p, 4, 18)
			return p
		}(), ErrMalformed},
		{"UDP checksum zero", mut(func(p []byte) []byte { put16(p, 46, 0); return p }), ErrMalformed},
		{"routing header", withExtensions(udp, routing), ErrUnsupported},
		{"too many extension headers", withExtensions(udp, many...), ErrMalformed},
		{"extension header truncated", mut(func(p []byte) []byte { p[6] = 60; put16(p, 4, 4); return p[:44] }), ErrMalformed},
		{"GRE", mut(func(p []byte) []byte { p[6] = 47; return p }), ErrUnsupported},
		{"ESP", mut(func(p []byte) []byte { p[6] = 50; return p }), ErrUnsupported},
		{"echo reply", icmp6Echo(t, client6A, server6, icmp6EchoReply, 1, 1), ErrUnsupported},
		{"neighbour solicitation", icmp6Error(t, client6A, server6, 135, 0, 0, nil), ErrUnsupported},
		{"ICMPv6 truncated", mut(func(p []byte) []byte { p[6] = protoICMPv6; put16(p, 4, 4); return p[:44] }), ErrMalformed},
		{"IPv4-mapped destination", udp6Packet(t, client6A, 4000, v4mapped, 53, "q"), ErrUnsupported},
		{"IPv4-mapped source", udp6Packet(t, netip.MustParseAddr("::ffff:10.2.0.5"), 4000, server6, 53, "q"), ErrUnsupported},
	} {
		orig := slices.Clone(tc.p)
		if err := tab.Outbound(tc.p); !errors.Is(err, tc.want) {
			t.Errorf("Outbound %s: %v, want %v", tc.name, err, tc.want)
		}
		if !bytes.Equal(orig, tc.p) {
			t.Errorf("Outbound %s: dropped packet modified", tc.name)
		}
	}
	for _, tc := range []struct {
		name string
		p    []byte
		want error
	}{
		{"not for the SNAT address", udp6Packet(t, server6, 53, client6A, 4000, "a"), ErrNoMapping},
		{"no mapping", udp6Packet(t, server6, 53, snat6, 4000, "a"), ErrNoMapping},
		{"echo request", icmp6Echo(t, server6, snat6, icmp6EchoRequest, 1, 1), ErrUnsupported},
		{"UDP checksum zero", func() []byte { p := udp6Packet(t, server6, 53, snat6, 4000, "a"); put16(p, 46, 0); return p }(), ErrMalformed},
		{"IPv4-mapped source", udp6Packet(t, v4mapped, 53, snat6, 4000, "a"), ErrUnsupported},
		{"later fragment of nothing", func() []byte {
			_, l := fragment6(udp6Packet(t, server6, 53, snat6, 4000, "0123456789abcdef"), 8, 1)
			return l
		}(), ErrNoMapping},
		{"malformed", udp[:30], ErrMalformed},
	} {
		orig := slices.Clone(tc.p)
		if _, err := tab.Inbound(tc.p); !errors.Is(err, tc.want) {
			t.Errorf("Inbound %s: %v, want %v", tc.name, err, tc.want)
		}
		if !bytes.Equal(orig, tc.p) {
			t.Errorf("Inbound %s: dropped packet modified", tc.name)
		}
	}
	if tab.Len() != 0 {
		t.Errorf("drops created %d mappings", tab.Len())
	}
}

func TestNoAllocs6(t *testing.T) {
	tab, _ := newTable6(t, Config{})
	for _, tc := range []struct {
		name    string
		out, in []byte
	}{
		{"tcp", tcp6Packet(t, client6A, 40000, server6, 443, "A"), tcp6Packet(t, server6, 443, snat6, 40000, "A")},
		{"udp", udp6Packet(t, client6A, 40000, server6, 53, "q"), udp6Packet(t, server6, 53, snat6, 40000, "a")},
		{"icmpv6", icmp6Echo(t, client6A, server6, icmp6EchoRequest, 9, 1), icmp6Echo(t, server6, snat6, icmp6EchoReply, 9, 1)},
		{"tcp with extension headers", tcp6Ext(t, client6A, 40001, server6, 443, "A"), tcp6Ext(t, server6, 443, snat6, 40001, "A")},
	} {
		if err := tab.Outbound(slices.Clone(tc.out)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(tc.out))
		if n := testing.AllocsPerRun(1000, func() {
			copy(buf, tc.out)
			if err := tab.Outbound(buf); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("Outbound %s allocates %v times", tc.name, n)
		}
		buf = make([]byte, len(tc.in))
		if n := testing.AllocsPerRun(1000, func() {
			copy(buf, tc.in)
			if _, err := tab.Inbound(buf); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("Inbound %s allocates %v times", tc.name, n)
		}
	}
	junk := [][]byte{{0x60, 0, 0, 99}, udp6Packet(t, server6, 53, snat6, 1, "a"), udp6Packet(t, server6, 53, client6A, 1, "a")}
	if n := testing.AllocsPerRun(100, func() {
		for _, j := range junk {
			_ = tab.Outbound(j)
			_, _ = tab.Inbound(j)
		}
	}); n != 0 {
		t.Errorf("drops allocate %v times", n)
	}
	// Packet too big about a flow, and fragments.
	sent := udp6Packet(t, client6A, 40000, server6, 53, "q")
	if err := tab.Outbound(sent); err != nil {
		t.Fatal(err)
	}
	ptb := icmp6Error(t, router6, snat6, icmp6PacketTooBig, 0, 1280, sent)
	first, second := fragment6(udp6Packet(t, server6, 53, snat6, 40000, string(bytes.Repeat([]byte("y"), 64))), 16, 9)
	for name, ps := range map[string][][]byte{"packet too big": {ptb}, "fragments": {first, second}} {
		bufs := make([][]byte, len(ps))
		for i := range ps {
			bufs[i] = make([]byte, len(ps[i]))
		}
		if n := testing.AllocsPerRun(1000, func() {
			for i, p := range ps {
				copy(bufs[i], p)
				if _, err := tab.Inbound(bufs[i]); err != nil {
					t.Fatal(err)
				}
			}
		}); n != 0 {
			t.Errorf("Inbound %s allocates %v times", name, n)
		}
	}
}

func benchTable6(b *testing.B) (*Table, []byte, []byte) {
	tab, err := New(Config{Addr: snatAddr, Addr6: snat6})
	if err != nil {
		b.Fatal(err)
	}
	// A table with some load, half of each family.
	for i := range 10000 {
		var p []byte
		if i%2 == 0 {
			p = udpPacket(b, netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), uint16(1024+i), server, 53, "q")
		} else {
			c := client6A.As16()
			c[14], c[15] = byte(i>>8), byte(i)
			p = udp6Packet(b, netip.AddrFrom16(c), uint16(1024+i), server6, 53, "q")
		}
		if err := tab.Outbound(p); err != nil {
			b.Fatal(err)
		}
	}
	out := tcp6Packet(b, client6A, 40000, server6, 443, "A")
	if err := tab.Outbound(slices.Clone(out)); err != nil {
		b.Fatal(err)
	}
	return tab, out, tcp6Packet(b, server6, 443, snat6, 40000, "A")
}

func BenchmarkOutbound6(b *testing.B) {
	tab, out, _ := benchTable6(b)
	buf := make([]byte, len(out))
	b.ReportAllocs()
	b.SetBytes(int64(len(out)))
	for b.Loop() {
		copy(buf, out)
		if err := tab.Outbound(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkInbound6(b *testing.B) {
	tab, _, in := benchTable6(b)
	buf := make([]byte, len(in))
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		copy(buf, in)
		if _, err := tab.Inbound(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInboundPacketTooBig6 is the path MTU signal's cost: an ICMPv6
// error quoting a full-size TCP segment.
func BenchmarkInboundPacketTooBig6(b *testing.B) {
	tab, out, _ := benchTable6(b)
	sent := slices.Clone(out)
	if err := tab.Outbound(sent); err != nil {
		b.Fatal(err)
	}
	ptb := icmp6Error(b, router6, snat6, icmp6PacketTooBig, 0, 1280, sent)
	buf := make([]byte, len(ptb))
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, ptb)
		if _, err := tab.Inbound(buf); err != nil {
			b.Fatal(err)
		}
	}
}
