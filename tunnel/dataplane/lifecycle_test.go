package dataplane

import (
	"crypto/rand"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
)

// addPeer publishes a second authenticated peer on the fixture's listener at remote and returns
// it with the client's side of its keys.
func (f *pathFixture) addPeer(t testing.TB, remote netip.AddrPort) (*Peer, *datacrypto.Keys) {
	t.Helper()
	var k2 datacrypto.Key2
	_, _ = rand.Read(k2[:])
	server, _ := datacrypto.NewKeys(datacrypto.AES256GCM, &k2, datacrypto.Server)
	client, _ := datacrypto.NewKeys(datacrypto.AES256GCM, &k2, datacrypto.Client)
	addr, err := f.p.cfg.Pool.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := f.p.cfg.Pool.Index(addr)
	peer := NewPeer(&eventRecorder{}, f.l.NewLink(remote, netip.Addr{}), time.Now())
	peer.SetIdentity(&Identity{Addr: addr, PeerID: uint32(idx), User: "bob", Groups: []string{"dev"}, DataV2: true, Cipher: datacrypto.AES256GCM})
	peer.InstallKey(&DataKey{Keys: server}, true)
	if old := f.p.Publish(peer); old != nil {
		t.Fatalf("publishing at %v replaced another peer", remote)
	}
	return peer, client
}

// sealFor builds a P_DATA_V2 packet from peer's client to the VPC host.
func sealFor(peer *Peer, keys *datacrypto.Keys, buf []byte, pid uint32, dst netip.Addr) []byte {
	const hdr = 4
	id := peer.Identity()
	udpPacket(buf, hdr+datacrypto.Overhead, id.Addr, dst, 100)
	pkt := buf[:hdr+datacrypto.Overhead+128]
	packet.PutDataHeader(pkt, packet.DataV2, 0, id.PeerID)
	return keys.Seal(pkt, hdr, pid)
}

// TestFloatNeverLandsOnAnotherSession: a client whose authenticated data packets arrive from
// another client's address does not take that address (the other client keeps its session and
// its traffic); a move to a free address is a float.
func TestFloatNeverLandsOnAnotherSession(t *testing.T) {
	f := newPathFixture(t, 0)
	alice := f.peer
	aliceAt := alice.link.Remote()
	bobAt := netip.MustParseAddrPort("127.0.0.1:10")
	bob, bobKeys := f.addPeer(t, bobAt)
	buf := make([]byte, 2048)
	deliver := func(pkt []byte, from netip.AddrPort) int {
		f.s.tunBatch = f.s.tunBatch[:0]
		f.s.receiveData(pkt, from, netip.Addr{})
		return len(f.s.tunBatch)
	}
	if n := deliver(sealFor(bob, bobKeys, buf, 1, f.vpc), aliceAt); n != 0 {
		t.Fatal("a packet that would float onto another session's address was delivered")
	}
	if got := f.p.drops.Count(counters.FloatConflict); got != 1 {
		t.Fatalf("float_conflict = %d, want 1", got)
	}
	if f.l.Lookup(aliceAt) != alice || alice.link.Remote() != aliceAt {
		t.Fatal("the address owner lost its session")
	}
	if f.l.Lookup(bobAt) != bob || bob.link.Remote() != bobAt {
		t.Fatal("the floating session moved although the float was refused")
	}
	// The owner's own traffic still flows.
	if n := deliver(f.sealFromClient(buf, 1, f.vpc), aliceAt); n != 1 {
		t.Fatalf("the owner's packet was dropped: %v", f.p.drops.Snapshot())
	}
	// A free address: bob floats there (NAT rebinding).
	to := netip.MustParseAddrPort("127.0.0.1:11")
	if n := deliver(sealFor(bob, bobKeys, buf, 2, f.vpc), to); n != 1 {
		t.Fatalf("float to a free address refused: %v", f.p.drops.Snapshot())
	}
	if f.l.Lookup(to) != bob || f.l.Lookup(bobAt) != nil || bob.link.Remote() != to {
		t.Fatal("the session did not float to the free address")
	}
}

// TestSealNeverReusesAPacketID: the send packet-id asks for a renegotiation from RekeyPacketID
// on, and stops at the last id instead of wrapping, even with several goroutines sealing.
func TestSealNeverReusesAPacketID(t *testing.T) {
	f := newPathFixture(t, 0)
	k := f.peer.sendKey.Load()
	k.sendPID.Store(RekeyPacketID - 2)
	buf := make([]byte, tunOffset+200)
	if _, ok := f.p.seal(f.peer, buf, tunOffset, 28, 1); !ok {
		t.Fatal("seal below the rekey threshold failed")
	}
	if f.owner.got.Load()&uint32(EventRekey) != 0 {
		t.Fatal("renegotiation asked for below the threshold")
	}
	if _, ok := f.p.seal(f.peer, buf, tunOffset, 28, 1); !ok {
		t.Fatal("seal at the rekey threshold failed")
	}
	if f.owner.got.Load()&uint32(EventRekey) == 0 {
		t.Fatal("no renegotiation asked for at the rekey threshold")
	}

	k.sendPID.Store(lastPacketID - 1000)
	var mu sync.Mutex
	seen := make(map[uint32]bool)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 400 {
				id, ok := k.nextPacketID()
				if !ok {
					continue
				}
				mu.Lock()
				if seen[id] || id < lastPacketID-1000 {
					t.Errorf("packet id %#x handed out twice or after a wrap", id)
				}
				seen[id] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != 1000 {
		t.Fatalf("%d ids handed out, want exactly the 1000 left", len(seen))
	}
	if _, ok := f.p.seal(f.peer, buf, tunOffset, 28, 1); ok {
		t.Fatal("sealed past the last packet id")
	}
	if f.p.drops.Count(counters.PacketIDExhausted) == 0 {
		t.Fatal("exhausted packet ids not counted")
	}
}

// TestKeysRetireAfterTransitionWindow: a renegotiated key takes over sending after the
// lame-duck delay, and the old key stops opening packets once the transition window passed.
func TestKeysRetireAfterTransitionWindow(t *testing.T) {
	f := newPathFixture(t, 0)
	old := f.peer.sendKey.Load()
	t0 := time.Unix(5000, 0)
	old.Created = t0
	var k2 datacrypto.Key2
	server, _ := datacrypto.NewKeys(datacrypto.AES256GCM, &k2, datacrypto.Server)
	next := &DataKey{ID: 1, Keys: server, Created: t0.Add(time.Hour)}
	f.peer.InstallKey(next, false)
	if f.peer.sendKey.Load() != old {
		t.Fatal("a renegotiated key took over sending at once")
	}
	f.peer.upkeepKeys(next.Created.Add(lameDuckSwitch + time.Second))
	if f.peer.sendKey.Load() != next {
		t.Fatal("the renegotiated key did not take over sending after the lame-duck delay")
	}
	f.peer.upkeepKeys(next.Created.Add(TransitionWindow - time.Second))
	if f.peer.keys[0].Load() != old {
		t.Fatal("the old key was retired inside the transition window")
	}
	f.peer.upkeepKeys(next.Created.Add(TransitionWindow + time.Second))
	if f.peer.keys[0].Load() != nil || f.peer.keys[1].Load() != next {
		t.Fatalf("after the transition window keys %v are installed, want only key 1", f.peer.Keys())
	}
}

// TestPingDoesNotAllocate: a keepalive (sealed and sent as one datagram) allocates nothing, so
// 100,000 idle sessions cost no garbage.
func TestPingDoesNotAllocate(t *testing.T) {
	f := newPathFixture(t, 0)
	f.p.Ping(f.peer) // warm the pools
	if allocs := testing.AllocsPerRun(200, func() { f.p.Ping(f.peer) }); allocs != 0 {
		t.Fatalf("a ping allocates %v times", allocs)
	}
}
