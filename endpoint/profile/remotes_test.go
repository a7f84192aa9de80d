package profile

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cvpn/cvpn/config"
)

// TestRenderRemotesClusterGolden: a profile of an endpoint on three nodes lists each node's
// remotes in turn, with remote-random and server-poll-timeout; on a dual-stack endpoint a node
// named by an IP address gets the lines of its own family alone.
func TestRenderRemotesClusterGolden(t *testing.T) {
	for _, tc := range []struct {
		name, typ, proto string
		hosts            []string
		middle           string // from the first line after the head to server-poll-timeout
	}{
		{"ipv4 udp", config.IPv4, "udp", []string{"198.51.100.1", "198.51.100.2", "node3.vpn.example.com"}, `# The endpoint runs on 3 nodes: the client tries their remotes in a random order, moving on from one that does not answer.
client
dev tun
proto udp
remote 198.51.100.1 443
remote 198.51.100.1 1194
remote 198.51.100.2 443
remote 198.51.100.2 1194
remote node3.vpn.example.com 443
remote node3.vpn.example.com 1194
remote-random
resolv-retry infinite
server-poll-timeout 10
`},
		{"dual-stack tcp", config.DualStack, "tcp", []string{"198.51.100.1", "2001:db8::2", "node3.vpn.example.com"}, `# The endpoint listens on IPv4 and IPv6: the client tries each remote in turn.
# The endpoint runs on 3 nodes: the client tries their remotes in a random order, moving on from one that does not answer.
client
dev tun
proto tcp
remote 198.51.100.1 443
remote 198.51.100.1 1194
remote 2001:db8::2 443 tcp6-client
remote 2001:db8::2 1194 tcp6-client
remote node3.vpn.example.com 443 tcp4-client
remote node3.vpn.example.com 443 tcp6-client
remote node3.vpn.example.com 1194 tcp4-client
remote node3.vpn.example.com 1194 tcp6-client
remote-random
resolv-retry infinite
server-poll-timeout 10
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := goldenProfile(tc.proto, nil)
			p.addressType = tc.typ
			if err := p.SetRemotes(tc.hosts); err != nil {
				t.Fatal(err)
			}
			exit := ""
			if tc.proto == "udp" {
				exit = "explicit-exit-notify 1\n"
			}
			want := goldenHead + tc.middle + strings.Replace(goldenTail, "%EXIT%", exit, 1)
			if got := string(p.Render()); got != want {
				t.Errorf("rendered:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestSetRemotesOneHost: one host is remote_hostname by another name, byte for byte.
func TestSetRemotesOneHost(t *testing.T) {
	tp := newPKI(t)
	ep := tp.endpoint(config.ControlChannel{TLSCryptKeyFile: "tc.key"})
	ep.Config.EndpointIPAddressType = config.DualStack
	p, err := New(ep, "udp", []uint16{443}, tp.now)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetRemotes([]string{"2001:db8::7"}); err != nil {
		t.Fatal(err)
	}
	ep.Config.RemoteHostname = "2001:db8::7"
	q, err := New(ep, "udp", []uint16{443}, tp.now)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(p.Render()), string(q.Render()); got != want {
		t.Errorf("one remote host:\n%s\nremote_hostname alone:\n%s", got, want)
	}
}

// TestSetRemotesRefuses: every host passes remote_hostname's checks, against the endpoint's
// address type too; a host listed twice, no host and too many are refused, and a refused
// list leaves the profile as it was.
func TestSetRemotesRefuses(t *testing.T) {
	tp := newPKI(t)
	ep := tp.endpoint(config.ControlChannel{TLSCryptKeyFile: "tc.key"})
	many := make([]string, MaxRemotes+1)
	for i := range many {
		many[i] = "node" + strings.Repeat("x", i) + ".example.com"
	}
	for _, tc := range []struct {
		name  string
		hosts []string
		want  string // in the error
	}{
		{"none", nil, "want 1 to"},
		{"too many", many, "want 1 to"},
		{"bad name", []string{"node1.example.com", "node 2"}, "node 2"},
		{"newline", []string{"node1.example.com", "node2\nup /bin/sh"}, "not an IP address or DNS name"},
		{"unspecified", []string{"node1.example.com", "0.0.0.0"}, "0.0.0.0"},
		{"wrong family", []string{"node1.example.com", "2001:db8::1"}, "endpoint_ip_address_type"},
		{"twice", []string{"198.51.100.1", "::ffff:198.51.100.1"}, "twice"},
		{"twice by name", []string{"Node1.example.com", "node1.example.com."}, "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(ep, "udp", []uint16{443}, tp.now)
			if err != nil {
				t.Fatal(err)
			}
			before := string(p.Render())
			err = p.SetRemotes(tc.hosts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("SetRemotes(%q): %v, want an error containing %q", tc.hosts, err, tc.want)
			}
			if got := string(p.Render()); got != before {
				t.Errorf("a refused list changed the profile:\n%s", got)
			}
		})
	}
}

// TestOpenVPNParsesClusterProfile: the stock client reads a three-node profile as a connection
// entry per node and port (and family), each with the 10 s server-poll-timeout. The client
// shuffles the entries (remote-random), so they are compared as sets.
func TestOpenVPNParsesClusterProfile(t *testing.T) {
	bin, err := exec.LookPath("openvpn")
	if err != nil {
		t.Skip("no openvpn binary; e2e runs the stock client")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace of its own, so that the client reaches nothing")
	}
	tp := newPKI(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		typ, proto string
		hosts      []string
		want       []string
	}{
		{config.IPv4, "udp", []string{"172.30.0.1", "172.30.0.2", "172.30.0.3"}, []string{
			"udp 172.30.0.1", "udp 172.30.0.1", "udp 172.30.0.2", "udp 172.30.0.2", "udp 172.30.0.3", "udp 172.30.0.3"}},
		{config.DualStack, "tcp", []string{"172.30.0.1", "2001:db8::2", "node3.example.com"}, []string{
			"tcp-client 172.30.0.1", "tcp-client 172.30.0.1", "tcp6-client 2001:db8::2", "tcp6-client 2001:db8::2",
			"tcp4-client node3.example.com", "tcp6-client node3.example.com", "tcp4-client node3.example.com", "tcp6-client node3.example.com"}},
	} {
		t.Run(tc.typ+" "+tc.proto, func(t *testing.T) {
			ep := tp.endpoint(config.ControlChannel{TLSCryptKeyFile: "tc.key"})
			ep.Config.EndpointIPAddressType = tc.typ
			p, err := New(ep, tc.proto, []uint16{443, 1194}, tp.now)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.SetRemotes(tc.hosts); err != nil {
				t.Fatal(err)
			}
			p.SetClient("alice", tp.alice)
			file := filepath.Join(dir, tc.typ+"-"+tc.proto+".ovpn")
			if err := os.WriteFile(file, p.Render(), 0o600); err != nil {
				t.Fatal(err)
			}
			got, timeouts := connectionEntriesTimeouts(t, bin, file)
			slices.Sort(got)
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Errorf("openvpn read the connection entries %q, want %q", got, want)
			}
			for _, to := range timeouts {
				if to != "10" {
					t.Errorf("openvpn read connect_timeout %s, want 10 (server-poll-timeout) for every entry: %q", to, timeouts)
					break
				}
			}
			if len(timeouts) != len(got) {
				t.Errorf("openvpn showed %d connect_timeouts for %d entries", len(timeouts), len(got))
			}
		})
	}
}
