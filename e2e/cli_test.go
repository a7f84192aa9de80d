package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

// cli runs the cvpn binary (not in a namespace) and fails the test on error.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(cvpnBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("cvpn %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// cliSetup is an endpoint made only with the cvpn CLI, as the README quick start does.
type cliSetup struct {
	*setup
	dir, config string
}

func newCLISetup(t *testing.T, edit func(yaml string) string) *cliSetup {
	t.Helper()
	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	s := &cliSetup{setup: &setup{t: t, lab: lab}, dir: filepath.Join(t.TempDir(), "endpoint")}
	t.Cleanup(func() {
		lab.Close()
		if t.Failed() && s.srv != nil {
			t.Logf("cvpn output:\n%s", s.srv.Output())
		}
	})
	// Clients reach the endpoint at its first client-facing address.
	cli(t, "init", "--dir", s.dir, "--client-cidr", "10.2.0.0/22", "--vpc-cidr", "10.0.0.0/16",
		"--target-interface", "eth1", "--snat-address", netlab.SNATAddress.String(),
		"--remote", "172.31.1.1", "--transport", "udp/443,tcp/443")
	s.config = filepath.Join(s.dir, "endpoint.yaml")
	// Each endpoint its own admin API, so that the tests run side by side.
	f, err := os.OpenFile(s.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("admin: {socket: admin.sock}\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if edit != nil {
		b, err := os.ReadFile(s.config)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(s.config, []byte(edit(string(b))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s *cliSetup) serve() {
	s.t.Helper()
	var err error
	s.srv, err = s.lab.Start("cvpn", s.lab.Server, cvpnBin, "serve", "--config", s.config)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.srv.WaitFor("cvpn listening", 10*time.Second); err != nil {
		s.t.Fatal(err)
	}
}

// connectExported starts the stock client with nothing but an exported profile.
func (s *cliSetup) connectExported(name, proto string, wait bool) *vpnClient {
	s.t.Helper()
	profile := cli(s.t, "export-client-config", "--config", s.config, "--client", name, "--protocol", proto)
	path := filepath.Join(s.dir, name+"-"+proto+".ovpn")
	if err := os.WriteFile(path, []byte(profile), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return s.startProfile(name, path, wait)
}

// startProfile starts the stock client with a profile file in a new client namespace.
func (s *cliSetup) startProfile(name, path string, wait bool) *vpnClient {
	s.t.Helper()
	ns, _, err := s.lab.AddClient()
	if err != nil {
		s.t.Fatal(err)
	}
	p, err := s.lab.Start("openvpn "+name, ns, "openvpn", "--config", path, "--connect-retry", "1", "--connect-retry-max", "1000")
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		if s.t.Failed() {
			s.t.Logf("openvpn %s output:\n%s", name, p.Output())
		}
	})
	c := &vpnClient{ns: ns, proc: p}
	if wait {
		if err := p.WaitFor("Initialization Sequence Completed", 30*time.Second); err != nil {
			s.t.Fatalf("%s (%s): %v", name, path, err)
		}
	}
	return c
}

// TestQuickStartProfiles is the README quick start: cvpn init, client issue, export-client-config,
// and the stock client connects with nothing but the exported file, over UDP and over TCP.
func TestQuickStartProfiles(t *testing.T) {
	t.Parallel()
	s := newCLISetup(t, nil)
	cli(t, "client", "issue", "alice", "--config", s.config)
	s.serve()
	u := s.connectExported("alice", "udp", true)
	s.ping(u, netlab.VPCHost.String())
	tc := s.connectExported("alice", "tcp", true)
	s.ping(tc, netlab.VPCHost.String())
}

// TestRevocation revokes a connected client: it is cut off within a few seconds and refused when
// it tries again, while another client stays connected.
func TestRevocation(t *testing.T) {
	t.Parallel()
	s := newCLISetup(t, nil)
	cli(t, "client", "issue", "alice", "--config", s.config)
	cli(t, "client", "issue", "bob", "--config", s.config)
	s.serve()
	alice := s.connectExported("alice", "udp", true)
	bob := s.connectExported("bob", "udp", true)
	s.ping(bob, netlab.VPCHost.String())

	cli(t, "client", "revoke", "bob", "--config", s.config)
	if err := s.srv.WaitFor(`cn=bob`, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.srv.WaitFor(`reason="certificate revoked"`, 8*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := bob.proc.WaitFor("AUTH_FAILED,client certificate revoked", 5*time.Second); err != nil {
		t.Fatalf("connected client not told it was revoked: %v", err)
	}
	// bob's next attempt is refused in the TLS handshake.
	again := s.startProfile("bob", filepath.Join(s.dir, "bob-udp.ovpn"), false)
	if err := s.srv.WaitFor(`is revoked`, 20*time.Second); err != nil {
		t.Fatalf("revoked client's new connection not refused: %v", err)
	}
	if strings.Contains(again.proc.Output(), "Initialization Sequence Completed") {
		t.Fatalf("revoked client connected again:\n%s", again.proc.Output())
	}
	s.ping(alice, netlab.VPCHost.String())
	if strings.Contains(s.srv.Output(), `cn=alice remote`) && strings.Contains(s.srv.Output(), "client disconnected cn=alice") {
		t.Fatal("alice was disconnected by bob's revocation")
	}
	out := cli(t, "client", "list", "--config", s.config)
	if !strings.Contains(out, "bob") || !strings.Contains(out, "revoked") {
		t.Fatalf("client list does not show bob revoked:\n%s", out)
	}
}

// TestTLSCryptV2 serves tls-crypt-v2 only, with a server key made by openvpn itself: a client
// issued its own key connects over UDP (2.6 early negotiation, stateless) and TCP.
func TestTLSCryptV2(t *testing.T) {
	t.Parallel()
	s := newCLISetup(t, func(y string) string {
		return y
	})
	v2 := filepath.Join(s.dir, "pki", "tc-v2-server.key")
	if out, err := exec.CommandContext(context.Background(), "openvpn", "--genkey", "tls-crypt-v2-server", v2).CombinedOutput(); err != nil {
		t.Fatalf("openvpn --genkey: %v\n%s", err, out)
	}
	b, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	y := string(b)
	start := strings.Index(y, "control_channel:")
	if start < 0 {
		t.Fatalf("no control_channel in:\n%s", y)
	}
	end := strings.Index(y[start+1:], "\n") + start + 1
	for end+1 < len(y) && (y[end+1] == ' ' || y[end+1] == '#') {
		end = strings.Index(y[end+1:], "\n") + end + 1
	}
	y = y[:start] + "control_channel:\n  tls_crypt_v2_server_key_file: pki/tc-v2-server.key\n" + y[end+1:]
	if err := os.WriteFile(s.config, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	cli(t, "client", "issue", "carol", "--tls-crypt-v2", "--config", s.config)
	s.serve()
	u := s.connectExported("carol", "udp", true)
	if !strings.Contains(u.proc.Output(), "tls-crypt-v2") && !strings.Contains(u.proc.Output(), "TLS-Crypt-v2") {
		t.Logf("client log does not mention tls-crypt-v2")
	}
	s.ping(u, netlab.VPCHost.String())
	tc := s.connectExported("carol", "tcp", true)
	s.ping(tc, netlab.VPCHost.String())

	// A client key made by openvpn itself from the same server key works as it is.
	cli(t, "client", "issue", "dave", "--config", s.config)
	daveKey := filepath.Join(s.dir, "pki", "clients", "dave.tls-crypt-v2.key")
	if out, err := exec.Command("openvpn", "--tls-crypt-v2", v2, "--genkey", "tls-crypt-v2-client", daveKey).CombinedOutput(); err != nil {
		t.Fatalf("openvpn --genkey tls-crypt-v2-client: %v\n%s", err, out)
	}
	d := s.connectExported("dave", "udp", true)
	s.ping(d, netlab.VPCHost.String())
}
