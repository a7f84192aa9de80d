package client

import (
	"errors"

	"github.com/cvpn/cvpn/tls/push"
)

// Errors of Connect and of an established Session. Connect and the read and write methods wrap
// them with detail; test with errors.Is.
var (
	// ErrAuthFailed means the server refused the session with AUTH_FAILED; the error text
	// carries the server's reason ("AUTH_FAILED,<reason>", protocol §10.2).
	ErrAuthFailed = errors.New("client: server sent AUTH_FAILED")
	// ErrServerCert means the server's certificate does not verify against Config.RootCAs or
	// lacks what `remote-cert-tls server` requires (keyUsage, extendedKeyUsage serverAuth).
	ErrServerCert = errors.New("client: server certificate refused")
	// ErrPushReply means a PUSH_REPLY could not be parsed or names an option value this client
	// cannot use. It is push.ErrReply, which the parser's errors wrap.
	ErrPushReply = push.ErrReply
	// ErrCipher means the server chose a data cipher that is not in Config.Ciphers.
	ErrCipher = errors.New("client: server chose a data cipher the client did not offer")
	// ErrRestart and ErrHalt mean the server sent RESTART or HALT (protocol §10.3).
	ErrRestart = errors.New("client: server sent RESTART")
	ErrHalt    = errors.New("client: server sent HALT")
	// ErrPingRestart means nothing authenticated arrived from the server for the pushed
	// ping-restart interval (protocol §13).
	ErrPingRestart = errors.New("client: ping-restart: the server went silent")
	// ErrClosed is returned by the methods of a Session after Close.
	ErrClosed = errors.New("client: session closed")
	// ErrPacketSize means WritePacket got an empty packet or one larger than MaxPacketSize.
	ErrPacketSize = errors.New("client: packet size out of range")
	// ErrPacketIDExhausted means the data packet-ids of the current key ran out; OpenVPN would
	// have renegotiated long before (protocol §8.4).
	ErrPacketIDExhausted = errors.New("client: data packet-id space exhausted")
)
