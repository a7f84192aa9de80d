package session

import (
	"context"
	"crypto/x509"
	"errors"
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
	Authenticate(ctx context.Context, r *AuthRequest) (*User, error)
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
}

// User is an authenticated user: a name for logs and listings and the groups that
// authorization rules and bandwidth limits match.
type User struct {
	Name   string
	Groups []string
}

// Refusal is an admission refusal the client is told about (AUTH_FAILED,<Message>).
type Refusal struct {
	Message string
	code    RefusalCode // the kind, when the session layer refuses; hooks' refusals are RefusedByHook
}

func (r *Refusal) Error() string { return r.Message }

// Info is what the rest of the endpoint may know about an established session: built once
// when the session is admitted and never changed, so any goroutine may read it.
type Info struct {
	ID uint64
	// ConnectionID names the connection as AWS Client VPN does ("cvpn-connection-" and 17 hex
	// digits) in listings, the connection log and the admin API.
	ConnectionID string
	User         string
	CommonName   string
	Groups       []string
	Certificate  *x509.Certificate
	Address      netip.Addr
	PeerID       uint32
	Cipher       string
	Transport    string
	Version      string // the client's IV_VER
	Platform     string // the client's IV_PLAT
	Since        time.Time
	// Established is when the session was admitted; HandshakeDuration how long it took from its
	// start (the first packet kept) to then.
	Established       time.Time
	HandshakeDuration time.Duration
	// Listener is the local address the client connected to.
	Listener netip.AddrPort
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

// OnConnect admits the connection.
func (CertificateHooks) OnConnect(context.Context, *Info) error { return nil }

// OnDisconnect does nothing.
func (CertificateHooks) OnDisconnect(*Info, string) {}
