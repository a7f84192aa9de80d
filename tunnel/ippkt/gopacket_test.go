package ippkt

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// The differential model: gopacket's decoders, layer by layer, walking the same six extension
// headers. gopacket refuses a few things Parse takes (a payload length of 0, Hop-by-Hop
// options it cannot parse, IPv4 options it cannot parse) and takes some Parse refuses (the
// caps, the fragment rules, Hop-by-Hop later in the chain through the skipper, routing with
// segments left); where both accept they must agree on everything Info says.

type truncFeedback struct{ truncated bool }

func (f *truncFeedback) SetTruncated() { f.truncated = true }

// oracle6 walks pkt with gopacket. ok is false when gopacket refuses it or finds it truncated.
func oracle6(pkt []byte) (info Info, ok bool) {
	if len(pkt) < IPv6HeaderLen {
		return Info{}, false
	}
	var ip6 layers.IPv6
	fb := &truncFeedback{}
	err := ip6.DecodeFromBytes(pkt, fb)
	if ip6.Version != 6 {
		return Info{}, false
	}
	info = Info{Src: addr16(ip6.SrcIP), Dst: addr16(ip6.DstIP), Version: 6}
	data, nh := ip6.Payload, ip6.NextHeader
	if nh == layers.IPProtocolIPv6HopByHop {
		// gopacket v1.1.19 compares the payload length with what is left after the Hop-by-Hop
		// header, so it calls every such packet truncated: measure here, decode with it.
		if ip6.Length == 0 || IPv6HeaderLen+int(ip6.Length) > len(pkt) {
			return Info{}, false
		}
		var h layers.IPv6HopByHop
		fb.truncated = false
		if err := h.DecodeFromBytes(pkt[IPv6HeaderLen:IPv6HeaderLen+int(ip6.Length)], fb); err != nil {
			return Info{}, false
		}
		data, nh = h.Payload, h.NextHeader
		info.Extensions++
	} else if err != nil || fb.truncated {
		return Info{}, false
	}
	offset := func(b []byte) int { return cap(pkt) - cap(b) }
	info.End = offset(data) + len(data)
	for {
		switch nh {
		case layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Routing, layers.IPProtocolIPv6Destination:
			var s layers.IPv6ExtensionSkipper
			if err := s.DecodeFromBytes(data, fb); err != nil || fb.truncated {
				return Info{}, false
			}
			nh, data = s.NextHeader, s.Payload
		case layers.IPProtocolIPv6Fragment:
			p := gopacket.NewPacket(data, layers.LayerTypeIPv6Fragment, gopacket.NoCopy)
			l, _ := p.Layer(layers.LayerTypeIPv6Fragment).(*layers.IPv6Fragment)
			if l == nil {
				return Info{}, false
			}
			info.Extensions++
			info.FragOffset, info.FragID = l.FragmentOffset, l.Identification
			if l.FragmentOffset != 0 {
				info.Frag, info.Proto = LaterFragment, uint8(l.NextHeader)
				return info, true
			}
			if l.MoreFragments {
				info.Frag = FirstFragment
			}
			nh, data = l.NextHeader, l.Payload
			continue
		case layers.IPProtocolAH:
			p := gopacket.NewPacket(data, layers.LayerTypeIPSecAH, gopacket.NoCopy)
			l, _ := p.Layer(layers.LayerTypeIPSecAH).(*layers.IPSecAH)
			if l == nil {
				return Info{}, false
			}
			nh, data = l.NextHeader, l.Payload
		default:
			info.Proto, info.Transport = uint8(nh), offset(data)
			return info, true
		}
		info.Extensions++
	}
}

func addr16(b []byte) netip.Addr { return netip.AddrFrom16([16]byte(b)) }

// oracle4 decodes pkt with gopacket's IPv4 layer.
func oracle4(pkt []byte) (info Info, ok bool) {
	var ip4 layers.IPv4
	fb := &truncFeedback{}
	if len(pkt) < 20 || binary.BigEndian.Uint16(pkt[2:]) == 0 { // gopacket reads 0 as "the whole slice" (TSO)
		return Info{}, false
	}
	if err := ip4.DecodeFromBytes(pkt, fb); err != nil || fb.truncated || ip4.Version != 4 {
		return Info{}, false
	}
	info = Info{Src: netip.AddrFrom4([4]byte(ip4.SrcIP)), Dst: netip.AddrFrom4([4]byte(ip4.DstIP)), Version: 4,
		End: int(ip4.Length), Transport: int(ip4.IHL) * 4, Proto: uint8(ip4.Protocol), FragOffset: ip4.FragOffset, FragID: uint32(ip4.Id)}
	switch {
	case ip4.FragOffset != 0:
		info.Frag, info.Transport = LaterFragment, 0
	case ip4.Flags&layers.IPv4MoreFragments != 0:
		info.Frag = FirstFragment
	}
	return info, true
}

// compareOracle fails t when Parse and gopacket both accept pkt but disagree, and reports
// whether each accepted it.
func compareOracle(t testing.TB, pkt []byte) (ours Reason, theirsOK bool) {
	got, r := Parse(pkt)
	var want Info
	switch {
	case len(pkt) > 0 && pkt[0]>>4 == 6:
		want, theirsOK = oracle6(pkt)
	case len(pkt) > 0 && pkt[0]>>4 == 4:
		want, theirsOK = oracle4(pkt)
	}
	if r == OK && theirsOK {
		if got != want {
			t.Fatalf("Parse and gopacket disagree on % x:\n parse    %+v\n gopacket %+v", pkt, got, want)
		}
	}
	return r, theirsOK
}

// randomChain is an extension-header chain as RFC 8200 §4.1 recommends it, in random sizes:
// Hop-by-Hop, Destination Options, Routing (segments left 0), Fragment, AH, Destination
// Options, each present or not.
func randomChain(rng *rand.Rand, frag ext) []ext {
	var c []ext
	if rng.IntN(2) == 0 {
		c = append(c, hopByHop(1+rng.IntN(3)))
	}
	if rng.IntN(3) == 0 {
		c = append(c, destOpts(1+rng.IntN(3)))
	}
	if rng.IntN(3) == 0 {
		c = append(c, routing(0, rng.IntN(4)))
	}
	if frag.b != nil {
		c = append(c, frag)
	}
	if rng.IntN(3) == 0 {
		c = append(c, authHeader(1+2*rng.IntN(3))) // a multiple of 8 bytes in IPv6 (RFC 4302 §2.2)
	}
	if rng.IntN(2) == 0 {
		c = append(c, destOpts(1+rng.IntN(3)))
	}
	return c
}

var upperLayers = []uint8{ProtoTCP, ProtoUDP, ProtoICMPv6, ProtoESP, ProtoNoNext, 132, 253}

// TestParseAgainstGopacket: random well-formed chains are accepted by both and agree; cut,
// shortened and corrupted versions of them agree wherever both accept, and Parse never
// accepts a packet gopacket finds truncated.
func TestParseAgainstGopacket(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var accepted, mutatedBoth int
	for n := range 3000 {
		var frag ext
		switch rng.IntN(4) {
		case 0:
			frag = fragment(0, true, rng.Uint32())
		case 1:
			frag = fragment(uint16(1+rng.IntN(100)), rng.IntN(2) == 0, rng.Uint32())
		case 2:
			frag = fragment(0, false, rng.Uint32())
		}
		proto := upperLayers[rng.IntN(len(upperLayers))]
		l4 := make([]byte, 8*(3+rng.IntN(20)))
		for i := range l4 {
			l4[i] = byte(rng.Uint32())
		}
		pkt := packet6(client6, server6, randomChain(rng, frag), proto, l4)
		if r, ok := compareOracle(t, pkt); r != OK || !ok {
			t.Fatalf("packet %d: well-formed chain refused: parse %v, gopacket ok %v: % x", n, r, ok, pkt)
		}
		accepted++
		// Mutations: cut the bytes short, shorten the payload length, flip a header byte.
		for range 4 {
			m := clone(pkt)
			switch rng.IntN(3) {
			case 0:
				m = m[:rng.IntN(len(m)+1)]
			case 1:
				binary.BigEndian.PutUint16(m[4:], uint16(rng.IntN(len(m)-39)))
			case 2:
				m[rng.IntN(min(len(m), 200))] = byte(rng.Uint32())
			}
			r, ok := compareOracle(t, m)
			if r == OK && ok {
				mutatedBoth++
			}
			if r == OK && !ok && len(m) >= 40 && binary.BigEndian.Uint16(m[4:]) != 0 && m[0]>>4 == 6 {
				// Parse skips options by length; gopacket reads Hop-by-Hop options, so a
				// corrupted option is the one thing it may refuse that Parse takes.
				if m[6] != ProtoHopByHop {
					t.Fatalf("Parse accepts what gopacket refuses: % x", m)
				}
			}
		}
	}
	t.Logf("%d well-formed packets agree; %d mutated packets both accepted agree", accepted, mutatedBoth)
	if mutatedBoth < 1000 {
		t.Fatalf("only %d mutated packets compared", mutatedBoth)
	}
}

// TestParse4AgainstGopacket: IPv4 with options and fragment fields, whole and cut.
func TestParse4AgainstGopacket(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for range 2000 {
		l4 := make([]byte, rng.IntN(64))
		frag := uint16(rng.IntN(0x10000)) &^ 0x8000
		pkt := packet4(client4, server4, rng.IntN(11), uint8(rng.Uint32()), frag, l4)
		if r, ok := compareOracle(t, pkt); r != OK || !ok {
			t.Fatalf("refused: %v %v % x", r, ok, pkt)
		}
		cut := pkt[:rng.IntN(len(pkt)+1)]
		if r, ok := compareOracle(t, cut); r == OK && !ok && len(cut) >= 20 {
			t.Fatalf("Parse accepts what gopacket refuses: % x", cut)
		}
	}
}
