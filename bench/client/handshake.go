package client

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/keymethod"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/push"
	"github.com/cvpn/cvpn/tls/reliable"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
)

// Version strings announced in peer-info. IV_VER claims the OpenVPN release whose client
// behaviour this package follows, so servers treat it as such; IV_GUI_VER says who it really is.
const (
	ivVer    = "2.6.14"
	ivGUIVer = "cvpn-bench 1"
)

// maxResetTimeout caps the backoff of the hard-reset retransmission.
const maxResetTimeout = 16 * time.Second

// connect runs the handshake of key id 0 up to installed data keys.
func (s *Session) connect(ctx context.Context) error {
	if _, err := rand.Read(s.localSID[:]); err != nil {
		return fmt.Errorf("client: session id: %w", err)
	}
	nextPID, err := s.hardReset(ctx)
	if err != nil {
		return err
	}
	s.ch = channel.New(channel.Config{
		LocalSID:  s.localSID,
		RemoteSID: s.remoteSID,
		Wrapper:   s.wrapper,
		Replay:    s.cfg.TLSCrypt != nil || s.cfg.TLSAuth != nil,
		SendPID:   nextPID,
		Send:      s.sendControl,
		Now:       s.now,
		Log:       s.log,
		NewKey:    s.onRenegotiation,
	}, true)
	// The server's reset (message 0) is acked inside our first P_CONTROL_V1: that packet
	// proves the cookie (protocol §4 step 4).
	s.ch.AckLater(0, 0)
	s.lastRecv.Store(s.now().UnixNano())
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.receiveLoop() }()
	go func() { defer s.wg.Done(); s.reproveCookie(ctx) }()

	k := s.ch.Key(0)
	kx, err := s.exchangeKeys(ctx, k)
	if err != nil {
		return err
	}
	s.setControl(kx.conn, 0)
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.controlLoop(kx.conn, kx.leftover) }()

	reply, err := s.awaitPush(ctx, kx.conn)
	if err != nil {
		return err
	}
	if err := s.applyPush(&reply, kx.server.Options); err != nil {
		return err
	}
	dk, err := s.newDataKey(kx)
	if err != nil {
		return err
	}
	s.keys[0].Store(dk)
	s.sendKey.Store(dk)
	s.lastSend.Store(s.now().UnixNano())
	s.connected.Store(true)
	s.startKeepalive()
	return nil
}

// hardReset sends P_CONTROL_HARD_RESET_CLIENT_V2 (message 0) until the server's
// P_CONTROL_HARD_RESET_SERVER_V2 acks it, retransmitting after 2 s, 4 s, ... like the reliable
// layer. The server's session id (its cookie) becomes remoteSID. It returns the next replay
// packet-id for the control-channel wrapping.
func (s *Session) hardReset(ctx context.Context) (uint32, error) {
	stop := context.AfterFunc(ctx, func() { _ = s.link.setReadDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() { _ = s.link.setReadDeadline(time.Time{}) }()

	reset := packet.Control{Opcode: packet.HardResetClientV2, SessionID: s.localSID}
	plain := reset.Append(nil)
	pb := getPkt()
	defer putPkt(pb)
	pid := uint32(1)
	for timeout := reliable.DefaultInitialTimeout; ; timeout = min(2*timeout, maxResetTimeout) {
		wire, err := s.wrapper.Wrap(nil, plain, pid, uint32(s.now().Unix()))
		if err != nil {
			return 0, fmt.Errorf("client: wrap hard reset: %w", err)
		}
		pid++
		if err := s.link.write(wire); err != nil && !isTransient(err) {
			return 0, fmt.Errorf("client: send hard reset: %w", err)
		}
		deadline := time.Now().Add(timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		if err := s.link.setReadDeadline(deadline); err != nil {
			return 0, fmt.Errorf("client: %w", err)
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("client: no reply to the hard reset: %w", ctx.Err())
		}
		for {
			n, err := s.link.read(pb.b[:maxDatagram])
			if err != nil {
				if ctx.Err() != nil {
					return 0, fmt.Errorf("client: no reply to the hard reset: %w", ctx.Err())
				}
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break // retransmit
				}
				if isTransient(err) {
					continue
				}
				return 0, fmt.Errorf("client: receive hard reset reply: %w", err)
			}
			if n == 0 {
				continue
			}
			if sid, ok := s.serverReset(pb.b[:n]); ok {
				s.remoteSID = sid
				return pid, nil
			}
		}
	}
}

// serverReset reports whether wire is the server's answer to our reset: a
// P_CONTROL_HARD_RESET_SERVER_V2 for key 0 that acks message 0 of our session.
func (s *Session) serverReset(wire []byte) (packet.SessionID, bool) {
	if op, kid := packet.SplitHeader(wire[0]); op != packet.HardResetServerV2 || kid != 0 {
		return packet.SessionID{}, false
	}
	plain, _, _, err := s.wrapper.Unwrap(wire[:0], wire)
	if err != nil {
		s.stats.drop(dropControl)
		return packet.SessionID{}, false
	}
	p, err := packet.ParseControl(plain)
	if err != nil || p.SessionID.IsZero() || p.NumAcks == 0 || p.RemoteSessionID != s.localSID ||
		!slices.Contains(p.Acks[:p.NumAcks], 0) {
		s.stats.drop(dropControl)
		return packet.SessionID{}, false
	}
	return p.SessionID, true
}

// cookieReprove is how often the ack of the server's reset is sent again until the server
// answers on the channel.
const cookieReprove = time.Second

// reproveCookie covers the loss of our first P_CONTROL_V1: the server keeps no state until a
// packet acking its reset arrives (protocol §4 step 4), and the channel puts each ack on one packet
// only, so the retransmitted P_CONTROL_V1 would come without it and be dropped forever. Until the
// server's first packet on the channel arrives, a bare P_ACK_V1 for its reset goes out every
// cookieReprove; the server accepts that as the proof too and creates the session.
func (s *Session) reproveCookie(ctx context.Context) {
	t := time.NewTicker(cookieReprove)
	defer t.Stop()
	for !s.heard.Load() {
		select {
		case <-t.C:
			if !s.heard.Load() {
				s.ch.AckLater(0, 0)
				s.ch.Flush()
			}
		case <-ctx.Done():
			return
		case <-s.done:
			return
		}
	}
}

// sendControl is the channel's Send: one wrapped control packet to the server.
func (s *Session) sendControl(wire []byte) { _ = s.link.write(wire) }

// keyExchange is what one key state's TLS handshake and key-method 2 exchange produced.
type keyExchange struct {
	conn     *tls.Conn
	client   keymethod.ClientMessage
	server   keymethod.ServerMessage
	leftover []byte // TLS plaintext after the server's key-method block: the first control messages
}

// exchangeKeys runs TLS over key state k, sends the client key-method 2 block and reads the
// server's (protocol §5, §6).
func (s *Session) exchangeKeys(ctx context.Context, k *channel.Key) (*keyExchange, error) {
	conn := tls.Client(k.Conn(), s.tlsConf)
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("client: key %d: tls handshake: %w", k.ID, err)
	}
	kx := &keyExchange{conn: conn}
	for _, b := range [][]byte{kx.client.PreMaster[:], kx.client.Random1[:], kx.client.Random2[:]} {
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("client: key-method 2 randoms: %w", err)
		}
	}
	kx.client.Options = s.optionsString()
	kx.client.PeerInfo = s.peerInfo()
	if s.cfg.Username != "" {
		kx.client.HasUserPass = true
		kx.client.Username, kx.client.Password = s.cfg.Username, s.cfg.Password
		if tok := s.AuthToken(); tok != "" {
			kx.client.Password = tok
		}
	}
	block := kx.client.Append(nil)
	if s.cfg.KeyMethod != 0 {
		block[4] = s.cfg.KeyMethod // after the 4 zero bytes
	}
	if _, err := conn.Write(block); err != nil {
		return nil, fmt.Errorf("client: key %d: send key-method 2: %w", k.ID, err)
	}

	// Read the server's block under the handshake deadline; a cancelled ctx unblocks the read.
	if d, ok := ctx.Deadline(); ok {
		_ = k.Conn().SetReadDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = k.Conn().SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var buf []byte
	tmp := make([]byte, 2048)
	for {
		n, err := conn.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if n > 0 {
			m, perr := keymethod.ParseServer(buf)
			if perr == nil {
				kx.server = m
				// header(5) + randoms(64) + options length(2) + options: the rest are the
				// three empty strings (NULs, skipped by the message splitter) and whatever
				// control message shared the read.
				used := 71 + int(binary.BigEndian.Uint16(buf[69:71]))
				kx.leftover = append([]byte(nil), buf[used:]...)
				break
			}
			if !errors.Is(perr, keymethod.ErrIncomplete) {
				return nil, fmt.Errorf("client: key %d: server key-method 2: %w", k.ID, perr)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("client: key %d: read server key-method 2: %w", k.ID, err)
		}
		if len(buf) > 16<<10 {
			return nil, fmt.Errorf("client: key %d: server key-method 2 block too large", k.ID)
		}
	}
	if !stop() {
		return nil, fmt.Errorf("client: key %d: %w", k.ID, ctx.Err())
	}
	_ = k.Conn().SetReadDeadline(time.Time{})
	return kx, nil
}

// optionsString is the client's OCC options string (protocol §6.2); servers only log mismatches.
func (s *Session) optionsString() string {
	c := s.cfg.Ciphers[0]
	proto := "UDPv4"
	if s.cfg.TCP {
		proto = "TCPv4_CLIENT"
	}
	srv := keymethod.ServerOptionsString(proto, c.String(), c.KeySize()*8)
	return strings.TrimSuffix(srv, "tls-server") + "tls-client"
}

// peerInfo builds the newline-separated peer-info (protocol §6.3): what a 2.6 client sends for
// this configuration, then Config.PeerInfo additions and replacements in key order.
func (s *Session) peerInfo() string {
	names := make([]string, len(s.cfg.Ciphers))
	for i, c := range s.cfg.Ciphers {
		names[i] = c.String()
	}
	vars := [][2]string{
		{"IV_VER", ivVer},
		{"IV_PLAT", "linux"},
	}
	if slices.Contains(s.cfg.Ciphers, datacrypto.AES256GCM) && slices.Contains(s.cfg.Ciphers, datacrypto.AES128GCM) {
		vars = append(vars, [2]string{"IV_NCP", "2"})
	}
	vars = append(vars,
		[2]string{"IV_CIPHERS", strings.Join(names, ":")},
		[2]string{"IV_PROTO", strconv.FormatUint(uint64(s.cfg.Proto), 10)},
		[2]string{"IV_GUI_VER", ivGUIVer},
	)
	for _, k := range slices.Sorted(maps.Keys(s.cfg.PeerInfo)) {
		v := s.cfg.PeerInfo[k]
		i := slices.IndexFunc(vars, func(kv [2]string) bool { return kv[0] == k })
		switch {
		case i >= 0 && v == "":
			vars = slices.Delete(vars, i, i+1)
		case i >= 0:
			vars[i][1] = v
		case v != "":
			vars = append(vars, [2]string{k, v})
		}
	}
	var b strings.Builder
	for _, kv := range vars {
		b.WriteString(kv[0] + "=" + kv[1] + "\n")
	}
	return b.String()
}

// awaitPush sends PUSH_REQUEST every 5 s until the control goroutine of key 0 delivers a
// complete PUSH_REPLY or a refusal.
func (s *Session) awaitPush(ctx context.Context, conn *tls.Conn) (push.Reply, error) {
	t := time.NewTicker(pushRequestInterval)
	defer t.Stop()
	for {
		if _, err := conn.Write([]byte("PUSH_REQUEST\x00")); err != nil {
			return push.Reply{}, fmt.Errorf("client: send PUSH_REQUEST: %w", err)
		}
		select {
		case r := <-s.pushed:
			return r.reply, r.err
		case <-t.C:
		case <-ctx.Done():
			return push.Reply{}, fmt.Errorf("client: waiting for PUSH_REPLY: %w", ctx.Err())
		case <-s.done:
			return push.Reply{}, s.err
		}
	}
}

// applyPush takes the session parameters from the reply: the cipher (pushed, else the one in the
// server's options string as a 2.6 client falls back to, protocol §11; either must be one of ours),
// key derivation and peer-id.
func (s *Session) applyPush(r *push.Reply, serverOptions string) error {
	name := r.Cipher
	if name == "" {
		for opt := range strings.SplitSeq(serverOptions, ",") {
			if v, ok := strings.CutPrefix(opt, "cipher "); ok {
				name = v
			}
		}
	}
	if name == "" {
		return fmt.Errorf("%w: the server named no cipher", ErrCipher)
	}
	c, err := datacrypto.ParseCipher(name)
	if err != nil || !slices.Contains(s.cfg.Ciphers, c) {
		return fmt.Errorf("%w: %q", ErrCipher, name)
	}
	s.push = *r
	s.cipher = c
	s.ekm = r.EKM()
	s.dataV2 = r.HasPeerID
	s.peerID = r.PeerID
	return nil
}

// newDataKey derives and builds the data keys of one key state (protocol §7): the TLS exporter when
// the server pushed tls-ekm, else the OpenVPN PRF over the key-method randoms and session ids.
func (s *Session) newDataKey(kx *keyExchange) (*dataKey, error) {
	var key2 *datacrypto.Key2
	if s.ekm {
		state := kx.conn.ConnectionState()
		var err error
		if key2, err = datacrypto.DeriveEKM(state.ExportKeyingMaterial); err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
	} else {
		c, v := &kx.client, &kx.server
		key2 = datacrypto.DerivePRF(&c.PreMaster, &c.Random1, &v.Random1, &c.Random2, &v.Random2, s.localSID, s.remoteSID)
	}
	defer clear(key2[:])
	keys, err := datacrypto.NewKeys(s.cipher, key2, datacrypto.Client)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return &dataKey{keys: keys}, nil
}

// onRenegotiation is the channel's NewKey: the server started a soft reset for key k
// (protocol §12). It runs with the channel's lock held from the receive goroutine, so it only
// starts work.
func (s *Session) onRenegotiation(k *channel.Key) {
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.renegotiate(k) }()
}

// renegotiate runs the TLS handshake and key exchange of a new key state, installs its data keys
// for receiving at once and for sending after renegSwitchDelay (or as soon as the server sends
// with them), then serves the key's control messages. A failure leaves the old key in use.
func (s *Session) renegotiate(k *channel.Key) {
	if !s.connected.Load() {
		s.fail(errors.New("client: the server renegotiated before its push reply"))
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, DefaultHandWindow)
	defer cancel()
	kx, err := s.exchangeKeys(ctx, k)
	if err != nil {
		if s.Err() == nil {
			s.log.Warn("renegotiation failed", "key_id", k.ID, "err", err)
		}
		return
	}
	dk, err := s.newDataKey(kx)
	if err != nil {
		s.log.Warn("renegotiation failed", "key_id", k.ID, "err", err)
		return
	}
	dk.id = k.ID
	// Keep the key in use for sending as the lame duck; forget any older one.
	cur := s.sendKey.Load()
	for i := range s.keys {
		if uint8(i) != k.ID && (cur == nil || uint8(i) != cur.id) {
			s.keys[i].Store(nil)
		}
	}
	s.keys[k.ID].Store(dk)
	s.next.Store(dk)
	time.AfterFunc(renegSwitchDelay, func() { s.promote(dk) })
	s.setControl(kx.conn, k.ID)
	s.log.Info("renegotiated", "key_id", k.ID)
	s.controlLoop(kx.conn, kx.leftover)
}

// promote makes dk, a renegotiated key, the key data is sent with.
func (s *Session) promote(dk *dataKey) {
	if s.next.CompareAndSwap(dk, nil) {
		s.sendKey.Store(dk)
	}
}

// isTransient reports socket errors that do not end a session: an ICMP port unreachable for an
// earlier datagram surfaces as ECONNREFUSED on a connected UDP socket, for one read (the server
// may not listen yet, or restarted).
func isTransient(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
