package nat

import (
	"errors"

	"github.com/cvpn/cvpn/tunnel/ippkt"
)

// Sentinels. Outbound and Inbound return an error that wraps one of them
// (test with errors.Is) and names the reason for the drop. Those errors are
// built once, so dropping a packet allocates nothing, and err.Error() is a
// fixed string fit for a drop-counter label.
var (
	// ErrMalformed: the packet is not a well-formed IPv4 or IPv6 packet
	// (ippkt.Parse refuses it), or its transport header is truncated, or it
	// is an IPv6 UDP datagram without a checksum (RFC 8200 §8.1).
	ErrMalformed = errors.New("nat: malformed packet")
	// ErrUnsupported: well formed, but not something the NAT translates
	// (another protocol, an ICMP or ICMPv6 type other than echo and the
	// errors it translates, an IPv6 packet with a Routing header still to
	// visit waypoints or from or to an IPv4-mapped address).
	ErrUnsupported = errors.New("nat: unsupported packet")
	// ErrClientQuota: a new mapping is needed, the client already holds
	// Config.MaxPerClient and none of them may be recycled yet.
	ErrClientQuota = errors.New("nat: client at its mapping quota")
	// ErrTableFull: a new mapping is needed, Config.MaxEntries are live and
	// none of the client's own may be recycled.
	ErrTableFull = errors.New("nat: mapping table full")
	// ErrNoFreePort: a new mapping is needed and every port (or ICMP
	// identifier) toward that destination address, port and protocol is taken.
	ErrNoFreePort = errors.New("nat: no free port toward destination")
	// ErrNoMapping: an inbound packet (or an outbound ICMP error) matches no
	// live mapping, or is not addressed to the SNAT address.
	ErrNoMapping = errors.New("nat: no mapping")
	// ErrConfig: New or Pair was given an unusable Config or address.
	ErrConfig = errors.New("nat: invalid config")
	// ErrNoIPv4, ErrNoIPv6: the packet is of a family the table does not
	// translate (Config.Addr or Config.Addr6 is zero). They wrap no other
	// sentinel: the caller tells them apart, as a packet it should not have
	// handed to the NAT (IPv6 traffic routed without NAT, say).
	ErrNoIPv4 = errors.New("nat: no IPv4 SNAT address")
	ErrNoIPv6 = errors.New("nat: no IPv6 SNAT address")
)

// dropError is a reason for a drop, specific but prebuilt, wrapping a sentinel.
type dropError struct {
	msg  string
	kind error
}

func (e *dropError) Error() string { return e.msg }
func (e *dropError) Unwrap() error { return e.kind }

var (
	errShortIPv4      = &dropError{"nat: IPv4 header truncated", ErrMalformed}
	errNotIPv4        = &dropError{"nat: IP version is neither 4 nor 6", ErrMalformed}
	errBadIHL         = &dropError{"nat: IPv4 header length below 20", ErrMalformed}
	errBadTotalLength = &dropError{"nat: IPv4 total length disagrees with packet", ErrMalformed}
	errShortTCP       = &dropError{"nat: TCP header truncated", ErrMalformed}
	errShortUDP       = &dropError{"nat: UDP header truncated", ErrMalformed}
	errShortICMP      = &dropError{"nat: ICMP header truncated", ErrMalformed}
	errShortEmbedded  = &dropError{"nat: packet embedded in ICMP error truncated", ErrMalformed}
	errProto          = &dropError{"nat: protocol is not TCP, UDP or ICMP", ErrUnsupported}
	errICMPType       = &dropError{"nat: ICMP type not translated", ErrUnsupported}
	errEmbeddedProto  = &dropError{"nat: ICMP error embeds a packet of a protocol not translated", ErrUnsupported}
	errEmbeddedFrag   = &dropError{"nat: ICMP error embeds a non-first fragment", ErrUnsupported}
	errNotSNATAddr    = &dropError{"nat: inbound packet not addressed to the SNAT address", ErrNoMapping}
	errNoInbound      = &dropError{"nat: inbound packet matches no mapping", ErrNoMapping}
	errNoFragment     = &dropError{"nat: inbound fragment follows no translated first fragment", ErrNoMapping}
	errNoEmbedded     = &dropError{"nat: ICMP error embeds a packet of no mapping", ErrNoMapping}
	errUDPNoChecksum6 = &dropError{"nat: IPv6 UDP checksum is zero", ErrMalformed}
	errV4Mapped       = &dropError{"nat: IPv6 packet from or to an IPv4-mapped address", ErrUnsupported}
	errEmbeddedFamily = &dropError{"nat: ICMPv6 error embeds a packet that is not IPv6", ErrMalformed}
)

// parseErrors6 and embeddedErrors6 hold one prebuilt error for each reason
// ippkt.Parse and ippkt.ParseEmbedded give to refuse an IPv6 packet, named
// by the reason's label; ippkt.RoutingHeader and ippkt.Jumbogram are well
// formed, just not translated.
var parseErrors6, embeddedErrors6 = func() (p, e [256]*dropError) {
	unknown := &dropError{"nat: IPv6 header: unknown reason", ErrMalformed}
	for i := range p {
		r := ippkt.Reason(i)
		if r != ippkt.OK && r.String() == ippkt.Reason(255).String() {
			p[i], e[i] = unknown, unknown
			continue
		}
		kind := ErrMalformed
		if r == ippkt.RoutingHeader || r == ippkt.Jumbogram {
			kind = ErrUnsupported
		}
		p[i] = &dropError{"nat: IPv6 header: " + r.String(), kind}
		e[i] = &dropError{"nat: packet embedded in ICMPv6 error: " + r.String(), kind}
	}
	return p, e
}()

func parseError6(r ippkt.Reason) error    { return parseErrors6[r] }
func embeddedError6(r ippkt.Reason) error { return embeddedErrors6[r] }
