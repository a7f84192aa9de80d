package tlscrypt

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"hash"
	"math/rand/v2"
	"sync"
	"testing"
)

// testKey returns a key whose bytes are 0..255, so slot mix-ups show.
func testKey() *StaticKey {
	k := new(StaticKey)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

// pair is a sender and a receiver wrapper for one direction.
type pair struct {
	name     string
	send     Wrapper
	recv     Wrapper
	overhead int
}

// pairs returns every mode and role combination, sender first.
func pairs(k *StaticKey) []pair {
	ps := []pair{
		{"plain", NewPlain(), NewPlain(), 0},
		{"tls-crypt server to client", NewTLSCrypt(k, true), NewTLSCrypt(k, false), 40},
		{"tls-crypt client to server", NewTLSCrypt(k, false), NewTLSCrypt(k, true), 40},
	}
	for _, d := range []struct {
		name string
		h    func() hash.Hash
		size int
	}{{"default", nil, 20}, {"sha1", sha1.New, 20}, {"sha256", sha256.New, 32}, {"sha512", sha512.New, 64}} {
		ps = append(ps,
			pair{"tls-auth " + d.name + " dir0 to dir1", NewTLSAuth(k, 0, d.h), NewTLSAuth(k, 1, d.h), d.size + 8},
			pair{"tls-auth " + d.name + " dir1 to dir0", NewTLSAuth(k, 1, d.h), NewTLSAuth(k, 0, d.h), d.size + 8},
			pair{"tls-auth " + d.name + " bidirectional", NewTLSAuth(k, -1, d.h), NewTLSAuth(k, -1, d.h), d.size + 8},
		)
	}
	return ps
}

// plainPackets are plain-layout control packets of assorted sizes: a 9-byte
// minimum, a client reset, and payloads that cross AES block boundaries.
func plainPackets() [][]byte {
	reset := []byte{0x38, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0}
	out := [][]byte{reset[:9], reset}
	for _, n := range []int{1, 15, 16, 17, 31, 32, 33, 1200} {
		p := append([]byte{0x20, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 1}, make([]byte, n)...)
		for i := 14; i < len(p); i++ {
			p[i] = byte(i * 7)
		}
		out = append(out, p)
	}
	return out
}

func TestWrapUnwrapRoundTrip(t *testing.T) {
	for _, p := range pairs(testKey()) {
		t.Run(p.name, func(t *testing.T) {
			if p.send.Overhead() != p.overhead || p.recv.Overhead() != p.overhead {
				t.Fatalf("Overhead = %d/%d, want %d", p.send.Overhead(), p.recv.Overhead(), p.overhead)
			}
			for i, plain := range plainPackets() {
				pid, ts := uint32(i+1), uint32(0x6b0b22c9+i)
				wire, err := p.send.Wrap([]byte("prefix"), plain, pid, ts)
				if err != nil {
					t.Fatalf("Wrap: %v", err)
				}
				if string(wire[:6]) != "prefix" {
					t.Fatal("Wrap clobbered dst")
				}
				wire = wire[6:]
				if len(wire) != len(plain)+p.overhead {
					t.Fatalf("wire len %d, want %d", len(wire), len(plain)+p.overhead)
				}
				if !bytes.Equal(wire[:9], plain[:9]) {
					t.Fatal("opcode and session id are not in the clear at the front")
				}
				got, gpid, gts, err := p.recv.Unwrap([]byte("dst"), wire)
				if err != nil {
					t.Fatalf("Unwrap: %v", err)
				}
				if string(got[:3]) != "dst" || !bytes.Equal(got[3:], plain) {
					t.Fatalf("Unwrap = %x, want dst||%x", got, plain)
				}
				if p.overhead > 0 && (gpid != pid || gts != ts) {
					t.Fatalf("Unwrap pid,ts = %d,%d, want %d,%d", gpid, gts, pid, ts)
				}
				// In place.
				buf := bytes.Clone(wire)
				got, _, _, err = p.recv.Unwrap(buf[:0], buf)
				if err != nil || !bytes.Equal(got, plain) {
					t.Fatalf("in-place Unwrap = %x, %v; want %x", got, err, plain)
				}
			}
		})
	}
}

func TestUnwrapWrongRole(t *testing.T) {
	k := testKey()
	tests := []struct {
		name       string
		send, recv Wrapper
	}{
		{"tls-crypt server to server", NewTLSCrypt(k, true), NewTLSCrypt(k, true)},
		{"tls-crypt client to client", NewTLSCrypt(k, false), NewTLSCrypt(k, false)},
		{"tls-auth dir0 to dir0", NewTLSAuth(k, 0, nil), NewTLSAuth(k, 0, nil)},
		{"tls-auth dir1 to bidi", NewTLSAuth(k, 1, nil), NewTLSAuth(k, -1, nil)},
		{"tls-auth sha1 to sha256", NewTLSAuth(k, 0, sha1.New), NewTLSAuth(k, 1, sha256.New)},
	}
	other := testKey()
	other[70] ^= 1  // inside the first 20 bytes of keys[0].hmac
	other[200] ^= 1 // inside the first 20 bytes of keys[1].hmac
	tests = append(tests, struct {
		name       string
		send, recv Wrapper
	}{"tls-auth other key", NewTLSAuth(k, 0, nil), NewTLSAuth(other, 1, nil)})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wire, err := tt.send.Wrap(nil, plainPackets()[3], 1, 2)
			if err != nil {
				t.Fatal(err)
			}
			dst := []byte("keep")
			got, _, _, err := tt.recv.Unwrap(dst, wire)
			if !errors.Is(err, ErrAuthFailed) && !errors.Is(err, ErrPacketTooShort) {
				t.Fatalf("Unwrap err = %v, want ErrAuthFailed", err)
			}
			if string(got) != "keep" {
				t.Fatalf("Unwrap returned %q on error, want dst unextended", got)
			}
		})
	}
}

// TestTLSCryptKnownLayout builds the wire form independently with the stdlib
// (cipher.NewCTR, crypto/hmac) from the protocol §3.6 description and the key
// slices named in the brief, and checks Wrap produces exactly those bytes.
func TestTLSCryptKnownLayout(t *testing.T) {
	k := testKey()
	plain := plainPackets()[5] // 14-byte header + 17 payload bytes: crosses a block
	pid, ts := uint32(1), uint32(0x6b0b22c9)
	for _, role := range []struct {
		name   string
		server bool
		ke, ka []byte
	}{
		{"server", true, k[0:32], k[64:96]},
		{"client", false, k[128:160], k[192:224]},
	} {
		t.Run(role.name, func(t *testing.T) {
			hdr := binary.BigEndian.AppendUint32(append([]byte(nil), plain[:9]...), pid)
			hdr = binary.BigEndian.AppendUint32(hdr, ts)
			mac := hmac.New(sha256.New, role.ka)
			mac.Write(hdr)
			mac.Write(plain[9:])
			tag := mac.Sum(nil)
			block, _ := aes.NewCipher(role.ke)
			ct := make([]byte, len(plain)-9)
			cipher.NewCTR(block, tag[:16]).XORKeyStream(ct, plain[9:])
			want := append(append(hdr, tag...), ct...)

			got, err := NewTLSCrypt(k, role.server).Wrap(nil, plain, pid, ts)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("Wrap =\n%x\nwant\n%x", got, want)
			}
		})
	}
}

// TestTLSAuthKnownLayout does the same for tls-auth (protocol §3.5): server dir
// 0 sends with file[64:64+H].
func TestTLSAuthKnownLayout(t *testing.T) {
	k := testKey()
	plain := plainPackets()[1]
	pid, ts := uint32(1), uint32(0x6b0b22c9)
	for _, d := range []struct {
		dir int
		key []byte
	}{{0, k[64:84]}, {1, k[192:212]}, {-1, k[64:84]}} {
		replay := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, pid), ts)
		mac := hmac.New(sha1.New, d.key)
		mac.Write(replay)
		mac.Write(plain)
		want := append(append(append(append([]byte(nil), plain[:9]...), mac.Sum(nil)...), replay...), plain[9:]...)
		got, err := NewTLSAuth(k, d.dir, sha1.New).Wrap(nil, plain, pid, ts)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("direction %d: Wrap =\n%x\nwant\n%x", d.dir, got, want)
		}
	}
}

func TestUnwrapTamper(t *testing.T) {
	for _, p := range pairs(testKey()) {
		if p.overhead == 0 {
			continue
		}
		t.Run(p.name, func(t *testing.T) {
			wire, err := p.send.Wrap(nil, plainPackets()[4], 7, 9)
			if err != nil {
				t.Fatal(err)
			}
			for i := range wire {
				for _, bit := range []byte{0x01, 0x80} {
					bad := bytes.Clone(wire)
					bad[i] ^= bit
					if _, _, _, err := p.recv.Unwrap(nil, bad); !errors.Is(err, ErrAuthFailed) {
						t.Fatalf("flip byte %d bit %#x: err = %v, want ErrAuthFailed", i, bit, err)
					}
				}
			}
			for n := range len(wire) {
				if _, _, _, err := p.recv.Unwrap(nil, wire[:n]); err == nil {
					t.Fatalf("truncated to %d bytes: accepted", n)
				}
			}
			if _, _, _, err := p.recv.Unwrap(nil, append(bytes.Clone(wire), 0)); err == nil {
				t.Fatal("extended by one byte: accepted")
			}
		})
	}
}

func TestUnwrapShort(t *testing.T) {
	k := testKey()
	tc := NewTLSCrypt(k, true)
	for n := range 49 {
		if _, _, _, err := tc.Unwrap(nil, make([]byte, n)); !errors.Is(err, ErrPacketTooShort) {
			t.Fatalf("tls-crypt %d bytes: err = %v, want ErrPacketTooShort", n, err)
		}
	}
	// 49 bytes is the minimum: a 9-byte plain packet with no plaintext.
	wire, _ := NewTLSCrypt(k, false).Wrap(nil, make([]byte, 9), 1, 1)
	if len(wire) != 49 {
		t.Fatalf("minimal tls-crypt packet is %d bytes", len(wire))
	}
	if _, _, _, err := tc.Unwrap(nil, wire); err != nil {
		t.Fatalf("49-byte packet: %v", err)
	}
	ta := NewTLSAuth(k, 0, sha256.New)
	for n := range 9 + 32 + 8 {
		if _, _, _, err := ta.Unwrap(nil, make([]byte, n)); !errors.Is(err, ErrPacketTooShort) {
			t.Fatalf("tls-auth %d bytes: err = %v, want ErrPacketTooShort", n, err)
		}
	}
	for _, w := range []Wrapper{NewPlain(), tc, ta} {
		if _, err := w.Wrap(nil, make([]byte, 8), 1, 1); !errors.Is(err, ErrPlainTooShort) {
			t.Fatalf("Wrap of 8 bytes: err = %v, want ErrPlainTooShort", err)
		}
	}
	if _, _, _, err := NewPlain().Unwrap(nil, make([]byte, 8)); !errors.Is(err, ErrPacketTooShort) {
		t.Fatalf("plain Unwrap of 8 bytes: err = %v", err)
	}
}

// badSizeHash reports a digest size larger than the 64-byte key slot.
type badSizeHash struct{ hash.Hash }

func (badSizeHash) Size() int { return 65 }

func TestBadConfig(t *testing.T) {
	k := testKey()
	tests := []struct {
		w    Wrapper
		want error
	}{
		{NewTLSCrypt(nil, true), ErrNilKey},
		{NewTLSAuth(nil, 0, nil), ErrNilKey},
		{NewTLSAuth(k, 2, nil), ErrBadDirection},
		{NewTLSAuth(k, -2, nil), ErrBadDirection},
		{NewTLSAuth(k, 0, func() hash.Hash { return badSizeHash{sha512.New()} }), ErrDigestTooLong},
	}
	for _, tt := range tests {
		if _, err := tt.w.Wrap(nil, make([]byte, 20), 1, 1); !errors.Is(err, tt.want) {
			t.Errorf("Wrap err = %v, want %v", err, tt.want)
		}
		if _, _, _, err := tt.w.Unwrap(nil, make([]byte, 100)); !errors.Is(err, tt.want) {
			t.Errorf("Unwrap err = %v, want %v", err, tt.want)
		}
	}
}

func TestNoAllocs(t *testing.T) {
	for _, p := range pairs(testKey()) {
		t.Run(p.name, func(t *testing.T) {
			plain := plainPackets()[9] // 1214 bytes
			wire := make([]byte, 0, 2048)
			out := make([]byte, 0, 2048)
			var err error
			if n := testing.AllocsPerRun(100, func() {
				wire, err = p.send.Wrap(wire[:0], plain, 1, 2)
			}); n != 0 || err != nil {
				t.Errorf("Wrap allocs = %v (err %v), want 0", n, err)
			}
			if n := testing.AllocsPerRun(100, func() {
				out, _, _, err = p.recv.Unwrap(out[:0], wire)
			}); n != 0 || err != nil {
				t.Errorf("Unwrap allocs = %v (err %v), want 0", n, err)
			}
			bad := bytes.Clone(wire)
			bad[len(bad)-1] ^= 1
			if n := testing.AllocsPerRun(100, func() {
				out, _, _, _ = p.recv.Unwrap(out[:0], bad)
			}); n != 0 {
				t.Errorf("rejecting Unwrap allocs = %v, want 0", n)
			}
		})
	}
}

// TestXORCTR checks the hand-rolled CTR against cipher.NewCTR, including IVs
// whose low bytes carry into higher ones.
func TestXORCTR(t *testing.T) {
	k := testKey()
	w := NewTLSCrypt(k, true).(*tlsCrypt)
	block, _ := aes.NewCipher(k[:32])
	rng := rand.New(rand.NewPCG(1, 2))
	ivs := [][]byte{
		make([]byte, 16),
		bytes.Repeat([]byte{0xff}, 16),
		append(make([]byte, 14), 0xff, 0xfe),
		append(bytes.Repeat([]byte{0xab}, 8), 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xfd),
	}
	for range 20 {
		iv := make([]byte, 16)
		for i := range iv {
			iv[i] = byte(rng.Uint32())
		}
		ivs = append(ivs, iv)
	}
	src := make([]byte, 300)
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	for _, iv := range ivs {
		for _, n := range []int{0, 1, 16, 17, 64, 300} {
			want := make([]byte, n)
			cipher.NewCTR(block, iv).XORKeyStream(want, src[:n])
			got := make([]byte, n)
			copy(w.tag[:], iv)
			w.xorCTR(w.encBlock, got, src[:n])
			if !bytes.Equal(got, want) {
				t.Fatalf("iv %x n %d: xorCTR differs from cipher.NewCTR", iv, n)
			}
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	k := testKey()
	send, recv := NewTLSCrypt(k, true), NewTLSCrypt(k, false)
	auth := NewTLSAuth(k, -1, sha256.New)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				plain := plainPackets()[(g+i)%10]
				for _, p := range [][2]Wrapper{{send, recv}, {auth, auth}} {
					wire, err := p[0].Wrap(nil, plain, uint32(i+1), 5)
					if err != nil {
						t.Error(err)
						return
					}
					got, _, _, err := p[1].Unwrap(nil, wire)
					if err != nil || !bytes.Equal(got, plain) {
						t.Errorf("concurrent round trip failed: %v", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

func benchmarkUnwrap(b *testing.B, send, recv Wrapper) {
	wire, _ := send.Wrap(nil, plainPackets()[9], 1, 2)
	out := make([]byte, 0, 2048)
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if out, _, _, err = recv.Unwrap(out[:0], wire); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTLSCryptUnwrap(b *testing.B) {
	k := testKey()
	benchmarkUnwrap(b, NewTLSCrypt(k, false), NewTLSCrypt(k, true))
}

func BenchmarkTLSAuthUnwrap(b *testing.B) {
	k := testKey()
	benchmarkUnwrap(b, NewTLSAuth(k, 1, sha256.New), NewTLSAuth(k, 0, sha256.New))
}

// fuzzUnwrap checks that recv.Unwrap never panics and that whatever it
// accepts is re-wrapped by send to exactly the same bytes.
func fuzzUnwrap(f *testing.F, send, recv Wrapper) {
	for i, plain := range plainPackets()[:6] {
		wire, err := send.Wrap(nil, plain, uint32(i+1), 0x6b0b22c9)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire)
	}
	f.Add([]byte{})
	f.Add(make([]byte, 49))
	f.Fuzz(func(t *testing.T, wire []byte) {
		plain, pid, ts, err := recv.Unwrap(nil, wire)
		if err != nil {
			if plain != nil {
				t.Fatalf("Unwrap returned %x with error %v", plain, err)
			}
			return
		}
		again, err := send.Wrap(nil, plain, pid, ts)
		if err != nil {
			t.Fatalf("re-Wrap: %v", err)
		}
		if !bytes.Equal(again, wire) {
			t.Fatalf("re-Wrap =\n%x\nwant\n%x", again, wire)
		}
	})
}

func FuzzTLSCryptUnwrap(f *testing.F) {
	k := testKey()
	fuzzUnwrap(f, NewTLSCrypt(k, false), NewTLSCrypt(k, true))
}

func FuzzTLSAuthUnwrap(f *testing.F) {
	k := testKey()
	fuzzUnwrap(f, NewTLSAuth(k, 1, sha256.New), NewTLSAuth(k, 0, sha256.New))
}

func TestAuthDigest(t *testing.T) {
	for name, size := range map[string]int{"": 20, "SHA1": 20, "sha256": 32, "SHA512": 64} {
		h, err := AuthDigest(name)
		if err != nil || h().Size() != size {
			t.Errorf("AuthDigest(%q): %v, want a %d-byte hash", name, err, size)
		}
	}
	if _, err := AuthDigest("MD5"); err == nil {
		t.Error("AuthDigest(MD5) accepted")
	}
}
