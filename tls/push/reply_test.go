package push

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
)

// Real push replies: the first from OpenVPN 2.6 (`server 10.8.0.0
// 255.255.255.0`, topology subnet, keepalive 10 60), the next from cvpn.
const (
	openvpnReply = "PUSH_REPLY,route-gateway 10.8.0.1,topology subnet,ping 10,ping-restart 60,ifconfig 10.8.0.2 255.255.255.0,peer-id 0,cipher AES-256-GCM,protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500"
	cvpnReply    = "PUSH_REPLY,route-gateway 10.2.0.1,topology subnet,ping 10,ping-restart 60,route 10.0.1.0 255.255.255.0,dhcp-option DNS 10.0.0.2,ifconfig 10.2.0.2 255.255.252.0,peer-id 0,cipher AES-128-GCM,protocol-flags cc-exit"
)

func TestParseReply(t *testing.T) {
	for _, tc := range []struct {
		name string
		msgs []string
		want Reply
	}{
		{
			name: "openvpn 2.6 server",
			msgs: []string{openvpnReply},
			want: Reply{
				Topology: "subnet", Ifconfig: netip.MustParsePrefix("10.8.0.2/24"),
				RouteGateway: netip.MustParseAddr("10.8.0.1"),
				PeerID:       0, HasPeerID: true, Cipher: "AES-256-GCM",
				ProtocolFlags: []string{"cc-exit", "tls-ekm", "dyn-tls-crypt"},
				Ping:          10 * time.Second, PingRestart: 60 * time.Second, TunMTU: 1500,
			},
		},
		{
			name: "cvpn",
			msgs: []string{cvpnReply},
			want: Reply{
				Topology: "subnet", Ifconfig: netip.MustParsePrefix("10.2.0.2/22"),
				RouteGateway: netip.MustParseAddr("10.2.0.1"),
				Routes:       []Route{{Network: netip.MustParsePrefix("10.0.1.0/24"), Metric: -1}},
				DNS:          []netip.Addr{netip.MustParseAddr("10.0.0.2")},
				HasPeerID:    true, Cipher: "AES-128-GCM", ProtocolFlags: []string{"cc-exit"},
				Ping: 10 * time.Second, PingRestart: 60 * time.Second,
			},
		},
		{
			name: "continuation, topology after ifconfig, net30 default",
			msgs: []string{
				"PUSH_REPLY,route 192.168.0.0 255.255.0.0 10.8.0.5 5,redirect-gateway def1 bypass-dhcp,push-continuation 2",
				"PUSH_REPLY,ifconfig 10.8.0.6 10.8.0.5,key-derivation tls-ekm,peer-id 16777214,push-continuation 1",
			},
			want: Reply{
				Ifconfig: netip.MustParsePrefix("10.8.0.6/32"), IfconfigPeer: netip.MustParseAddr("10.8.0.5"),
				Routes:          []Route{{Network: netip.MustParsePrefix("192.168.0.0/16"), Gateway: netip.MustParseAddr("10.8.0.5"), Metric: 5}},
				RedirectGateway: true, KeyDerivation: "tls-ekm", PeerID: 0xFFFFFE, HasPeerID: true,
			},
		},
		{
			name: "topology in a later message decides ifconfig",
			msgs: []string{
				"PUSH_REPLY,ifconfig 10.9.0.2 255.255.255.128,push-continuation 2",
				"PUSH_REPLY,topology subnet,route 10.1.0.0 255.255.0.0 vpn_gateway,push-continuation 1",
			},
			want: Reply{
				Topology: "subnet", Ifconfig: netip.MustParsePrefix("10.9.0.2/25"),
				Routes: []Route{{Network: netip.MustParsePrefix("10.1.0.0/16"), Metric: -1}},
			},
		},
		{
			name: "empty reply, unknown options and stray spaces",
			msgs: []string{"PUSH_REPLY,,  dns server 0 address 1.1.1.1 ,block-outside-dns,route-gateway dhcp"},
			want: Reply{},
		},
		{name: "bare", msgs: []string{"PUSH_REPLY"}, want: Reply{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseReply(tc.msgs...)
			if err != nil {
				t.Fatalf("ParseReply: %v", err)
			}
			got.Options = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestReplyOptionsKept(t *testing.T) {
	r, err := ParseReply(
		"PUSH_REPLY,route-gateway 10.8.0.1,block-outside-dns,push-continuation 2",
		"PUSH_REPLY,ifconfig 10.8.0.2 255.255.255.0,push-continuation 1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"route-gateway 10.8.0.1", "block-outside-dns", "ifconfig 10.8.0.2 255.255.255.0"}
	if !reflect.DeepEqual(r.Options, want) {
		t.Fatalf("Options = %q, want %q", r.Options, want)
	}
	if r.Ifconfig != netip.MustParsePrefix("10.8.0.2/32") || r.IfconfigPeer != netip.MustParseAddr("255.255.255.0") {
		// Without topology subnet the second ifconfig argument is the peer (net30/p2p).
		t.Fatalf("ifconfig without topology: %v peer %v", r.Ifconfig, r.IfconfigPeer)
	}
	if r.EKM() || r.CCExit() {
		t.Fatal("flags set without protocol-flags")
	}
}

func TestReplyFlags(t *testing.T) {
	for msg, want := range map[string][2]bool{
		"PUSH_REPLY,protocol-flags cc-exit tls-ekm": {true, true},
		"PUSH_REPLY,protocol-flags cc-exit":         {false, true},
		"PUSH_REPLY,key-derivation tls-ekm":         {true, false},
		"PUSH_REPLY,cipher AES-256-GCM":             {false, false},
	} {
		r, err := ParseReply(msg)
		if err != nil {
			t.Fatal(err)
		}
		if r.EKM() != want[0] || r.CCExit() != want[1] {
			t.Errorf("%s: EKM %v CCExit %v, want %v", msg, r.EKM(), r.CCExit(), want)
		}
	}
}

func TestParseReplyErrors(t *testing.T) {
	for _, tc := range []struct {
		msgs []string
		want string
	}{
		{[]string{"AUTH_FAILED"}, "does not start"},
		{[]string{"PUSH_REPLYX"}, "does not start"},
		{[]string{"PUSH_REPLY,topology subnet,ifconfig 10.8.0.2 255.0.255.0"}, "not a netmask"},
		{[]string{"PUSH_REPLY,ifconfig 10.8.0.2"}, "ifconfig"},
		{[]string{"PUSH_REPLY,ifconfig fe80::1 255.255.255.0"}, "not an IPv4"},
		{[]string{"PUSH_REPLY,peer-id 16777215"}, "peer-id"},
		{[]string{"PUSH_REPLY,peer-id -1"}, "peer-id"},
		{[]string{"PUSH_REPLY,ping ten"}, "ping"},
		{[]string{"PUSH_REPLY,route 10.0.0.1 255.255.255.0"}, "host bits"},
		{[]string{"PUSH_REPLY,route 10.0.0.0 255.255.255.0 10.8.0.1 x"}, "metric"},
		{[]string{"PUSH_REPLY,dhcp-option DNS nameserver"}, "dhcp-option"},
		{[]string{"PUSH_REPLY,push-continuation 2"}, "continuation markers"},
		{[]string{"PUSH_REPLY", "PUSH_REPLY"}, "continuation markers"},
		{nil, "no message"},
	} {
		_, err := ParseReply(tc.msgs...)
		if !errors.Is(err, ErrReply) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want ErrReply mentioning %q", tc.msgs, err, tc.want)
		}
	}
}

// FuzzParseReply: Parse never panics and its errors wrap ErrReply; the options
// of a reply it accepts are clean, its decoded fields are consistent, and the
// options framed again by Split parse to the same Reply.
func FuzzParseReply(f *testing.F) {
	f.Add(openvpnReply, "")
	f.Add(cvpnReply, "")
	f.Add("PUSH_REPLY,route 1.2.3.0 255.255.255.0 vpn_gateway 3,push-continuation 2", "PUSH_REPLY,topology subnet,ifconfig 1.2.3.4 255.255.255.0")
	f.Add("PUSH_REPLY,push-continuation", "PUSH_REPLY, ,\t,peer-id 007")
	f.Fuzz(func(t *testing.T, first, second string) {
		var r Reply
		complete, err := r.Parse(first)
		if err == nil && !complete {
			complete, err = r.Parse(second)
		}
		if err != nil {
			if !errors.Is(err, ErrReply) {
				t.Fatalf("error %v does not wrap ErrReply", err)
			}
			return
		}
		if !complete {
			return
		}
		for _, o := range r.Options {
			if o == "" || strings.Contains(o, ",") || strings.TrimSpace(o) != o || strings.HasPrefix(o, "push-continuation ") {
				t.Fatalf("bad option %q", o)
			}
		}
		if r.Ifconfig.IsValid() && (!r.Ifconfig.Addr().Is4() || r.Ifconfig.Bits() < 0) {
			t.Fatalf("bad ifconfig %v", r.Ifconfig)
		}
		if r.HasPeerID && r.PeerID >= packet.NoPeerID {
			t.Fatalf("peer-id %d out of range", r.PeerID)
		}
		for _, rt := range r.Routes {
			if rt.Network.Masked() != rt.Network {
				t.Fatalf("route %v not masked", rt.Network)
			}
		}
		msgs := Split(r.Options, MaxMessageLen)
		again, err := ParseReply(msgs...)
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("re-encoded reply %q parsed to %+v, %v\nwant %+v", msgs, again, err, r)
		}
	})
}
