package push

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
)

// MaxMessageLen is the longest PUSH_REPLY message Messages makes, markers
// included and the terminating NUL not: OpenVPN's PUSH_BUNDLE_SIZE (common.h).
const MaxMessageLen = 1024

// Markers that end the messages of a split reply (push.c:send_push_reply).
const (
	continueMarker = ",push-continuation 2" // more messages follow
	lastMarker     = ",push-continuation 1" // the last message of a split reply
)

// Config is what a server pushes to one client, as typed values. Options turns
// it into option strings and Messages into the messages of one reply. A zero
// field is not pushed. Routes and DNS servers may be of either family; the
// ifconfig fields each take their own.
type Config struct {
	RouteGateway netip.Addr // "route-gateway GW"
	Topology     string     // "topology subnet"
	// Ping and PingRestart are pushed in whole seconds, "ping N" and
	// "ping-restart N"; less than a second is not pushed.
	Ping, PingRestart time.Duration
	// RedirectGateway pushes "redirect-gateway def1" (full tunnel for
	// IPv4), RedirectGateway6 the "ipv6" flag (full tunnel for IPv6:
	// route.c installs ::/3, 2000::/4, 3000::/4 and fc00::/7 into the tun);
	// with RedirectGateway6 alone the option is "redirect-gateway ipv6 !ipv4".
	RedirectGateway, RedirectGateway6 bool
	// Routes are pushed as "route NETWORK NETMASK" (IPv4) or "route-ipv6
	// NETWORK/BITS" (IPv6), host bits cleared; IPv4 ones first.
	Routes []netip.Prefix
	// DNS are pushed as "dhcp-option DNS ADDRESS" (IPv4) or "dhcp-option
	// DNS6 ADDRESS" (IPv6; options.c takes both names for an IPv6 address).
	DNS []netip.Addr
	// Compression is the compression framing option, pushed as it is:
	// "comp-lzo no", "compress" or "compress stub-v2" (protocol §9.4).
	Compression string
	// Ifconfig is the client's address with the prefix length of its subnet,
	// pushed as "ifconfig ADDRESS NETMASK" (topology subnet); the address
	// keeps its host bits.
	Ifconfig netip.Prefix
	// Ifconfig6 is the client's IPv6 address with the prefix length of its
	// block and Gateway6 the server's end, pushed as "ifconfig-ipv6
	// ADDRESS/BITS GATEWAY" (push.c, prepare_push_reply), before ifconfig.
	Ifconfig6 netip.Prefix
	Gateway6  netip.Addr
	// PeerID is pushed as "peer-id N" when HasPeerID is set; it must be below
	// 0xFFFFFF.
	PeerID    uint32
	HasPeerID bool
	Cipher    string // "cipher NAME"
	// ProtocolFlags are pushed as one "protocol-flags a b" option.
	ProtocolFlags []string
	// KeyDerivation is pushed as "key-derivation X" (tls-ekm), for clients
	// that do not understand protocol-flags.
	KeyDerivation string
	// Extra are options pushed last as they are, such as "auth-token TOKEN" and
	// "auth-token-user BASE64" (src/openvpn/auth_token.c).
	Extra []string
}

// Options returns the options of c in the order the server has always pushed
// them (protocol §10.1; the stock client is tested against this order):
// route-gateway, topology, ping, ping-restart, redirect-gateway, routes (IPv4,
// then IPv6), DNS servers, compression, ifconfig-ipv6, ifconfig, peer-id,
// cipher, protocol-flags, key-derivation, then Extra. A value that cannot be pushed is an error wrapping
// ErrOption.
func (c *Config) Options() ([]string, error) {
	var opts []string
	if c.RouteGateway.IsValid() {
		gw, err := ipv4("route-gateway", c.RouteGateway)
		if err != nil {
			return nil, err
		}
		opts = append(opts, "route-gateway "+gw.String())
	}
	if c.Topology != "" {
		if err := checkWord("topology", c.Topology); err != nil {
			return nil, err
		}
		opts = append(opts, "topology "+c.Topology)
	}
	if s := int64(c.Ping / time.Second); s > 0 {
		opts = append(opts, "ping "+strconv.FormatInt(s, 10))
	}
	if s := int64(c.PingRestart / time.Second); s > 0 {
		opts = append(opts, "ping-restart "+strconv.FormatInt(s, 10))
	}
	switch {
	case c.RedirectGateway && c.RedirectGateway6:
		opts = append(opts, "redirect-gateway def1 ipv6")
	case c.RedirectGateway:
		opts = append(opts, "redirect-gateway def1")
	case c.RedirectGateway6:
		opts = append(opts, "redirect-gateway ipv6 !ipv4")
	}
	for _, r := range c.Routes {
		if !r.IsValid() || r.Addr().Is4In6() || r.Addr().Zone() != "" {
			return nil, fmt.Errorf("%w: route %v: not a route", ErrOption, r)
		}
		if r.Addr().Is4() {
			r = r.Masked()
			opts = append(opts, "route "+r.Addr().String()+" "+netmask(r.Bits()).String())
		}
	}
	for _, r := range c.Routes {
		if r.Addr().Is6() {
			opts = append(opts, "route-ipv6 "+r.Masked().String())
		}
	}
	for _, d := range c.DNS {
		switch d = d.Unmap(); {
		case d.Is4():
			opts = append(opts, "dhcp-option DNS "+d.String())
		case d.Is6() && d.Zone() == "":
			opts = append(opts, "dhcp-option DNS6 "+d.String())
		default:
			return nil, fmt.Errorf("%w: dhcp-option DNS %v: not an address", ErrOption, d)
		}
	}
	if c.Compression != "" {
		if err := checkText("compression", c.Compression); err != nil {
			return nil, err
		}
		opts = append(opts, c.Compression)
	}
	if c.Ifconfig6.IsValid() {
		a, gw := c.Ifconfig6.Addr(), c.Gateway6
		if !a.Is6() || a.Is4In6() || a.Zone() != "" || !gw.Is6() || gw.Is4In6() || gw.Zone() != "" {
			return nil, fmt.Errorf("%w: ifconfig-ipv6 %v %v: want an IPv6 address and gateway", ErrOption, c.Ifconfig6, gw)
		}
		opts = append(opts, "ifconfig-ipv6 "+c.Ifconfig6.String()+" "+gw.String())
	}
	if c.Ifconfig.IsValid() {
		if err := ipv4Prefix("ifconfig", c.Ifconfig); err != nil {
			return nil, err
		}
		opts = append(opts, "ifconfig "+c.Ifconfig.Addr().String()+" "+netmask(c.Ifconfig.Bits()).String())
	}
	if c.HasPeerID {
		if c.PeerID >= packet.NoPeerID {
			return nil, fmt.Errorf("%w: peer-id %d is not below %d", ErrOption, c.PeerID, packet.NoPeerID)
		}
		opts = append(opts, "peer-id "+strconv.FormatUint(uint64(c.PeerID), 10))
	}
	if c.Cipher != "" {
		if err := checkWord("cipher", c.Cipher); err != nil {
			return nil, err
		}
		opts = append(opts, "cipher "+c.Cipher)
	}
	if len(c.ProtocolFlags) > 0 {
		for _, f := range c.ProtocolFlags {
			if err := checkWord("protocol-flags", f); err != nil {
				return nil, err
			}
		}
		opts = append(opts, "protocol-flags "+strings.Join(c.ProtocolFlags, " "))
	}
	if c.KeyDerivation != "" {
		if err := checkWord("key-derivation", c.KeyDerivation); err != nil {
			return nil, err
		}
		opts = append(opts, "key-derivation "+c.KeyDerivation)
	}
	for _, o := range c.Extra {
		if err := checkText("option", o); err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	return opts, nil
}

// Messages returns the PUSH_REPLY messages that push c, split by Split at
// MaxMessageLen. Each is sent as one control message with a NUL appended.
func (c *Config) Messages() ([]string, error) {
	opts, err := c.Options()
	if err != nil {
		return nil, err
	}
	return Split(opts, MaxMessageLen), nil
}

// Split frames options as the messages of one reply, each at most size bytes
// long: "PUSH_REPLY,opt1,opt2,...". When the options do not fit one message,
// every message but the last ends with ",push-continuation 2" and the last
// with ",push-continuation 1" (push.c:send_push_reply); a reply that fits one
// message has no marker. A message takes options while they fit with room for
// a marker, so the markers never push it over size. No options make the bare
// "PUSH_REPLY". An option too long for any message gets a message of its own,
// longer than size.
func Split(opts []string, size int) []string {
	var msgs []string
	cur := ReplyPrefix
	for _, o := range opts {
		if len(cur)+1+len(o)+len(continueMarker) > size && cur != ReplyPrefix {
			msgs = append(msgs, cur+continueMarker)
			cur = ReplyPrefix
		}
		cur += "," + o
	}
	if len(msgs) > 0 {
		cur += lastMarker
	}
	return append(msgs, cur)
}

// ipv4 returns a as an IPv4 address, unmapping an IPv4-mapped IPv6 one.
func ipv4(what string, a netip.Addr) (netip.Addr, error) {
	a = a.Unmap()
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%w: %s %v: only IPv4 is pushed", ErrOption, what, a)
	}
	return a, nil
}

// ipv4Prefix refuses a prefix that is not a valid IPv4 one (an IPv4-mapped
// IPv6 prefix included: its length counts IPv6 bits).
func ipv4Prefix(what string, p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("%w: %s %v: only IPv4 prefixes are pushed", ErrOption, what, p)
	}
	return nil
}

// netmask returns the IPv4 netmask of a prefix length 0..32.
func netmask(bits int) netip.Addr {
	m := ^uint32(0) << (32 - bits) // a shift by 32 gives 0
	return netip.AddrFrom4([4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)})
}

// checkText refuses what would break the framing of a reply: an empty value,
// a comma (it separates options) or a byte outside printable ASCII (the client
// drops such a message, protocol §10).
func checkText(what, v string) error {
	if v == "" {
		return fmt.Errorf("%w: %s is empty", ErrOption, what)
	}
	for i := range len(v) {
		if b := v[i]; b == ',' || b < 0x20 || b > 0x7e {
			return fmt.Errorf("%w: %s %q: commas and control characters cannot be pushed", ErrOption, what, v)
		}
	}
	return nil
}

// checkWord is checkText for a value that must be a single word.
func checkWord(what, v string) error {
	if err := checkText(what, v); err != nil {
		return err
	}
	if strings.ContainsRune(v, ' ') {
		return fmt.Errorf("%w: %s %q: must be one word", ErrOption, what, v)
	}
	return nil
}
