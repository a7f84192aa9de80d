package session

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/keymethod"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// recordWriter seals TLS 1.3 records under the client's application traffic secret, which the
// hostile client learns from its own crypto/tls through KeyLogWriter. crypto/tls has no API to
// send a KeyUpdate; this writes them (RFC 8446 §4.6.3, §5.2, §7.1-7.3).
type recordWriter struct {
	hash    func() hash.Hash
	keyLen  int
	newAEAD func(key []byte) (cipher.AEAD, error)
	secret  []byte
	aead    cipher.AEAD
	iv      []byte
	seq     uint64
}

func newRecordWriter(t *testing.T, suite uint16, secret []byte) *recordWriter {
	t.Helper()
	gcm := func(key []byte) (cipher.AEAD, error) {
		b, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(b)
	}
	w := &recordWriter{secret: secret}
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256:
		w.hash, w.keyLen, w.newAEAD = sha256.New, 16, gcm
	case tls.TLS_AES_256_GCM_SHA384:
		w.hash, w.keyLen, w.newAEAD = sha512.New384, 32, gcm
	case tls.TLS_CHACHA20_POLY1305_SHA256:
		w.hash, w.keyLen, w.newAEAD = sha256.New, 32, chacha20poly1305.New
	default:
		t.Fatalf("TLS 1.3 cipher suite %s not handled", tls.CipherSuiteName(suite))
	}
	w.rekey(t)
	return w
}

// expandLabel is HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
func (w *recordWriter) expandLabel(t *testing.T, label string, n int) []byte {
	t.Helper()
	info := binary.BigEndian.AppendUint16(nil, uint16(n))
	info = append(info, byte(len("tls13 ")+len(label)))
	info = append(info, "tls13 "+label...)
	info = append(info, 0)
	out, err := hkdf.Expand(w.hash, w.secret, string(info), n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (w *recordWriter) rekey(t *testing.T) {
	t.Helper()
	aead, err := w.newAEAD(w.expandLabel(t, "key", w.keyLen))
	if err != nil {
		t.Fatal(err)
	}
	w.aead, w.iv, w.seq = aead, w.expandLabel(t, "iv", 12), 0
}

// seal appends one protected record carrying content of type typ.
func (w *recordWriter) seal(dst []byte, typ byte, content []byte) []byte {
	nonce := bytes.Clone(w.iv)
	for i := range 8 {
		nonce[len(nonce)-1-i] ^= byte(w.seq >> (8 * i))
	}
	w.seq++
	inner := append(bytes.Clone(content), typ)
	hdr := []byte{23, 3, 3, 0, 0} // opaque_type application_data, legacy_record_version
	binary.BigEndian.PutUint16(hdr[3:], uint16(len(inner)+w.aead.Overhead()))
	return w.aead.Seal(append(dst, hdr...), nonce, inner, hdr)
}

// keyUpdate appends a KeyUpdate with update_requested, which the peer must answer with a
// KeyUpdate of its own, and moves to the next traffic secret.
func (w *recordWriter) keyUpdate(t *testing.T, dst []byte) []byte {
	dst = w.seal(dst, 22, []byte{24, 0, 0, 1, 1}) // handshake: key_update, length 1, update_requested
	w.secret = w.expandLabel(t, "traffic upd", w.hash().Size())
	w.rekey(t)
	return dst
}

// hostileClient is an OpenVPN client that completes the cookie handshake, TLS 1.3 and
// key-method 2 through a channel of its own, and then writes TLS records of its own making.
type hostileClient struct {
	ch  *channel.Channel
	rec *recordWriter
}

func dialHostile(t *testing.T, e *testEngine, cn string, from netip.AddrPort) *hostileClient {
	t.Helper()
	pc, err := e.net.ListenPacket(from)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	srv := net.UDPAddrFromAddrPort(port443)
	wrap := tlscrypt.NewTLSCrypt(e.key, false)

	// The cookie handshake (protocol §4): our reset, the server's reset whose session id is
	// the cookie, then the channel as established, acking that reset in its first packet.
	var local packet.SessionID
	_, _ = rand.Read(local[:])
	reset := packet.Control{Opcode: packet.HardResetClientV2, SessionID: local}
	wire, err := wrap.Wrap(nil, reset.Append(nil), 1, uint32(time.Now().Unix()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.WriteTo(wire, srv); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no reply to the hard reset: %v", err)
	}
	plain, _, _, err := wrap.Unwrap(nil, buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	reply, err := packet.ParseControl(plain)
	if err != nil || reply.Opcode != packet.HardResetServerV2 {
		t.Fatalf("reply to the hard reset: %v %v", reply.Opcode, err)
	}
	_ = pc.SetReadDeadline(time.Time{})
	ch := channel.New(channel.Config{
		LocalSID: local, RemoteSID: reply.SessionID, Wrapper: wrap, Replay: true, SendPID: 2,
		Send: func(w []byte) { _, _ = pc.WriteTo(w, srv) },
	}, true)
	t.Cleanup(ch.Close)
	ch.AckLater(0, 0)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if op, _ := packet.SplitHeader(buf[0]); op == packet.DataV2 || op == packet.DataV1 {
				continue
			}
			plain, pid, ts, err := wrap.Unwrap(nil, buf[:n])
			if err != nil {
				continue
			}
			if p, err := packet.ParseControl(plain); err == nil {
				_ = ch.Input(&p, pid, ts)
			}
		}
	}()

	id, err := pki.IssueClient(e.ca, cn, []string{"dev"}, pki.ECDSAP256, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := id.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	var keylog bytes.Buffer
	conn := tls.Client(ch.Key(0).Conn(), &tls.Config{
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, KeyLogWriter: &keylog,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	var secret []byte
	for line := range strings.SplitSeq(keylog.String(), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "CLIENT_TRAFFIC_SECRET_0" {
			if secret, err = hex.DecodeString(f[2]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if secret == nil {
		t.Fatalf("no client traffic secret in the key log:\n%s", keylog.String())
	}
	// From here on every record this client sends is written by hand (its sequence numbers
	// start at 0 after the handshake); crypto/tls only reads.
	h := &hostileClient{ch: ch, rec: newRecordWriter(t, conn.ConnectionState().CipherSuite, secret)}

	// Key-method 2 (protocol §6), announcing what a 2.6 client does.
	msg := keymethod.ClientMessage{
		Options: strings.TrimSuffix(keymethod.ServerOptionsString("UDPv4", "AES-256-GCM", 256), "tls-server") + "tls-client",
		PeerInfo: "IV_VER=2.6.14\nIV_PLAT=linux\nIV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM\nIV_PROTO=" +
			strconv.Itoa(keymethod.ProtoDataV2|keymethod.ProtoRequestPush|keymethod.ProtoTLSKeyExport) + "\n",
	}
	_, _ = rand.Read(msg.PreMaster[:])
	_, _ = rand.Read(msg.Random1[:])
	_, _ = rand.Read(msg.Random2[:])
	h.write(t, h.rec.seal(nil, 23, msg.Append(nil)))
	waitFor(t, cn+" is established", func() bool { _, ok := e.established()[cn]; return ok })
	return h
}

func (h *hostileClient) write(t *testing.T, b []byte) {
	t.Helper()
	if _, err := h.ch.Key(0).Conn().Write(b); err != nil {
		t.Fatalf("client write: %v", err)
	}
}

// withholdAcks makes the network carry the client's control packets without their acks: bare
// acks are dropped, and acks riding on P_CONTROL_V1 are cut out (the test holds the tls-crypt
// key, so it unwraps, edits and rewraps them with the same replay ids).
func withholdAcks(e *testEngine, from netip.AddrPort) {
	unwrap := tlscrypt.NewTLSCrypt(e.key, true) // as the server reads
	rewrap := tlscrypt.NewTLSCrypt(e.key, false)
	e.net.SetFilter(func(src, dst netip.AddrPort, pkt []byte) (netip.AddrPort, bool) {
		if src != from {
			return src, true
		}
		switch op, _ := packet.SplitHeader(pkt[0]); op {
		case packet.AckV1:
			return src, false
		case packet.ControlV1:
		default:
			return src, true
		}
		plain, pid, ts, err := unwrap.Unwrap(nil, pkt)
		if err != nil {
			return src, true
		}
		p, err := packet.ParseControl(plain)
		if err != nil || p.NumAcks == 0 {
			return src, true
		}
		p.NumAcks = 0
		wire, err := rewrap.Wrap(nil, p.Append(nil), pid, ts)
		if err != nil {
			return src, true
		}
		e.net.Inject(src, dst, wire)
		return src, false
	})
}

// keyUpdateResponse is the size of the record a TLS 1.3 peer answers each KeyUpdate request
// with: a 5-byte header, the 4-byte message and its content type, a 16-byte AEAD tag.
const keyUpdateResponse = 5 + 4 + 1 + 16

// TestKeyUpdateStormBounded: an authenticated client sends TLS 1.3 KeyUpdate requests (each
// makes the server's crypto/tls write a KeyUpdate back) while withholding its acks, so all of
// it stays in the server's send backlog. The backlog never passes its bound, though the client
// asks for many times that, and the session ends once the bound is reached.
func TestKeyUpdateStormBounded(t *testing.T) {
	e := newTestEngine(t, engineOptions{})
	from := netip.MustParseAddrPort("203.0.113.40:40000")
	h := dialHostile(t, e, "mallory", from)
	s := e.sessionOfUser(t, "mallory")
	withholdAcks(e, from)

	// crypto/tls ends a connection after 16 handshake messages in a row with no application
	// data between them, so every 15 KeyUpdates carry one byte of application data (a NUL,
	// which the server's control-message reader skips).
	requested, peak := 0, 0
	deadline := time.Now().Add(30 * time.Second)
	for s.state.Load() != stateClosed {
		if time.Now().After(deadline) {
			t.Fatalf("the session is still up after %d KeyUpdate requests (backlog %d bytes, err %v, %d packets rate-limited)",
				requested, s.ctl.Queued(), s.ctl.Err(), s.ctl.RateLimited())
		}
		peak = max(peak, s.ctl.Queued())
		if h.ch.Queued() > 8<<10 || h.ch.Err() != nil {
			time.Sleep(time.Millisecond) // let the server take what was sent
			continue
		}
		var batch []byte
		for range 15 {
			batch = h.rec.keyUpdate(t, batch)
		}
		batch = h.rec.seal(batch, 23, []byte{0})
		h.write(t, batch)
		requested += 15
	}
	waitFor(t, "the session leaves every table", func() bool {
		_, ok := e.established()["mallory"]
		return !ok && e.m.cfg.Pool.InUse() == 0
	})
	peak = max(peak, s.ctl.Queued())
	if err := s.ctl.Err(); !errors.Is(err, channel.ErrBacklogFull) {
		t.Fatalf("the session ended with channel error %v, want ErrBacklogFull", err)
	}
	if peak > channel.DefaultMaxKeyBacklog {
		t.Fatalf("the server held %d bytes for a client that acks nothing, bound %d", peak, channel.DefaultMaxKeyBacklog)
	}
	if peak < channel.DefaultMaxKeyBacklog-channel.MaxPayload {
		t.Fatalf("the backlog peaked at %d bytes: the storm never reached the bound %d", peak, channel.DefaultMaxKeyBacklog)
	}
	// The client's own requests must have been a real share of what filled the backlog (the
	// rest is the handshake's unacknowledged records and the batches in flight when the bound
	// was reached), or the test would prove nothing about KeyUpdates.
	if asked := requested * keyUpdateResponse; asked <= channel.DefaultMaxKeyBacklog/2 {
		t.Fatalf("the client asked for %d bytes of responses, under half the bound: the test proves nothing", asked)
	}
	t.Logf("%d KeyUpdate requests, backlog peak %d bytes, %d control packets rate-limited", requested, peak, s.ctl.RateLimited())
}

// TestUnacknowledgingClientEnds: a client whose acks stop reaching the server, while its data
// keeps flowing, is torn down once a control message has gone unacknowledged for the hand
// window; not before.
func TestUnacknowledgingClientEnds(t *testing.T) {
	e := newTestEngine(t, engineOptions{handWindow: time.Minute})
	from := netip.MustParseAddrPort("203.0.113.41:40000")
	c := connect(t, e.clientConfig(t, "trudy", from, port443))
	s := e.sessionOfUser(t, "trudy")
	withholdAcks(e, from)
	if _, err := s.tlsConn.Load().Write([]byte("INFO,hello\x00")); err != nil {
		t.Fatal(err)
	}
	// Time passes in steps, with data between them so the client is not silent.
	for i := range 5 {
		e.clock.Advance(11 * time.Second)
		e.ping(t, c, byte(i))
		s.ctl.Flush() // as the retransmission timer does
	}
	if st := s.state.Load(); st != stateEstablished || s.ctl.Err() != nil {
		t.Fatalf("state %d, channel error %v 55 s after the unacknowledged message", st, s.ctl.Err())
	}
	e.clock.Advance(6 * time.Second)
	e.ping(t, c, 9)
	s.ctl.Flush()
	waitFor(t, "the session ends", func() bool { return s.state.Load() == stateClosed && e.m.cfg.Pool.InUse() == 0 })
	if err := s.ctl.Err(); !errors.Is(err, channel.ErrStalled) {
		t.Fatalf("the session ended with channel error %v, want ErrStalled", err)
	}
}
