package tunnel

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/keymethod"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
)

// authFailure is a refusal the client is told about as AUTH_FAILED,<reason>.
type authFailure struct{ reason string }

func (a *authFailure) Error() string { return a.reason }

// runKey drives one key state of a client: the TLS handshake over the control channel, the
// key-method 2 exchange, authentication and address assignment (key 0), data-key installation,
// and then the control messages (PUSH_REQUEST, EXIT) until the key state or the client ends.
func (s *Server) runKey(c *client, k *channel.Key) {
	conn := tls.Server(k.Conn(), s.tlsConf)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandWindow)
	defer cancel()
	log := s.log.With("remote", c.remote(), "key_id", k.ID)

	if err := conn.HandshakeContext(ctx); err != nil {
		if !c.closed.Load() {
			s.drops.add(DropTLSHandshake, "remote", c.remote(), "err", err)
		}
		if k.ID == 0 {
			s.disconnect(c, "tls handshake failed")
		}
		return
	}
	_ = k.Conn().SetReadDeadline(time.Now().Add(s.cfg.HandWindow))
	msg, err := readKeyMethod(conn)
	if err != nil {
		log.Warn("key exchange failed", "err", err)
		if errors.Is(err, keymethod.ErrKeyMethod) {
			// TLS is up, so the client can be told why. It reads a key-method block before any
			// control message, so one goes first (its randoms are never used).
			var reply keymethod.ServerMessage
			_, _ = rand.Read(reply.Random1[:])
			_, _ = rand.Read(reply.Random2[:])
			reply.Options = keymethod.ServerOptionsString(c.link.proto(), s.cfg.Ciphers[0].String(), s.cfg.Ciphers[0].KeySize()*8)
			_, _ = conn.Write(reply.Append(nil))
			s.refuse(c, conn, k, "unsupported key method: cvpn speaks key-method 2 (OpenVPN 2.x default)")
			return
		}
		if k.ID == 0 {
			s.disconnect(c, "key exchange failed")
		}
		return
	}
	_ = k.Conn().SetReadDeadline(time.Time{})
	peer := keymethod.ParsePeerInfo(msg.PeerInfo)
	state := conn.ConnectionState()
	cn := ""
	var groups []string
	if len(state.PeerCertificates) > 0 {
		leaf := state.PeerCertificates[0]
		cn = leaf.Subject.CommonName
		groups = leaf.Subject.OrganizationalUnit
	}

	var failure *authFailure
	if k.ID == 0 {
		if len(state.PeerCertificates) > 0 {
			c.cert = state.PeerCertificates[0]
		}
		failure = s.admit(c, cn, groups, &msg, &peer)
	} else if cn != c.commonName {
		failure = &authFailure{"renegotiation presented another identity"}
	}

	// The server's key-method 2 block always answers the client's, even before AUTH_FAILED: the
	// client reads it as the next TLS record.
	var reply keymethod.ServerMessage
	if _, err := rand.Read(reply.Random1[:]); err != nil {
		log.Error("random", "err", err)
		return
	}
	_, _ = rand.Read(reply.Random2[:])
	reply.Options = keymethod.ServerOptionsString(c.link.proto(), c.cipher.String(), c.cipher.KeySize()*8)
	if _, err := conn.Write(reply.Append(nil)); err != nil {
		return
	}

	if failure != nil {
		log.Warn("client refused", "cn", cn, "reason", failure.reason)
		s.refuse(c, conn, k, failure.reason)
		return
	}

	key2, err := s.deriveKey2(c, &state, &msg, &reply)
	if err != nil {
		log.Error("derive data keys", "err", err)
		s.disconnect(c, "key derivation failed")
		return
	}
	keys, err := datacrypto.NewKeys(c.cipher, key2, datacrypto.Server)
	if err != nil {
		log.Error("install data keys", "err", err)
		s.disconnect(c, "key installation failed")
		return
	}
	dk := &dataKey{id: k.ID, keys: keys, created: s.cfg.Now()}
	c.keys[k.ID].Store(dk)
	c.tlsConn.Store(conn)
	if k.ID == 0 {
		c.sendKey.Store(dk)
		c.renegAt.Store(s.cfg.Now().Add(s.cfg.Reneg).UnixNano())
		s.publish(c)
		log.Info("client connected", "cn", cn, "groups", groups, "address", c.addr, "peer_id", c.peerID,
			"cipher", c.cipher, "tls", tls.VersionName(state.Version), "key_derivation", map[bool]string{true: "tls-ekm", false: "prf"}[c.ekm],
			"version", peer.Version)
		if peer.Proto&keymethod.ProtoRequestPush != 0 {
			s.sendPushReply(c, conn)
		}
	} else {
		c.renegAt.Store(s.cfg.Now().Add(s.cfg.Reneg).UnixNano())
		log.Info("client renegotiated", "cn", cn)
	}
	s.controlLoop(c, conn, k)
}

// readKeyMethod reads TLS records until a whole client key-method 2 block has arrived.
func readKeyMethod(conn net.Conn) (keymethod.ClientMessage, error) {
	var buf []byte
	tmp := make([]byte, 4096)
	for {
		n, err := conn.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if n > 0 {
			msg, perr := keymethod.ParseClient(buf)
			if perr == nil {
				return msg, nil
			}
			if !errors.Is(perr, keymethod.ErrIncomplete) {
				return msg, perr
			}
		}
		if err != nil {
			return keymethod.ClientMessage{}, fmt.Errorf("read key-method 2: %w", err)
		}
		if len(buf) > 64<<10 {
			return keymethod.ClientMessage{}, errors.New("key-method 2 block too large")
		}
	}
}

// admit authenticates and authorizes the client of key 0 and assigns its address, peer-id and
// cipher. The certificate was verified by TLS against the client root CA.
func (s *Server) admit(c *client, cn string, groups []string, msg *keymethod.ClientMessage, peer *keymethod.PeerInfo) *authFailure {
	c.commonName = cn
	c.groupNames = groups
	cipher, ok := negotiateCipher(s.cfg.Ciphers, msg, peer)
	if !ok {
		return &authFailure{"Data channel cipher negotiation failed (no shared cipher)"}
	}
	c.cipher = cipher
	c.dataV2 = peer.Proto&keymethod.ProtoDataV2 != 0
	c.ekm = peer.Proto&keymethod.ProtoTLSKeyExport != 0
	c.proto = peer.Proto
	c.framing = chooseFraming(msg.Options, peer)
	addr, err := s.cfg.Pool.Allocate()
	if err != nil {
		return &authFailure{fmt.Sprintf("no free client address (all %d in use)", s.cfg.Pool.Capacity())}
	}
	idx, _ := s.cfg.Pool.Index(addr)
	c.addr = addr
	c.peerID = uint32(idx)
	return nil
}

// negotiateCipher walks the server's ciphers in order and takes the first the client announced
// (IV_CIPHERS; IV_NCP=2 means AES-256-GCM and AES-128-GCM; else the cipher of its options string).
func negotiateCipher(server []datacrypto.Cipher, msg *keymethod.ClientMessage, peer *keymethod.PeerInfo) (datacrypto.Cipher, bool) {
	client := peer.Ciphers
	if len(client) == 0 && peer.NCP >= 2 {
		client = []string{"AES-256-GCM", "AES-128-GCM"}
	}
	if len(client) == 0 {
		for _, opt := range strings.Split(msg.Options, ",") {
			if name, ok := strings.CutPrefix(opt, "cipher "); ok {
				client = []string{name}
			}
		}
	}
	for _, sc := range server {
		if slices.ContainsFunc(client, func(n string) bool { return strings.EqualFold(n, sc.String()) }) {
			return sc, true
		}
	}
	return 0, false
}

func (s *Server) deriveKey2(c *client, state *tls.ConnectionState, msg *keymethod.ClientMessage, reply *keymethod.ServerMessage) (*datacrypto.Key2, error) {
	if c.ekm {
		return datacrypto.DeriveEKM(state.ExportKeyingMaterial)
	}
	return datacrypto.DerivePRF(&msg.PreMaster, &msg.Random1, &reply.Random1, &msg.Random2, &reply.Random2, c.remoteSID, c.localSID), nil
}

// publish makes an authenticated client reachable by the data path.
func (s *Server) publish(c *client) {
	s.mu.Lock()
	if !c.authenticated.Swap(true) {
		s.handshakes--
	}
	s.mu.Unlock()
	s.peers[c.peerID].Store(c)
	if c.closed.Load() { // lost a race with disconnect: undo
		s.peers[c.peerID].CompareAndSwap(c, nil)
	}
}

// refuse tells the client why it is refused and closes the session once the message was acked
// (or after a few seconds).
func (s *Server) refuse(c *client, conn *tls.Conn, k *channel.Key, reason string) {
	_, _ = conn.Write([]byte("AUTH_FAILED," + reason + "\x00"))
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && !c.ctl.Idle(k.ID) && !c.closed.Load() {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let the client read it before the session goes
	s.disconnect(c, "refused: "+reason)
}

// controlIdle is how long a control-message reader waits for more before it parks: an idle
// session keeps no goroutine for its control channel, and the channel starts one when a message
// arrives.
const controlIdle = 250 * time.Millisecond

// keyReader reads the control messages of an established key state. Its goroutine comes and goes.
type keyReader struct {
	s       *Server
	c       *client
	conn    *tls.Conn
	k       *channel.Key
	pending []byte // a message split across reads
}

// controlLoop handles the control messages of an established key state until it parks.
func (s *Server) controlLoop(c *client, conn *tls.Conn, k *channel.Key) {
	r := &keyReader{s: s, c: c, conn: conn, k: k}
	k.SetWake(r.run)
	r.run()
}

func (r *keyReader) run() {
	buf := make([]byte, 2048)
	for {
		_ = r.k.Conn().SetReadDeadline(time.Now().Add(controlIdle))
		n, err := r.conn.Read(buf)
		if n > 0 && !r.handle(buf[:n]) {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if r.k.Park() {
					return
				}
				continue
			}
			return
		}
	}
}

// handle processes received control-channel bytes; false ends the key state's reader for good.
func (r *keyReader) handle(b []byte) bool {
	s, c := r.s, r.c
	var msgs []string
	msgs, r.pending = keymethod.SplitMessages(append(r.pending, b...))
	if len(r.pending) > 2048 {
		s.disconnect(c, "oversized control message")
		return false
	}
	for _, m := range msgs {
		switch {
		case m == "PUSH_REQUEST":
			if !c.pushed.Load() {
				s.sendPushReply(c, r.conn)
			}
		case m == "EXIT" || strings.HasPrefix(m, "EXIT,"):
			s.disconnect(c, "client sent EXIT")
			return false
		default:
			s.log.Debug("control message ignored", "cn", c.commonName, "msg", m)
		}
	}
	return true
}

// sendPushReply sends the client its configuration.
func (s *Server) sendPushReply(c *client, conn *tls.Conn) {
	if c.pushed.Swap(true) {
		return
	}
	pol := s.policy.Load()
	mask := net.CIDRMask(s.cfg.Pool.Prefix().Bits(), 32)
	opts := []string{
		"route-gateway " + s.cfg.Pool.Gateway().String(),
		"topology subnet",
		fmt.Sprintf("ping %d", int(s.cfg.Ping.Seconds())),
		fmt.Sprintf("ping-restart %d", int(s.cfg.PingRestart.Seconds())),
	}
	if !pol.SplitTunnel {
		opts = append(opts, "redirect-gateway def1")
	}
	for _, r := range pol.Routes {
		opts = append(opts, fmt.Sprintf("route %s %s", r.Addr(), net.IP(net.CIDRMask(r.Bits(), 32))))
	}
	for _, d := range pol.DNS {
		opts = append(opts, "dhcp-option DNS "+d.String())
	}
	if f := c.framing.pushOption(); f != "" {
		opts = append(opts, f)
	}
	opts = append(opts, fmt.Sprintf("ifconfig %s %s", c.addr, net.IP(mask)))
	if c.dataV2 { // as OpenVPN: peer-id only to clients that announced P_DATA_V2
		opts = append(opts, fmt.Sprintf("peer-id %d", c.peerID))
	}
	opts = append(opts, "cipher "+c.cipher.String())
	// protocol-flags is understood by clients announcing cc-exit; older EKM clients get key-derivation.
	switch {
	case c.proto&keymethod.ProtoCCExit != 0 && c.ekm:
		opts = append(opts, "protocol-flags cc-exit tls-ekm")
	case c.proto&keymethod.ProtoCCExit != 0:
		opts = append(opts, "protocol-flags cc-exit")
	case c.ekm:
		opts = append(opts, "key-derivation tls-ekm")
	}
	for _, msg := range pushMessages(opts, 1024) {
		if _, err := conn.Write([]byte(msg + "\x00")); err != nil {
			return
		}
	}
	if s.cfg.Banner != "" {
		_, _ = conn.Write([]byte("INFO," + printable(s.cfg.Banner) + "\x00"))
	}
}

// pushMessages splits options into PUSH_REPLY messages of at most size bytes, marking all but the
// last with push-continuation 2 and the last with push-continuation 1 when split (push.c).
func pushMessages(opts []string, size int) []string {
	const cont = ",push-continuation 2"
	var msgs []string
	cur := "PUSH_REPLY"
	for _, o := range opts {
		if len(cur)+1+len(o)+len(cont) > size && cur != "PUSH_REPLY" {
			msgs = append(msgs, cur+cont)
			cur = "PUSH_REPLY"
		}
		cur += "," + o
	}
	if len(msgs) > 0 {
		cur += ",push-continuation 1"
	}
	return append(msgs, cur)
}

// printable replaces what a client refuses in a control message (CR, LF, other control bytes)
// with spaces.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
