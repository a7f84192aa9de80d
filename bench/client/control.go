package client

import (
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/cvpn/cvpn/tls/keymethod"
	"github.com/cvpn/cvpn/tls/push"
)

// maxPendingControl bounds an unterminated control message, as the 2048-byte TLS read buffer
// of an OpenVPN client does (protocol §10).
const maxPendingControl = 2048

// controlLoop reads the control messages of one key state until its TLS stream ends (protocol §10).
// Before Connect returns, the push reply or refusal goes to Connect; afterwards AUTH_FAILED,
// RESTART and HALT end the session, and further PUSH_REPLYs (auth-token refreshes) are ignored.
func (s *Session) controlLoop(conn *tls.Conn, pending []byte) {
	var reply push.Reply
	buf := make([]byte, 1024)
	for {
		var msgs []string
		var rest []byte
		msgs, rest = keymethod.SplitMessages(pending)
		pending = append(pending[:0], rest...)
		for _, m := range msgs {
			s.controlMessage(m, &reply)
		}
		if len(pending) > maxPendingControl {
			s.fail(fmt.Errorf("client: control message longer than %d bytes", maxPendingControl))
			return
		}
		n, err := conn.Read(buf)
		if err != nil {
			if !s.connected.Load() {
				s.fail(fmt.Errorf("client: control channel: %w", err))
			}
			return
		}
		pending = append(pending, buf[:n]...)
	}
}

// takeAuthToken keeps the auth-token a push reply carries (the first one, or the renewal a
// server sends alone after a renegotiation: src/openvpn/push.c, send_push_reply_auth_token).
func (s *Session) takeAuthToken(opts string) {
	for _, o := range strings.Split(opts, ",") {
		if tok, ok := strings.CutPrefix(o, "auth-token "); ok {
			s.authToken.Store(&tok)
		}
	}
}

// AuthToken returns the newest auth-token the server pushed, "" when none.
func (s *Session) AuthToken() string {
	if t := s.authToken.Load(); t != nil {
		return *t
	}
	return ""
}

// controlMessage handles one control message; reply accumulates a push reply split over
// several messages.
func (s *Session) controlMessage(m string, reply *push.Reply) {
	verb, arg, _ := strings.Cut(m, ",")
	switch verb {
	case push.ReplyPrefix:
		s.takeAuthToken(arg)
		if s.connected.Load() {
			s.log.Debug("later PUSH_REPLY ignored but for an auth-token", "msg", m)
			return
		}
		complete, err := reply.Parse(m)
		if err != nil {
			s.fail(err)
			return
		}
		if complete {
			select {
			case s.pushed <- pushResult{reply: *reply}:
			default:
			}
			*reply = push.Reply{}
		}
	case "AUTH_FAILED":
		if arg == "" {
			arg = "no reason given"
		}
		s.fail(fmt.Errorf("%w: %s", ErrAuthFailed, arg))
	case "RESTART":
		s.fail(fmt.Errorf("%w: %q", ErrRestart, m))
	case "HALT":
		s.fail(fmt.Errorf("%w: %q", ErrHalt, m))
	case "INFO_PRE", "AUTH_PENDING":
		// A deferred login (single sign-on): the server waits for the user elsewhere, and
		// INFO_PRE says where ("WEB_AUTH::<url>" or "OPEN_URL:<url>").
		s.log.Info("server message", "msg", m)
		if verb == "INFO_PRE" && s.cfg.OnInfoPre != nil {
			s.cfg.OnInfoPre(arg)
		}
	case "INFO":
		s.log.Info("server message", "msg", m)
	default:
		s.log.Debug("control message ignored", "msg", m)
	}
}

// fail ends the session with err. Before Connect returns, Connect receives err and ends it.
func (s *Session) fail(err error) {
	if !s.connected.Load() {
		select {
		case s.pushed <- pushResult{err: err}:
			return
		default:
		}
	}
	s.shutdown(err)
}
