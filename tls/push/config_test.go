package push

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The replies tunnel/handshake.go (sendPushReply and pushMessages, as of this
// package's creation) sends for representative clients, worked out by hand
// from that code: pool 10.2.0.0/22 with the gateway 10.2.0.1.
func TestConfigKnownAnswers(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{
			// A 2.6 client (IV_PROTO 990): peer-id, cc-exit and tls-ekm.
			name: "2.6 client, split tunnel",
			cfg: Config{
				RouteGateway: netip.MustParseAddr("10.2.0.1"), Topology: "subnet",
				Ping: 10 * time.Second, PingRestart: 60 * time.Second,
				Routes:   []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("192.168.10.0/24")},
				DNS:      []netip.Addr{netip.MustParseAddr("10.0.0.2")},
				Ifconfig: netip.MustParsePrefix("10.2.0.2/22"), HasPeerID: true, PeerID: 0,
				Cipher: "AES-256-GCM", ProtocolFlags: []string{"cc-exit", "tls-ekm"},
			},
			want: "PUSH_REPLY,route-gateway 10.2.0.1,topology subnet,ping 10,ping-restart 60," +
				"route 10.0.0.0 255.255.0.0,route 192.168.10.0 255.255.255.0,dhcp-option DNS 10.0.0.2," +
				"ifconfig 10.2.0.2 255.255.252.0,peer-id 0,cipher AES-256-GCM,protocol-flags cc-exit tls-ekm",
		},
		{
			// The load generator's engine test expects this one (bench/client).
			name: "load generator, no EKM",
			cfg: Config{
				RouteGateway: netip.MustParseAddr("10.2.0.1"), Topology: "subnet",
				Ping: 10 * time.Second, PingRestart: 60 * time.Second,
				Routes:   []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24")},
				DNS:      []netip.Addr{netip.MustParseAddr("10.0.0.2")},
				Ifconfig: netip.MustParsePrefix("10.2.0.2/22"), HasPeerID: true,
				Cipher: "AES-128-GCM", ProtocolFlags: []string{"cc-exit"},
			},
			want: cvpnReply,
		},
		{
			// Full tunnel; a comp-lzo client without IV_COMP_STUB(v2), no
			// P_DATA_V2 and no cc-exit, but EKM: key-derivation instead of
			// protocol-flags.
			name: "older client, full tunnel, comp-lzo",
			cfg: Config{
				RouteGateway: netip.MustParseAddr("10.2.0.1"), Topology: "subnet",
				Ping: 5 * time.Second, PingRestart: 30 * time.Second, RedirectGateway: true,
				Routes:      []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")},
				DNS:         []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")},
				Compression: "comp-lzo no", Ifconfig: netip.MustParsePrefix("10.2.3.254/22"),
				Cipher: "AES-128-GCM", KeyDerivation: "tls-ekm",
			},
			want: "PUSH_REPLY,route-gateway 10.2.0.1,topology subnet,ping 5,ping-restart 30," +
				"redirect-gateway def1,route 10.0.0.0 255.255.0.0,dhcp-option DNS 10.0.0.2,dhcp-option DNS 10.0.0.3," +
				"comp-lzo no,ifconfig 10.2.3.254 255.255.252.0,cipher AES-128-GCM,key-derivation tls-ekm",
		},
		{
			name: "stub-v2 framing, no routes or DNS",
			cfg: Config{
				RouteGateway: netip.MustParseAddr("10.2.0.1"), Topology: "subnet",
				Ping: 10 * time.Second, PingRestart: 60 * time.Second,
				Compression: "compress stub-v2", Ifconfig: netip.MustParsePrefix("10.2.0.9/22"),
				HasPeerID: true, PeerID: 4711, Cipher: "CHACHA20-POLY1305", ProtocolFlags: []string{"cc-exit"},
			},
			want: "PUSH_REPLY,route-gateway 10.2.0.1,topology subnet,ping 10,ping-restart 60," +
				"compress stub-v2,ifconfig 10.2.0.9 255.255.252.0,peer-id 4711,cipher CHACHA20-POLY1305,protocol-flags cc-exit",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs, err := tc.cfg.Messages()
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != 1 || msgs[0] != tc.want {
				t.Fatalf("Messages =\n%q\nwant\n%q", msgs, tc.want)
			}
		})
	}
}

// wantReply is what a client decodes from c, built field by field.
func wantReply(t *testing.T, c *Config) Reply {
	t.Helper()
	opts, err := c.Options()
	if err != nil {
		t.Fatal(err)
	}
	r := Reply{
		Options: opts, Topology: c.Topology, Ifconfig: c.Ifconfig, RouteGateway: c.RouteGateway,
		RedirectGateway: c.RedirectGateway, DNS: c.DNS, Compression: c.Compression,
		PeerID: c.PeerID, HasPeerID: c.HasPeerID, Cipher: c.Cipher, ProtocolFlags: c.ProtocolFlags,
		KeyDerivation: c.KeyDerivation, Ping: c.Ping, PingRestart: c.PingRestart,
	}
	for _, p := range c.Routes {
		r.Routes = append(r.Routes, Route{Network: p.Masked(), Metric: -1})
	}
	return r
}

func TestConfigRoundTrip(t *testing.T) {
	many := Config{
		RouteGateway: netip.MustParseAddr("172.16.0.1"), Topology: "subnet",
		Ping: 15 * time.Second, PingRestart: 120 * time.Second, RedirectGateway: true,
		DNS:         []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("8.8.8.8")},
		Compression: "compress", Ifconfig: netip.MustParsePrefix("172.16.5.77/16"),
		HasPeerID: true, PeerID: 0xFFFFFE, Cipher: "AES-256-GCM",
		ProtocolFlags: []string{"cc-exit", "tls-ekm"},
	}
	for i := range 200 {
		many.Routes = append(many.Routes, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16))
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		msgs int
	}{
		{"empty", Config{}, 1},
		{"ifconfig only", Config{Topology: "subnet", Ifconfig: netip.MustParsePrefix("10.9.0.2/24")}, 1},
		{"host route, /0 and host bits", Config{Routes: []netip.Prefix{
			netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("10.1.2.3/8"),
		}}, 1},
		// 5935 bytes of options and commas, at most 994 in a message; whole
		// options leave gaps, so 7 messages (the rule of TestSplitKnownAnswer).
		{"200 routes", many, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs, err := tc.cfg.Messages()
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != tc.msgs {
				t.Fatalf("%d messages, want %d", len(msgs), tc.msgs)
			}
			got, err := ParseReply(msgs...)
			if err != nil {
				t.Fatal(err)
			}
			if want := wantReply(t, &tc.cfg); !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestConfigRouteHostBitsCleared(t *testing.T) {
	c := Config{Routes: []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8")}}
	opts, err := c.Options()
	if err != nil || len(opts) != 1 || opts[0] != "route 10.0.0.0 255.0.0.0" {
		t.Fatalf("Options = %q, %v", opts, err)
	}
}

func TestConfigSubSecondTimers(t *testing.T) {
	c := Config{Ping: 900 * time.Millisecond, PingRestart: 2500 * time.Millisecond}
	opts, err := c.Options()
	if err != nil || !reflect.DeepEqual(opts, []string{"ping-restart 2"}) {
		t.Fatalf("Options = %q, %v; want only ping-restart, in whole seconds", opts, err)
	}
}

// A dual-stack client's options, in the order the stock client is tested against, and read
// back by the parser.
func TestConfigDualStack(t *testing.T) {
	c := Config{
		RouteGateway:     netip.MustParseAddr("10.2.0.1"),
		Topology:         "subnet",
		RedirectGateway:  true,
		RedirectGateway6: true,
		Routes: []netip.Prefix{netip.MustParsePrefix("fd00:10:1::/64"), netip.MustParsePrefix("10.0.1.0/24"),
			netip.MustParsePrefix("fd00:10:2::1/64")},
		DNS:       []netip.Addr{netip.MustParseAddr("fd00:10:1::53"), netip.MustParseAddr("10.0.0.2")},
		Ifconfig6: netip.MustParsePrefix("fd00:10:1::1:2/112"),
		Gateway6:  netip.MustParseAddr("fd00:10:1::1:1"),
		Ifconfig:  netip.MustParsePrefix("10.2.0.2/22"),
	}
	opts, err := c.Options()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"route-gateway 10.2.0.1", "topology subnet", "redirect-gateway def1 ipv6",
		"route 10.0.1.0 255.255.255.0", "route-ipv6 fd00:10:1::/64", "route-ipv6 fd00:10:2::/64",
		"dhcp-option DNS6 fd00:10:1::53", "dhcp-option DNS 10.0.0.2",
		"ifconfig-ipv6 fd00:10:1::1:2/112 fd00:10:1::1:1", "ifconfig 10.2.0.2 255.255.252.0"}
	if !reflect.DeepEqual(opts, want) {
		t.Fatalf("Options =\n%q\nwant\n%q", opts, want)
	}
	msgs, _ := c.Messages()
	r, err := ParseReply(msgs...)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ifconfig6 != c.Ifconfig6 || r.Gateway6 != c.Gateway6 || !r.RedirectGateway || !r.RedirectGateway6 ||
		len(r.Routes6) != 2 || r.Routes6[1].Network != netip.MustParsePrefix("fd00:10:2::/64") || len(r.DNS) != 2 {
		t.Errorf("parsed back: %+v", r)
	}

	only6 := Config{RedirectGateway6: true}
	opts, _ = only6.Options()
	if !reflect.DeepEqual(opts, []string{"redirect-gateway ipv6 !ipv4"}) {
		t.Errorf("IPv6-only full tunnel: %q", opts)
	}
	r, err = ParseReply("PUSH_REPLY,redirect-gateway ipv6 !ipv4")
	if err != nil || r.RedirectGateway || !r.RedirectGateway6 {
		t.Errorf("parsed back IPv6-only redirect: %+v, %v", r, err)
	}
}

func TestConfigErrors(t *testing.T) {
	v6 := netip.MustParseAddr("2001:db8::1")
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"IPv6 route-gateway", Config{RouteGateway: v6}, "route-gateway"},
		{"mapped route", Config{Routes: []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}}, "route"},
		{"invalid route", Config{Routes: []netip.Prefix{{}}}, "route"},
		{"invalid DNS", Config{DNS: []netip.Addr{{}}}, "dhcp-option DNS"},
		{"IPv6 ifconfig", Config{Ifconfig: netip.MustParsePrefix("2001:db8::2/64")}, "ifconfig"},
		{"IPv4 ifconfig-ipv6", Config{Ifconfig6: netip.MustParsePrefix("10.0.0.2/24"), Gateway6: v6}, "ifconfig-ipv6"},
		{"ifconfig-ipv6 without gateway", Config{Ifconfig6: netip.MustParsePrefix("2001:db8::2/64")}, "ifconfig-ipv6"},
		{"mapped ifconfig-ipv6", Config{Ifconfig6: netip.MustParsePrefix("::ffff:10.0.0.2/120"), Gateway6: v6}, "ifconfig-ipv6"},
		{"zoned DNS", Config{DNS: []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}}, "dhcp-option DNS"},
		{"peer-id none", Config{HasPeerID: true, PeerID: 0xFFFFFF}, "peer-id"},
		{"cipher with comma", Config{Cipher: "AES-256-GCM,route 0.0.0.0 0.0.0.0"}, "cipher"},
		{"cipher with space", Config{Cipher: "AES 256"}, "cipher"},
		{"compression with newline", Config{Compression: "compress\nstub"}, "compression"},
		{"topology with NUL", Config{Topology: "subnet\x00"}, "topology"},
		{"empty protocol flag", Config{ProtocolFlags: []string{"cc-exit", ""}}, "protocol-flags"},
		{"protocol flag with space", Config{ProtocolFlags: []string{"cc-exit tls-ekm"}}, "protocol-flags"},
		{"key-derivation with comma", Config{KeyDerivation: "tls-ekm,"}, "key-derivation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.Messages()
			if !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrOption naming %q", err, tc.want)
			}
		})
	}
}

// TestSplitKnownAnswer works through Split by hand at a small size: a message
// takes an option only while it and a 20-byte marker still fit.
func TestSplitKnownAnswer(t *testing.T) {
	opts := []string{"route-gateway 10.2.0.1", "topology subnet", "ping 10", "ping-restart 60"}
	for _, tc := range []struct {
		size int
		want []string
	}{
		{1024, []string{"PUSH_REPLY,route-gateway 10.2.0.1,topology subnet,ping 10,ping-restart 60"}},
		{64, []string{
			"PUSH_REPLY,route-gateway 10.2.0.1,push-continuation 2",  // 33+1+15+20 = 69 > 64
			"PUSH_REPLY,topology subnet,ping 10,push-continuation 2", // 34+1+15+20 = 70 > 64
			"PUSH_REPLY,ping-restart 60,push-continuation 1",
		}},
		// 10+1+22+20 = 53: the first option fits exactly. Then 26+1+7+20 = 54
		// and 18+1+15+20 = 54 do not: one option a message.
		{53, []string{
			"PUSH_REPLY,route-gateway 10.2.0.1,push-continuation 2",
			"PUSH_REPLY,topology subnet,push-continuation 2",
			"PUSH_REPLY,ping 10,push-continuation 2",
			"PUSH_REPLY,ping-restart 60,push-continuation 1",
		}},
		// One byte more and "ping 10" joins "topology subnet".
		{54, []string{
			"PUSH_REPLY,route-gateway 10.2.0.1,push-continuation 2",
			"PUSH_REPLY,topology subnet,ping 10,push-continuation 2",
			"PUSH_REPLY,ping-restart 60,push-continuation 1",
		}},
		// Too small for any option: each gets a message of its own.
		{20, []string{
			"PUSH_REPLY,route-gateway 10.2.0.1,push-continuation 2",
			"PUSH_REPLY,topology subnet,push-continuation 2",
			"PUSH_REPLY,ping 10,push-continuation 2",
			"PUSH_REPLY,ping-restart 60,push-continuation 1",
		}},
	} {
		t.Run(fmt.Sprint(tc.size), func(t *testing.T) {
			if got := Split(opts, tc.size); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Split =\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
	if got := Split(nil, MaxMessageLen); !reflect.DeepEqual(got, []string{"PUSH_REPLY"}) {
		t.Fatalf("Split(nil) = %q", got)
	}
}

// TestSplitAtTheLimit fills the first message to exactly MaxMessageLen:
// 10 + 14*(1+70) + 20 = 1024.
func TestSplitAtTheLimit(t *testing.T) {
	var opts []string
	for i := range 15 {
		opts = append(opts, fmt.Sprintf("x%02d", i)+strings.Repeat("y", 67))
	}
	msgs := Split(opts, MaxMessageLen)
	if len(msgs) != 2 {
		t.Fatalf("%d messages, want 2", len(msgs))
	}
	if len(msgs[0]) != MaxMessageLen || !strings.HasSuffix(msgs[0], ",push-continuation 2") {
		t.Fatalf("first message is %d bytes ending %q, want %d ending push-continuation 2", len(msgs[0]), msgs[0][len(msgs[0])-25:], MaxMessageLen)
	}
	if want := "PUSH_REPLY," + opts[14] + ",push-continuation 1"; msgs[1] != want {
		t.Fatalf("second message %q, want %q", msgs[1], want)
	}
}

// TestSplitManyRoutes checks the framing of a long reply: every message within
// the limit and as full as the rule allows, the markers right, the options in
// order.
func TestSplitManyRoutes(t *testing.T) {
	c := Config{RouteGateway: netip.MustParseAddr("10.2.0.1"), Topology: "subnet", Ifconfig: netip.MustParsePrefix("10.2.0.2/22")}
	for i := range 300 {
		c.Routes = append(c.Routes, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 4), byte(i << 4), 0}), 20))
	}
	opts, err := c.Options()
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Messages()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) < 10 {
		t.Fatalf("only %d messages for %d options", len(msgs), len(opts))
	}
	var all []string
	for i, m := range msgs {
		if len(m) > MaxMessageLen {
			t.Fatalf("message %d is %d bytes", i, len(m))
		}
		marker := ",push-continuation 2"
		if i == len(msgs)-1 {
			marker = ",push-continuation 1"
		}
		body, ok := strings.CutSuffix(m, marker)
		if !ok || !strings.HasPrefix(body, "PUSH_REPLY,") {
			t.Fatalf("message %d %q: want PUSH_REPLY,...%s", i, m, marker)
		}
		got := strings.Split(strings.TrimPrefix(body, "PUSH_REPLY,"), ",")
		all = append(all, got...)
		if i < len(msgs)-1 {
			next := opts[len(all)]
			if len(body)+1+len(next)+len(marker) <= MaxMessageLen {
				t.Fatalf("message %d (%d bytes) had room for %q", i, len(m), next)
			}
		}
	}
	if !reflect.DeepEqual(all, opts) {
		t.Fatal("options lost, added or reordered across messages")
	}
	r, err := ParseReply(msgs...)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Routes) != 300 || r.Routes[299].Network != netip.MustParsePrefix("10.18.176.0/20") || r.Ifconfig != c.Ifconfig {
		t.Fatalf("parsed %d routes, last %v, ifconfig %v", len(r.Routes), r.Routes[len(r.Routes)-1], r.Ifconfig)
	}
}

// FuzzSplit: whatever the options and the size, Split's messages parse back to
// exactly the options, and only a message holding a single option exceeds size.
func FuzzSplit(f *testing.F) {
	f.Add("a\nbb\nccc", 40)
	f.Add("", 1024)
	f.Add(strings.Repeat("opt 1\n", 300), 1024)
	f.Fuzz(func(t *testing.T, list string, size int) {
		size = min(max(size, 0), 4096)
		var opts []string
		for o := range strings.SplitSeq(list, "\n") {
			o = strings.TrimSpace(strings.ReplaceAll(o, ",", ""))
			if o == "" || strings.HasPrefix(o, "push-continuation") {
				continue
			}
			opts = append(opts, "x-"+o) // no option name the parser decodes
		}
		msgs := Split(opts, size)
		for _, m := range msgs {
			if len(m) > size && strings.Count(m, ",") > 2 {
				t.Fatalf("message of %d bytes over size %d: %q", len(m), size, m)
			}
		}
		r, err := ParseReply(msgs...)
		if err != nil {
			t.Fatalf("ParseReply(%q): %v", msgs, err)
		}
		if !reflect.DeepEqual(r.Options, opts) {
			t.Fatalf("options %q came back as %q", opts, r.Options)
		}
	})
}
