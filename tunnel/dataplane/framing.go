package dataplane

import (
	"strings"

	"github.com/cvpn/cvpn/tls/keymethod"
)

// Framing is the compression framing a client puts on data-channel payloads. cvpn never
// compresses; it only removes and adds the framing byte so that clients configured with
// compression options still pass traffic (comp.h, compstub.c, lzo.c).
type Framing uint8

const (
	frameNone   Framing = iota // no compression option: no framing byte
	frameLZO                   // comp-lzo: 0xFA prefix on uncompressed payloads
	frameStub                  // compress (stub): first byte moved to the end, 0xFB in front
	frameStubV2                // compress stub-v2 / lz4-v2: no prefix unless the payload starts with 0x50
)

// Framing bytes.
const (
	lzoNoCompress     = 0xFA
	stubSwap          = 0xFB
	stubV2Escape      = 0x50
	stubV2NoCompress  = 0x00
	minPayloadForSwap = 2
)

// PushOption is what the server pushes so the client keeps (or switches to) this framing.
func (f Framing) PushOption() string {
	switch f {
	case frameLZO:
		return "comp-lzo no"
	case frameStub:
		return "compress"
	case frameStubV2:
		return "compress stub-v2"
	}
	return ""
}

func (f Framing) String() string {
	if f == frameNone {
		return "none"
	}
	return f.PushOption()
}

// ChooseFraming picks the framing for a client from its options string and peer-info, as OpenVPN's
// `compress migrate` does: a client with any compression option (its OCC string then carries
// ",comp-lzo") is moved to stub-v2 framing when it supports it, else to comp-lzo no. A client with
// no compression option gets none.
func ChooseFraming(options string, peer *keymethod.PeerInfo) Framing {
	if !strings.Contains(options+",", ",comp-lzo,") {
		return frameNone
	}
	if peer.CompStubV2 {
		return frameStubV2
	}
	if peer.CompStub {
		return frameStub
	}
	return frameLZO
}

// strip removes the framing from a received payload in place. It reports false for a compressed
// payload, which cvpn refuses rather than decompresses.
func (f Framing) strip(pt []byte) ([]byte, bool) {
	switch f {
	case frameLZO:
		if len(pt) < 1 || pt[0] != lzoNoCompress {
			return nil, false
		}
		return pt[1:], true
	case frameStub:
		if len(pt) < minPayloadForSwap || pt[0] != stubSwap {
			return nil, false
		}
		pt[0] = pt[len(pt)-1]
		return pt[:len(pt)-1], true
	case frameStubV2:
		if len(pt) > 0 && pt[0] == stubV2Escape {
			if len(pt) < 2 || pt[1] != stubV2NoCompress {
				return nil, false
			}
			return pt[2:], true
		}
	}
	return pt, true
}

// add frames buf[off:off+n] in place, using the headroom before off and one byte of tail room,
// and returns the framed payload's new offset and length.
func (f Framing) add(buf []byte, off, n int) (int, int) {
	switch f {
	case frameLZO:
		buf[off-1] = lzoNoCompress
		return off - 1, n + 1
	case frameStub:
		if n == 0 {
			return off, n
		}
		buf[off+n] = buf[off]
		buf[off] = stubSwap
		return off, n + 1
	case frameStubV2:
		if n > 0 && buf[off] == stubV2Escape {
			buf[off-2], buf[off-1] = stubV2Escape, stubV2NoCompress
			return off - 2, n + 2
		}
	}
	return off, n
}
