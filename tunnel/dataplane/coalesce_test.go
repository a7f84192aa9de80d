package dataplane

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/sock"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
)

// pausingNetwork is an in-memory network whose sockets moderate (sock.Moderator) and count
// their pauses.
type pausingNetwork struct {
	*socktest.Network
	pauses *atomic.Int64
}

type pausingConn struct {
	sock.Conn
	pauses *atomic.Int64
}

func (c pausingConn) Pause(time.Duration) { c.pauses.Add(1) }

func (n pausingNetwork) ListenUDP(ap netip.AddrPort) (sock.Conn, error) {
	c, err := n.Network.ListenUDP(ap)
	if err != nil {
		return nil, err
	}
	return pausingConn{c, n.pauses}, nil
}

// TestModerationPausesAfterBusyReads: a read of coalesceMinBatch datagrams or more pauses a
// moderating socket's loop once; smaller reads never do; a socket that does not moderate (the
// in-memory one) is never asked to.
func TestModerationPausesAfterBusyReads(t *testing.T) {
	p, _, _ := newBeatPlane(t, newPipeTUN(t), nopControl{})
	network := pausingNetwork{socktest.NewNetwork(), new(atomic.Int64)}
	network.SetReadWake(5 * time.Millisecond)
	to := netip.MustParseAddrPort("10.0.0.1:443")
	l, err := p.ListenUDP(network, to)
	if err != nil {
		t.Fatal(err)
	}
	if l.shards[0].mod == nil {
		t.Fatal("a moderating socket's shard does not moderate")
	}
	from := netip.MustParseAddrPort("192.0.2.7:5000")
	malformed := []byte{0xff, 0, 0, 0} // no such opcode: counted and dropped
	send := func(n int) {
		ds := make([]socktest.Datagram, n)
		for i := range ds {
			ds[i] = socktest.Datagram{From: from, To: to, Data: malformed}
		}
		network.InjectBatch(ds)
	}
	waitDrops := func(n uint64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for p.drops.Count(counters.Malformed) < n {
			if time.Now().After(deadline) {
				t.Fatalf("only %v of %d datagrams handled", p.Drops().Snapshot(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for i := range 5 {
		send(1)
		waitDrops(uint64(i + 1))
	}
	if n := network.pauses.Load(); n != 0 {
		t.Fatalf("%d pauses after reads of one datagram, want none", n)
	}
	send(coalesceMinBatch)
	waitDrops(5 + coalesceMinBatch)
	time.Sleep(20 * time.Millisecond) // the loop pauses after handling the read
	if n := network.pauses.Load(); n != 1 {
		t.Fatalf("%d pauses after one read of %d datagrams, want 1", n, coalesceMinBatch)
	}
	mem, err := p.ListenUDP(socktest.NewNetwork(), to)
	if err != nil {
		t.Fatal(err)
	}
	if mem.shards[0].mod != nil {
		t.Fatal("an in-memory socket's shard moderates")
	}
}
