package e2e

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/console"
	"github.com/cvpn/cvpn/internal/netlab"
)

// consoleClient is a stock openvpn client whose console (its controlling terminal) the test
// drives: it answers the Username, Password and CHALLENGE prompts as a person would.
type consoleClient struct {
	*vpnClient // ns for ping and tunAddress; proc is nil
	con        *console.Console
}

// startConsole starts a stock openvpn client with a fresh certificate on a pseudo-terminal in a
// new client namespace, without waiting for it. The console is killed when the test ends and its
// output logged if the test failed.
//
// The client asks on its builtin console: WithoutSystemd hides a running systemd, which would
// otherwise make Debian's openvpn ask through systemd-ask-password (console_systemd.c).
func (s *setup) startConsole(name string, o netlab.ProfileOptions) *consoleClient {
	s.t.Helper()
	ns, server, err := s.lab.AddClient()
	if err != nil {
		s.t.Fatal(err)
	}
	profile, err := s.ep.ClientProfile(name, server, o)
	if err != nil {
		s.t.Fatal(err)
	}
	args := console.WithoutSystemd([]string{"ip", "netns", "exec", ns, "openvpn", "--config", profile})
	con := console.Start(s.t, exec.Command(args[0], args[1:]...))
	return &consoleClient{vpnClient: &vpnClient{ns: ns}, con: con}
}

// expect waits for re on the client's console and fails the test if it does not come.
func (c *consoleClient) expect(t *testing.T, re string, timeout time.Duration) []string {
	t.Helper()
	m, err := c.con.Expect(regexp.MustCompile(re), timeout)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// login answers the client's auth-user-pass prompts: the username is typed with echo on, the
// password once the client has turned echo off (src/openvpn/misc.c get_user_pass_cr asks
// "Enter Auth Username:" then "Enter Auth Password:", the latter with echo off).
func (c *consoleClient) login(t *testing.T, user, password string) {
	t.Helper()
	c.expect(t, `Enter Auth Username:`, 15*time.Second)
	if err := c.con.Send(user); err != nil {
		t.Fatal(err)
	}
	c.expect(t, `Enter Auth Password:`, 15*time.Second)
	if err := c.con.SendSecret(password, 15*time.Second); err != nil {
		t.Fatal(err)
	}
}

// The stock client with auth-user-pass and no credentials file asks for them on its console;
// the test answers, and against a certificate-only endpoint (which ignores the username and
// password in the key-method 2 block) the client connects and reaches the VPC.
func TestConsoleAuthUserPass(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
	}{
		{"plain", "auth-user-pass\n"},
		// The lines an exported profile of a directory endpoint carries (issue 13).
		{"exported", "auth-user-pass\nauth-nocache\nauth-retry interact\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
			c := s.startConsole("alice", netlab.ProfileOptions{Extra: tc.extra})
			c.login(t, "alice", "correct horse battery")
			c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
			s.ping(c.vpnClient, netlab.VPCHost.String())
			out := c.con.Output()
			// The terminal echoed the username, never the password: openvpn read it with echo off.
			if !strings.Contains(out, "Enter Auth Username:alice") {
				t.Errorf("console does not show the typed username after its prompt:\n%s", out)
			}
			if strings.Contains(out, "correct horse") {
				t.Errorf("console shows the password:\n%s", out)
			}
			if strings.Contains(s.srv.Output(), "correct horse") {
				t.Errorf("cvpn logged the password:\n%s", s.srv.Output())
			}
		})
	}
}
