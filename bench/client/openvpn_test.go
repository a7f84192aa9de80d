package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/keymethod"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
)

// stockServerConf is a minimal OpenVPN 2.6 server. reneg-sec 6 makes it renegotiate every
// session's keys after 5.4-6 s (it subtracts up to 10% jitter), which TestStockOpenVPNServer
// waits for; status lists the connected clients every second.
const stockServerConf = `server 10.8.0.0 255.255.255.0
topology subnet
dev tun
proto udp4
local 127.0.0.1
port 1194
ca ca.crt
cert server.crt
key server.key
dh none
tls-crypt tc.key
data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305
keepalive 10 60
reneg-sec 6
status status.log 1
status-version 2
verb 3
`

// stockServer is openvpn running in its own network namespace.
type stockServer struct {
	ns     string
	dir    string
	pki    *testPKI
	key    *tlscrypt.StaticKey
	output *lockedBuffer
}

// lockedBuffer collects the log of the goroutines under test.
type lockedBuffer = testlog.Buffer

// startStockServer creates a network namespace, writes a PKI and the configuration, and starts
// openvpn in it. Cleanup stops openvpn and deletes the namespace, whatever happened.
func startStockServer(t *testing.T) *stockServer {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it creates a network namespace and runs openvpn with a TUN device (run go test as root)")
	}
	bin, err := exec.LookPath("openvpn")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/openvpn"); err != nil {
			t.Fatal("openvpn 2.6 is not installed (apt-get install openvpn)")
		}
	}
	var id [4]byte
	_, _ = rand.Read(id[:])
	srv := &stockServer{ns: "cvb" + hex.EncodeToString(id[:]), dir: t.TempDir(), pki: newPKI(t, "bench openvpn CA"), output: &lockedBuffer{}}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", srv.ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", srv.ns).Run() })
	run("ip", "-n", srv.ns, "link", "set", "lo", "up")

	if err := pki.WriteIdentity(srv.pki.server(t), filepath.Join(srv.dir, "server.crt"), filepath.Join(srv.dir, "server.key")); err != nil {
		t.Fatal(err)
	}
	if srv.key, err = tlscrypt.GenerateStaticKey(rand.Reader); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"ca.crt":      srv.pki.ca.CertPEM,
		"tc.key":      srv.key.Marshal(),
		"server.conf": []byte(stockServerConf),
	} {
		if err := os.WriteFile(filepath.Join(srv.dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("ip", "netns", "exec", srv.ns, bin, "--cd", srv.dir, "--config", "server.conf")
	cmd.Stdout, cmd.Stderr = srv.output, srv.output
	if err := cmd.Start(); err != nil {
		t.Fatalf("start openvpn: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	// Registered after the namespace's cleanup, so it runs first.
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("openvpn output:\n%s", srv.output)
		}
	})
	if !waitFor(15*time.Second, func() bool {
		select {
		case <-exited:
			return true
		default:
		}
		return strings.Contains(srv.output.String(), "Initialization Sequence Completed")
	}) || !strings.Contains(srv.output.String(), "Initialization Sequence Completed") {
		t.Fatalf("openvpn did not start:\n%s", srv.output)
	}
	return srv
}

// config is a client configuration whose socket is opened inside the server's namespace.
func (srv *stockServer) config(t *testing.T, cn string) Config {
	cfg := srv.pki.client(t, cn)
	cfg.Server = netip.MustParseAddrPort("127.0.0.1:1194")
	cfg.TLSCrypt = srv.key
	cfg.Dial = func(context.Context) (net.PacketConn, error) { return netlab.ListenUDPIn(srv.ns) }
	return cfg
}

// clientListed reports whether the status file lists a client with common name cn.
func (srv *stockServer) clientListed(cn string) bool {
	b, _ := os.ReadFile(filepath.Join(srv.dir, "status.log"))
	return strings.Contains(string(b), "CLIENT_LIST,"+cn+",")
}

// pingServer sends an ICMP echo to the server's tunnel address and waits for the reply,
// skipping anything else the tunnel delivers.
func pingServer(t *testing.T, s *Session, seq uint16) {
	t.Helper()
	gw := netip.MustParseAddr("10.8.0.1")
	self := s.Address().Addr()
	payload := []byte(fmt.Sprintf("bench ping %d", seq))
	if err := s.WritePacket(icmpEcho(self, gw, false, 0x7777, seq, payload)); err != nil {
		t.Fatalf("WritePacket: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	buf := make([]byte, 2048)
	for {
		n, err := s.ReadPacketContext(ctx, buf)
		if err != nil {
			t.Fatalf("no echo reply from %v (seq %d): %v (stats %+v)", gw, seq, err, s.Stats())
		}
		if n == 0 || buf[0]>>4 != 4 {
			continue // the server's kernel sends IPv6 router solicitations into its TUN
		}
		p := decodeIPv4(t, buf[:n])
		if p.proto == 1 && p.src == gw && p.dst == self && p.payload[0] == 0 &&
			binary.BigEndian.Uint16(p.payload[6:]) == seq && bytes.Equal(p.payload[8:], payload) {
			return
		}
		t.Logf("skipping %v -> %v proto %d", p.src, p.dst, p.proto)
	}
}

// TestStockOpenVPNServer is the load generator's interoperability test: the client against
// the stock openvpn 2.6 server in a network namespace, each cipher, EKM and PRF, a server
// renegotiation, and EXIT on Close.
func TestStockOpenVPNServer(t *testing.T) {
	srv := startStockServer(t)
	subnet := netip.MustParsePrefix("10.8.0.0/24")
	noEKM := uint32(DefaultProto &^ keymethod.ProtoTLSKeyExport)

	for _, tc := range []struct {
		name   string
		cipher datacrypto.Cipher // announced alone; 0 announces the default list
		proto  uint32
		want   datacrypto.Cipher
	}{
		{"default ciphers ekm", 0, 0, datacrypto.AES256GCM},
		{"aes-128-gcm prf", datacrypto.AES128GCM, noEKM, datacrypto.AES128GCM},
		{"chacha20-poly1305 ekm", datacrypto.ChaCha20Poly1305, 0, datacrypto.ChaCha20Poly1305},
		// Without DATA_V2 the server pushes no peer-id: P_DATA_V1 both ways.
		{"data v1", 0, DefaultProto &^ keymethod.ProtoDataV2, datacrypto.AES256GCM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := srv.config(t, "bench-"+strings.ReplaceAll(tc.name, " ", "-"))
			if tc.cipher != 0 {
				cfg.Ciphers = []datacrypto.Cipher{tc.cipher}
			}
			cfg.Proto = tc.proto
			s := connect(t, cfg)
			if !subnet.Contains(s.Address().Addr()) || s.Address().Bits() != 24 {
				t.Fatalf("pushed address %v, want one in %v", s.Address(), subnet)
			}
			wantEKM := tc.proto == 0 || tc.proto&keymethod.ProtoTLSKeyExport != 0
			if s.Cipher() != tc.want || s.EKM() != wantEKM {
				t.Fatalf("cipher %v ekm %v, want %v ekm %v (push %q)", s.Cipher(), s.EKM(), tc.want, wantEKM, s.Push().Options)
			}
			if wantV2 := tc.proto == 0 || tc.proto&keymethod.ProtoDataV2 != 0; s.dataV2 != wantV2 {
				t.Fatalf("P_DATA_V2 %v, want %v (push %q)", s.dataV2, wantV2, s.Push().Options)
			}
			t.Logf("connected in %v: %v, push %q", s.HandshakeDuration().Round(time.Millisecond), s.Address(), s.Push().Options)
			for seq := uint16(1); seq <= 3; seq++ {
				pingServer(t, s, seq)
			}
		})
	}

	t.Run("renegotiation and exit", func(t *testing.T) {
		cn := "bench-reneg"
		s := connect(t, srv.config(t, cn))
		seq := uint16(1)
		deadline := time.Now().Add(25 * time.Second)
		for s.sendKey.Load().id == 0 && time.Now().Before(deadline) {
			pingServer(t, s, seq)
			seq++
			time.Sleep(500 * time.Millisecond)
		}
		if id := s.sendKey.Load().id; id == 0 {
			t.Fatal("still sending with key 0 after 25 s; the server renegotiates every 6 s")
		}
		for range 3 {
			pingServer(t, s, seq)
			seq++
		}
		if !waitFor(3*time.Second, func() bool { return srv.clientListed(cn) }) {
			t.Fatalf("status file does not list %s", cn)
		}
		exited := cn + "/127.0.0.1:" + strconv.Itoa(s.link.pc.LocalAddr().(*net.UDPAddr).Port) + " SIGTERM[soft,delayed-exit] received, client-instance exiting"
		s.Close()
		// Without EXIT the server would keep the client until ping-restart (120 s); with it,
		// OpenVPN drops the instance after its 5 s grace period.
		if !waitFor(10*time.Second, func() bool { return strings.Contains(srv.output.String(), exited) }) {
			st, _ := os.ReadFile(filepath.Join(srv.dir, "status.log"))
			t.Fatalf("the server did not drop %s within 10 s of EXIT; status:\n%s", cn, st)
		}
	})
}
