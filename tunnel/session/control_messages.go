package session

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"crypto/tls"

	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/keymethod"
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
	mask := net.CIDRMask(m.cfg.Pool.Prefix().Bits(), 32)
	opts := []string{
		"route-gateway " + m.cfg.Pool.Gateway().String(),
		"topology subnet",
		fmt.Sprintf("ping %d", int(id.Ping.Seconds())),
		fmt.Sprintf("ping-restart %d", int(id.PingRestart.Seconds())),
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
	if f := id.Framing.PushOption(); f != "" {
		opts = append(opts, f)
	}
	opts = append(opts, fmt.Sprintf("ifconfig %s %s", id.Addr, net.IP(mask)))
	if id.DataV2 { // as OpenVPN: peer-id only to clients that announced P_DATA_V2
		opts = append(opts, fmt.Sprintf("peer-id %d", id.PeerID))
	}
	opts = append(opts, "cipher "+id.Cipher.String())
	// protocol-flags is understood by clients announcing cc-exit; older EKM clients get key-derivation.
	switch {
	case proto&keymethod.ProtoCCExit != 0 && ekm:
		opts = append(opts, "protocol-flags cc-exit tls-ekm")
	case proto&keymethod.ProtoCCExit != 0:
		opts = append(opts, "protocol-flags cc-exit")
	case ekm:
		opts = append(opts, "key-derivation tls-ekm")
	}
	for _, msg := range pushMessages(opts, 1024) {
		if _, err := conn.Write([]byte(msg + "\x00")); err != nil {
			return
		}
	}
	if b := s.set.Banner; b != "" {
		_, _ = conn.Write([]byte("INFO," + printable(b) + "\x00"))
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
