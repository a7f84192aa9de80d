package datacrypto

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

var allCiphers = []Cipher{AES128GCM, AES256GCM, ChaCha20Poly1305}

// testKey2 is key2[i] = i.
func testKey2() *Key2 {
	k := new(Key2)
	copy(k[:], seq(0, 256))
	return k
}

func mustKeys(t testing.TB, c Cipher, r Role) *Keys {
	t.Helper()
	k, err := NewKeys(c, testKey2(), r)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// packetBuf lays out header || Overhead bytes of scratch || plaintext with 16
// bytes of tail room, as the send path does.
func packetBuf(hdr, plaintext []byte) []byte {
	n := len(hdr) + Overhead + len(plaintext)
	b := make([]byte, n, n+16)
	copy(b, hdr)
	copy(b[len(hdr)+Overhead:], plaintext)
	return b
}

// withTail returns a copy of pkt with 16 bytes of tail room.
func withTail(pkt []byte) []byte {
	b := make([]byte, len(pkt), len(pkt)+16)
	copy(b, pkt)
	return b
}

var (
	hdrV2 = []byte{0x49, 0x00, 0x00, 0x07} // P_DATA_V2, key_id 1, peer-id 7
	hdrV1 = []byte{0x30}                   // P_DATA_V1, key_id 0
	katPT = []byte("cvpn AEAD known-answer vector")
)

// The vectors were produced with Python's cryptography package (OpenSSL
// underneath), independent of Go's crypto, from key2[i] = i, packet-id
// 0x01020304 and plaintext katPT, following protocol §8.2: key = key2 cipher
// slot of the sending direction, nonce = packet-id || hmac slot[0:8], AAD = V2
// header || packet-id or (V1) packet-id, wire = header || packet-id || tag ||
// ciphertext.
var katVectors = []struct {
	cipher             Cipher
	serverV2, clientV1 string
}{
	{AES128GCM,
		"4900000701020304fd33c400bb43e544c0d0960738d15225b92b9f4c2864488aae43abf72cf33a1f51e1a7c0cc0392b2cc4545f2d8",
		"300102030406dd946c7f94297a88ca45abe97c48adfd3bdbbab2ee979773a4b4ad3f3e57e7ffe06da5e55ada7ed18c456163"},
	{AES256GCM,
		"490000070102030499b7623900d984b21f10b50f0a21ea64c6ec869fc8eae8d3dfe0707a5ed7825ceb92c768857592bd6b2b56a13d",
		"300102030422e429d744fad33aeba079314be7697a5a9c8c690fb5272704fbe4540fac563ba9650e34460b2a9b770a28bde9"},
	{ChaCha20Poly1305,
		"490000070102030460f876853268611952d5214b2f3ac6defae47f4dd8323a210e7fd673470e29bb22dee3b311e09957cdd1b23bec",
		"3001020304087ec7d7f53f6887a50a36b53ead50ad5b6f52766050e8812063df4c8083202448b29358bbd29dc38fd05057e0"},
}

func TestSealKnownAnswer(t *testing.T) {
	for _, v := range katVectors {
		t.Run(v.cipher.String(), func(t *testing.T) {
			server := mustKeys(t, v.cipher, Server)
			client := mustKeys(t, v.cipher, Client)
			if got := server.Seal(packetBuf(hdrV2, katPT), HeaderV2, 0x01020304); !bytes.Equal(got, mustHex(t, v.serverV2)) {
				t.Errorf("server V2\n got %x\nwant %s", got, v.serverV2)
			}
			if got := client.Seal(packetBuf(hdrV1, katPT), HeaderV1, 0x01020304); !bytes.Equal(got, mustHex(t, v.clientV1)) {
				t.Errorf("client V1\n got %x\nwant %s", got, v.clientV1)
			}
			// And the other side opens them.
			for _, tc := range []struct {
				k   *Keys
				pkt string
				hdr int
			}{{client, v.serverV2, HeaderV2}, {server, v.clientV1, HeaderV1}} {
				id, pt, err := tc.k.Open(withTail(mustHex(t, tc.pkt)), tc.hdr)
				if err != nil || id != 0x01020304 || !bytes.Equal(pt, katPT) {
					t.Errorf("Open(%s) = %#x, %q, %v", tc.pkt, id, pt, err)
				}
			}
		})
	}
}

// independentSeal computes the wire packet straight from the protocol §8.2
// description with the standard library, without any of the in-place tricks of
// Seal.
func independentSeal(t *testing.T, c Cipher, k *Key2, r Role, hdr []byte, packetID uint32, pt []byte) []byte {
	t.Helper()
	cipherOff, hmacOff := 128, 192 // server sends server→client
	if r == Client {
		cipherOff, hmacOff = 0, 64
	}
	key := k[cipherOff : cipherOff+c.KeySize()]
	var aead cipher.AEAD
	var err error
	if c == ChaCha20Poly1305 {
		aead, err = chacha20poly1305.New(key)
	} else {
		var b cipher.Block
		if b, err = aes.NewCipher(key); err == nil {
			aead, err = cipher.NewGCM(b)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	pid := binary.BigEndian.AppendUint32(nil, packetID)
	nonce := append(bytes.Clone(pid), k[hmacOff:hmacOff+8]...)
	ad := pid
	if len(hdr) == 4 {
		ad = append(bytes.Clone(hdr), pid...)
	}
	out := aead.Seal(nil, nonce, pt, ad)
	ct, tag := out[:len(pt)], out[len(pt):]
	return bytes.Join([][]byte{hdr, pid, tag, ct}, nil)
}

func TestSealMatchesIndependent(t *testing.T) {
	k2 := DerivePRF(&[48]byte{9}, &[32]byte{1}, &[32]byte{2}, &[32]byte{3}, &[32]byte{4}, [8]byte{5}, [8]byte{6})
	pt := seq(0x41, 1400)
	for _, c := range allCiphers {
		for _, r := range []Role{Server, Client} {
			for _, hdr := range [][]byte{hdrV1, hdrV2} {
				t.Run(fmt.Sprintf("%v/role%d/hdr%d", c, r, len(hdr)), func(t *testing.T) {
					k, err := NewKeys(c, k2, r)
					if err != nil {
						t.Fatal(err)
					}
					got := k.Seal(packetBuf(hdr, pt), len(hdr), 0xdeadbeef)
					want := independentSeal(t, c, k2, r, hdr, 0xdeadbeef, pt)
					if !bytes.Equal(got, want) {
						t.Fatalf("Seal differs from independent computation\n got %x\nwant %x", got[:48], want[:48])
					}
				})
			}
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for _, c := range allCiphers {
		server, client := mustKeys(t, c, Server), mustKeys(t, c, Client)
		for _, hdr := range [][]byte{hdrV1, hdrV2} {
			for _, n := range []int{1, 2, 15, 16, 17, 100, 1400, 9000} {
				pt := seq(n, n)
				for _, dir := range []struct {
					name     string
					from, to *Keys
				}{{"s2c", server, client}, {"c2s", client, server}} {
					pkt := dir.from.Seal(packetBuf(hdr, pt), len(hdr), uint32(n))
					if len(pkt) != len(hdr)+Overhead+n || !bytes.Equal(pkt[:len(hdr)], hdr) {
						t.Fatalf("%v %s hdr%d n=%d: sealed len %d or header %x wrong", c, dir.name, len(hdr), n, len(pkt), pkt[:len(hdr)])
					}
					// A key never opens what it sealed itself: directions differ.
					if _, _, err := dir.from.Open(withTail(pkt), len(hdr)); !errors.Is(err, ErrAuth) {
						t.Fatalf("%v %s: own packet opened with same role: %v", c, dir.name, err)
					}
					// Both the tail-room and the shifting path.
					for _, in := range [][]byte{withTail(pkt), bytes.Clone(pkt)[:len(pkt):len(pkt)]} {
						id, got, err := dir.to.Open(in, len(hdr))
						if err != nil || id != uint32(n) || !bytes.Equal(got, pt) {
							t.Fatalf("%v %s hdr%d n=%d cap+%d: Open = %d, %v", c, dir.name, len(hdr), n, cap(in)-len(in), id, err)
						}
					}
				}
			}
		}
	}
}

func TestSealWithoutTailRoom(t *testing.T) {
	k := mustKeys(t, AES256GCM, Server)
	b := packetBuf(hdrV2, katPT)
	want := k.Seal(bytes.Clone(b), HeaderV2, 5)
	got := k.Seal(b[:len(b):len(b)], HeaderV2, 5)
	if !bytes.Equal(got, want) {
		t.Fatalf("Seal without tail room = %x, want %x", got, want)
	}
}

func TestTamper(t *testing.T) {
	for _, c := range allCiphers {
		server, client := mustKeys(t, c, Server), mustKeys(t, c, Client)
		for _, hdr := range [][]byte{hdrV1, hdrV2} {
			pkt := server.Seal(packetBuf(hdr, seq(0, 64)), len(hdr), 77)
			for i := range pkt {
				for _, bit := range []byte{0x01, 0x80} {
					bad := withTail(pkt)
					bad[i] ^= bit
					_, _, err := client.Open(bad, len(hdr))
					if len(hdr) == HeaderV1 && i == 0 {
						// The P_DATA_V1 opcode byte is not in the AAD
						// (protocol §8.2); the receiver's key_id lookup is what
						// protects it.
						if err != nil {
							t.Errorf("%v V1: flipped opcode bit failed: %v", c, err)
						}
						continue
					}
					if !errors.Is(err, ErrAuth) {
						t.Errorf("%v hdr%d: flipping bit %#x of byte %d: err = %v, want ErrAuth", c, len(hdr), bit, i, err)
					}
				}
			}
			// Truncation anywhere fails too.
			for n := range pkt {
				_, _, err := client.Open(withTail(pkt[:n]), len(hdr))
				if err == nil {
					t.Errorf("%v hdr%d: truncated to %d opened", c, len(hdr), n)
				}
			}
		}
	}
}

func TestOpenErrors(t *testing.T) {
	k := mustKeys(t, AES128GCM, Server)
	if _, _, err := k.Open(make([]byte, 40, 56), 2); !errors.Is(err, ErrHeader) {
		t.Errorf("hdr 2: %v", err)
	}
	// header + packet-id + tag and no ciphertext byte.
	if _, _, err := k.Open(make([]byte, 24, 40), HeaderV2); !errors.Is(err, ErrShortPacket) {
		t.Errorf("empty ciphertext: %v", err)
	}
	if _, _, err := k.Open(nil, HeaderV1); !errors.Is(err, ErrShortPacket) {
		t.Errorf("nil: %v", err)
	}
}

func TestNewKeysErrors(t *testing.T) {
	if _, err := NewKeys(0, testKey2(), Server); !errors.Is(err, ErrUnsupportedCipher) {
		t.Errorf("cipher 0: %v", err)
	}
	if _, err := NewKeys(AES128GCM, nil, Server); err == nil {
		t.Error("nil key2 accepted")
	}
	if _, err := NewKeys(AES128GCM, testKey2(), 0); err == nil {
		t.Error("role 0 accepted")
	}
}

func TestSealPanicsOnMisuse(t *testing.T) {
	k := mustKeys(t, AES128GCM, Server)
	for _, tc := range []struct {
		buf []byte
		hdr int
	}{{make([]byte, 30, 64), 2}, {make([]byte, 10, 64), HeaderV2}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Seal(len %d, hdr %d) did not panic", len(tc.buf), tc.hdr)
				}
			}()
			k.Seal(tc.buf, tc.hdr, 1)
		}()
	}
}

func TestNoAllocs(t *testing.T) {
	for _, c := range allCiphers {
		for _, hdr := range [][]byte{hdrV1, hdrV2} {
			server, client := mustKeys(t, c, Server), mustKeys(t, c, Client)
			buf := packetBuf(hdr, seq(0, 1400))
			if n := testing.AllocsPerRun(100, func() { server.Seal(buf, len(hdr), 1) }); n != 0 {
				t.Errorf("%v hdr%d: Seal allocs = %v, want 0", c, len(hdr), n)
			}
			pkt := server.Seal(packetBuf(hdr, seq(0, 1400)), len(hdr), 1)
			work := withTail(pkt)
			var err error
			if n := testing.AllocsPerRun(100, func() {
				copy(work, pkt)
				_, _, err = client.Open(work, len(hdr))
			}); n != 0 || err != nil {
				t.Errorf("%v hdr%d: Open allocs = %v (err %v), want 0", c, len(hdr), n, err)
			}
			// The failure path must not allocate either.
			if n := testing.AllocsPerRun(100, func() {
				copy(work, pkt)
				work[len(work)-1] ^= 1
				_, _, err = client.Open(work, len(hdr))
			}); n != 0 || !errors.Is(err, ErrAuth) {
				t.Errorf("%v hdr%d: failing Open allocs = %v (err %v), want 0", c, len(hdr), n, err)
			}
		}
	}
}

const benchPayload = 1400

func BenchmarkSeal(b *testing.B) {
	for _, c := range allCiphers {
		b.Run(c.String(), func(b *testing.B) {
			k := mustKeys(b, c, Server)
			buf := packetBuf(hdrV2, seq(0, benchPayload))
			b.SetBytes(benchPayload)
			b.ReportAllocs()
			var id uint32
			for b.Loop() {
				id++
				k.Seal(buf, HeaderV2, id)
			}
		})
	}
}

// BenchmarkOpen includes restoring the 1400-byte packet before each Open,
// since Open decrypts in place.
func BenchmarkOpen(b *testing.B) {
	for _, c := range allCiphers {
		b.Run(c.String(), func(b *testing.B) {
			server, client := mustKeys(b, c, Server), mustKeys(b, c, Client)
			pkt := server.Seal(packetBuf(hdrV2, seq(0, benchPayload)), HeaderV2, 1)
			work := withTail(pkt)
			b.SetBytes(benchPayload)
			b.ReportAllocs()
			for b.Loop() {
				copy(work, pkt)
				if _, _, err := client.Open(work, HeaderV2); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
