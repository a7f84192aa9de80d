package nat

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
)

func TestNewConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Addr: netip.MustParseAddr("fd00::1")},
		{Addr: snatAddr, MaxEntries: -1},
		{Addr: snatAddr, MaxPerClient: -1},
		{Addr: snatAddr, UDPTimeout: -time.Second},
		{Addr: snatAddr, RecycleIdle: -time.Second},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
	tab, err := New(Config{Addr: snatAddr})
	if err != nil {
		t.Fatal(err)
	}
	if tab.max != DefaultMaxEntries || tab.maxPerClient != DefaultMaxPerClient || tab.udpTimeout != int64(DefaultUDPTimeout) ||
		tab.tcpEstablished != int64(DefaultTCPEstablishedTimeout) || tab.tcpTransitory != int64(DefaultTCPTransitoryTimeout) ||
		tab.icmpTimeout != int64(DefaultICMPTimeout) || tab.recycleIdle != int64(DefaultRecycleIdle) {
		t.Error("defaults not applied")
	}
	// The RFC floors: RFC 5382 REQ-5, RFC 4787 REQ-5 (and its recommended
	// five minutes), RFC 5508 REQ-2.
	if DefaultTCPEstablishedTimeout < 2*time.Hour+4*time.Minute || DefaultTCPTransitoryTimeout < 4*time.Minute ||
		DefaultUDPTimeout < 5*time.Minute || DefaultICMPTimeout < 60*time.Second {
		t.Error("a default timeout is below its RFC's floor")
	}
	// A quota above the table's size is the table's size.
	tab, err = New(Config{Addr: snatAddr, MaxEntries: 100, MaxPerClient: 1000})
	if err != nil || tab.maxPerClient != 100 {
		t.Errorf("MaxPerClient 1000 in a table of 100: %v, quota %d", err, tab.maxPerClient)
	}
}

// roundTrip sends out from client, checks the translation, answers with the
// reply reply(ext) builds and checks it comes back to client untouched but
// for the translation.
func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		out   []byte
		reply func(ext uint16) []byte
	}{
		{
			name:  "tcp",
			out:   tcpPacket(t, clientA, 40000, server, 443, "S"),
			reply: func(ext uint16) []byte { return tcpPacket(t, server, 443, snatAddr, ext, "SA") },
		},
		{
			name:  "udp",
			out:   udpPacket(t, clientA, 40000, server, 53, "query"),
			reply: func(ext uint16) []byte { return udpPacket(t, server, 53, snatAddr, ext, "answer!") },
		},
		{
			name:  "icmp echo",
			out:   icmpEcho(t, clientA, server, icmpEchoReq, 40000, 1),
			reply: func(ext uint16) []byte { return icmpEcho(t, server, snatAddr, icmpEchoReply, ext, 1) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, _ := newTable(t, Config{})
			pkt := append([]byte(nil), tc.out...)
			if err := tab.Outbound(pkt); err != nil {
				t.Fatal(err)
			}
			checkSums(t, "outbound", pkt)
			src, ext, dst, dport := fields(t, pkt)
			if src != snatAddr || dst != server || ext != 40000 || dport != portOf(t, tc.out, false) {
				t.Errorf("outbound rewritten to %v:%d → %v:%d", src, ext, dst, dport)
			}
			if !bytes.Equal(pkt[20+8:], tc.out[20+8:]) && tc.name != "tcp" {
				t.Error("outbound changed the payload")
			}

			reply := tc.reply(ext)
			orig := append([]byte(nil), reply...)
			client, err := tab.Inbound(reply)
			if err != nil || client != clientA {
				t.Fatalf("Inbound = %v, %v, want %v", client, err, clientA)
			}
			checkSums(t, "inbound", reply)
			rsrc, rsport, rdst, rdport := fields(t, reply)
			wantSport := portOf(t, orig, true)
			if tc.name == "icmp echo" {
				// The identifier stands for both ports.
				rdport, wantSport = rsport, 40000
			}
			if rsrc != server || rdst != clientA || rdport != 40000 || rsport != wantSport {
				t.Errorf("inbound rewritten to %v:%d → %v:%d", rsrc, rsport, rdst, rdport)
			}
			if tab.Len() != 1 {
				t.Errorf("Len = %d, want 1", tab.Len())
			}
		})
	}
}

// fields returns source, source port (or echo id), destination, destination
// port (0 for echo) as gopacket decodes them.
func fields(t testing.TB, p []byte) (src netip.Addr, sport uint16, dst netip.Addr, dport uint16) {
	t.Helper()
	pkt := decode(t, p)
	ipl := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	src, dst = ipAddr(ipl.SrcIP), ipAddr(ipl.DstIP)
	switch l := pkt.TransportLayer().(type) {
	case *layers.TCP:
		return src, uint16(l.SrcPort), dst, uint16(l.DstPort)
	case *layers.UDP:
		return src, uint16(l.SrcPort), dst, uint16(l.DstPort)
	}
	if ic, ok := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		return src, ic.Id, dst, 0
	}
	t.Fatalf("no transport layer in %v", pkt)
	return
}

// portOf returns the source (src true) or destination port of p.
func portOf(t testing.TB, p []byte, src bool) uint16 {
	_, s, _, d := fields(t, p)
	if src {
		return s
	}
	return d
}

func TestTwoClientsSamePort(t *testing.T) {
	for _, proto := range []string{"tcp", "udp", "icmp"} {
		t.Run(proto, func(t *testing.T) {
			tab, _ := newTable(t, Config{})
			out := func(c netip.Addr, dst netip.Addr) []byte {
				switch proto {
				case "tcp":
					return tcpPacket(t, c, 5555, dst, 80, "S")
				case "udp":
					return udpPacket(t, c, 5555, dst, 80, "x")
				}
				return icmpEcho(t, c, dst, icmpEchoReq, 5555, 9)
			}
			reply := func(ext uint16) []byte {
				switch proto {
				case "tcp":
					return tcpPacket(t, server, 80, snatAddr, ext, "SA")
				case "udp":
					return udpPacket(t, server, 80, snatAddr, ext, "y")
				}
				return icmpEcho(t, server, snatAddr, icmpEchoReply, ext, 9)
			}
			var ext [2]uint16
			for i, c := range []netip.Addr{clientA, clientB} {
				p := out(c, server)
				if err := tab.Outbound(p); err != nil {
					t.Fatal(err)
				}
				checkSums(t, "outbound", p)
				ext[i] = portOf(t, p, true)
			}
			if ext[0] != 5555 || ext[1] == 5555 {
				t.Fatalf("external ports %v: want the first kept and the second changed", ext)
			}
			if proto != "icmp" && ext[1] < 1024 {
				t.Errorf("unprivileged port remapped to %d", ext[1])
			}
			// Repeating a flow reuses its mapping.
			p := out(clientB, server)
			if err := tab.Outbound(p); err != nil || portOf(t, p, true) != ext[1] {
				t.Fatalf("second packet of B: %v, port %d, want %d", err, portOf(t, p, true), ext[1])
			}
			for i, want := range []netip.Addr{clientA, clientB} {
				r := reply(ext[i])
				got, err := tab.Inbound(r)
				if err != nil || got != want {
					t.Fatalf("reply to %d: %v, %v, want %v", ext[i], got, err, want)
				}
				checkSums(t, "inbound", r)
				if _, _, dst, _ := fields(t, r); dst != want {
					t.Errorf("reply to %d addressed to %v", ext[i], dst)
				}
				_, sport, _, dport := fields(t, r)
				if proto == "icmp" {
					dport = sport
				}
				if dport != 5555 {
					t.Errorf("reply to %d reaches port %d, want 5555", ext[i], dport)
				}
			}
			// Toward another destination, B keeps its port.
			other := netip.MustParseAddr("10.0.5.11")
			p = out(clientB, other)
			if err := tab.Outbound(p); err != nil || portOf(t, p, true) != 5555 {
				t.Errorf("B to another destination: %v, port %d, want 5555", err, portOf(t, p, true))
			}
		})
	}
}

func TestPrivilegedPortStaysPrivileged(t *testing.T) {
	tab, _ := newTable(t, Config{})
	a := udpPacket(t, clientA, 123, server, 123, "ntp")
	b := udpPacket(t, clientB, 123, server, 123, "ntp")
	if err := tab.Outbound(a); err != nil {
		t.Fatal(err)
	}
	if err := tab.Outbound(b); err != nil {
		t.Fatal(err)
	}
	if p := portOf(t, b, true); p == 123 || p == 0 || p >= 1024 {
		t.Errorf("privileged port remapped to %d", p)
	}
}

func TestUDPZeroChecksumStaysZero(t *testing.T) {
	tab, _ := newTable(t, Config{})
	p := udpPacket(t, clientA, 4000, server, 53, "q")
	// Make the checksum "none", then force a port change via a collision.
	q := udpPacket(t, clientB, 4000, server, 53, "q")
	if err := tab.Outbound(p); err != nil {
		t.Fatal(err)
	}
	q[26], q[27] = 0, 0
	if err := tab.Outbound(q); err != nil {
		t.Fatal(err)
	}
	if q[26] != 0 || q[27] != 0 {
		t.Errorf("UDP checksum 0 became %#x", uint16(q[26])<<8|uint16(q[27]))
	}
	if !ipHeaderOK(q) || portOf(t, q, true) == 4000 {
		t.Error("translation wrong")
	}
}

func TestAdjustMatchesRecompute(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 10000 {
		data := make([]byte, 2+2*rng.IntN(30))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		// Put a correct checksum in the first word.
		data[0], data[1] = 0, 0
		sum := ^folded(onesSum(data, 0))
		data[0], data[1] = byte(sum>>8), byte(sum)
		w := 2 * (1 + rng.IntN(len(data)/2))
		if w >= len(data) {
			continue
		}
		old := uint16(data[w])<<8 | uint16(data[w+1])
		nw := uint16(rng.Uint32())
		if rng.IntN(4) == 0 {
			nw = ^old // the hardest case for one's complement arithmetic
		}
		data[w], data[w+1] = byte(nw>>8), byte(nw)
		sum = adjust16(sum, old, nw)
		data[0], data[1] = byte(sum>>8), byte(sum)
		if folded(onesSum(data, 0)) != 0xffff {
			t.Fatalf("adjust16 leaves an invalid checksum: %x", data)
		}
	}
}

func TestExpiry(t *testing.T) {
	t.Run("udp", func(t *testing.T) {
		tab, clk := newTable(t, Config{})
		out := func() error { return tab.Outbound(udpPacket(t, clientA, 4000, server, 53, "q")) }
		reply := func() error {
			_, err := tab.Inbound(udpPacket(t, server, 53, snatAddr, 4000, "a"))
			return err
		}
		if err := out(); err != nil {
			t.Fatal(err)
		}
		clk.Advance(DefaultUDPTimeout - time.Second)
		if err := reply(); err != nil {
			t.Fatalf("reply within the timeout: %v", err)
		}
		// The client's packet refreshed the mapping ...
		if err := out(); err != nil {
			t.Fatal(err)
		}
		clk.Advance(DefaultUDPTimeout - time.Second)
		if err := reply(); err != nil {
			t.Fatalf("reply within the refreshed timeout: %v", err)
		}
		// ... the replies did not (RFC 4787 REQ-6: outbound refresh).
		clk.Advance(2 * time.Second)
		if err := reply(); !errors.Is(err, ErrNoMapping) {
			t.Fatalf("reply after the timeout, refreshed only by replies: %v, want ErrNoMapping", err)
		}
		if tab.Len() != 1 {
			t.Errorf("Len before Expire = %d, want 1 (lazy)", tab.Len())
		}
		tab.Expire()
		if tab.Len() != 0 {
			t.Errorf("Len after Expire = %d, want 0", tab.Len())
		}
	})
	t.Run("tcp", func(t *testing.T) {
		tab, clk := newTable(t, Config{})
		out := func(flags string) {
			t.Helper()
			if err := tab.Outbound(tcpPacket(t, clientA, 40000, server, 443, flags)); err != nil {
				t.Fatal(err)
			}
		}
		reply := func(flags string) error {
			_, err := tab.Inbound(tcpPacket(t, server, 443, snatAddr, 40000, flags))
			return err
		}
		out("S")
		// Unanswered: transitory timeout.
		clk.Advance(DefaultTCPTransitoryTimeout + time.Second)
		if err := reply("SA"); !errors.Is(err, ErrNoMapping) {
			t.Fatalf("SYN-ACK after the transitory timeout: %v", err)
		}
		// A new SYN replaces the idle mapping; the handshake establishes it.
		out("S")
		if err := reply("SA"); err != nil {
			t.Fatal(err)
		}
		out("A")
		clk.Advance(2 * time.Hour)
		if err := reply("A"); err != nil {
			t.Fatalf("established after two hours idle: %v", err)
		}
		// The reply of an established connection refreshed it.
		clk.Advance(2 * time.Hour)
		if err := reply("PA"); err != nil {
			t.Fatalf("established, two hours after a reply: %v", err)
		}
		// FIN moves it back to the transitory timeout.
		out("FA")
		clk.Advance(DefaultTCPTransitoryTimeout - time.Second)
		if err := reply("FA"); err != nil {
			t.Fatalf("FIN within the transitory timeout: %v", err)
		}
		clk.Advance(DefaultTCPTransitoryTimeout + time.Second)
		if err := reply("A"); !errors.Is(err, ErrNoMapping) {
			t.Fatalf("after FIN and the transitory timeout: %v", err)
		}
		// RST from the far side closes too.
		out("S")
		if err := reply("R"); err != nil {
			t.Fatal(err)
		}
		clk.Advance(DefaultTCPTransitoryTimeout + time.Second)
		tab.Expire()
		if tab.Len() != 0 {
			t.Errorf("RST mapping survives the transitory timeout")
		}
	})
	t.Run("icmp", func(t *testing.T) {
		tab, clk := newTable(t, Config{ICMPTimeout: 10 * time.Second})
		if err := tab.Outbound(icmpEcho(t, clientA, server, icmpEchoReq, 7, 1)); err != nil {
			t.Fatal(err)
		}
		clk.Advance(11 * time.Second)
		if _, err := tab.Inbound(icmpEcho(t, server, snatAddr, icmpEchoReply, 7, 1)); !errors.Is(err, ErrNoMapping) {
			t.Fatalf("echo reply after the timeout: %v", err)
		}
	})
	t.Run("port of an idle mapping is reused", func(t *testing.T) {
		tab, clk := newTable(t, Config{})
		if err := tab.Outbound(udpPacket(t, clientA, 4000, server, 53, "q")); err != nil {
			t.Fatal(err)
		}
		clk.Advance(DefaultUDPTimeout + time.Second)
		p := udpPacket(t, clientB, 4000, server, 53, "q")
		if err := tab.Outbound(p); err != nil || portOf(t, p, true) != 4000 {
			t.Fatalf("B after A idled: %v, port %d, want 4000", err, portOf(t, p, true))
		}
		if c, err := tab.Inbound(udpPacket(t, server, 53, snatAddr, 4000, "a")); c != clientB || err != nil {
			t.Fatalf("reply goes to %v, %v, want %v", c, err, clientB)
		}
	})
}

func TestTableFull(t *testing.T) {
	tab, clk := newTable(t, Config{MaxEntries: 3, MaxPerClient: 2})
	for i, c := range []netip.Addr{clientA, clientA, clientB} {
		if err := tab.Outbound(udpPacket(t, c, uint16(4000+i), server, 53, "q")); err != nil {
			t.Fatal(err)
		}
	}
	p := udpPacket(t, clientB, 5000, server, 53, "q")
	orig := append([]byte(nil), p...)
	if err := tab.Outbound(p); !errors.Is(err, ErrTableFull) {
		t.Fatalf("fourth flow: %v, want ErrTableFull", err)
	}
	if !bytes.Equal(p, orig) {
		t.Error("a dropped packet was modified")
	}
	// Existing flows still pass.
	if err := tab.Outbound(udpPacket(t, clientA, 4001, server, 53, "q")); err != nil {
		t.Fatalf("existing flow in a full table: %v", err)
	}
	// Once the others idle out, the full table sweeps and makes room.
	clk.Advance(DefaultUDPTimeout + time.Second)
	if err := tab.Outbound(p); err != nil {
		t.Fatalf("new flow after the old ones idled: %v", err)
	}
	if tab.Len() != 1 {
		t.Errorf("Len = %d, want 1", tab.Len())
	}
	if st := tab.Stats(); st.FullRefused != 1 || st.QuotaRefused != 0 || st.Recycled != 0 || st.Mappings != 1 {
		t.Errorf("Stats = %+v, want one refusal for a full table and one mapping", st)
	}
}

func TestNoFreePort(t *testing.T) {
	tab, _ := newTable(t, Config{MaxEntries: 2000})
	// 1023 clients all using port 80 toward the same server: the privileged
	// range has 1023 ports, so the next one finds none.
	for i := range 1024 {
		c := netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
		err := tab.Outbound(udpPacket(t, c, 80, server, 53, "q"))
		if i < 1023 && err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if i == 1023 && !errors.Is(err, ErrNoFreePort) {
			t.Fatalf("client %d: %v, want ErrNoFreePort", i, err)
		}
	}
}

func TestForgetClient(t *testing.T) {
	tab, _ := newTable(t, Config{})
	for _, c := range []netip.Addr{clientA, clientB} {
		for port := uint16(4000); port < 4010; port++ {
			if err := tab.Outbound(udpPacket(t, c, port, server, 53, "q")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if tab.Len() != 20 {
		t.Fatalf("Len = %d", tab.Len())
	}
	// Forget the first client's mapping by its external port.
	tab.ForgetClient(clientA)
	if tab.Len() != 10 {
		t.Fatalf("Len after ForgetClient = %d, want 10", tab.Len())
	}
	for port := uint16(4000); port < 4010; port++ {
		// B's mappings were remapped away from A's ports; A's ports now
		// reach no one.
		if c, err := tab.Inbound(udpPacket(t, server, 53, snatAddr, port, "a")); !errors.Is(err, ErrNoMapping) {
			t.Fatalf("reply to A's old port %d: %v, %v", port, c, err)
		}
	}
	tab.ForgetClient(clientB)
	tab.ForgetClient(clientB)
	tab.ForgetClient(netip.MustParseAddr("::1"))
	if tab.Len() != 0 || len(tab.clients) != 0 || len(tab.in) != 0 {
		t.Fatalf("after forgetting all: Len %d, clients %d, in %d", tab.Len(), len(tab.clients), len(tab.in))
	}
}

// TestICMPErrorInbound checks errors about TCP, UDP and echo flows reach the
// client with the quoted packet translated back, including a remapped port.
func TestICMPErrorInbound(t *testing.T) {
	for _, tc := range []struct {
		name      string
		out       func(c netip.Addr) []byte
		quoteLen  int // bytes of the translated packet quoted; 0 = all
		typ, code uint8
	}{
		{"udp port unreachable", func(c netip.Addr) []byte { return udpPacket(t, c, 4000, server, 53, "query") }, 0, 3, 3},
		{"tcp frag needed, 8 bytes quoted", func(c netip.Addr) []byte { return tcpPacket(t, c, 4000, server, 443, "PA") }, 28, 3, 4},
		{"tcp time exceeded, whole header quoted", func(c netip.Addr) []byte { return tcpPacket(t, c, 4000, server, 443, "PA") }, 40, 11, 0},
		{"echo host unreachable", func(c netip.Addr) []byte { return icmpEcho(t, c, server, icmpEchoReq, 4000, 3) }, 0, 3, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, _ := newTable(t, Config{})
			// A takes port 4000, so B's flow is remapped.
			if err := tab.Outbound(tc.out(clientA)); err != nil {
				t.Fatal(err)
			}
			sent := tc.out(clientB)
			if err := tab.Outbound(sent); err != nil {
				t.Fatal(err)
			}
			quoted := sent
			if tc.quoteLen > 0 {
				quoted = sent[:tc.quoteLen]
			}
			p := icmpError(t, router, snatAddr, tc.typ, tc.code, quoted)
			checkSums(t, "error as built", p)
			c, err := tab.Inbound(p)
			if err != nil || c != clientB {
				t.Fatalf("Inbound = %v, %v, want %v", c, err, clientB)
			}
			checkSums(t, "translated error", p)
			pkt := decode(t, p)
			outer := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			ic := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			if ipAddr(outer.DstIP) != clientB || ipAddr(outer.SrcIP) != router || ic.TypeCode != layers.CreateICMPv4TypeCode(tc.typ, tc.code) || ic.Seq != 1400 {
				t.Errorf("outer header %v → %v %v seq %d", outer.SrcIP, outer.DstIP, ic.TypeCode, ic.Seq)
			}
			inner := ic.Payload
			if !ipHeaderOK(inner) {
				t.Error("quoted IPv4 header checksum invalid")
			}
			want := tc.out(clientB)[:len(inner)]
			if tc.quoteLen == 0 {
				// The whole packet is quoted: it must be exactly what B sent.
				if !bytes.Equal(inner, want) {
					t.Errorf("quoted packet\n%x, want what B sent\n%x", inner, want)
				}
				if !transportOK(inner) {
					t.Error("quoted transport checksum invalid")
				}
			} else if !bytes.Equal(inner, want) {
				t.Errorf("quoted bytes\n%x, want\n%x", inner, want)
			}
		})
	}
}

func TestICMPErrorInboundRejects(t *testing.T) {
	tab, _ := newTable(t, Config{})
	sent := udpPacket(t, clientA, 4000, server, 53, "q")
	if err := tab.Outbound(sent); err != nil {
		t.Fatal(err)
	}
	other := udpPacket(t, snatAddr, 4001, server, 53, "q") // no mapping uses 4001
	notOurs := udpPacket(t, router, 4000, server, 53, "q")
	frag := append([]byte(nil), sent...)
	frag[6] = 0x01 // offset 256*8: a non-first fragment
	gre := append([]byte(nil), sent...)
	gre[9] = 47
	for _, tc := range []struct {
		name string
		p    []byte
		want error
	}{
		{"unknown flow", icmpError(t, router, snatAddr, 3, 3, other), ErrNoMapping},
		{"quote not from SNAT address", icmpError(t, router, snatAddr, 3, 3, notOurs), ErrNoMapping},
		{"quote truncated", icmpError(t, router, snatAddr, 3, 3, sent[:24]), ErrMalformed},
		{"quoted fragment", icmpError(t, router, snatAddr, 3, 3, frag), ErrUnsupported},
		{"quoted GRE", icmpError(t, router, snatAddr, 3, 3, gre), ErrUnsupported},
		{"redirect", icmpError(t, router, snatAddr, 5, 1, sent), ErrUnsupported},
	} {
		orig := append([]byte(nil), tc.p...)
		if _, err := tab.Inbound(tc.p); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if !bytes.Equal(orig, tc.p) {
			t.Errorf("%s: dropped packet modified", tc.name)
		}
	}
}

// TestICMPErrorOutbound: a client answers a reply that reached it with port
// unreachable; the error leaves translated, and only that client may send it.
func TestICMPErrorOutbound(t *testing.T) {
	tab, _ := newTable(t, Config{})
	if err := tab.Outbound(udpPacket(t, clientA, 4000, server, 53, "q")); err != nil {
		t.Fatal(err)
	}
	if err := tab.Outbound(udpPacket(t, clientB, 4000, server, 53, "q")); err != nil {
		t.Fatal(err)
	}
	ext := tab.out[outKey{client: addrOf(clientB), remote: addrOf(server), clientPort: 4000, remotePort: 53, proto: protoUDP}].extPort
	wire := udpPacket(t, server, 53, snatAddr, ext, "late answer")
	reply := append([]byte(nil), wire...)
	if c, err := tab.Inbound(reply); err != nil || c != clientB {
		t.Fatalf("Inbound = %v, %v", c, err)
	}
	spoof := icmpError(t, clientA, server, 3, 3, reply)
	if err := tab.Outbound(spoof); !errors.Is(err, ErrNoMapping) {
		t.Errorf("A sending an error about B's flow: %v, want ErrNoMapping", err)
	}
	p := icmpError(t, clientB, server, 3, 3, reply)
	if err := tab.Outbound(p); err != nil {
		t.Fatal(err)
	}
	checkSums(t, "outbound error", p)
	pkt := decode(t, p)
	if src := ipAddr(pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4).SrcIP); src != snatAddr {
		t.Errorf("outer source %v", src)
	}
	inner := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4).Payload
	if !bytes.Equal(inner, wire) {
		t.Errorf("quoted packet\n%x, want the reply as the server sent it\n%x", inner, wire)
	}
}

func TestFragments(t *testing.T) {
	tab, _ := newTable(t, Config{})
	// A 100-byte UDP datagram from A, split after 8+32 bytes of UDP.
	whole := udpPacket(t, clientA, 4000, server, 53, string(bytes.Repeat([]byte("x"), 92)))
	first, second := fragment(whole, 40)
	if err := tab.Outbound(first); err != nil {
		t.Fatal(err)
	}
	if err := tab.Outbound(second); err != nil {
		t.Fatal(err)
	}
	if got := reassemble(t, first, second); !ipHeaderOK(got) || !transportOK(got) {
		t.Error("reassembled outbound datagram has bad checksums")
	} else if src, sport, _, _ := fields(t, got); src != snatAddr || sport != 4000 {
		t.Errorf("reassembled outbound from %v:%d", src, sport)
	}

	reply := udpPacket(t, server, 53, snatAddr, 4000, string(bytes.Repeat([]byte("y"), 200)))
	rfirst, rsecond := fragment(reply, 80)
	if c, err := tab.Inbound(append([]byte(nil), rsecond...)); !errors.Is(err, ErrNoMapping) {
		t.Errorf("second fragment before the first: %v, %v", c, err)
	}
	for _, f := range [][]byte{rfirst, rsecond} {
		if c, err := tab.Inbound(f); err != nil || c != clientA {
			t.Fatalf("inbound fragment: %v, %v", c, err)
		}
	}
	got := reassemble(t, rfirst, rsecond)
	checkSums(t, "reassembled reply", got)
	if _, _, dst, dport := fields(t, got); dst != clientA || dport != 4000 {
		t.Errorf("reassembled reply to %v:%d", dst, dport)
	}
	// After ForgetClient, later fragments go nowhere.
	tab.ForgetClient(clientA)
	_, again := fragment(reply, 80)
	if _, err := tab.Inbound(again); !errors.Is(err, ErrNoMapping) {
		t.Errorf("fragment after ForgetClient: %v", err)
	}
}

// fragment splits an unfragmented IPv4 packet after n payload bytes (n a
// multiple of 8), with correct header checksums.
func fragment(p []byte, n int) (first, second []byte) {
	hl := int(p[0]&0x0f) * 4
	first = append([]byte(nil), p[:hl+n]...)
	second = append(append([]byte(nil), p[:hl]...), p[hl+n:]...)
	put16(first, ipTotalLen, uint16(len(first)))
	put16(first, ipFrag, flagMoreFragments)
	put16(second, ipTotalLen, uint16(len(second)))
	put16(second, ipFrag, uint16(n/8))
	for _, f := range [][]byte{first, second} {
		put16(f, ipChecksum, 0)
		put16(f, ipChecksum, ^folded(onesSum(f[:hl], 0)))
	}
	return first, second
}

func reassemble(t testing.TB, first, second []byte) []byte {
	t.Helper()
	for _, f := range [][]byte{first, second} {
		if !ipHeaderOK(f) {
			t.Error("fragment header checksum invalid")
		}
	}
	if !bytes.Equal(first[12:20], second[12:20]) {
		t.Errorf("fragments' addresses differ: %x, %x", first[12:20], second[12:20])
	}
	p := append(append([]byte(nil), first...), second[20:]...)
	put16(p, ipTotalLen, uint16(len(p)))
	put16(p, ipFrag, 0)
	put16(p, ipChecksum, 0)
	put16(p, ipChecksum, ^folded(onesSum(p[:20], 0)))
	return p
}

func TestDropReasons(t *testing.T) {
	tab, _ := newTable(t, Config{})
	udp := udpPacket(t, clientA, 4000, server, 53, "q")
	mut := func(f func(p []byte) []byte) []byte { return f(append([]byte(nil), udp...)) }
	for _, tc := range []struct {
		name string
		p    []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"short", udp[:19], ErrMalformed},
		{"IPv6 without Addr6", mut(func(p []byte) []byte { p[0] = 0x65; return p }), ErrNoIPv6},
		{"version 5", mut(func(p []byte) []byte { p[0] = 0x55; return p }), ErrMalformed},
		{"IHL 4", mut(func(p []byte) []byte { p[0] = 0x44; return p }), ErrMalformed},
		{"total length past end", udp[:len(udp)-1], ErrMalformed},
		{"total length below header", mut(func(p []byte) []byte { put16(p, 2, 12); return p }), ErrMalformed},
		{"UDP header truncated", mut(func(p []byte) []byte { put16(p, 2, 26); return p }), ErrMalformed},
		{"TCP header truncated", tcpPacket(t, clientA, 1, server, 2, "S")[:38], ErrMalformed},
		{"GRE", mut(func(p []byte) []byte { p[9] = 47; return p }), ErrUnsupported},
		{"echo reply", icmpEcho(t, clientA, server, icmpEchoReply, 1, 1), ErrUnsupported},
		{"ICMP truncated", icmpEcho(t, clientA, server, icmpEchoReq, 1, 1)[:27], ErrMalformed},
	} {
		orig := append([]byte(nil), tc.p...)
		err := tab.Outbound(tc.p)
		if !errors.Is(err, tc.want) {
			t.Errorf("Outbound %s: %v, want %v", tc.name, err, tc.want)
		}
		if !bytes.Equal(orig, tc.p) {
			t.Errorf("Outbound %s: dropped packet modified", tc.name)
		}
	}
	// The last TCP case has the total length of the full packet: fix it up so
	// it reaches the TCP length check. (Covered by the UDP one otherwise.)
	for _, tc := range []struct {
		name string
		p    []byte
		want error
	}{
		{"not for the SNAT address", udpPacket(t, server, 53, clientA, 4000, "a"), ErrNoMapping},
		{"no mapping", udpPacket(t, server, 53, snatAddr, 4000, "a"), ErrNoMapping},
		{"echo request", icmpEcho(t, server, snatAddr, icmpEchoReq, 1, 1), ErrUnsupported},
		{"GRE", func() []byte { p := udpPacket(t, server, 53, snatAddr, 4000, "a"); p[9] = 47; return p }(), ErrUnsupported},
		{"malformed", udp[:10], ErrMalformed},
	} {
		orig := append([]byte(nil), tc.p...)
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

// TestDifferential drives many clients, ports and destinations through the
// table and checks every reply against a model of who owns which external
// port.
func TestDifferential(t *testing.T) {
	tab, clk := newTable(t, Config{})
	rng := rand.New(rand.NewPCG(5, 6))
	type flow struct {
		client     netip.Addr
		sport      uint16
		dst        netip.Addr
		dport      uint16
		proto      uint8
		lastActive time.Duration
	}
	type ext struct {
		dst   netip.Addr
		dport uint16
		port  uint16
		proto uint8
	}
	owner := map[ext]*flow{}
	byFlow := map[flow]ext{}
	var now time.Duration
	for op := range 20000 {
		f := flow{
			client: netip.AddrFrom4([4]byte{10, 2, 0, byte(1 + rng.IntN(8))}),
			sport:  uint16(1000 + rng.IntN(6)),
			dst:    netip.AddrFrom4([4]byte{10, 0, 5, byte(1 + rng.IntN(3))}),
			dport:  uint16(53 + rng.IntN(2)),
			proto:  []uint8{protoUDP, protoICMP}[rng.IntN(2)],
		}
		if f.proto == protoICMP {
			f.dport = 0
		}
		var p []byte
		if f.proto == protoUDP {
			p = udpPacket(t, f.client, f.sport, f.dst, f.dport, "q")
		} else {
			p = icmpEcho(t, f.client, f.dst, icmpEchoReq, f.sport, 1)
		}
		if err := tab.Outbound(p); err != nil {
			t.Fatalf("op %d: %v", op, err)
		}
		_, port, _, _ := fields(t, p)
		e := ext{f.dst, f.dport, port, f.proto}
		if prev, ok := byFlow[f]; ok && prev != e {
			// A live flow must keep its port.
			if o := owner[prev]; o != nil && o.client == f.client && o.sport == f.sport && now-o.lastActive <= 30*time.Second {
				t.Fatalf("op %d: live flow %v moved from %v to %v", op, f, prev, e)
			}
		}
		if o := owner[e]; o != nil && (o.client != f.client || o.sport != f.sport) && now-o.lastActive <= 30*time.Second {
			t.Fatalf("op %d: %v given %v, still live for %v", op, f, e, o)
		}
		fc := f
		fc.lastActive = now
		owner[e] = &fc
		byFlow[f] = e

		// Answer a random known external port.
		if rng.IntN(2) == 0 {
			var r []byte
			if e.proto == protoUDP {
				r = udpPacket(t, e.dst, e.dport, snatAddr, e.port, "a")
			} else {
				r = icmpEcho(t, e.dst, snatAddr, icmpEchoReply, e.port, 1)
			}
			c, err := tab.Inbound(r)
			if err != nil || c != f.client {
				t.Fatalf("op %d: reply to %v went to %v, %v, want %v", op, e, c, err, f.client)
			}
			if _, sport, _, dport := fields(t, r); (e.proto == protoUDP && dport != f.sport) || (e.proto == protoICMP && sport != f.sport) {
				t.Fatalf("op %d: reply to %v reached the wrong port", op, e)
			}
			checkSums(t, "reply", r)
		}
		if rng.IntN(50) == 0 {
			d := time.Duration(rng.IntN(40)) * time.Second
			clk.Advance(d)
			now += d
		}
		if rng.IntN(500) == 0 {
			tab.Expire()
		}
	}
}

// TestConcurrent runs Outbound, Inbound, Expire, Pair and ForgetClient at
// once, over both families, with clients over their quota (so mappings are
// recycled and refused); run it with -race.
func TestConcurrent(t *testing.T) {
	tab, clk := newTable6(t, Config{MaxEntries: 500, MaxPerClient: 3, RecycleIdle: time.Second})
	const flows = 400
	outs := make([][]byte, flows)
	ins := make([][]byte, flows)
	v6 := func(n int) netip.Addr {
		a := client6A.As16()
		a[15] = byte(n)
		return netip.AddrFrom16(a)
	}
	for i := range flows {
		port := uint16(2000 + i/100)
		if i%2 == 0 {
			c := netip.AddrFrom4([4]byte{10, 2, 0, byte(i / 2 % 50)})
			outs[i] = udpPacket(t, c, port, server, 53, "q")
			ins[i] = udpPacket(t, server, 53, snatAddr, port, "a")
		} else {
			outs[i] = udp6Packet(t, v6(i/2%50), port, server6, 53, "q")
			ins[i] = udp6Packet(t, server6, 53, snat6, port, "a")
		}
	}
	var wg sync.WaitGroup
	buf := func() []byte { return make([]byte, 0, 128) }
	wg.Go(func() {
		b := buf()
		for i := range 20000 {
			b = append(b[:0], outs[i%flows]...)
			if err := tab.Outbound(b); err != nil && !errors.Is(err, ErrTableFull) && !errors.Is(err, ErrClientQuota) {
				t.Error(err)
				return
			}
		}
	})
	wg.Go(func() {
		b := buf()
		for i := range 20000 {
			b = append(b[:0], ins[i%flows]...)
			if _, err := tab.Inbound(b); err != nil && !errors.Is(err, ErrNoMapping) {
				t.Error(err)
				return
			}
		}
	})
	wg.Go(func() {
		for i := range 2000 {
			clk.Advance(50 * time.Millisecond)
			tab.Expire()
			v4 := netip.AddrFrom4([4]byte{10, 2, 0, byte(i % 50)})
			if i%3 == 0 {
				tab.ForgetClient(v6(i % 50))
			} else {
				tab.ForgetClient(v4)
			}
			if err := tab.Pair(netip.AddrFrom4([4]byte{10, 2, 0, byte((i + 25) % 50)}), v6((i+25)%50)); err != nil {
				t.Error(err)
				return
			}
			_ = tab.Len()
		}
	})
	wg.Wait()
	// The tables agree with each other and every client is within its quota.
	sum := 0
	for c, f := range tab.clients {
		if f.n > 3 {
			t.Errorf("client %v holds %d mappings, over its quota of 3", c.netip(), f.n)
		}
		n := 0
		for m := f.head; m != nil; m = m.next {
			if tab.clientKeyLocked(m.out.client) != c || f.key != c || m.flows != f || tab.out[m.out] != m || tab.in[m.inKey()] != m {
				t.Errorf("client %v lists a mapping the table does not hold: %+v", c.netip(), m.out)
			}
			n++
		}
		if n != f.n {
			t.Errorf("client %v lists %d mappings, counts %d", c.netip(), n, f.n)
		}
		sum += n
	}
	if sum != len(tab.out) || len(tab.in) != len(tab.out) {
		t.Errorf("clients list %d mappings, out holds %d, in %d", sum, len(tab.out), len(tab.in))
	}
}

func TestNoAllocs(t *testing.T) {
	tab, _ := newTable(t, Config{})
	for _, tc := range []struct {
		name    string
		out, in []byte
	}{
		{"tcp", tcpPacket(t, clientA, 40000, server, 443, "A"), tcpPacket(t, server, 443, snatAddr, 40000, "A")},
		{"udp", udpPacket(t, clientA, 40000, server, 53, "q"), udpPacket(t, server, 53, snatAddr, 40000, "a")},
		{"icmp", icmpEcho(t, clientA, server, icmpEchoReq, 9, 1), icmpEcho(t, server, snatAddr, icmpEchoReply, 9, 1)},
	} {
		out := append([]byte(nil), tc.out...)
		if err := tab.Outbound(out); err != nil {
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
	// Dropping allocates nothing either.
	junk := []byte{0x45, 0, 0, 99}
	if n := testing.AllocsPerRun(100, func() { _ = tab.Outbound(junk); _, _ = tab.Inbound(junk) }); n != 0 {
		t.Errorf("drops allocate %v times", n)
	}
	// Nor does the TCP state tracking: a whole handshake, data and FIN on an
	// existing mapping.
	var segs [][]byte
	for _, s := range []struct {
		in    bool
		flags string
	}{{false, "S"}, {true, "SA"}, {false, "A"}, {true, "PA"}, {false, "PA"}, {true, "FA"}, {false, "FA"}} {
		if s.in {
			segs = append(segs, tcpPacket(t, server, 443, snatAddr, 40000, s.flags))
		} else {
			segs = append(segs, tcpPacket(t, clientA, 40000, server, 443, s.flags))
		}
	}
	buf := make([]byte, len(segs[0]))
	if n := testing.AllocsPerRun(100, func() {
		for i, seg := range segs {
			copy(buf, seg)
			var err error
			if i%2 == 1 {
				_, err = tab.Inbound(buf)
			} else {
				err = tab.Outbound(buf)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}); n != 0 {
		t.Errorf("a TCP connection's segments allocate %v times", n)
	}
	// Nor does refusing a client at its quota.
	full, _ := newTable(t, Config{MaxPerClient: 1})
	if err := full.Outbound(udpPacket(t, clientA, 1, server, 53, "q")); err != nil {
		t.Fatal(err)
	}
	refused := udpPacket(t, clientA, 2, server, 53, "q")
	if n := testing.AllocsPerRun(1000, func() {
		if err := full.Outbound(refused); !errors.Is(err, ErrClientQuota) {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("a refusal at the quota allocates %v times", n)
	}
	// Nor does an ICMP error.
	sent := udpPacket(t, clientA, 40000, server, 53, "q")
	if err := tab.Outbound(sent); err != nil {
		t.Fatal(err)
	}
	icmpErr := icmpError(t, router, snatAddr, 3, 3, sent)
	buf = make([]byte, len(icmpErr))
	if n := testing.AllocsPerRun(1000, func() {
		copy(buf, icmpErr)
		if _, err := tab.Inbound(buf); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Inbound ICMP error allocates %v times", n)
	}
}

func benchTable(b *testing.B) (*Table, []byte, []byte) {
	tab, err := New(Config{Addr: snatAddr})
	if err != nil {
		b.Fatal(err)
	}
	// A table with some load.
	for i := range 10000 {
		c := netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
		if err := tab.Outbound(udpPacket(b, c, uint16(1024+i), server, 53, "q")); err != nil {
			b.Fatal(err)
		}
	}
	out := tcpPacket(b, clientA, 40000, server, 443, "A")
	if err := tab.Outbound(append([]byte(nil), out...)); err != nil {
		b.Fatal(err)
	}
	return tab, out, tcpPacket(b, server, 443, snatAddr, 40000, "A")
}

func BenchmarkOutbound(b *testing.B) {
	tab, out, _ := benchTable(b)
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

func BenchmarkInbound(b *testing.B) {
	tab, _, in := benchTable(b)
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

// BenchmarkBothDirections runs Outbound and Inbound of one flow on two
// goroutines at once, as the engine does; b.N packets each way.
func BenchmarkBothDirections(b *testing.B) {
	tab, out, in := benchTable(b)
	b.ReportAllocs()
	var wg sync.WaitGroup
	b.ResetTimer()
	wg.Go(func() {
		buf := make([]byte, len(out))
		for range b.N {
			copy(buf, out)
			_ = tab.Outbound(buf)
		}
	})
	buf := make([]byte, len(in))
	for range b.N {
		copy(buf, in)
		_, _ = tab.Inbound(buf)
	}
	wg.Wait()
}

func BenchmarkNewFlow(b *testing.B) {
	tab, err := New(Config{Addr: snatAddr, MaxEntries: 1 << 30, MaxPerClient: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	p := udpPacket(b, clientA, 1, server, 53, "q")
	buf := make([]byte, len(p))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		copy(buf, p)
		// A new port, and a new destination every 65536.
		put32(buf, ipDst, 0x0a000000|uint32(i>>16))
		put16(buf, 20, uint16(i))
		if err := tab.Outbound(buf); err != nil {
			b.Fatal(fmt.Sprint(i, err))
		}
		i++
	}
}
