package channel

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	mrand "math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// link carries wire packets between two channels, dropping, duplicating and reordering some.
type link struct {
	mu   sync.Mutex
	rng  *mrand.Rand
	to   func() *Channel
	wrap tlscrypt.Wrapper
	buf  [][]byte
}

func (l *link) send(wire []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rng.IntN(10) < 2 {
		return // lost
	}
	p := append([]byte(nil), wire...)
	l.buf = append(l.buf, p)
	if l.rng.IntN(10) == 0 {
		l.buf = append(l.buf, p) // duplicated
	}
}

// pump delivers queued packets (shuffled) until stop closes.
func (l *link) pump(stop chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(2 * time.Millisecond):
		}
		l.mu.Lock()
		pkts := l.buf
		l.buf = nil
		l.rng.Shuffle(len(pkts), func(i, j int) { pkts[i], pkts[j] = pkts[j], pkts[i] })
		l.mu.Unlock()
		// One buffer for every packet, scribbled over after each Input, as the server's
		// pooled buffers are reused: the channel must copy whatever it keeps.
		scratch := make([]byte, 0, 2048)
		for _, wire := range pkts {
			plain, pid, ts, err := l.wrap.Unwrap(scratch[:0], wire)
			if err != nil {
				continue
			}
			p, err := packet.ParseControl(plain)
			if err != nil {
				continue
			}
			_ = l.to().Input(&p, pid, ts)
			for i := range plain {
				plain[i] = 0xA5
			}
		}
	}
}

// TestTLSOverLossyChannel runs a real TLS 1.3 handshake and a data exchange through two channels
// over a link that loses, duplicates and reorders packets, with tls-crypt wrapping on both sides.
func TestTLSOverLossyChannel(t *testing.T) {
	now := time.Now()
	ca, err := pki.NewCA("test CA", pki.ECDSAP256, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	srvID, err := pki.IssueServer(ca, "server", []string{"server"}, pki.ECDSAP256, time.Hour/2, now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := srvID.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	key, err := tlscrypt.GenerateStaticKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	csid := packet.SessionID{1, 2, 3, 4, 5, 6, 7, 8}
	ssid := packet.SessionID{8, 7, 6, 5, 4, 3, 2, 1}
	var server, client *Channel
	toServer := &link{rng: mrand.New(mrand.NewPCG(1, 2)), to: func() *Channel { return server }, wrap: tlscrypt.NewTLSCrypt(key, true)}
	toClient := &link{rng: mrand.New(mrand.NewPCG(3, 4)), to: func() *Channel { return client }, wrap: tlscrypt.NewTLSCrypt(key, false)}
	server = New(Config{LocalSID: ssid, RemoteSID: csid, Wrapper: tlscrypt.NewTLSCrypt(key, true), Replay: true, Send: toClient.send}, true)
	client = New(Config{LocalSID: csid, RemoteSID: ssid, Wrapper: tlscrypt.NewTLSCrypt(key, false), Replay: true, Send: toServer.send}, true)
	defer server.Close()
	defer client.Close()
	stop := make(chan struct{})
	defer close(stop)
	go toServer.pump(stop)
	go toClient.pump(stop)

	msg := bytes.Repeat([]byte("key-method 2 block and control messages "), 200) // spans several packets
	errc := make(chan error, 1)
	go func() {
		conn := tls.Server(server.Key(0).Conn(), &tls.Config{Certificates: []tls.Certificate{cert}})
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, buf); err != nil {
			errc <- err
			return
		}
		_, err := conn.Write(buf)
		errc <- err
	}()
	conn := tls.Client(client.Key(0).Conn(), &tls.Config{RootCAs: roots, ServerName: "server"})
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	echo := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, echo); err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server side: %v", err)
	}
	if !bytes.Equal(echo, msg) {
		t.Fatal("echo differs from what was sent")
	}
}

// TestRenegotiationFromPeer checks that a soft reset for the next key id creates that key state,
// answers with our own soft reset and reports the new key.
func TestRenegotiationFromPeer(t *testing.T) {
	var sent [][]byte
	var got *Key
	c := New(Config{
		LocalSID: packet.SessionID{1}, RemoteSID: packet.SessionID{2},
		Wrapper: tlscrypt.NewPlain(),
		Send:    func(w []byte) { sent = append(sent, append([]byte(nil), w...)) },
		NewKey:  func(k *Key) { got = k },
	}, true)
	defer c.Close()
	p := packet.Control{Opcode: packet.SoftResetV1, KeyID: 1, SessionID: packet.SessionID{2}, PacketID: 0}
	if err := c.Input(&p, 0, 0); err != nil {
		t.Fatal(err)
	}
	if got == nil || got.ID != 1 || c.Current() != 1 {
		t.Fatalf("new key not reported: got %v, current %d", got, c.Current())
	}
	var sawReset, sawAck bool
	for _, w := range sent {
		q, err := packet.ParseControl(w)
		if err != nil {
			t.Fatal(err)
		}
		if q.Opcode == packet.SoftResetV1 && q.KeyID == 1 && q.PacketID == 0 {
			sawReset = true
		}
		for _, a := range q.Acks[:q.NumAcks] {
			if a == 0 && q.KeyID == 1 {
				sawAck = true
			}
		}
	}
	if !sawReset || !sawAck {
		t.Fatalf("reply to soft reset: reset sent %v, acked %v", sawReset, sawAck)
	}
	bad := packet.Control{Opcode: packet.ControlV1, KeyID: 5, SessionID: packet.SessionID{2}, PacketID: 1}
	if err := c.Input(&bad, 0, 0); err == nil {
		t.Fatal("control packet for an unknown key id accepted")
	}
	other := packet.Control{Opcode: packet.ControlV1, SessionID: packet.SessionID{9}, PacketID: 1}
	if err := c.Input(&other, 0, 0); err == nil {
		t.Fatal("control packet from another session accepted")
	}
}
