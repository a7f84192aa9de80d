package endpoint

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/portal"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/host"
	"github.com/cvpn/cvpn/tunnel/sock/socktest"
)

// These tests run a whole endpoint in memory: the real engine over socktest's network and
// tuntest's TUN, with Go OpenVPN clients (bench/client), so that reloads are seen the way a
// client sees them, by a new handshake.

var (
	serverAddr = netip.MustParseAddr("198.51.100.1")
	snatAddr   = netip.MustParseAddr("10.0.1.2")
	vpcHost    = netip.MustParseAddr("10.0.1.10")
)

// fakeHost stands in for the host state.
type fakeHost struct {
	tun    *tuntest.ChannelTUN
	closed chan struct{}
}

func (f *fakeHost) Device() tun.Device { return f.tun.TUN() }
func (f *fakeHost) Close() error       { close(f.closed); return nil }

// lab is an endpoint directory with two server identities from two CAs, two tls-crypt keys and
// a CRL, and the running endpoint built from it.
type lab struct {
	t        *testing.T
	dir      string
	path     string // endpoint.yaml
	ca       *pki.Identity
	serverCA *pki.Identity // signs server-b only
	keys     map[string]*tlscrypt.StaticKey
	net      *socktest.Network
	host     *fakeHost
	run      *Running
	logs     *syncBuffer
	done     chan struct{}
	now      func() time.Time // the endpoint's clock; nil means time.Now
	// portalProfiles gives the endpoint a profile maker for its portal.
	portalProfiles bool
}

// baseFile is the endpoint file the lab starts with.
const baseFile = `client_cidr_block: 10.2.0.0/22
vpc_cidr_blocks: [10.0.0.0/16]
listen_address: 0.0.0.0
transport: [{protocol: udp, port: 443}]
server_certificate: {cert_file: server-a.crt, key_file: server-a.key}
control_channel: {tls_crypt_key_file: tc1.key}
authentication:
  certificate: {client_root_ca_file: ca.crt, crl_file: crl.pem}
data_ciphers: [AES-256-GCM, CHACHA20-POLY1305]
target_network: {interface: eth1, snat_address: 10.0.1.2}
tun: {name: cvpn0}
routes: [{destination_cidr_block: 10.0.1.0/24}]
authorization_rules: [{target_network_cidr: 10.0.0.0/16, authorize_all_groups: true}]
admin: {socket: admin.sock}
bandwidth_limit_mbps: 0
keepalive: {ping_seconds: 10, ping_restart_seconds: 60}
`

func newLab(t *testing.T) *lab {
	t.Helper()
	now := time.Now()
	l := &lab{t: t, dir: t.TempDir(), keys: map[string]*tlscrypt.StaticKey{}, logs: &syncBuffer{}}
	l.path = filepath.Join(l.dir, "endpoint.yaml")
	var err error
	if l.ca, err = pki.NewCA("client CA", pki.ECDSAP256, 48*time.Hour, now); err != nil {
		t.Fatal(err)
	}
	if l.serverCA, err = pki.NewCA("server CA", pki.ECDSAP256, 48*time.Hour, now); err != nil {
		t.Fatal(err)
	}
	l.writeFile("ca.crt", l.ca.CertPEM)
	for name, ca := range map[string]*pki.Identity{"server-a": l.ca, "server-b": l.serverCA} {
		id, err := pki.IssueServer(ca, name, nil, pki.ECDSAP256, 24*time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteIdentity(id, filepath.Join(l.dir, name+".crt"), filepath.Join(l.dir, name+".key")); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"tc1.key", "tc2.key"} {
		k, err := tlscrypt.GenerateStaticKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		l.keys[name] = k
		l.writeFile(name, k.Marshal())
	}
	l.writeCRL("crl.pem")
	l.writeFile("endpoint.yaml", []byte(baseFile))
	return l
}

func (l *lab) writeFile(name string, data []byte) {
	l.t.Helper()
	if err := os.WriteFile(filepath.Join(l.dir, name), data, 0o600); err != nil {
		l.t.Fatal(err)
	}
}

// writeCRL writes a CRL of the client CA that revokes certs.
func (l *lab) writeCRL(name string, certs ...*x509.Certificate) {
	l.t.Helper()
	now := time.Now()
	crl, err := pki.NewCRL(l.ca, now, 24*time.Hour)
	if err != nil {
		l.t.Fatal(err)
	}
	for _, c := range certs {
		if crl, err = pki.Revoke(l.ca, crl, c, now, 24*time.Hour); err != nil {
			l.t.Fatal(err)
		}
	}
	if err := pki.WriteCRL(crl, filepath.Join(l.dir, name)); err != nil {
		l.t.Fatal(err)
	}
}

// start starts the endpoint from the lab's file and serves until the test ends.
func (l *lab) start() {
	l.t.Helper()
	ep, err := Load(l.path, time.Now())
	if err != nil {
		l.t.Fatal(err)
	}
	l.net = socktest.NewNetwork()
	l.host = &fakeHost{tun: tuntest.NewChannelTUN(), closed: make(chan struct{})}
	l.run, err = Start(ep, Options{
		Log:     slog.New(slog.NewTextHandler(l.logs, nil)),
		Host:    func(host.Config, *slog.Logger) (Host, error) { return l.host, nil },
		Network: l.net,
		Now:     l.now,
		crlPoll: 20 * time.Millisecond,
		PortalProfiles: func(func() *Endpoint) portal.Profiles {
			if !l.portalProfiles {
				return nil
			}
			return fakeProfiles{}
		},
	})
	if err != nil {
		l.t.Fatal(err)
	}
	l.done = make(chan struct{})
	go func() { defer close(l.done); l.run.Run() }()
	l.t.Cleanup(func() {
		l.run.Stop()
		select {
		case <-l.done:
		case <-time.After(10 * time.Second):
			l.t.Error("Run did not return after Stop")
		}
		if l.t.Failed() {
			l.t.Logf("endpoint log:\n%s", l.logs.String())
		}
	})
}

// fakeProfiles makes empty profiles for portal tests (package profile imports this one).
type fakeProfiles struct{}

func (fakeProfiles) Profile(context.Context, portal.Identity, string) (string, []byte, error) {
	return "test.ovpn", []byte("client\n"), nil
}

// reload rewrites the endpoint file with the replacements old, new, ... of baseFile and reloads.
func (l *lab) reload(oldnew ...string) (*ReloadReport, error) {
	l.t.Helper()
	doc := baseFile
	for i := 0; i < len(oldnew); i += 2 {
		if !strings.Contains(doc, oldnew[i]) {
			l.t.Fatalf("the endpoint file lacks %q", oldnew[i])
		}
		doc = strings.Replace(doc, oldnew[i], oldnew[i+1], 1)
	}
	l.writeFile("endpoint.yaml", []byte(doc))
	return l.run.Reload(l.path)
}

// clientOptions shape one client.
type clientOptions struct {
	port     uint16 // default 443
	serverCA *pki.Identity
	key      string // tls-crypt key file; default tc1.key
	cn       string
	id       *pki.Identity // the client's identity; default a new one of the client CA named cn
	// timeout bounds the handshake; default 10 s. Tests that expect no answer shorten it.
	timeout time.Duration
	// username and password are sent in the key-method 2 block when username is set; noCert
	// sends no client certificate.
	username, password string
	noCert             bool
}

// dial connects a new client with a certificate of the client CA; the server's certificate must
// chain to o.serverCA (default the client CA).
func (l *lab) dial(o clientOptions) (*client.Session, *pki.Identity, error) {
	l.t.Helper()
	if o.port == 0 {
		o.port = 443
	}
	if o.serverCA == nil {
		o.serverCA = l.ca
	}
	if o.key == "" {
		o.key = "tc1.key"
	}
	if o.cn == "" {
		o.cn = "client"
	}
	id := o.id
	if id == nil {
		var err error
		if id, err = pki.IssueClient(l.ca, o.cn, []string{"dev"}, pki.ECDSAP256, 24*time.Hour, time.Now()); err != nil {
			l.t.Fatal(err)
		}
	}
	cert, err := id.TLSCertificate()
	if err != nil {
		l.t.Fatal(err)
	}
	if o.noCert {
		cert = tls.Certificate{}
	}
	roots := x509.NewCertPool()
	roots.AddCert(o.serverCA.Cert)
	if o.timeout == 0 {
		o.timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	s, err := client.Connect(ctx, client.Config{
		Server: netip.AddrPortFrom(serverAddr, o.port), Certificate: cert, RootCAs: roots, TLSCrypt: l.keys[o.key],
		Username: o.username, Password: o.password,
		Dial: func(context.Context) (net.PacketConn, error) {
			return l.net.ListenPacket(netip.AddrPortFrom(netip.MustParseAddr("203.0.113.1"), 0))
		},
	})
	if err == nil {
		l.t.Cleanup(func() { s.Close() })
	}
	return s, id, err
}

func (l *lab) connect(o clientOptions) (*client.Session, *pki.Identity) {
	l.t.Helper()
	s, id, err := l.dial(o)
	if err != nil {
		l.t.Fatalf("connect %+v: %v", o, err)
	}
	return s, id
}

// ping sends a packet from s to the VPC host, answers it at the TUN and checks s gets the answer.
func (l *lab) ping(s *client.Session, seq byte) {
	l.t.Helper()
	self := s.Address().Addr()
	if err := s.WritePacket(ipv4UDP(self, vpcHost, 40000, seq)); err != nil {
		l.t.Fatalf("WritePacket: %v", err)
	}
	var out []byte
	select {
	case out = <-l.host.tun.Inbound:
	case <-time.After(5 * time.Second):
		l.t.Fatalf("packet %d from %v never left the TUN", seq, self)
	}
	if src := netip.AddrFrom4([4]byte(out[12:16])); src != snatAddr {
		l.t.Fatalf("packet left the TUN from %v, want the SNAT address", src)
	}
	reply := ipv4UDP(vpcHost, snatAddr, 53, seq)
	copy(reply[22:24], out[20:22]) // to the NATed source port
	select {
	case l.host.tun.Outbound <- reply:
	case <-time.After(5 * time.Second):
		l.t.Fatal("the engine did not read the TUN")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	buf := make([]byte, 2048)
	n, err := s.ReadPacketContext(ctx, buf)
	if err != nil {
		l.t.Fatalf("no reply reached %v: %v", self, err)
	}
	if dst := netip.AddrFrom4([4]byte(buf[16:20])); dst != self || buf[n-1] != seq {
		l.t.Fatalf("reply to %v with payload %d, want %v and %d", dst, buf[n-1], self, seq)
	}
}

// ipv4UDP builds an IPv4/UDP packet src:sport -> dst:53 (or to sport 53 from 40000 when
// sport is 53) whose one-byte payload is seq; the UDP checksum is zero (none).
func ipv4UDP(src, dst netip.Addr, sport uint16, seq byte) []byte {
	p := make([]byte, 29)
	p[0], p[3], p[8], p[9] = 0x45, 29, 64, 17
	copy(p[12:16], src.AsSlice())
	copy(p[16:20], dst.AsSlice())
	dport := uint16(53)
	if sport == 53 {
		dport = 40000
	}
	p[20], p[21], p[22], p[23], p[25] = byte(sport>>8), byte(sport), byte(dport>>8), byte(dport), 9
	p[28] = seq
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(p[i])<<8 | uint32(p[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	p[10], p[11] = byte(^sum>>8), byte(^sum)
	return p
}

// alive fails the test if s has ended.
func alive(t *testing.T, what string, s *client.Session) {
	t.Helper()
	select {
	case <-s.Done():
		t.Fatalf("%s ended: %v", what, s.Err())
	default:
	}
}

// ended waits until s ends and returns why.
func ended(t *testing.T, what string, s *client.Session) error {
	t.Helper()
	select {
	case <-s.Done():
		return s.Err()
	case <-time.After(10 * time.Second):
		t.Fatalf("%s was not ended", what)
		return nil
	}
}

// TestReloadAppliesLive changes the server certificate (to one of another CA), the control
// channel key, a listener, the cipher list, keepalive, the routes and the banner at once: a new
// client sees each, and the connected client keeps its session, cipher and traffic.
func TestReloadAppliesLive(t *testing.T) {
	l := newLab(t)
	l.start()
	first, _ := l.connect(clientOptions{cn: "first"})
	if c := first.Cipher(); c != datacrypto.AES256GCM {
		t.Fatalf("first client negotiated %v, want AES-256-GCM", c)
	}
	l.ping(first, 1)
	// Before the reload, a client that trusts only server-b's CA is refused by its own check,
	// and one on port 1194 finds no listener.
	if _, _, err := l.dial(clientOptions{serverCA: l.serverCA, key: "tc1.key"}); err == nil {
		t.Fatal("a client trusting only the server CA connected before the reload")
	}

	rep, err := l.reload(
		"transport: [{protocol: udp, port: 443}]", "transport: [{protocol: udp, port: 443}, {protocol: udp, port: 1194}]",
		"{cert_file: server-a.crt, key_file: server-a.key}", "{cert_file: server-b.crt, key_file: server-b.key}",
		"tls_crypt_key_file: tc1.key", "tls_crypt_key_file: tc2.key",
		"data_ciphers: [AES-256-GCM, CHACHA20-POLY1305]", "data_ciphers: [CHACHA20-POLY1305]",
		"routes: [{destination_cidr_block: 10.0.1.0/24}]", "routes: [{destination_cidr_block: 10.0.1.0/24}, {destination_cidr_block: 10.0.2.0/24}]",
		"{ping_seconds: 10, ping_restart_seconds: 60}", "{ping_seconds: 5, ping_restart_seconds: 30}\nclient_login_banner: hello",
	)
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	want := []string{"transport", "server_certificate.cert_file", "server_certificate.key_file", "control_channel.tls_crypt_key_file",
		"data_ciphers", "routes", "client_login_banner", "keepalive.ping_seconds", "keepalive.ping_restart_seconds"}
	if !slices.Equal(rep.Changed, want) {
		t.Errorf("changed %q, want %q", rep.Changed, want)
	}
	if line := `msg="reload applied" changed="` + strings.Join(want, ", ") + `"`; !strings.Contains(l.logs.String(), line) {
		t.Errorf("the log lacks %s", line)
	}

	second, _ := l.connect(clientOptions{port: 1194, serverCA: l.serverCA, key: "tc2.key", cn: "second"})
	if c := second.Cipher(); c != datacrypto.ChaCha20Poly1305 {
		t.Errorf("new client negotiated %v, want CHACHA20-POLY1305", c)
	}
	if p := second.Push(); p.Ping != 5*time.Second || p.PingRestart != 30*time.Second || len(p.Routes) != 2 {
		t.Errorf("new client was pushed ping %v ping-restart %v routes %v, want 5s, 30s and two routes", p.Ping, p.PingRestart, p.Routes)
	}
	// The old key and the old certificate's CA no longer get a session.
	if _, _, err := l.dial(clientOptions{key: "tc1.key", timeout: 2 * time.Second}); err == nil {
		t.Error("a client with the old tls-crypt key and trusting the old server CA connected after the reload")
	}
	l.ping(second, 2)
	l.ping(first, 3)
	alive(t, "the first client", first)
	clients := l.run.Server().Clients()
	if len(clients) != 2 || clients[0].Cipher != "AES-256-GCM" || clients[1].Cipher != "CHACHA20-POLY1305" {
		t.Errorf("clients %+v, want the first on AES-256-GCM and the second on CHACHA20-POLY1305", clients)
	}
	if strings.Contains(l.logs.String(), "client disconnected") {
		t.Errorf("a client was disconnected:\n%s", l.logs.String())
	}
}

// TestReloadRefusedChangesNothing: a file that changes a key needing a restart is refused by
// name, and none of its other changes apply.
func TestReloadRefusedChangesNothing(t *testing.T) {
	l := newLab(t)
	l.start()
	first, _ := l.connect(clientOptions{cn: "first"})
	_, err := l.reload(
		"tun: {name: cvpn0}", "tun: {name: vpn1, mtu: 1400}",
		"data_ciphers: [AES-256-GCM, CHACHA20-POLY1305]", "data_ciphers: [CHACHA20-POLY1305]",
		"transport: [{protocol: udp, port: 443}]", "transport: [{protocol: udp, port: 443}, {protocol: udp, port: 1194}]",
	)
	var re *ReloadError
	if !errors.As(err, &re) || !slices.Equal(re.Refused, []string{"tun.name", "tun.mtu"}) {
		t.Fatalf("Reload = %v, want a *ReloadError refusing tun.name and tun.mtu", err)
	}
	var ve *config.ValidationError
	if !errors.As(err, &ve) || ve.Path != "tun.name" || !strings.Contains(err.Error(), "restart") {
		t.Errorf("Reload = %v, want it to name tun.name and say a restart is needed", err)
	}
	logs := l.logs.String()
	for _, want := range []string{"reload refused", `refused="tun.name, tun.mtu"`, "the running configuration stays"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}
	second, _ := l.connect(clientOptions{cn: "second"})
	if c := second.Cipher(); c != datacrypto.AES256GCM {
		t.Errorf("after a refused reload a new client negotiated %v, want AES-256-GCM", c)
	}
	if addrs := l.run.Server().Addrs(); len(addrs) != 1 {
		t.Errorf("listeners %v after a refused reload, want only the first", addrs)
	}
	if got := l.run.Endpoint().Config.TUN.Name; got != "cvpn0" {
		t.Errorf("the endpoint in force has tun.name %q", got)
	}
	l.ping(first, 1)
}

// TestReloadInvalidFileChangesNothing: a file that does not validate, or names a file whose
// content is wrong, is refused with the key named; nothing of it applies.
func TestReloadInvalidFileChangesNothing(t *testing.T) {
	l := newLab(t)
	l.start()
	first, _ := l.connect(clientOptions{cn: "first"})
	for _, tc := range []struct {
		name string
		edit []string
		key  string
	}{
		{"validation", []string{"bandwidth_limit_mbps: 0", "bandwidth_limit_mbps: lots"}, "bandwidth_limit_mbps"},
		// server-b's key with server-a's certificate: the key is not the certificate's.
		{"file content", []string{"key_file: server-a.key", "key_file: server-b.key"}, "server_certificate.key_file"},
	} {
		_, err := l.reload(append(tc.edit, "data_ciphers: [AES-256-GCM, CHACHA20-POLY1305]", "data_ciphers: [CHACHA20-POLY1305]")...)
		var ve *config.ValidationError
		if !errors.As(err, &ve) || ve.Path != tc.key {
			t.Errorf("%s: Reload = %v, want a problem with %s", tc.name, err, tc.key)
		}
	}
	if n := strings.Count(l.logs.String(), "reload refused: the endpoint file is invalid; the running configuration stays"); n != 2 {
		t.Errorf("the log has %d refusals of an invalid file, want 2:\n%s", n, l.logs.String())
	}
	second, _ := l.connect(clientOptions{cn: "second"})
	if c := second.Cipher(); c != datacrypto.AES256GCM {
		t.Errorf("after refused reloads a new client negotiated %v, want AES-256-GCM", c)
	}
	l.ping(first, 1)
}

// TestReloadListenerFailureChangesNothing: when a new listener cannot open, the error names it
// and neither the certificate nor the ciphers of the same file apply.
func TestReloadListenerFailureChangesNothing(t *testing.T) {
	l := newLab(t)
	l.start()
	taken, err := l.net.ListenPacket(netip.MustParseAddrPort("0.0.0.0:1194"))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = l.reload(
		"transport: [{protocol: udp, port: 443}]", "transport: [{protocol: udp, port: 443}, {protocol: tcp, port: 443}, {protocol: udp, port: 1194}]",
		"{cert_file: server-a.crt, key_file: server-a.key}", "{cert_file: server-b.crt, key_file: server-b.key}",
		"data_ciphers: [AES-256-GCM, CHACHA20-POLY1305]", "data_ciphers: [CHACHA20-POLY1305]",
	)
	var re *ReloadError
	if !errors.As(err, &re) || re.Refused != nil || !strings.Contains(err.Error(), "udp 0.0.0.0:1194") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Reload = %v, want a *ReloadError naming udp 0.0.0.0:1194 in use", err)
	}
	if !strings.Contains(l.logs.String(), "reload refused: a listener cannot open; the running configuration stays") {
		t.Errorf("the log lacks the refusal:\n%s", l.logs.String())
	}
	s, _ := l.connect(clientOptions{}) // the old certificate, the old CA
	if c := s.Cipher(); c != datacrypto.AES256GCM {
		t.Errorf("a new client negotiated %v, want AES-256-GCM", c)
	}
	if tcp := l.run.Server().TCPAddrs(); len(tcp) != 0 {
		t.Errorf("TCP listeners %v stayed open after the refused reload", tcp)
	}
}

// TestReloadRemovesListener: a listener no longer in the file closes and its clients are told
// to reconnect (RESTART); clients of the kept listener are not disturbed.
func TestReloadRemovesListener(t *testing.T) {
	l := newLab(t)
	l.writeFile("endpoint.yaml", []byte(strings.Replace(baseFile, "transport: [{protocol: udp, port: 443}]",
		"transport: [{protocol: udp, port: 443}, {protocol: udp, port: 1194}]", 1)))
	l.start()
	stays, _ := l.connect(clientOptions{cn: "stays"})
	moves, _ := l.connect(clientOptions{port: 1194, cn: "moves"})
	rep, err := l.reload() // baseFile: udp/443 only
	if err != nil || !slices.Equal(rep.Changed, []string{"transport"}) {
		t.Fatalf("Reload = %+v, %v; want transport changed", rep, err)
	}
	if err := ended(t, "the client of the removed listener", moves); !errors.Is(err, client.ErrRestart) {
		t.Errorf("the client of the removed listener ended with %v, want RESTART", err)
	}
	l.ping(stays, 1)
	alive(t, "the client of the kept listener", stays)
	if addrs := l.run.Server().Addrs(); len(addrs) != 1 || addrs[0].Port() != 443 {
		t.Errorf("listeners %v, want udp/443 only", addrs)
	}
}

// TestReloadCRL: a new crl_file is in force at once (its revoked client is cut off) and watched
// from then on; the old file is no longer watched.
func TestReloadCRL(t *testing.T) {
	l := newLab(t)
	l.start()
	a, aID := l.connect(clientOptions{cn: "a"})
	b, bID := l.connect(clientOptions{cn: "b"})
	c, cID := l.connect(clientOptions{cn: "c"})
	l.writeCRL("crl2.pem", aID.Cert)
	rep, err := l.reload("crl_file: crl.pem", "crl_file: crl2.pem")
	if err != nil || !slices.Equal(rep.Changed, []string{"authentication.certificate.crl_file"}) {
		t.Fatalf("Reload = %+v, %v; want crl_file changed", rep, err)
	}
	if err := ended(t, "the client the new CRL revokes", a); !errors.Is(err, client.ErrAuthFailed) {
		t.Errorf("the revoked client ended with %v, want AUTH_FAILED", err)
	}
	// The old file is not watched any more: revoking c there changes nothing.
	l.writeCRL("crl.pem", cID.Cert)
	// The new one is: revoking b there cuts b off.
	l.writeCRL("crl2.pem", aID.Cert, bID.Cert)
	if err := ended(t, "the client revoked in the new CRL file", b); !errors.Is(err, client.ErrAuthFailed) {
		t.Errorf("b ended with %v, want AUTH_FAILED", err)
	}
	time.Sleep(100 * time.Millisecond) // five polls
	alive(t, "the client revoked only in the old CRL file", c)
	// The watcher's list is the one in force: reloading the same file again is no change.
	if rep, err := l.reload("crl_file: crl.pem", "crl_file: crl2.pem"); err != nil || len(rep.Changed) != 0 {
		t.Errorf("Reload of the same file = %+v, %v; want no changes", rep, err)
	}
	if !strings.Contains(l.logs.String(), `msg="reload: no changes"`) {
		t.Errorf("the log lacks the no-change line:\n%s", l.logs.String())
	}
}

// TestReloadAfterStop is refused.
func TestReloadAfterStop(t *testing.T) {
	l := newLab(t)
	l.start()
	l.run.Stop()
	<-l.done
	select {
	case <-l.host.closed:
	default:
		t.Error("Run returned without removing the host state")
	}
	if _, err := l.run.Reload(l.path); !errors.Is(err, ErrStopped) {
		t.Errorf("Reload after Stop = %v, want ErrStopped", err)
	}
}

// TestServeReloadsAndStops drives Serve as cmd/cvpn does: a reload request applies the file,
// and cancelling the context stops the endpoint and removes the host state.
func TestServeReloadsAndStops(t *testing.T) {
	l := newLab(t)
	ep, err := Load(l.path, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	h := &fakeHost{tun: tuntest.NewChannelTUN(), closed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reload := make(chan struct{})
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, l.path, ep, reload, Options{
			Log:     slog.New(slog.NewTextHandler(l.logs, nil)),
			Host:    func(host.Config, *slog.Logger) (Host, error) { return h, nil },
			Network: socktest.NewNetwork(),
		})
	}()
	l.writeFile("endpoint.yaml", []byte(baseFile+"description: reloaded\n"))
	reload <- struct{}{}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(l.logs.String(), `msg="reload applied" changed=description`) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(l.logs.String(), `msg="reload applied" changed=description`) {
		t.Fatalf("no reload line:\n%s", l.logs.String())
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	select {
	case <-h.closed:
	default:
		t.Error("Serve returned without removing the host state")
	}
}

// queuedFakeHost is a fake host whose TUN has several queues.
type queuedFakeHost struct {
	fakeHost
	queues []*tuntest.ChannelTUN
}

func (f *queuedFakeHost) Queues() []tun.Device {
	out := make([]tun.Device, len(f.queues))
	for i, q := range f.queues {
		out[i] = q.TUN()
	}
	return out
}

// TestStartReadsEveryTUNQueue: Start asks the host for one TUN queue per worker (GOMAXPROCS),
// and the engine reads every queue the host opened.
func TestStartReadsEveryTUNQueue(t *testing.T) {
	l := newLab(t)
	ep, err := Load(l.path, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	qs := []*tuntest.ChannelTUN{tuntest.NewChannelTUN(), tuntest.NewChannelTUN(), tuntest.NewChannelTUN()}
	h := &queuedFakeHost{fakeHost{tun: qs[0], closed: make(chan struct{})}, qs}
	asked := -1
	r, err := Start(ep, Options{
		Host:    func(c host.Config, _ *slog.Logger) (Host, error) { asked = c.Queues; return h, nil },
		Network: socktest.NewNetwork(),
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); r.Run() }()
	defer func() { r.Stop(); <-done }()
	if want := tunnel.Workers(0); asked != want {
		t.Errorf("host asked for %d queues, want %d (GOMAXPROCS)", asked, want)
	}
	// An IPv4 header from the private network with no NAT mapping: read, then dropped.
	pkt := []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 1, 10, 10, 0, 1, 2}
	for i, q := range qs {
		select {
		case q.Outbound <- pkt: // unbuffered: taken only by a reader of this queue
		case <-time.After(10 * time.Second):
			t.Fatalf("nothing reads TUN queue %d", i)
		}
	}
}

// TestStartFailureRemovesHost: a listener that cannot bind fails Start with the listener and a
// fix named, and removes the host state.
func TestStartFailureRemovesHost(t *testing.T) {
	l := newLab(t)
	ep, err := Load(l.path, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	network := socktest.NewNetwork()
	taken, err := network.ListenPacket(netip.MustParseAddrPort("0.0.0.0:443"))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	h := &fakeHost{tun: tuntest.NewChannelTUN(), closed: make(chan struct{})}
	_, err = Start(ep, Options{Host: func(host.Config, *slog.Logger) (Host, error) { return h, nil }, Network: network})
	if err == nil || !strings.Contains(err.Error(), "0.0.0.0:443") || !strings.Contains(err.Error(), "change transport or listen_address") {
		t.Errorf("Start = %v, want the busy listener named with a fix", err)
	}
	select {
	case <-h.closed:
	default:
		t.Error("a failed Start left the host state")
	}
}

// TestKeyActions: every key a reload applies has its action, and only those keys.
func TestKeyActions(t *testing.T) {
	live, restart := config.ReloadKeys()
	for _, k := range live {
		if _, ok := keyActions[k]; !ok {
			t.Errorf("live key %s has no action", k)
		}
	}
	for k := range keyActions {
		if !slices.Contains(live, k) {
			t.Errorf("keyActions has %s, which is not a live key (restart keys: %q)", k, restart)
		}
	}
}

// TestDiffFileRenewedInPlace: a certificate and key replaced under the same paths, or a CA
// bundle, CRL or control-channel key rewritten, are changes of their keys.
func TestDiffFileRenewedInPlace(t *testing.T) {
	l := newLab(t)
	running, err := Load(l.path, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if changed, refused := Diff(running, running); changed != nil || refused != nil {
		t.Errorf("Diff of an endpoint with itself = %q, %q", changed, refused)
	}
	same, err := Load(l.path, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if changed, refused := Diff(running, same); changed != nil || refused != nil {
		t.Errorf("Diff of the same files loaded twice = %q, %q", changed, refused)
	}
	id, err := pki.IssueServer(l.ca, "server-a2", nil, pki.ECDSAP256, 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(l.dir, "server-a.crt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(l.dir, "server-a.key")); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteIdentity(id, filepath.Join(l.dir, "server-a.crt"), filepath.Join(l.dir, "server-a.key")); err != nil {
		t.Fatal(err)
	}
	l.writeFile("tc1.key", l.keys["tc2.key"].Marshal())
	l.writeCRL("crl.pem", id.Cert)
	next, err := Load(l.path, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	changed, refused := Diff(running, next)
	want := []string{"server_certificate.cert_file", "server_certificate.key_file", "control_channel.tls_crypt_key_file", "authentication.certificate.crl_file"}
	if !slices.Equal(changed, want) || refused != nil {
		t.Errorf("Diff = %q, %q; want %q changed", changed, refused, want)
	}
}
