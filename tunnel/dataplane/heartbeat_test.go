package dataplane

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
)

// pipeTUN is a TUN device read from a pipe: a file the runtime's poller waits on, so that read
// deadlines work on it as on the real device.
type pipeTUN struct {
	r, w *os.File
}

func newPipeTUN(t *testing.T) *pipeTUN {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return &pipeTUN{r: r, w: w}
}

func (d *pipeTUN) File() *os.File { return d.r }
func (d *pipeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.r.Read(bufs[0][offset:])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}
func (d *pipeTUN) Write(bufs [][]byte, _ int) (int, error) { return len(bufs), nil }
func (d *pipeTUN) MTU() (int, error)                       { return 1500, nil }
func (d *pipeTUN) Name() (string, error)                   { return "pipe0", nil }
func (d *pipeTUN) Events() <-chan tun.Event                { return nil }
func (d *pipeTUN) Close() error                            { return d.r.Close() }
func (d *pipeTUN) BatchSize() int                          { return 1 }

// stuckControl blocks in UDPControl until released, as a handler caught in a deadlock would.
type stuckControl struct {
	nopControl
	entered, release chan struct{}
}

func (c *stuckControl) UDPControl(*UDPListener, []byte, netip.AddrPort, netip.Addr) {
	c.entered <- struct{}{}
	<-c.release
}

// beatConfig fills cfg in with a /24 pool, a NAT table and a policy that allows nothing.
func beatConfig(t *testing.T, cfg Config) Config {
	t.Helper()
	pool, err := ippool.New(netip.MustParsePrefix("10.2.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	natTable, err := nat.New(nat.Config{Addr: netip.MustParseAddr("10.0.1.2")})
	if err != nil {
		t.Fatal(err)
	}
	az, err := authz.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := NewPolicy(Policy{Authz: az})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Pool, cfg.NAT, cfg.Policy = pool, natTable, pol
	return cfg
}

// newBeatPlane returns a running plane on dev with a UDP listener of one shard on an in-memory
// network whose idle reads, like the TUN reader's, wake every 5 ms.
func newBeatPlane(t *testing.T, dev tun.Device, ctl Control) (*Plane, *UDPListener, *socktest.Network) {
	t.Helper()
	p, err := New(beatConfig(t, Config{Device: dev, Control: ctl, Workers: 1}))
	if err != nil {
		t.Fatal(err)
	}
	p.tunWake = 5 * time.Millisecond
	if f := dev.File(); f != nil {
		_ = f.SetReadDeadline(time.Now()) // New set the first deadline a second away: wake now
	}
	network := socktest.NewNetwork()
	network.SetReadWake(5 * time.Millisecond)
	l, err := p.ListenUDP(network, netip.MustParseAddrPort("10.0.0.1:1194"))
	if err != nil {
		t.Fatal(err)
	}
	go p.Run()
	t.Cleanup(func() { p.Close(); dev.Close(); p.Wait() })
	return p, l, network
}

// beatsOf returns the heartbeats by loop name.
func beatsOf(p *Plane) map[string]uint64 {
	m := map[string]uint64{}
	for _, h := range p.Heartbeats() {
		m[h.Loop] = h.Count
	}
	return m
}

// waitBeats waits (at most 10 s) until every named loop went round at least n more times than
// in from.
func waitBeats(t *testing.T, p *Plane, from map[string]uint64, n uint64, loops ...string) map[string]uint64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		now := beatsOf(p)
		done := true
		for _, loop := range loops {
			c, ok := now[loop]
			if !ok {
				t.Fatalf("no heartbeat of %q in %v", loop, now)
			}
			if c < from[loop]+n {
				done = false
			}
		}
		if done {
			return now
		}
		if time.Now().After(deadline) {
			t.Fatalf("heartbeats %v did not advance by %d from %v", now, n, from)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestHeartbeatsWhileIdle: with no packet at all, the UDP receive loop and the TUN reader still
// go round (empty reads, read deadlines), so their heartbeats advance.
func TestHeartbeatsWhileIdle(t *testing.T) {
	p, l, _ := newBeatPlane(t, newPipeTUN(t), nopControl{})
	udp := "udp " + l.Addr().String() + "#0"
	if udp != "udp 10.0.0.1:1194#0" {
		t.Fatalf("listener loop named %q", udp)
	}
	waitBeats(t, p, nil, 5, "tun#0", udp)
}

// TestHeartbeatStopsWhenLoopIsStuck: a receive loop stuck in a handler stops its heartbeat while
// the TUN reader's goes on; once the handler returns, the loop's heartbeat moves again.
func TestHeartbeatStopsWhenLoopIsStuck(t *testing.T) {
	ctl := &stuckControl{entered: make(chan struct{}), release: make(chan struct{})}
	p, l, network := newBeatPlane(t, newPipeTUN(t), ctl)
	udp := "udp " + l.Addr().String() + "#0"
	start := waitBeats(t, p, nil, 1, "tun#0", udp)

	reset := []byte{packet.Header(packet.HardResetClientV2, 0), 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0}
	network.Inject(netip.MustParseAddrPort("192.0.2.1:5000"), l.Addr(), reset)
	select {
	case <-ctl.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the control packet never reached the handler")
	}
	stuck := beatsOf(p)[udp]
	// Twenty of the TUN reader's wakes pass: an alive UDP loop would have gone round as often.
	after := waitBeats(t, p, start, 20, "tun#0")
	if got := after[udp]; got != stuck {
		t.Fatalf("the stuck loop's heartbeat moved from %d to %d", stuck, got)
	}
	close(ctl.release)
	waitBeats(t, p, after, 3, udp)
}

// TestHeartbeatsLeaveOutAnUnwatchableTUN: a TUN device without a file takes no read deadline, so
// its reader may wait for ever and is not reported; the UDP listener still is, and a closed
// listener no longer is.
func TestHeartbeatsLeaveOutAnUnwatchableTUN(t *testing.T) {
	p, l, _ := newBeatPlane(t, tuntest.NewChannelTUN().TUN(), nopControl{})
	udp := "udp " + l.Addr().String() + "#0"
	got := waitBeats(t, p, nil, 2, udp)
	if _, ok := got["tun#0"]; ok || len(got) != 1 {
		t.Fatalf("heartbeats %v, want the UDP listener's only", got)
	}
	p.CloseListener(l)
	for loop := range beatsOf(p) {
		if strings.HasPrefix(loop, "udp ") {
			t.Fatalf("a closed listener's heartbeat is still reported: %v", beatsOf(p))
		}
	}
}
