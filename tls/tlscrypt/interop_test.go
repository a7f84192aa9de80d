package tlscrypt

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
)

var updateInterop = flag.Bool("update-interop", false,
	"rewrite testdata/interop/*.hex from a live openvpn client (needs /usr/sbin/openvpn)")

// interopMode is one control-channel protection setting, as the stock client
// is configured and as our server side builds it.
type interopMode struct {
	name       string
	clientArgs func(keyFile string) []string
	server     func(*StaticKey) Wrapper // the server side of the session
	client     func(*StaticKey) Wrapper // our model of the openvpn client side
}

var interopModes = []interopMode{
	{
		name:       "tls-crypt",
		clientArgs: func(f string) []string { return []string{"--tls-crypt", f} },
		server:     func(k *StaticKey) Wrapper { return NewTLSCrypt(k, true) },
		client:     func(k *StaticKey) Wrapper { return NewTLSCrypt(k, false) },
	},
	{
		name:       "tls-auth-sha1-dir1",
		clientArgs: func(f string) []string { return []string{"--tls-auth", f, "1"} },
		server:     func(k *StaticKey) Wrapper { return NewTLSAuth(k, DirectionNormal, nil) },
		client:     func(k *StaticKey) Wrapper { return NewTLSAuth(k, DirectionInverse, nil) },
	},
	{
		name:       "tls-auth-sha256-dir1",
		clientArgs: func(f string) []string { return []string{"--tls-auth", f, "1", "--auth", "SHA256"} },
		server:     func(k *StaticKey) Wrapper { return NewTLSAuth(k, DirectionNormal, sha256.New) },
		client:     func(k *StaticKey) Wrapper { return NewTLSAuth(k, DirectionInverse, sha256.New) },
	},
	{
		name:       "tls-auth-sha512-bidirectional",
		clientArgs: func(f string) []string { return []string{"--tls-auth", f, "--auth", "SHA512"} },
		server:     func(k *StaticKey) Wrapper { return NewTLSAuth(k, DirectionBidirectional, sha512.New) },
		client:     func(k *StaticKey) Wrapper { return NewTLSAuth(k, DirectionBidirectional, sha512.New) },
	},
}

func interopFixture(mode string) string {
	return filepath.Join("testdata", "interop", mode+".hex")
}

// TestOpenVPNFixtures replays packets captured from a real OpenVPN 2.6.14
// client (keyed with testdata/openvpn-genkey.key): the server side must
// unwrap them, and our client-side Wrap must reproduce them byte for byte.
// Line 1 is the client's hard reset, line 2 its next packet after our server
// reset (usually the first ClientHello fragment, several AES blocks long).
func TestOpenVPNFixtures(t *testing.T) {
	k, _ := readFixtureKey(t)
	for _, m := range interopModes {
		t.Run(m.name, func(t *testing.T) {
			data, err := os.ReadFile(interopFixture(m.name))
			if err != nil {
				t.Fatal(err)
			}
			pkts := parseHexLines(t, data)
			if len(pkts) != 2 {
				t.Fatalf("fixture has %d packets, want 2", len(pkts))
			}
			srv, cli := m.server(k), m.client(k)
			reset := checkClientReset(t, srv, pkts[0])
			var ssid packet.SessionID
			checkClientNext(t, srv, pkts[1], reset.SessionID, &ssid)
			for i, wire := range pkts {
				plain, pid, ts, err := srv.Unwrap(nil, wire)
				if err != nil {
					t.Fatal(err)
				}
				again, err := cli.Wrap(nil, plain, pid, ts)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(again, wire) {
					t.Fatalf("packet %d: client-side Wrap =\n%x\nopenvpn sent\n%x", i+1, again, wire)
				}
			}
		})
	}
}

// checkClientReset unwraps and checks a P_CONTROL_HARD_RESET_CLIENT_V2.
func checkClientReset(t *testing.T, srv Wrapper, wire []byte) packet.Control {
	t.Helper()
	plain, pid, _, err := srv.Unwrap(nil, wire)
	if err != nil {
		t.Fatalf("server Unwrap of client reset: %v", err)
	}
	c, err := packet.ParseControl(plain)
	if err != nil {
		t.Fatalf("ParseControl(client reset): %v", err)
	}
	if c.Opcode != packet.HardResetClientV2 || c.KeyID != 0 || c.NumAcks != 0 || c.PacketID != 0 || c.SessionID.IsZero() {
		t.Fatalf("client reset = %+v", c)
	}
	if pid != 1 {
		t.Errorf("client reset replay pid = %d, want 1", pid)
	}
	return c
}

// checkClientNext unwraps and checks the client's packet after our server
// reset: it must ack message 0 and name the server session id. If *ssid is
// zero it is taken from the packet (fixtures), else it must match.
func checkClientNext(t *testing.T, srv Wrapper, wire []byte, csid packet.SessionID, ssid *packet.SessionID) packet.Control {
	t.Helper()
	plain, pid, _, err := srv.Unwrap(nil, wire)
	if err != nil {
		t.Fatalf("server Unwrap of client's second packet: %v", err)
	}
	c, err := packet.ParseControl(plain)
	if err != nil {
		t.Fatalf("ParseControl(client's second packet): %v", err)
	}
	if ssid.IsZero() {
		*ssid = c.RemoteSessionID
	}
	if (c.Opcode != packet.ControlV1 && c.Opcode != packet.AckV1) || c.SessionID != csid ||
		c.NumAcks < 1 || c.Acks[0] != 0 || c.RemoteSessionID != *ssid || ssid.IsZero() {
		t.Fatalf("client's second packet = %+v, want ack of 0 for server sid %v", c, *ssid)
	}
	if pid < 2 {
		t.Errorf("client's second packet replay pid = %d, want >= 2", pid)
	}
	if c.Opcode == packet.ControlV1 && (c.PacketID != 1 || len(c.Payload) < 16 || c.Payload[0] != 0x16) {
		t.Errorf("P_CONTROL_V1 msg id %d payload %x..., want msg id 1 and a TLS handshake record", c.PacketID, c.Payload[:min(8, len(c.Payload))])
	}
	return c
}

// TestOpenVPNLive runs the stock openvpn client against a UDP socket on
// loopback for each mode and plays the server's first step
// (protocol §4 step 3): it unwraps the client reset, answers with a server
// reset wrapped by our server-side Wrapper, and checks that the client accepted
// it by acking message 0 for our session id. This exercises the
// server-to-client key slots, which the fixtures (client-to-server only)
// cannot.
func TestOpenVPNLive(t *testing.T) {
	bin := openvpnBinary(t)
	k, _ := readFixtureKey(t)
	caFile, upFile := liveClientFiles(t)
	keyFile, err := filepath.Abs(genkeyFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range interopModes {
		t.Run(m.name, func(t *testing.T) {
			pkts := liveExchange(t, bin, m, k, keyFile, caFile, upFile)
			if *updateInterop {
				out := "# Captured from a live OpenVPN 2.6.14 client by TestOpenVPNLive -update-interop.\n" +
					"# Key: testdata/openvpn-genkey.key. Client args: " + strings.Join(m.clientArgs("KEY"), " ") + "\n" +
					"# Line 1: client hard reset; line 2: client's next packet after our server reset.\n" +
					hex.EncodeToString(pkts[0]) + "\n" + hex.EncodeToString(pkts[1]) + "\n"
				if err := os.WriteFile(interopFixture(m.name), []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func liveExchange(t *testing.T, bin string, m interopMode, k *StaticKey, keyFile, caFile, upFile string) [][]byte {
	c := startLiveClient(t, bin, caFile, upFile, append([]string{"--verb", "3"}, m.clientArgs(keyFile)...)...)
	srv := m.server(k)
	read, conn := c.read, c.conn
	first, addr := read()
	reset := checkClientReset(t, srv, first)

	ssid := packet.SessionID{0xc0, 0x0c, 0x1e, 1, 2, 3, 4, 5}
	reply := packet.Control{
		Opcode: packet.HardResetServerV2, SessionID: ssid,
		NumAcks: 1, RemoteSessionID: reset.SessionID, PacketID: 0,
	}
	wire, err := srv.Wrap(nil, reply.Append(nil), 1, uint32(time.Now().Unix()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteToUDP(wire, addr); err != nil {
		t.Fatal(err)
	}
	for {
		next, _ := read()
		if packet.Opcode(next[0]>>3) == packet.HardResetClientV2 {
			continue // a retransmission that crossed our reply
		}
		checkClientNext(t, srv, next, reset.SessionID, &ssid)
		return [][]byte{first, next}
	}
}

// writeTestCA writes a throwaway self-signed CA certificate; the client only
// needs it to start, the test never gets as far as verifying a server cert.
func writeTestCA(t *testing.T, path string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "cvpn tlscrypt test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
