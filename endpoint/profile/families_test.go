package profile

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/config"
)

// goldenProfile is a profile of fixed content for golden tests of the remote lines.
func goldenProfile(proto string, families []string) *Profile {
	return &Profile{
		Description: "dual",
		Remote:      "vpn.example.com",
		Proto:       proto,
		Ports:       []uint16{443, 1194},
		Families:    families,
		ServerName:  "vpn.example.com",
		Ciphers:     []string{"AES-256-GCM", "CHACHA20-POLY1305"},
		CAPEM:       []byte("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"),
		TLSCrypt:    []byte("-----BEGIN OpenVPN Static key V1-----\nKEY\n-----END OpenVPN Static key V1-----\n"),
		Certificate: true,
	}
}

// goldenTail is every golden profile's end, after the remote lines and their options.
const goldenTail = `nobind
persist-key
persist-tun
%EXIT%remote-cert-tls server
verify-x509-name vpn.example.com name
cipher AES-256-GCM
data-ciphers AES-256-GCM:CHACHA20-POLY1305
reneg-sec 0
verb 3
<ca>
-----BEGIN CERTIFICATE-----
CA
-----END CERTIFICATE-----
</ca>
<tls-crypt>
-----BEGIN OpenVPN Static key V1-----
KEY
-----END OpenVPN Static key V1-----
</tls-crypt>
`

const goldenHead = `# cvpn client profile for OpenVPN 2.6
# endpoint: dual
# No client identity: add the client's cert and key blocks (cvpn export-client-config --client NAME does).
`

// TestRenderRemotesGolden: an IPv4 endpoint's profile is byte for byte what it was before IPv6
// listeners existed (the text below was rendered by that code); an endpoint clients reach over
// IPv6 lists a remote per port and family, IPv4 first, with the family's protocol name.
func TestRenderRemotesGolden(t *testing.T) {
	for _, tc := range []struct {
		name     string
		proto    string
		families []string
		middle   string // from the first line after the head to resolv-retry and what follows it
	}{
		{"ipv4 udp, no families", "udp", nil, `client
dev tun
proto udp
remote vpn.example.com 443
remote vpn.example.com 1194
resolv-retry infinite
`},
		{"ipv4 udp", "udp", []string{config.IPv4}, `client
dev tun
proto udp
remote vpn.example.com 443
remote vpn.example.com 1194
resolv-retry infinite
`},
		{"ipv4 tcp", "tcp", []string{config.IPv4}, `client
dev tun
proto tcp
remote vpn.example.com 443
remote vpn.example.com 1194
resolv-retry infinite
`},
		{"dual-stack udp", "udp", []string{config.IPv4, config.IPv6}, `# The endpoint listens on IPv4 and IPv6: the client tries each remote in turn.
client
dev tun
proto udp
remote vpn.example.com 443 udp4
remote vpn.example.com 443 udp6
remote vpn.example.com 1194 udp4
remote vpn.example.com 1194 udp6
resolv-retry infinite
server-poll-timeout 10
`},
		{"dual-stack tcp", "tcp", []string{config.IPv4, config.IPv6}, `# The endpoint listens on IPv4 and IPv6: the client tries each remote in turn.
client
dev tun
proto tcp
remote vpn.example.com 443 tcp4-client
remote vpn.example.com 443 tcp6-client
remote vpn.example.com 1194 tcp4-client
remote vpn.example.com 1194 tcp6-client
resolv-retry infinite
server-poll-timeout 10
`},
		{"ipv6 udp", "udp", []string{config.IPv6}, `client
dev tun
proto udp
remote vpn.example.com 443 udp6
remote vpn.example.com 1194 udp6
resolv-retry infinite
`},
		{"ipv6 tcp", "tcp", []string{config.IPv6}, `client
dev tun
proto tcp
remote vpn.example.com 443 tcp6-client
remote vpn.example.com 1194 tcp6-client
resolv-retry infinite
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exit := ""
			if tc.proto == "udp" {
				exit = "explicit-exit-notify 1\n"
			}
			want := goldenHead + tc.middle + strings.Replace(goldenTail, "%EXIT%", exit, 1)
			if got := string(goldenProfile(tc.proto, tc.families).Render()); got != want {
				t.Errorf("rendered:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestRemoteFamilies: the families follow endpoint_ip_address_type, narrowed to the family of an
// IP-address remote_hostname; an address the endpoint cannot be reached at is refused.
func TestRemoteFamilies(t *testing.T) {
	four, six, both := []string{config.IPv4}, []string{config.IPv6}, []string{config.IPv4, config.IPv6}
	for _, tc := range []struct {
		typ, remote string
		want        []string // nil: an error
	}{
		{"", "vpn.example.com", four},
		{config.IPv4, "vpn.example.com", four},
		{config.IPv6, "vpn.example.com", six},
		{config.DualStack, "vpn.example.com", both},
		{config.DualStack, "192.0.2.1", four},
		{config.DualStack, "2001:db8::1", six},
		{config.IPv4, "192.0.2.1", four},
		{config.IPv6, "2001:db8::1", six},
		{config.DualStack, "::ffff:192.0.2.1", four},
		{config.IPv4, "2001:db8::1", nil},
		{"", "2001:db8::1", nil},
		{config.IPv6, "192.0.2.1", nil},
	} {
		got, err := RemoteFamilies(tc.typ, tc.remote)
		switch {
		case tc.want == nil && (err == nil || !strings.Contains(err.Error(), "endpoint_ip_address_type") || !strings.Contains(err.Error(), tc.remote)):
			t.Errorf("%q, %s: %v, %v; want an error naming endpoint_ip_address_type and the address", tc.typ, tc.remote, got, err)
		case tc.want != nil && (err != nil || !slices.Equal(got, tc.want)):
			t.Errorf("%q, %s: %v, %v; want %v", tc.typ, tc.remote, got, err, tc.want)
		}
	}
}

// TestNewDualStack: New takes the families from the endpoint, and an IP-address remote_hostname
// of a family the endpoint does not listen on is an error naming remote_hostname and
// endpoint_ip_address_type.
func TestNewDualStack(t *testing.T) {
	tp := newPKI(t)
	ep := tp.endpoint(config.ControlChannel{TLSCryptKeyFile: "tc.key"})
	ep.Config.EndpointIPAddressType = config.DualStack
	p, err := New(ep, "udp", []uint16{443}, tp.now)
	if err != nil {
		t.Fatal(err)
	}
	got := directives(string(p.Render()))
	want := []string{"client", "dev tun", "proto udp", "remote vpn.example.com 443 udp4", "remote vpn.example.com 443 udp6",
		"resolv-retry infinite", "server-poll-timeout 10"}
	if !slices.Equal(got[:len(want)], want) {
		t.Errorf("directives:\n%s\nwant them to start:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	ep.Config.RemoteHostname = "2001:db8::1"
	if p, err = New(ep, "tcp", []uint16{443}, tp.now); err != nil {
		t.Fatal(err)
	}
	if got := directives(string(p.Render())); !slices.Contains(got, "remote 2001:db8::1 443 tcp6-client") || slices.Contains(got, "server-poll-timeout 10") {
		t.Errorf("an IPv6 remote_hostname on a dual-stack endpoint:\n%s", strings.Join(got, "\n"))
	}

	ep.Config.EndpointIPAddressType = config.IPv4
	_, err = New(ep, "udp", []uint16{443}, tp.now)
	var ve *config.ValidationError
	if !errors.As(err, &ve) || ve.Path != "remote_hostname" || !strings.Contains(err.Error(), "endpoint_ip_address_type") {
		t.Errorf("an IPv6 remote_hostname on an IPv4 endpoint: %v, want an error naming remote_hostname and endpoint_ip_address_type", err)
	}
}

// TestOpenVPNParsesProfiles: the stock client reads each kind of profile and makes of its
// remote lines the connection entries meant, each in its family. OpenVPN has no option that
// checks a config and exits, so the client runs in a network namespace of its own with no
// network (nothing it tries leaves the host), prints its settings at verb 4 (among them each
// connection entry's proto and remote, options.c show_connection_entry) and is stopped once it
// has: parse and option checks come before those lines, and an error there ends it first.
func TestOpenVPNParsesProfiles(t *testing.T) {
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
		typ, proto, remote string
		want               []string // "proto remote" of each connection entry
	}{
		{config.IPv4, "udp", "vpn.example.com", []string{"udp vpn.example.com", "udp vpn.example.com"}},
		{config.DualStack, "udp", "vpn.example.com", []string{"udp4 vpn.example.com", "udp6 vpn.example.com", "udp4 vpn.example.com", "udp6 vpn.example.com"}},
		{config.DualStack, "tcp", "vpn.example.com", []string{"tcp4-client vpn.example.com", "tcp6-client vpn.example.com", "tcp4-client vpn.example.com", "tcp6-client vpn.example.com"}},
		{config.IPv6, "udp", "2001:db8::1", []string{"udp6 2001:db8::1", "udp6 2001:db8::1"}},
	} {
		t.Run(tc.typ+" "+tc.proto, func(t *testing.T) {
			ep := tp.endpoint(config.ControlChannel{TLSCryptKeyFile: "tc.key"})
			ep.Config.EndpointIPAddressType, ep.Config.RemoteHostname = tc.typ, tc.remote
			p, err := New(ep, tc.proto, []uint16{443, 1194}, tp.now)
			if err != nil {
				t.Fatal(err)
			}
			p.SetClient("alice", tp.alice)
			file := filepath.Join(dir, tc.typ+"-"+tc.proto+".ovpn")
			if err := os.WriteFile(file, p.Render(), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := connectionEntries(t, bin, file); !slices.Equal(got, tc.want) {
				t.Errorf("openvpn read the connection entries %q, want %q", got, tc.want)
			}
		})
	}
}

// connectionEntries runs the stock client on the profile file with no network and returns the
// "proto remote" of each connection entry it prints.
func connectionEntries(t *testing.T, bin, file string) []string {
	t.Helper()
	entries, _ := connectionEntriesTimeouts(t, bin, file)
	return entries
}

// connectionEntriesTimeouts is connectionEntries that also returns the connect_timeout
// (server-poll-timeout) of each entry, as the client prints it.
func connectionEntriesTimeouts(t *testing.T, bin, file string) (entries, timeouts []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--config", file, "--verb", "4", "--connect-retry-max", "1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.StdoutPipe() // openvpn logs to stdout
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	var (
		proto string
		log   []string
	)
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		log = append(log, line)
		// "2026-11-29 20:16:49 us=21771   proto = udp4": after the timestamps, a name and a value.
		fields := strings.Fields(line)
		if len(fields) < 3 {
			continue
		}
		rest := strings.Join(fields[3:], " ")
		switch {
		case strings.HasPrefix(rest, "Connection profiles END"):
			return entries, timeouts
		case strings.HasPrefix(rest, "Options error"):
			t.Fatalf("openvpn refused the profile: %s", rest)
		case strings.HasPrefix(rest, "proto = "):
			proto = strings.TrimPrefix(rest, "proto = ")
		case strings.HasPrefix(rest, "remote = "):
			entries = append(entries, proto+" "+strings.Trim(strings.TrimPrefix(rest, "remote = "), "'"))
		case strings.HasPrefix(rest, "connect_timeout = "):
			timeouts = append(timeouts, strings.TrimPrefix(rest, "connect_timeout = "))
		}
	}
	t.Fatalf("openvpn ended without listing its connection entries:\n%s", strings.Join(log, "\n"))
	return nil, nil
}
