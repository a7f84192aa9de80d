// Package client is an OpenVPN 2.6 client over UDP, built from the same codec and crypto packages
// as the cvpn server (tls/packet, tls/tlscrypt, tls/channel, tls/keymethod, tls/push,
// tunnel/datacrypto, tunnel/replay). It is the engine of the load generator and of in-process
// engine tests: Connect runs the whole handshake and returns a Session that moves IP packets
// through the tunnel.
//
// It owns the client side of the protocol: the hard reset with the 2.6 cookie flow
// (docs/protocol.md §4), the TLS client with `remote-cert-tls server` checks (protocol §5), the
// client key-method 2 block and peer-info (protocol §6), PUSH_REQUEST/PUSH_REPLY (protocol §10.1),
// data-key derivation by EKM or PRF (protocol §7), the data channel (protocol §8), keepalive
// (protocol §13), answering server-initiated renegotiation (protocol §12) and EXIT (protocol §9.3),
// over UDP or TCP (packets framed with their 2-byte length, protocol §1), with the control channel
// plain, under tls-crypt or under tls-auth. It does not own a TUN device, routes, DNS, compression
// framing (it announces none), tls-crypt-v2, dynamic tls-crypt or reconnection: a failed session
// stays failed and the caller dials a new one.
//
// Goroutines of one Session (two while it runs, plus one per renegotiation in progress):
//   - receive: reads the UDP socket or the TCP connection; feeds control packets to the channel, opens data packets in
//     place, checks replay, drops pings and queues IP packets for ReadPacket (a small bounded
//     queue of pooled buffers; a full queue drops and counts).
//   - control, one per live key state: reads the TLS plaintext of its key (PUSH_REPLY,
//     AUTH_FAILED, RESTART, HALT, ...). The goroutine of a renegotiated key first runs that key's
//     TLS handshake and key exchange.
//   - cookie re-proof, during Connect only: until the server answers on the channel, re-sends the
//     ack of its reset every second, in case the packet that proved the cookie was lost.
//   - timers, not goroutines: the channel's retransmission timer and the keepalive timer.
//
// Memory: no buffer is held per session except the one the receive goroutine reads into (2 KB);
// send buffers and queued packets come from a shared pool. Goroutine stacks grown by the TLS
// handshake and the crypto/tls state dominate: about 130 KB per session measured for client and
// in-process cvpn server together.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/keymethod"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/push"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
)

// DefaultProto is the IV_PROTO bit set announced when Config.Proto is zero: the 2.6 bits this
// client implements (DATA_V2, REQUEST_PUSH, TLS_KEY_EXPORT, CC_EXIT).
const DefaultProto = keymethod.ProtoDataV2 | keymethod.ProtoRequestPush | keymethod.ProtoTLSKeyExport | keymethod.ProtoCCExit

// Protocol timings (OpenVPN defaults, protocol §10.1, §12, §13).
const (
	// DefaultHandWindow bounds Connect when its context has no deadline, and each renegotiation.
	DefaultHandWindow = 60 * time.Second
	// pushRequestInterval is how often PUSH_REQUEST is repeated until a reply (PUSH_REQUEST_INTERVAL).
	pushRequestInterval = 5 * time.Second
	// exitAckWait bounds how long Close waits for the server to acknowledge EXIT.
	exitAckWait = 2 * time.Second
	// renegSwitchDelay is how long a renegotiated key only receives before it is also used to
	// send, unless the server sends with it first: the server installs its keys around the time
	// the client does, and a packet under a key it does not have yet is lost.
	renegSwitchDelay = 2 * time.Second
)

// Config describes one client session.
type Config struct {
	// Server is the address of the OpenVPN server: UDP, or TCP with TCP set.
	Server netip.AddrPort
	// TCP connects over TCP (OpenVPN proto tcp-client) instead of UDP.
	TCP bool
	// Certificate is the client identity for mutual TLS; empty sends no certificate.
	Certificate tls.Certificate
	// RootCAs verifies the server certificate, which must also carry keyUsage and extended key
	// usage serverAuth, as `remote-cert-tls server` requires. Required.
	RootCAs *x509.CertPool
	// TLSCrypt, when set, wraps the control channel with tls-crypt in the client direction.
	TLSCrypt *tlscrypt.StaticKey
	// TLSAuth, when set, authenticates the control channel with tls-auth instead.
	TLSAuth *TLSAuth
	// Ciphers are the data ciphers announced in IV_CIPHERS, in order of preference; nil means
	// AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305 (the 2.6 default data-ciphers). A pushed
	// cipher outside this list fails Connect with ErrCipher.
	Ciphers []datacrypto.Cipher
	// Proto is the IV_PROTO bit set to announce (keymethod.Proto*); zero means DefaultProto.
	// Leaving out ProtoTLSKeyExport makes a server choose PRF key derivation. Bits beyond
	// DefaultProto are announced as given but not implemented.
	Proto uint32
	// PeerInfo adds or replaces peer-info variables (IV_*, UV_*); an empty value removes one.
	PeerInfo map[string]string
	// MaxTLSVersion caps the TLS version (tls.VersionTLS12 or tls.VersionTLS13); zero means 1.3.
	MaxTLSVersion uint16
	// Username and Password, when Username is set, are sent in the key-method 2 block
	// (auth-user-pass). Once the server pushed an auth-token, later key states send it as the
	// password instead, as OpenVPN clients do (src/openvpn/ssl.c, key_method_2_write).
	Username, Password string
	// KeyMethod, for negative tests, replaces the key-method byte of the key-method block; zero
	// sends 2, the only method OpenVPN 2.x speaks.
	KeyMethod byte
	// Dial returns the socket the session uses; the Session owns and closes it. The socket may
	// be connected to Server or not (then datagrams from other sources are ignored). nil means
	// net.DialUDP to Server. Tests use it to open the socket inside a network namespace.
	Dial func(ctx context.Context) (net.PacketConn, error)
	// DialTCP returns the TCP connection to Server when TCP is set; the Session owns and closes
	// it. nil means a net.Dialer from the current namespace.
	DialTCP func(ctx context.Context) (net.Conn, error)
	// Log receives handshake and lifecycle events, never per-packet ones; nil discards.
	Log *slog.Logger
	// Now is the clock for keepalive, certificate validity and handshake timing; nil means time.Now.
	Now func() time.Time
	// OnInfoPre, when set, is called with the text of each INFO_PRE the server sends while a
	// login is pending (AUTH_PENDING), such as "WEB_AUTH::https://...": a single sign-on
	// client opens that URL. Announce IV_SSO (PeerInfo) to be offered one. It runs on the
	// control goroutine and must not block.
	OnInfoPre func(text string)
	// OnPacket, when set, receives every IP packet the server sends, on the session's receive
	// goroutine, instead of the queue ReadPacket reads (which then stays empty). ip aliases the
	// receive buffer and is valid only during the call; OnPacket must not block. A load
	// generator uses it to handle thousands of sessions without a reader goroutine each.
	OnPacket func(s *Session, ip []byte)
}

// TLSAuth is tls-auth protection of the control channel: an HMAC, no encryption.
type TLSAuth struct {
	Key *tlscrypt.StaticKey
	// Bidirectional uses the key's first HMAC key both ways (no key-direction on either side);
	// otherwise the client uses key-direction 1, as clients of a key-direction 0 server do.
	Bidirectional bool
	// Digest is the HMAC's hash; nil means SHA1, OpenVPN's default --auth.
	Digest func() hash.Hash
}

// Session is one connected client. WritePacket and ReadPacket may be called concurrently with
// each other and with Close; several goroutines may write at once.
type Session struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	link    *link
	wrapper tlscrypt.Wrapper
	tlsConf *tls.Config
	ctx     context.Context // ends when the session does; bounds renegotiations
	cancel  context.CancelFunc

	localSID, remoteSID packet.SessionID
	ch                  *channel.Channel
	authToken           atomic.Pointer[string] // the newest pushed auth-token

	// Set by Connect before it returns; read-only afterwards.
	push      push.Reply
	cipher    datacrypto.Cipher
	ekm       bool
	dataV2    bool
	peerID    uint32
	handshake time.Duration

	// keys holds the data keys by key id; sendKey is the one WritePacket uses and next a
	// renegotiated key not yet used to send. Each dataKey's replay window belongs to the
	// receive goroutine.
	keys    [8]atomic.Pointer[dataKey]
	sendKey atomic.Pointer[dataKey]
	next    atomic.Pointer[dataKey]

	in        chan *pktBuf    // opened IP packets for ReadPacket
	pushed    chan pushResult // key 0's control goroutine to Connect
	connected atomic.Bool     // Connect succeeded: control messages now end the session
	heard     atomic.Bool     // a control packet from the server passed the channel since the reset
	lastSend  atomic.Int64    // unix ns (injected clock) of the last data packet sent
	lastRecv  atomic.Int64    // unix ns of the last authenticated packet received
	stats     counters

	// mu guards the fields below.
	mu        sync.Mutex
	ctl       *tls.Conn // TLS conn of the newest key, for EXIT
	ctlKey    uint8
	keepalive *time.Timer

	done      chan struct{} // closed by shutdown
	err       error         // why the session ended; written once before done closes
	endOnce   sync.Once
	closeOnce sync.Once
	wg        sync.WaitGroup // the receive and control goroutines
}

type pushResult struct {
	reply push.Reply
	err   error
}

// Connect dials cfg.Server and runs the whole client handshake: hard reset and cookie echo, TLS,
// key-method 2, PUSH_REQUEST until PUSH_REPLY, data-key derivation. It returns when the tunnel
// carries data, or with an error; ctx bounds the handshake (DefaultHandWindow if it has no
// deadline) but not the session.
func Connect(ctx context.Context, cfg Config) (*Session, error) {
	if !cfg.Server.IsValid() {
		return nil, errors.New("client: Config.Server is not set")
	}
	if cfg.RootCAs == nil {
		return nil, errors.New("client: Config.RootCAs is required to verify the server")
	}
	if cfg.Ciphers == nil {
		cfg.Ciphers = []datacrypto.Cipher{datacrypto.AES256GCM, datacrypto.AES128GCM, datacrypto.ChaCha20Poly1305}
	}
	if len(cfg.Ciphers) == 0 {
		return nil, errors.New("client: Config.Ciphers is empty")
	}
	for _, c := range cfg.Ciphers {
		if c.KeySize() == 0 {
			return nil, fmt.Errorf("client: Config.Ciphers: %w: %v", datacrypto.ErrUnsupportedCipher, c)
		}
	}
	if cfg.Proto == 0 {
		cfg.Proto = DefaultProto
	}
	if cfg.TLSCrypt != nil && cfg.TLSAuth != nil {
		return nil, errors.New("client: Config sets both TLSCrypt and TLSAuth; a server uses one")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	start := cfg.Now()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultHandWindow)
		defer cancel()
	}
	l, err := dialLink(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", cfg.Server, err)
	}
	s := newSession(cfg, l)
	if err := s.connect(ctx); err != nil {
		s.shutdown(err)
		s.wg.Wait()
		s.drainQueue()
		return nil, err
	}
	s.handshake = cfg.Now().Sub(start)
	s.log.Info("connected", "address", s.push.Ifconfig, "cipher", s.cipher, "ekm", s.ekm,
		"peer_id", s.peerID, "handshake", s.handshake)
	return s, nil
}

// dialLink opens the session's transport.
func dialLink(ctx context.Context, cfg Config) (*link, error) {
	if cfg.TCP {
		dial := cfg.DialTCP
		if dial == nil {
			dial = func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", cfg.Server.String())
			}
		}
		conn, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		return newStreamLink(conn, cfg.Server), nil
	}
	dial := cfg.Dial
	if dial == nil {
		dial = func(context.Context) (net.PacketConn, error) {
			return net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(cfg.Server))
		}
	}
	pc, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	return newLink(pc, cfg.Server), nil
}

func newSession(cfg Config, l *link) *Session {
	s := &Session{
		cfg:    cfg,
		log:    cfg.Log.With("server", cfg.Server),
		now:    cfg.Now,
		link:   l,
		in:     make(chan *pktBuf, queueLen),
		pushed: make(chan pushResult, 1),
		done:   make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	switch {
	case cfg.TLSCrypt != nil:
		s.wrapper = tlscrypt.NewTLSCrypt(cfg.TLSCrypt, false)
	case cfg.TLSAuth != nil:
		dir := tlscrypt.DirectionInverse
		if cfg.TLSAuth.Bidirectional {
			dir = tlscrypt.DirectionBidirectional
		}
		s.wrapper = tlscrypt.NewTLSAuth(cfg.TLSAuth.Key, dir, cfg.TLSAuth.Digest)
	default:
		s.wrapper = tlscrypt.NewPlain()
	}
	s.tlsConf = &tls.Config{
		MinVersion:             tls.VersionTLS12,
		MaxVersion:             cfg.MaxTLSVersion,
		SessionTicketsDisabled: true,
		// OpenVPN sends no SNI and checks no host name; VerifyConnection does the
		// chain and `remote-cert-tls server` checks instead.
		InsecureSkipVerify: true,
		VerifyConnection:   s.verifyServer,
		// The groups OpenSSL 3.0 (the stock client's library on Debian) offers, in its order:
		// crypto/tls would otherwise offer the post-quantum hybrid X25519MLKEM768 first, which
		// a Go server takes and OpenSSL 3.0 servers do not know, so the load generator would
		// make cvpn do more key-exchange work than a stock client does.
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP521, tls.CurveP384},
	}
	if len(cfg.Certificate.Certificate) > 0 {
		// Like OpenSSL in OpenVPN, present the certificate whatever CAs the server names:
		// crypto/tls would otherwise send none when its issuer is not among them.
		cert := cfg.Certificate
		s.tlsConf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	return s
}

// verifyServer checks the server certificate chain against RootCAs and what
// `remote-cert-tls server` demands of the leaf: a keyUsage extension and extendedKeyUsage
// serverAuth (protocol §5). A leaf without any EKU passes x509 verification but not this check.
func (s *Session) verifyServer(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: no certificate", ErrServerCert)
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         s.cfg.RootCAs,
		Intermediates: inter,
		CurrentTime:   s.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrServerCert, err)
	}
	if leaf.KeyUsage == 0 {
		return fmt.Errorf("%w: %q has no keyUsage extension (remote-cert-tls server)", ErrServerCert, leaf.Subject.CommonName)
	}
	for _, u := range leaf.ExtKeyUsage {
		if u == x509.ExtKeyUsageServerAuth {
			return nil
		}
	}
	return fmt.Errorf("%w: %q lacks extended key usage serverAuth (remote-cert-tls server)", ErrServerCert, leaf.Subject.CommonName)
}

// Address is the tunnel address the server pushed (ifconfig), with the pushed netmask under
// topology subnet.
func (s *Session) Address() netip.Prefix { return s.push.Ifconfig }

// Gateway is the pushed route-gateway, or else the first host of the pushed subnet (where both
// OpenVPN and cvpn put the server in topology subnet).
func (s *Session) Gateway() netip.Addr {
	if s.push.RouteGateway.IsValid() {
		return s.push.RouteGateway
	}
	return s.push.Ifconfig.Masked().Addr().Next()
}

// Push returns the parsed PUSH_REPLY. Its slices must not be modified.
func (s *Session) Push() push.Reply { return s.push }

// Cipher is the data cipher in use.
func (s *Session) Cipher() datacrypto.Cipher { return s.cipher }

// EKM reports whether the data keys came from the TLS exporter (else from the OpenVPN PRF).
func (s *Session) EKM() bool { return s.ekm }

// HandshakeDuration is the time Connect took, from dialing to data keys in place.
func (s *Session) HandshakeDuration() time.Duration { return s.handshake }

// Done is closed when the session ends: Close, or a failure Err describes.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err reports why the session ended (ErrClosed after Close), or nil while it runs.
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Close ends the session: it sends EXIT on the control channel when the server pushed cc-exit
// (else one OCC EXIT data packet), waits briefly for the acknowledgement, then closes the socket
// and waits for the session's goroutines. It returns nil; later calls do nothing.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		if s.Err() == nil {
			s.sendExit()
		}
		s.shutdown(ErrClosed)
		s.wg.Wait()
		s.drainQueue()
	})
	return nil
}

// sendExit tells the server the client leaves (protocol §9.3).
func (s *Session) sendExit() {
	if !s.push.CCExit() {
		_ = s.sendData(occExit)
		return
	}
	s.mu.Lock()
	conn, id := s.ctl, s.ctlKey
	s.mu.Unlock()
	if conn == nil {
		return
	}
	if _, err := conn.Write([]byte("EXIT\x00")); err != nil {
		return
	}
	deadline := time.Now().Add(exitAckWait)
	for !s.ch.Idle(id) && time.Now().Before(deadline) {
		select {
		case <-s.done:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// shutdown ends the session once with err: it stops the timers, closes the control channel
// (which ends the control goroutines' reads) and the socket (which ends the receive goroutine).
// It does not wait; Close and Connect do.
func (s *Session) shutdown(err error) {
	s.endOnce.Do(func() {
		s.err = err
		close(s.done)
		s.cancel()
		s.mu.Lock()
		if s.keepalive != nil {
			s.keepalive.Stop()
		}
		s.mu.Unlock()
		if s.ch != nil {
			s.ch.Close()
		}
		_ = s.link.close()
		if !errors.Is(err, ErrClosed) {
			s.log.Warn("session ended", "err", err)
		}
	})
}

// drainQueue returns queued packets to the pool after the goroutines stopped.
func (s *Session) drainQueue() {
	for {
		select {
		case b := <-s.in:
			putPkt(b)
		default:
			return
		}
	}
}

// setControl records the TLS conn of the newest key state, over which EXIT goes.
func (s *Session) setControl(conn *tls.Conn, id uint8) {
	s.mu.Lock()
	s.ctl, s.ctlKey = conn, id
	s.mu.Unlock()
}
