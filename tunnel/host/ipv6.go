package host

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cvpn/cvpn/ippool"
)

// maxPeerIDs bounds an address pool's indexes: each is a P_DATA_V2 peer-id, of 24 bits.
const maxPeerIDs = 1 << 24

// checkFamilies checks the addresses of cfg that need no kernel to check, completes
// Client6Count, and says which families flow through the tunnel.
func checkFamilies(cfg *Config) (families, error) {
	f := families{v4: cfg.SNAT.IsValid(), v6: cfg.Client6.IsValid()}
	if f.v4 && !cfg.SNAT.Is4() {
		return f, &Error{Op: "target_network.snat_address", Err: fmt.Errorf("%s is not an IPv4 address", cfg.SNAT),
			Fix: "IPv6 traffic is source-NATed to target_network.snat_ipv6_address"}
	}
	if f.v6 {
		b := cfg.Client6
		if !b.Addr().Is6() || b.Addr().Is4In6() || b.Masked() != b || b.Bits() < ippool.MinPrefixBits6 || b.Bits() > ippool.MaxPrefixBits6 {
			return f, &Error{Op: "client_ipv6_cidr_block", Err: fmt.Errorf("%s is not an IPv6 block of /%d to /%d with no host bits set", b, ippool.MinPrefixBits6, ippool.MaxPrefixBits6)}
		}
		// An IPv6-only pool indexes up to ippool.MaxSize6 addresses, a dual-stack one as many
		// as its IPv4 block has, up to the 24 bits of a peer-id.
		most, bound := ippool.MaxSize6, maxPeerIDs
		if bits := 128 - b.Bits(); bits < 24 {
			most, bound = min(most, 1<<bits), 1<<bits
		}
		switch {
		case cfg.Client6Count == 0:
			cfg.Client6Count = most
		case cfg.Client6Count < 0 || cfg.Client6Count > bound:
			return f, &Error{Op: "client_ipv6_cidr_block", Err: fmt.Errorf("%d addresses of %s indexed, want 1 to %d", cfg.Client6Count, b, bound)}
		}
	}
	if cfg.SNAT6.IsValid() {
		switch {
		case !cfg.SNAT6.Is6() || cfg.SNAT6.Is4In6():
			return f, &Error{Op: "target_network.snat_ipv6_address", Err: fmt.Errorf("%s is not an IPv6 address", cfg.SNAT6),
				Fix: "IPv4 traffic is source-NATed to target_network.snat_address"}
		case !f.v6:
			return f, &Error{Op: "target_network.snat_ipv6_address", Err: errors.New("set without client_ipv6_cidr_block"),
				Fix: "IPv6 traffic needs client_ipv6_cidr_block"}
		case cfg.Client6.Contains(cfg.SNAT6):
			return f, &Error{Op: "target_network.snat_ipv6_address", Err: fmt.Errorf("%s is inside client_ipv6_cidr_block %s", cfg.SNAT6, cfg.Client6),
				Fix: "use a free address of the target interface's subnet outside the client block"}
		}
	}
	if !f.v4 && !f.v6 {
		return f, &Error{Op: "host setup", Err: errors.New("neither IPv4 (target_network.snat_address) nor IPv6 (client_ipv6_cidr_block) traffic is configured")}
	}
	return f, nil
}

// clientRange6 is the client addresses of routed IPv6 mode that get proxy NDP entries: the
// pool's indexes 2..count-1 (index 0 is the block's subnet-router anycast address and 1 the
// tunnel gateway, which ippool never leases), first..first+n-1.
type clientRange6 struct {
	first netip.Addr
	n     int
}

func newClientRange6(block netip.Prefix, count int) clientRange6 {
	return clientRange6{first: addAddr6(block.Addr(), 2), n: max(count-2, 0)}
}

// at is the i-th client address, 0 <= i < n.
func (r clientRange6) at(i int) netip.Addr { return addAddr6(r.first, uint64(i)) }

// contains reports whether a is one of the range's addresses.
func (r clientRange6) contains(a netip.Addr) bool {
	if !a.Is6() || a.Zone() != "" {
		return false
	}
	f, b := r.first.As16(), a.As16()
	if [8]byte(f[:8]) != [8]byte(b[:8]) {
		return false
	}
	off := binary.BigEndian.Uint64(b[8:]) - binary.BigEndian.Uint64(f[8:])
	return binary.BigEndian.Uint64(b[8:]) >= binary.BigEndian.Uint64(f[8:]) && off < uint64(r.n)
}

// addAddr6 is a+i within a's /64 (client blocks are /64 or longer, so the sum never leaves it).
func addAddr6(a netip.Addr, i uint64) netip.Addr {
	b := a.As16()
	binary.BigEndian.PutUint64(b[8:], binary.BigEndian.Uint64(b[8:])+i)
	return netip.AddrFrom16(b)
}
