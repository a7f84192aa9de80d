package dataplane

import (
	"bytes"
	"testing"

	"github.com/cvpn/cvpn/tls/keymethod"
)

func TestFramingRoundTrip(t *testing.T) {
	payloads := [][]byte{
		{0x45, 0, 0, 20, 1, 2, 3},
		{stubV2Escape, 1, 2, 3},
		{0x2a, 0x18},
		{7},
	}
	for _, f := range []Framing{frameNone, frameLZO, frameStub, frameStubV2} {
		for _, p := range payloads {
			buf := make([]byte, 64)
			copy(buf[16:], p)
			off, n := f.add(buf, 16, len(p))
			framed := append([]byte(nil), buf[off:off+n]...)
			got, ok := f.strip(framed)
			if !ok || !bytes.Equal(got, p) {
				t.Errorf("%v: add/strip of % x gave % x (ok %v)", f, p, got, ok)
			}
		}
	}
}

func TestFramingKnownBytes(t *testing.T) {
	ip := []byte{0x45, 0x00, 0x01}
	cases := []struct {
		f    Framing
		want []byte
	}{
		{frameNone, []byte{0x45, 0x00, 0x01}},
		{frameLZO, []byte{0xFA, 0x45, 0x00, 0x01}},
		{frameStub, []byte{0xFB, 0x00, 0x01, 0x45}},
		{frameStubV2, []byte{0x45, 0x00, 0x01}},
	}
	for _, c := range cases {
		buf := make([]byte, 32)
		copy(buf[8:], ip)
		off, n := c.f.add(buf, 8, len(ip))
		if !bytes.Equal(buf[off:off+n], c.want) {
			t.Errorf("%v framing = % x, want % x", c.f, buf[off:off+n], c.want)
		}
	}
	// Compressed payloads are refused, not passed on.
	for _, c := range []struct {
		f Framing
		p []byte
	}{
		{frameLZO, []byte{0x66, 1, 2}},
		{frameStub, []byte{0x69, 1, 2}},
		{frameStubV2, []byte{0x50, 0x01, 2}},
	} {
		if _, ok := c.f.strip(c.p); ok {
			t.Errorf("%v accepted compressed payload % x", c.f, c.p)
		}
	}
}

func TestChooseFraming(t *testing.T) {
	stock := keymethod.ParsePeerInfo("IV_VER=2.6.14\nIV_PROTO=990\nIV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n")
	old := keymethod.ParsePeerInfo("IV_VER=2.3.18\nIV_LZO_STUB=1\n")
	cases := []struct {
		opts string
		peer *keymethod.PeerInfo
		want Framing
	}{
		{"V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client", &stock, frameNone},
		{"V4,dev-type tun,link-mtu 1550,tun-mtu 1500,proto UDPv4,comp-lzo,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client", &stock, frameStubV2},
		{"V4,dev-type tun,proto UDPv4,comp-lzo,cipher BF-CBC,key-method 2,tls-client", &old, frameLZO},
	}
	for _, c := range cases {
		if got := ChooseFraming(c.opts, c.peer); got != c.want {
			t.Errorf("ChooseFraming(%q) = %v, want %v", c.opts, got, c.want)
		}
	}
}

func FuzzFramingStrip(f *testing.F) {
	f.Add([]byte{0xFA, 0x45}, uint8(1))
	f.Add([]byte{0xFB, 0x45}, uint8(2))
	f.Add([]byte{0x50, 0x00, 0x45}, uint8(3))
	f.Fuzz(func(t *testing.T, p []byte, kind uint8) {
		fr := Framing(kind % 4)
		out, ok := fr.strip(append([]byte(nil), p...))
		if ok && len(out) > len(p) {
			t.Fatalf("strip grew the payload")
		}
	})
}
