package session

import (
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/keymethod"
	"github.com/cvpn/cvpn/tls/push"
)

// controlIdle is how long a control-message reader waits for more before it parks: an idle
// session keeps no goroutine for its control channel, and the channel starts one when a message
// arrives.
const controlIdle = 250 * time.Millisecond

// keyReader reads the control messages of an established key state. Its goroutine comes and goes.
type keyReader struct {
	s       *Session
	conn    *tls.Conn
	k       *channel.Key
	pending []byte // a message split across reads
}

// controlLoop handles the control messages of an established key state until it parks.
func (s *Session) controlLoop(conn *tls.Conn, k *channel.Key) {
	r := &keyReader{s: s, conn: conn, k: k}
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

// maxControlMessage bounds one control message waiting for its terminating NUL.
const maxControlMessage = 2048

// handle processes received control-channel bytes; false ends the key state's reader for good.
func (r *keyReader) handle(b []byte) bool {
	s := r.s
	var msgs []string
	msgs, r.pending = keymethod.SplitMessages(append(r.pending, b...))
	if len(r.pending) > maxControlMessage {
		s.goodbye(authFailed("oversized control message"), "oversized control message")
		return false
	}
	for _, m := range msgs {
		switch {
		case m == "PUSH_REQUEST":
			if !s.pushed.Load() {
				s.sendPushReply(r.conn)
			}
		case m == "EXIT" || strings.HasPrefix(m, "EXIT,"):
			s.teardown("client sent EXIT")
			return false
		default:
			s.m.log.Debug("control message ignored", "user", s.user(), "msg", m)
		}
	}
	return true
}

// sendPushReply sends the client its configuration, once.
func (s *Session) sendPushReply(conn *tls.Conn) {
	if s.pushed.Swap(true) {
		return
	}
	m := s.m
	pol := m.plane.Policy()
	id := s.peer.Identity()
	proto := s.proto.Load()
	ekm := s.ekm()
	pool := m.cfg.Pool
	cfg := push.Config{
		Topology:    "subnet",
		Ping:        id.Ping,
		PingRestart: id.PingRestart,
		Routes:      pol.Routes,
		DNS:         pol.DNS,
		Compression: id.Framing.PushOption(),
		PeerID:      id.PeerID,
		HasPeerID:   id.DataV2, // as OpenVPN: peer-id only to clients that announced P_DATA_V2
		Cipher:      id.Cipher.String(),
	}
	if id.Addr.IsValid() {
		cfg.RouteGateway = pool.Gateway()
		cfg.Ifconfig = netip.PrefixFrom(id.Addr, pool.Prefix().Bits())
		cfg.RedirectGateway = !pol.SplitTunnel
	}
	if id.Addr6.IsValid() {
		cfg.Ifconfig6 = netip.PrefixFrom(id.Addr6, pool.Prefix6().Bits())
		cfg.Gateway6 = pool.Gateway6()
		cfg.RedirectGateway6 = !pol.SplitTunnel
	}
	if extra := s.userPush.Load(); extra != nil {
		cfg.Extra = *extra
	}
	// protocol-flags is understood by clients announcing cc-exit; older EKM clients get key-derivation.
	switch {
	case proto&keymethod.ProtoCCExit != 0 && ekm:
		cfg.ProtocolFlags = []string{"cc-exit", "tls-ekm"}
	case proto&keymethod.ProtoCCExit != 0:
		cfg.ProtocolFlags = []string{"cc-exit"}
	case ekm:
		cfg.KeyDerivation = "tls-ekm"
	}
	msgs, err := cfg.Messages()
	if err != nil {
		m.log.Error("building the push reply", "user", id.User, "err", err)
		s.goodbye(authFailed("the server could not build this client's configuration"), "push reply: "+err.Error())
		return
	}
	for _, msg := range msgs {
		if _, err := conn.Write([]byte(msg + "\x00")); err != nil {
			return
		}
	}
	if b := s.set.Banner; b != "" {
		_, _ = conn.Write([]byte("INFO," + printable(b) + "\x00"))
	}
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
