package tlscrypt

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// Fixtures under testdata/v2 were written by OpenVPN 2.6.14:
//
//	openvpn --genkey tls-crypt-v2-server srv.key
//	openvpn --tls-crypt-v2 srv.key --genkey tls-crypt-v2-client cli.key
//	openvpn --tls-crypt-v2 srv.key --genkey tls-crypt-v2-client cli-user.key aGVsbG8gY3ZwbiBtZXRhZGF0YQ==
var (
	v2ServerFixture     = filepath.Join("testdata", "v2", "srv.key")
	v2ClientFixture     = filepath.Join("testdata", "v2", "cli.key")
	v2ClientUserFixture = filepath.Join("testdata", "v2", "cli-user.key")
)

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readV2Fixtures(t testing.TB) (*V2ServerKey, *V2ClientKey) {
	t.Helper()
	srv, err := ParseV2ServerKey(readFile(t, v2ServerFixture))
	if err != nil {
		t.Fatalf("ParseV2ServerKey(%s): %v", v2ServerFixture, err)
	}
	cli, err := ParseV2ClientKey(readFile(t, v2ClientFixture))
	if err != nil {
		t.Fatalf("ParseV2ClientKey(%s): %v", v2ClientFixture, err)
	}
	return srv, cli
}

func TestV2OpenVPNKeyFixtures(t *testing.T) {
	srvData, cliData := readFile(t, v2ServerFixture), readFile(t, v2ClientFixture)
	srv, cli := readV2Fixtures(t)
	if m := srv.Marshal(); !bytes.Equal(m, srvData) {
		t.Errorf("server key Marshal differs from openvpn --genkey output:\n%s\nwant:\n%s", m, srvData)
	}
	if m := cli.Marshal(); !bytes.Equal(m, cliData) {
		t.Errorf("client key Marshal differs from openvpn --genkey output:\n%s\nwant:\n%s", m, cliData)
	}
	if len(cli.WKc) != V2MinWKcLen+9 {
		t.Errorf("openvpn WKc is %d bytes, want %d (timestamp metadata)", len(cli.WKc), V2MinWKcLen+9)
	}

	kc, md, err := srv.UnwrapClientKey(cli.WKc)
	if err != nil {
		t.Fatalf("UnwrapClientKey(openvpn WKc): %v", err)
	}
	if *kc != cli.Key {
		t.Errorf("unwrapped Kc differs from the client's Kc")
	}
	if len(md) != 9 || md[0] != V2MetadataTimestamp {
		t.Fatalf("metadata = %x, want type 0x01 and an 8-byte timestamp", md)
	}
	ts, ok := V2MetadataTime(md)
	if !ok || ts.Before(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)) || ts.After(time.Now().Add(time.Hour)) {
		t.Errorf("metadata timestamp %v (ok %v) is not a plausible key creation time", ts, ok)
	}

	// WKc is deterministic in (Kc, metadata, server key): wrapping again
	// must give openvpn's bytes.
	if again := srv.wrapClientKey(kc, md); !bytes.Equal(again, cli.WKc) {
		t.Errorf("wrapClientKey(Kc, metadata) =\n%x\nopenvpn wrote\n%x", again, cli.WKc)
	}

	user, err := ParseV2ClientKey(readFile(t, v2ClientUserFixture))
	if err != nil {
		t.Fatal(err)
	}
	kc, md, err = srv.UnwrapClientKey(user.WKc)
	if err != nil {
		t.Fatalf("UnwrapClientKey(openvpn WKc with user metadata): %v", err)
	}
	if *kc != user.Key || string(md) != "\x00hello cvpn metadata" {
		t.Errorf("user metadata = %q (Kc match %v), want %q", md, *kc == user.Key, "\x00hello cvpn metadata")
	}
	if _, ok := V2MetadataTime(md); ok {
		t.Error("V2MetadataTime accepted user metadata")
	}
}

// v2WrapModel is the slow obvious WKc construction (protocol §3.7), built from
// crypto/cipher's CTR and crypto/hmac directly, to check wrapClientKey
// against.
func v2WrapModel(server *[V2ServerKeySize]byte, kc []byte, md []byte) []byte {
	n := V2MinWKcLen + len(md)
	l := binary.BigEndian.AppendUint16(nil, uint16(n))
	mac := hmac.New(sha256.New, server[64:96])
	mac.Write(l)
	mac.Write(kc)
	mac.Write(md)
	tag := mac.Sum(nil)
	block, err := aes.NewCipher(server[0:32])
	if err != nil {
		panic(err)
	}
	pt := append(append([]byte{}, kc...), md...)
	ct := make([]byte, len(pt))
	cipher.NewCTR(block, tag[:16]).XORKeyStream(ct, pt)
	return append(append(tag, ct...), l...)
}

func seqBytes(n int, start byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func TestV2WrapMatchesModel(t *testing.T) {
	var raw [V2ServerKeySize]byte
	copy(raw[:], seqBytes(V2ServerKeySize, 0x80))
	srv, err := GenerateV2ServerKey(bytes.NewReader(raw[:]))
	if err != nil {
		t.Fatal(err)
	}
	kcBytes := seqBytes(StaticKeySize, 7)
	for _, md := range [][]byte{
		V2TimestampMetadata(time.Unix(1700000000, 0)),
		V2UserMetadata(nil),
		V2UserMetadata([]byte("x")),
		V2UserMetadata(bytes.Repeat([]byte{0xa5}, V2MaxMetadataLen-1)),
		{0x42, 1, 2, 3}, // unknown types are wrapped as given
	} {
		cli, err := NewV2ClientKey(bytes.NewReader(kcBytes), srv, md)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(cli.Key[:], kcBytes) {
			t.Fatalf("Kc not read from rand")
		}
		if want := v2WrapModel(&raw, kcBytes, md); !bytes.Equal(cli.WKc, want) {
			t.Fatalf("metadata %x...: WKc =\n%x\nmodel\n%x", md[:min(len(md), 9)], cli.WKc, want)
		}
		kc, got, err := srv.UnwrapClientKey(cli.WKc)
		if err != nil || *kc != cli.Key || !bytes.Equal(got, md) {
			t.Fatalf("UnwrapClientKey = %v, metadata %x, Kc match %v", err, got, kc != nil && *kc == cli.Key)
		}
	}
	// The known answer pins the layout even if model and code agreed on a
	// mistake: L || tag prefix for the timestamp case.
	cli, _ := NewV2ClientKey(bytes.NewReader(kcBytes), srv, V2TimestampMetadata(time.Unix(1700000000, 0)))
	if got := cli.WKc[len(cli.WKc)-2:]; !bytes.Equal(got, []byte{0x01, 0x2b}) {
		t.Errorf("WKc length field = %x, want 012b (299)", got)
	}
}

func TestV2RoundTrip(t *testing.T) {
	srv, err := GenerateV2ServerKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseV2ServerKey(srv.Marshal())
	if err != nil || again.raw != srv.raw {
		t.Fatalf("ParseV2ServerKey(Marshal()) = %v, equal %v", err, err == nil && again.raw == srv.raw)
	}

	before := time.Now().Unix()
	cli, err := NewV2ClientKey(rand.Reader, srv, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, md, err := again.UnwrapClientKey(cli.WKc)
	if err != nil || *kc != cli.Key {
		t.Fatalf("UnwrapClientKey = %v", err)
	}
	ts, ok := V2MetadataTime(md)
	if !ok || ts.Unix() < before || ts.Unix() > time.Now().Unix() {
		t.Errorf("default metadata %x is not a timestamp of now", md)
	}

	parsed, err := ParseV2ClientKey(cli.Marshal())
	if err != nil || parsed.Key != cli.Key || !bytes.Equal(parsed.WKc, cli.WKc) {
		t.Fatalf("ParseV2ClientKey(Marshal()) = %v", err)
	}

	// Longest metadata fits exactly in 1024 bytes; one more is refused.
	long := V2UserMetadata(bytes.Repeat([]byte{'m'}, V2MaxMetadataLen-1))
	cli, err = NewV2ClientKey(rand.Reader, srv, long)
	if err != nil || len(cli.WKc) != V2MaxWKcLen {
		t.Fatalf("NewV2ClientKey(734-byte metadata) = %v, WKc %d bytes", err, len(cli.WKc))
	}
	if _, md, err := srv.UnwrapClientKey(cli.WKc); err != nil || !bytes.Equal(md, long) {
		t.Fatalf("UnwrapClientKey(1024-byte WKc) = %v", err)
	}
	if _, err := NewV2ClientKey(rand.Reader, srv, append(long, 'x')); !errors.Is(err, ErrV2MetadataTooLong) {
		t.Errorf("NewV2ClientKey(735-byte metadata) = %v, want ErrV2MetadataTooLong", err)
	}
	if _, err := NewV2ClientKey(rand.Reader, nil, nil); !errors.Is(err, ErrNilKey) {
		t.Errorf("NewV2ClientKey(nil server) = %v, want ErrNilKey", err)
	}
	if _, err := NewV2ClientKey(iotest.ErrReader(errors.New("no entropy")), srv, nil); err == nil {
		t.Error("NewV2ClientKey with a failing reader succeeded")
	}
	if _, err := GenerateV2ServerKey(iotest.ErrReader(errors.New("no entropy"))); err == nil {
		t.Error("GenerateV2ServerKey with a failing reader succeeded")
	}

	// A key made under another server key does not unwrap.
	other, _ := GenerateV2ServerKey(rand.Reader)
	if _, _, err := other.UnwrapClientKey(cli.WKc); err != ErrWKcAuth {
		t.Errorf("UnwrapClientKey with another server key = %v, want ErrWKcAuth", err)
	}
}

func TestUnwrapClientKeyTamper(t *testing.T) {
	srv, cli := readV2Fixtures(t)
	for i := range cli.WKc {
		for _, bit := range []byte{0x01, 0x80} {
			w := bytes.Clone(cli.WKc)
			w[i] ^= bit
			kc, md, err := srv.UnwrapClientKey(w)
			if err == nil || kc != nil || md != nil {
				t.Fatalf("byte %d ^ %#x: UnwrapClientKey = %v, want an error and no key", i, bit, err)
			}
			want := ErrWKcAuth
			if i >= len(w)-2 {
				want = ErrWKcLength
			}
			if err != want {
				t.Fatalf("byte %d ^ %#x: err = %v, want %v", i, bit, err, want)
			}
		}
	}
	// Truncated, extended and with the length field fixed up: still refused.
	for _, w := range [][]byte{
		nil,
		cli.WKc[:1],
		cli.WKc[:len(cli.WKc)-1],
		append(bytes.Clone(cli.WKc), 0),
		fixLen(bytes.Clone(cli.WKc[:len(cli.WKc)-3])),
		fixLen(append(bytes.Clone(cli.WKc[:len(cli.WKc)-2]), 0, 0, 0)),
		fixLen(make([]byte, V2MinWKcLen)),
		fixLen(make([]byte, V2MaxWKcLen+1)),
	} {
		if _, _, err := srv.UnwrapClientKey(w); err == nil {
			t.Errorf("UnwrapClientKey(%d bytes) succeeded", len(w))
		}
	}
}

// fixLen rewrites the trailing length field of a WKc to its length.
func fixLen(w []byte) []byte {
	if len(w) >= 2 {
		binary.BigEndian.PutUint16(w[len(w)-2:], uint16(len(w)))
	}
	return w
}

func TestUnwrapClientKeyNoAllocsOnFailure(t *testing.T) {
	srv, cli := readV2Fixtures(t)
	forged := bytes.Clone(cli.WKc)
	forged[40] ^= 1
	short := cli.WKc[:10]
	allocs := testing.AllocsPerRun(100, func() {
		if _, _, err := srv.UnwrapClientKey(forged); err != ErrWKcAuth {
			t.Fatal(err)
		}
		if _, _, err := srv.UnwrapClientKey(short); err != ErrWKcLength {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("rejecting a WKc allocates %v times", allocs)
	}
	// Success allocates Kc and metadata only.
	allocs = testing.AllocsPerRun(100, func() {
		if _, _, err := srv.UnwrapClientKey(cli.WKc); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 2 {
		t.Errorf("UnwrapClientKey allocates %v times, want <= 2", allocs)
	}
}

func TestParseV2KeyErrors(t *testing.T) {
	srvData, cliData := readFile(t, v2ServerFixture), readFile(t, v2ClientFixture)
	pemOf := func(typ string, n int) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: make([]byte, n)})
	}
	for _, tc := range []struct {
		name    string
		data    []byte
		client  bool
		want    error
		errText string
	}{
		{"empty", nil, false, ErrV2KeyPEM, "no -----BEGIN OpenVPN tls-crypt-v2 server key----- line"},
		{"client key given to server", cliData, false, ErrV2KeyPEM, `found a "OpenVPN tls-crypt-v2 client key" block`},
		{"server key given to client", srvData, true, ErrV2KeyPEM, `found a "OpenVPN tls-crypt-v2 server key" block`},
		{"static key", readFile(t, genkeyFile), false, ErrV2KeyPEM, `found a "OpenVPN Static key V1" block`},
		{"no END line", bytes.SplitAfter(srvData, []byte("\n"))[0], false, ErrV2KeyPEM, "not valid PEM"},
		{"bad base64", bytes.Replace(srvData, []byte("P5D9"), []byte("P5D*"), 1), false, ErrV2KeyPEM, "not valid PEM"},
		{"server key too short", pemOf(v2ServerPEMType, 126), false, ErrV2KeyLength, "126 bytes, want 128"},
		{"server key too long", pemOf(v2ServerPEMType, 129), false, ErrV2KeyLength, "129 bytes, want 128"},
		{"client key only Kc", pemOf(v2ClientPEMType, 256), true, ErrV2KeyLength, "256 bytes"},
		{"client key too long", pemOf(v2ClientPEMType, 256+1026), true, ErrV2KeyLength, "1282 bytes"},
		{"client WKc length mismatch", pemOf(v2ClientPEMType, 256+300), true, ErrV2KeyLength, "ends in length 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.client {
				_, err = ParseV2ClientKey(tc.data)
			} else {
				_, err = ParseV2ServerKey(tc.data)
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.errText)
			}
		})
	}

	// Text around the block, CRLF line ends and an inline <tls-crypt-v2>
	// wrapper are accepted.
	crlf := bytes.ReplaceAll(cliData, []byte("\n"), []byte("\r\n"))
	for _, d := range [][]byte{
		append([]byte("# comment\n<tls-crypt-v2>\n"), append(bytes.Clone(cliData), "</tls-crypt-v2>\n"...)...),
		crlf,
		append(bytes.Clone(srvData), cliData...), // client block after a server block
	} {
		if _, err := ParseV2ClientKey(d); err != nil {
			t.Errorf("ParseV2ClientKey(%.40q...) = %v", d, err)
		}
	}
}

func TestEarlyNegotiation(t *testing.T) {
	for _, tc := range []struct {
		pid  uint32
		want bool
	}{
		{1, false},
		{EarlyNegStart, true},
		{EarlyNegStart + 1, true},
		{0x0FFFFFFF, true},
		{0x10000001, false},
		{0x0E000001, false},
		{0xFF000001, false},
	} {
		if got := EarlyNegotiation(tc.pid); got != tc.want {
			t.Errorf("EarlyNegotiation(%#x) = %v, want %v", tc.pid, got, tc.want)
		}
	}
	want := binary.BigEndian.AppendUint16(nil, TLVTypeEarlyNegFlags)
	want = binary.BigEndian.AppendUint16(want, 2)
	want = binary.BigEndian.AppendUint16(want, EarlyNegFlagResendWKc)
	if !bytes.Equal(EarlyNegTLV, want) {
		t.Errorf("EarlyNegTLV = %x, want %x", EarlyNegTLV, want)
	}
}

// v3Packet builds a V3 reset (or WKC_V1) the way a client does: the plain
// packet tls-crypt wrapped with Kc, then WKc.
func v3Packet(t testing.TB, cli *V2ClientKey, op byte, pid uint32, payload []byte) []byte {
	t.Helper()
	plain := append([]byte{op << 3, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0}, payload...)
	wire, err := NewTLSCrypt(&cli.Key, false).Wrap(nil, plain, pid, 1700000000)
	if err != nil {
		t.Fatal(err)
	}
	return append(wire, cli.WKc...)
}

func TestSplitWKc(t *testing.T) {
	srv, cli := readV2Fixtures(t)
	reset := v3Packet(t, cli, opHardResetClientV3, EarlyNegStart+1, nil)
	wkcPkt := v3Packet(t, cli, opControlWKCV1, EarlyNegStart+2, bytes.Repeat([]byte{0x16}, 100))
	for _, pkt := range [][]byte{reset, wkcPkt} {
		wrapped, wkc, err := SplitWKc(pkt)
		if err != nil {
			t.Fatalf("SplitWKc: %v", err)
		}
		if !bytes.Equal(wkc, cli.WKc) || len(wrapped)+len(wkc) != len(pkt) || cap(wrapped) != len(wrapped) {
			t.Fatalf("SplitWKc: wrapped %d bytes (cap %d), wkc %d bytes", len(wrapped), cap(wrapped), len(wkc))
		}
		kc, _, err := srv.UnwrapClientKey(wkc)
		if err != nil {
			t.Fatal(err)
		}
		// Unwrap in place: must not touch wkc.
		plain, pid, _, err := NewTLSCrypt(kc, true).Unwrap(wrapped[:0], wrapped)
		if err != nil || !EarlyNegotiation(pid) || plain[0]>>3 != pkt[0]>>3 {
			t.Fatalf("tls-crypt unwrap with Kc: %v, pid %#x", err, pid)
		}
		if !bytes.Equal(wkc, cli.WKc) {
			t.Fatal("in-place unwrap of wrapped clobbered wkc")
		}
	}

	withLen := func(p []byte, l int) []byte {
		p = bytes.Clone(p)
		binary.BigEndian.PutUint16(p[len(p)-2:], uint16(l))
		return p
	}
	for _, tc := range []struct {
		name string
		pkt  []byte
		want error
	}{
		{"empty", nil, ErrPacketTooShort},
		{"P_CONTROL_V1", append([]byte{4 << 3}, reset[1:]...), ErrNotWKcPacket},
		{"HARD_RESET_CLIENT_V2", append([]byte{7 << 3}, reset[1:]...), ErrNotWKcPacket},
		{"opcode only", []byte{opHardResetClientV3 << 3}, ErrWKcSplit},
		{"no room for header", reset[:tlsCryptHeaderLen+V2MinWKcLen-1], ErrWKcSplit},
		{"length 0", withLen(reset, 0), ErrWKcSplit},
		{"length below minimum", withLen(reset, V2MinWKcLen-1), ErrWKcSplit},
		{"length above maximum", withLen(append(append([]byte{reset[0]}, make([]byte, 2000)...), reset[1:]...), V2MaxWKcLen+1), ErrWKcSplit},
		{"length beyond packet", withLen(reset, len(reset)), ErrWKcSplit},
		{"length eats tls-crypt header", withLen(reset, len(reset)-tlsCryptHeaderLen+1), ErrWKcSplit},
	} {
		w, k, err := SplitWKc(tc.pkt)
		if err != tc.want || w != nil || k != nil {
			t.Errorf("%s: SplitWKc = %v, want %v", tc.name, err, tc.want)
		}
	}
	// Exactly the header in front is the shortest split accepted.
	p := withLen(reset, len(reset)-tlsCryptHeaderLen)
	if w, _, err := SplitWKc(p); err != nil || len(w) != tlsCryptHeaderLen {
		t.Errorf("header-only split = %v, %d bytes", err, len(w))
	}
	// Key id bits do not matter.
	if _, _, err := SplitWKc(append([]byte{opControlWKCV1<<3 | 3}, wkcPkt[1:]...)); err != nil {
		t.Errorf("WKC_V1 with key id 3: %v", err)
	}
}

func TestV2ConcurrentUnwrap(t *testing.T) {
	srv, cli := readV2Fixtures(t)
	done := make(chan error)
	for range 8 {
		go func() {
			for range 200 {
				kc, _, err := srv.UnwrapClientKey(cli.WKc)
				if err != nil || *kc != cli.Key {
					done <- errors.New("concurrent unwrap failed")
					return
				}
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func BenchmarkUnwrapClientKey(b *testing.B) {
	srv, cli := readV2Fixtures(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := srv.UnwrapClientKey(cli.WKc); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzUnwrapClientKey(f *testing.F) {
	srv, cli := readV2Fixtures(f)
	f.Add(cli.WKc)
	f.Add(bytes.Clone(cli.WKc[:V2MinWKcLen]))
	f.Add([]byte{})
	f.Add([]byte{0x01, 0x22})
	user, err := ParseV2ClientKey(readFile(f, v2ClientUserFixture))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(user.WKc)
	f.Fuzz(func(t *testing.T, wkc []byte) {
		orig := bytes.Clone(wkc)
		kc, md, err := srv.UnwrapClientKey(wkc)
		if !bytes.Equal(wkc, orig) {
			t.Fatal("UnwrapClientKey modified its input")
		}
		if err != nil {
			if kc != nil || md != nil {
				t.Fatal("error with a key or metadata")
			}
			if err != ErrWKcLength && err != ErrWKcAuth {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		// Anything accepted must be exactly what wrapping its contents
		// gives: the tag binds length, Kc and metadata.
		if len(md) > V2MaxMetadataLen || !bytes.Equal(srv.wrapClientKey(kc, md), wkc) {
			t.Fatalf("accepted WKc %x does not re-wrap to itself", wkc)
		}
	})
}

func FuzzSplitWKc(f *testing.F) {
	_, cli := readV2Fixtures(f)
	f.Add(v3Packet(f, cli, opHardResetClientV3, EarlyNegStart+1, nil))
	f.Add(v3Packet(f, cli, opControlWKCV1, EarlyNegStart+2, []byte{0x16, 3, 1}))
	f.Add([]byte{opHardResetClientV3 << 3})
	f.Add([]byte{})
	if data, err := os.ReadFile(v2PacketsFixture); err == nil {
		for _, p := range parseHexLines(f, data) {
			f.Add(p)
		}
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		wrapped, wkc, err := SplitWKc(pkt)
		if err != nil {
			if wrapped != nil || wkc != nil {
				t.Fatal("error with results")
			}
			return
		}
		op := pkt[0] >> 3
		if op != opHardResetClientV3 && op != opControlWKCV1 {
			t.Fatalf("accepted opcode %d", op)
		}
		if len(wrapped) < tlsCryptHeaderLen || len(wkc) < V2MinWKcLen || len(wkc) > V2MaxWKcLen ||
			int(binary.BigEndian.Uint16(wkc[len(wkc)-2:])) != len(wkc) || cap(wrapped) != len(wrapped) ||
			!bytes.Equal(append(bytes.Clone(wrapped), wkc...), pkt) {
			t.Fatalf("bad split of %x: wrapped %d, wkc %d", pkt, len(wrapped), len(wkc))
		}
	})
}
