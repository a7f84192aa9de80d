package dataplane

import "github.com/cvpn/cvpn/tunnel/ippkt"

// clampMSS lowers the MSS option of a TCP SYN in pkt, parsed as info, so that tunnelled TCP
// segments plus the tunnel's own headers still fit the path without fragmentation: to p.mss for
// IPv4, and 20 bytes less for IPv6, whose header is 20 bytes longer. It rewrites in place and
// fixes the TCP checksum incrementally (ippkt.ClampMSS); anything else passes untouched.
func (p *Plane) clampMSS(pkt []byte, info *ippkt.Info) {
	mss := p.mss
	if info.Version == 6 {
		mss -= ippkt.IPv6HeaderLen - ippkt.IPv4HeaderLen
	}
	ippkt.ClampMSS(pkt, info, mss)
}
