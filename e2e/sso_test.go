package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/internal/browser"
	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/internal/oidclab"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// These tests are issue 14's end-to-end "must show" for single sign-on. A real OpenID Provider
// (internal/oidclab: zitadel/oidc's op package) listens in the endpoint's namespace (on its
// VPC address, which cvpn reaches locally), cvpn's portal beside it under a name
// (portal.cvpn.test) with a certificate of the lab CA, and a headless Chromium runs in a
// client namespace of its own (the user's device), which reaches both through the endpoint's
// host. Users sign in there as a person would: they open the link their VPN client showed,
// sign in at the provider, check the code and approve the connection.
//
//   - the stock openvpn client with the exported profile of an OIDC endpoint gets the CRV1
//     notice with the link, is admitted after Enter with the provider's groups, and its
//     renegotiations and reconnects carry the auth-token without a prompt
//     (TestSSOStockClient);
//   - a login state answered twice, one never issued and one whose login was denied are
//     refused (TestSSOStateRefused);
//   - a client announcing IV_SSO=webauth (the Go client) is sent the link in
//     AUTH_PENDING + INFO_PRE,WEB_AUTH and admitted when the browser login completes, or
//     refused when the user denies it (TestSSOWebAuthClient).
//
// A state that expires is not shown here: logins live sso.DefaultTTL (5 minutes), which the
// endpoint file does not shorten; auth/sso's unit tests cover expiry with a fake clock.

// The portal as users and the provider reach it: a name that only the lab's browser resolves
// (to the endpoint's address on the browser's link).
const (
	ssoPortalHost   = "portal.cvpn.test"
	ssoPortalListen = "0.0.0.0:8443"
	ssoPortalURL    = "https://" + ssoPortalHost + ":8443"
	ssoClientID     = "cvpn"
	ssoLinkPattern  = ssoPortalPattern + `/d/[A-Z2-9]{4}-[A-Z2-9]{4}`
)

// ssoPortalPattern is ssoPortalURL quoted for a regular expression.
const ssoPortalPattern = `https://portal\.cvpn\.test:8443`

// The lab's groups at the provider and what they reach: eng the VPC host's first subnet, ops
// its second (netlab.VPCHost2, routed by AddVPCSubnet).
var ssoRules = []string{
	"{target_network_cidr: 10.0.1.0/24, access_group_id: eng}",
	"{target_network_cidr: 10.0.2.0/24, access_group_id: ops}",
}

// ssoSetup is a lab whose cvpn logs users in at an OIDC provider through its portal. It reuses
// the directory tests' helpers (exported profile, console clients, connection log); it has no
// directory.
type ssoSetup struct {
	*dirSetup
	idp *oidclab.Lab
	// portalCertPEM is the portal's certificate, which the browser trusts.
	portalCertPEM []byte
}

// newSSOSetup starts the OIDC provider in a new lab's server namespace, writes an endpoint with
// federated OIDC authentication and no certificate authentication (reneg_seconds 10, a
// connection log, a state_dir, the portal on ssoPortalListen with its own certificate) and starts
// cvpn.
func newSSOSetup(t *testing.T) *ssoSetup {
	t.Helper()
	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	d := &dirSetup{setup: &setup{t: t, lab: lab}, secrets: map[string]string{}}
	t.Cleanup(func() {
		lab.Close()
		if d.srv != nil && strings.Contains(d.srv.Output(), "WARNING: DATA RACE") {
			t.Errorf("cvpn (built with CVPN_E2E_RACE) reported a data race")
		}
		if t.Failed() && d.srv != nil {
			t.Logf("cvpn output:\n%s", d.srv.Output())
		}
	})
	// Registered after the lab's cleanup, so the provider stops before its namespace goes.
	ln, err := netlab.ListenTCPIn(lab.Server, netip.AddrPortFrom(netlab.ServerVPC, 0))
	if err != nil {
		t.Fatal(err)
	}
	idp := oidclab.Start(t, oidclab.WithListener(ln))
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	idp.AddClient(ssoClientID, hex.EncodeToString(secret), ssoPortalURL+"/oidc/callback")

	dir := t.TempDir()
	files := map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"idp-ca.pem":         {idp.CAPEM, 0o644},
		"oidc-client-secret": {[]byte(hex.EncodeToString(secret) + "\n"), 0o600},
	}
	for name, f := range files {
		if err := os.WriteFile(filepath.Join(dir, name), f.data, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	d.connLog = filepath.Join(dir, "connections.log")
	eo := netlab.EndpointOptions{
		TLSCrypt:      true,
		NoCertificate: true,
		Rules:         ssoRules,
		Routes:        []string{"{destination_cidr_block: 10.0.1.0/24}", "{destination_cidr_block: 10.0.2.0/24}"},
		Authentication: fmt.Sprintf(`  federated:
    oidc:
      issuer: %s
      client_id: %s
      client_secret_file: %s
      ca_file: %s
      scopes: [openid, profile, email, groups]
`, idp.Issuer, ssoClientID, filepath.Join(dir, "oidc-client-secret"), filepath.Join(dir, "idp-ca.pem")),
		// remote_hostname is what export-client-config writes; startLogin points each client
		// at its own link to the endpoint instead.
		Extra: fmt.Sprintf(`remote_hostname: 172.31.1.1
reneg_seconds: 10
state_dir: %s
connection_log: {enabled: true, file: %s}
portal:
  listen_address: %s
  public_url: %s
  cert_file: %s
  key_file: %s
`, filepath.Join(dir, "state"), d.connLog, ssoPortalListen, ssoPortalURL, filepath.Join(dir, "portal.crt"), filepath.Join(dir, "portal.key")),
	}
	d.ep, err = netlab.WriteEndpoint(dir, eo)
	if err != nil {
		t.Fatal(err)
	}
	// The portal's certificate, of the lab CA, for the name the browser opens.
	pc, err := pki.IssueServer(d.ep.CA, ssoPortalHost, []string{ssoPortalHost}, pki.ECDSAP256, 24*time.Hour, time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteIdentity(pc, filepath.Join(dir, "portal.crt"), filepath.Join(dir, "portal.key")); err != nil {
		t.Fatal(err)
	}
	if err := lab.AddVPCSubnet(netlab.VPCHost2Prefix); err != nil {
		t.Fatal(err)
	}
	d.srv, err = lab.Start("cvpn", lab.Server, cvpnBin, "serve", "--config", d.ep.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"portal listening", "cvpn listening"} {
		if err := d.srv.WaitFor(line, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return &ssoSetup{dirSetup: d, idp: idp, portalCertPEM: pc.CertPEM}
}

// browser starts a headless Chromium in a new client namespace of the lab (the user's
// device), which reaches the portal by its name at the endpoint's address on that link and the
// provider through the endpoint's host, and trusts their certificates.
//
// IPv6 is switched off in that namespace first: the link's IPv6 link-local address would
// otherwise finish duplicate address detection a second or two after the link came up, which
// Chromium sees as a change of network and answers by failing the requests under way with
// net::ERR_NETWORK_CHANGED.
func (s *ssoSetup) browser() *browser.Browser {
	s.t.Helper()
	ns, server, err := s.lab.AddClient()
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.lab.Output(ctx, ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
		s.t.Fatal(err)
	}
	return browser.Start(s.t, browser.InNetns(ns),
		browser.TrustCA(s.idp.CAPEM), browser.TrustCA(s.portalCertPEM),
		browser.Resolve(ssoPortalHost, server.String()), browser.Timeout(20*time.Second))
}

// deviceLogin plays the user who opens a client's login link: the portal asks them to sign
// in (signIn: the browser has no portal session yet), they sign in at the provider as user,
// find the code of the link on the device page, and approve (or deny) the connection. With
// shots, it keeps screenshots of each page.
func (s *ssoSetup) deviceLogin(b *browser.Browser, link, user, password string, signIn, approve, shots bool) {
	s.t.Helper()
	shot := func(name string) {
		if shots {
			b.Screenshot(name)
		}
	}
	b.Navigate(link)
	if signIn {
		// The link is behind the portal's sign-in: its only way in is the provider.
		b.WaitVisible("#login-oidc")
		shot("device-login")
		b.Submit("#login-oidc")
		if loc := b.Location(); !strings.HasPrefix(loc, s.idp.Issuer+"/login") {
			s.t.Fatalf("signing in from the device link led to %s, not the provider's login page", loc)
		}
		b.Fill("#username", user)
		b.Fill("#password", password)
		shot("idp-login")
		b.Submit("#submit")
	}
	// Back from the provider, the browser is on the link it opened.
	b.WaitVisible("#device-approve")
	if loc := b.Location(); loc != link {
		s.t.Errorf("after signing in the browser is at %s, want the device link %s", loc, link)
	}
	if got, want := b.Text("#device-code"), link[strings.LastIndex(link, "/")+1:]; got != want {
		s.t.Errorf("the device page shows code %q, want the link's %q", got, want)
	}
	if who := b.Text(".who"); who != user {
		s.t.Errorf("the device page is signed in as %q, want %q", who, user)
	}
	shot("device-page")
	if approve {
		b.Submit("#device-approve")
	} else {
		b.Submit("#device-deny")
	}
	msg := b.Text("#message")
	want := "The connection is approved."
	if !approve {
		want = "The connection is denied."
	}
	if !strings.Contains(msg, want) {
		s.t.Errorf("after the decision the portal says %q, want %q", msg, want)
	}
	if approve {
		shot("approved")
	} else {
		shot("denied")
	}
}

// connLogCount waits until the connection log holds at least n records for which ok holds.
func (s *ssoSetup) connLogCount(what string, n int, ok func(r map[string]string) bool) []map[string]string {
	s.t.Helper()
	var got []map[string]string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		got = got[:0]
		if _, err := os.Stat(s.connLog); err == nil {
			for _, r := range readConnLog(s.t, s.connLog) {
				if ok(r) {
					got = append(got, r)
				}
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.connLog)
			s.t.Fatalf("the connection log has %d records of %s, want %d:\n%s", len(got), what, n, b)
		}
	}
}

// ssoFailedWith is a connection log predicate: a failed attempt whose reason is code: message.
func ssoFailedWith(code, message string) func(r map[string]string) bool {
	return func(r map[string]string) bool {
		return r["connection-attempt-status"] == "failed" && r["connection-attempt-failure-reason"] == code+": "+message
	}
}

// TestSSOStockClient: the stock openvpn client with the exported profile of an OIDC endpoint
// (no client certificate) asks for a username and password, whatever they are; cvpn answers
// with the CRV1 notice, which the client prints as its challenge with the portal's link.
// Enter before the browser login brings the notice again. The user opens the link in
// Chromium, signs in at the provider, checks the code and approves; Enter then connects the
// client as the provider's user, with the provider's groups (eng reaches its network, not
// ops's). Renegotiations every 10 s and a reconnect carry the auth-token: no prompt, no
// browser.
func TestSSOStockClient(t *testing.T) {
	t.Parallel()
	s := newSSOSetup(t)
	const alicePW, typedPW = "alice's IdP Secret-7", "typed-pw-4d1c"
	s.idp.AddUser("alice", alicePW, "eng")

	profile := s.profile("alice")
	for _, line := range []string{"auth-user-pass", "auth-nocache", "auth-retry interact"} {
		if !regexp.MustCompile(`(?m)^` + line + `$`).MatchString(profile) {
			t.Fatalf("the exported profile lacks %q:\n%s", line, profile)
		}
	}
	if strings.Contains(profile, "<cert>") || strings.Contains(profile, "static-challenge") {
		t.Fatalf("the profile of a federated endpoint has a certificate or a static challenge:\n%s", profile)
	}
	b := s.browser()

	c := s.startLogin("alice", profile)
	// What the user types is only a hint shown on the device page: the identity comes from
	// the provider.
	c.login(t, "typed-name", typedPW)
	m := c.expect(t, `AUTH: Received control message: AUTH_FAILED,CRV1:([A-Z,]*):([A-Za-z0-9_-]+):([A-Za-z0-9+/=]*):Open (`+ssoLinkPattern+`) in a browser, sign in, then press Enter\r\n`, 30*time.Second)
	flags, state, user, link := m[1], m[2], m[3], m[4]
	if !strings.Contains(flags, "E") {
		t.Errorf("CRV1 flags %q lack E: the client would read the Enter with echo off", flags)
	}
	if want := base64.StdEncoding.EncodeToString([]byte("typed-name")); user != want {
		t.Errorf("CRV1 username %q, want %q (the typed name)", user, want)
	}
	if len(m[0]) > 1024 {
		t.Errorf("the notice is %d bytes, over OpenVPN's 1024-byte control message cap", len(m[0]))
	}
	// push.c receive_auth_failed keeps the challenge and restarts; the client then asks only
	// for the response, with the notice's text (misc.c get_user_pass_cr).
	c.expect(t, `SIGUSR1\[soft,auth-failure\] received, process restarting`, 15*time.Second)
	challenge := `CHALLENGE: Open ` + regexp.QuoteMeta(link) + ` in a browser, sign in, then press Enter`
	c.expect(t, challenge, 30*time.Second)

	// Enter before signing in: not admitted; the notice comes again for the same login, with
	// the same link.
	if err := c.con.Send(""); err != nil {
		t.Fatal(err)
	}
	again := c.expect(t, `AUTH: Received control message: AUTH_FAILED,CRV1:[A-Z,]*:([A-Za-z0-9_-]+):[^\r\n]*\r\n`, 30*time.Second)
	if again[1] != state || !strings.HasSuffix(again[0], ":Open "+link+" in a browser, sign in, then press Enter\r\n") {
		t.Errorf("the repeated notice is %q, want the login's state %q and link %s", again[0], state, link)
	}
	c.expect(t, `SIGUSR1\[soft,auth-failure\] received, process restarting`, 15*time.Second)
	c.expect(t, challenge, 30*time.Second)
	if err := s.srv.WaitFor("single sign-on: login not completed yet; the link is sent again", 10*time.Second); err != nil {
		t.Error(err)
	}

	s.deviceLogin(b, link, "alice", alicePW, true, true, true)
	reqs := s.idp.AuthRequests()
	if len(reqs) != 1 || reqs[0].CodeChallengeMethod != "S256" || reqs[0].Nonce == "" || reqs[0].RedirectURI != ssoPortalURL+"/oidc/callback" {
		t.Errorf("the provider saw authorization requests %+v, want one with PKCE S256, a nonce and the portal's callback", reqs)
	}
	if err := c.con.Send(""); err != nil {
		t.Fatal(err)
	}
	c.expect(t, firstToken.String(), 30*time.Second)
	c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
	s.ping(c.vpnClient, netlab.VPCHost.String())
	s.noPing(c.vpnClient, netlab.VPCHost2.String())
	if !regexp.MustCompile(`msg="single sign-on accepted" .*user=alice issuer=` + regexp.QuoteMeta(s.idp.Issuer) + ` groups=1`).MatchString(s.srv.Output()) {
		t.Errorf("cvpn did not log alice's accepted single sign-on with the provider's group")
	}
	s.waitConnLog("alice's successful attempt", func(r map[string]string) bool {
		return r["connection-attempt-status"] == "successful" && r["username"] == "alice"
	})
	s.failedAttempt("typed-name", "sso_login")

	// A renegotiation: the client sends its auth-token and gets a renewed one, asking nothing.
	renegs := strings.Count(s.srv.Output(), "renegotiation accepted")
	c.expect(t, renewedToken.String(), 30*time.Second)
	if err := waitCount(s.srv, "renegotiation accepted", renegs+1, 15*time.Second); err != nil {
		t.Error(err)
	}
	s.ping(c.vpnClient, netlab.VPCHost.String())
	s.noPing(c.vpnClient, netlab.VPCHost2.String())

	// A reconnect, as a ping-restart would do it: the auth-token again, no browser.
	if err := c.con.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	c.expect(t, `SIGUSR1\[[a-z]+,[^\]]*\] received, process restarting`, 15*time.Second)
	c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
	s.ping(c.vpnClient, netlab.VPCHost.String())
	if !regexp.MustCompile(`msg="auth-token accepted" .*user=alice`).MatchString(s.srv.Output()) {
		t.Errorf("cvpn logged no reconnect of alice by auth-token")
	}
	out := c.con.Output()
	if n := strings.Count(out, "Enter Auth Username:"); n != 1 {
		t.Errorf("the client asked for a username %d times, want once", n)
	}
	if n := strings.Count(out, "CHALLENGE:"); n != 2 {
		t.Errorf("the client showed the challenge %d times, want twice (Enter before the browser, then after)", n)
	}
	s.neverLogged(typedPW, alicePW)
}

// goClient is a Go client's configuration for the lab's endpoint, dialling from ns.
func (s *ssoSetup) goClient(ns string, server netip.Addr, username, password string) client.Config {
	s.t.Helper()
	key, err := tlscrypt.ParseStaticKey(s.ep.TLSKey)
	if err != nil {
		s.t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.ep.CA.CertPEM)
	return client.Config{
		Server: netip.AddrPortFrom(server, 443), RootCAs: roots, TLSCrypt: key,
		Username: username, Password: password,
		Dial: func(context.Context) (net.PacketConn, error) { return netlab.ListenUDPIn(ns) },
	}
}

// ssoConnect connects cfg within 30 s.
func ssoConnect(cfg client.Config) (*client.Session, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return client.Connect(ctx, cfg)
}

// ssoNoticeRE finds the state and the link in the AUTH_FAILED reason of a CRV1 notice.
var ssoNoticeRE = regexp.MustCompile(`CRV1:[A-Z,]*:([A-Za-z0-9_-]+):[A-Za-z0-9+/=]*:Open (` + ssoLinkPattern + `) in a browser, sign in, then press Enter$`)

// notice connects cfg, which must be refused with a CRV1 notice, and returns its state and link.
func (s *ssoSetup) notice(cfg client.Config) (state, link string) {
	s.t.Helper()
	sess, err := ssoConnect(cfg)
	if err == nil {
		sess.Close()
		s.t.Fatalf("a first attempt was admitted without a browser login")
	}
	m := ssoNoticeRE.FindStringSubmatch(err.Error())
	if !errors.Is(err, client.ErrAuthFailed) || m == nil {
		s.t.Fatalf("a first attempt got %v, want AUTH_FAILED with a CRV1 login notice", err)
	}
	return m[1], m[2]
}

// ssoRefused connects cfg, which must be refused with AUTH_FAILED,<reason>.
func ssoRefused(t *testing.T, what string, cfg client.Config, reason string) {
	t.Helper()
	sess, err := ssoConnect(cfg)
	if err == nil {
		sess.Close()
		t.Fatalf("%s: admitted, want AUTH_FAILED", what)
	}
	if !errors.Is(err, client.ErrAuthFailed) || !strings.HasSuffix(err.Error(), ": "+reason) {
		t.Fatalf("%s: %v, want AUTH_FAILED,%s", what, err, reason)
	}
}

// ssoPing sends ICMP echo requests to dst through sess until a reply comes, at most 5 (1 s
// apart), and reports whether one came.
func ssoPing(sess *client.Session, dst netip.Addr) bool {
	src := sess.Address().Addr()
	var idb [2]byte
	_, _ = rand.Read(idb[:])
	id := uint16(idb[0])<<8 | uint16(idb[1])
	buf := make([]byte, 2048)
	for seq := range uint16(5) {
		if err := sess.WritePacket(ssoEcho(src, dst, id, seq)); err != nil {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		for {
			n, err := sess.ReadPacketContext(ctx, buf)
			if err != nil {
				break
			}
			ip := buf[:n]
			if n >= 28 && ip[9] == syscall.IPPROTO_ICMP && ip[20] == 0 && // echo reply
				netip.AddrFrom4([4]byte(ip[12:16])) == dst && binary.BigEndian.Uint16(ip[24:]) == id {
				cancel()
				return true
			}
		}
		cancel()
	}
	return false
}

// ssoEcho builds an IPv4 ICMP echo request from src to dst (RFC 792), checksums included.
func ssoEcho(src, dst netip.Addr, id, seq uint16) []byte {
	b := make([]byte, 20+8+16)
	b[0], b[8], b[9] = 0x45, 64, syscall.IPPROTO_ICMP
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	s4, d4 := src.As4(), dst.As4()
	copy(b[12:], s4[:])
	copy(b[16:], d4[:])
	binary.BigEndian.PutUint16(b[10:], ssoChecksum(b[:20]))
	icmp := b[20:]
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	copy(icmp[8:], "cvpn sso e2e!!!!")
	binary.BigEndian.PutUint16(icmp[2:], ssoChecksum(icmp))
	return b
}

// ssoChecksum is the Internet checksum (RFC 1071) of b.
func ssoChecksum(b []byte) uint16 {
	var s uint32
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// TestSSOStateRefused: a login's state admits one connection. The Go client plays the stock
// client's steps (a first attempt, then CRV1::<state>:: as its password): after the browser
// login it is admitted; the same answer from a second client, an answer with a state cvpn
// never issued, and the answer to a login the user denied in the portal are each refused with
// AUTH_FAILED and their reason in the connection log (sso_expired, sso_failed). The admitted
// session is not disturbed by them.
func TestSSOStateRefused(t *testing.T) {
	t.Parallel()
	s := newSSOSetup(t)
	const bobPW = "bob's IdP Secret-8"
	s.idp.AddUser("bob", bobPW, "eng")
	ns, server, err := s.lab.AddClient()
	if err != nil {
		t.Fatal(err)
	}
	b := s.browser()

	state, link := s.notice(s.goClient(ns, server, "bob", "x"))
	s.deviceLogin(b, link, "bob", bobPW, true, true, false)
	answer := "CRV1::" + state + "::"
	first, err := ssoConnect(s.goClient(ns, server, "bob", answer))
	if err != nil {
		t.Fatalf("the answer to an approved login: %v", err)
	}
	defer first.Close()
	if first.AuthToken() == "" {
		t.Errorf("the admitted client was pushed no auth-token")
	}
	if !ssoPing(first, netlab.VPCHost) {
		t.Fatalf("no echo reply from %s through the admitted session", netlab.VPCHost)
	}

	const usedOrExpired = "the login link expired or was used: connect again for a new one"
	ssoRefused(t, "the same state again", s.goClient(ns, server, "mallory", answer), usedOrExpired)
	never := make([]byte, 32)
	_, _ = rand.Read(never)
	ssoRefused(t, "a state never issued", s.goClient(ns, server, "bob", "CRV1::"+base64.RawURLEncoding.EncodeToString(never)+"::"), usedOrExpired)

	// A login the user denies: its answer is refused, with the reason.
	denied, link := s.notice(s.goClient(ns, server, "bob", "x"))
	s.deviceLogin(b, link, "bob", bobPW, false, false, true) // signed in to the portal already
	ssoRefused(t, "the answer to a denied login", s.goClient(ns, server, "bob", "CRV1::"+denied+"::"), "single sign-on failed: the sign-in was denied in the portal")
	if err := s.srv.WaitFor("audit: portal_device_denied", 10*time.Second); err != nil {
		t.Errorf("cvpn has no audit record of the denial: %v", err)
	}
	// A denied login is spent: answering it again finds nothing.
	ssoRefused(t, "the denied state again", s.goClient(ns, server, "bob", "CRV1::"+denied+"::"), usedOrExpired)

	s.connLogCount("ssoRefused answers of used or unknown states", 3, ssoFailedWith("sso_expired", usedOrExpired))
	s.connLogCount("the ssoRefused answer of a denied login", 1, ssoFailedWith("sso_failed", "single sign-on failed: the sign-in was denied in the portal"))
	s.waitConnLog("bob's successful attempt", func(r map[string]string) bool {
		return r["connection-attempt-status"] == "successful" && r["username"] == "bob"
	})
	select {
	case <-first.Done():
		t.Fatalf("the admitted session ended: %v", first.Err())
	default:
	}
	if !ssoPing(first, netlab.VPCHost) {
		t.Errorf("no echo reply through the admitted session after the ssoRefused answers")
	}
	if n := strings.Count(s.srv.Output(), `msg="single sign-on accepted"`); n != 1 {
		t.Errorf("cvpn accepted %d single sign-on answers, want 1", n)
	}
}

// ssoClientLog is a bytes.Buffer for a logger written from the client's goroutines.
type ssoClientLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *ssoClientLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *ssoClientLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSSOWebAuthClient: a client announcing IV_SSO=webauth (the Go client) is not refused:
// cvpn holds its session with AUTH_PENDING and sends the login link in INFO_PRE,WEB_AUTH. The
// user completes the login in Chromium and the waiting client is admitted with the provider's
// groups (ops reaches its network, not eng's), and its renegotiation carries the auth-token.
// A second pending client whose login the user denies is refused (sso_failed).
func TestSSOWebAuthClient(t *testing.T) {
	t.Parallel()
	s := newSSOSetup(t)
	const carolPW = "carol's IdP Secret-9"
	s.idp.AddUser("carol", carolPW, "ops")
	ns, server, err := s.lab.AddClient()
	if err != nil {
		t.Fatal(err)
	}
	b := s.browser()

	var clog ssoClientLog
	infoPre := make(chan string, 4)
	cfg := s.goClient(ns, server, "carol", "")
	cfg.PeerInfo = map[string]string{"IV_SSO": "webauth"}
	cfg.OnInfoPre = func(text string) {
		select {
		case infoPre <- text:
		default:
		}
	}
	cfg.Log = slog.New(slog.NewTextHandler(&clog, nil))
	type result struct {
		sess *client.Session
		err  error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		sess, err := client.Connect(ctx, cfg)
		done <- result{sess, err}
	}()
	var text string
	select {
	case text = <-infoPre:
	case r := <-done:
		if r.sess != nil {
			r.sess.Close()
		}
		t.Fatalf("Connect returned before any INFO_PRE: %v", r.err)
	case <-time.After(30 * time.Second):
		t.Fatalf("no INFO_PRE within 30 s; client log:\n%s", clog.String())
	}
	link, ok := strings.CutPrefix(text, "WEB_AUTH::")
	if !ok || !regexp.MustCompile(`^`+ssoLinkPattern+`$`).MatchString(link) {
		t.Fatalf("INFO_PRE %q, want WEB_AUTH::<the portal's device link>", text)
	}
	if !strings.Contains(clog.String(), "AUTH_PENDING") {
		t.Errorf("the client saw no AUTH_PENDING before INFO_PRE; its log:\n%s", clog.String())
	}

	s.deviceLogin(b, link, "carol", carolPW, true, true, true)
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the client was not admitted within 30 s of the approval; client log:\n%s", clog.String())
	}
	if r.err != nil {
		t.Fatalf("the pending client: %v\nclient log:\n%s", r.err, clog.String())
	}
	sess := r.sess
	defer sess.Close()
	if !ssoPing(sess, netlab.VPCHost2) {
		t.Fatalf("no echo reply from %s (ops's network) through the session", netlab.VPCHost2)
	}
	if ssoPing(sess, netlab.VPCHost) {
		t.Errorf("an echo reply from %s, which ops is not authorized for", netlab.VPCHost)
	}
	if err := s.srv.WaitFor("single sign-on: login pending in the client's browser", time.Second); err != nil {
		t.Error(err)
	}
	s.waitConnLog("carol's successful attempt", func(r map[string]string) bool {
		return r["connection-attempt-status"] == "successful" && r["username"] == "carol"
	})

	// The first renegotiation (reneg_seconds 10) sends the pushed auth-token (cvpn accepts
	// nothing else from a federated session then); the session carries on with its groups.
	if sess.AuthToken() == "" {
		t.Fatalf("the admitted client was pushed no auth-token")
	}
	if err := s.srv.WaitFor("renegotiation accepted", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`msg="renegotiation accepted" .*user=carol groups=\[ops\]`).MatchString(s.srv.Output()) {
		t.Errorf("cvpn's accepted renegotiation is not carol's with the group ops")
	}
	if !ssoPing(sess, netlab.VPCHost2) {
		t.Errorf("no echo reply through the session after its renegotiation")
	}
	select {
	case <-sess.Done():
		t.Errorf("the session ended: %v", sess.Err())
	default:
	}

	// Another pending client whose login the user denies is refused at once, with the reason.
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		sess, err := client.Connect(ctx, cfg)
		done <- result{sess, err}
	}()
	select {
	case text = <-infoPre:
	case <-time.After(30 * time.Second):
		t.Fatalf("no INFO_PRE for the second client within 30 s")
	}
	s.deviceLogin(b, strings.TrimPrefix(text, "WEB_AUTH::"), "carol", carolPW, false, false, false)
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the denied client got no answer within 30 s of the denial")
	}
	if r.err == nil {
		r.sess.Close()
		t.Fatalf("the client whose login was denied was admitted")
	}
	const deniedReason = "single sign-on failed: the sign-in was denied in the portal"
	if !errors.Is(r.err, client.ErrAuthFailed) || !strings.HasSuffix(r.err.Error(), ": "+deniedReason) {
		t.Errorf("the denied client: %v, want AUTH_FAILED,%s", r.err, deniedReason)
	}
	s.connLogCount("the denied pending login", 1, ssoFailedWith("sso_failed", deniedReason))
}
