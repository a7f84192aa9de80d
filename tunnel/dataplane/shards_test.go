package dataplane

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/sock"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
)

// sealV1FromClient builds a P_DATA_V1 packet the client would send, in buf.
func (f *pathFixture) sealV1FromClient(buf []byte, pid uint32, dst netip.Addr) []byte {
	const hdr = datacrypto.HeaderV1
	udpPacket(buf, hdr+datacrypto.Overhead, f.peer.Identity().Addr, dst, 1372)
	pkt := buf[:hdr+datacrypto.Overhead+1400]
	pkt[0] = packet.Header(packet.DataV1, 0)
	return f.client.Seal(pkt, hdr, pid)
}

// TestShardsShareAPeer: one peer's packets reach two shards of its listener at once, as they do
// when the kernel cannot steer, when the client floats between two addresses whose hashes pick
// different shards, or when it sends P_DATA_V1. Each shard gets every packet (a duplicate of
// each); the replay window, under the peer's lock, lets exactly one copy of each through. Run
// under -race, it also shows the peer's state is not touched without its lock.
func TestShardsShareAPeer(t *testing.T) {
	const packets = 1500
	for _, tc := range []struct {
		name  string
		v1    bool
		float bool // the second shard's copies come from another address (P_DATA_V2 only)
	}{
		{name: "P_DATA_V2 from one address"},
		{name: "P_DATA_V2 floating between two addresses", float: true},
		{name: "P_DATA_V1", v1: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newPathFixture(t, 0)
			if len(f.l.shards) < 2 {
				t.Fatalf("listener of %d shards, want 2", len(f.l.shards))
			}
			if tc.v1 {
				id := *f.peer.Identity()
				id.DataV2 = false
				f.peer.SetIdentity(&id)
			}
			// The client's packets, sealed once, each handed to both shards.
			sealed := make([][]byte, packets)
			for i := range sealed {
				buf := make([]byte, 2048)
				if tc.v1 {
					sealed[i] = f.sealV1FromClient(buf, uint32(i+1), f.vpc)
				} else {
					sealed[i] = f.sealFromClient(buf, uint32(i+1), f.vpc)
				}
			}
			home := f.peer.link.Remote()
			away := netip.MustParseAddrPort("127.0.0.1:10")
			delivered := make([]int, 2)
			var wg sync.WaitGroup
			for i := range 2 {
				s := f.l.shards[i]
				from := home
				if tc.float && i == 1 {
					from = away
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 2048)
					for _, pkt := range sealed {
						in := buf[:len(pkt)]
						copy(in, pkt) // opened in place: each shard its own copy
						s.tunBatch = s.tunBatch[:0]
						s.receiveData(in, from, netip.Addr{})
						delivered[i] += len(s.tunBatch)
					}
				}()
			}
			wg.Wait()
			drops := f.p.drops.Snapshot()
			if got := delivered[0] + delivered[1]; got != packets || drops["replay"] != packets {
				t.Fatalf("%d packets delivered (%v by shard), %d replays dropped; want %d and %d; drops %v",
					got, delivered, drops["replay"], packets, packets, drops)
			}
			if tc.float {
				if r := f.peer.link.Remote(); r != home && r != away {
					t.Fatalf("the session ended at %v, neither of its addresses", r)
				}
				if f.l.Lookup(f.peer.link.Remote()) != f.peer || len(f.l.Peers()) != 1 {
					t.Fatalf("the listener's table does not hold the session at %v alone", f.peer.link.Remote())
				}
			}
		})
	}
}

// TestSendPathNoAllocs: the TUN reader's per-packet work for a peer (the download bucket under
// its lock, the seal) allocates nothing.
func TestSendPathNoAllocs(t *testing.T) {
	f := newPathFixture(t, 100)
	buf := make([]byte, tunOffset+1500+64)
	pol := f.p.Policy()
	now := int64(0)
	allocs := testing.AllocsPerRun(1000, func() {
		now += 1e6
		udpPacket(buf, tunOffset, f.vpc, f.peer.Identity().Addr, 100)
		if !f.peer.allowDown(pol, f.peer.ident.Load(), now, 128) {
			t.Fatal("a 128-byte packet a millisecond is over 100 Mbit/s")
		}
		if _, ok := f.p.seal(f.peer, buf, tunOffset, 128, now); !ok {
			t.Fatal("seal refused")
		}
	})
	if allocs != 0 {
		t.Fatalf("send path allocates %v times per packet", allocs)
	}
}

// unsteeredNetwork is a sharded network whose sockets say the kernel refused the steering
// program, as Host's do on an old kernel.
type unsteeredNetwork struct{ *socktest.Network }

type unsteeredConn struct{ sock.Conn }

func (unsteeredConn) Steered() bool { return false }

func (n unsteeredNetwork) ListenUDPShards(ap netip.AddrPort, k int) ([]sock.Conn, error) {
	conns, err := n.Network.ListenUDPShards(ap, k)
	for i := range conns {
		conns[i] = unsteeredConn{conns[i]}
	}
	return conns, err
}

// TestShardsAndQueuesHeartbeats: a plane of three workers on two TUN queues reads each queue
// and each of a listener's three shards, each with its heartbeat; closing the listener closes
// its whole group; a kernel that does not steer is said once, however many listeners open.
func TestShardsAndQueuesHeartbeats(t *testing.T) {
	q0, q1 := newPipeTUN(t), newPipeTUN(t)
	var logs bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil))
	p, err := New(beatConfig(t, Config{Queues: []tun.Device{q0, q1}, Control: nopControl{}, Workers: 3, Log: log}))
	if err != nil {
		t.Fatal(err)
	}
	p.tunWake = 5 * time.Millisecond
	for _, q := range []*pipeTUN{q0, q1} {
		_ = q.r.SetReadDeadline(time.Now())
	}
	network := unsteeredNetwork{socktest.NewNetwork()}
	network.SetReadWake(5 * time.Millisecond)
	l, err := p.ListenUDP(network, netip.MustParseAddrPort("10.0.0.1:1194"))
	if err != nil {
		t.Fatal(err)
	}
	l2, err := p.ListenUDP(network, netip.MustParseAddrPort("10.0.0.1:443"))
	if err != nil {
		t.Fatal(err)
	}
	go p.Run()
	t.Cleanup(func() { p.Close(); q0.Close(); q1.Close(); p.Wait() })
	if len(l.shards) != 3 || l.shards[2].tun != q0 || l.shards[1].tun != q1 {
		t.Fatalf("%d shards; shard 1 writes into queue 1: %v, shard 2 into queue 0: %v", len(l.shards), l.shards[1].tun == q1, l.shards[2].tun == q0)
	}
	waitBeats(t, p, nil, 3, "tun#0", "tun#1", "udp 10.0.0.1:1194#0", "udp 10.0.0.1:1194#1", "udp 10.0.0.1:1194#2", "udp 10.0.0.1:443#2")
	p.CloseListener(l2)
	for loop := range beatsOf(p) {
		if strings.HasPrefix(loop, "udp 10.0.0.1:443") {
			t.Fatalf("a closed listener's shard is still reported: %v", beatsOf(p))
		}
	}
	logMu.Lock()
	defer logMu.Unlock()
	if n := strings.Count(logs.String(), "did not take the reuseport steering program"); n != 1 {
		t.Fatalf("the steering warning logged %d times, want once:\n%s", n, logs.String())
	}
}

// lockedWriter serializes writes to a buffer that a test reads.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// BenchmarkReceivePathShards: the receive path of k peers at once, each on a shard of its own
// (as steering places them), against one shard that handles them all in turn. The ratio of
// packets a second says how far the shards scale on this machine; each peer's lock is
// uncontended.
func BenchmarkReceivePathShards(b *testing.B) {
	for _, k := range []int{1, 2} {
		b.Run(fmt.Sprintf("shards=%d", k), func(b *testing.B) {
			f := newPathFixture(b, 0)
			type sender struct {
				s      *udpShard
				peer   *Peer
				client *datacrypto.Keys
				from   netip.AddrPort
			}
			senders := []sender{{f.l.shards[0], f.peer, f.client, f.peer.link.Remote()}}
			for i := 1; i < k; i++ {
				peer, client := f.addPeer(b, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(20+i)))
				senders = append(senders, sender{f.l.shards[i%len(f.l.shards)], peer, client, peer.link.Remote()})
			}
			b.SetBytes(128)
			b.ResetTimer()
			var wg sync.WaitGroup
			for _, sd := range senders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 2048)
					for pid := uint32(1); pid <= uint32(b.N/len(senders)); pid++ {
						pkt := sealFor(sd.peer, sd.client, buf, pid, f.vpc) // 128-byte payloads
						sd.s.tunBatch = sd.s.tunBatch[:0]
						sd.s.receiveData(pkt, sd.from, netip.Addr{})
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "packets/s")
		})
	}
}
