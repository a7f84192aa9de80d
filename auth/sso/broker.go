// Package sso ties a VPN connection attempt to a login in a browser: the device-login flow
// that lets the stock OpenVPN client (and clients announcing IV_SSO) use single sign-on.
//
// A connection attempt of a federated endpoint starts a Login. Its State, a 256-bit secret,
// travels to the client only (in the CRV1 challenge, or bound to the pending session); its
// Code, short enough to read and type, is what the user opens in a browser: the portal's
// /d/<Code> shows the attempt (source address, client, time) and, once the user signed in at
// the identity provider and approved it, Complete records who they are. The client then
// presents State (its CRV1 answer) or is waiting on it (AUTH_PENDING), and is admitted as that
// identity. Each login is used once and expires within minutes.
//
// The package knows no protocol: the portal speaks OIDC or SAML, the admission pipeline speaks
// to the client.
package sso

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Errors of the broker.
var (
	ErrUnknown = errors.New("sso: no such login (expired, used already, or never started)")
	ErrPending = errors.New("sso: the login has not been completed in the browser yet")
	ErrFull    = errors.New("sso: too many logins in progress")
	ErrDone    = errors.New("sso: the login was completed already")
)

// Bounds of the logins in progress: what unauthenticated clients can make the endpoint keep.
const (
	DefaultTTL       = 5 * time.Minute
	DefaultMax       = 4096
	DefaultPerSource = 8
	// codeAlphabet has no 0/O, 1/I/L: codes are read off a terminal and typed.
	codeAlphabet = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
	codeLen      = 8 // 31^8, about 40 bits: guessing one is bounded by the portal's rate limits
)

// Attempt is what is known of the connection attempt a login is for, shown to the user before
// they approve it.
type Attempt struct {
	ConnectionID string
	Remote       netip.Addr
	Platform     string // IV_PLAT
	Version      string // IV_VER
	CommonName   string // the client certificate's, if any
	// Hint is the username the client typed, if any: shown, never trusted.
	Hint string
}

// Identity is who signed in at the identity provider.
type Identity struct {
	Username string
	Groups   []string
	Subject  string
	Issuer   string
}

// Login is one login in progress.
type Login struct {
	State   string
	Code    string
	Attempt Attempt
	Created time.Time
	Expires time.Time
}

type entry struct {
	login  Login
	done   chan struct{} // closed when the login completed or failed
	id     *Identity
	failed error
}

// Broker keeps the logins in progress.
type Broker struct {
	now       func() time.Time
	ttl       time.Duration
	max       int
	perSource int

	mu      sync.Mutex
	byState map[string]*entry
	byCode  map[string]*entry
}

// Options bound a Broker; zero values take the defaults.
type Options struct {
	TTL       time.Duration
	Max       int
	PerSource int
	Now       func() time.Time
}

// New returns an empty broker.
func New(o Options) *Broker {
	b := &Broker{now: o.Now, ttl: o.TTL, max: o.Max, perSource: o.PerSource,
		byState: map[string]*entry{}, byCode: map[string]*entry{}}
	if b.now == nil {
		b.now = time.Now
	}
	if b.ttl <= 0 {
		b.ttl = DefaultTTL
	}
	if b.max <= 0 {
		b.max = DefaultMax
	}
	if b.perSource <= 0 {
		b.perSource = DefaultPerSource
	}
	return b
}

// Start begins a login for a connection attempt.
func (b *Broker) Start(a Attempt) (Login, error) {
	state, err := randomState()
	if err != nil {
		return Login{}, err
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expireLocked(now)
	from := 0
	for _, e := range b.byState {
		if e.login.Attempt.Remote == a.Remote {
			from++
		}
	}
	if len(b.byState) >= b.max || from >= b.perSource {
		return Login{}, ErrFull
	}
	var code string
	for {
		if code, err = randomCode(); err != nil {
			return Login{}, err
		}
		if b.byCode[code] == nil {
			break
		}
	}
	e := &entry{login: Login{State: state, Code: code, Attempt: a, Created: now, Expires: now.Add(b.ttl)}, done: make(chan struct{})}
	b.byState[state], b.byCode[code] = e, e
	return e.login, nil
}

// Lookup returns the login a browser opened by its code (any case, dashes and spaces
// ignored), while it waits for a sign-in.
func (b *Broker) Lookup(code string) (Login, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.liveByCodeLocked(NormalizeCode(code))
	if e == nil {
		return Login{}, ErrUnknown
	}
	if e.id != nil || e.failed != nil {
		return Login{}, ErrDone
	}
	return e.login, nil
}

// CodeOf returns the code of the live login of state, to show its link again.
func (b *Broker) CodeOf(state string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.liveByStateLocked(state)
	if e == nil {
		return "", ErrUnknown
	}
	return e.login.Code, nil
}

// Complete records who signed in for the login of code; a login completes once.
func (b *Broker) Complete(code string, id Identity) error {
	return b.finish(code, &id, nil)
}

// Fail ends the login of code with a reason the client is told.
func (b *Broker) Fail(code string, reason error) error {
	return b.finish(code, nil, reason)
}

func (b *Broker) finish(code string, id *Identity, failed error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.liveByCodeLocked(NormalizeCode(code))
	if e == nil {
		return ErrUnknown
	}
	if e.id != nil || e.failed != nil {
		return ErrDone
	}
	e.id, e.failed = id, failed
	close(e.done)
	return nil
}

// Take returns the identity of a completed login by its state and forgets the login; a login
// not completed yet stays (ErrPending), a failed one is forgotten with its reason.
func (b *Broker) Take(state string) (Identity, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.liveByStateLocked(state)
	if e == nil {
		return Identity{}, ErrUnknown
	}
	switch {
	case e.failed != nil:
		b.forgetLocked(e)
		return Identity{}, e.failed
	case e.id == nil:
		return Identity{}, ErrPending
	}
	b.forgetLocked(e)
	return *e.id, nil
}

// Await waits until the login of state completes, fails or expires, or ctx ends, then takes
// it as Take does.
func (b *Broker) Await(ctx context.Context, state string) (Identity, error) {
	b.mu.Lock()
	e := b.liveByStateLocked(state)
	b.mu.Unlock()
	if e == nil {
		return Identity{}, ErrUnknown
	}
	expiry := time.NewTimer(e.login.Expires.Sub(b.now()))
	defer expiry.Stop()
	select {
	case <-e.done:
		return b.Take(state)
	case <-expiry.C:
		b.mu.Lock()
		b.forgetLocked(e)
		b.mu.Unlock()
		return Identity{}, ErrUnknown
	case <-ctx.Done():
		return Identity{}, ctx.Err()
	}
}

// Len is the number of logins in progress.
func (b *Broker) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expireLocked(b.now())
	return len(b.byState)
}

func (b *Broker) liveByCodeLocked(code string) *entry {
	e := b.byCode[code]
	if e != nil && !b.now().Before(e.login.Expires) {
		b.forgetLocked(e)
		return nil
	}
	return e
}

func (b *Broker) liveByStateLocked(state string) *entry {
	e := b.byState[state]
	if e != nil && !b.now().Before(e.login.Expires) {
		b.forgetLocked(e)
		return nil
	}
	return e
}

func (b *Broker) forgetLocked(e *entry) {
	delete(b.byState, e.login.State)
	delete(b.byCode, e.login.Code)
}

func (b *Broker) expireLocked(now time.Time) {
	for _, e := range b.byState {
		if !now.Before(e.login.Expires) {
			b.forgetLocked(e)
		}
	}
}

// NormalizeCode is a typed code as the broker keys it: upper case, without dashes or spaces.
func NormalizeCode(code string) string {
	code = strings.ToUpper(code)
	return strings.Map(func(r rune) rune {
		if r == '-' || r == ' ' {
			return -1
		}
		return r
	}, code)
}

// FormatCode shows a code as the user reads it: ABCD-EFGH.
func FormatCode(code string) string {
	if len(code) != codeLen {
		return code
	}
	return code[:4] + "-" + code[4:]
}

func randomState() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func randomCode() (string, error) {
	var b [codeLen]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	out := make([]byte, codeLen)
	for i, v := range b {
		// 256 % 31 leaves a bias of under 1%; the code's strength comes from the rate limits.
		out[i] = codeAlphabet[int(v)%len(codeAlphabet)]
	}
	return string(out), nil
}
