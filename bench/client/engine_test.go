package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/ippool"
	"github.com/cvpn/cvpn/nat"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/keymethod"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
)

// The engine's networks in these tests: clients get addresses from clientCIDR and reach the
// VPC through the SNAT address.
var (
	clientCIDR = netip.MustParsePrefix("10.2.0.0/22")
	vpcPrefix  = netip.MustParsePrefix("10.0.1.0/24")
	snatAddr   = netip.MustParseAddr("10.0.1.2")
	vpcHost    = netip.MustParseAddr("10.0.1.10")
)

// engine is an in-process cvpn server on 127.0.0.1 (UDP and TCP) with a fake TUN on the VPC side.
type engine struct {
	srv     *tunnel.Server
	addr    netip.AddrPort
	tcpAddr netip.AddrPort
	tun     *tuntest.ChannelTUN
	pki     *testPKI
	key     *tlscrypt.StaticKey // tls-crypt key, or nil
	authKey *tlscrypt.StaticKey // tls-auth key, or nil
}

type engineOptions struct {
	tlsCrypt bool
	// tlsAuth, when set, protects the control channel with tls-auth (this digest; the key
	// direction is tlsAuthDir) instead.
	tlsAuth    func() hash.Hash
	tlsAuthDir int
	reneg      time.Duration // server-initiated renegotiation interval; 0 never
	// serverID replaces the server certificate issued by the engine's CA.
	serverID func(p *testPKI) *pki.Identity
}

func newEngine(t *testing.T, o engineOptions) *engine {
	t.Helper()
	e := &engine{tun: tuntest.NewChannelTUN(), pki: newPKI(t, "bench test CA")}
	id := e.pki.server(t)
	if o.serverID != nil {
		id = o.serverID(e.pki)
	}
	cert, err := id.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	var wrapper tlscrypt.Wrapper
	if o.tlsCrypt {
		if e.key, err = tlscrypt.GenerateStaticKey(rand.Reader); err != nil {
			t.Fatal(err)
		}
		wrapper = tlscrypt.NewTLSCrypt(e.key, true)
	}
	if o.tlsAuth != nil {
		if e.authKey, err = tlscrypt.GenerateStaticKey(rand.Reader); err != nil {
			t.Fatal(err)
		}
		wrapper = tlscrypt.NewTLSAuth(e.authKey, o.tlsAuthDir, o.tlsAuth)
	}
	pool, err := ippool.New(clientCIDR)
	if err != nil {
		t.Fatal(err)
	}
	natTable, err := nat.New(nat.Config{Addr: snatAddr})
	if err != nil {
		t.Fatal(err)
	}
	az, err := authz.New([]authz.Rule{{Network: netip.MustParsePrefix("10.0.0.0/16"), AllGroups: true}})
	if err != nil {
		t.Fatal(err)
	}
	e.srv, err = tunnel.New(tunnel.Config{
		UDP:            []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		TCP:            []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Certificate:    cert,
		ClientCAs:      e.pki.roots,
		ControlWrapper: wrapper,
		Reneg:          o.reneg,
		Ciphers:        []datacrypto.Cipher{datacrypto.AES256GCM, datacrypto.AES128GCM, datacrypto.ChaCha20Poly1305},
		Pool:           pool,
		NAT:            natTable,
		Device:         e.tun.TUN(),
		Policy:         &tunnel.Policy{Authz: az, Routes: []netip.Prefix{vpcPrefix}, SplitTunnel: true},
		Log:            testLogger(t).With("side", "server"),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.addr = e.srv.Addrs()[0]
	e.tcpAddr = e.srv.TCPAddrs()[0]
	ran := make(chan struct{})
	go func() { defer close(ran); e.srv.Run() }()
	t.Cleanup(func() {
		e.srv.Close()
		<-ran
	})
	return e
}

// config returns a client configuration for a new client certificate of the engine's CA.
func (e *engine) config(t *testing.T, cn string) Config {
	cfg := e.pki.client(t, cn)
	cfg.Server = e.addr
	cfg.TLSCrypt = e.key
	return cfg
}

func connect(t *testing.T, cfg Config) *Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// fromTUN returns the next packet the engine wrote toward the VPC.
func (e *engine) fromTUN(t *testing.T) []byte {
	t.Helper()
	select {
	case p := <-e.tun.Inbound:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no packet came out of the TUN")
		return nil
	}
}

// toTUN injects a packet from the VPC.
func (e *engine) toTUN(t *testing.T, pkt []byte) {
	t.Helper()
	select {
	case e.tun.Outbound <- pkt:
	case <-time.After(5 * time.Second):
		t.Fatal("the engine did not read the TUN")
	}
}

func readPacket(t *testing.T, s *Session) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	buf := make([]byte, 2048)
	n, err := s.ReadPacketContext(ctx, buf)
	if err != nil {
		t.Fatalf("ReadPacket: %v (stats %+v)", err, s.Stats())
	}
	return buf[:n]
}

// pingThroughEngine sends an ICMP echo from the session to the VPC host, checks the SNAT
// rewrite on the TUN side, answers it from the VPC and checks the session gets the reply
// addressed to itself.
func pingThroughEngine(t *testing.T, e *engine, s *Session, seq uint16) {
	t.Helper()
	self := s.Address().Addr()
	payload := []byte("cvpn bench ping payload")
	if err := s.WritePacket(icmpEcho(self, vpcHost, false, 0x4242, seq, payload)); err != nil {
		t.Fatalf("WritePacket: %v", err)
	}
	out := decodeIPv4(t, e.fromTUN(t))
	if out.src != snatAddr || out.dst != vpcHost || out.proto != 1 {
		t.Fatalf("TUN got %v -> %v proto %d, want %v -> %v ICMP", out.src, out.dst, out.proto, snatAddr, vpcHost)
	}
	if out.payload[0] != 8 || !bytes.Equal(out.payload[8:], payload) {
		t.Fatalf("TUN got ICMP type %d payload %q", out.payload[0], out.payload[8:])
	}
	id := binary.BigEndian.Uint16(out.payload[4:])
	e.toTUN(t, icmpEcho(vpcHost, snatAddr, true, id, seq, payload))
	in := decodeIPv4(t, readPacket(t, s))
	if in.src != vpcHost || in.dst != self || in.proto != 1 {
		t.Fatalf("session got %v -> %v proto %d, want %v -> %v ICMP", in.src, in.dst, in.proto, vpcHost, self)
	}
	if in.payload[0] != 0 || binary.BigEndian.Uint16(in.payload[4:]) != 0x4242 ||
		binary.BigEndian.Uint16(in.payload[6:]) != seq || !bytes.Equal(in.payload[8:], payload) {
		t.Fatalf("session got ICMP %x, want echo reply id 0x4242 seq %d", in.payload[:8], seq)
	}
}

func TestEngineICMPAndUDP(t *testing.T) {
	e := newEngine(t, engineOptions{tlsCrypt: true})
	s := connect(t, e.config(t, "alice"))
	addr := s.Address()
	if !clientCIDR.Contains(addr.Addr()) || addr.Bits() != clientCIDR.Bits() || addr.Addr() == netip.MustParseAddr("10.2.0.1") {
		t.Fatalf("pushed address %v, want a client address in %v", addr, clientCIDR)
	}
	if p := s.Push(); p.RouteGateway != netip.MustParseAddr("10.2.0.1") || len(p.Routes) != 1 || p.Routes[0].Network != vpcPrefix || !p.CCExit() {
		t.Fatalf("push reply %+v", p)
	}
	if s.HandshakeDuration() <= 0 {
		t.Fatal("no handshake duration")
	}
	pingThroughEngine(t, e, s, 1)

	// UDP both ways.
	self := netip.AddrPortFrom(addr.Addr(), 40000)
	dns := netip.AddrPortFrom(vpcHost, 53)
	if err := s.WritePacket(udpPacket(self, dns, []byte("query"))); err != nil {
		t.Fatal(err)
	}
	out := decodeIPv4(t, e.fromTUN(t))
	if out.src != snatAddr || out.dst != vpcHost || out.proto != 17 || string(out.payload[8:]) != "query" {
		t.Fatalf("TUN got %v -> %v proto %d %q", out.src, out.dst, out.proto, out.payload)
	}
	ext := netip.AddrPortFrom(snatAddr, binary.BigEndian.Uint16(out.payload[0:]))
	e.toTUN(t, udpPacket(dns, ext, []byte("answer")))
	in := decodeIPv4(t, readPacket(t, s))
	if in.src != vpcHost || in.dst != addr.Addr() || in.proto != 17 || binary.BigEndian.Uint16(in.payload[2:]) != 40000 || string(in.payload[8:]) != "answer" {
		t.Fatalf("session got %v -> %v proto %d %x", in.src, in.dst, in.proto, in.payload)
	}
	if st := s.Stats(); st.TxPackets != 2 || st.RxPackets != 2 || st.DropDecrypt+st.DropReplay+st.DropNoKey+st.DropControl != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestEngineVariants covers each data cipher, tls-crypt on and off, EKM and PRF key derivation
// and TLS 1.2 and 1.3.
func TestEngineVariants(t *testing.T) {
	noEKM := uint32(DefaultProto &^ keymethod.ProtoTLSKeyExport)
	for _, tc := range []struct {
		name     string
		cipher   datacrypto.Cipher
		tlsCrypt bool
		proto    uint32
		tlsMax   uint16
	}{
		{"aes-256-gcm tls-crypt ekm tls1.3", datacrypto.AES256GCM, true, 0, 0},
		{"aes-128-gcm plain prf tls1.3", datacrypto.AES128GCM, false, noEKM, 0},
		{"chacha20-poly1305 tls-crypt prf tls1.2", datacrypto.ChaCha20Poly1305, true, noEKM, tls.VersionTLS12},
		{"chacha20-poly1305 plain ekm tls1.2", datacrypto.ChaCha20Poly1305, false, 0, tls.VersionTLS12},
		{"aes-128-gcm tls-crypt ekm tls1.3", datacrypto.AES128GCM, true, 0, 0},
		{"aes-256-gcm plain prf tls1.2", datacrypto.AES256GCM, false, noEKM, tls.VersionTLS12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, engineOptions{tlsCrypt: tc.tlsCrypt})
			cfg := e.config(t, "variant")
			cfg.Ciphers = []datacrypto.Cipher{tc.cipher}
			cfg.Proto = tc.proto
			cfg.MaxTLSVersion = tc.tlsMax
			s := connect(t, cfg)
			wantEKM := tc.proto == 0
			if s.Cipher() != tc.cipher || s.EKM() != wantEKM {
				t.Fatalf("cipher %v ekm %v, want %v ekm %v", s.Cipher(), s.EKM(), tc.cipher, wantEKM)
			}
			for seq := uint16(1); seq <= 3; seq++ {
				pingThroughEngine(t, e, s, seq)
			}
		})
	}
}

// TestEngineTCP: sessions over TCP, with tls-crypt and without, pass traffic, renegotiate and
// leave with EXIT.
func TestEngineTCP(t *testing.T) {
	for _, tlsCrypt := range []bool{true, false} {
		t.Run(fmt.Sprintf("tls-crypt=%v", tlsCrypt), func(t *testing.T) {
			t.Parallel()
			e := newEngine(t, engineOptions{tlsCrypt: tlsCrypt, reneg: 2 * time.Second})
			cfg := e.config(t, "tcp-client")
			cfg.TCP, cfg.Server = true, e.tcpAddr
			s := connect(t, cfg)
			if s.link.stream == nil {
				t.Fatal("the session does not run over TCP")
			}
			seen := map[uint8]bool{}
			seq := uint16(1)
			for deadline := time.Now().Add(20 * time.Second); len(seen) < 2 && time.Now().Before(deadline); seq++ {
				seen[s.sendKey.Load().id] = true
				pingThroughEngine(t, e, s, seq)
				time.Sleep(200 * time.Millisecond)
			}
			if len(seen) < 2 {
				t.Fatalf("sent with key ids %v in 20 s, want a renegotiated one too", seen)
			}
			local := s.link.stream.LocalAddr().(*net.TCPAddr).AddrPort()
			if clients := e.srv.Clients(); len(clients) != 1 || clients[0].Remote != local {
				t.Fatalf("server lists %+v, want one client at the TCP connection's address %v", clients, local)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if !waitFor(3*time.Second, func() bool { return len(e.srv.Clients()) == 0 }) {
				t.Fatalf("server still lists %+v after EXIT", e.srv.Clients())
			}
		})
	}
}

// TestEngineTLSAuth: the control channel under tls-auth, with key directions 0 (server) and 1
// (client) and with none, and a client whose digest differs from the server's never connects.
func TestEngineTLSAuth(t *testing.T) {
	for _, tc := range []struct {
		name          string
		serverDir     int
		bidirectional bool
		digest        func() hash.Hash
	}{
		{"sha256 key-direction 0/1", tlscrypt.DirectionNormal, false, sha256.New},
		{"sha1 bidirectional", tlscrypt.DirectionBidirectional, true, sha1.New},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEngine(t, engineOptions{tlsAuth: tc.digest, tlsAuthDir: tc.serverDir})
			cfg := e.config(t, "tls-auth-client")
			cfg.TLSAuth = &TLSAuth{Key: e.authKey, Bidirectional: tc.bidirectional, Digest: tc.digest}
			s := connect(t, cfg)
			pingThroughEngine(t, e, s, 1)
		})
	}
	t.Run("digest mismatch", func(t *testing.T) {
		t.Parallel()
		e := newEngine(t, engineOptions{tlsAuth: sha256.New, tlsAuthDir: tlscrypt.DirectionNormal})
		cfg := e.config(t, "wrong-digest")
		cfg.TLSAuth = &TLSAuth{Key: e.authKey, Digest: sha512.New}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if s, err := Connect(ctx, cfg); err == nil {
			s.Close()
			t.Fatal("connected with a tls-auth digest the server does not use")
		}
		cfg.TLSCrypt = e.authKey
		if _, err := Connect(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "both TLSCrypt and TLSAuth") {
			t.Fatalf("TLSCrypt and TLSAuth together: %v", err)
		}
	})
}

func TestEngineRefusesForeignCA(t *testing.T) {
	e := newEngine(t, engineOptions{tlsCrypt: true})
	other := newPKI(t, "some other CA")
	cfg := other.client(t, "mallory")
	cfg.Server, cfg.TLSCrypt = e.addr, e.key
	cfg.RootCAs = e.pki.roots // mallory trusts the server; the server does not trust mallory
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	s, err := Connect(ctx, cfg)
	if err == nil {
		s.Close()
		t.Fatal("Connect with a certificate from a foreign CA succeeded")
	}
	t.Logf("refused after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if len(e.srv.Clients()) != 0 {
		t.Fatalf("server lists %v", e.srv.Clients())
	}
}

func TestServerCertChecks(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   func(t *testing.T, p *testPKI) *pki.Identity
		want string
	}{
		{"no serverAuth EKU", func(t *testing.T, p *testPKI) *pki.Identity {
			// A client certificate (EKU clientAuth) presented by a server.
			id, err := pki.IssueClient(p.ca, "not-a-server", nil, pki.ECDSAP256, time.Hour, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return id
		}, "key usage"},
		{"other CA", func(t *testing.T, _ *testPKI) *pki.Identity { return newPKI(t, "rogue CA").server(t) }, "unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, engineOptions{serverID: func(p *testPKI) *pki.Identity { return tc.id(t, p) }})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := Connect(ctx, e.config(t, "alice"))
			if err == nil {
				s.Close()
				t.Fatal("Connect accepted the server certificate")
			}
			if !errors.Is(err, ErrServerCert) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrServerCert mentioning %q", err, tc.want)
			}
		})
	}
}

func TestEngineUnsupportedCipher(t *testing.T) {
	e := newEngine(t, engineOptions{tlsCrypt: true})
	cfg := e.config(t, "old-client")
	cfg.PeerInfo = map[string]string{"IV_CIPHERS": "BF-CBC", "IV_NCP": ""}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Connect(ctx, cfg)
	if err == nil {
		s.Close()
		t.Fatal("Connect announcing only BF-CBC succeeded")
	}
	if !errors.Is(err, ErrAuthFailed) || !strings.Contains(err.Error(), "cipher negotiation") {
		t.Fatalf("err = %v, want ErrAuthFailed about cipher negotiation", err)
	}
}

// TestEngineUnsupportedKeyMethod: a key-method block of another method is refused with a reason.
func TestEngineUnsupportedKeyMethod(t *testing.T) {
	e := newEngine(t, engineOptions{tlsCrypt: true})
	cfg := e.config(t, "key-method-1")
	cfg.KeyMethod = 1
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Connect(ctx, cfg)
	if err == nil {
		s.Close()
		t.Fatal("Connect with key method 1 succeeded")
	}
	if !errors.Is(err, ErrAuthFailed) || !strings.Contains(err.Error(), "unsupported key method") {
		t.Fatalf("err = %v, want ErrAuthFailed about the key method", err)
	}
}

func TestEngineTwoSessions(t *testing.T) {
	e := newEngine(t, engineOptions{tlsCrypt: true})
	a := connect(t, e.config(t, "alice"))
	b := connect(t, e.config(t, "bob"))
	if a.Address().Addr() == b.Address().Addr() {
		t.Fatalf("both sessions got %v", a.Address())
	}
	pingThroughEngine(t, e, a, 1)
	pingThroughEngine(t, e, b, 1)
	if n := len(e.srv.Clients()); n != 2 {
		t.Fatalf("server lists %d clients, want 2", n)
	}
}

// TestEngineClose: Close sends EXIT, the server forgets the client at once, and no goroutine
// of the session is left.
func TestEngineClose(t *testing.T) {
	e := newEngine(t, engineOptions{tlsCrypt: true})
	before := sessionGoroutines()
	s := connect(t, e.config(t, "alice"))
	clients := e.srv.Clients()
	if len(clients) != 1 || clients[0].Address != s.Address().Addr() || clients[0].CommonName != "alice" {
		t.Fatalf("server lists %+v, want alice at %v", clients, s.Address())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(3*time.Second, func() bool { return len(e.srv.Clients()) == 0 }) {
		t.Fatalf("server still lists %+v after EXIT", e.srv.Clients())
	}
	// Timer callbacks (context.AfterFunc, time.AfterFunc) may still be returning.
	if !waitFor(2*time.Second, func() bool { return sessionGoroutines() <= before }) {
		t.Fatalf("%d session goroutines left after Close", sessionGoroutines()-before)
	}
	if !errors.Is(s.Err(), ErrClosed) {
		t.Fatalf("Err() = %v after Close", s.Err())
	}
	if err := s.WritePacket([]byte{0x45}); !errors.Is(err, ErrClosed) {
		t.Fatalf("WritePacket after Close: %v", err)
	}
	if _, err := s.ReadPacket(make([]byte, 100)); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReadPacket after Close: %v", err)
	}
}

// TestEngineRenegotiation: the engine renegotiates every 2 s; the session answers the soft reset,
// moves to the new key ids and keeps passing traffic.
func TestEngineRenegotiation(t *testing.T) {
	e := newEngine(t, engineOptions{tlsCrypt: true, reneg: 2 * time.Second})
	s := connect(t, e.config(t, "alice"))
	seen := map[uint8]bool{}
	seq := uint16(1)
	deadline := time.Now().Add(20 * time.Second)
	for len(seen) < 3 && time.Now().Before(deadline) {
		seen[s.sendKey.Load().id] = true
		pingThroughEngine(t, e, s, seq)
		seq++
		time.Sleep(200 * time.Millisecond)
	}
	if len(seen) < 3 {
		t.Fatalf("sent with key ids %v in 20 s, want three (two renegotiations)", seen)
	}
	if st := s.Stats(); st.DropDecrypt+st.DropReplay+st.DropNoKey != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// lossyConn is an unconnected UDP socket that drops the outgoing datagrams drop selects.
type lossyConn struct {
	net.PacketConn
	mu      sync.Mutex
	drop    func(b []byte) bool
	dropped int
}

func (c *lossyConn) WriteTo(b []byte, a net.Addr) (int, error) {
	c.mu.Lock()
	d := c.drop(b)
	if d {
		c.dropped++
	}
	c.mu.Unlock()
	if d {
		return len(b), nil
	}
	return c.PacketConn.WriteTo(b, a)
}

// TestEngineLostCookieEcho: the first P_CONTROL_V1, which carries the ack that proves the
// cookie, is lost. Its retransmission carries no ack, so the client must prove the cookie again
// for the server to create the session.
func TestEngineLostCookieEcho(t *testing.T) {
	e := newEngine(t, engineOptions{tlsCrypt: true})
	cfg := e.config(t, "alice")
	first := true
	lc := &lossyConn{}
	lc.drop = func(b []byte) bool {
		if first && b[0]>>3 == 4 { // P_CONTROL_V1
			first = false
			return true
		}
		return false
	}
	cfg.Dial = func(context.Context) (net.PacketConn, error) {
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		lc.PacketConn = pc
		return lc, err
	}
	s := connect(t, cfg)
	if lc.dropped != 1 {
		t.Fatalf("dropped %d packets, want 1", lc.dropped)
	}
	pingThroughEngine(t, e, s, 1)
}

// TestConnectNoServer: a handshake with nobody listening ends with the context and leaves no
// goroutine behind.
func TestConnectNoServer(t *testing.T) {
	p := newPKI(t, "ca")
	cfg := p.client(t, "alice")
	cfg.Server = netip.MustParseAddrPort("127.0.0.1:9") // discard: nothing answers
	before := sessionGoroutines()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := Connect(ctx, cfg)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context deadline", err)
	}
	if !waitFor(2*time.Second, func() bool { return sessionGoroutines() <= before }) {
		t.Fatalf("%d session goroutines left", sessionGoroutines()-before)
	}
}

// TestStreamFraming: frames split across reads, several frames in one read, a read deadline in
// the middle of a frame (the partial frame is kept), and a frame longer than the caller's buffer.
func TestStreamFraming(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	l := newStreamLink(a, netip.MustParseAddrPort("127.0.0.1:1194"))
	frame := func(p []byte) []byte { return append([]byte{byte(len(p) >> 8), byte(len(p))}, p...) }
	send := func(chunks ...[]byte) {
		go func() {
			for _, c := range chunks {
				_, _ = b.Write(c)
			}
		}()
	}
	buf := make([]byte, 100)
	read := func(want string) {
		t.Helper()
		_ = l.setReadDeadline(time.Now().Add(2 * time.Second))
		n, err := l.read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("read %q, %v; want %q", buf[:n], err, want)
		}
	}

	one, two := frame([]byte("first packet")), frame([]byte("second"))
	send(one[:1], one[1:5], append(one[5:], two...))
	read("first packet")
	read("second")

	three := frame([]byte("interrupted frame"))
	send(three[:7])
	_ = l.setReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := l.read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read of half a frame: %v, want the deadline", err)
	}
	send(three[7:])
	read("interrupted frame")

	long := bytes.Repeat([]byte("x"), 300)
	send(frame(long), frame([]byte("after")))
	_ = l.setReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := l.read(buf); err != nil || n != len(buf) {
		t.Fatalf("long frame: %d, %v; want it cut to %d bytes", n, err, len(buf))
	}
	read("after")

	// Writes from several goroutines never interleave inside a frame.
	got := make(chan []byte, 1)
	go func() {
		r := newStreamLink(b, netip.AddrPort{})
		var all []byte
		p := make([]byte, 2048)
		for range 40 {
			n, err := r.read(p)
			if err != nil {
				break
			}
			all = append(all, p[:n]...)
		}
		got <- all
	}()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				_ = l.write(bytes.Repeat([]byte{byte('a' + i)}, 1000))
			}
		}()
	}
	wg.Wait()
	all := <-got
	if len(all) != 40*1000 {
		t.Fatalf("read %d bytes, want %d", len(all), 40*1000)
	}
	for i := 0; i < len(all); i += 1000 {
		if c := all[i]; bytes.Count(all[i:i+1000], []byte{c}) != 1000 {
			t.Fatalf("packet at %d mixes writers", i)
		}
	}
}
