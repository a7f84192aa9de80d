package keymethod

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}

func sampleClient() ClientMessage {
	var m ClientMessage
	fill(m.PreMaster[:], 0xaa)
	fill(m.Random1[:], 0xbb)
	fill(m.Random2[:], 0xcc)
	m.Options = "V4,x"
	m.Username = "u"
	m.Password = ""
	m.HasUserPass = true
	m.PeerInfo = "IV_VER=2.6.14\n"
	return m
}

// sampleClientHex is sampleClient() encoded by hand from protocol §6.1.
var sampleClientHex = "00000000" + "02" +
	strings.Repeat("aa", 48) + strings.Repeat("bb", 32) + strings.Repeat("cc", 32) +
	"0005" + "56342c78" + "00" + // "V4,x\0"
	"0002" + "75" + "00" + // username "u\0"
	"0001" + "00" + // password present but empty
	"000f" + "49565f5645523d322e362e31340a" + "00" // "IV_VER=2.6.14\n\0"

func TestClientKnownAnswer(t *testing.T) {
	want, _ := hex.DecodeString(sampleClientHex)
	m := sampleClient()
	if got := m.Append(nil); !bytes.Equal(got, want) {
		t.Fatalf("Append\n got %x\nwant %x", got, want)
	}
	got, err := ParseClient(want)
	if err != nil || got != m {
		t.Fatalf("ParseClient = %+v, %v\nwant %+v", got, err, m)
	}
}

func TestClientNoCredentials(t *testing.T) {
	m := sampleClient()
	m.HasUserPass, m.Username, m.Password = false, "", ""
	b := m.Append(nil)
	// options end at 5+112+7; then 00 00 00 00 for the two absent strings.
	if !bytes.Equal(b[124:128], []byte{0, 0, 0, 0}) {
		t.Fatalf("absent username/password encoded as %x", b[124:128])
	}
	got, err := ParseClient(b)
	if err != nil || got != m {
		t.Fatalf("ParseClient = %+v, %v", got, err)
	}
	// Username/password are ignored without HasUserPass.
	m2 := m
	m2.Username = "ignored"
	if !bytes.Equal(m2.Append(nil), b) {
		t.Fatal("Append wrote username without HasUserPass")
	}
}

// TestClientPrefixes: every strict prefix is ErrIncomplete, except the two
// where an old peer's message may legitimately end.
func TestClientPrefixes(t *testing.T) {
	full, _ := hex.DecodeString(sampleClientHex)
	m := sampleClient()
	afterOptions := 5 + 112 + 2 + 5
	afterPassword := afterOptions + 4 + 3
	for n := range len(full) {
		got, err := ParseClient(full[:n])
		switch n {
		case afterOptions:
			want := ClientMessage{PreMaster: m.PreMaster, Random1: m.Random1, Random2: m.Random2, Options: m.Options}
			if err != nil || got != want {
				t.Errorf("prefix %d (after options) = %+v, %v; want message without credentials", n, got, err)
			}
		case afterPassword:
			want := m
			want.PeerInfo = ""
			if err != nil || got != want {
				t.Errorf("prefix %d (after password) = %+v, %v; want message without peer-info", n, got, err)
			}
		default:
			if err != ErrIncomplete {
				t.Errorf("prefix %d of %d: err = %v, want ErrIncomplete", n, len(full), err)
			}
		}
	}
}

func TestClientErrors(t *testing.T) {
	full, _ := hex.DecodeString(sampleClientHex)
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(full)) }
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"key method 1", mutate(func(b []byte) []byte { b[4] = 1; return b }), ErrKeyMethod},
		{"key method 1 truncated", []byte{0, 0, 0, 0, 1}, ErrKeyMethod},
		{"trailing byte", append(bytes.Clone(full), 0), ErrTrailingData},
		{"options not NUL-terminated", mutate(func(b []byte) []byte { b[123] = 'y'; return b }), ErrBadString},
		{"options with NUL inside", mutate(func(b []byte) []byte { b[119] = 0; return b }), ErrBadString},
		{"options too long", mutate(func(b []byte) []byte { b[117], b[118] = 0x04, 0x01; return b[:119] }), ErrFieldTooLong},
		{"username too long", mutate(func(b []byte) []byte { b[124], b[125] = 0x10, 0x01; return b[:126] }), ErrFieldTooLong},
		{"peer-info too long", mutate(func(b []byte) []byte { b[131], b[132] = 0x40, 0x01; return b[:133] }), ErrFieldTooLong},
	} {
		_, err := ParseClient(tc.b)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	// Upper nibble of the key-method byte is flags and tolerated; the zero
	// word is ignored.
	ok := mutate(func(b []byte) []byte { b[0], b[4] = 0xff, 0xf2; return b })
	if _, err := ParseClient(ok); err != nil {
		t.Errorf("flags in key-method byte: %v", err)
	}
	// The error names the field.
	_, err := ParseClient(mutate(func(b []byte) []byte { b[124], b[125] = 0x10, 0x01; return b[:126] }))
	if err == nil || !strings.Contains(err.Error(), "username") {
		t.Errorf("error %v does not name the username", err)
	}
}

func TestLargeCredentials(t *testing.T) {
	m := sampleClient()
	m.Username = strings.Repeat("u", MaxUserPassLen-1)
	m.Password = "SCRV1:" + strings.Repeat("p", MaxUserPassLen-1-6)
	m.PeerInfo = strings.Repeat("UV_X=y\n", 2000)
	got, err := ParseClient(m.Append(nil))
	if err != nil || got != m {
		t.Fatalf("max-size fields: %v", err)
	}
}

func TestServerMessage(t *testing.T) {
	var m ServerMessage
	fill(m.Random1[:], 0x01)
	fill(m.Random2[:], 0x02)
	m.Options = "V4,y"
	want, _ := hex.DecodeString("00000000" + "02" + strings.Repeat("01", 32) + strings.Repeat("02", 32) +
		"0005" + "56342c79" + "00" + "0000" + "0000" + "0000")
	b := m.Append([]byte{0xee})
	if !bytes.Equal(b[1:], want) || b[0] != 0xee {
		t.Fatalf("Append\n got %x\nwant %x", b, want)
	}
	got, err := ParseServer(want)
	if err != nil || got != m {
		t.Fatalf("ParseServer = %+v, %v", got, err)
	}
	for n := range 5 + 64 + 7 {
		if _, err := ParseServer(want[:n]); err != ErrIncomplete {
			t.Errorf("server prefix %d: %v", n, err)
		}
	}
}

// debianPeerInfo is what a Debian OpenVPN 2.6.14 client with default options
// sends, in ssl.c:push_peer_info order.
const debianPeerInfo = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n" +
	"IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n" +
	"IV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n"

func TestParsePeerInfoDebian(t *testing.T) {
	p := ParsePeerInfo(debianPeerInfo)
	want := PeerInfo{
		Version: "2.6.14", Platform: "linux", Proto: 990,
		Ciphers: []string{"AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"},
		NCP:     2, MTU: 1600,
		TCPNL: true, LZOStub: true, CompStub: true, CompStubV2: true,
		Raw: map[string]string{
			"IV_VER": "2.6.14", "IV_PLAT": "linux", "IV_TCPNL": "1", "IV_MTU": "1600", "IV_NCP": "2",
			"IV_CIPHERS": "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305", "IV_PROTO": "990",
			"IV_LZO_STUB": "1", "IV_COMP_STUB": "1", "IV_COMP_STUBv2": "1",
		},
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got  %+v\nwant %+v", p, want)
	}
	const all = ProtoDataV2 | ProtoRequestPush | ProtoTLSKeyExport | ProtoAuthPending |
		ProtoDNS | ProtoCCExit | ProtoAuthFailTemp | ProtoDynTLSCrypt
	if p.Proto != all || p.Proto&ProtoNCPP2P != 0 {
		t.Errorf("IV_PROTO %d, want %d without NCP_P2P", p.Proto, all)
	}
}

func TestParsePeerInfoJunk(t *testing.T) {
	p := ParsePeerInfo("garbage\n=nokey\r\nIV_PROTO=abc\nIV_MTU=-5\nIV_PLAT=win\r\nIV_PLAT=mac\n" +
		"IV_LZ4=1\nIV_LZ4v2=0\nIV_LZO=1\nIV_CIPHERS=::AES-128-GCM:\nUV_EMPTY=\n\n")
	if p.Proto != 0 || p.MTU != 0 || p.Platform != "win" || !p.LZ4 || p.LZ4v2 || !p.LZO {
		t.Errorf("got %+v", p)
	}
	if !reflect.DeepEqual(p.Ciphers, []string{"AES-128-GCM"}) {
		t.Errorf("ciphers %q", p.Ciphers)
	}
	if v, ok := p.Raw["UV_EMPTY"]; !ok || v != "" || len(p.Raw) != 8 {
		t.Errorf("raw %q", p.Raw)
	}
	if p := ParsePeerInfo(""); p.Raw == nil || len(p.Raw) != 0 {
		t.Errorf("empty peer-info: %+v", p)
	}
}

func TestServerOptionsString(t *testing.T) {
	for _, tc := range []struct {
		proto, cipher string
		bits          int
		want          string
	}{
		{"UDPv4", "AES-256-GCM", 256, "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-server"},
		{"TCPv4_SERVER", "AES-128-GCM", 128, "V4,dev-type tun,link-mtu 1551,tun-mtu 1500,proto TCPv4_SERVER,cipher AES-128-GCM,auth [null-digest],keysize 128,key-method 2,tls-server"},
		{"UDPv4", "CHACHA20-POLY1305", 256, "V4,dev-type tun,link-mtu 1534,tun-mtu 1500,proto UDPv4,cipher CHACHA20-POLY1305,auth [null-digest],keysize 256,key-method 2,tls-server"},
	} {
		if got := ServerOptionsString(tc.proto, tc.cipher, tc.bits); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}

func TestSplitMessages(t *testing.T) {
	buf := []byte("PUSH_REQUEST\x00EXIT\r\n\x00\x00bad\x01msg\x00multi\nline\x00caf\xc3\xa9\x00CR_RESPONSE,YWJj\x00PUSH_RE")
	msgs, rest := SplitMessages(buf)
	if want := []string{"PUSH_REQUEST", "EXIT", "CR_RESPONSE,YWJj"}; !reflect.DeepEqual(msgs, want) {
		t.Errorf("msgs %q, want %q", msgs, want)
	}
	if string(rest) != "PUSH_RE" {
		t.Errorf("rest %q", rest)
	}
	msgs, rest = SplitMessages(append(rest, "QUEST\x00"...))
	if !reflect.DeepEqual(msgs, []string{"PUSH_REQUEST"}) || len(rest) != 0 {
		t.Errorf("continued: %q, rest %q", msgs, rest)
	}
	if msgs, rest := SplitMessages(nil); msgs != nil || len(rest) != 0 {
		t.Errorf("nil: %q %q", msgs, rest)
	}
}
