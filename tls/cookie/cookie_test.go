package cookie

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

var (
	secret = [32]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32}
	addr   = netip.MustParseAddrPort("192.0.2.10:51820")
	sid    = packet.SessionID{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88}
	// slotStart is the first second of a 30 s slot.
	slotStart = time.Unix(1_800_000_000/SlotSeconds*SlotSeconds, 0)
)

func newJar() (*Jar, *fakeClock) {
	c := &fakeClock{t: slotStart}
	return NewJar(secret, c.now), c
}

// TestMakeMatchesHMAC checks Make against crypto/hmac over the documented
// message layout.
func TestMakeMatchesHMAC(t *testing.T) {
	j, clk := newJar()
	for _, a := range []netip.AddrPort{addr, netip.MustParseAddrPort("[2001:db8::1]:1194"), {}} {
		var msg []byte
		msg = binary.BigEndian.AppendUint64(msg, uint64(clk.t.Unix()/SlotSeconds))
		ip := a.Addr().As16()
		msg = append(msg, ip[:]...)
		msg = binary.BigEndian.AppendUint16(msg, a.Port())
		msg = append(msg, sid[:]...)
		m := hmac.New(sha256.New, secret[:])
		m.Write(msg)
		var want packet.SessionID
		copy(want[:], m.Sum(nil))
		if got := j.Make(a, sid); got != want {
			t.Errorf("Make(%v) = %v, want %v", a, got, want)
		}
	}
}

func TestValid(t *testing.T) {
	j, _ := newJar()
	c := j.Make(addr, sid)
	if c.IsZero() {
		t.Fatal("zero cookie")
	}
	if !j.Valid(addr, sid, c) {
		t.Fatal("cookie not valid for the same address and session id")
	}
	other := []struct {
		name string
		addr netip.AddrPort
		sid  packet.SessionID
	}{
		{"other port", netip.AddrPortFrom(addr.Addr(), addr.Port()+1), sid},
		{"other ip", netip.MustParseAddrPort("192.0.2.11:51820"), sid},
		{"other sid", addr, packet.SessionID{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x89}},
		{"ipv6", netip.MustParseAddrPort("[2001:db8::10]:51820"), sid},
	}
	for _, o := range other {
		if j.Valid(o.addr, o.sid, c) {
			t.Errorf("%s: cookie accepted", o.name)
		}
	}
	for i := range c {
		bad := c
		bad[i] ^= 0x40
		if j.Valid(addr, sid, bad) {
			t.Errorf("cookie with byte %d flipped accepted", i)
		}
	}
	if j.Valid(addr, sid, packet.SessionID{}) {
		t.Error("zero cookie accepted")
	}
	otherJar := NewJar([32]byte{9}, func() time.Time { return slotStart })
	if otherJar.Valid(addr, sid, c) {
		t.Error("cookie accepted by a jar with another secret")
	}
}

// IPv4 and its IPv4-mapped IPv6 form are the same client (dual-stack socket).
func TestIPv4Mapped(t *testing.T) {
	j, _ := newJar()
	mapped := netip.AddrPortFrom(netip.AddrFrom16(addr.Addr().As16()), addr.Port())
	if !j.Valid(mapped, sid, j.Make(addr, sid)) {
		t.Fatal("IPv4 cookie not valid for the IPv4-mapped address")
	}
}

func TestExpiry(t *testing.T) {
	j, clk := newJar()
	c := j.Make(addr, sid) // made at the first second of a slot
	steps := []struct {
		after time.Duration
		want  bool
	}{
		{-31 * time.Second, false}, // two slots early
		{-30 * time.Second, true},  // one slot early (clock went back)
		{-1 * time.Second, true},
		{0, true},
		{30 * time.Second, true},
		{60 * time.Second, true},
		{89 * time.Second, true},
		{90 * time.Second, false},
		{10 * time.Minute, false},
	}
	for _, s := range steps {
		clk.t = slotStart.Add(s.after)
		if got := j.Valid(addr, sid, c); got != s.want {
			t.Errorf("Valid %v after Make = %v, want %v", s.after, got, s.want)
		}
	}
	// Made at the last second of a slot, it still lives over 60 s.
	clk.t = slotStart.Add(29 * time.Second)
	c = j.Make(addr, sid)
	clk.t = slotStart.Add(29*time.Second + 60*time.Second)
	if !j.Valid(addr, sid, c) {
		t.Error("cookie made at the end of a slot expired within 60 s")
	}
}

func TestNoAllocs(t *testing.T) {
	j, _ := newJar()
	c := j.Make(addr, sid)
	if n := testing.AllocsPerRun(1000, func() { c = j.Make(addr, sid) }); n != 0 {
		t.Errorf("Make allocs = %v, want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() { j.Valid(addr, sid, c) }); n != 0 {
		t.Errorf("Valid allocs = %v, want 0", n)
	}
}

func TestConcurrent(t *testing.T) {
	j := NewJar(secret, time.Now)
	done := make(chan bool)
	for g := range 8 {
		go func() {
			a := netip.AddrPortFrom(addr.Addr(), uint16(g))
			ok := true
			for range 1000 {
				ok = ok && j.Valid(a, sid, j.Make(a, sid))
			}
			done <- ok
		}()
	}
	for range 8 {
		if !<-done {
			t.Fatal("concurrent Make/Valid disagreed")
		}
	}
}

func BenchmarkValid(b *testing.B) {
	j := NewJar(secret, time.Now)
	c := j.Make(addr, sid)
	b.ReportAllocs()
	for b.Loop() {
		j.Valid(addr, sid, c)
	}
}

func TestTruncateNeverZero(t *testing.T) {
	if c := truncate(make([]byte, 32)); c.IsZero() {
		t.Fatal("truncate returned the zero session id")
	}
	mac := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if c := truncate(mac); c != (packet.SessionID{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Fatalf("truncate = %v", c)
	}
}
