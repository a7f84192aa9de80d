package portal

import (
	"container/list"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// cookieName is the session cookie. The __Host- prefix makes browsers refuse it unless it
// is Secure, has Path=/ and no Domain: no sibling host can plant or overwrite it.
const cookieName = "__Host-cvpn"

// sessionKey is the store's key of a session: the SHA-256 of its id, so the id itself is not
// kept (a memory dump or a log of keys gives no cookie).
type sessionKey [32]byte

// session is one browser's state. The store's mutex guards every field; handlers work on
// copies (store.get) and change sessions through store.update.
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

	anon *list.Element // in store.anons while not signed in
}

// store keeps the browser sessions, bounded: when full it forgets expired sessions, then
// the oldest not signed in, and refuses a new session only when every one is signed in.
type store struct {
	max       int
	idle, abs time.Duration

	mu        sync.Mutex
	m         map[sessionKey]*session
	anons     *list.List // of *session, oldest first
	lastSweep time.Time
}

func newStore(max int, idle, abs time.Duration) *store {
	return &store{max: max, idle: idle, abs: abs, m: map[sessionKey]*session{}, anons: list.New()}
}

func randomID() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("portal: crypto/rand failed: " + err.Error()) // rand.Read does not fail on Linux
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func keyOf(id string) sessionKey { return sha256.Sum256([]byte(id)) }

// expiredLocked reports whether se is past its idle or absolute expiry.
func (st *store) expiredLocked(se *session, now time.Time) bool {
	return now.Sub(se.seen) >= st.idle || now.Sub(se.created) >= st.abs
}

func (st *store) deleteLocked(se *session) {
	delete(st.m, se.key)
	if se.anon != nil {
		st.anons.Remove(se.anon)
		se.anon = nil
	}
}

// lookup returns a copy of the session of the request's cookie, touching it, or false.
func (st *store) lookup(r *http.Request, now time.Time) (session, bool) {
	c, err := r.Cookie(cookieName)
	if err != nil || len(c.Value) != 43 { // 32 bytes in unpadded base64url
		return session{}, false
	}
	k := keyOf(c.Value)
	st.mu.Lock()
	defer st.mu.Unlock()
	se := st.m[k]
	if se == nil {
		return session{}, false
	}
	if st.expiredLocked(se, now) {
		st.deleteLocked(se)
		return session{}, false
	}
	se.seen = now
	return *se, true
}

// create makes a session with fill applied and returns its id and a copy.
func (st *store) create(now time.Time, fill func(*session)) (string, session, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.createLocked(now, fill)
}

func (st *store) createLocked(now time.Time, fill func(*session)) (string, session, error) {
	if len(st.m) >= st.max {
		st.sweepLocked(now)
	}
	if len(st.m) >= st.max {
		front := st.anons.Front()
		if front == nil {
			return "", session{}, ErrBusy
		}
		st.deleteLocked(front.Value.(*session))
	}
	id := randomID()
	se := &session{key: keyOf(id), csrf: randomID(), created: now, seen: now}
	if fill != nil {
		fill(se)
	}
	if se.id == nil {
		se.anon = st.anons.PushBack(se)
	}
	st.m[se.key] = se
	return id, *se, nil
}

// rotate replaces the session of key by a new one (a new id and CSRF token) that keeps
// returnTo, with fill applied: done at every change of privilege against session fixation.
func (st *store) rotate(key sessionKey, now time.Time, fill func(*session)) (string, session, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	var returnTo string
	if old := st.m[key]; old != nil {
		returnTo = old.returnTo
		st.deleteLocked(old)
	}
	return st.createLocked(now, func(se *session) {
		se.returnTo = returnTo
		fill(se)
	})
}

// update applies fn to the live session of key; false if it is gone.
func (st *store) update(key sessionKey, fn func(*session)) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	se := st.m[key]
	if se == nil {
		return false
	}
	fn(se)
	return true
}

// drop forgets the session of key.
func (st *store) drop(key sessionKey) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if se := st.m[key]; se != nil {
		st.deleteLocked(se)
	}
}

func (st *store) sweepLocked(now time.Time) {
	// A flood of new sessions would sweep the whole map each time: at most once a second,
	// and between sweeps the oldest sessions not signed in make room.
	if now.Sub(st.lastSweep) < time.Second {
		return
	}
	st.lastSweep = now
	for _, se := range st.m {
		if st.expiredLocked(se, now) {
			st.deleteLocked(se)
		}
	}
}

// len is the number of sessions kept.
func (st *store) len() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.m)
}

// setCookie gives the browser the session id.
func setCookie(w http.ResponseWriter, id string) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}

// clearCookie removes the session cookie from the browser.
func clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}
