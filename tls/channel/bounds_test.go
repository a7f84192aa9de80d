package channel

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// fakeClock is an injected clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// deafPeer is a channel whose peer never acknowledges anything: every packet sent is counted
// and dropped. Failures reported through Fail are recorded, with a check that the channel's lock
// was not held during the call.
type deafPeer struct {
	c        *Channel
	clock    *fakeClock
	sent     atomic.Int64
	failures []error
	locked   bool
	mu       sync.Mutex
}

func newDeafPeer(t *testing.T, cfg Config) *deafPeer {
	t.Helper()
	d := &deafPeer{clock: &fakeClock{now: time.Unix(1_000_000, 0)}}
	cfg.LocalSID, cfg.RemoteSID = packet.SessionID{1}, packet.SessionID{2}
	cfg.Wrapper = tlscrypt.NewPlain()
	cfg.Send = func([]byte) { d.sent.Add(1) }
	if cfg.Now == nil {
		cfg.Now = d.clock.Now
	}
	cfg.Fail = func(err error) {
		free := d.c.mu.TryLock()
		if free {
			d.c.mu.Unlock()
		}
		d.mu.Lock()
		d.failures = append(d.failures, err)
		d.locked = d.locked || !free
		d.mu.Unlock()
	}
	d.c = New(cfg, true)
	t.Cleanup(d.c.Close)
	return d
}

// reported returns the failures Fail was told of, failing the test if one came with the lock held.
func (d *deafPeer) reported(t *testing.T) []error {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.locked {
		t.Fatal("Fail was called with the channel's lock held")
	}
	return append([]error(nil), d.failures...)
}

// TestKeyBacklogBound: a TLS stream whose peer never acks (a KeyUpdate storm: one 26-byte
// record written per request) is refused once MaxKeyBacklog bytes are held; the channel fails
// once, reports ErrBacklogFull outside its lock, and refuses every later write.
func TestKeyBacklogBound(t *testing.T) {
	d := newDeafPeer(t, Config{})
	conn := d.c.Key(0).Conn()
	record := make([]byte, 26)
	var accepted int
	var werr error
	for range 10_000 {
		if _, werr = conn.Write(record); werr != nil {
			break
		}
		accepted += len(record)
	}
	if !errors.Is(werr, ErrBacklogFull) {
		t.Fatalf("writes past the bound: %v, want ErrBacklogFull", werr)
	}
	if accepted > DefaultMaxKeyBacklog || accepted < DefaultMaxKeyBacklog-len(record) {
		t.Fatalf("%d bytes accepted, want just under DefaultMaxKeyBacklog (%d)", accepted, DefaultMaxKeyBacklog)
	}
	if q := d.c.Queued(); q != accepted {
		t.Fatalf("Queued %d, want the %d bytes accepted", q, accepted)
	}
	// Coalesced: a few packets per window, not one per record.
	if n := d.sent.Load(); n > 20 {
		t.Fatalf("%d packets sent for %d writes to a peer that acks nothing", n, accepted/len(record))
	}
	if _, err := conn.Write([]byte{1}); !errors.Is(err, ErrBacklogFull) {
		t.Fatalf("a write after the failure: %v, want ErrBacklogFull", err)
	}
	got := d.reported(t)
	if len(got) != 1 || !errors.Is(got[0], ErrBacklogFull) || !errors.Is(d.c.Err(), ErrBacklogFull) {
		t.Fatalf("Fail told %v, Err %v: want ErrBacklogFull once", got, d.c.Err())
	}
}

// TestChannelBacklogBound: the bound over all key states holds when each key state is under
// its own: the lame duck's backlog counts against the new key's.
func TestChannelBacklogBound(t *testing.T) {
	d := newDeafPeer(t, Config{MaxKeyBacklog: 6000, MaxBacklog: 10000})
	old := d.c.Key(0).Conn()
	if _, err := old.Write(make([]byte, 5000)); err != nil {
		t.Fatal(err)
	}
	k := d.c.StartRenegotiation()
	if _, err := k.Conn().Write(make([]byte, 4000)); err != nil {
		t.Fatalf("a write within both bounds: %v", err)
	}
	_, err := k.Conn().Write(make([]byte, 1001))
	if !errors.Is(err, ErrBacklogFull) {
		t.Fatalf("a write past the channel's bound (key 1 under its own): %v", err)
	}
	if q := d.c.Queued(); q != 9000 {
		t.Fatalf("Queued %d, want 9000: the refused write was queued", q)
	}
	if got := d.reported(t); len(got) != 1 {
		t.Fatalf("Fail told %v, want one failure", got)
	}
}

// TestBacklogMemory: a storm of a hundred thousand small writes to a peer that never acks
// leaves the heap grown by about the bound, not by what was written.
func TestBacklogMemory(t *testing.T) {
	d := newDeafPeer(t, Config{})
	conn := d.c.Key(0).Conn()
	record := make([]byte, 26)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	refused := 0
	for range 100_000 { // 2.6 MB
		if _, err := conn.Write(record); err != nil {
			refused++
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(d.c)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if refused < 90_000 {
		t.Fatalf("only %d of 100000 writes refused", refused)
	}
	if limit := int64(3 * DefaultMaxKeyBacklog); grown > limit {
		t.Fatalf("the heap grew by %d bytes holding a backlog bounded at %d", grown, DefaultMaxKeyBacklog)
	}
}

// TestStalledPeerFailsChannel: a message the peer leaves unacknowledged for AckTimeout fails the
// channel with ErrStalled; a peer that acknowledges, however slowly, does not.
func TestStalledPeerFailsChannel(t *testing.T) {
	d := newDeafPeer(t, Config{AckTimeout: time.Minute})
	conn := d.c.Key(0).Conn()
	if _, err := conn.Write([]byte("PUSH_REPLY,...")); err != nil { // message 1
		t.Fatal(err)
	}
	d.clock.Advance(40 * time.Second)
	d.c.Flush()
	// The peer acks message 1 after 40 s, then the next one is written.
	ack := packet.Control{Opcode: packet.AckV1, SessionID: packet.SessionID{2}, RemoteSessionID: packet.SessionID{1}, NumAcks: 1}
	ack.Acks[0] = 1
	if err := d.c.Input(&ack, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("INFO,hello")); err != nil { // message 2
		t.Fatal(err)
	}
	d.clock.Advance(59 * time.Second) // 99 s since message 1 was sent, 59 s since message 2
	d.c.Flush()
	if err := d.c.Err(); err != nil || len(d.reported(t)) != 0 {
		t.Fatalf("failed with %v although the oldest unacked message is 59 s old", err)
	}
	d.clock.Advance(time.Second)
	d.c.Flush()
	got := d.reported(t)
	if len(got) != 1 || !errors.Is(got[0], ErrStalled) {
		t.Fatalf("Fail told %v, want ErrStalled once", got)
	}
	if _, err := conn.Write([]byte("x")); !errors.Is(err, ErrStalled) {
		t.Fatalf("a write after the stall: %v, want ErrStalled", err)
	}
	d.clock.Advance(time.Minute)
	d.c.Flush()
	if got := d.reported(t); len(got) != 1 {
		t.Fatalf("Fail told %d times", len(got))
	}
}

// TestStallDeadlineArmsTimer: the retransmission timer is armed for the stall deadline when it
// comes before the next retransmission, so a stalled peer is found on time without a poll.
func TestStallDeadlineArmsTimer(t *testing.T) {
	// The timer runs on real time, so this channel reads the real clock.
	d := newDeafPeer(t, Config{AckTimeout: 50 * time.Millisecond, Now: time.Now})
	if _, err := d.c.Key(0).Conn().Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second) // the first retransmission is due after 2 s
	for len(d.reported(t)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no stall reported within 1 s of a 50 ms AckTimeout")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := d.reported(t); !errors.Is(got[0], ErrStalled) {
		t.Fatalf("Fail told %v, want ErrStalled", got)
	}
}

// TestNoStallWithoutTimeout: with AckTimeout zero a peer may take as long as it likes.
func TestNoStallWithoutTimeout(t *testing.T) {
	d := newDeafPeer(t, Config{})
	if _, err := d.c.Key(0).Conn().Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	d.clock.Advance(24 * time.Hour)
	d.c.Flush()
	if err := d.c.Err(); err != nil {
		t.Fatalf("failed with %v without an AckTimeout", err)
	}
}

// TestControlRateLimit: the peer's control packets pass a token bucket of RateBurst packets
// refilled at RateLimit a second on the injected clock; the excess is dropped and counted, and
// packets that fail the replay check take no token.
func TestControlRateLimit(t *testing.T) {
	d := newDeafPeer(t, Config{Replay: true})
	pid := uint32(1)
	input := func() error {
		p := packet.Control{Opcode: packet.AckV1, SessionID: packet.SessionID{2}}
		err := d.c.Input(&p, pid, uint32(d.clock.Now().Unix()))
		pid++
		return err
	}
	for i := range DefaultRateBurst {
		if err := input(); err != nil {
			t.Fatalf("packet %d of the burst: %v", i, err)
		}
	}
	for range 5 {
		if err := input(); !errors.Is(err, ErrRateLimited) {
			t.Fatalf("a packet past the burst: %v, want ErrRateLimited", err)
		}
	}
	if n := d.c.RateLimited(); n != 5 {
		t.Fatalf("RateLimited %d, want 5", n)
	}
	// Replays are refused by the replay check and take no token.
	replay := packet.Control{Opcode: packet.AckV1, SessionID: packet.SessionID{2}}
	if err := d.c.Input(&replay, 1, uint32(d.clock.Now().Unix())); !errors.Is(err, ErrReplay) {
		t.Fatalf("a replayed packet: %v", err)
	}
	d.clock.Advance(time.Second)
	for i := range int(DefaultRateLimit) {
		if err := input(); err != nil {
			t.Fatalf("packet %d a second later: %v", i, err)
		}
	}
	if err := input(); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("packet %d a second later: %v, want ErrRateLimited", int(DefaultRateLimit)+1, err)
	}
	// A long quiet period refills only up to the burst.
	d.clock.Advance(time.Hour)
	n := 0
	for input() == nil {
		n++
	}
	if n != DefaultRateBurst {
		t.Fatalf("%d packets accepted after an hour's quiet, want the burst %d", n, DefaultRateBurst)
	}
	if err := d.c.Err(); err != nil {
		t.Fatalf("rate limiting failed the channel: %v", err)
	}
}

// TestRateLimitOff: a negative RateLimit admits everything.
func TestRateLimitOff(t *testing.T) {
	d := newDeafPeer(t, Config{RateLimit: -1})
	for i := range 10 * DefaultRateBurst {
		p := packet.Control{Opcode: packet.AckV1, SessionID: packet.SessionID{2}}
		if err := d.c.Input(&p, 0, 0); err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
	}
}
