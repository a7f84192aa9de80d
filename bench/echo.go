package bench

import (
	"encoding/binary"
	"net/netip"
)

// Gateway echoes: while sessions are held idle, the load generator measures the round trip of
// each tunnel with an ICMP echo request to the session's gateway address (route-gateway, the
// server's own address in topology subnet). Both servers answer it without a sink or NAT: cvpn in
// its data plane, the stock server through its kernel's TUN interface. The request (RFC 792):
//
//	0      20     21     22         24    26         28          36
//	+------+------+------+----------+-----+----------+-----------+--------+
//	| IPv4 | type | code | checksum | id  | sequence | sent (ns) | "CVB1" |
//	+------+------+------+----------+-----+----------+-----------+--------+
//
// The identifier tells the load generator's echoes apart from anything else; sent is the
// monotonic time of sending since the run's start.
const (
	echoLen = 20 + 8 + 8 + 4
	echoID  = 0xcb01
)

// buildEcho writes an echo request from src to dst into b (at least echoLen bytes) and returns
// it.
func buildEcho(b []byte, src, dst netip.Addr, seq uint16, sent int64) []byte {
	p := b[:echoLen]
	clear(p)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], echoLen)
	p[8] = 64 // TTL
	p[9] = 1  // ICMP
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:16], s4[:])
	copy(p[16:20], d4[:])
	binary.BigEndian.PutUint16(p[10:], ^fold(sum16(p[:20])))
	icmp := p[20:]
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], echoID)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	binary.BigEndian.PutUint64(icmp[8:], uint64(sent))
	copy(icmp[16:20], magic[:])
	binary.BigEndian.PutUint16(icmp[2:], ^fold(sum16(icmp)))
	return p
}

// parseEchoReply returns the sent time of an echo reply to one of buildEcho's requests, or
// false for any other packet.
func parseEchoReply(ip []byte) (sent int64, ok bool) {
	if len(ip) < 20 || ip[0]>>4 != 4 || ip[9] != 1 {
		return 0, false
	}
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || total > len(ip) || total-ihl < 20 {
		return 0, false
	}
	icmp := ip[ihl:total]
	if icmp[0] != 0 || icmp[1] != 0 || binary.BigEndian.Uint16(icmp[4:]) != echoID || [4]byte(icmp[16:20]) != magic {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(icmp[8:])), true
}

// SourcePrefix holds the load generator's source addresses (198.18.0.0/15, RFC 2544's
// benchmarking range): far from every lab address and client CIDR.
var SourcePrefix = netip.MustParsePrefix("198.18.0.0/15")

// SourceAddrs returns n source addresses in SourcePrefix, consecutive ones in different /24s
// (512 of them, then the next host of each): a server limits handshakes per address and per
// /24 (tunnel/session's reset limiter and pending bounds), so a load generator that starts
// sessions from many networks meets those bounds as many real clients would, not as one host.
// n is at most 512*254.
func SourceAddrs(n int) []netip.Addr {
	base := SourcePrefix.Addr().As4()
	b0 := uint32(base[0])<<24 | uint32(base[1])<<16
	out := make([]netip.Addr, 0, n)
	for k := range min(n, 512*254) {
		v := b0 + uint32(k%512)<<8 + uint32(1+k/512)
		out = append(out, netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}))
	}
	return out
}
