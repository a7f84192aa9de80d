package session

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/cvpn/cvpn/tls/keymethod"
)

// Hooks are the admission steps the endpoint plugs in: who the user is (certificate, directory
// or federated login), whether the connection may proceed (a client-connect handler), and what
// happened when it ended (a connection log). They run on the session's handshake goroutine and
// may block, bounded by the context (the hand window). Errors of type *Refusal are told to the
// client as AUTH_FAILED with their message; any other error refuses with a generic message.
type Hooks interface {
	// Authenticate says who the client of a new session is.
	Authenticate(ctx context.Context, r *AuthRequest) (*User, error)
	// Reauthenticate checks a renegotiation of an admitted session (info): the client must
	// still be who it was, and may still be allowed in (a directory user disabled since is
	// refused). The user it returns replaces the session's groups and push options; a
	// refusal ends the session.
	Reauthenticate(ctx context.Context, info *Info, r *AuthRequest) (*User, error)
	// OnConnect admits or refuses an authenticated session before it is published. It may
	// set info.Posture; nothing else of info may change.
	OnConnect(ctx context.Context, info *Info) error
	OnDisconnect(info *Info, reason string)
}

// AuthRequest is what a client presented: its verified certificate chain's leaf, the
// credentials of its key-method 2 block, and its peer-info.
type AuthRequest struct {
	Certificate *x509.Certificate
	Username    string
	Password    string
	HasUserPass bool
	Peer        *keymethod.PeerInfo
	Remote      netip.AddrPort
	Transport   string
	// ConnectionID is the ID the session will have once admitted (Info.ConnectionID).
	ConnectionID string
}

// User is an authenticated user: a name for logs and listings and the groups that
// authorization rules and bandwidth limits match.
type User struct {
	Name string
	// Username is the name the user logged in with (directory or federated login), "" for a
	// certificate alone.
	Username string
	Groups   []string
	// Push are options pushed to the client with its configuration (an auth-token), and
	// again, alone, after each renegotiation.
	Push []string
}

// Pending is what Authenticate returns to defer a login to something the user does elsewhere
// (a browser single sign-on): the client is told AUTH_PENDING and, as INFO_PRE, Extra (such
// as "WEB_AUTH::https://..."), and the session waits on Wait, at most Timeout (and never more
// than MaxAuthPending), before it is admitted or refused (src/openvpn/push.c,
// send_auth_pending_messages). Only clients that can show Extra should get one: those that
// announce IV_SSO.
type Pending struct {
	Extra   string
	Timeout time.Duration
	// Wait blocks until the login completed (the user) or failed (a refusal), or ctx ends.
	Wait func(ctx context.Context) (*User, error)
}

func (p *Pending) Error() string { return "authentication pending: " + p.Extra }

// MaxAuthPending bounds how long a deferred login may keep a session pending.
const MaxAuthPending = 10 * time.Minute

// Refusal is an admission refusal the client is told about (AUTH_FAILED,<Message>).
type Refusal struct {
	Message string
	// Logged, when set, stands for Message in logs and events: a message that carries a secret
	// (a challenge's state) is told to the client only.
	Logged string
	Code   RefusalCode // the kind of refusal (a metric label); RefusedByHook when empty
}

func (r *Refusal) Error() string { return r.loggable() }

// loggable is what logs and events say of the refusal.
func (r *Refusal) loggable() string {
	if r.Logged != "" {
		return r.Logged
	}
	return r.Message
}

// Info is what the rest of the endpoint may know about an established session: built once
// when the session is admitted and never changed, so any goroutine may read it.
type Info struct {
	ID uint64
	// ConnectionID names the connection as AWS Client VPN does ("cvpn-connection-" and 17 hex
	// digits) in listings, the connection log and the admin API.
	ConnectionID string
	User         string
	// Username is the login name of a directory or federated user, "" for a certificate alone.
	Username    string
	CommonName  string
	Groups      []string
	Certificate *x509.Certificate
	// Address is the client's IPv4 tunnel address and Address6 its IPv6 one; either is invalid
	// when the tunnel does not carry that family.
	Address   netip.Addr
	Address6  netip.Addr
	PeerID    uint32
	Cipher    string
	Transport string
	Version   string // the client's IV_VER
	Platform  string // the client's IV_PLAT
	// PlatformVersion is the client's IV_PLAT_VER.
	PlatformVersion string
	// Remote is the address the client was admitted from (it may float later).
	Remote netip.AddrPort
	Since  time.Time
	// Established is when the session was admitted; HandshakeDuration how long it took from its
	// start (the first packet kept) to then.
	Established       time.Time
	HandshakeDuration time.Duration
	// Listener is the local address the client connected to.
	Listener netip.AddrPort
	// Posture are the posture compliance statuses a client-connect handler returned.
	Posture []string
}

// addressAttr is a session's tunnel addresses in a log line: address (IPv4) and address6 (IPv6),
// each when the session has one, so IPv4-only lines read as they always did.
func addressAttr(info *Info) slog.Attr {
	switch {
	case !info.Address6.IsValid():
		return slog.Any("address", info.Address)
	case !info.Address.IsValid():
		return slog.Any("address6", info.Address6)
	}
	return slog.Group("", "address", info.Address, "address6", info.Address6) // an empty key inlines the group
}

// CertificateHooks authenticate by client certificate alone, as AWS Client VPN's mutual
// authentication does: the user is the certificate's common name, its groups the
// certificate's organizational units. They admit every connection and record nothing.
type CertificateHooks struct{}

// Authenticate takes the user from the certificate TLS already verified.
func (CertificateHooks) Authenticate(_ context.Context, r *AuthRequest) (*User, error) {
	if r.Certificate == nil {
		return nil, errors.New("no client certificate")
	}
	return &User{Name: r.Certificate.Subject.CommonName, Groups: r.Certificate.Subject.OrganizationalUnit}, nil
}

// Reauthenticate accepts a renegotiation that presents the certificate the session was
// admitted with.
func (CertificateHooks) Reauthenticate(_ context.Context, info *Info, r *AuthRequest) (*User, error) {
	if !SameCertificate(info, r.Certificate) {
		return nil, &Refusal{Message: "renegotiation presented another identity", Code: RefusedIdentity}
	}
	return &User{Name: info.User, Groups: info.Groups}, nil
}

// SameCertificate reports whether cert is the certificate the session of info was admitted
// with: both absent, or the same common name.
func SameCertificate(info *Info, cert *x509.Certificate) bool {
	if cert == nil {
		return info.Certificate == nil
	}
	return info.Certificate != nil && cert.Subject.CommonName == info.CommonName
}

// IdentityRefusal is the refusal of a renegotiation that presented another identity.
func IdentityRefusal(why string) *Refusal {
	return &Refusal{Message: why, Code: RefusedIdentity}
}

// OnConnect admits the connection.
func (CertificateHooks) OnConnect(context.Context, *Info) error { return nil }

// OnDisconnect does nothing.
func (CertificateHooks) OnDisconnect(*Info, string) {}
