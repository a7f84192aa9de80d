package portal

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/cvpn/cvpn/auth/expiry"
	"github.com/cvpn/cvpn/state"
)

// cookieName is the session cookie. The __Host- prefix makes browsers refuse it unless it
// is Secure, has Path=/ and no Domain: no sibling host can plant or overwrite it.
const cookieName = "__Host-cvpn"

// Buckets of the store the portal uses.
const (
	// SessionBucket: hex SHA-256 of a session id -> the session, sealed under another hash
	// of the id.
	SessionBucket = "portal-session"
	// SessionBoundBucket holds the ledgers of sessions: "anon" (sharded: expiry.Shard),
	// "anon/<address>" and "user/<hash of the username>".
	SessionBoundBucket = "portal-session-bound"
)

// Bounds of the sessions, across every node of the store. A session not signed in is
// anyone's for one GET of /login, so it lives anonTTL (or IdleTimeout if shorter) from its
// creation, whatever its browser does, and holds a place in the ledgers "anon" (MaxSessions)
// and "anon/<address>" (anonPerAddress, by /64 for IPv6); when one is full the portal
// answers busy until places expire. A signed-in session costs a successful sign-in; it holds
// a place in its user's ledger (MaxSessionsPerUser) until its absolute expiry or its end.
const (
	anonTTL            = 15 * time.Minute // longer than a federated login and its finish step
	anonPerAddress     = 64
	MaxSessionsPerUser = 64
	// touchEvery is how stale a signed-in session's last-seen time may be before a request
	// writes it to the store: the idle timeout is that much coarse, and a browser's requests
	// cost a store write at most once a touchEvery.
	touchEvery = time.Minute
	sweepEvery = 30 * time.Second
	sweepBatch = 256
)

// sessionKey names a session without its id: hash keys the store (SHA-256 of the id, so a
// dump of the store or of memory gives no cookie), seal is another hash of the id that seals
// the stored session (its pending authenticator secret among others): what the store holds
// cannot be read without the cookie.
type sessionKey struct {
	hash [32]byte
	seal [32]byte
}

// session is one browser's state: a copy handlers read, changed through store.update.
type session struct {
	key     sessionKey
	csrf    string
	created time.Time // the login, for signed-in sessions: the absolute expiry counts from it
	seen    time.Time

	// Before sign-in.
	returnTo string    // where to go after login: a checked local path
	codeFor  *Identity // password accepted, waiting for the TOTP code
	codeTill time.Time

	// Signed in.
	id *Identity
	// needsEnrol: MFA is on and the user has no authenticator yet (or has not confirmed
	// the new one with a code): only enrolment is allowed.
	needsEnrol bool
	enrolURI   string // the otpauth URI of an enrolment waiting for its first code
	flash      string // a one-shot message for the next page

	// The ledger places the session holds, until placeUntil.
	places     []string
	placeUntil time.Time
}

// record is a session as the store keeps it (JSON, sealed).
type record struct {
	CSRF       string
	Created    time.Time
	Seen       time.Time
	ReturnTo   string    `json:",omitempty"`
	CodeFor    *Identity `json:",omitempty"`
	CodeTill   time.Time
	ID         *Identity `json:",omitempty"`
	NeedsEnrol bool      `json:",omitempty"`
	EnrolURI   string    `json:",omitempty"`
	Flash      string    `json:",omitempty"`
	Places     []string  `json:",omitempty"`
	PlaceUntil time.Time
}

func (se *session) record() record {
	return record{CSRF: se.csrf, Created: se.created, Seen: se.seen, ReturnTo: se.returnTo, CodeFor: se.codeFor,
		CodeTill: se.codeTill, ID: se.id, NeedsEnrol: se.needsEnrol, EnrolURI: se.enrolURI, Flash: se.flash,
		Places: se.places, PlaceUntil: se.placeUntil}
}

func (r *record) session(k sessionKey) session {
	return session{key: k, csrf: r.CSRF, created: r.Created, seen: r.Seen, returnTo: r.ReturnTo, codeFor: r.CodeFor,
		codeTill: r.CodeTill, id: r.ID, needsEnrol: r.NeedsEnrol, enrolURI: r.EnrolURI, flash: r.Flash,
		places: r.Places, placeUntil: r.PlaceUntil}
}

// store keeps the browser sessions in a state.Store, so that every node sharing it (a cluster
// on etcd) serves a browser alike, whichever node its requests reach. Each change is a
// compare-and-swap. Store errors read as no session (the browser signs in again), and are
// logged.
type store struct {
	st        state.Store
	log       *slog.Logger
	now       func() time.Time
	max       int
	idle, abs time.Duration

	mu        sync.Mutex // guards lastSweep
	lastSweep time.Time
}

func newStore(st state.Store, log *slog.Logger, now func() time.Time, max int, idle, abs time.Duration) *store {
	if st == nil {
		st = state.NewMemory()
	}
	return &store{st: st, log: log, now: now, max: max, idle: idle, abs: abs}
}

func randomID() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("portal: crypto/rand failed: " + err.Error()) // rand.Read does not fail on Linux
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func keyOf(id string) sessionKey {
	return sessionKey{hash: sha256.Sum256([]byte(id)), seal: sha256.Sum256([]byte("cvpn portal session seal\x00" + id))}
}

func (k sessionKey) storeKey() string { return hex.EncodeToString(k.hash[:]) }
func (k sessionKey) sealKey() string  { return hex.EncodeToString(k.seal[:]) }

// until is when se expires: a fixed time for a session not signed in, else IdleTimeout
// after it was last seen and AbsoluteTimeout after login, whichever comes first.
func (st *store) until(se *session) time.Time {
	if se.id == nil && !se.placeUntil.IsZero() {
		return se.placeUntil
	}
	t := se.seen.Add(st.idle)
	if a := se.created.Add(st.abs); a.Before(t) {
		t = a
	}
	return t
}

func (st *store) encode(se *session) ([]byte, error) {
	v, err := json.Marshal(se.record())
	if err != nil {
		return nil, err
	}
	return expiry.Seal("portal session", se.key.sealKey(), v), nil
}

func (st *store) decode(k sessionKey, sealed []byte) (session, error) {
	v, err := expiry.Open("portal session", k.sealKey(), sealed)
	if err != nil {
		return session{}, err
	}
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return session{}, err
	}
	return r.session(k), nil
}

// get reads the live session of k.
func (st *store) get(ctx context.Context, k sessionKey, now time.Time) (session, bool) {
	v, _, err := expiry.Get(ctx, st.st, SessionBucket, k.storeKey(), now)
	if err != nil {
		if !errors.Is(err, state.ErrNotFound) {
			st.log.Error("portal: reading a session failed", "err", err)
		}
		return session{}, false
	}
	se, err := st.decode(k, v)
	if err != nil {
		st.log.Error("portal: reading a session failed", "err", err)
		return session{}, false
	}
	return se, true
}

// lookup returns a copy of the session of the request's cookie, touching it, or false.
func (st *store) lookup(r *http.Request, now time.Time) (session, bool) {
	c, err := r.Cookie(cookieName)
	if err != nil || len(c.Value) != 43 { // 32 bytes in unpadded base64url
		return session{}, false
	}
	k := keyOf(c.Value)
	se, ok := st.get(r.Context(), k, now)
	if !ok {
		return session{}, false
	}
	if se.id != nil && now.Sub(se.seen) >= touchEvery {
		st.update(r.Context(), k, func(n *session) { n.seen = now })
		se.seen = now
	}
	return se, true
}

// create makes a session for a browser at addr (as addrKey spells it) with fill applied and
// returns its id and a copy.
func (st *store) create(ctx context.Context, addr string, now time.Time, fill func(*session)) (string, session, error) {
	st.sweep(ctx, now)
	id := randomID()
	se := session{key: keyOf(id), csrf: randomID(), created: now, seen: now}
	if fill != nil {
		fill(&se)
	}
	if err := st.reserve(ctx, &se, addr, now); err != nil {
		return "", session{}, err
	}
	if err := st.put(ctx, &se); err != nil {
		st.release(ctx, &se, now)
		return "", session{}, err
	}
	return id, se, nil
}

// reserve takes the ledger places of a new session: "anon" and its address's while not
// signed in, its user's once signed in.
func (st *store) reserve(ctx context.Context, se *session, addr string, now time.Time) error {
	var ledgers []ledger
	if se.id == nil {
		se.placeUntil = now.Add(min(anonTTL, st.idle))
		all, places := expiry.Shard("anon", se.key.storeKey(), st.max)
		ledgers = []ledger{{"anon/" + addr, anonPerAddress}, {all, places}}
	} else {
		se.placeUntil = se.created.Add(st.abs)
		ledgers = []ledger{{"user/" + expiry.Key("portal user", se.id.Username), MaxSessionsPerUser}}
	}
	se.places = nil
	for _, l := range ledgers {
		if err := expiry.Reserve(ctx, st.st, SessionBoundBucket, l.key, now, se.placeUntil, l.max); err != nil {
			st.release(ctx, se, now)
			if errors.Is(err, expiry.ErrFull) {
				return ErrBusy
			}
			st.log.Error("portal: recording a session failed", "err", err)
			return ErrBusy
		}
		se.places = append(se.places, l.key)
	}
	return nil
}

// ledger is a bound: a key of SessionBoundBucket and its number of places.
type ledger struct {
	key string
	max int
}

// release gives back the places se holds.
func (st *store) release(ctx context.Context, se *session, now time.Time) {
	for _, l := range se.places {
		_ = expiry.Release(ctx, st.st, SessionBoundBucket, l, now, se.placeUntil)
	}
	se.places = nil
}

func (st *store) put(ctx context.Context, se *session) error {
	v, err := st.encode(se)
	if err == nil {
		err = expiry.Put(ctx, st.st, SessionBucket, se.key.storeKey(), st.until(se), v)
	}
	if err != nil {
		st.log.Error("portal: recording a session failed", "err", err)
		return ErrBusy
	}
	return nil
}

// rotate replaces the session of key by a new one (a new id and CSRF token) that keeps
// returnTo, with fill applied: done at every change of privilege against session fixation.
// A session still not signed in keeps the places (and so the expiry) of the one it
// replaces; one signed in gives them back and takes its user's.
func (st *store) rotate(ctx context.Context, key sessionKey, now time.Time, fill func(*session)) (string, session, error) {
	old, ok := st.get(ctx, key, now)
	if ok {
		st.drop(ctx, key, false)
	}
	id := randomID()
	se := session{key: keyOf(id), csrf: randomID(), created: now, seen: now, returnTo: old.returnTo}
	fill(&se)
	if se.id == nil && ok && old.id == nil {
		se.places, se.placeUntil = old.places, old.placeUntil
	} else {
		if ok {
			st.release(ctx, &old, now)
		}
		// The address of a rotated session is its first one's: a session not signed in
		// that had none (it expired meanwhile) counts under "rotated".
		if err := st.reserve(ctx, &se, "rotated", now); err != nil {
			return "", session{}, err
		}
	}
	if err := st.put(ctx, &se); err != nil {
		st.release(ctx, &se, now)
		return "", session{}, err
	}
	return id, se, nil
}

// update applies fn to the live session of key (compare-and-swap: fn may run more than
// once); false if it is gone.
func (st *store) update(ctx context.Context, key sessionKey, fn func(*session)) bool {
	now := st.now()
	found := false
	err := expiry.Update(ctx, st.st, SessionBucket, key.storeKey(), now, func(p []byte, _ time.Time, ok bool) ([]byte, time.Time, error) {
		found = false
		if !ok {
			return nil, time.Time{}, errGone
		}
		se, err := st.decode(key, p)
		if err != nil {
			return nil, time.Time{}, err
		}
		fn(&se)
		v, err := st.encode(&se)
		if err != nil {
			return nil, time.Time{}, err
		}
		found = true
		return v, st.until(&se), nil
	})
	if err != nil && !errors.Is(err, errGone) {
		st.log.Error("portal: changing a session failed", "err", err)
	}
	return err == nil && found
}

var errGone = errors.New("portal: session gone")

// drop forgets the session of key; release gives back its places too.
func (st *store) drop(ctx context.Context, key sessionKey, release bool) {
	now := st.now()
	var se session
	var had bool
	err := expiry.Update(ctx, st.st, SessionBucket, key.storeKey(), now, func(p []byte, _ time.Time, ok bool) ([]byte, time.Time, error) {
		had = false
		if ok {
			if s, err := st.decode(key, p); err == nil {
				se, had = s, true
			}
		}
		return nil, time.Time{}, nil
	})
	if err != nil {
		st.log.Error("portal: ending a session failed", "err", err)
		return
	}
	if release && had {
		st.release(ctx, &se, now)
	}
}

// sweep deletes a batch of expired keys, at most every sweepEvery on this node.
func (st *store) sweep(ctx context.Context, now time.Time) {
	st.mu.Lock()
	due := now.Sub(st.lastSweep) >= sweepEvery
	if due {
		st.lastSweep = now
	}
	st.mu.Unlock()
	if due {
		for _, b := range []string{SessionBucket, SessionBoundBucket} {
			_, _ = expiry.Sweep(ctx, st.st, b, now, sweepBatch)
		}
	}
}

// len is the number of sessions kept: for tests.
func (st *store) len() int {
	keys, _ := st.st.List(context.Background(), SessionBucket)
	return len(keys)
}

// setCookie gives the browser the session id.
func setCookie(w http.ResponseWriter, id string) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}

// clearCookie removes the session cookie from the browser.
func clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}
