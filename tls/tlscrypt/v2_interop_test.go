package tlscrypt

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/testlog"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/packet"
)

// v2PacketsFixture holds packets a live OpenVPN 2.6.14 client keyed with
// testdata/v2/cli.key sent (TestV2OpenVPNClientLive -update-interop): line 1
// its P_CONTROL_HARD_RESET_CLIENT_V3, line 2 its P_CONTROL_WKC_V1 after our
// server reset carrying EarlyNegTLV.
var v2PacketsFixture = filepath.Join("testdata", "v2", "openvpn-client-packets.hex")

func openvpnBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("openvpn")
	if err != nil {
		bin = "/usr/sbin/openvpn"
		if _, err := os.Stat(bin); err != nil {
			t.Fatal("openvpn 2.6 is not installed (apt-get install openvpn); CI installs it")
		}
	}
	if testing.Short() && !*updateInterop {
		t.Skip("runs openvpn processes; skipped in -short mode")
	}
	return bin
}

// liveClientFiles writes what a live stock client needs besides its key: a CA file (it never gets
// as far as checking the server) and an auth-user-pass file.
func liveClientFiles(t *testing.T) (caFile, upFile string) {
	t.Helper()
	dir := t.TempDir()
	caFile = filepath.Join(dir, "ca.crt")
	upFile = filepath.Join(dir, "up.txt")
	writeTestCA(t, caFile)
	if err := os.WriteFile(upFile, []byte("user\npass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, upFile
}

// liveClient is a stock openvpn client started against a UDP socket on loopback, on which the
// test plays the server.
type liveClient struct {
	t    *testing.T
	conn *net.UDPConn
	buf  []byte
}

// startLiveClient starts openvpn with the common client options and args; cleanup stops it and
// logs its output if the test failed.
func startLiveClient(t *testing.T, bin, caFile, upFile string, args ...string) *liveClient {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	port := conn.LocalAddr().(*net.UDPAddr).Port
	ctx, cancel := context.WithCancel(t.Context())
	cmd := exec.CommandContext(ctx, bin, append([]string{
		"--client", "--dev", "null", "--proto", "udp", "--nobind",
		"--remote", "127.0.0.1", strconv.Itoa(port),
		"--ca", caFile, "--auth-user-pass", upFile,
	}, args...)...)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start openvpn: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("openvpn output:\n%s", log.String())
		}
	})
	return &liveClient{t: t, conn: conn, buf: make([]byte, 4096)}
}

// read returns the client's next datagram and its address.
func (c *liveClient) read() ([]byte, *net.UDPAddr) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, addr, err := c.conn.ReadFromUDP(c.buf)
	if err != nil {
		c.t.Fatalf("read from openvpn: %v", err)
	}
	return bytes.Clone(c.buf[:n]), addr
}

func parseHexLines(t testing.TB, data []byte) [][]byte {
	t.Helper()
	var pkts [][]byte
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b, err := hex.DecodeString(line)
		if err != nil {
			t.Fatal(err)
		}
		pkts = append(pkts, b)
	}
	return pkts
}

// v3Reset is what the server side learns from a client's V3 reset.
type v3Reset struct {
	kc   *StaticKey
	wkc  []byte
	pid  uint32
	ctrl packet.Control
}

// checkV3Reset takes a P_CONTROL_HARD_RESET_CLIENT_V3 apart as a server does
// (protocol §3.7): split off WKc, unwrap Kc with the server key, tls-crypt
// unwrap the rest with Kc. It also checks that our client-side tls-crypt
// reproduces the packet byte for byte.
func checkV3Reset(t *testing.T, srv *V2ServerKey, cli *V2ClientKey, wire []byte) v3Reset {
	t.Helper()
	wrapped, wkc, err := SplitWKc(wire)
	if err != nil {
		t.Fatalf("SplitWKc(client V3 reset): %v", err)
	}
	if !bytes.Equal(wkc, cli.WKc) {
		t.Fatalf("WKc in the reset differs from the client key file's")
	}
	kc, md, err := srv.UnwrapClientKey(wkc)
	if err != nil {
		t.Fatalf("UnwrapClientKey: %v", err)
	}
	if *kc != cli.Key || len(md) != 9 || md[0] != V2MetadataTimestamp {
		t.Fatalf("unwrapped Kc match %v, metadata %x", *kc == cli.Key, md)
	}
	plain, pid, ts, err := NewTLSCrypt(kc, true).Unwrap(nil, wrapped)
	if err != nil {
		t.Fatalf("tls-crypt unwrap of V3 reset with Kc: %v", err)
	}
	c, err := packet.ParseControl(plain)
	if err != nil {
		t.Fatal(err)
	}
	if c.Opcode != packet.HardResetClientV3 || c.KeyID != 0 || c.NumAcks != 0 || c.PacketID != 0 ||
		c.SessionID.IsZero() || len(c.Payload) != 0 {
		t.Fatalf("client V3 reset = %+v", c)
	}
	if pid != EarlyNegStart+1 || !EarlyNegotiation(pid) {
		t.Errorf("V3 reset replay pid = %#x, want %#x (early negotiation)", pid, EarlyNegStart+1)
	}
	checkClientRewrap(t, kc, plain, pid, ts, wkc, wire)
	return v3Reset{kc: kc, wkc: wkc, pid: pid, ctrl: c}
}

func checkClientRewrap(t *testing.T, kc *StaticKey, plain []byte, pid, ts uint32, wkc, wire []byte) {
	t.Helper()
	again, err := NewTLSCrypt(kc, false).Wrap(nil, plain, pid, ts)
	if err != nil {
		t.Fatal(err)
	}
	if again = append(again, wkc...); !bytes.Equal(again, wire) {
		t.Fatalf("client-side Wrap || WKc =\n%x\nopenvpn sent\n%x", again, wire)
	}
}

// checkWKCV1 checks the client's packet after a server reset that carried
// EarlyNegTLV: a P_CONTROL_WKC_V1 acking message 0 for server session ssid,
// with msg id 1, and the same WKc appended. A server that kept no state
// recovers Kc from it.
func checkWKCV1(t *testing.T, srv *V2ServerKey, r v3Reset, wire []byte, ssid *packet.SessionID) packet.Control {
	t.Helper()
	if op := packet.Opcode(wire[0] >> 3); op != packet.ControlWKCV1 {
		t.Fatalf("client answered the early-negotiation reset with %v, want P_CONTROL_WKC_V1", op)
	}
	wrapped, wkc, err := SplitWKc(wire)
	if err != nil {
		t.Fatalf("SplitWKc(P_CONTROL_WKC_V1): %v", err)
	}
	if !bytes.Equal(wkc, r.wkc) {
		t.Fatal("WKc in P_CONTROL_WKC_V1 differs from the reset's")
	}
	kc, _, err := srv.UnwrapClientKey(wkc)
	if err != nil || *kc != *r.kc {
		t.Fatalf("UnwrapClientKey(WKC_V1's WKc): %v", err)
	}
	plain, pid, ts, err := NewTLSCrypt(kc, true).Unwrap(nil, wrapped)
	if err != nil {
		t.Fatalf("tls-crypt unwrap of WKC_V1 with Kc: %v", err)
	}
	c, err := packet.ParseControl(plain)
	if err != nil {
		t.Fatal(err)
	}
	if ssid.IsZero() {
		*ssid = c.RemoteSessionID
	}
	if c.Opcode != packet.ControlWKCV1 || c.KeyID != 0 || c.SessionID != r.ctrl.SessionID ||
		c.NumAcks < 1 || c.Acks[0] != 0 || c.RemoteSessionID != *ssid || ssid.IsZero() || c.PacketID != 1 {
		t.Fatalf("client WKC_V1 = %+v, want ack of 0 for server sid %v and msg id 1", c, *ssid)
	}
	if !EarlyNegotiation(pid) || pid <= r.pid {
		t.Errorf("WKC_V1 replay pid = %#x, want above %#x in the early-negotiation range", pid, r.pid)
	}
	// Normally the first ClientHello fragment; an empty WKC_V1 is also
	// legal (protocol §4 step 5), so only check the record type when present.
	if len(c.Payload) > 0 && c.Payload[0] != 0x16 {
		t.Errorf("WKC_V1 payload %x..., want a TLS handshake record", c.Payload[:min(8, len(c.Payload))])
	}
	checkClientRewrap(t, kc, plain, pid, ts, wkc, wire)
	return c
}

// TestV2OpenVPNPacketFixtures replays the V3 exchange captured from a live
// OpenVPN 2.6.14 client: our server side must take both packets apart, and
// our client side reproduce them.
func TestV2OpenVPNPacketFixtures(t *testing.T) {
	srv, cli := readV2Fixtures(t)
	pkts := parseHexLines(t, readFile(t, v2PacketsFixture))
	if len(pkts) != 2 {
		t.Fatalf("fixture has %d packets, want 2", len(pkts))
	}
	r := checkV3Reset(t, srv, cli, pkts[0])
	var ssid packet.SessionID
	c := checkWKCV1(t, srv, r, pkts[1], &ssid)
	if len(c.Payload) == 0 {
		t.Error("fixture WKC_V1 carries no TLS data")
	}
}

// TestV2OpenVPNClientLive runs the stock openvpn client with the fixture
// tls-crypt-v2 client key against a UDP socket on loopback and plays the
// server's stateless step (protocol §4 steps 2, 3 and 5) with our primitives:
// split and unwrap its V3 reset, answer with a reset wrapped with Kc, and
// check what the client sends next. With EarlyNegTLV in our reset it must
// resend its WKc in a P_CONTROL_WKC_V1; without it, it sends a plain
// P_CONTROL_V1 (the control case, showing the TLV is what triggers it).
func TestV2OpenVPNClientLive(t *testing.T) {
	bin := openvpnBinary(t)
	srv, cli := readV2Fixtures(t)
	caFile, upFile := liveClientFiles(t)
	keyFile, err := filepath.Abs(v2ClientFixture)
	if err != nil {
		t.Fatal(err)
	}
	for _, tlv := range []bool{true, false} {
		t.Run("early-neg-tlv="+strconv.FormatBool(tlv), func(t *testing.T) {
			pkts := v2LiveExchange(t, bin, srv, cli, keyFile, caFile, upFile, tlv)
			if tlv && *updateInterop {
				out := "# Captured from a live OpenVPN 2.6.14 client by TestV2OpenVPNClientLive -update-interop.\n" +
					"# Keys: testdata/v2/srv.key, testdata/v2/cli.key. Client args: --tls-crypt-v2 cli.key\n" +
					"# Line 1: client P_CONTROL_HARD_RESET_CLIENT_V3; line 2: its P_CONTROL_WKC_V1 after our\n" +
					"# server reset carrying EarlyNegTLV.\n" +
					hex.EncodeToString(pkts[0]) + "\n" + hex.EncodeToString(pkts[1]) + "\n"
				if err := os.WriteFile(v2PacketsFixture, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func v2LiveExchange(t *testing.T, bin string, srv *V2ServerKey, cli *V2ClientKey, keyFile, caFile, upFile string, tlv bool) [][]byte {
	c := startLiveClient(t, bin, caFile, upFile, "--verb", "4", "--tls-crypt-v2", keyFile)
	read, conn := c.read, c.conn
	first, addr := read()
	r := checkV3Reset(t, srv, cli, first)

	ssid := packet.SessionID{0xc0, 0x0c, 0x1e, 2, 3, 4, 5, 6}
	reply := packet.Control{
		Opcode: packet.HardResetServerV2, SessionID: ssid,
		NumAcks: 1, RemoteSessionID: r.ctrl.SessionID, PacketID: 0,
	}
	if tlv {
		reply.Payload = EarlyNegTLV
	}
	wire, err := NewTLSCrypt(r.kc, true).Wrap(nil, reply.Append(nil), 1, uint32(time.Now().Unix()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteToUDP(wire, addr); err != nil {
		t.Fatal(err)
	}
	for {
		next, _ := read()
		op := packet.Opcode(next[0] >> 3)
		if op == packet.HardResetClientV3 {
			continue // a retransmission that crossed our reply
		}
		if tlv {
			checkWKCV1(t, srv, r, next, &ssid)
			return [][]byte{first, next}
		}
		// Without the TLV the client already knows we hold Kc: a plain
		// tls-crypt packet, no WKc.
		if op != packet.ControlV1 && op != packet.AckV1 {
			t.Fatalf("client answered a reset without TLV with %v, want P_CONTROL_V1 or P_ACK_V1", op)
		}
		checkClientNext(t, NewTLSCrypt(r.kc, true), next, r.ctrl.SessionID, &ssid)
		return [][]byte{first, next}
	}
}

// TestV2OpenVPNServerAcceptsOurKey writes a client key with NewV2ClientKey
// under the fixture server key and connects a stock openvpn client with it to
// a stock openvpn server (--tls-crypt-v2 srv.key), both in a throwaway
// network namespace. The server's --tls-crypt-v2-verify script must see our
// metadata and the client must complete initialization. A client key wrapped
// under another server key must be refused by the server.
func TestV2OpenVPNServerAcceptsOurKey(t *testing.T) {
	bin := openvpnBinary(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and tun")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) not installed")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	srv, _ := readV2Fixtures(t)
	srvKeyFile, err := filepath.Abs(v2ServerFixture)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	now := time.Now()
	ca, err := pki.NewCA("cvpn tls-crypt-v2 test CA", pki.ECDSAP256, 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	srvID, err := pki.IssueServer(ca, "server", nil, pki.ECDSAP256, 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	cliID, err := pki.IssueClient(ca, "client", nil, pki.ECDSAP256, 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path("ca.crt"), ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteIdentity(srvID, path("server.crt"), path("server.key")); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteIdentity(cliID, path("client.crt"), path("client.key")); err != nil {
		t.Fatal(err)
	}
	// The verify script records what the server unwrapped from our WKc.
	script := "#!/bin/sh\n{ echo \"type=$metadata_type\"; cat \"$metadata_file\"; } > " + path("verified.txt") + "\nexit 0\n"
	if err := os.WriteFile(path("verify.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	const userMetadata = "cvpn-test-client"
	ours, err := NewV2ClientKey(rand.Reader, srv, V2UserMetadata([]byte(userMetadata)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path("cli-ours.key"), ours.Marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	otherSrv, _ := GenerateV2ServerKey(rand.Reader)
	foreign, err := NewV2ClientKey(rand.Reader, otherSrv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path("cli-foreign.key"), foreign.Marshal(), 0o600); err != nil {
		t.Fatal(err)
	}

	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	ns := "cvtc" + hex.EncodeToString(rnd[:])
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}

	server := startInNetns(t, ns, "server", bin,
		"--server", "10.89.0.0", "255.255.255.0", "--topology", "subnet",
		"--dev", "tun", "--proto", "udp", "--local", "127.0.0.1", "--port", "1194",
		"--ca", path("ca.crt"), "--cert", path("server.crt"), "--key", path("server.key"), "--dh", "none",
		"--tls-crypt-v2", srvKeyFile, "--tls-crypt-v2-verify", path("verify.sh"), "--script-security", "2",
		"--verb", "4")
	if err := server.waitFor("Initialization Sequence Completed", 15*time.Second); err != nil {
		t.Fatal(err)
	}
	clientArgs := func(key string) []string {
		return []string{
			// dev null and no ifconfig: the client needs no tun device.
			"--client", "--dev", "null", "--ifconfig-noexec", "--route-noexec",
			"--proto", "udp", "--nobind", "--remote", "127.0.0.1", "1194", "--ca", path("ca.crt"),
			"--cert", path("client.crt"), "--key", path("client.key"),
			"--tls-crypt-v2", key, "--verb", "4",
		}
	}

	t.Run("our key", func(t *testing.T) {
		client := startInNetns(t, ns, "client", bin, clientArgs(path("cli-ours.key"))...)
		if err := client.waitFor("Initialization Sequence Completed", 30*time.Second); err != nil {
			t.Logf("server output:\n%s", server.out.String())
			t.Fatal(err)
		}
		if err := server.waitFor("TLS CRYPT V2 VERIFY SCRIPT OK", 5*time.Second); err != nil {
			t.Error(err)
		}
		got, err := os.ReadFile(path("verified.txt"))
		if err != nil || string(got) != "type=0\n"+userMetadata {
			t.Errorf("verify script saw %q (%v), want %q", got, err, "type=0\n"+userMetadata)
		}
		if s := server.out.String(); strings.Contains(s, "Can not unwrap") {
			t.Errorf("server failed to unwrap a client key:\n%s", s)
		}
		client.stop()
	})

	t.Run("foreign key", func(t *testing.T) {
		client := startInNetns(t, ns, "client", bin, clientArgs(path("cli-foreign.key"))...)
		if err := server.waitFor("Can not unwrap tls-crypt-v2 client key", 15*time.Second); err != nil {
			t.Error(err)
		}
		if strings.Contains(client.out.String(), "Initialization Sequence Completed") {
			t.Error("client with a key from another server key completed initialization")
		}
		client.stop()
	})
}

// netnsProc is an openvpn process in a network namespace with its output
// captured.
type netnsProc struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

func startInNetns(t *testing.T, ns, name, bin string, args ...string) *netnsProc {
	t.Helper()
	p := &netnsProc{name: name, out: &lockedBuffer{}, done: make(chan struct{})}
	// ip netns exec execs openvpn in place, so signals reach openvpn.
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM, waits up to 5 s, then kills. Safe to call twice.
func (p *netnsProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *netnsProc) waitFor(s string, timeout time.Duration) error {
	deadline := time.After(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if strings.Contains(p.out.String(), s) {
			return nil
		}
		select {
		case <-p.done:
			if strings.Contains(p.out.String(), s) {
				return nil
			}
			return &waitError{p.name, s, "exited"}
		case <-deadline:
			return &waitError{p.name, s, "timed out"}
		case <-tick.C:
		}
	}
}

type waitError struct{ name, want, why string }

func (e *waitError) Error() string {
	return e.name + " " + e.why + " before printing " + strconv.Quote(e.want)
}

// lockedBuffer collects the log of the goroutines under test.
type lockedBuffer = testlog.Buffer
