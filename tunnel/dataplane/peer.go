package dataplane

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/cpu"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/tunnel/bucket"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/ippkt"
	"github.com/cvpn/cvpn/tunnel/replay"
)

// Identity is what the data path needs to know about an authenticated session. The session
// layer builds it once, before the peer is published, and never changes it: any goroutine may
// read it without a lock.
type Identity struct {
	// Addr is the client's IPv4 tunnel address and Addr6 its IPv6 one (either invalid when the
	// tunnel does not carry that family); PeerID its P_DATA_V2 peer-id (the pool index of both).
	Addr   netip.Addr
	Addr6  netip.Addr
	PeerID uint32
	// User names the session in logs; Groups are the user's groups for authorization and limits.
	User   string
	Groups []string
	Cipher datacrypto.Cipher
	// DataV2 says the client announced P_DATA_V2, so packets to it carry the peer-id.
	DataV2  bool
	Framing Framing
	// Ping and PingRestart are the keepalive values pushed to this client.
	Ping, PingRestart time.Duration
}

// Event is something the data path noticed that the session layer must act on. The data path
// never acts on it itself (no TLS writes, no teardown): it tells the peer's Owner.
type Event uint8

// Events.
const (
	EventExit       Event = 1 << iota // the client sent an explicit-exit notification
	EventCompressed                   // the client compresses although a stub was pushed
	EventSilent                       // nothing arrived from the client for its ping-restart time
	EventRekey                        // a data key's packet ids near their end: renegotiate now
)

// Owner is the session a peer belongs to. PeerEvent must not block: it records the event and
// wakes the session layer.
type Owner interface {
	PeerEvent(e Event)
}

// Peer is the data-plane state of one session.
//
// Ownership: owner and link are set by NewPeer and never change. ident is stored before
// Publish makes the peer reachable, and replaced whole when the user's groups change. keys and
// sendKey are atomics written by the session layer (new keys) and the timer (lame-duck switch,
// retirement). What the receive side changes per packet (each key's replay window, the cached
// groups, the upload bucket, the denied destinations) is guarded by up.mu, and what the send
// side changes (the download bucket and its cache) by down.mu: several goroutines may handle
// one peer's packets (the shards of its UDP listener when a client floats or sends P_DATA_V1,
// or when the kernel cannot steer; the TUN queues always), and each takes the lock once per
// packet. When steering works, one shard and, per flow, one TUN queue see a peer, so the locks
// are uncontended: an atomic swap in, an atomic swap out.
type Peer struct {
	owner Owner
	link  Link
	ident atomic.Pointer[Identity]

	keys     [8]atomic.Pointer[DataKey]
	sendKey  atomic.Pointer[DataKey]
	notified atomic.Uint32 // events already reported (each is reported once)

	// What the receive side writes per packet, then what the send side writes, each on cache
	// lines of its own: a peer's upload handled on one core and its download on another do not
	// bounce a line between them, nor the read-mostly fields above.
	_        cpu.CacheLinePad
	lastRecv atomic.Int64 // unix nanoseconds of the last authenticated packet
	up       uplink
	_        cpu.CacheLinePad
	lastSend atomic.Int64 // unix nanoseconds of the last data packet sent
	down     downlink
	_        cpu.CacheLinePad
	Traffic  counters.Traffic // its receive and send counts on lines of their own
}

// uplink is what the receive side caches and changes per packet, recomputed from the policy and
// the identity when either is replaced (a reload, new groups at renegotiation).
type uplink struct {
	// mu guards the fields below and the replay windows of the peer's keys. Lock order:
	// before UDPListener.mu (a float) and the locks of what a packet passes through (NAT,
	// rate-limited logs); no other peer's lock is taken under it.
	mu     sync.Mutex
	pol    *Policy
	id     *Identity
	groups authz.Groups
	bucket bucket.Bucket
	denied []netip.Addr
}

// downlink is what the send side caches and changes per packet.
type downlink struct {
	mu     sync.Mutex // guards the fields below; nothing else is taken under it
	pol    *Policy
	id     *Identity
	groups authz.Groups
	bucket bucket.Bucket
}

// NewPeer returns the data-plane state of a session that talks over link.
func NewPeer(owner Owner, link Link, now time.Time) *Peer {
	p := &Peer{owner: owner, link: link}
	p.lastRecv.Store(now.UnixNano())
	return p
}

// Owner is the session the peer belongs to.
func (p *Peer) Owner() Owner { return p.owner }

// Link is the peer's link.
func (p *Peer) Link() Link { return p.link }

// SetIdentity stores the peer's identity: before Publish, and again when a renegotiation
// changed the user's groups (the packet path picks the new one up on its next packet).
func (p *Peer) SetIdentity(id *Identity) { p.ident.Store(id) }

// Identity returns the published identity, or nil before authentication.
func (p *Peer) Identity() *Identity { return p.ident.Load() }

// LastReceived is when the last authenticated packet arrived.
func (p *Peer) LastReceived() time.Time { return time.Unix(0, p.lastRecv.Load()) }

// Touch records that an authenticated control packet arrived at now.
func (p *Peer) Touch(now time.Time) { p.lastRecv.Store(now.UnixNano()) }

// notify reports e to the owner once per peer (EventRekey is reported once per key instead:
// rekeyDue).
func (p *Peer) notify(e Event) {
	if p.notified.Or(uint32(e))&uint32(e) == 0 {
		p.owner.PeerEvent(e)
	}
}

// rekeyDue reports, once per key, that k's packet ids (sent or received) passed RekeyPacketID:
// the session must renegotiate. A key installed later reports for itself.
func (p *Peer) rekeyDue(k *DataKey) {
	if !k.rekeyAsked.Load() && !k.rekeyAsked.Swap(true) {
		p.owner.PeerEvent(EventRekey)
	}
}

// DataKey is the data-channel state of one key id.
type DataKey struct {
	ID      uint8
	Keys    *datacrypto.Keys
	Created time.Time
	replay  replay.Window    // guarded by the peer's up.mu
	_       cpu.CacheLinePad // the receive side writes replay, the TUN readers sendPID
	sendPID atomic.Uint32
	// rekeyAsked is set once this key asked for a renegotiation.
	rekeyAsked atomic.Bool
}

// Packet-id limits. A key must never seal two packets with one packet id (the AEAD nonce), so
// the server renegotiates long before the 32-bit id wraps, as the stock client does at
// 0xFF000000 (ssl.c, packet_id.h), and stops sending with a key that reaches the last id.
const (
	RekeyPacketID = 0xFF000000
	lastPacketID  = 0xFFFFFFFF
)

// nextPacketID takes the next packet id to send with k. It never returns an id twice and never
// wraps: once the last id is taken it reports false forever. A compare-and-swap rather than an
// add, so that no goroutine (TUN reader, timer, another client's local delivery) can take an id
// past the last.
func (k *DataKey) nextPacketID() (uint32, bool) {
	for {
		cur := k.sendPID.Load()
		if cur == lastPacketID {
			return 0, false
		}
		if k.sendPID.CompareAndSwap(cur, cur+1) {
			return cur + 1, true
		}
	}
}

// InstallKey makes k usable for receiving; send says it becomes the send key at once (the first
// key of a session). A renegotiated key becomes the send key when the client uses it, or after
// the lame-duck delay.
func (p *Peer) InstallKey(k *DataKey, send bool) {
	p.keys[k.ID&7].Store(k)
	if send {
		p.sendKey.Store(k)
	}
}

// newerThan reports whether k is a later key than o (key ids wrap 7 -> 1).
func (k *DataKey) newerThan(o *DataKey) bool {
	return o == nil || k.Created.After(o.Created)
}

// Keys reports the installed key ids, for tests and listings.
func (p *Peer) Keys() []uint8 {
	var ids []uint8
	for i := range p.keys {
		if p.keys[i].Load() != nil {
			ids = append(ids, uint8(i))
		}
	}
	return ids
}

// uplinkPolicy refreshes what the receive side caches from the policy (groups, upload limit)
// when a reload swapped it or the identity changed, and returns the peer's groups. The caller
// holds p.up.mu.
func (p *Peer) uplinkPolicy(pol *Policy, id *Identity) authz.Groups {
	if p.up.pol != pol || p.up.id != id {
		p.up.groups = pol.Authz.Groups(id.Groups)
		p.up.bucket.Set(pol.limitFor(id.Groups))
		p.up.pol, p.up.id = pol, id
	}
	return p.up.groups
}

// allowDown refreshes the download limit when a reload swapped the policy or the identity
// changed, and takes n bytes at now (unix nanoseconds) from the download bucket.
func (p *Peer) allowDown(pol *Policy, id *Identity, now int64, n int) bool {
	p.down.mu.Lock()
	defer p.down.mu.Unlock()
	p.downlinkPolicy(pol, id)
	return p.down.bucket.Allow(now, n)
}

// downlinkPolicy refreshes what the send side caches; the caller holds p.down.mu.
func (p *Peer) downlinkPolicy(pol *Policy, id *Identity) {
	if p.down.pol != pol || p.down.id != id {
		p.down.bucket.Set(pol.limitFor(id.Groups))
		p.down.groups = pol.Authz.Groups(id.Groups)
		p.down.pol, p.down.id = pol, id
	}
}

// fromAllowed reports whether an IPv6 packet from the private network (pkt, parsed as info)
// may reach the client when it carries the client's own address (no NAT): only from where the
// client's groups may go, and not from the endpoint host itself unless allow_host_access. IPv4 gets the same from NAT (nothing reaches a client but replies to
// its own flows); without this, any host of the private network could reach every client. An
// ICMPv6 error is judged by the packet it is about, which the client sent: a router's Packet
// Too Big must reach the client whatever the router's own address, or path MTU discovery
// breaks.
func (p *Peer) fromAllowed(pol *Policy, id *Identity, pkt []byte, info *ippkt.Info) bool {
	from := info.Src
	if info.Proto == ippkt.ProtoICMPv6 && info.Transport != 0 {
		if off, ok := ippkt.Embedded(pkt, info); ok {
			inner, r := ippkt.ParseEmbedded(pkt[off:info.End])
			if r != ippkt.OK || inner.Version != 6 || inner.Src != id.Addr6 {
				return false
			}
			from = inner.Dst
		}
	}
	p.down.mu.Lock()
	defer p.down.mu.Unlock()
	p.downlinkPolicy(pol, id)
	return pol.Authz.Allowed(from, p.down.groups) && (pol.AllowHostAccess || !pol.host.contains(from))
}
