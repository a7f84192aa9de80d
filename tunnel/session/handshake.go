package session

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/keymethod"
	"github.com/cvpn/cvpn/tls/push"
	"github.com/cvpn/cvpn/tunnel/counters"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/dataplane"
)

// runKey drives one key state of a session: the TLS handshake over the control channel, the
// key-method 2 exchange, admission (key 0) or the identity check (renegotiation), data-key
// installation, and then the control messages (PUSH_REQUEST, EXIT) until the key state or the
// session ends.
func (s *Session) runKey(k *channel.Key) {
	m := s.m
	deadline := s.since.Add(m.cfg.HandWindow)
	if k.ID != 0 {
		// Each renegotiation attempt gets a third of the hand window, so a failed one is
		// retried within it; the session ends when the window passes without a new key.
		s.mu.Lock()
		deadline = s.renegSince.Add(m.cfg.HandWindow)
		if try := s.renegTry.Add(m.cfg.HandWindow / 3); try.Before(deadline) {
			deadline = try
		}
		s.mu.Unlock()
	}
	// The deadline is on the injected clock; the context runs on the real one.
	ctx, cancel := context.WithTimeout(context.Background(), deadline.Sub(m.cfg.Now()))
	defer cancel()
	failed := func(reason string) {
		if k.ID == 0 {
			s.teardown(reason)
		} else {
			s.renegotiationFailed(k.ID)
		}
	}
	conn := tls.Server(k.Conn(), s.set.tls)
	if err := conn.HandshakeContext(ctx); err != nil {
		code, cert, refused := certificateRefusal(err, conn.ConnectionState())
		switch {
		case s.state.Load() == stateClosed:
		case refused:
			// A refused identity is always recorded, apart from the rate-limited log of
			// garbage packets; handshake rates per source bound how often.
			m.countRefusal()
			m.log.Warn("authentication refused", "remote", s.link.Remote(), "key_id", k.ID, "reason", err)
			s.refused(code, err.Error(), cert, "")
		default:
			m.drop(counters.TLSHandshake, s.link.Remote(), "err", err)
		}
		failed("tls handshake failed")
		return
	}
	if d, ok := ctx.Deadline(); ok {
		_ = k.Conn().SetReadDeadline(d)
	}
	msg, err := readKeyMethod(conn)
	if err != nil {
		m.log.Warn("key exchange failed", "remote", s.link.Remote(), "key_id", k.ID, "err", err)
		if errors.Is(err, keymethod.ErrKeyMethod) {
			// TLS is up, so the client can be told why. It reads a key-method block before any
			// control message, so one goes first (its randoms are never used).
			var reply keymethod.ServerMessage
			_, _ = rand.Read(reply.Random1[:])
			_, _ = rand.Read(reply.Random2[:])
			c := s.set.Ciphers[0]
			reply.Options = keymethod.ServerOptionsString(s.link.Proto(), c.String(), c.KeySize()*8)
			_, _ = conn.Write(reply.Append(nil))
			s.tlsConn.Store(conn)
			const why = "unsupported key method: cvpn speaks key-method 2 (OpenVPN 2.x default)"
			s.refused(RefusedKeyMethod, why, peerCertificate(conn), "")
			s.goodbye(authFailed(why), "unsupported key method")
			return
		}
		failed("key exchange failed")
		return
	}
	_ = k.Conn().SetReadDeadline(time.Time{})
	peer := keymethod.ParsePeerInfo(msg.PeerInfo)
	state := conn.ConnectionState()

	var adm *admission
	var reuser *User
	var refusal error
	if k.ID == 0 {
		adm, refusal = s.admit(ctx, &state, &msg, &peer)
	} else {
		reuser, refusal = s.reauthenticate(ctx, &state, &msg, &peer)
	}

	// The server's key-method 2 block always answers the client's, even before AUTH_FAILED: the
	// client reads it as the next TLS record.
	cipher := s.set.Ciphers[0]
	if adm != nil {
		cipher = adm.cipher
	} else if info := s.peer.Identity(); info != nil {
		cipher = info.Cipher
	}
	var reply keymethod.ServerMessage
	if _, err := rand.Read(reply.Random1[:]); err != nil {
		failed("random")
		return
	}
	_, _ = rand.Read(reply.Random2[:])
	reply.Options = keymethod.ServerOptionsString(s.link.Proto(), cipher.String(), cipher.KeySize()*8)
	if _, err := conn.Write(reply.Append(nil)); err != nil {
		failed("key exchange failed")
		return
	}
	if refusal == nil && adm != nil && adm.pending != nil {
		adm, refusal = s.awaitLogin(conn, adm, &state, &msg, &peer)
	}
	if refusal != nil {
		var r *Refusal
		if !errors.As(refusal, &r) {
			m.log.Error("admission failed", "remote", s.link.Remote(), "err", refusal)
			r = &Refusal{Message: "authentication failed"}
		}
		m.log.Warn("authentication refused", "remote", s.link.Remote(), "key_id", k.ID, "user", adm.userOf(), "reason", r.loggable())
		code := r.Code
		if code == "" {
			code = RefusedByHook
		}
		user := msg.Username
		if adm != nil && adm.info != nil {
			user = adm.info.User
		}
		s.refused(code, r.loggable(), peerCertificate(conn), user)
		s.tlsConn.Store(conn)
		bye := authFailed(r.Message)
		if r.Logged != "" {
			bye.logged = "AUTH_FAILED," + r.Logged
		}
		s.goodbye(bye, "refused: "+r.loggable())
		return
	}

	ekm := s.ekm()
	if adm != nil {
		ekm = adm.ekm
	}
	key2, err := s.deriveKey2(ekm, &state, &msg, &reply)
	if err != nil {
		m.log.Error("derive data keys", "err", err)
		failed("key derivation failed")
		return
	}
	keys, err := datacrypto.NewKeys(cipher, key2, datacrypto.Server)
	if err != nil {
		m.log.Error("install data keys", "err", err)
		failed("key installation failed")
		return
	}
	dk := &dataplane.DataKey{ID: k.ID, Keys: keys, Created: m.cfg.Now()}
	s.tlsConn.Store(conn)
	if k.ID == 0 {
		if !s.establish(adm, dk) {
			return
		}
		info := s.info.Load()
		m.log.Info("client connected", "user", info.User, "cn", info.CommonName, "groups", info.Groups, addressAttr(info),
			"peer_id", info.PeerID, "remote", s.link.Remote(), "cipher", info.Cipher, "tls", tls.VersionName(state.Version),
			"key_derivation", map[bool]string{true: "tls-ekm", false: "prf"}[ekm], "version", info.Version, "connection_id", info.ConnectionID)
		if peer.Proto&keymethod.ProtoRequestPush != 0 {
			s.sendPushReply(conn)
		}
	} else {
		s.peer.InstallKey(dk, false)
		s.renegotiated(m.cfg.Now(), k)
		s.reuse(reuser, peerCertificate(conn))
		m.log.Info("client renegotiated", "user", s.user(), "key_id", k.ID)
		if extra := s.userPush.Load(); extra != nil && len(*extra) > 0 {
			// A renewed auth-token goes out alone after the new key, as OpenVPN's
			// send_push_reply_auth_token does (src/openvpn/push.c).
			for _, msg := range push.Split(*extra, push.MaxMessageLen) {
				if _, err := conn.Write([]byte(msg + "\x00")); err != nil {
					break
				}
			}
		}
	}
	s.controlLoop(conn, k)
}

// admission is what admit decided for key 0: the admitted session, or a login still pending.
type admission struct {
	info    *Info
	ident   *dataplane.Identity
	cipher  datacrypto.Cipher
	ekm     bool
	proto   uint32   // IV_PROTO bits the client announced
	pending *Pending // the hooks deferred the login: info and ident are not made yet
}

// admit authenticates and authorizes the client of key 0 through the hooks, negotiates its
// cipher and assigns its address and peer-id. The certificate was verified by TLS against the
// client root CA. A login the hooks defer comes back as an admission with only pending and
// cipher set (awaitLogin completes it).
func (s *Session) admit(ctx context.Context, state *tls.ConnectionState, msg *keymethod.ClientMessage, peer *keymethod.PeerInfo) (*admission, error) {
	req := s.authRequest(state, msg, peer)
	user, err := s.m.hooks.Authenticate(ctx, req)
	var pend *Pending
	if errors.As(err, &pend) {
		cipher, ok := negotiateCipher(s.set.Ciphers, msg, peer)
		if !ok {
			return nil, &Refusal{Message: "Data channel cipher negotiation failed (no shared cipher)", Code: RefusedNoSharedCipher}
		}
		return &admission{pending: pend, cipher: cipher}, nil
	}
	if err != nil {
		return nil, err
	}
	return s.admitUser(ctx, req, user, msg, peer)
}

// awaitLogin tells the client its login is pending and waits for it (AUTH_PENDING, then
// INFO_PRE with what the hooks gave; protocol §10.4), holding the session pending meanwhile,
// then admits the user it yields.
func (s *Session) awaitLogin(conn *tls.Conn, adm *admission, state *tls.ConnectionState, msg *keymethod.ClientMessage, peer *keymethod.PeerInfo) (*admission, error) {
	m := s.m
	pend := adm.pending
	timeout := min(max(pend.Timeout, m.cfg.HandWindow), MaxAuthPending)
	until := m.cfg.Now().Add(timeout)
	s.authUntil.Store(until.UnixNano())
	pending := "AUTH_PENDING"
	if peer.Proto&keymethod.ProtoAuthPending != 0 {
		pending += ",timeout " + strconv.Itoa(int(timeout/time.Second))
	}
	for _, line := range []string{pending, "INFO_PRE," + pend.Extra} {
		if _, err := conn.Write([]byte(line + "\x00")); err != nil {
			return nil, fmt.Errorf("telling the client its login is pending: %w", err)
		}
	}
	m.log.Info("authentication pending", "remote", s.link.Remote(), "timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), until.Sub(m.cfg.Now()))
	defer cancel()
	go func() {
		select {
		case <-s.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	user, err := pend.Wait(ctx)
	if err != nil {
		if ctx.Err() != nil && s.state.Load() != stateClosed {
			return nil, &Refusal{Message: "the login was not completed in time", Code: RefusedByHook}
		}
		return nil, err
	}
	return s.admitUser(ctx, s.authRequest(state, msg, peer), user, msg, peer)
}

// admitUser negotiates the cipher of an authenticated user's session, assigns its address and
// peer-id and asks the hooks' OnConnect.
func (s *Session) admitUser(ctx context.Context, req *AuthRequest, user *User, msg *keymethod.ClientMessage, peer *keymethod.PeerInfo) (*admission, error) {
	m := s.m
	cipher, ok := negotiateCipher(s.set.Ciphers, msg, peer)
	if !ok {
		return nil, &Refusal{Message: "Data channel cipher negotiation failed (no shared cipher)", Code: RefusedNoSharedCipher}
	}
	lease, err := m.cfg.Pool.AllocateLease()
	if err != nil {
		return nil, &Refusal{Message: fmt.Sprintf("no free client address (all %d in use)", m.cfg.Pool.Capacity()), Code: RefusedPoolExhausted}
	}
	s.mu.Lock()
	closed := s.state.Load() == stateClosed
	if !closed {
		s.lease = lease // released by teardown from now on
	}
	s.mu.Unlock()
	if closed {
		_ = m.cfg.Pool.Release(lease.Key())
		return nil, &Refusal{Message: "session ended"}
	}
	if lease.Addr.IsValid() && lease.Addr6.IsValid() {
		// One client, one NAT share, whichever family its flows use; teardown's ForgetClient
		// undoes it. A lease index always pairs the same two addresses, so this cannot clash.
		if err := m.cfg.NAT.Pair(lease.Addr, lease.Addr6); err != nil {
			m.log.Error("pairing the client's addresses in the NAT table", "addr", lease.Addr, "addr6", lease.Addr6, "err", err)
		}
	}
	info := &Info{
		ID:           s.id,
		ConnectionID: s.connID,
		User:         user.Name,
		Username:     user.Username,
		Groups:       user.Groups,
		Certificate:  req.Certificate,
		Address:      lease.Addr,
		Address6:     lease.Addr6,
		PeerID:       uint32(lease.Index),
		Cipher:       cipher.String(),
		Transport:    s.link.Proto(),
		// Copies: peer-info's values are slices of the whole block, which the session
		// would otherwise keep for as long as it lives.
		Version:         strings.Clone(peer.Version),
		Platform:        strings.Clone(peer.Platform),
		PlatformVersion: strings.Clone(peer.Raw["IV_PLAT_VER"]),
		Remote:          s.link.Remote(),
		Since:           s.since,
		Listener:        s.link.Listener().Addr(),
	}
	if req.Certificate != nil {
		info.CommonName = req.Certificate.Subject.CommonName
	}
	if err := m.hooks.OnConnect(ctx, info); err != nil {
		// The admission names the refused user in the log; its address goes back at teardown.
		return &admission{info: info, cipher: cipher}, err
	}
	if len(user.Push) > 0 {
		extra := slices.Clone(user.Push)
		s.userPush.Store(&extra)
	}
	set := s.set
	return &admission{
		cipher: cipher,
		info:   info,
		ident: &dataplane.Identity{
			Addr:        lease.Addr,
			Addr6:       lease.Addr6,
			PeerID:      uint32(lease.Index),
			User:        user.Name,
			Groups:      user.Groups,
			Cipher:      cipher,
			DataV2:      peer.Proto&keymethod.ProtoDataV2 != 0,
			Framing:     dataplane.ChooseFraming(msg.Options, peer),
			Ping:        set.Ping,
			PingRestart: set.PingRestart,
		},
		ekm:   peer.Proto&keymethod.ProtoTLSKeyExport != 0,
		proto: peer.Proto,
	}, nil
}

// establish publishes an admitted session: identity and first key on the peer, out of the
// pending tables, into the data plane. A session the client had at the same address before is
// replaced only now, when the new one has authenticated. It reports false when the session was
// torn down meanwhile.
func (s *Session) establish(adm *admission, dk *dataplane.DataKey) bool {
	m := s.m
	adm.info.Established = m.cfg.Now()
	adm.info.HandshakeDuration = adm.info.Established.Sub(s.since)
	s.info.Store(adm.info)
	s.proto.Store(adm.proto)
	s.ekmFlag.Store(adm.ekm)
	s.peer.SetIdentity(adm.ident)
	s.peer.InstallKey(dk, true)
	displaced, ok := m.established(s)
	if !ok {
		return false
	}
	for _, old := range displaced {
		limit := m.set.Load().MaxConnectionsPerUser
		old.goodbye(halt(fmt.Sprintf("replaced by a newer session of %s (at most %d at once)", adm.info.User, limit)),
			"connection limit of the user reached; a newer session replaces this one")
	}
	s.renegotiated(m.cfg.Now(), nil)
	if old := sessionOf(m.plane.Publish(s.peer)); old != nil && old != s {
		old.teardown("replaced by a new session from the same address")
	}
	if s.state.Load() == stateClosed { // lost a race with teardown: undo
		m.plane.Remove(s.peer)
		return false
	}
	for _, e := range m.cfg.Events {
		e.Connected(s.status())
	}
	return true
}

// peerCertificate returns the client's certificate of a TLS connection, or nil.
func peerCertificate(conn *tls.Conn) *x509.Certificate {
	if st := conn.ConnectionState(); len(st.PeerCertificates) > 0 {
		return st.PeerCertificates[0]
	}
	return nil
}

// userOf names the user of an admission, "" before one.
func (a *admission) userOf() string {
	if a == nil || a.info == nil {
		return ""
	}
	return a.info.User
}

// ekm reports whether the session's data keys come from the TLS exporter.
func (s *Session) ekm() bool { return s.ekmFlag.Load() }

// authRequest is what the client presented in a TLS handshake and key-method 2 block.
func (s *Session) authRequest(state *tls.ConnectionState, msg *keymethod.ClientMessage, peer *keymethod.PeerInfo) *AuthRequest {
	req := &AuthRequest{Username: msg.Username, Password: msg.Password, HasUserPass: msg.HasUserPass,
		Peer: peer, Remote: s.link.Remote(), Transport: s.link.Proto(), ConnectionID: s.connID}
	if len(state.PeerCertificates) > 0 {
		req.Certificate = state.PeerCertificates[0]
	}
	return req
}

// reauthenticate asks the hooks whether a renegotiation may proceed: the client must present
// the identity it was admitted with and still be allowed in.
func (s *Session) reauthenticate(ctx context.Context, state *tls.ConnectionState, msg *keymethod.ClientMessage, peer *keymethod.PeerInfo) (*User, error) {
	info := s.info.Load()
	if info == nil {
		return nil, &Refusal{Message: "renegotiation before admission", Code: RefusedIdentity}
	}
	return s.m.hooks.Reauthenticate(ctx, info, s.authRequest(state, msg, peer))
}

// reuse applies what a renegotiation's authentication found: new groups replace the session's
// (the data plane recomputes what they reach on its next packet), the push options (a
// renewed auth-token) are kept for sending, and the certificate the client presented (of the
// identity it was admitted with, perhaps renewed) becomes the session's: revocation is checked
// against the certificate in use, and the session keeps one parsed copy, the newest TLS
// connection's, instead of that and the first one's (about 3 KiB).
func (s *Session) reuse(u *User, cert *x509.Certificate) {
	info := s.info.Load()
	if info == nil {
		return
	}
	next := *info
	changed := false
	if cert != nil && cert != info.Certificate {
		next.Certificate, changed = cert, true
	}
	if u != nil && !slices.Equal(info.Groups, u.Groups) {
		next.Groups, changed = slices.Clone(u.Groups), true
		if id := s.peer.Identity(); id != nil {
			nid := *id
			nid.Groups = next.Groups
			s.peer.SetIdentity(&nid)
		}
		s.m.log.Info("user's groups changed", "user", info.User, "from", info.Groups, "to", next.Groups)
	}
	if changed {
		s.info.Store(&next)
	}
	if u != nil {
		extra := slices.Clone(u.Push)
		s.userPush.Store(&extra)
	}
}

// readKeyMethod reads TLS records until a whole client key-method 2 block has arrived.
func readKeyMethod(conn net.Conn) (keymethod.ClientMessage, error) {
	// A client's block with its peer-info is a few hundred bytes: read straight into one
	// buffer, grown only for a larger one.
	buf := make([]byte, 0, 1024)
	for {
		if cap(buf)-len(buf) < 256 {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
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

func (s *Session) deriveKey2(ekm bool, state *tls.ConnectionState, msg *keymethod.ClientMessage, reply *keymethod.ServerMessage) (*datacrypto.Key2, error) {
	if ekm {
		return datacrypto.DeriveEKM(state.ExportKeyingMaterial)
	}
	return datacrypto.DerivePRF(&msg.PreMaster, &msg.Random1, &reply.Random1, &msg.Random2, &reply.Random2, s.remoteSID, s.localSID), nil
}
