package endpoint

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/endpoint/admin"
	"github.com/cvpn/cvpn/internal/slapdlab"
	"github.com/cvpn/cvpn/state"
)

// directoryLab is a lab whose endpoint authenticates against a real slapd, with TOTP, its
// state in the lab's directory.
func directoryLab(t *testing.T, certificates bool) (*lab, *slapdlab.Lab) {
	t.Helper()
	dir := slapdlab.Start(t)
	dir.AddUser("alice", "alice-pw")
	dir.AddUser("bob", "bob-pw")
	dir.AddGroup("dev", "alice")
	l := newLab(t)
	l.writeFile("bind-password", []byte(dir.ServicePassword+"\n"))
	l.writeFile("ldap-ca.crt", dir.CAPEM)
	authBlock := fmt.Sprintf(`authentication:
  directory:
    url: %s
    ca_file: ldap-ca.crt
    bind_dn: %q
    bind_password_file: bind-password
    user_base_dn: %q
  mfa: {totp: {issuer: Lab VPN}}
`, dir.LDAPSURL, dir.ServiceDN, dir.PeopleDN)
	if certificates {
		authBlock += "  certificate: {client_root_ca_file: ca.crt, crl_file: crl.pem}\n"
	}
	doc := strings.Replace(baseFile, "authentication:\n  certificate: {client_root_ca_file: ca.crt, crl_file: crl.pem}\n", authBlock, 1)
	doc = strings.Replace(doc, "authorization_rules: [{target_network_cidr: 10.0.0.0/16, authorize_all_groups: true}]",
		"authorization_rules: [{target_network_cidr: 10.0.0.0/16, access_group_id: dev}]", 1)
	doc += "state_dir: state\n"
	l.writeFile("endpoint.yaml", []byte(doc))
	return l, dir
}

func scrv1(password, code string) string {
	b := base64.StdEncoding.EncodeToString
	return "SCRV1:" + b([]byte(password)) + ":" + b([]byte(code))
}

// enroll enrols user through the running endpoint's admin API and returns a code source.
func enroll(t *testing.T, c *admin.Client, user string) func() string {
	t.Helper()
	out, err := c.EnrollUserMFA(context.Background(), admin.EnrollUserMfaInput{Username: user})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(out.OtpauthURI)
	if err != nil {
		t.Fatal(err)
	}
	secret := u.Query().Get("secret")
	step := time.Now()
	return func() string {
		// Each call takes the next time step, so no code is used twice.
		step = step.Add(30 * time.Second)
		code, err := totp.GenerateCode(secret, step.Add(-30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return code
	}
}

// TestDirectoryEndpoint runs the pipeline in a started endpoint against a real slapd: a
// directory-only login with a static TOTP response gets the group's access, a wrong password
// and a replayed code are refused with reasons, the admin API enrols and resets users, and the
// store belongs to the running endpoint alone.
func TestDirectoryEndpoint(t *testing.T) {
	l, _ := directoryLab(t, false)
	l.start()
	c := admin.NewClient(l.dir + "/admin.sock")
	ctx := context.Background()

	code := enroll(t, c, "alice")
	if _, err := c.EnrollUserMFA(ctx, admin.EnrollUserMfaInput{Username: "alice"}); !isAdminError(err, "IncorrectState") {
		t.Errorf("second enrolment without Force: %v", err)
	}
	if _, _, err := OpenEnrolments(l.run.Endpoint().Config); !errors.Is(err, state.ErrInUse) {
		t.Errorf("the store opened beside the running endpoint: %v", err)
	}

	first := code()
	s, _ := l.connect(clientOptions{noCert: true, username: "alice", password: scrv1("alice-pw", first)})
	l.ping(s, 1)
	if tok := s.AuthToken(); !strings.HasPrefix(tok, "CVPN-AT1:") {
		t.Errorf("no auth-token pushed: %q", tok)
	}
	conns, err := c.DescribeClientVpnConnections(ctx, admin.DescribeClientVpnConnectionsInput{})
	if err != nil || len(conns.Connections) != 1 || conns.Connections[0].Username != "alice" {
		t.Fatalf("listing %+v %v", conns, err)
	}

	for _, tc := range []struct {
		user, password string
		want           string
	}{
		{"alice", scrv1("wrong", code()), "wrong username or password"},
		{"alice", scrv1("alice-pw", first), "already used"},
		{"bob", scrv1("bob-pw", "123456"), "no authenticator is enrolled"},
		{"alice", "alice-pw", "CRV1:R,E:"},
	} {
		_, _, err := l.dial(clientOptions{noCert: true, username: tc.user, password: tc.password})
		if !errors.Is(err, client.ErrAuthFailed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want AUTH_FAILED with %q", tc.user, err, tc.want)
		}
	}
	if strings.Contains(l.logs.String(), "alice-pw") {
		t.Error("the server logged a password")
	}
	// A challenge's state stands for the checked password: the client alone gets it.
	_, _, err = l.dial(clientOptions{noCert: true, username: "alice", password: "alice-pw"})
	_, crv1, _ := strings.Cut(fmt.Sprint(err), "CRV1:R,E:")
	state, _, _ := strings.Cut(crv1, ":")
	if len(state) < 16 {
		t.Fatalf("no challenge state in %v", err)
	}
	if strings.Contains(l.logs.String(), state) {
		t.Error("the server logged a challenge's state")
	}
	if _, err := c.ResetUserMFA(ctx, admin.ResetUserMfaInput{Username: "alice"}); err != nil {
		t.Fatal(err)
	}
	_, _, err = l.dial(clientOptions{noCert: true, username: "alice", password: scrv1("alice-pw", code())})
	if err == nil || !strings.Contains(err.Error(), "no authenticator is enrolled") {
		t.Errorf("after reset: %v", err)
	}
}

// TestDirectoryLossOfGroupAtRenegotiation: a user removed from the group that grants access
// loses it at the next renegotiation, over the auth-token, without a password.
func TestDirectoryLossOfGroupAtRenegotiation(t *testing.T) {
	l, dir := directoryLab(t, true)
	doc := strings.Replace(string(readFileBytes(t, l.path)), "  mfa: {totp: {issuer: Lab VPN}}\n", "", 1)
	l.writeFile("endpoint.yaml", []byte(doc+"reneg_seconds: 10\n"))
	var offset atomic.Int64
	l.now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	l.start()
	s, _ := l.connect(clientOptions{cn: "alice-laptop", username: "alice", password: "alice-pw"})
	l.ping(s, 1)
	srv := l.run.Server()
	if cl := srv.Clients(); len(cl) != 1 || !slices.Equal(cl[0].Groups, []string{"dev"}) || cl[0].CommonName != "alice-laptop" {
		t.Fatalf("sessions %+v", cl)
	}
	token := s.AuthToken()
	dir.RemoveMember("dev", "alice")
	offset.Add(int64(11 * time.Second)) // the renegotiation is due
	deadline := time.Now().Add(10 * time.Second)
	for {
		if cl := srv.Clients(); len(cl) == 1 && len(cl[0].Groups) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("groups after the renegotiation: %+v", srv.Clients())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s.AuthToken() == "" || token == "" {
		t.Error("no auth-token")
	}
	if l.reachesOr(s, vpcHost, 2, "unauthorized") {
		t.Error("alice still reaches the VPC after leaving dev")
	}
}

func isAdminError(err error, code string) bool {
	var e *admin.Error
	return errors.As(err, &e) && e.Code == code
}

// TestPortalServed: an endpoint with a portal serves it over TLS with the server certificate,
// with its security headers, from Start until Run returns.
func TestPortalServed(t *testing.T) {
	l, _ := directoryLab(t, false)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	doc := string(readFileBytes(t, l.path)) + "portal: {listen_address: \"" + addr + "\", public_url: \"https://vpn.example.com\"}\n"
	l.writeFile("endpoint.yaml", []byte(doc))
	l.portalProfiles = true
	l.start()
	// The lab's server certificate names no address: the test checks whose it is instead.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get("https://" + addr + "/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.TLS == nil || resp.Header.Get("Content-Security-Policy") == "" ||
		resp.TLS.PeerCertificates[0].Subject.CommonName != "server-a" {
		t.Fatalf("GET /login: %d, TLS %v, CSP %q", resp.StatusCode, resp.TLS != nil, resp.Header.Get("Content-Security-Policy"))
	}
	l.run.Stop()
	<-l.done
	if _, err := client.Get("https://" + addr + "/login"); err == nil {
		t.Error("the portal outlived Run")
	}
}
