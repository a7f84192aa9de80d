package dataplane

import (
	"time"
)

// timerTick is how often keepalives, silence checks, key switches and NAT expiry run.
const timerTick = time.Second

const (
	// lameDuckSwitch is how long the server keeps sending with the old key after a
	// renegotiation when the client has not yet used the new one.
	lameDuckSwitch = 5 * time.Second
	// TransitionWindow is how long an old key stays usable for receiving after a newer one took
	// over sending (OpenVPN --tran-window, 60 s): packets in flight still open, then it is
	// retired.
	TransitionWindow = 60 * time.Second
)

// clockNano is the injected clock in unix nanoseconds, for timestamps on the packet path.
func (p *Plane) clockNano() int64 { return p.cfg.Now().UnixNano() }

// RunTimers runs the data-plane timers once per tick until Close.
func (p *Plane) RunTimers(tick func(now time.Time)) {
	p.wg.Add(1)
	defer p.wg.Done()
	t := time.NewTicker(timerTick)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
			now := p.cfg.Now()
			p.Tick(now)
			if tick != nil {
				tick(now)
			}
		}
	}
}

// Tick does one round of data-plane timer work at now: for each published peer, silence,
// keepalive and key upkeep; then NAT expiry.
func (p *Plane) Tick(now time.Time) {
	for i := range p.peers {
		if peer := p.peers[i].Load(); peer != nil {
			p.tickPeer(peer, now)
		}
	}
	p.cfg.NAT.Expire()
}

func (p *Plane) tickPeer(peer *Peer, now time.Time) {
	id := peer.ident.Load()
	if idle := now.Sub(peer.LastReceived()); id.PingRestart > 0 && idle > id.PingRestart {
		peer.notify(EventSilent)
		return
	}
	if id.Ping > 0 && now.Sub(time.Unix(0, peer.lastSend.Load())) >= id.Ping {
		p.Ping(peer)
	}
	peer.upkeepKeys(now)
}

// upkeepKeys moves sending to a renegotiated key that the client has had for a while even if it
// sent nothing with it, and retires keys that a newer one replaced more than the transition
// window ago.
func (peer *Peer) upkeepKeys(now time.Time) {
	send := peer.sendKey.Load()
	for i := range peer.keys {
		k := peer.keys[i].Load()
		if k != nil && k.newerThan(send) && now.Sub(k.Created) > lameDuckSwitch {
			peer.sendKey.Store(k)
			send = k
		}
	}
	if send == nil {
		return
	}
	for i := range peer.keys {
		k := peer.keys[i].Load()
		if k != nil && k != send && send.newerThan(k) && now.Sub(send.Created) > TransitionWindow {
			peer.keys[i].CompareAndSwap(k, nil)
		}
	}
}
