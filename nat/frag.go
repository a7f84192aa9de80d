package nat

import "sync"

// Fragments after the first carry no transport header, so they cannot be
// matched to a mapping by ports.
//
// Outbound, none is needed: only the source address changes, and the
// transport checksum in the first fragment was adjusted for the whole
// datagram. (Two clients sending fragmented datagrams with the same IP ID to
// the same destination at the same time would collide at the destination's
// reassembly; the NAT does not rewrite IP IDs.)
//
// Inbound, a translated first fragment records which client its datagram
// goes to, keyed by what identifies a datagram at reassembly (RFC 791: source,
// protocol, identification; RFC 8200 §4.5: source and the 32-bit
// identification of the Fragment header; the destination is always the SNAT
// address of the family), and later fragments follow it. IPv6 fragments work
// alike, the Fragment header giving the offset and identification, with
// one difference outbound: the IPv6 header has no checksum to adjust. The record lives in a small direct-mapped table:
// a fixed size, no allocation, and a collision only drops the older
// datagram's remaining fragments. Fragments that arrive before their first
// fragment are dropped.

const fragSlots = 256

// fragKey names a datagram. proto is 0 for IPv6, whose datagrams are named
// without it.
type fragKey struct {
	remote addr
	id     uint32
	proto  uint8
}

type fragSlot struct {
	key    fragKey
	client addr
	seen   int64 // ns since Table.epoch
	live   bool
}

type fragTable struct {
	mu    sync.Mutex // guards slots
	slots [fragSlots]fragSlot
}

func (k fragKey) index() int {
	h := (k.remote.hi^k.remote.lo)*0x9e3779b97f4a7c15 ^ (uint64(k.id)<<8|uint64(k.proto))*0xc2b2ae3d27d4eb4f
	return int(h >> 56) // fragSlots == 1<<8
}

func (f *fragTable) record(k fragKey, client addr, now int64) {
	f.mu.Lock()
	f.slots[k.index()] = fragSlot{key: k, client: client, seen: now, live: true}
	f.mu.Unlock()
}

func (f *fragTable) lookup(k fragKey, now int64) (client addr, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &f.slots[k.index()]
	if !s.live || s.key != k || now-s.seen > int64(fragTimeout) {
		return addr{}, false
	}
	return s.client, true
}

func (f *fragTable) forget(client addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.slots {
		if f.slots[i].client == client {
			f.slots[i] = fragSlot{}
		}
	}
}

func (f *fragTable) expire(now int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.slots {
		if now-f.slots[i].seen > int64(fragTimeout) {
			f.slots[i] = fragSlot{}
		}
	}
}
