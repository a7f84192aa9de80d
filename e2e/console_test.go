package e2e

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
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

// stockVerify is the stock server's auth-user-pass-verify script (via-file: $1 holds the username
// and the password on two lines). It records what the client sent and plays an MFA server:
//   - static challenge: password SCRV1:base64(pw):base64(code) with pw "pw" and code 135790;
//   - password "plain" passes;
//   - dynamic challenge: the first login of user "dyn" with password "pw" fails with the CRV1
//     challenge written to $auth_failed_reason_file, which the server relays as
//     AUTH_FAILED,<reason> (src/openvpn/ssl_verify.c verify_user_pass_script and
//     check_for_client_reason); the answer CRV1::st4te::246810 passes.
const stockVerify = `#!/bin/sh
user=$(sed -n 1p "$1")
pass=$(sed -n 2p "$1")
printf '%s|%s\n' "$user" "$pass" >> "$(dirname "$0")/seen.log"
case "$pass" in
SCRV1:*)
	pw=$(printf '%s' "$pass" | cut -d: -f2 | base64 -d)
	code=$(printf '%s' "$pass" | cut -d: -f3 | base64 -d)
	[ "$user" = static ] && [ "$pw" = pw ] && [ "$code" = 135790 ] && exit 0
	exit 1 ;;
"CRV1::st4te::246810")
	[ "$user" = dyn ] && exit 0
	exit 1 ;;
plain)
	exit 0 ;;
esac
if [ "$user" = dyn ] && [ "$pass" = pw ]; then
	printf 'CRV1:R,E:st4te:%s:Enter your authenticator code' "$(printf dyn | base64)" > "$auth_failed_reason_file"
fi
exit 1
`

// startStockServer starts the stock openvpn server in a new lab, with the endpoint PKI and
// tls-crypt key of netlab and stockVerify as its auth-user-pass-verify script; extra is appended
// to its configuration. seen returns what the script recorded, one "user|password" line per call.
func startStockServer(t *testing.T, extra string) (s *setup, seen func() string) {
	t.Helper()
	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	ep, err := netlab.WriteEndpoint(t.TempDir(), netlab.EndpointOptions{TLSCrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	conf := `port 443
proto udp
dev tun
topology subnet
server 10.9.0.0 255.255.255.0
ca ca.crt
cert server.crt
key server.key
dh none
tls-crypt tc.key
data-ciphers AES-256-GCM
keepalive 10 60
verb 3
script-security 2
auth-user-pass-verify ./verify.sh via-file
` + extra
	for name, body := range map[string]string{"server.conf": conf, "verify.sh": stockVerify} {
		if err := os.WriteFile(filepath.Join(ep.Dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := lab.Start("openvpn server", lab.Server, "openvpn", "--cd", ep.Dir, "--config", "server.conf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stock server output:\n%s", srv.Output())
		}
	})
	if err := srv.WaitFor("Initialization Sequence Completed", 15*time.Second); err != nil {
		t.Fatal(err)
	}
	seen = func() string {
		b, _ := os.ReadFile(filepath.Join(ep.Dir, "seen.log"))
		return string(b)
	}
	return &setup{t: t, lab: lab, ep: ep}, seen
}

// TestConsoleRenegotiationStockServer shows why an MFA endpoint must push an auth-token: with
// auth-nocache (which exported profiles carry) the client has forgotten the credentials by the
// first renegotiation, and without a token it stops to ask for them again at its console
// (src/openvpn/ssl.c key_method_2_write calls auth_user_pass_setup, which prompts); with a
// token it sends the token instead and asks nothing.
func TestConsoleRenegotiationStockServer(t *testing.T) {
	profile := netlab.ProfileOptions{Extra: "auth-user-pass\nauth-nocache\nauth-retry interact\nreneg-sec 3\n"}
	t.Run("token", func(t *testing.T) {
		s, seen := startStockServer(t, "auth-gen-token 0\n")
		c := s.startConsole("static", profile)
		c.login(t, "static", "plain")
		c.expect(t, `PUSH_REPLY,[^\r\n]*auth-token`, 30*time.Second)
		c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
		for range 2 {
			c.expect(t, `TLS: soft reset`, 30*time.Second)
			// The server answers the renegotiation's key-method 2 block (which carried the
			// token) with a fresh token: by then a prompt would have been printed.
			c.expect(t, `PUSH_REPLY,auth-token`, 30*time.Second)
		}
		// A reconnect (SIGUSR1, as a ping-restart would) sends the token too: the client asks
		// only when it has neither credentials nor token (ssl.c auth_user_pass_setup).
		if err := c.con.Signal(syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		c.expect(t, `SIGUSR1\[[a-z]+,[^\]]*\] received, process restarting`, 15*time.Second)
		c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
		if n := strings.Count(c.con.Output(), "Enter Auth Username:"); n != 1 {
			t.Errorf("asked for the username %d times, want once:\n%s", n, c.con.Output())
		}
		if got := seen(); got != "static|plain\n" {
			t.Errorf("verify script saw %q, want the one login (tokens are checked by the server)", got)
		}
		s.ping(c.vpnClient, "10.9.0.1")
	})
	t.Run("no-token", func(t *testing.T) {
		s, seen := startStockServer(t, "")
		c := s.startConsole("static", profile)
		c.login(t, "static", "plain")
		c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
		c.expect(t, `TLS: soft reset`, 30*time.Second)
		c.login(t, "static", "plain")
		c.expect(t, `Control Channel: TLS`, 30*time.Second)
		s.ping(c.vpnClient, "10.9.0.1")
		if got := seen(); got != "static|plain\nstatic|plain\n" {
			t.Errorf("verify script saw %q, want two logins", got)
		}
	})
}

// TestConsoleChallengesStockServer drives the stock client through both MFA challenge forms of
// issue 13 at its console, against the stock openvpn server whose verify script plays the MFA
// server, so that the console steps and the passwords the client sends are pinned down before
// cvpn implements them.
func TestConsoleChallengesStockServer(t *testing.T) {
	s, seen := startStockServer(t, "")

	t.Run("static", func(t *testing.T) {
		s := *s
		s.t = t
		c := s.startConsole("static", netlab.ProfileOptions{Extra: "auth-user-pass\nauth-nocache\nauth-retry interact\n" +
			`static-challenge "Enter your authenticator code" 1` + "\n"})
		// A wrong code first: AUTH_FAILED (no CRV1 reason), and auth-retry interact purges the
		// credentials and asks for all three again after the restart.
		for _, code := range []string{"000000", "135790"} {
			c.login(t, "static", "pw")
			// misc.c get_user_pass_cr: after the password, "CHALLENGE: <text>", echoed because
			// the profile's flag is 1.
			c.expect(t, `CHALLENGE: Enter your authenticator code$`, 15*time.Second)
			if err := c.con.Send(code); err != nil {
				t.Fatal(err)
			}
			if code == "000000" {
				c.expect(t, `AUTH: Received control message: AUTH_FAILED\r\n`, 30*time.Second)
				c.expect(t, `SIGUSR1\[soft,auth-failure\] received, process restarting`, 15*time.Second)
			}
		}
		c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
		s.ping(c.vpnClient, "10.9.0.1")
		want := "static|SCRV1:" + base64.StdEncoding.EncodeToString([]byte("pw")) + ":" + base64.StdEncoding.EncodeToString([]byte("135790")) + "\n"
		if !strings.Contains(seen(), want) {
			t.Errorf("the server's script saw %q, want the line %q", seen(), want)
		}
		if !strings.Contains(c.con.Output(), "CHALLENGE: Enter your authenticator code135790") {
			t.Errorf("the echoed response is not on the console:\n%s", c.con.Output())
		}
	})

	t.Run("static-hidden", func(t *testing.T) {
		s := *s
		s.t = t
		c := s.startConsole("static", netlab.ProfileOptions{Extra: "auth-user-pass\n" +
			`static-challenge "Code?" 0` + "\n"})
		c.login(t, "static", "pw")
		// Flag 0: the response is read with echo off, like the password.
		c.expect(t, `CHALLENGE: Code\?`, 15*time.Second)
		if err := c.con.SendSecret("135790", 15*time.Second); err != nil {
			t.Fatal(err)
		}
		c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
		if c.con.Contains("135790") {
			t.Errorf("the hidden response is on the console:\n%s", c.con.Output())
		}
	})

	t.Run("dynamic", func(t *testing.T) {
		s := *s
		s.t = t
		c := s.startConsole("dyn", netlab.ProfileOptions{Extra: "auth-user-pass\nauth-nocache\nauth-retry interact\n"})
		c.login(t, "dyn", "pw")
		// push.c receive_auth_failed logs the message, keeps the CRV1 challenge and restarts
		// (SIGUSR1) with the credentials purged (auth-retry interact).
		m := c.expect(t, `AUTH: Received control message: AUTH_FAILED,(CRV1:[^\r\n]*)`, 30*time.Second)
		if want := "CRV1:R,E:st4te:ZHlu:Enter your authenticator code"; m[1] != want {
			t.Errorf("challenge %q, want %q", m[1], want)
		}
		c.expect(t, `SIGUSR1\[soft,auth-failure\] received, process restarting`, 15*time.Second)
		// On restart init_query_passwords asks only for the response (no username or password
		// prompt): "CHALLENGE: <text>", echoed because of the E flag.
		c.expect(t, `CHALLENGE: Enter your authenticator code`, 30*time.Second)
		if n := strings.Count(c.con.Output(), "Enter Auth "); n != 2 {
			t.Errorf("the client asked for a username or password %d times, want 2 (once each, before the challenge):\n%s", n, c.con.Output())
		}
		if err := c.con.Send("246810"); err != nil {
			t.Fatal(err)
		}
		c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
		s.ping(c.vpnClient, "10.9.0.1")
		if want := "dyn|pw\ndyn|CRV1::st4te::246810\n"; !strings.Contains(seen(), want) {
			t.Errorf("the server's script saw %q, want the lines %q", seen(), want)
		}
	})
}
