package sock

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvpn/cvpn/tls/packet"
)

// listenShards opens a reuseport group of n shards on ap.
func listenShards(t *testing.T, ap string, n int) []*udpConn {
	t.Helper()
	conns, err := Host.(ShardedNetwork).ListenUDPShards(netip.MustParseAddrPort(ap), n)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]*udpConn, len(conns))
	for i, c := range conns {
		t.Cleanup(func() { c.Close() })
		out[i] = c.(*udpConn)
	}
	return out
}

// shardDatagram is a datagram and the shard that read it.
type shardDatagram struct {
	shard int
	data  []byte
	from  netip.AddrPort
}

// readShards reads from every shard at once until want datagrams arrived in all (splitting GRO
// reads), and fails after 5 s.
func readShards(t *testing.T, shards []*udpConn, want int) []shardDatagram {
	t.Helper()
	var (
		mu   sync.Mutex
		got  []shardDatagram
		wg   sync.WaitGroup
		stop = make(chan struct{})
	)
	for i, c := range shards {
		c.readWake = 10 * time.Millisecond
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]Message, 8)
			for j := range msgs {
				msgs[j].Buf = make([]byte, 65536)
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				n, err := c.ReadBatch(msgs)
				if err != nil {
					return
				}
				mu.Lock()
				for _, m := range msgs[:n] {
					for _, d := range split(m) {
						got = append(got, shardDatagram{i, append([]byte(nil), d...), m.Addr})
					}
				}
				mu.Unlock()
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d datagrams arrived", n, want)
		}
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]shardDatagram(nil), got...)
}

// dataV2 is a P_DATA_V2 datagram for peer-id id (key id 3) with a tag that tells it apart.
func dataV2(id uint32, tag byte) []byte {
	return []byte{packet.Header(packet.DataV2, 3), byte(id >> 16), byte(id >> 8), byte(id), tag, 0, 0, 0, 0, 0, 0, 0}
}

// TestShardsSteerByPeerID: on a real reuseport group with the steering program, P_DATA_V2
// datagrams reach shard peer-id mod n whatever port they come from, and a client's control
// packets (and its datagrams too short to carry a peer-id) all reach one shard, the kernel's hash
// of its addresses. The same program steers an IPv6 group: the kernel hands it the UDP payload
// in both families (net/core/sock_reuseport.c, run_bpf_filter, pulls the UDP header alone).
func TestShardsSteerByPeerID(t *testing.T) { forFamilies(t, testShardsSteerByPeerID) }

func testShardsSteerByPeerID(t *testing.T, f family) {
	const n = 4
	shards := listenShards(t, f.lo0(), n)
	ap := shards[0].LocalAddr()
	for i, c := range shards {
		if c.LocalAddr() != ap {
			t.Fatalf("shard %d bound to %v, shard 0 to %v", i, c.LocalAddr(), ap)
		}
		if !c.Steered() {
			t.Fatalf("shard %d: the kernel did not take the steering program", i)
		}
	}
	to := net.UDPAddrFromAddrPort(ap)
	var senders []*net.UDPConn
	for range 5 {
		s, err := net.ListenUDP(f.udp, net.UDPAddrFromAddrPort(netip.AddrPortFrom(f.lo, 0)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		senders = append(senders, s)
	}
	want := 0
	for si, s := range senders {
		for id := range uint32(3 * n) {
			if _, err := s.WriteToUDP(dataV2(id|uint32(si)<<12, byte(si)), to); err != nil {
				t.Fatal(err)
			}
			want++
		}
	}
	control := senders[0]
	for i := range 20 {
		pkt := []byte{packet.Header(packet.HardResetClientV2, 0), byte(i), 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0}
		if _, err := control.WriteToUDP(pkt, to); err != nil {
			t.Fatal(err)
		}
		want++
	}
	// Too short for a peer-id: the program must not read past the end (which would answer 0).
	if _, err := control.WriteToUDP([]byte{packet.Header(packet.DataV2, 0), 1}, to); err != nil {
		t.Fatal(err)
	}
	want++

	controlShard := -1
	for _, d := range readShards(t, shards, want) {
		if op, _ := packet.SplitHeader(d.data[0]); op == packet.DataV2 && len(d.data) >= 4 {
			id := int(d.data[1])<<16 | int(d.data[2])<<8 | int(d.data[3])
			if d.shard != id%n || Steer(d.data, n) != d.shard {
				t.Errorf("peer-id %d from %v reached shard %d, want %d", id, d.from, d.shard, id%n)
			}
			continue
		}
		if d.from != control.LocalAddr().(*net.UDPAddr).AddrPort() {
			t.Fatalf("unexpected datagram % x from %v", d.data, d.from)
		}
		if controlShard == -1 {
			controlShard = d.shard
		}
		if d.shard != controlShard {
			t.Errorf("a control datagram % x reached shard %d, the client's earlier ones shard %d", d.data[:2], d.shard, controlShard)
		}
	}
}

// TestShardsBusyPort: a group claims its address as a single socket does: it cannot join a port
// another listener (a group or not) of its family holds, nor can a listener join it.
func TestShardsBusyPort(t *testing.T) { forFamilies(t, testShardsBusyPort) }

func testShardsBusyPort(t *testing.T, f family) {
	single := listen(t, f.lo0())
	if _, err := Host.(ShardedNetwork).ListenUDPShards(single.LocalAddr(), 2); !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("a group on a listener's port: %v, want EADDRINUSE", err)
	}
	shards := listenShards(t, f.lo0(), 2)
	ap := shards[0].LocalAddr()
	if c, err := Host.ListenUDP(ap); !errors.Is(err, unix.EADDRINUSE) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("a listener on a group's port: %v, want EADDRINUSE", err)
	}
	if cs, err := Host.(ShardedNetwork).ListenUDPShards(ap, 2); !errors.Is(err, unix.EADDRINUSE) {
		for _, c := range cs {
			c.Close()
		}
		t.Fatalf("a second group on a group's port: %v, want EADDRINUSE", err)
	}
}

// TestShardsOptions: every shard of a group on the unspecified address reports each datagram's
// destination (IP_PKTINFO, IPV6_RECVPKTINFO) and replies from it; an IPv6 group is IPv6-only;
// one shard is a plain socket.
func TestShardsOptions(t *testing.T) { forFamilies(t, testShardsOptions) }

func testShardsOptions(t *testing.T, f family) {
	shards := listenShards(t, f.any0(), 3)
	for i, c := range shards {
		if !c.pktinfo {
			t.Fatalf("shard %d without packet info", i)
		}
		if f == ipv6 {
			if v, err := unix.GetsockoptInt(c.fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO); err != nil || v != 1 {
				t.Fatalf("shard %d: IPV6_RECVPKTINFO %d, %v", i, v, err)
			}
			if v, err := unix.GetsockoptInt(c.fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err != nil || v != 1 {
				t.Fatalf("shard %d: IPV6_V6ONLY %d, %v", i, v, err)
			}
		}
		if _, err := unix.GetsockoptInt(c.fd, unix.IPPROTO_UDP, unix.UDP_GRO); err != nil {
			t.Fatalf("shard %d: %v", i, err)
		}
		if v, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_REUSEPORT); err != nil || v != 1 {
			t.Fatalf("shard %d: SO_REUSEPORT %d, %v", i, v, err)
		}
	}
	one := listenShards(t, f.lo0(), 1)
	if len(one) != 1 || one[0].Steered() {
		t.Fatalf("a group of one: %d sockets, steered %v", len(one), one[0].Steered())
	}
	if v, _ := unix.GetsockoptInt(one[0].fd, unix.SOL_SOCKET, unix.SO_REUSEPORT); v != 0 {
		t.Fatal("a group of one is a reuseport socket")
	}
	for _, n := range []int{0, -1, MaxShards + 1} {
		if _, err := Host.(ShardedNetwork).ListenUDPShards(netip.AddrPortFrom(f.lo, 0), n); err == nil {
			t.Fatalf("%d shards accepted", n)
		}
	}
}
