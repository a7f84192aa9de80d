package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"encoding/xml"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/pquerna/otp/totp"
	"github.com/vishvananda/netns"

	"github.com/cvpn/cvpn/internal/browser"
	"github.com/cvpn/cvpn/internal/console"
	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/internal/oidclab"
	"github.com/cvpn/cvpn/internal/qrtest"
	"github.com/cvpn/cvpn/internal/samllab"
	"github.com/cvpn/cvpn/pki"
)

// These tests are issue 14's browser tests of the self-service portal: a headless Chromium,
// driven from Go in a client namespace of the lab, signs in to the portal of a running
// `cvpn serve` with a directory password and a TOTP authenticator it enrols from the QR code
// on the page, through a real OpenID provider (zitadel's op, internal/oidclab) and through a
// real SAML IdP (crewjam's samlidp, internal/samllab); it downloads profiles, and a stock
// openvpn client connects with one, and its session is ended from the portal. Each step
// leaves a screenshot under test-output/<Test>/.

// The portal's public name and URL. The browser maps the name to the endpoint's address on
// its own link (browser.Resolve); the portal serves its own certificate for the name.
const (
	selfServiceHost = "vpn.cvpn.test"
	selfServiceURL  = "https://" + selfServiceHost + ":8443"
)

// selfServiceIdPAddr is where the identity providers listen: the endpoint namespace's address in the
// VPC, which cvpn reaches locally and the browser through its default route.
var selfServiceIdPAddr = netlab.ServerVPC

// portalCert writes a certificate for selfServiceHost, of a CA of its own, to dir, and returns the
// endpoint file's portal line and the CA's PEM for the browser to trust.
func portalCert(t *testing.T, dir string) (yaml string, caPEM []byte) {
	t.Helper()
	now := time.Now()
	ca, err := pki.NewCA("cvpn portal test CA", pki.ECDSAP256, 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := pki.IssueServer(ca, selfServiceHost, []string{selfServiceHost}, pki.ECDSAP256, 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "portal.crt"), filepath.Join(dir, "portal.key")
	// The chain the server sends ends with the CA, whose key the browser is told to trust.
	if err := os.WriteFile(certFile, append(append([]byte{}, leaf.CertPEM...), ca.CertPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, leaf.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("portal: {listen_address: 0.0.0.0:8443, public_url: %q, cert_file: %s, key_file: %s}\n",
		selfServiceURL, certFile, keyFile), ca.CertPEM
}

// startPortalBrowser adds a client namespace to the lab (the user's device) and starts
// Chromium in it, resolving selfServiceHost to the endpoint's address on that link and trusting
// the PEM certificates in trust. Chromium's first namespace must be the lab's first client:
// remote_hostname 172.31.1.1 is the endpoint's address on that link.
//
// IPv6 is off in that namespace: the link's IPv6 link-local address would finish duplicate
// address detection a moment after the link came up, and Chromium takes that for a change of
// network and fails the requests under way (net::ERR_NETWORK_CHANGED).
func startPortalBrowser(t *testing.T, lab *netlab.Lab, trust [][]byte, opts ...browser.Option) *browser.Browser {
	t.Helper()
	ns, server, err := lab.AddClient()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := lab.Output(ctx, ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
		t.Fatal(err)
	}
	opts = append(opts, browser.InNetns(ns), browser.Resolve(selfServiceHost, server.String()), browser.Timeout(20*time.Second))
	for _, pem := range trust {
		opts = append(opts, browser.TrustCA(pem))
	}
	return browser.Start(t, opts...)
}

// writeCAKey puts the endpoint CA's key beside its certificate, as `cvpn init` leaves it, so
// that the portal can issue personal certificates.
func writeCAKey(t *testing.T, ep *netlab.Endpoint) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(ep.Dir, "ca.key"), ep.CA.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
}

// inNamespace runs f on a thread in network namespace ns, so that the sockets f opens live
// there (a socket keeps its namespace wherever it is used from).
func inNamespace(t *testing.T, ns string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// The thread stays locked and dies with the goroutine rather than be reused.
			t.Errorf("leave netns %s: %v", ns, err)
			return
		}
		runtime.UnlockOSThread()
	}()
	f()
}

// profileCheck is what a downloaded profile must hold.
type profileCheck struct {
	proto string // udp (default) or tcp
	user  string // the certificate's CN, when the endpoint wants certificates
	ca    *pki.Identity
	cert  bool
	mfa   bool
}

// checkProfile checks a profile downloaded from the portal: its name, the endpoint's remote
// (remote_hostname, port 443 of the protocol), auth-user-pass, the static challenge on an MFA endpoint, the
// tls-crypt key, and on a certificate endpoint the user's personal certificate (CN the
// username) of the endpoint's CA with its key.
func checkProfile(t *testing.T, name string, body []byte, want profileCheck) {
	t.Helper()
	p := string(body)
	proto := want.proto
	if proto == "" {
		proto = "udp"
	}
	if name != "172.31.1.1-"+proto+".ovpn" {
		t.Errorf("downloaded profile named %q, want 172.31.1.1-%s.ovpn", name, proto)
	}
	for _, line := range []string{"client", "dev tun", "proto " + proto, "remote 172.31.1.1 443", "auth-user-pass", "auth-nocache", "remote-cert-tls server"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(line) + `\r?$`).MatchString(p) {
			t.Errorf("the downloaded profile lacks %q:\n%s", line, p)
		}
	}
	for _, block := range []string{"<ca>", "<tls-crypt>"} {
		if !strings.Contains(p, block) {
			t.Errorf("the downloaded profile has no %s block", block)
		}
	}
	if got := strings.Contains(p, "static-challenge"); got != want.mfa {
		t.Errorf("static-challenge in the profile: %v, want %v", got, want.mfa)
	}
	m := regexp.MustCompile(`(?s)<cert>\n(.*?)</cert>`).FindStringSubmatch(p)
	if !want.cert {
		if m != nil || strings.Contains(p, "<key>") {
			t.Errorf("the profile of an endpoint without certificate authentication carries a certificate or key")
		}
		return
	}
	if m == nil || !strings.Contains(p, "<key>\n-----BEGIN") {
		t.Fatalf("the profile of a certificate endpoint has no personal certificate and key:\n%s", p)
	}
	blk, _ := pem.Decode([]byte(m[1]))
	if blk == nil {
		t.Fatalf("the profile's <cert> holds no PEM block:\n%s", m[1])
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("the profile's certificate: %v", err)
	}
	if cert.Subject.CommonName != want.user {
		t.Errorf("the personal certificate's CN is %q, want %q", cert.Subject.CommonName, want.user)
	}
	roots := x509.NewCertPool()
	roots.AddCert(want.ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the personal certificate does not chain to the endpoint's CA as a client certificate: %v", err)
	}
}

// otpSecret reads the secret of user's otpauth:// URI, and checks that its label names the
// user and its parameters are those an authenticator app computes codes with by default
// (SHA1, 6 digits, 30 s), as the test does.
func otpSecret(t *testing.T, uri, user string) string {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "otpauth" || u.Host != "totp" {
		t.Fatalf("the QR code holds %q, not an otpauth://totp/ URI (%v)", uri, err)
	}
	if !strings.HasSuffix(u.Path, ":"+user) {
		t.Errorf("the otpauth URI's label %q does not name the user %q", u.Path, user)
	}
	q := u.Query()
	for k, v := range map[string]string{"algorithm": "SHA1", "digits": "6", "period": "30"} {
		if got := q.Get(k); got != "" && got != v {
			t.Errorf("the otpauth URI has %s=%s, want %s", k, got, v)
		}
	}
	s := q.Get("secret")
	if s == "" {
		t.Fatalf("the otpauth URI %q has no secret", uri)
	}
	return s
}

// authenticator is the user's authenticator app: the code of the step off steps from now.
// The verifier takes one step of skew either way and each step once, ascending: the test
// uses the previous step's code to confirm the enrolment, the current one to sign in again
// and the next one at the VPN client, so that it waits for no new step.
func authenticator(t *testing.T, secret string, off int) string {
	t.Helper()
	// Not within a second of a step's end, so the step the code is for is still in the window
	// when the server checks it.
	if r := 30 - time.Now().Unix()%30; r <= 1 {
		time.Sleep(time.Duration(r)*time.Second + 100*time.Millisecond)
	}
	c, err := totp.GenerateCode(secret, time.Now().Add(time.Duration(off)*30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPortalDirectoryUser: on an endpoint that wants a client certificate, a directory
// password and a TOTP code, a directory user (not yet enrolled) signs in to the portal with
// the password, has to enrol an authenticator, does so from the QR code on the page and
// confirms a code; signs out and in again with the password and a code (the confirming code,
// used again, is refused); downloads the UDP profile, which carries a personal certificate;
// connects the stock openvpn client with that very profile (password and code at its
// console); sees the connection on the portal's home page, ends it there, and the client is
// disconnected.
func TestPortalDirectoryUser(t *testing.T) {
	t.Parallel()
	certDir := t.TempDir()
	portalYAML, portalCA := portalCert(t, certDir)
	d := newDirSetup(t, dirOptions{
		EndpointOptions: netlab.EndpointOptions{Extra: portalYAML},
		MFA:             "  mfa: {challenge: static}\n",
	})
	writeCAKey(t, d.ep)
	const user, pw = "erin", "erin's Secret-7"
	d.ldap.AddUser(user, pw)
	if err := d.srv.WaitFor("portal listening", 10*time.Second); err != nil {
		t.Fatal(err)
	}

	b := startPortalBrowser(t, d.lab, [][]byte{portalCA})
	b.Navigate(selfServiceURL + "/")
	if loc := b.Location(); loc != selfServiceURL+"/login?next=%2F" && loc != selfServiceURL+"/login" {
		t.Errorf("the home page of a browser not signed in went to %s, want the sign-in page", loc)
	}
	b.WaitVisible("#username")
	b.Screenshot("sign-in")
	b.Fill("#username", user)
	b.Fill("#password", pw)
	b.Submit(`form[action="/login"] button[type=submit]`)

	// Not enrolled: the password alone signs in, to the enrolment page only.
	if loc := b.Location(); loc != selfServiceURL+"/mfa" {
		t.Fatalf("after the password, a user without an authenticator is at %s, want %s/mfa", loc, selfServiceURL)
	}
	b.Screenshot("enrol-required")
	b.Submit("#mfa-enrol")
	qr := b.ImageBytes("#mfa-qr")
	uri, err := qrtest.DecodeQR(qr)
	if err != nil {
		t.Fatalf("decoding the QR code on the enrolment page: %v", err)
	}
	secret := otpSecret(t, uri, user)
	if shown := b.Text("#mfa-secret"); shown != secret {
		t.Errorf("the page shows the key %q, the QR code holds %q", shown, secret)
	}
	b.Screenshot("enrol-qr")
	confirm := authenticator(t, secret, -1)
	b.Fill("#code", confirm)
	b.Submit(`form[action="/mfa/confirm"] button[type=submit]`)
	if got := b.Text(".flash"); got != "Your authenticator is enrolled." {
		t.Errorf("after confirming, the page says %q", got)
	}
	if got := b.Text("header .who"); got != user {
		t.Errorf("signed in as %q, want %q", got, user)
	}
	b.WaitVisible("#download-udp")
	b.Screenshot("enrolled")

	// Sign out, and in again: now the password and a code.
	b.Submit("header .signout button")
	b.WaitVisible("#username")
	b.Fill("#username", user)
	b.Fill("#password", pw)
	b.Submit(`form[action="/login"] button[type=submit]`)
	b.WaitVisible("#code")
	b.Screenshot("second-step")
	// The code that confirmed the enrolment is used: refused.
	b.Fill("#code", confirm)
	b.Submit(`form[action="/login/code"] button[type=submit]`)
	if got := b.Text(".error"); !strings.Contains(got, "already used") {
		t.Errorf("a used code got %q, want the wrong-or-used message", got)
	}
	signInCode := authenticator(t, secret, 0)
	b.Fill("#code", signInCode)
	b.Submit(`form[action="/login/code"] button[type=submit]`)
	if got := b.Text("header .who"); got != user {
		t.Fatalf("signed in as %q, want %q", got, user)
	}
	if loc := b.Location(); loc != selfServiceURL+"/" {
		t.Errorf("after the code the browser is at %s, want the home page", loc)
	}
	b.WaitVisible("#download-udp")
	// The endpoint listens on UDP only: no TCP profile is offered. Without single sign-on no
	// client is sent to a device link: no device approval either.
	main := b.Text("main")
	if strings.Contains(main, "Download for TCP") {
		t.Errorf("the home page of a UDP-only endpoint offers a TCP profile:\n%s", main)
	}
	if strings.Contains(main, "Approve a device") {
		t.Errorf("the home page of an endpoint without single sign-on offers device approval:\n%s", main)
	}
	b.Screenshot("home")

	name, body := b.Download("#download-udp")
	checkProfile(t, name, body, profileCheck{user: user, ca: d.ep.CA, cert: true, mfa: true})
	if t.Failed() {
		t.FailNow()
	}

	// The stock client with the downloaded profile, as it is: password and code at its console.
	c, device := d.startDownloaded("erin-phone", body)
	c.login(t, user, pw)
	c.expect(t, `CHALLENGE: Enter your authenticator code`, 15*time.Second)
	vpnCode := authenticator(t, secret, 1)
	if err := c.con.Send(vpnCode); err != nil {
		t.Fatal(err)
	}
	c.expect(t, `Initialization Sequence Completed`, 30*time.Second)
	d.ping(c.vpnClient, netlab.VPCHost.String())
	tunAddr := strings.Split(d.tunAddress(c.vpnClient), "/")[0]
	var connID string
	for _, conn := range d.listConnections() {
		if conn["Username"] == user && conn["Status"].(map[string]any)["Code"] == "active" {
			connID, _ = conn["ConnectionId"].(string)
		}
	}
	if connID == "" {
		t.Fatalf("cvpn connections list shows no active connection of %s", user)
	}

	// The portal lists the connection: its ID, the VPN address and where it comes from.
	b.Navigate(selfServiceURL + "/")
	entry := b.Text(".sessions li dl")
	if !strings.Contains(entry, connID) {
		t.Errorf("the portal's connection lacks its ID %s:\n%s", connID, entry)
	}
	if m := regexp.MustCompile(`VPN address\s+(\S+)`).FindStringSubmatch(entry); m == nil || m[1] != tunAddr {
		t.Errorf("the portal shows the VPN address %v, the client's tun0 has %s:\n%s", m, tunAddr, entry)
	}
	if m := regexp.MustCompile(`From\s+(\S+)`).FindStringSubmatch(entry); m == nil || m[1] != device.String() {
		t.Errorf("the portal shows the connection from %v, want the client's address %s:\n%s", m, device, entry)
	}
	b.Screenshot("connection")
	// The same page on a desktop.
	setViewport(t, b, browser.DesktopWidth, browser.DesktopHeight, false)
	b.Screenshot("home-desktop")
	setViewport(t, b, browser.PhoneWidth, browser.PhoneHeight, true)
	b.Submit(".sessions li form button")
	if got := b.Text(".flash"); got != "The connection was ended." {
		t.Errorf("after ending the connection the page says %q", got)
	}

	// The client is told to go (HALT: it does not reconnect), and the connection is listed
	// as ended.
	c.expect(t, `Halt command was pushed by server \('ended by the user in the self-service portal'\)`, 15*time.Second)
	c.expect(t, `process exiting`, 15*time.Second)
	if err := c.con.Wait(15 * time.Second); err != nil && !c.con.Exited() {
		t.Errorf("the client still runs after its connection was ended: %v", err)
	}
	var status string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		for _, conn := range d.listConnections() {
			if conn["ConnectionId"] == connID {
				status, _ = conn["Status"].(map[string]any)["Code"].(string)
			}
		}
		if status == "terminated" {
			break
		}
	}
	if status != "terminated" {
		t.Errorf("after the portal ended it, connection %s is %q, want terminated", connID, status)
	}
	if !regexp.MustCompile(`audit: portal_session_ended.* user=erin.* connection=` + regexp.QuoteMeta(connID)).MatchString(d.srv.Output()) {
		t.Errorf("cvpn logged no audit record of the ended connection")
	}
	b.Navigate(selfServiceURL + "/")
	if got := b.Text("main"); strings.Contains(got, connID) || !strings.Contains(got, "You have no active connections.") {
		t.Errorf("the portal still lists the ended connection %s:\n%s", connID, got)
	}
	b.Screenshot("connection-ended")
	d.neverLogged(pw, confirm, signInCode, vpnCode)
}

// setViewport resizes the browser's page (a phone with mobile emulation, or a desktop).
func setViewport(t *testing.T, b *browser.Browser, w, h int, mobile bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Second)
	defer cancel()
	var opts []chromedp.EmulateViewportOption
	if mobile {
		opts = append(opts, chromedp.EmulateMobile)
	}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(int64(w), int64(h), opts...)); err != nil {
		t.Fatalf("resize the browser to %dx%d: %v", w, h, err)
	}
}

// startDownloaded starts the stock client on a console in a new client namespace with a
// profile as the portal sent it; it returns the client and its address on its link.
func (d *dirSetup) startDownloaded(name string, profile []byte) (*consoleClient, netip.Addr) {
	d.t.Helper()
	ns, server, err := d.lab.AddClient()
	if err != nil {
		d.t.Fatal(err)
	}
	path := filepath.Join(d.ep.Dir, name+".ovpn")
	if err := os.WriteFile(path, profile, 0o600); err != nil {
		d.t.Fatal(err)
	}
	args := console.WithoutSystemd([]string{"ip", "netns", "exec", ns, "openvpn", "--config", path})
	con := console.Start(d.t, exec.Command(args[0], args[1:]...))
	a := server.As4()
	a[3] = 2 // netlab: the client is .2 of its link, the endpoint .1
	return &consoleClient{vpnClient: &vpnClient{ns: ns}, con: con}, netip.AddrFrom4(a)
}

// newFederatedSetup starts a lab, lets idp start the identity provider in the endpoint's
// namespace and return the endpoint file's authentication lines, and starts cvpn with a
// portal.
func newFederatedSetup(t *testing.T, o netlab.EndpointOptions, idp func(lab *netlab.Lab, dir string) string) (*setup, []byte) {
	t.Helper()
	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	s := &setup{t: t, lab: lab}
	t.Cleanup(func() {
		lab.Close()
		if t.Failed() && s.srv != nil {
			t.Logf("cvpn output:\n%s", s.srv.Output())
		}
	})
	dir := t.TempDir()
	portalYAML, portalCA := portalCert(t, dir)
	auth := idp(lab, dir)
	o.TLSCrypt, o.Authentication = true, auth
	o.Extra = portalYAML + fmt.Sprintf("remote_hostname: 172.31.1.1\nstate_dir: %s\n", filepath.Join(dir, "state"))
	s.ep, err = netlab.WriteEndpoint(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	s.srv, err = lab.Start("cvpn", lab.Server, cvpnBin, "serve", "--config", s.ep.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.srv.WaitFor("portal listening", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return s, portalCA
}

// TestPortalOIDC: on a single sign-on endpoint (OIDC, no client certificate), a user signs in
// to the portal at the OpenID provider's own login page (zitadel's op: authorization code
// flow with PKCE), lands on the portal's home page signed in under the provider's
// preferred_username, and downloads a profile without a certificate.
func TestPortalOIDC(t *testing.T) {
	t.Parallel()
	const user, pw = "frank", "frank's Secret-8"
	var op *oidclab.Lab
	s, portalCA := newFederatedSetup(t, netlab.EndpointOptions{
		NoCertificate: true,
		Transport:     "[{protocol: udp, port: 443}, {protocol: tcp, port: 443}]",
	}, func(lab *netlab.Lab, dir string) string {
		ln, err := netlab.ListenTCPIn(lab.Server, netip.AddrPortFrom(selfServiceIdPAddr, 0))
		if err != nil {
			t.Fatal(err)
		}
		op = oidclab.Start(t, oidclab.WithListener(ln))
		op.AddUser(user, pw, "eng", "vpn-users")
		op.AddClient("cvpn", "cvpn's client secret", selfServiceURL+"/oidc/callback")
		for name, data := range map[string][]byte{"oidc-ca.pem": op.CAPEM, "oidc-secret": []byte("cvpn's client secret\n")} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return fmt.Sprintf("  federated:\n    oidc:\n      issuer: %s\n      client_id: cvpn\n      client_secret_file: %s\n      ca_file: %s\n      scopes: [openid, profile, groups]\n",
			op.Issuer, filepath.Join(dir, "oidc-secret"), filepath.Join(dir, "oidc-ca.pem"))
	})

	b := startPortalBrowser(t, s.lab, [][]byte{portalCA, op.CAPEM})
	b.Navigate(selfServiceURL + "/")
	b.WaitVisible("#login-oidc")
	if b.Text("#login-oidc") != "Sign in with single sign-on (OIDC)" {
		t.Errorf("the OIDC button reads %q", b.Text("#login-oidc"))
	}
	b.Screenshot("sign-in")
	b.Submit("#login-oidc")
	// The provider's login page.
	if loc := b.Location(); !strings.HasPrefix(loc, op.Issuer+"/login") {
		t.Fatalf("the sign-in button went to %s, want the provider's login page at %s/login", loc, op.Issuer)
	}
	b.WaitVisible("#username")
	b.Screenshot("provider")
	b.Fill("#username", user)
	b.Fill("#password", pw)
	b.Submit("#submit")
	b.WaitVisible("#download-udp")
	if loc := b.Location(); loc != selfServiceURL+"/" {
		t.Errorf("after the provider, the browser is at %s, want the portal's home page", loc)
	}
	if got := b.Text("header .who"); got != user {
		t.Errorf("signed in as %q, want the provider's user %q", got, user)
	}
	b.WaitVisible("#devcode") // single sign-on: the user approves device logins here
	b.Screenshot("home")
	reqs := op.AuthRequests()
	if len(reqs) != 1 || reqs[0].CodeChallengeMethod != "S256" || reqs[0].Nonce == "" {
		t.Errorf("the provider saw authorization requests %+v, want one with PKCE S256 and a nonce", reqs)
	}

	name, body := b.Download("#download-udp")
	checkProfile(t, name, body, profileCheck{cert: false})
	name, body = b.Download("#download-tcp")
	checkProfile(t, name, body, profileCheck{proto: "tcp", cert: false})
	if !regexp.MustCompile(`audit: portal_login.* user=frank.* method=oidc`).MatchString(s.srv.Output()) {
		t.Errorf("cvpn logged no audit record of the OIDC login")
	}
	if !regexp.MustCompile(`audit: portal_download.* user=frank`).MatchString(s.srv.Output()) {
		t.Errorf("cvpn logged no audit record of the download")
	}
}

// TestPortalSAML: on an endpoint that wants a client certificate and a SAML login (as
// examples/saml-endpoint.yaml), a user signs in to the portal at the IdP's login page
// (crewjam's samlidp; the signed response is posted cross-site to the ACS), lands on the home
// page signed in under the NameID, and downloads a profile with a personal certificate.
func TestPortalSAML(t *testing.T) {
	t.Parallel()
	const user, pw = "grace", "grace's Secret-9"
	var idp *samllab.Lab
	s, portalCA := newFederatedSetup(t, netlab.EndpointOptions{}, func(lab *netlab.Lab, dir string) string {
		inNamespace(t, lab.Server, func() { idp = samllab.StartAt(t, selfServiceIdPAddr.String()) })
		idp.AddUser(user, pw, "vpn-users")
		if err := os.WriteFile(filepath.Join(dir, "idp-metadata.xml"), idp.Metadata, 0o644); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("  federated:\n    saml:\n      idp_metadata_file: %s\n", filepath.Join(dir, "idp-metadata.xml"))
	})
	writeCAKey(t, s.ep)
	// The IdP's administrator registers cvpn from the metadata its portal serves at its entity
	// ID, as examples/saml-endpoint.yaml says.
	md := fetchSPMetadata(t, s.lab, portalCA)
	idp.AddServiceProvider("cvpn", md)

	idpPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: idp.TLSCert.Raw})
	b := startPortalBrowser(t, s.lab, [][]byte{portalCA, idpPEM})
	b.Navigate(selfServiceURL + "/")
	b.WaitVisible("#login-saml")
	b.Screenshot("sign-in")
	b.Submit("#login-saml")
	if loc := b.Location(); !strings.HasPrefix(loc, idp.URL+"/") {
		t.Fatalf("the sign-in button went to %s, want the IdP at %s", loc, idp.URL)
	}
	b.WaitVisible("#password")
	b.Screenshot("idp")
	b.Fill("#user", user)
	b.Fill("#password", pw)
	b.Click("#login")
	// The IdP's answer page posts the response to the ACS by itself; then /login/finish and home.
	b.WaitVisible("#download-udp")
	if loc := b.Location(); loc != selfServiceURL+"/" {
		t.Errorf("after the IdP, the browser is at %s, want the portal's home page", loc)
	}
	if got := b.Text("header .who"); got != user {
		t.Errorf("signed in as %q, want the IdP's user %q", got, user)
	}
	b.Screenshot("home")

	name, body := b.Download("#download-udp")
	checkProfile(t, name, body, profileCheck{user: user, ca: s.ep.CA, cert: true})
	if !regexp.MustCompile(`audit: portal_login.* user=grace.* method=saml`).MatchString(s.srv.Output()) {
		t.Errorf("cvpn logged no audit record of the SAML login")
	}
}

// fetchSPMetadata fetches the SAML service provider's metadata from the running portal, as
// an IdP's administrator would (curl in the endpoint's namespace, trusting the portal's CA),
// and checks that it names the entity ID and the ACS.
func fetchSPMetadata(t *testing.T, lab *netlab.Lab, portalCA []byte) []byte {
	t.Helper()
	caFile := filepath.Join(t.TempDir(), "portal-ca.pem")
	if err := os.WriteFile(caFile, portalCA, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	entityID := selfServiceURL + "/saml/metadata"
	out, err := lab.Command(ctx, lab.Server, "curl", "-sS", "--fail", "--cacert", caFile,
		"--resolve", selfServiceHost+":8443:127.0.0.1", entityID).Output()
	if err != nil {
		t.Fatalf("curl %s: %v", entityID, err)
	}
	var md struct {
		XMLName  xml.Name `xml:"urn:oasis:names:tc:SAML:2.0:metadata EntityDescriptor"`
		EntityID string   `xml:"entityID,attr"`
		SP       struct {
			ACS []struct {
				Binding  string `xml:"Binding,attr"`
				Location string `xml:"Location,attr"`
			} `xml:"AssertionConsumerService"`
		} `xml:"SPSSODescriptor"`
	}
	if err := xml.Unmarshal(out, &md); err != nil {
		t.Fatalf("the portal's %s is not an EntityDescriptor: %v\n%s", entityID, err, out)
	}
	if md.EntityID != entityID {
		t.Errorf("the SP metadata names entity ID %q, want %q", md.EntityID, entityID)
	}
	acs := false
	for _, a := range md.SP.ACS {
		acs = acs || (a.Location == selfServiceURL+"/saml/acs" && a.Binding == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST")
	}
	if !acs {
		t.Errorf("the SP metadata has no HTTP-POST ACS at %s/saml/acs:\n%s", selfServiceURL, out)
	}
	return out
}
