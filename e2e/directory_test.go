package e2e

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/cvpn/cvpn/internal/console"
	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/internal/slapdlab"
	"github.com/cvpn/cvpn/pki"
)

// These tests are issue 13's "must show" for directory users and TOTP, with the stock openvpn
// client answering its console and a real slapd (memberof overlay) that the tests start in the
// endpoint's namespace: group access from the directory, a wrong password asked again, a group
// removal applied at the next renegotiation, the directory down at login and back, and TOTP
// through static-challenge and a CRV1 dynamic challenge, a replayed code, and auth-tokens
// carrying renegotiations and reconnects without a prompt (docs/protocol.md §15).

// The client's log of the auth-token it is pushed (it writes the token itself as nothing):
// in the login's PUSH_REPLY, and alone in the PUSH_REPLY that follows a renegotiation
// (docs/protocol.md §15). A renegotiation the server starts leaves no other trace at verb 3.
var (
	firstToken   = regexp.MustCompile(`PUSH: Received control message: 'PUSH_REPLY,[^'\r\n]*,auth-token-user [A-Za-z0-9+/=]+,auth-token'`)
	renewedToken = regexp.MustCompile(`PUSH: Received control message: 'PUSH_REPLY,auth-token-user [A-Za-z0-9+/=]+,auth-token'`)
)

// dirSetup is a lab whose cvpn logs users in against a slapd in the server namespace.
type dirSetup struct {
	*setup
	ldap    *slapdlab.Lab
	connLog string            // the connection log's path
	secrets map[string]string // user -> TOTP secret, from `cvpn user mfa enroll`
}

// dirOptions shape a directory endpoint: the lab endpoint options (rules, routes,
// NoCertificate), the YAML lines for authentication.mfa, and the users enrolled for TOTP
// before cvpn starts (the CLI then opens the state store itself; once cvpn serve holds the
// store, it goes through the admin API instead).
type dirOptions struct {
	netlab.EndpointOptions
	MFA    string
	Enroll []string
	// StartTLS has cvpn dial slapd's ldap:// port and upgrade with StartTLS, instead of ldaps.
	StartTLS bool
}

// newDirSetup starts slapd in a new lab's server namespace (cvpn reaches it on loopback over
// ldaps or StartTLS, verified against slapd's test CA), writes the endpoint with reneg_seconds 10 (the
// least the config allows), its connection log and state_dir, enrolls o.Enroll and starts cvpn.
func newDirSetup(t *testing.T, o dirOptions) *dirSetup {
	t.Helper()
	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	d := &dirSetup{setup: &setup{t: t, lab: lab}, secrets: map[string]string{}}
	t.Cleanup(func() {
		lab.Close()
		if t.Failed() && d.srv != nil {
			t.Logf("cvpn output:\n%s", d.srv.Output())
		}
	})
	// Registered after the lab's cleanup, so slapd stops before its namespace goes.
	d.ldap = slapdlab.StartIn(t, lab.Server, "127.0.0.1")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("slapd output:\n%s", d.ldap.Output())
		}
	})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ldap-ca.pem"), d.ldap.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ldap-bind-password"), []byte(d.ldap.ServicePassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.connLog = filepath.Join(dir, "connections.log")
	eo := o.EndpointOptions
	eo.TLSCrypt = true
	url := d.ldap.LDAPSURL
	if o.StartTLS {
		url = d.ldap.URL + "\n    start_tls: true"
	}
	eo.Authentication = fmt.Sprintf(`  directory:
    url: %s
    ca_file: %s
    bind_dn: "%s"
    bind_password_file: %s
    user_base_dn: "%s"
    user_filter: "(&(objectClass=inetOrgPerson)(uid={username}))"
    group_attribute: memberOf
    timeout_seconds: 3
`, url, filepath.Join(dir, "ldap-ca.pem"), d.ldap.ServiceDN, filepath.Join(dir, "ldap-bind-password"), d.ldap.PeopleDN) + o.MFA
	// remote_hostname is what export-client-config writes; startLogin points each client at
	// its own link to the endpoint instead.
	eo.Extra += fmt.Sprintf("remote_hostname: 172.31.1.1\nreneg_seconds: 10\nstate_dir: %s\nconnection_log: {enabled: true, file: %s}\n",
		filepath.Join(dir, "state"), d.connLog)
	d.ep, err = netlab.WriteEndpoint(dir, eo)
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range o.Enroll {
		d.secrets[user] = enroll(t, d.ep.Config, user)
	}
	d.srv, err = lab.Start("cvpn", lab.Server, cvpnBin, "serve", "--config", d.ep.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.srv.WaitFor("cvpn listening", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return d
}

// enroll runs `cvpn user mfa enroll USER` and returns the secret of the otpauth URI it prints.
func enroll(t *testing.T, config, user string) string {
	t.Helper()
	out := cli(t, "user", "mfa", "enroll", user, "--config", config)
	m := regexp.MustCompile(`otpauth URI: (otpauth://\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("cvpn user mfa enroll %s printed no otpauth URI:\n%s", user, out)
	}
	u, err := url.Parse(m[1])
	if err != nil {
		t.Fatalf("otpauth URI %q: %v", m[1], err)
	}
	secret := u.Query().Get("secret")
	if secret == "" {
		t.Fatalf("otpauth URI %q has no secret", m[1])
	}
	return secret
}

// code is user's current TOTP code, as an authenticator app would show it.
func (d *dirSetup) code(user string) string {
	d.t.Helper()
	c, err := totp.GenerateCode(d.secrets[user], time.Now())
	if err != nil {
		d.t.Fatal(err)
	}
	return c
}

// profile is the endpoint's exported profile (cvpn export-client-config) with, on an endpoint
// that also wants certificates, a fresh client certificate of the endpoint's CA added, as the
// profile's comment tells its user to.
func (d *dirSetup) profile(name string) string {
	d.t.Helper()
	p := cli(d.t, "export-client-config", "--config", d.ep.Config)
	if strings.Contains(d.endpointFile(), "client_root_ca_file") {
		id, err := pki.IssueClient(d.ep.CA, name, nil, pki.ECDSAP256, 24*time.Hour, time.Now())
		if err != nil {
			d.t.Fatal(err)
		}
		p += fmt.Sprintf("<cert>\n%s</cert>\n<key>\n%s</key>\n", id.CertPEM, id.KeyPEM)
	}
	return p
}

// startLogin starts the stock client on a console in a new client namespace with profile,
// pointed at the endpoint's address on that namespace's link.
func (d *dirSetup) startLogin(name, profile string) *consoleClient {
	d.t.Helper()
	ns, server, err := d.lab.AddClient()
	if err != nil {
		d.t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^remote \S+ (\d+)$`)
	if !re.MatchString(profile) {
		d.t.Fatalf("exported profile has no remote line:\n%s", profile)
	}
	profile = re.ReplaceAllString(profile, "remote "+server.String()+" $1")
	path := filepath.Join(d.ep.Dir, name+".ovpn")
	if err := os.WriteFile(path, []byte(profile), 0o600); err != nil {
		d.t.Fatal(err)
	}
	args := console.WithoutSystemd([]string{"ip", "netns", "exec", ns, "openvpn", "--config", path})
	con := console.Start(d.t, exec.Command(args[0], args[1:]...))
	return &consoleClient{vpnClient: &vpnClient{ns: ns}, con: con}
}

// waitConnLog waits until the connection log has a record for which ok holds; the log writes in
// batches, so a record may follow the event by a moment.
func (d *dirSetup) waitConnLog(what string, ok func(r map[string]string) bool) map[string]string {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(d.connLog); err == nil {
			for _, r := range readConnLog(d.t, d.connLog) {
				if ok(r) {
					return r
				}
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(d.connLog)
			d.t.Fatalf("the connection log has no record of %s:\n%s", what, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// failedAttempt waits for a failed attempt of user whose failure reason starts with code+": ".
func (d *dirSetup) failedAttempt(user, code string) map[string]string {
	d.t.Helper()
	return d.waitConnLog(fmt.Sprintf("%s's attempt failing with %s", user, code), func(r map[string]string) bool {
		return r["connection-attempt-status"] == "failed" && r["username"] == user &&
			strings.HasPrefix(r["connection-attempt-failure-reason"], code+": ")
	})
}

// neverLogged fails the test if cvpn's output or its connection log holds any of the secrets
// (a password, a code, or their base64 as the client sends them in SCRV1), standing alone.
func (d *dirSetup) neverLogged(secrets ...string) {
	d.t.Helper()
	b, _ := os.ReadFile(d.connLog)
	// Nor an auth-token, which stands for the password until the session times out.
	if strings.Contains(d.srv.Output(), "CVPN-AT1:") || bytes.Contains(b, []byte("CVPN-AT1:")) {
		d.t.Errorf("cvpn or its connection log wrote an auth-token")
	}
	for _, s := range secrets {
		for _, form := range []string{s, base64.StdEncoding.EncodeToString([]byte(s))} {
			// A code is six digits: only a standalone occurrence is the code.
			re := regexp.MustCompile(`(^|[^0-9A-Za-z+/])` + regexp.QuoteMeta(form) + `($|[^0-9A-Za-z+/=])`)
			if re.MatchString(d.srv.Output()) {
				d.t.Errorf("cvpn logged the secret %q (as %q)", s, form)
			}
			if re.Match(b) {
				d.t.Errorf("the connection log holds the secret %q (as %q)", s, form)
			}
		}
	}
}

// TestDirectoryLoginGroups: directory users log in at the stock client's console with the
// exported profile of a directory-only endpoint, and reach what their LDAP groups are
// authorized for (dev by its cn, ops by its DN) and not the other group's network. A wrong
// password gets AUTH_FAILED and the client asks again; renegotiations (every 10 s) carry the
// auth-token without a prompt, and a user removed from its group loses the group's network at
// the next one, without a reconnect; a user whose account is locked loses the session there.
func TestDirectoryLoginGroups(t *testing.T) {
	t.Parallel()
	d := newDirSetup(t, dirOptions{EndpointOptions: netlab.EndpointOptions{
		NoCertificate: true,
		Rules: []string{
			"{target_network_cidr: 10.0.1.0/24, access_group_id: dev}",
			fmt.Sprintf("{target_network_cidr: 10.0.2.0/24, access_group_id: %q}", "cn=ops,"+slapdlab.GroupsDN),
		},
		Routes: []string{"{destination_cidr_block: 10.0.1.0/24}", "{destination_cidr_block: 10.0.2.0/24}"},
	}})
	if err := d.lab.AddVPCSubnet(netlab.VPCHost2Prefix); err != nil {
		t.Fatal(err)
	}
	const alicePW, oscarPW = "alice's Secret-1", "oscar's Secret-2"
	d.ldap.AddUser("alice", alicePW)
	d.ldap.AddUser("oscar", oscarPW)
	d.ldap.AddGroup("dev", "alice")
	d.ldap.AddGroup("ops", "oscar")
	host1, host2 := netlab.VPCHost.String(), netlab.VPCHost2.String()

	profile := d.profile("user")
	for _, line := range []string{"auth-user-pass", "auth-nocache", "auth-retry interact"} {
		if !regexp.MustCompile(`(?m)^` + line + `$`).MatchString(profile) {
			t.Fatalf("the exported profile lacks %q:\n%s", line, profile)
		}
	}
	if strings.Contains(profile, "<cert>") || strings.Contains(profile, "static-challenge") {
		t.Fatalf("the profile of a directory-only endpoint without MFA has a certificate or a static challenge:\n%s", profile)
	}

	alice := d.startLogin("alice", profile)
	alice.login(t, "alice", "not the password")
	alice.expect(t, `AUTH: Received control message: AUTH_FAILED,wrong username or password\r\n`, 30*time.Second)
	alice.expect(t, `SIGUSR1\[soft,auth-failure\] received, process restarting`, 15*time.Second)
	// auth-retry interact: the client asks for both again.
	alice.login(t, "alice", alicePW)
	alice.expect(t, `Initialization Sequence Completed`, 30*time.Second)
	oscar := d.startLogin("oscar", profile)
	oscar.login(t, "oscar", oscarPW)
	oscar.expect(t, `Initialization Sequence Completed`, 30*time.Second)

	d.ping(alice.vpnClient, host1)
	d.noPing(alice.vpnClient, host2)
	d.ping(oscar.vpnClient, host2)
	d.noPing(oscar.vpnClient, host1)

	// alice leaves dev. Her session keeps its groups until the next renegotiation, where her
	// auth-token is checked and her groups read again.
	d.ldap.RemoveMember("dev", "alice")
	renegs := strings.Count(d.srv.Output(), "renegotiation accepted")
	if err := d.srv.WaitFor(`msg="user's groups changed" user=alice from=[dev] to=[]`, 25*time.Second); err != nil {
		t.Fatal(err)
	}
	d.noPing(alice.vpnClient, host1)
	d.ping(oscar.vpnClient, host2)
	if got := strings.Count(d.srv.Output(), "renegotiation accepted"); got <= renegs {
		t.Errorf("cvpn logged %d accepted renegotiations, %d before the group change: the change did not come through one", got, renegs)
	}
	if !renewedToken.MatchString(alice.con.Output()) {
		t.Errorf("alice's client was sent no renewed auth-token: it saw no renegotiation")
	}
	// Every renegotiation sent the auth-token: the console asked twice (the wrong password and
	// the right one), never again.
	if n := strings.Count(alice.con.Output(), "Enter Auth Username:"); n != 2 {
		t.Errorf("alice was asked for her username %d times, want 2", n)
	}
	if n := strings.Count(oscar.con.Output(), "Enter Auth Username:"); n != 1 {
		t.Errorf("oscar was asked for his username %d times, want 1", n)
	}
	if !firstToken.MatchString(alice.con.Output()) {
		t.Errorf("alice's client was pushed no auth-token at login")
	}

	// oscar's account is locked (ppolicy): his next renegotiation is refused and his session
	// ends with the reason; the client asks for credentials again (auth-retry interact).
	d.ldap.LockUser("oscar")
	oscar.expect(t, `AUTH: Received control message: AUTH_FAILED,the account is disabled or was removed\r\n`, 25*time.Second)
	oscar.expect(t, `Enter Auth Username:`, 15*time.Second)
	if !regexp.MustCompile(`renegotiation refused.*user=oscar.*reason=`).MatchString(d.srv.Output()) {
		t.Errorf("cvpn did not log oscar's refused renegotiation")
	}
	d.failedAttempt("oscar", "account_disabled")

	r := d.failedAttempt("alice", "invalid_credentials")
	if r["connection-attempt-failure-reason"] != "invalid_credentials: wrong username or password" {
		t.Errorf("failure reason %q", r["connection-attempt-failure-reason"])
	}
	d.waitConnLog("alice's successful attempt", func(r map[string]string) bool {
		return r["connection-attempt-status"] == "successful" && r["username"] == "alice"
	})
	if !regexp.MustCompile(`directory login refused.*user=alice.*reason="wrong username or password"`).MatchString(d.srv.Output()) {
		t.Errorf("cvpn did not log the refused login with its reason")
	}
	d.neverLogged(alicePW, oscarPW, "not the password")
}

// TestDirectoryUnavailable: with slapd down, a login gets a clear AUTH_FAILED at the client and
// an error line at cvpn, and the connection log records it as directory_unavailable; when slapd
// is back, the client (asking again, auth-retry interact) connects. slapd down at a later
// renegotiation leaves the session up.
func TestDirectoryUnavailable(t *testing.T) {
	t.Parallel()
	d := newDirSetup(t, dirOptions{EndpointOptions: netlab.EndpointOptions{NoCertificate: true}})
	const pw = "bob's Secret-3"
	d.ldap.AddUser("bob", pw)
	d.ldap.Stop()

	bob := d.startLogin("bob", d.profile("bob"))
	bob.login(t, "bob", pw)
	bob.expect(t, `AUTH: Received control message: AUTH_FAILED,the directory cannot be reached; try again later\r\n`, 30*time.Second)
	bob.expect(t, `SIGUSR1\[soft,auth-failure\] received, process restarting`, 15*time.Second)
	// The client can read AUTH_FAILED before cvpn's log line reaches the test through its pipe.
	if err := d.srv.WaitFor("directory login failed: no directory server answered", 10*time.Second); err != nil {
		t.Error(err)
	}
	if !regexp.MustCompile(`level=ERROR msg="directory login failed: no directory server answered".*user=bob`).MatchString(d.srv.Output()) {
		t.Errorf("cvpn logged no error naming the unreachable directory")
	}
	r := d.failedAttempt("bob", "directory_unavailable")
	if r["connection-attempt-failure-reason"] != "directory_unavailable: the directory cannot be reached; try again later" {
		t.Errorf("failure reason %q", r["connection-attempt-failure-reason"])
	}

	d.ldap.Restart()
	// cvpn skips a server that failed for a back-off (3 s), and with one server a login in
	// that window is refused undialled. The client waits at its prompt meanwhile (auth-retry
	// interact); the user answers once the back-off has passed, and that attempt connects.
	d.waitDirectoryBackoff()
	bob.login(t, "bob", pw)
	bob.expect(t, `Initialization Sequence Completed`, 30*time.Second)
	d.ping(bob.vpnClient, netlab.VPCHost.String())
	if n := strings.Count(bob.con.Output(), "AUTH_FAILED"); n != 1 {
		t.Errorf("bob's client was refused %d times, want once (with slapd down)", n)
	}
	d.waitConnLog("bob's successful attempt", func(r map[string]string) bool {
		return r["connection-attempt-status"] == "successful" && r["username"] == "bob"
	})

	// slapd down at a renegotiation: the auth-token still holds and the session keeps its
	// groups (an outage of the directory does not end every session); it asks nothing.
	d.ldap.Stop()
	if err := d.srv.WaitFor("directory unreachable at renegotiation; the session keeps its groups", 25*time.Second); err != nil {
		t.Fatal(err)
	}
	bob.expect(t, renewedToken.String(), 15*time.Second)
	d.ping(bob.vpnClient, netlab.VPCHost.String())
	if n := strings.Count(bob.con.Output(), "Enter Auth Username:"); n != 2 {
		t.Errorf("bob was asked for his username %d times, want twice (slapd down, then up)", n)
	}
	d.neverLogged(pw)
}

// waitDirectoryBackoff waits until the back-off cvpn logged for the last failed directory
// server has passed (it names its length), so that the next login dials the server again.
func (d *dirSetup) waitDirectoryBackoff() {
	d.t.Helper()
	re := regexp.MustCompile(`time=(\S+) level=WARN msg="directory: server failed; skipping it for the back-off".* backoff=(\S+)`)
	m := re.FindAllStringSubmatch(d.srv.Output(), -1)
	if m == nil {
		d.t.Fatalf("cvpn logged no failed directory server")
	}
	last := m[len(m)-1]
	at, err := time.Parse(time.RFC3339Nano, last[1])
	if err != nil {
		d.t.Fatal(err)
	}
	backoff, err := time.ParseDuration(last[2])
	if err != nil {
		d.t.Fatal(err)
	}
	time.Sleep(time.Until(at.Add(backoff + 100*time.Millisecond)))
}

// TestMFAStaticChallenge: on an endpoint that wants a certificate, a directory password and a
// TOTP code, the stock client with the exported profile (static-challenge, the user's
// certificate added) asks for the password and the code together; the user, enrolled with
// `cvpn user mfa enroll`, connects. The same code from a second client is refused as replayed.
// A profile without the static-challenge line gets a CRV1 challenge instead, where a wrong
// code is refused.
// A renegotiation and a reconnect (SIGUSR1) send the auth-token: no prompt again.
func TestMFAStaticChallenge(t *testing.T) {
	t.Parallel()
	d := newDirSetup(t, dirOptions{MFA: "  mfa: {challenge: static}\n", Enroll: []string{"carol"}})
	const pw = "carol's Secret-4"
	d.ldap.AddUser("carol", pw)

	profile := d.profile("carol")
	if !strings.Contains(profile, `static-challenge "Enter your authenticator code" 1`) {
		t.Fatalf("the exported profile has no static-challenge:\n%s", profile)
	}
	c := d.startLogin("carol", profile)
	c.login(t, "carol", pw)
	c.expect(t, `CHALLENGE: Enter your authenticator code`, 15*time.Second)
	code := d.code("carol")
	if err := c.con.Send(code); err != nil {
		t.Fatal(err)
	}
	c.expect(t, firstToken.String(), 30*time.Second)
	c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
	d.ping(c.vpnClient, netlab.VPCHost.String())

	// Another client of carol's enters the code just accepted (its 30 s step is not over, or
	// has just ended: either way the code was used): refused.
	again := d.startLogin("carol-again", d.profile("carol-again"))
	again.login(t, "carol", pw)
	again.expect(t, `CHALLENGE: Enter your authenticator code`, 15*time.Second)
	if err := again.con.Send(code); err != nil {
		t.Fatal(err)
	}
	again.expect(t, `AUTH: Received control message: AUTH_FAILED,that code was already used: wait for the next one\r\n`, 30*time.Second)
	again.con.Kill()
	r := d.failedAttempt("carol", "mfa_replayed")
	if r["connection-attempt-failure-reason"] != "mfa_replayed: that code was already used: wait for the next one" {
		t.Errorf("failure reason %q", r["connection-attempt-failure-reason"])
	}

	// A profile without the static-challenge line (an older profile, say): the password alone
	// gets a CRV1 challenge. A wrong code there is refused as such.
	plain := strings.Replace(d.profile("carol-plain"), `static-challenge "Enter your authenticator code" 1`+"\n", "", 1)
	dyn := d.startLogin("carol-plain", plain)
	dyn.login(t, "carol", pw)
	dyn.expect(t, `AUTH: Received control message: AUTH_FAILED,CRV1:R,E:[A-Za-z0-9_-]+:`+
		regexp.QuoteMeta(base64.StdEncoding.EncodeToString([]byte("carol")))+`:Enter your authenticator code\r\n`, 30*time.Second)
	dyn.expect(t, `CHALLENGE: Enter your authenticator code`, 30*time.Second)
	n, err := strconv.Atoi(code)
	if err != nil {
		t.Fatalf("code %q: %v", code, err)
	}
	wrong := fmt.Sprintf("%06d", (n+500000)%1000000) // not this step's code

	if err := dyn.con.Send(wrong); err != nil {
		t.Fatal(err)
	}
	dyn.expect(t, `AUTH: Received control message: AUTH_FAILED,wrong authenticator code\r\n`, 30*time.Second)
	dyn.con.Kill()
	d.failedAttempt("carol", "mfa_invalid")

	// A renegotiation: the client sends its token and gets a renewed one, asking nothing.
	c.expect(t, renewedToken.String(), 30*time.Second)
	// A reconnect, as a ping-restart would do it: the token again.
	if err := c.con.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	c.expect(t, `SIGUSR1\[[a-z]+,[^\]]*\] received, process restarting`, 15*time.Second)
	c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
	d.ping(c.vpnClient, netlab.VPCHost.String())
	out := c.con.Output()
	if n := strings.Count(out, "Enter Auth Username:"); n != 1 {
		t.Errorf("carol was asked for her username %d times, want once", n)
	}
	if n := strings.Count(out, "CHALLENGE:"); n != 1 {
		t.Errorf("carol was asked for a code %d times, want once", n)
	}
	if n := strings.Count(d.srv.Output(), `msg="auth-token accepted"`); n < 1 {
		t.Errorf("cvpn logged no reconnect by auth-token")
	}
	d.neverLogged(pw, code, wrong)
}

// TestMFADynamicChallenge: on an endpoint whose second factor is asked for by a CRV1 dynamic
// challenge (its exported profile has no static-challenge; its directory is reached by
// StartTLS; the user is enrolled while it runs), the stock client sends the password,
// gets AUTH_FAILED,CRV1:..., asks only for the code, and connects. The same code answering a
// second client's challenge is refused as replayed. The renegotiation and a reconnect carry the
// auth-token without a prompt.
func TestMFADynamicChallenge(t *testing.T) {
	t.Parallel()
	d := newDirSetup(t, dirOptions{
		EndpointOptions: netlab.EndpointOptions{NoCertificate: true},
		MFA:             "  mfa: {challenge: dynamic, challenge_text: \"Code from your app\"}\n",
		StartTLS:        true,
	})
	const pw = "dave's Secret-5"
	d.ldap.AddUser("dave", pw)
	// Enrolled while cvpn runs and holds the state store: the CLI goes through its admin API.
	d.secrets["dave"] = enroll(t, d.ep.Config, "dave")

	profile := d.profile("dave")
	if strings.Contains(profile, "static-challenge") {
		t.Fatalf("the exported profile of a dynamic-challenge endpoint has a static challenge:\n%s", profile)
	}
	c := d.startLogin("dave", profile)
	c.login(t, "dave", pw)
	m := c.expect(t, `AUTH: Received control message: AUTH_FAILED,(CRV1:[^\r\n]*)\r\n`, 30*time.Second)
	if want := regexp.MustCompile(`^CRV1:R,E:[A-Za-z0-9_-]+:` + regexp.QuoteMeta(base64.StdEncoding.EncodeToString([]byte("dave"))) + `:Code from your app$`); !want.MatchString(m[1]) {
		t.Errorf("challenge %q, want %s", m[1], want)
	}
	c.expect(t, `SIGUSR1\[soft,auth-failure\] received, process restarting`, 15*time.Second)
	c.expect(t, `CHALLENGE: Code from your app`, 30*time.Second)
	code := d.code("dave")
	if err := c.con.Send(code); err != nil {
		t.Fatal(err)
	}
	c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
	d.ping(c.vpnClient, netlab.VPCHost.String())
	d.failedAttempt("dave", "mfa_challenge")

	// A second client of dave's answers its own challenge with the code just used: refused.
	again := d.startLogin("dave-again", profile)
	again.login(t, "dave", pw)
	again.expect(t, `AUTH: Received control message: AUTH_FAILED,CRV1:`, 30*time.Second)
	again.expect(t, `CHALLENGE: Code from your app`, 30*time.Second)
	if err := again.con.Send(code); err != nil {
		t.Fatal(err)
	}
	again.expect(t, `AUTH: Received control message: AUTH_FAILED,that code was already used: wait for the next one\r\n`, 30*time.Second)
	again.con.Kill()
	d.failedAttempt("dave", "mfa_replayed")

	c.expect(t, renewedToken.String(), 30*time.Second)
	if err := c.con.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	c.expect(t, `SIGUSR1\[[a-z]+,[^\]]*\] received, process restarting`, 15*time.Second)
	c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
	d.ping(c.vpnClient, netlab.VPCHost.String())
	out := c.con.Output()
	if n := strings.Count(out, "Enter Auth Username:"); n != 1 {
		t.Errorf("dave was asked for his username %d times, want once", n)
	}
	if n := strings.Count(out, "CHALLENGE:"); n != 1 {
		t.Errorf("dave was asked for a code %d times, want once", n)
	}
	d.neverLogged(pw, code)
}
