package dataplane

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/ippkt"
)

// openData authenticates and decrypts a data packet of peer in place and checks its packet-id.
// The caller holds peer.up.mu, which guards the replay windows.
func (p *Plane) openData(peer *Peer, pkt []byte, h packet.DataHeader, from netip.AddrPort) (pt []byte, ok bool) {
	k := peer.keys[h.KeyID&7].Load()
	if k == nil {
		p.drop(counters.NoKey, from)
		return nil, false
	}
	id, pt, err := k.Keys.Open(pkt, h.Len())
	if err != nil {
		p.drop(counters.Decrypt, from)
		return nil, false
	}
	if !k.replay.Check(id) {
		p.drop(counters.Replay, from)
		return nil, false
	}
	peer.lastRecv.Store(p.clockNano())
	peer.Traffic.Received(len(pkt))
	if send := peer.sendKey.Load(); k != send && k.newerThan(send) {
		// The client sends with a renegotiated key, so it has it: send with it too.
		peer.sendKey.Store(k)
	}
	if id >= RekeyPacketID {
		peer.rekeyDue(k) // the client's ids run out: a new key is due
	}
	return pt, true
}

// deliverData handles a decrypted payload: keepalive and OCC messages stop here; an IP packet is
// unframed, checked against the client's address, answered here when it pings the gateway
// address, checked against the routes, refused when it is for the endpoint host itself
// (host.go), checked against the authorization rules, source-NATed, and returned as a slice of
// pkt that starts tunWriteOffset bytes before the IP header. The caller holds peer.up.mu.
func (p *Plane) deliverData(peer *Peer, pkt, pt []byte) ([]byte, bool) {
	id := peer.ident.Load()
	pt, ok := id.Framing.strip(pt)
	if !ok {
		p.dropUser(counters.Compressed, id)
		peer.notify(EventCompressed)
		return nil, false
	}
	if len(pt) == len(packet.PingMagic) && bytes.Equal(pt, packet.PingMagic) {
		return nil, false
	}
	if len(pt) == len(packet.OCCMagic)+1 && bytes.Equal(pt[:len(packet.OCCMagic)], packet.OCCMagic) {
		if pt[len(packet.OCCMagic)] == packet.OCCExit {
			peer.notify(EventExit)
		}
		return nil, false
	}
	info, r := ippkt.Parse(pt)
	if r != ippkt.OK {
		p.dropUser(counters.IP(r), id)
		return nil, false
	}
	pt = pt[:info.End] // without padding: NAT and the TUN see the packet alone
	own, gw, prefix := id.Addr, p.cfg.Pool.Gateway(), p.cfg.Pool.Prefix()
	if info.Version == 6 {
		own, gw, prefix = id.Addr6, p.cfg.Pool.Gateway6(), p.cfg.Pool.Prefix6()
		if own.IsValid() && (info.Dst.IsLinkLocalUnicast() || info.Dst.IsMulticast()) {
			// Router and neighbour solicitations, MLD reports, mDNS: the tunnel's own link,
			// which has no one else on it. Counted, not forwarded.
			p.dropUser(counters.LocalScope, id)
			return nil, false
		}
	}
	if !own.IsValid() {
		p.dropUser(counters.FamilyOff, id)
		return nil, false
	}
	if info.Src != own {
		p.dropUser(counters.SpoofedSource, id)
		return nil, false
	}
	dst := info.Dst
	pol := p.policy.Load()
	groups := peer.uplinkPolicy(pol, id)
	if dst == gw {
		p.answerGateway(peer, id, pkt, pt, &info, gw)
		return nil, false
	}
	local := prefix.Contains(dst)
	switch {
	case local && !pol.ClientToClient, !local && !pol.routed(dst):
		if p.drops.Add(counters.NoRoute) {
			p.drops.Detail(counters.NoRoute, "user", id.User, "dst", dst)
		}
		return nil, false
	case !pol.AllowHostAccess && pol.host.contains(dst):
		// Before the rules: a rule for a whole network does not open the host's address in it.
		p.dropHost(id, dst)
		return nil, false
	case !pol.Authz.Allowed(dst, groups):
		if p.drops.Add(counters.Unauthorized) {
			p.drops.Detail(counters.Unauthorized, "user", id.User, "dst", dst)
		}
		p.logDenial(peer, id, dst)
		return nil, false
	case !peer.up.bucket.Allow(peer.lastRecv.Load(), len(pt)): // the time openData just took
		p.dropUser(counters.RateLimit, id)
		return nil, false
	}
	p.clampMSS(pt, &info)
	if local {
		p.deliverLocal(peer, pt, dst)
		return nil, false
	}
	if info.Version == 4 || p.cfg.NAT6 {
		if err := p.cfg.NAT.Outbound(pt); err != nil {
			if p.drops.Add(counters.NAT) {
				p.drops.Detail(counters.NAT, "user", id.User, "err", err)
			}
			return nil, false
		}
	}
	// pt lies inside pkt; hand the TUN a slice whose packet starts at tunWriteOffset, without
	// copying. The header, packet-id and tag in front of the payload give at least 21 bytes.
	start := cap(pkt) - cap(pt) - tunWriteOffset
	return pkt[start : start+tunWriteOffset+len(pt)], true
}

// dropUser counts a refusal with the session's user as its detail.
func (p *Plane) dropUser(r counters.Reason, id *Identity) {
	if p.drops.Add(r) {
		p.drops.Detail(r, "user", id.User, "address", id.Addr)
	}
}

// localBufs carries client-to-client packets, which need more headroom than the receive buffer
// leaves in front of the payload to be sealed for the other client.
var localBufs = sync.Pool{New: func() any { b := make([]byte, tunOffset+65536+64); return &b }}

// deliverLocal sends a packet from one client straight to another (a `target: local` route),
// without NAT and without the kernel: the addresses stay the clients' own. Only the sender's
// upload limit applies.
func (p *Plane) deliverLocal(from *Peer, pt []byte, dst netip.Addr) {
	to := p.peerByAddr(dst)
	if to == nil {
		if p.drops.Add(counters.NoClient) {
			p.drops.Detail(counters.NoClient, "address", dst)
		}
		return
	}
	bp := localBufs.Get().(*[]byte)
	defer localBufs.Put(bp)
	buf := *bp
	n := copy(buf[tunOffset:], pt)
	if pkt, ok := p.seal(to, buf, tunOffset, n, from.lastRecv.Load()); ok {
		to.link.Send(pkt)
	}
}

// logDenial logs the first denial of each destination per connection (up to deniedLogMax
// destinations), through a server-wide rate limit. The caller holds peer.up.mu.
func (p *Plane) logDenial(peer *Peer, id *Identity, dst netip.Addr) {
	for _, d := range peer.up.denied {
		if d == dst {
			return
		}
	}
	if len(peer.up.denied) >= deniedLogMax {
		return
	}
	peer.up.denied = append(peer.up.denied, dst)
	if p.denialLog.Allow() {
		p.log.Info("access denied by authorization rules", "user", id.User, "groups", id.Groups,
			"address", id.Addr, "dst", dst)
	}
}

// deniedLogMax bounds the destinations whose first denial is logged for one connection.
const deniedLogMax = 16

// writeTUN writes a batch of client packets into a queue of the TUN (any queue will do: the
// kernel forwards what is written to any of them alike).
func (p *Plane) writeTUN(dev tun.Device, batch [][]byte) {
	if len(batch) == 0 {
		return
	}
	if _, err := dev.Write(batch, tunWriteOffset); err != nil && !errors.Is(err, net.ErrClosed) {
		p.log.Debug("tun write", "err", err)
	}
}
