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
// Logins live in a state.Store, so that every node sharing it (a cluster on etcd) sees them
// alike: the client may reconnect to another node with its State, the browser may open the
// Code on another node, and a client waiting on node A notices a login completed on node B by
// polling the store (Options.PollInterval; a completion on A itself wakes it at once). Each
// change of a login is a compare-and-swap (state.Store.Update), so a login completes once and
// is taken once across the cluster. The store keeps no secret: logins are keyed by the
// SHA-256 of State, the code index by the SHA-256 of Code, and the Code kept for CodeOf is
// sealed under a key derived from State (expiry.Seal).
//
// Attacker's view: anyone who completes a TLS handshake with a federated endpoint starts a
// login (unless the endpoint requires client certificates). Each costs the store a login
// record (about 300 bytes plus the attempt's strings), a code index entry and 8 bytes in two
// ledgers; logins are bounded per source address (Options.PerSource) and in all
// (Options.Max) by ledgers changed with compare-and-swap, so the bounds hold across nodes;
// entries expire after Options.TTL and Start sweeps expired keys (a bounded batch, at most
// every sweepEvery). Guessing a Code is bounded by the portal's rate limits. A client waiting
// in AUTH_PENDING costs one store read per PollInterval until its login ends: at the bounds'
// worst, Max reads per PollInterval across the cluster.
//
// The package knows no protocol: the portal speaks OIDC or SAML, the admission pipeline speaks
// to the client.
package sso

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/cvpn/cvpn/auth/expiry"
	"github.com/cvpn/cvpn/state"
)

// Errors of the broker.
var (
	ErrUnknown = errors.New("sso: no such login (expired, used already, or never started)")
	ErrPending = errors.New("sso: the login has not been completed in the browser yet")
	ErrFull    = errors.New("sso: too many logins in progress")
	ErrDone    = errors.New("sso: the login was completed already")
	// ErrFailed matches (errors.Is) the reason of a login ended by Fail, whose text is the
	// reason's: the reason crosses the store as text.
	ErrFailed = errors.New("sso: the login failed")
)

// Bounds of the logins in progress: what unauthenticated clients can make the endpoint keep.
const (
	DefaultTTL          = 5 * time.Minute
	DefaultMax          = 4096
	DefaultPerSource    = 8
	DefaultPollInterval = 500 * time.Millisecond
	// codeAlphabet has no 0/O, 1/I/L: codes are read off a terminal and typed.
	codeAlphabet = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
	codeLen      = 8 // 31^8, about 40 bits: guessing one is bounded by the portal's rate limits

	// sweepEvery and sweepBatch bound the work of deleting abandoned logins: a node looks at
	// sweepBatch keys of each bucket at most every sweepEvery.
	sweepEvery = 30 * time.Second
	sweepBatch = 256
)

// Buckets of the store the broker uses.
const (
	LoginBucket = "sso-login" // Key("sso state", State) -> record
	CodeBucket  = "sso-code"  // Key("sso code", Code) -> the login's key
	BoundBucket = "sso-bound" // ledgers: "all" (sharded: expiry.Shard) and "src/<address>"
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
	State   string // empty in what Lookup returns: the browser never learns it
	Code    string
	Attempt Attempt
	Created time.Time
	Expires time.Time
}

// record is a login as the store keeps it (JSON).
type record struct {
	SealedCode []byte // Code sealed under State: only the client can show its link again
	Attempt    Attempt
	Created    time.Time
	Expires    time.Time
	Identity   *Identity `json:",omitempty"`
	Failed     string    `json:",omitempty"`
}

func (r *record) done() bool { return r.Identity != nil || r.Failed != "" }

// failure is the reason of a failed login, read back from the store.
type failure string

func (f failure) Error() string      { return string(f) }
func (failure) Is(target error) bool { return target == ErrFailed }

// Broker keeps the logins in progress in a state.Store.
type Broker struct {
	st        state.Store
	now       func() time.Time
	ttl       time.Duration
	max       int
	perSource int
	poll      time.Duration

	mu        sync.Mutex               // guards the fields below
	waiters   map[string]chan struct{} // by login key: the Awaits of this node, woken by its own completions
	lastSweep time.Time
}

// Options bound a Broker; zero values take the defaults.
type Options struct {
	// Store holds the logins; nil keeps them in this process (state.NewMemory). Nodes of a
	// cluster pass the cluster's store so that they share logins.
	Store     state.Store
	TTL       time.Duration
	Max       int // logins in progress in all (across every node of Store)
	PerSource int // logins in progress from one source address
	// PollInterval is how often Await reads the store for a completion on another node.
	PollInterval time.Duration
	Now          func() time.Time
}

// New returns a broker.
func New(o Options) *Broker {
	b := &Broker{st: o.Store, now: o.Now, ttl: o.TTL, max: o.Max, perSource: o.PerSource, poll: o.PollInterval,
		waiters: map[string]chan struct{}{}}
	if b.st == nil {
		b.st = state.NewMemory()
	}
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
	if b.poll <= 0 {
		b.poll = DefaultPollInterval
	}
	return b
}

func stateKey(state string) string { return expiry.Key("sso state", state) }
func codeKey(code string) string   { return expiry.Key("sso code", code) }
func sourceLedger(a netip.Addr) string {
	return "src/" + a.String()
}

const allLedger = "all"

// Start begins a login for a connection attempt.
func (b *Broker) Start(ctx context.Context, a Attempt) (Login, error) {
	st, err := randomState()
	if err != nil {
		return Login{}, err
	}
	now := b.now()
	b.sweep(ctx, now)
	l := Login{State: st, Attempt: a, Created: now, Expires: now.Add(b.ttl)}
	// Two ledgers, two compare-and-swaps: between them the source holds a place it may give
	// back, which can refuse a concurrent login of the same source early, never admit one
	// over a bound. A node dying between a reservation and the login leaves a place taken
	// until it expires.
	key := stateKey(st)
	all, allPlaces := expiry.Shard(allLedger, key, b.max)
	src := sourceLedger(a.Remote)
	if err := expiry.Reserve(ctx, b.st, BoundBucket, src, now, l.Expires, b.perSource); err != nil {
		return Login{}, b.full(err)
	}
	if err := expiry.Reserve(ctx, b.st, BoundBucket, all, now, l.Expires, allPlaces); err != nil {
		_ = expiry.Release(ctx, b.st, BoundBucket, src, now, l.Expires)
		return Login{}, b.full(err)
	}
	for {
		if l.Code, err = randomCode(); err != nil {
			break
		}
		err = expiry.Update(ctx, b.st, CodeBucket, codeKey(l.Code), now, func(_ []byte, _ time.Time, ok bool) ([]byte, time.Time, error) {
			if ok {
				return nil, time.Time{}, errCodeTaken
			}
			return []byte(key), l.Expires, nil
		})
		if !errors.Is(err, errCodeTaken) {
			break
		}
	}
	if err == nil {
		var v []byte
		if v, err = json.Marshal(record{SealedCode: expiry.Seal("sso code", st, []byte(l.Code)),
			Attempt: a, Created: now, Expires: l.Expires}); err == nil {
			err = expiry.Put(ctx, b.st, LoginBucket, key, l.Expires, v)
		}
	}
	if err != nil {
		b.release(ctx, key, a.Remote, l.Expires, now)
		return Login{}, fmt.Errorf("sso: start a login: %w", err)
	}
	return l, nil
}

var errCodeTaken = errors.New("sso: code in use")

func (b *Broker) full(err error) error {
	if errors.Is(err, expiry.ErrFull) {
		return ErrFull
	}
	return fmt.Errorf("sso: start a login: %w", err)
}

// release gives back the places of a login in the ledgers.
func (b *Broker) release(ctx context.Context, key string, remote netip.Addr, expires, now time.Time) {
	all, _ := expiry.Shard(allLedger, key, b.max)
	_ = expiry.Release(ctx, b.st, BoundBucket, sourceLedger(remote), now, expires)
	_ = expiry.Release(ctx, b.st, BoundBucket, all, now, expires)
}

// sweep deletes a batch of expired keys, at most every sweepEvery on this node.
func (b *Broker) sweep(ctx context.Context, now time.Time) {
	b.mu.Lock()
	due := now.Sub(b.lastSweep) >= sweepEvery
	if due {
		b.lastSweep = now
	}
	b.mu.Unlock()
	if !due {
		return
	}
	for _, bucket := range []string{LoginBucket, CodeBucket, BoundBucket} {
		_, _ = expiry.Sweep(ctx, b.st, bucket, now, sweepBatch)
	}
}

// get reads the live record of key.
func (b *Broker) get(ctx context.Context, key string, now time.Time) (record, error) {
	v, _, err := expiry.Get(ctx, b.st, LoginBucket, key, now)
	if errors.Is(err, state.ErrNotFound) {
		return record{}, ErrUnknown
	}
	if err != nil {
		return record{}, fmt.Errorf("sso: read a login: %w", err)
	}
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return record{}, fmt.Errorf("sso: read a login: %w", err)
	}
	return r, nil
}

// keyOfCode returns the login key the code index maps code to.
func (b *Broker) keyOfCode(ctx context.Context, code string, now time.Time) (string, error) {
	v, _, err := expiry.Get(ctx, b.st, CodeBucket, codeKey(NormalizeCode(code)), now)
	if errors.Is(err, state.ErrNotFound) {
		return "", ErrUnknown
	}
	if err != nil {
		return "", fmt.Errorf("sso: read a login code: %w", err)
	}
	return string(v), nil
}

// Lookup returns the login a browser opened by its code (any case, dashes and spaces
// ignored), while it waits for a sign-in. Its State is empty.
func (b *Broker) Lookup(ctx context.Context, code string) (Login, error) {
	now := b.now()
	key, err := b.keyOfCode(ctx, code, now)
	if err != nil {
		return Login{}, err
	}
	r, err := b.get(ctx, key, now)
	if err != nil {
		return Login{}, err
	}
	if r.done() {
		return Login{}, ErrDone
	}
	return Login{Code: NormalizeCode(code), Attempt: r.Attempt, Created: r.Created, Expires: r.Expires}, nil
}

// CodeOf returns the code of the live login of state, to show its link again.
func (b *Broker) CodeOf(ctx context.Context, state string) (string, error) {
	r, err := b.get(ctx, stateKey(state), b.now())
	if err != nil {
		return "", err
	}
	code, err := expiry.Open("sso code", state, r.SealedCode)
	if err != nil {
		return "", fmt.Errorf("sso: read a login: %w", err)
	}
	return string(code), nil
}

// Complete records who signed in for the login of code; a login completes once.
func (b *Broker) Complete(ctx context.Context, code string, id Identity) error {
	return b.finish(ctx, code, &id, "")
}

// Fail ends the login of code with a reason the client is told.
func (b *Broker) Fail(ctx context.Context, code string, reason error) error {
	msg := "refused"
	if reason != nil && reason.Error() != "" {
		msg = reason.Error()
	}
	return b.finish(ctx, code, nil, msg)
}

func (b *Broker) finish(ctx context.Context, code string, id *Identity, failed string) error {
	now := b.now()
	key, err := b.keyOfCode(ctx, code, now)
	if err != nil {
		return err
	}
	err = expiry.Update(ctx, b.st, LoginBucket, key, now, func(p []byte, until time.Time, ok bool) ([]byte, time.Time, error) {
		if !ok {
			return nil, time.Time{}, ErrUnknown
		}
		var r record
		if err := json.Unmarshal(p, &r); err != nil {
			return nil, time.Time{}, err
		}
		if r.done() {
			return nil, time.Time{}, ErrDone
		}
		r.Identity, r.Failed = id, failed
		v, err := json.Marshal(r)
		return v, until, err
	})
	if err != nil {
		if errors.Is(err, ErrUnknown) || errors.Is(err, ErrDone) {
			return err
		}
		return fmt.Errorf("sso: complete a login: %w", err)
	}
	b.mu.Lock()
	if w := b.waiters[key]; w != nil {
		close(w)
		delete(b.waiters, key)
	}
	b.mu.Unlock()
	return nil
}

// Take returns the identity of a completed login by its state and forgets the login; a login
// not completed yet stays (ErrPending), a failed one is forgotten with its reason (ErrFailed).
// Across every node of the store, a login is taken once.
func (b *Broker) Take(ctx context.Context, state string) (Identity, error) {
	now := b.now()
	var r record
	err := expiry.Update(ctx, b.st, LoginBucket, stateKey(state), now, func(p []byte, _ time.Time, ok bool) ([]byte, time.Time, error) {
		r = record{}
		if !ok {
			return nil, time.Time{}, ErrUnknown
		}
		if err := json.Unmarshal(p, &r); err != nil {
			return nil, time.Time{}, err
		}
		if !r.done() {
			return nil, time.Time{}, ErrPending // aborts: the login stays as it is
		}
		return nil, time.Time{}, nil
	})
	switch {
	case errors.Is(err, ErrUnknown) || errors.Is(err, ErrPending):
		return Identity{}, err
	case err != nil:
		return Identity{}, fmt.Errorf("sso: take a login: %w", err)
	}
	b.forget(ctx, state, r, now)
	if r.Failed != "" {
		return Identity{}, failure(r.Failed)
	}
	return *r.Identity, nil
}

// forget removes what is left of a login whose record is gone: its code and its places.
func (b *Broker) forget(ctx context.Context, state string, r record, now time.Time) {
	if code, err := expiry.Open("sso code", state, r.SealedCode); err == nil {
		_ = b.st.Delete(ctx, CodeBucket, codeKey(string(code)))
	}
	b.release(ctx, stateKey(state), r.Attempt.Remote, r.Expires, now)
}

// Await waits until the login of state completes, fails or expires, or ctx ends, then takes
// it as Take does. A completion on this node wakes it at once; one on another node is seen at
// the next poll of the store.
func (b *Broker) Await(ctx context.Context, state string) (Identity, error) {
	key := stateKey(state)
	r, err := b.get(ctx, key, b.now())
	if err != nil {
		return Identity{}, err
	}
	b.mu.Lock()
	w := b.waiters[key]
	if w == nil {
		w = make(chan struct{})
		b.waiters[key] = w
	}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		if b.waiters[key] == w {
			delete(b.waiters, key)
		}
		b.mu.Unlock()
	}()
	expire := time.NewTimer(r.Expires.Sub(b.now()))
	defer expire.Stop()
	poll := time.NewTicker(b.poll)
	defer poll.Stop()
	for {
		id, err := b.Take(ctx, state)
		if !errors.Is(err, ErrPending) {
			return id, err
		}
		select {
		case <-w:
			w = nil // closed: the next Take finds the login done
		case <-poll.C:
		case <-expire.C:
			// Expired unfinished: drop it now rather than at the next sweep.
			if err := b.st.Delete(ctx, LoginBucket, key); err == nil {
				b.forget(ctx, state, r, b.now())
			}
			return Identity{}, ErrUnknown
		case <-ctx.Done():
			return Identity{}, ctx.Err()
		}
	}
}

// Len is the number of logins in progress, across every node of the store.
func (b *Broker) Len(ctx context.Context) (int, error) {
	return expiry.ShardedPlaces(ctx, b.st, BoundBucket, allLedger, b.max, b.now())
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
