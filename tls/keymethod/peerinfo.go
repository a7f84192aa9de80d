package keymethod

import (
	"strconv"
	"strings"
)

// IV_PROTO bits a client announces in peer-info (protocol §6.3, ssl.h). Bit 0
// is reserved; bits 10-12 are OpenVPN 2.7+ and never sent by 2.6.
const (
	ProtoDataV2       = 1 << 1 // understands P_DATA_V2 and a pushed peer-id
	ProtoRequestPush  = 1 << 2 // server may send PUSH_REPLY without waiting for PUSH_REQUEST
	ProtoTLSKeyExport = 1 << 3 // can derive data keys with the TLS exporter (tls-ekm)
	ProtoAuthPending  = 1 << 4 // understands AUTH_PENDING keywords (timeout)
	ProtoNCPP2P       = 1 << 5 // peer runs p2p NCP, not pull
	ProtoDNS          = 1 << 6 // understands the "dns" option
	ProtoCCExit       = 1 << 7 // sends EXIT on the control channel; understands protocol-flags
	ProtoAuthFailTemp = 1 << 8 // understands AUTH_FAILED,TEMP
	ProtoDynTLSCrypt  = 1 << 9 // supports dynamic tls-crypt
)

// PeerInfo is the decoded client peer-info (protocol §6.3). Numeric fields are
// 0 and flags false when absent or malformed; Raw holds every KEY=VALUE line,
// including the ones decoded into fields.
type PeerInfo struct {
	Version  string   // IV_VER
	Platform string   // IV_PLAT
	Proto    uint32   // IV_PROTO bit set, see the Proto* constants
	Ciphers  []string // IV_CIPHERS, the client's data-ciphers (not the IV_NCP fallback)
	NCP      int      // IV_NCP; 2 means AES-128/256-GCM capable
	MTU      int      // IV_MTU, the largest tun-mtu the client accepts pushed

	TCPNL      bool // IV_TCPNL=1: no strict packet-id sequence over TCP
	LZOStub    bool // IV_LZO_STUB=1
	CompStub   bool // IV_COMP_STUB=1
	CompStubV2 bool // IV_COMP_STUBv2=1
	LZ4        bool // IV_LZ4=1
	LZ4v2      bool // IV_LZ4v2=1
	LZO        bool // IV_LZO=1

	Raw map[string]string
}

// ParsePeerInfo decodes newline-separated KEY=VALUE peer-info. Lines without
// '=' or with an empty key are skipped, a trailing CR is stripped, and for a
// repeated key the first occurrence wins, as OpenVPN's lookup finds it.
func ParsePeerInfo(s string) PeerInfo {
	p := PeerInfo{Raw: make(map[string]string)}
	for line := range strings.SplitSeq(s, "\n") {
		line = strings.TrimSuffix(line, "\r")
		key, value, ok := strings.Cut(line, "=")
		if !ok || key == "" {
			continue
		}
		if _, dup := p.Raw[key]; dup {
			continue
		}
		p.Raw[key] = value
		switch key {
		case "IV_VER":
			p.Version = value
		case "IV_PLAT":
			p.Platform = value
		case "IV_PROTO":
			if v, err := strconv.ParseUint(value, 10, 32); err == nil {
				p.Proto = uint32(v)
			}
		case "IV_CIPHERS":
			for c := range strings.SplitSeq(value, ":") {
				if c != "" {
					p.Ciphers = append(p.Ciphers, c)
				}
			}
		case "IV_NCP":
			p.NCP = atoi(value)
		case "IV_MTU":
			p.MTU = atoi(value)
		case "IV_TCPNL":
			p.TCPNL = value == "1"
		case "IV_LZO_STUB":
			p.LZOStub = value == "1"
		case "IV_COMP_STUB":
			p.CompStub = value == "1"
		case "IV_COMP_STUBv2":
			p.CompStubV2 = value == "1"
		case "IV_LZ4":
			p.LZ4 = value == "1"
		case "IV_LZ4v2":
			p.LZ4v2 = value == "1"
		case "IV_LZO":
			p.LZO = value == "1"
		}
	}
	return p
}

// atoi is strconv.Atoi that yields 0 for malformed or negative input.
func atoi(s string) int {
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		return 0
	}
	return v
}
