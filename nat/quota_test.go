package nat

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// These tests cover each client's share of the table (quota, recycling, a
// full table) and the TCP state tracking that decides which mappings are
// established; TestQuotaDifferential checks all of it against a slow model.

// clientAddr is the n-th test client, 10.2.0.n.
func clientAddr(n int) netip.Addr { return netip.AddrFrom4([4]byte{10, 2, byte(n >> 8), byte(n)}) }

// udpOut sends one UDP packet from client:port to server:53.
func udpOut(t testing.TB, tab *Table, client netip.Addr, port uint16) error {
	t.Helper()
	return tab.Outbound(udpPacket(t, client, port, server, 53, "q"))
}

// udpReply answers the flow whose external port is ext; it returns the
// client the reply reached.
func udpReply(t testing.TB, tab *Table, ext uint16) (netip.Addr, error) {
	t.Helper()
	return tab.Inbound(udpPacket(t, server, 53, snatAddr, ext, "a"))
}

func TestClientQuota(t *testing.T) {
	tab, clk := newTable(t, Config{MaxPerClient: 4})
	for port := uint16(4000); port < 4004; port++ {
		if err := udpOut(t, tab, clientA, port); err != nil {
			t.Fatal(err)
		}
	}
	// At its quota, A's new flow is refused and the packet left as it was.
	p := udpPacket(t, clientA, 4004, server, 53, "q")
	orig := slices.Clone(p)
	if err := tab.Outbound(p); !errors.Is(err, ErrClientQuota) {
		t.Fatalf("A's fifth flow: %v, want ErrClientQuota", err)
	}
	if !slices.Equal(p, orig) {
		t.Error("a refused packet was modified")
	}
	// A's own flows pass, and B is not affected.
	if err := udpOut(t, tab, clientA, 4001); err != nil {
		t.Fatalf("A's existing flow: %v", err)
	}
	for port := uint16(4000); port < 4004; port++ {
		if err := udpOut(t, tab, clientB, port+100); err != nil {
			t.Fatalf("B's flow at A's quota: %v", err)
		}
	}

	// A keeps its flow on 4000 busy and uses 4001 once more a little
	// later; 4002 and 4003 idle. Once RecycleIdle has passed, a new flow
	// takes the place of the first in creation order that has idled that
	// long: 4002.
	for i := range 3 {
		clk.Advance(DefaultRecycleIdle / 3)
		if err := udpOut(t, tab, clientA, 4000); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := udpOut(t, tab, clientA, 4001); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := udpOut(t, tab, clientA, 4004); err != nil {
		t.Fatalf("A's new flow with idle flows of its own: %v", err)
	}
	if c, err := udpReply(t, tab, 4002); !errors.Is(err, ErrNoMapping) {
		t.Errorf("reply to A's recycled flow 4002: %v, %v, want ErrNoMapping", c, err)
	}
	for _, ext := range []uint16{4000, 4001, 4003, 4004} {
		if c, err := udpReply(t, tab, ext); err != nil || c != clientA {
			t.Errorf("reply to A's flow %d: %v, %v", ext, c, err)
		}
	}
	for ext := uint16(4100); ext < 4104; ext++ {
		if c, err := udpReply(t, tab, ext); err != nil || c != clientB {
			t.Errorf("reply to B's flow %d: %v, %v", ext, c, err)
		}
	}
	if st := tab.Stats(); st.QuotaRefused != 1 || st.Recycled != 1 || st.Mappings != 8 {
		t.Errorf("Stats = %+v, want one refusal, one recycled, 8 mappings", st)
	}
}

// TestQuotaKeepsEstablishedTCP: an established TCP connection is never
// recycled before it expires, however long it idles; transitory ones are.
func TestQuotaKeepsEstablishedTCP(t *testing.T) {
	tab, clk := newTable(t, Config{MaxPerClient: 2})
	handshake := func(port uint16) {
		t.Helper()
		for _, step := range []struct {
			inbound bool
			flags   string
		}{{false, "S"}, {true, "SA"}, {false, "A"}} {
			var err error
			if step.inbound {
				_, err = tab.Inbound(tcpPacket(t, server, 443, snatAddr, port, step.flags))
			} else {
				err = tab.Outbound(tcpPacket(t, clientA, port, server, 443, step.flags))
			}
			if err != nil {
				t.Fatalf("handshake on %d, %s: %v", port, step.flags, err)
			}
		}
	}
	handshake(40000)
	// A SYN that nobody answers.
	if err := tab.Outbound(tcpPacket(t, clientA, 40001, server, 443, "S")); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour)
	if err := udpOut(t, tab, clientA, 5000); err != nil {
		t.Fatalf("a new flow with the half-open one idle: %v", err)
	}
	if _, err := tab.Inbound(tcpPacket(t, server, 443, snatAddr, 40001, "SA")); !errors.Is(err, ErrNoMapping) {
		t.Errorf("the half-open connection was not the one recycled: %v", err)
	}
	clk.Advance(DefaultRecycleIdle)
	// The established connection, idle an hour and a half, stays; the UDP
	// flow goes.
	if err := udpOut(t, tab, clientA, 5001); err != nil {
		t.Fatalf("a new flow with the UDP one idle: %v", err)
	}
	clk.Advance(DefaultRecycleIdle)
	if err := udpOut(t, tab, clientA, 5002); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	if err := udpOut(t, tab, clientA, 5003); !errors.Is(err, ErrClientQuota) {
		t.Fatalf("a new flow with only the established connection idle: %v, want ErrClientQuota", err)
	}
	if c, err := tab.Inbound(tcpPacket(t, server, 443, snatAddr, 40000, "PA")); err != nil || c != clientA {
		t.Fatalf("established connection after 1.5 h idle and quota pressure: %v, %v", c, err)
	}
	// Its reply refreshed it; once it expires it may go.
	clk.Advance(DefaultTCPEstablishedTimeout + time.Second)
	if err := udpOut(t, tab, clientA, 5003); err != nil {
		t.Fatalf("a new flow once the connection expired: %v", err)
	}
}

// TestFullTable: in a full table a client gets room from expired mappings
// and from its own idle ones, never from another client's live ones.
func TestFullTable(t *testing.T) {
	tab, clk := newTable(t, Config{MaxEntries: 4, MaxPerClient: 4})
	for port := uint16(4000); port < 4004; port++ {
		if err := udpOut(t, tab, clientA, port); err != nil {
			t.Fatal(err)
		}
	}
	// A's mappings idle for long enough to be recycled, but they are live:
	// B gets none of them.
	clk.Advance(DefaultUDPTimeout - time.Second)
	if err := udpOut(t, tab, clientB, 4100); !errors.Is(err, ErrTableFull) {
		t.Fatalf("B's flow in a table full of A's live mappings: %v, want ErrTableFull", err)
	}
	for ext := uint16(4000); ext < 4004; ext++ {
		if c, err := udpReply(t, tab, ext); err != nil || c != clientA {
			t.Fatalf("A's mapping %d after B was refused: %v, %v", ext, c, err)
		}
	}
	// A itself may recycle its own.
	if err := udpOut(t, tab, clientA, 4004); err != nil {
		t.Fatalf("A's flow in a table full of its own idle mappings: %v", err)
	}
	// Expired ones go first: once A's first three expire (4004 is fresh),
	// B's flow finds room at once.
	clk.Advance(2 * time.Second)
	if err := udpOut(t, tab, clientB, 4100); err != nil {
		t.Fatalf("B's flow with expired mappings in the table: %v", err)
	}
	if c, err := udpReply(t, tab, 4004); err != nil || c != clientA {
		t.Fatalf("A's live mapping after B's flow: %v, %v", c, err)
	}
	if st := tab.Stats(); st.FullRefused != 1 || st.Recycled != 1 || st.Mappings != 2 {
		t.Errorf("Stats = %+v, want one refusal, one recycled, 2 mappings", st)
	}
}

// TestRecycleScanIsBounded: a new flow looks at no more than recycleScan of
// its client's mappings, and those in use go to the back, so an idle one
// behind many busy ones is found within a few new flows.
func TestRecycleScanIsBounded(t *testing.T) {
	const quota = 100
	tab, clk := newTable(t, Config{MaxPerClient: quota})
	for port := range uint16(quota) {
		if err := udpOut(t, tab, clientA, 4000+port); err != nil {
			t.Fatal(err)
		}
	}
	// The first half stays busy; the second idles.
	clk.Advance(DefaultRecycleIdle)
	for port := range uint16(quota / 2) {
		if err := udpOut(t, tab, clientA, 4000+port); err != nil {
			t.Fatal(err)
		}
	}
	if err := udpOut(t, tab, clientA, 5000); !errors.Is(err, ErrClientQuota) {
		t.Fatalf("first new flow (%d busy mappings in front): %v, want ErrClientQuota", recycleScan, err)
	}
	if err := udpOut(t, tab, clientA, 5000); err != nil {
		t.Fatalf("second new flow: %v", err)
	}
	// The idle one created first went.
	if _, err := udpReply(t, tab, 4000+quota/2); !errors.Is(err, ErrNoMapping) {
		t.Errorf("the oldest idle mapping was not the one recycled: %v", err)
	}
	if _, err := udpReply(t, tab, 4000+quota/2+1); err != nil {
		t.Errorf("the next idle mapping went too: %v", err)
	}
}

// TestTCPStates walks segment sequences through a mapping and checks which
// end established (the long timeout) and which do not.
func TestTCPStates(t *testing.T) {
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
		{"handshake and data", []seg{out("S"), in("SA"), out("A"), out("PA"), in("PA")}, true},
		{"SYN only", []seg{out("S")}, false},
		{"SYN answered, never acknowledged", []seg{out("S"), in("SA")}, false},
		{"SYN-ACK without a SYN", []seg{out("A"), in("SA"), out("A")}, false},
		{"replies to a mid-stream packet", []seg{out("PA"), in("PA"), in("A"), out("A")}, false},
		{"SYN answered by a bare ACK", []seg{out("S"), in("A"), out("A")}, false},
		{"SYN answered by RST", []seg{out("S"), in("RA"), out("A")}, false},
		{"SYN answered by a SYN", []seg{out("S"), in("S"), out("SA"), out("A")}, false},
		{"FIN from the client", []seg{out("S"), in("SA"), out("A"), out("FA")}, false},
		{"FIN from the server", []seg{out("S"), in("SA"), out("A"), in("FA")}, false},
		{"RST from the server, then data", []seg{out("S"), in("SA"), out("A"), in("R"), out("PA"), in("PA")}, false},
		{"closed, then a new connection on the same ports", []seg{out("S"), in("SA"), out("A"), out("FA"), in("FA"), out("A"),
			out("S"), in("SA"), out("A")}, true},
		{"new SYN over an established connection", []seg{out("S"), in("SA"), out("A"), out("S")}, false},
		{"retransmitted SYN and SYN-ACK", []seg{out("S"), out("S"), in("SA"), in("SA"), out("A")}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, clk := newTable(t, Config{})
			for i, s := range tc.segs {
				var err error
				if s.in {
					_, err = tab.Inbound(tcpPacket(t, server, 443, snatAddr, 40000, s.flags))
				} else {
					err = tab.Outbound(tcpPacket(t, clientA, 40000, server, 443, s.flags))
				}
				if err != nil {
					t.Fatalf("segment %d (%v): %v", i, s, err)
				}
			}
			// Past the transitory timeout only an established mapping lives.
			clk.Advance(DefaultTCPTransitoryTimeout + time.Second)
			_, err := tab.Inbound(tcpPacket(t, server, 443, snatAddr, 40000, "A"))
			if got := err == nil; got != tc.established {
				t.Errorf("after the transitory timeout: %v; want established %v", err, tc.established)
			}
		})
	}
}

// TestInboundAloneKeepsNothingAlive: the private network sending on its own
// neither refreshes a mapping nor lengthens its timeout.
func TestInboundAloneKeepsNothingAlive(t *testing.T) {
	for _, tc := range []struct {
		name    string
		out     []byte
		reply   []byte
		timeout time.Duration
	}{
		{"udp", udpPacket(t, clientA, 4000, server, 53, "q"), udpPacket(t, server, 53, snatAddr, 4000, "a"), DefaultUDPTimeout},
		{"icmp", icmpEcho(t, clientA, server, icmpEchoReq, 9, 1), icmpEcho(t, server, snatAddr, icmpEchoReply, 9, 1), DefaultICMPTimeout},
		{"tcp SYN answered again and again", tcpPacket(t, clientA, 40000, server, 443, "S"), tcpPacket(t, server, 443, snatAddr, 40000, "SA"),
			DefaultTCPTransitoryTimeout},
		{"tcp mid-stream", tcpPacket(t, clientA, 40000, server, 443, "PA"), tcpPacket(t, server, 443, snatAddr, 40000, "PA"),
			DefaultTCPTransitoryTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, clk := newTable(t, Config{})
			if err := tab.Outbound(slices.Clone(tc.out)); err != nil {
				t.Fatal(err)
			}
			step := tc.timeout / 4
			var elapsed time.Duration
			for elapsed+step <= tc.timeout {
				clk.Advance(step)
				elapsed += step
				if _, err := tab.Inbound(slices.Clone(tc.reply)); err != nil {
					t.Fatalf("reply %v after the client's packet: %v", elapsed, err)
				}
			}
			clk.Advance(tc.timeout - elapsed + time.Second)
			if _, err := tab.Inbound(slices.Clone(tc.reply)); !errors.Is(err, ErrNoMapping) {
				t.Fatalf("reply %v after the client's only packet: %v, want ErrNoMapping", tc.timeout+time.Second, err)
			}
		})
	}
}

// tcpPhase is the model's TCP state, written as the phases of the
// handshake rather than as the table's bits.
type tcpPhase int

const (
	phaseNone tcpPhase = iota
	phaseSynSent
	phaseSynAcked
	phaseEstablished
	phaseClosed
)

func (p tcpPhase) next(flags byte, inbound bool) tcpPhase {
	syn, ack := flags&tcpSYN != 0, flags&tcpACK != 0
	switch {
	case flags&(tcpFIN|tcpRST) != 0:
		return phaseClosed
	case !inbound && syn && !ack:
		if p == phaseSynAcked {
			return p // a retransmitted SYN
		}
		return phaseSynSent
	case inbound && syn && ack && p == phaseSynSent:
		return phaseSynAcked
	case !inbound && !syn && ack && p == phaseSynAcked:
		return phaseEstablished
	}
	return p
}

// modelFlow is one mapping of the model.
type modelFlow struct {
	key      outKey
	lastSeen time.Duration
	phase    tcpPhase
}

// quotaModel is the slow, obvious table: every mapping in a map, each
// client's in a slice in recycling order, every rule written out.
type quotaModel struct {
	max, quota int
	now        time.Duration
	lastSweep  time.Duration
	flows      map[outKey]*modelFlow
	order      map[addr][]*modelFlow // by owner
	// pairs holds both directions of each pairing, as Table.pairs does.
	pairs map[addr]addr
	stats Stats
}

func (m *quotaModel) timeout(f *modelFlow) time.Duration {
	switch f.key.proto {
	case protoTCP:
		if f.phase == phaseEstablished {
			return DefaultTCPEstablishedTimeout
		}
		return DefaultTCPTransitoryTimeout
	case protoUDP:
		return DefaultUDPTimeout
	}
	return DefaultICMPTimeout
}

func (m *quotaModel) expired(f *modelFlow) bool { return m.now-f.lastSeen > m.timeout(f) }

func (m *quotaModel) remove(f *modelFlow) {
	delete(m.flows, f.key)
	c := m.owner(f.key.client)
	m.order[c] = slices.DeleteFunc(m.order[c], func(g *modelFlow) bool { return g == f })
	if len(m.order[c]) == 0 {
		delete(m.order, c)
	}
}

// owner is the client an address's mappings count against: the IPv4
// address of a pair, else the address itself.
func (m *quotaModel) owner(a addr) addr {
	if p, ok := m.pairs[a]; ok && p.is4() {
		return p
	}
	return a
}

// pair ties v4 and v6, the IPv6 address's mappings joining the back of the
// IPv4 one's list in their order; the first go while the two together stand
// over the quota.
func (m *quotaModel) pair(v4, v6 addr) {
	m.pairs[v4], m.pairs[v6] = v6, v4
	if l := m.order[v6]; len(l) > 0 {
		m.order[v4] = append(m.order[v4], l...)
	}
	delete(m.order, v6)
	for len(m.order[v4]) > m.quota {
		m.remove(m.order[v4][0])
	}
}

// forget removes every mapping of a's client and its pairing.
func (m *quotaModel) forget(a addr) {
	for _, f := range slices.Clone(m.order[m.owner(a)]) {
		m.remove(f)
	}
	if p, ok := m.pairs[a]; ok {
		delete(m.pairs, a)
		delete(m.pairs, p)
	}
}

// recycle removes the first recyclable mapping of client among the first
// recycleScan, rotating the others to the back.
func (m *quotaModel) recycle(client addr) bool {
	n := min(len(m.order[client]), recycleScan)
	for range n {
		f := m.order[client][0]
		idle := m.now - f.lastSeen
		if m.expired(f) || idle >= DefaultRecycleIdle && f.phase != phaseEstablished {
			m.remove(f)
			m.stats.Recycled++
			return true
		}
		m.order[client] = append(slices.Clone(m.order[client][1:]), f)
	}
	return false
}

func (m *quotaModel) sweep() {
	for _, f := range m.flows {
		if m.expired(f) {
			m.remove(f)
		}
	}
	m.lastSweep = m.now
}

func (m *quotaModel) outbound(k outKey, flags byte) error {
	if f := m.flows[k]; f != nil {
		if !m.expired(f) {
			f.lastSeen = m.now
			if k.proto == protoTCP {
				f.phase = f.phase.next(flags, false)
			}
			return nil
		}
		m.remove(f)
	}
	owner := m.owner(k.client)
	if len(m.order[owner]) >= m.quota && !m.recycle(owner) {
		m.stats.QuotaRefused++
		return ErrClientQuota
	}
	if len(m.flows) >= m.max {
		if m.now-m.lastSweep >= sweepInterval {
			m.sweep()
		}
		if len(m.flows) >= m.max && !m.recycle(owner) {
			m.stats.FullRefused++
			return ErrTableFull
		}
	}
	f := &modelFlow{key: k, lastSeen: m.now}
	if k.proto == protoTCP {
		f.phase = phaseNone.next(flags, false)
	}
	m.flows[k] = f
	m.order[owner] = append(m.order[owner], f)
	return nil
}

// inbound delivers a reply to the flow k (whose external port is its
// client port: the test gives clients disjoint ports).
func (m *quotaModel) inbound(k outKey, flags byte) (netip.Addr, error) {
	f := m.flows[k]
	if f == nil || m.expired(f) {
		return netip.Addr{}, ErrNoMapping
	}
	if k.proto == protoTCP {
		f.phase = f.phase.next(flags, true)
		if f.phase == phaseEstablished {
			f.lastSeen = m.now
		}
	}
	return k.client.netip(), nil
}

// TestQuotaDifferential drives a small table (so that quotas, recycling and
// a full table all come into play) with random flows of every protocol of
// both families, TCP flags in both directions, time steps around every
// timeout, sweeps, clients whose two addresses are paired and unpaired, and
// departing clients, and checks each result against quotaModel.
func TestQuotaDifferential(t *testing.T) {
	const (
		clients = 4
		max     = 10
		quota   = 4
	)
	tab, clk := newTable6(t, Config{MaxEntries: max, MaxPerClient: quota})
	m := &quotaModel{max: max, quota: quota, flows: map[outKey]*modelFlow{}, order: map[addr][]*modelFlow{}, pairs: map[addr]addr{}}
	rng := rand.New(rand.NewPCG(11, 12))
	remotes := []netip.Addr{server, router}
	remotes6 := []netip.Addr{server6, router6}
	clientAddr6 := func(n int) netip.Addr {
		a := client6A.As16()
		a[15] = byte(n)
		return netip.AddrFrom16(a)
	}
	steps := []time.Duration{time.Second, 5 * time.Second, DefaultRecycleIdle, DefaultICMPTimeout,
		DefaultTCPTransitoryTimeout, DefaultUDPTimeout, DefaultTCPEstablishedTimeout}
	outFlags := []string{"S", "S", "A", "PA", "FA", "R", "SA"}
	inFlags := []string{"SA", "SA", "A", "PA", "FA", "R", "S"}
	flagBits := func(s string) byte {
		var b byte
		for _, c := range s {
			b |= map[rune]byte{'S': tcpSYN, 'A': tcpACK, 'F': tcpFIN, 'R': tcpRST, 'P': 0x08}[c]
		}
		return b
	}
	randomKey := func() outKey {
		c := 1 + rng.IntN(clients)
		k := outKey{
			client:     addrOf(clientAddr(c)),
			remote:     addrOf(remotes[rng.IntN(len(remotes))]),
			clientPort: uint16(1000*c + rng.IntN(4)), // disjoint per client: the external port is the client's
			proto:      []uint8{protoUDP, protoTCP, protoICMP}[rng.IntN(3)],
		}
		if rng.IntN(2) == 0 {
			k.client, k.remote = addrOf(clientAddr6(c)), addrOf(remotes6[rng.IntN(len(remotes6))])
			if k.proto == protoICMP {
				k.proto = protoICMPv6
			}
		}
		switch k.proto {
		case protoUDP:
			k.remotePort = 53
		case protoTCP:
			k.remotePort = 443
		}
		return k
	}
	packet := func(k outKey, flags string, inbound bool) []byte {
		c, r := k.client.netip(), k.remote.netip()
		if !k.client.is4() {
			switch {
			case k.proto == protoUDP && inbound:
				return udp6Packet(t, r, k.remotePort, snat6, k.clientPort, "a")
			case k.proto == protoUDP:
				return udp6Packet(t, c, k.clientPort, r, k.remotePort, "q")
			case k.proto == protoTCP && inbound:
				return tcp6Packet(t, r, k.remotePort, snat6, k.clientPort, flags)
			case k.proto == protoTCP:
				return tcp6Packet(t, c, k.clientPort, r, k.remotePort, flags)
			case inbound:
				return icmp6Echo(t, r, snat6, icmp6EchoReply, k.clientPort, 1)
			}
			return icmp6Echo(t, c, r, icmp6EchoRequest, k.clientPort, 1)
		}
		switch {
		case k.proto == protoUDP && inbound:
			return udpPacket(t, r, k.remotePort, snatAddr, k.clientPort, "a")
		case k.proto == protoUDP:
			return udpPacket(t, c, k.clientPort, r, k.remotePort, "q")
		case k.proto == protoTCP && inbound:
			return tcpPacket(t, r, k.remotePort, snatAddr, k.clientPort, flags)
		case k.proto == protoTCP:
			return tcpPacket(t, c, k.clientPort, r, k.remotePort, flags)
		case inbound:
			return icmpEcho(t, r, snatAddr, icmpEchoReply, k.clientPort, 1)
		}
		return icmpEcho(t, c, r, icmpEchoReq, k.clientPort, 1)
	}
	// knownKey is a flow the model holds, half of the time: so that flows
	// live long enough to go through the TCP handshake and to be refreshed.
	knownKey := func() outKey {
		if len(m.flows) == 0 || rng.IntN(2) == 0 {
			return randomKey()
		}
		keys := slices.SortedFunc(maps.Keys(m.flows), func(a, b outKey) int { return cmp.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
		return keys[rng.IntN(len(keys))]
	}
	var counts [6]int // outbound ok, quota, full, inbound ok, packets of established connections, pairings
	for op := range 30000 {
		what := fmt.Sprintf("op %d at %v", op, m.now)
		switch r := rng.IntN(100); {
		case r < 50:
			k := knownKey()
			flags := outFlags[rng.IntN(len(outFlags))]
			if f := m.flows[k]; f != nil && rng.IntN(2) == 0 {
				flags = map[tcpPhase]string{phaseNone: "S", phaseSynSent: "S", phaseSynAcked: "A", phaseEstablished: "PA", phaseClosed: "S"}[f.phase]
			}
			p := packet(k, flags, false)
			err, want := tab.Outbound(p), m.outbound(k, flagBits(flags))
			if !errors.Is(err, want) || (err == nil) != (want == nil) {
				t.Fatalf("%s: Outbound %+v %s = %v, model says %v", what, k, flags, err, want)
			}
			if err == nil {
				if m.flows[k].phase == phaseEstablished {
					counts[4]++
				}
				var sport uint16
				if k.client.is4() {
					_, sport, _, _ = fields(t, p)
				} else {
					_, sport, _, _ = fields6(t, p)
				}
				if sport != k.clientPort {
					t.Fatalf("%s: external port %d, want the client's %d", what, sport, k.clientPort)
				}
				counts[0]++
			} else if errors.Is(err, ErrClientQuota) {
				counts[1]++
			} else {
				counts[2]++
			}
		case r < 85:
			k := knownKey()
			flags := inFlags[rng.IntN(len(inFlags))]
			if f := m.flows[k]; f != nil && f.phase == phaseSynSent && rng.IntN(2) == 0 {
				flags = "SA"
			}
			c, err := tab.Inbound(packet(k, flags, true))
			wc, werr := m.inbound(k, flagBits(flags))
			if c != wc || !errors.Is(err, werr) || (err == nil) != (werr == nil) {
				t.Fatalf("%s: Inbound %+v %s = %v, %v, model says %v, %v", what, k, flags, c, err, wc, werr)
			}
			if err == nil {
				counts[3]++
				if m.flows[k].phase == phaseEstablished {
					counts[4]++
				}
			}
		case r < 88:
			tab.Expire()
			m.sweep()
		case r < 90:
			n := 1 + rng.IntN(clients)
			c := clientAddr(n)
			if rng.IntN(2) == 0 {
				c = clientAddr6(n)
			}
			tab.ForgetClient(c)
			m.forget(addrOf(c))
		case r < 92:
			n := 1 + rng.IntN(clients)
			v4, v6 := clientAddr(n), clientAddr6(n)
			_, paired := m.pairs[addrOf(v4)]
			if err := tab.Pair(v4, v6); err != nil {
				t.Fatalf("%s: Pair(%v, %v): %v", what, v4, v6, err)
			}
			if !paired {
				m.pair(addrOf(v4), addrOf(v6))
				counts[5]++
			}
		default:
			d := steps[rng.IntN(len(steps))]
			if rng.IntN(2) == 0 {
				d += time.Second // just past a timeout, or just short of one
			}
			clk.Advance(d)
			m.now += d
		}
		st := tab.Stats()
		want := m.stats
		want.Mappings = len(m.flows)
		if st != want {
			t.Fatalf("%s: Stats %+v, model %+v", what, st, want)
		}
		tab.outMu.RLock()
		for k := range tab.out {
			if m.flows[k] == nil {
				t.Fatalf("%s: the table holds %+v, the model does not", what, k)
			}
		}
		for c, f := range tab.clients {
			if f.n != len(m.order[c]) || f.n > quota {
				t.Fatalf("%s: client %v holds %d mappings, the model %d (quota %d)", what, c.netip(), f.n, len(m.order[c]), quota)
			}
		}
		if len(tab.clients) != len(m.order) || len(tab.pairs) != len(m.pairs) {
			t.Fatalf("%s: %d clients and %d paired addresses, the model %d and %d", what, len(tab.clients), len(tab.pairs), len(m.order), len(m.pairs))
		}
		tab.outMu.RUnlock()
	}
	t.Logf("outbound ok %d, refused at quota %d, refused full %d; inbound delivered %d; %d packets of established connections; %d pairings; recycled %d",
		counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], m.stats.Recycled)
	for i, n := range counts {
		if n < 100 {
			t.Errorf("outcome %d happened only %d times: the test does not exercise it", i, n)
		}
	}
	if m.stats.Recycled < 100 {
		t.Errorf("only %d mappings recycled: the test does not exercise recycling", m.stats.Recycled)
	}
}
