package push

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
)

// Reply is the configuration a server pushed (protocol §10.1), gathered over
// all the messages of one reply. Options keeps every option as sent, in order;
// the fields decode the ones cvpn's client acts on or a load test reports. A
// field stays zero when its option was not pushed.
type Reply struct {
	// Options are the pushed options in order, across continuation messages,
	// without the PUSH_REPLY prefix and the push-continuation markers. Options
	// that are not decoded below stay here, as OpenVPN clients skip the ones
	// they do not know.
	Options []string

	// Topology is "subnet", "net30" or "p2p"; "" means OpenVPN's default,
	// net30.
	Topology string
	// Ifconfig is the own tunnel address: with the pushed netmask under
	// topology subnet, else /32.
	Ifconfig netip.Prefix
	// IfconfigPeer is the remote end of "ifconfig LOCAL REMOTE" (topology
	// net30 or p2p).
	IfconfigPeer netip.Addr
	RouteGateway netip.Addr // invalid for "route-gateway dhcp"
	Routes       []Route
	// Ifconfig6 is the own IPv6 tunnel address and prefix length and
	// Gateway6 the server's end, from "ifconfig-ipv6 ADDRESS/BITS GATEWAY".
	Ifconfig6 netip.Prefix
	Gateway6  netip.Addr
	// Routes6 are the "route-ipv6 NETWORK/BITS [GATEWAY] [METRIC]" routes.
	Routes6 []Route
	// RedirectGateway is set when "redirect-gateway" was pushed without
	// "!ipv4" (full tunnel), RedirectGateway6 when it had the "ipv6" flag.
	RedirectGateway, RedirectGateway6 bool
	DNS                               []netip.Addr // dhcp-option DNS and DNS6
	// Compression is the compression framing option as pushed ("comp-lzo no",
	// "compress", "compress stub-v2", ...), "" when none was (protocol §9.4).
	Compression string

	PeerID    uint32 // from "peer-id N"; valid only if HasPeerID
	HasPeerID bool
	Cipher    string // "cipher NAME": the negotiated data cipher
	// ProtocolFlags are the words of "protocol-flags" (cc-exit, tls-ekm,
	// dyn-tls-crypt).
	ProtocolFlags []string
	// KeyDerivation is the argument of "key-derivation" (tls-ekm), pushed
	// instead of protocol-flags to clients that do not announce cc-exit.
	KeyDerivation string

	Ping        time.Duration
	PingRestart time.Duration
	TunMTU      int
}

// Route is one pushed "route NETWORK [NETMASK] [GATEWAY] [METRIC]". Gateway is
// invalid when the route names none or a keyword (vpn_gateway, net_gateway,
// remote_host); Metric is -1 when absent.
type Route struct {
	Network netip.Prefix
	Gateway netip.Addr
	Metric  int
}

// EKM reports whether the server asked for data keys from the TLS exporter
// (protocol §7.1), by "protocol-flags ... tls-ekm" or "key-derivation tls-ekm".
func (r *Reply) EKM() bool {
	return r.KeyDerivation == "tls-ekm" || r.hasFlag("tls-ekm")
}

// CCExit reports whether the server understands EXIT on the control channel
// (protocol-flags cc-exit).
func (r *Reply) CCExit() bool { return r.hasFlag("cc-exit") }

func (r *Reply) hasFlag(f string) bool {
	for _, x := range r.ProtocolFlags {
		if x == f {
			return true
		}
	}
	return false
}

// ReplyPrefix starts every push reply message; the options follow, each after
// a comma.
const ReplyPrefix = "PUSH_REPLY"

// Parse adds one PUSH_REPLY message (without its NUL) to r and reports whether
// the reply is complete. A message ending in "push-continuation 2" announces
// another one (push.c:send_push_reply); the last ends in "push-continuation 1"
// or carries no marker. Once the reply is complete the options are decoded into
// the fields; a decoded option that does not parse (ifconfig, route, peer-id,
// ping, ...) is an error wrapping ErrReply that names it. Parse a new reply
// into a fresh Reply.
func (r *Reply) Parse(msg string) (complete bool, err error) {
	rest, ok := strings.CutPrefix(msg, ReplyPrefix)
	if !ok || (rest != "" && rest[0] != ',') {
		return false, fmt.Errorf("%w: message does not start with %s: %.40q", ErrReply, ReplyPrefix, msg)
	}
	complete = true
	for opt := range strings.SplitSeq(rest, ",") {
		opt = strings.TrimSpace(opt)
		if opt == "" {
			continue
		}
		if arg, ok := strings.CutPrefix(opt, "push-continuation"); ok && (arg == "" || arg[0] == ' ' || arg[0] == '\t') {
			complete = strings.TrimSpace(arg) != "2"
			continue
		}
		r.Options = append(r.Options, opt)
	}
	if !complete {
		return false, nil
	}
	return true, r.decode()
}

// ParseReply parses the messages of one push reply, which must end complete.
func ParseReply(msgs ...string) (Reply, error) {
	var r Reply
	for i, m := range msgs {
		complete, err := r.Parse(m)
		if err != nil {
			return r, err
		}
		if complete != (i == len(msgs)-1) {
			return r, fmt.Errorf("%w: message %d of %d: continuation markers do not match the message count", ErrReply, i+1, len(msgs))
		}
	}
	if len(msgs) == 0 {
		return r, fmt.Errorf("%w: no message", ErrReply)
	}
	return r, nil
}

// decode fills the fields from Options. ifconfig is read after the whole reply
// because its second argument is a netmask or a peer address depending on a
// topology pushed anywhere in it.
func (r *Reply) decode() error {
	opts := r.Options
	*r = Reply{Options: opts}
	var ifconfig []string
	for _, opt := range opts {
		f := strings.Fields(opt)
		name, args := f[0], f[1:]
		bad := func(why string) error {
			return fmt.Errorf("%w: option %q: %s", ErrReply, opt, why)
		}
		switch name {
		case "topology":
			if len(args) != 1 {
				return bad("want one argument")
			}
			r.Topology = args[0]
		case "ifconfig":
			if len(args) != 2 {
				return bad("want an address and a netmask or peer address")
			}
			ifconfig = args
		case "route-gateway":
			if len(args) != 1 {
				return bad("want one argument")
			}
			if args[0] != "dhcp" {
				a, err := parseIPv4(args[0])
				if err != nil {
					return bad(err.Error())
				}
				r.RouteGateway = a
			}
		case "route":
			rt, err := parseRoute(args)
			if err != nil {
				return bad(err.Error())
			}
			r.Routes = append(r.Routes, rt)
		case "redirect-gateway":
			r.RedirectGateway = true
			for _, a := range args {
				switch a {
				case "ipv6":
					r.RedirectGateway6 = true
				case "!ipv4":
					r.RedirectGateway = false
				}
			}
		case "ifconfig-ipv6":
			if len(args) != 2 {
				return bad("want ADDRESS/BITS and a gateway")
			}
			p, err := netip.ParsePrefix(args[0])
			if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
				return bad("want an IPv6 ADDRESS/BITS")
			}
			gw, err := netip.ParseAddr(args[1])
			if err != nil || !gw.Is6() || gw.Is4In6() {
				return bad("want an IPv6 gateway")
			}
			r.Ifconfig6, r.Gateway6 = p, gw
		case "route-ipv6":
			if len(args) < 1 || len(args) > 3 {
				return bad("want NETWORK/BITS [GATEWAY] [METRIC]")
			}
			p, err := netip.ParsePrefix(args[0])
			if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
				return bad("want an IPv6 NETWORK/BITS")
			}
			rt := Route{Network: p.Masked(), Metric: -1}
			if len(args) > 1 {
				if gw, err := netip.ParseAddr(args[1]); err == nil && gw.Is6() {
					rt.Gateway = gw
				}
			}
			if len(args) > 2 {
				m, err := strconv.ParseUint(args[2], 10, 31)
				if err != nil {
					return bad("want a numeric metric")
				}
				rt.Metric = int(m)
			}
			r.Routes6 = append(r.Routes6, rt)
		case "comp-lzo", "compress":
			r.Compression = opt
		case "dhcp-option":
			if len(args) == 2 && (args[0] == "DNS" || args[0] == "DNS6") {
				a, err := netip.ParseAddr(args[1])
				if err != nil {
					return bad(err.Error())
				}
				r.DNS = append(r.DNS, a)
			}
		case "peer-id":
			if len(args) != 1 {
				return bad("want one argument")
			}
			n, err := strconv.ParseUint(args[0], 10, 32)
			if err != nil || n >= uint64(packet.NoPeerID) {
				return bad("peer-id must be 0..16777214")
			}
			r.PeerID, r.HasPeerID = uint32(n), true
		case "cipher":
			if len(args) != 1 {
				return bad("want one argument")
			}
			r.Cipher = args[0]
		case "protocol-flags":
			r.ProtocolFlags = append([]string(nil), args...)
		case "key-derivation":
			if len(args) != 1 {
				return bad("want one argument")
			}
			r.KeyDerivation = args[0]
		case "ping", "ping-restart", "tun-mtu":
			if len(args) != 1 {
				return bad("want one argument")
			}
			n, err := strconv.ParseUint(args[0], 10, 31)
			if err != nil {
				return bad("want a non-negative number")
			}
			switch name {
			case "ping":
				r.Ping = time.Duration(n) * time.Second
			case "ping-restart":
				r.PingRestart = time.Duration(n) * time.Second
			default:
				r.TunMTU = int(n)
			}
		}
	}
	if ifconfig != nil {
		local, err := parseIPv4(ifconfig[0])
		if err != nil {
			return fmt.Errorf("%w: ifconfig: %v", ErrReply, err)
		}
		second, err := parseIPv4(ifconfig[1])
		if err != nil {
			return fmt.Errorf("%w: ifconfig: %v", ErrReply, err)
		}
		if r.Topology == "subnet" {
			bits, ok := maskBits(second)
			if !ok {
				return fmt.Errorf("%w: ifconfig: %s is not a netmask", ErrReply, second)
			}
			r.Ifconfig = netip.PrefixFrom(local, bits)
		} else {
			r.Ifconfig = netip.PrefixFrom(local, 32)
			r.IfconfigPeer = second
		}
	}
	return nil
}

func parseIPv4(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s is not an IPv4 address", s)
	}
	return a, nil
}

// maskBits returns the prefix length of a contiguous IPv4 netmask.
func maskBits(m netip.Addr) (int, bool) {
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := 0
	for v&0x80000000 != 0 {
		ones++
		v <<= 1
	}
	return ones, v == 0
}

// parseRoute decodes the arguments of "route NETWORK [NETMASK] [GATEWAY]
// [METRIC]"; a "default" netmask, gateway or metric counts as absent, as in
// OpenVPN (route.c).
func parseRoute(args []string) (Route, error) {
	rt := Route{Metric: -1}
	if len(args) < 1 || len(args) > 4 {
		return rt, fmt.Errorf("want 1 to 4 arguments")
	}
	network, err := parseIPv4(args[0])
	if err != nil {
		return rt, err
	}
	bits := 32
	if len(args) > 1 && args[1] != "default" {
		m, err := parseIPv4(args[1])
		if err != nil {
			return rt, err
		}
		var ok bool
		if bits, ok = maskBits(m); !ok {
			return rt, fmt.Errorf("%s is not a netmask", m)
		}
	}
	rt.Network = netip.PrefixFrom(network, bits)
	if rt.Network.Masked() != rt.Network {
		return rt, fmt.Errorf("network %s has host bits outside netmask /%d", network, bits)
	}
	if len(args) > 2 {
		switch args[2] {
		case "default", "vpn_gateway", "net_gateway", "remote_host":
		default:
			if rt.Gateway, err = parseIPv4(args[2]); err != nil {
				return rt, err
			}
		}
	}
	if len(args) > 3 && args[3] != "default" {
		m, err := strconv.ParseUint(args[3], 10, 31)
		if err != nil {
			return rt, fmt.Errorf("metric %q is not a number", args[3])
		}
		rt.Metric = int(m)
	}
	return rt, nil
}
