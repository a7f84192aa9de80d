package e2e

import (
	"context"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/pki"
)

// TestReloadCertificateListenerCiphers is issue 10's SIGHUP test with stock clients: on a running
// endpoint with one connected client pinging through the tunnel, three reloads change the server
// certificate, add a UDP listener and narrow the cipher list, and a new client's handshake shows
// each one applied; a fourth reload that changes tun.name is refused by name and changes
// nothing. The first client stays connected throughout: the same openvpn process through one
// handshake, the same tunnel address, its pings answered, and no disconnect in the server log.
func TestReloadCertificateListenerCiphers(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	vpc := netlab.VPCHost.String()

	first := s.connect("first", netlab.ProfileOptions{})
	firstAddr := s.tunAddress(first)
	for _, want := range []string{"VERIFY OK: depth=0, CN=cvpn-lab-server\n", "Data Channel: cipher 'AES-256-GCM'"} {
		if !strings.Contains(first.proc.Output(), want) {
			t.Fatalf("first client log lacks %q:\n%s", want, first.proc.Output())
		}
	}
	s.ping(first, vpc)
	// A ping every 0.2 s for the whole test; SIGINT at the end makes it print its count.
	pingStart := time.Now()
	pinger, err := s.lab.Start("ping from first", first.ns, "ping", "-i", "0.2", "-W", "2", vpc)
	if err != nil {
		t.Fatal(err)
	}
	file := s.endpointFile()
	applied := 0
	reload := func(doc, changed string) {
		t.Helper()
		s.reload(doc)
		applied++
		if err := waitCount(s.srv, "reload applied", applied, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if line := `msg="reload applied" changed=` + changed; !strings.Contains(s.srv.Output(), line) {
			t.Fatalf("cvpn did not log %s:\n%s", line, s.srv.Output())
		}
	}

	// (a) A new server certificate from the same CA, with another name and serial: a new client
	// verifies it.
	now := time.Now()
	cert2, err := pki.IssueServer(s.ep.CA, "cvpn-lab-server-2", []string{"server.cvpn.test"}, pki.ECDSAP256, 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteIdentity(cert2, filepath.Join(s.ep.Dir, "server2.crt"), filepath.Join(s.ep.Dir, "server2.key")); err != nil {
		t.Fatal(err)
	}
	file = replaceInFile(t, file, "{cert_file: server.crt, key_file: server.key}", "{cert_file: server2.crt, key_file: server2.key}")
	reload(file, `"server_certificate.cert_file, server_certificate.key_file"`)
	second := s.connect("second", netlab.ProfileOptions{})
	if want := "VERIFY OK: depth=0, CN=cvpn-lab-server-2\n"; !strings.Contains(second.proc.Output(), want) {
		t.Errorf("second client log lacks %q:\n%s", want, second.proc.Output())
	}
	s.ping(second, vpc)

	// (b) A second UDP listener: a new client connects on it.
	file = replaceInFile(t, file, "transport: [{protocol: udp, port: 443}]", "transport: [{protocol: udp, port: 443}, {protocol: udp, port: 1194}]")
	reload(file, "transport")
	third := s.connect("third", netlab.ProfileOptions{Port: 1194})
	if !regexp.MustCompile(`link remote: \[AF_INET\]172\.31\.\d+\.1:1194`).MatchString(third.proc.Output()) {
		t.Errorf("third client log shows no link to port 1194:\n%s", third.proc.Output())
	}
	s.ping(third, vpc)

	// (c) CHACHA20-POLY1305 only: a new client negotiates it; the first keeps AES-256-GCM.
	file = replaceInFile(t, file, "data_ciphers: [AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305]", "data_ciphers: [CHACHA20-POLY1305]")
	reload(file, "data_ciphers")
	fourth := s.connect("fourth", netlab.ProfileOptions{})
	if want := "Data Channel: cipher 'CHACHA20-POLY1305'"; !strings.Contains(fourth.proc.Output(), want) {
		t.Errorf("fourth client log lacks %q:\n%s", want, fourth.proc.Output())
	}
	s.ping(fourth, vpc)
	s.ping(first, vpc)

	// A changed tun.name is refused by name, and the cipher change that comes with it does not
	// apply: a new client still gets CHACHA20-POLY1305.
	s.reload(replaceInFile(t, file, "tun: {name: cvpn0}", "tun: {name: cvpn9}",
		"data_ciphers: [CHACHA20-POLY1305]", "data_ciphers: [AES-256-GCM]"))
	if err := s.srv.WaitFor("reload refused", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"refused=tun.name", "tun.name: cannot change on a running endpoint", "restart the endpoint", "the running configuration stays"} {
		if !strings.Contains(s.srv.Output(), want) {
			t.Errorf("the refusal lacks %q:\n%s", want, s.srv.Output())
		}
	}
	fifth := s.connect("fifth", netlab.ProfileOptions{})
	if want := "Data Channel: cipher 'CHACHA20-POLY1305'"; !strings.Contains(fifth.proc.Output(), want) {
		t.Errorf("after the refused reload a new client's log lacks %q:\n%s", want, fifth.proc.Output())
	}
	if out, err := s.lab.Output(context.Background(), s.lab.Server, "ip", "link", "show", "cvpn9"); err == nil {
		t.Errorf("the refused reload created cvpn9:\n%s", out)
	}
	s.ping(first, vpc)

	// The first client: one handshake, the same address, the cipher it negotiated, every ping
	// answered, and the server never ended its session.
	pingTime := time.Since(pingStart)
	if err := pinger.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = pinger.Wait(ctx) // ping exits 1 if a reply was missing; the count below says
	sent, received := reloadPingCounts(t, pinger.Output())
	t.Logf("first client's background ping over %s: %d sent, %d received", pingTime.Round(time.Millisecond), sent, received)
	if want := int(pingTime/(200*time.Millisecond)) - 5; sent < want || received < sent-1 { // the last may be in flight at SIGINT
		t.Errorf("first client's background ping over %s: %d sent (want at least %d), %d received; want every one answered:\n%s",
			pingTime, sent, want, received, pinger.Output())
	}
	if first.proc.Exited() {
		t.Fatalf("first client exited:\n%s", first.proc.Output())
	}
	out := first.proc.Output()
	if n := strings.Count(out, "Initialization Sequence Completed"); n != 1 {
		t.Errorf("first client initialized %d times, want 1", n)
	}
	for _, bad := range []string{"SIGUSR1", "Restart pause", "CHACHA20-POLY1305'", "Inactivity timeout"} {
		if strings.Contains(out, bad) {
			t.Errorf("first client log has %q:\n%s", bad, out)
		}
	}
	if got := s.tunAddress(first); got != firstAddr {
		t.Errorf("first client's tunnel address went from %s to %s", firstAddr, got)
	}
	srvOut := s.srv.Output()
	for _, bad := range []string{"client disconnected", "ending session"} {
		if strings.Contains(srvOut, bad) {
			t.Errorf("cvpn logged %q:\n%s", bad, srvOut)
		}
	}
	if n := strings.Count(srvOut, "client connected"); n != 5 {
		t.Errorf("cvpn logged %d connections, want 5 (one per client)", n)
	}
}

// replaceInFile applies old, new, ... replacements (each once) to doc; each old must be in it.
func replaceInFile(t *testing.T, doc string, oldnew ...string) string {
	t.Helper()
	for i := 0; i < len(oldnew); i += 2 {
		if !strings.Contains(doc, oldnew[i]) {
			t.Fatalf("the endpoint file lacks %q:\n%s", oldnew[i], doc)
		}
		doc = strings.Replace(doc, oldnew[i], oldnew[i+1], 1)
	}
	return doc
}

var reloadPingRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// reloadPingCounts reads ping's summary line.
func reloadPingCounts(t *testing.T, out string) (sent, received int) {
	t.Helper()
	m := reloadPingRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ping printed no summary:\n%s", netlab.Tail(out, 2000))
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received
}
