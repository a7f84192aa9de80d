package portal

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// loginData is the data of the login page.
type loginData struct {
	Password  bool
	Federated []federatedButton
	Username  string
	Next      bool
}

type federatedButton struct{ Name, Label string }

// codeData is the data of the second-factor step.
type codeData struct{ Username string }

// Messages shown for refused logins: the same whatever was wrong, so they tell an attacker
// nothing about which usernames exist.
const (
	msgBadPassword = "Wrong username or password."
	msgBadCode     = "Wrong or already used code. Wait for the next code and try again."
	msgLimited     = "Too many failed sign-ins for this account or from this address. Try again in %d minutes."
	msgExpired     = "Your sign-in has expired. Start again."
	msgFederated   = "Signing in at the identity provider did not succeed. Start again from the sign-in page."
)

func (s *Server) loginView(se session, status int, w http.ResponseWriter, errText, username string) {
	d := loginData{Password: s.cfg.Password != nil, Username: username, Next: se.returnTo != ""}
	for _, n := range s.fedNames {
		label := "Sign in with single sign-on (OIDC)"
		if n == MethodSAML {
			label = "Sign in with single sign-on (SAML)"
		}
		d.Federated = append(d.Federated, federatedButton{Name: n, Label: label})
	}
	s.render(w, status, "login", view{Heading: "Sign in", CSRF: se.csrf, Error: errText, Data: d})
}

// loginPage shows the sign-in form, or the code step of a login waiting for its code. It
// gives a browser without a session an anonymous one, for the form's CSRF token.
func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	next := localPath(r.URL.Query().Get("next"))
	se, ok := s.sessions.lookup(r, now)
	if ok && se.id != nil {
		switch {
		case se.needsEnrol:
			http.Redirect(w, r, "/mfa", http.StatusSeeOther)
		case next != "":
			http.Redirect(w, r, next, http.StatusSeeOther)
		default:
			http.Redirect(w, r, "/", http.StatusSeeOther)
		}
		return
	}
	if !ok {
		id, fresh, err := s.sessions.create(r.Context(), clientAddr(r), now, func(n *session) { n.returnTo = next })
		if err != nil {
			s.fail(w, r, http.StatusServiceUnavailable, "The portal is busy. Try again in a minute.")
			return
		}
		setCookie(w, id)
		se = fresh
	} else if next != "" {
		s.sessions.update(r.Context(), se.key, func(n *session) { n.returnTo = next })
		se.returnTo = next
	}
	if se.codeFor != nil && now.Before(se.codeTill) {
		s.render(w, http.StatusOK, "code", view{Heading: "Second step", CSRF: se.csrf, Data: codeData{Username: se.codeFor.Username}})
		return
	}
	s.loginView(se, http.StatusOK, w, "", "")
}

// limited answers 429 if the client address or the username (when not empty) is over its
// failures; it reports whether it did.
func (s *Server) limited(w http.ResponseWriter, r *http.Request, user string) bool {
	now := s.now()
	addr := clientAddr(r)
	over, wait := s.addrs.limited(r.Context(), addr, now)
	if !over && user != "" {
		over, wait = s.users.limited(r.Context(), userKey(user), now)
	}
	if !over {
		return false
	}
	mins := int((wait + time.Minute - 1) / time.Minute)
	// One record a minute per address and user: a flood of refused attempts is not a
	// flood of audit records.
	if k := addr + "\x00" + userKey(user); !s.limitAudits.throttled(r.Context(), k, now) {
		s.audit(r, EventLoginLimited, "user", logName(user))
	}
	w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)+1))
	s.fail(w, r, http.StatusTooManyRequests, fmt.Sprintf(msgLimited, mins))
	return true
}

// failed counts a failed login of user (may be empty) from the request's address.
func (s *Server) failed(r *http.Request, user, method, reason string) {
	now := s.now()
	s.addrs.fail(r.Context(), clientAddr(r), now)
	if user != "" {
		s.users.fail(r.Context(), userKey(user), now)
	}
	s.audit(r, EventLoginFailed, "user", logName(user), "method", method, "reason", reason)
}

// logName is a username as logs and audit records show it: bounded and printable.
func logName(u string) string {
	if len(u) > maxUsername {
		u = u[:maxUsername]
	}
	if !printable(u) {
		return strconv.Quote(u)
	}
	return u
}

func (s *Server) passwordLogin(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	se, ok := s.sessions.lookup(r, now)
	if s.cfg.Password == nil {
		s.notFound(w, r)
		return
	}
	if !s.checkPost(w, r, se, ok) {
		return
	}
	user, password := r.PostForm.Get("username"), r.PostForm.Get("password")
	if s.limited(w, r, user) {
		return
	}
	if user == "" || len(user) > maxUsername || !printable(user) || password == "" || len(password) > maxPassword {
		s.failed(r, user, MethodDirectory, "malformed username or password")
		s.loginView(se, http.StatusUnauthorized, w, msgBadPassword, "")
		return
	}
	id, err := s.cfg.Password.Login(r.Context(), user, password)
	if err == nil {
		err = validIdentity(id)
	}
	if err != nil {
		// The error may say more than the user should learn (which users exist): logged,
		// not shown.
		s.log.Warn("portal: directory login refused", "user", logName(user), "err", err)
		s.failed(r, user, MethodDirectory, "wrong username or password")
		s.loginView(se, http.StatusUnauthorized, w, msgBadPassword, user)
		return
	}
	id.Method = MethodDirectory
	if s.cfg.MFA == nil {
		s.signedIn(w, r, se.key, id, false)
		return
	}
	enrolled, err := s.cfg.MFA.Enrolled(r.Context(), id.Username)
	if err != nil {
		s.log.Error("portal: reading the second factor's enrolment failed", "user", id.Username, "err", err)
		s.fail(w, r, http.StatusServiceUnavailable, "The second sign-in step cannot be checked now. Try again later.")
		return
	}
	if !enrolled {
		// A user without an authenticator signs in with the password and may then do one
		// thing: enrol one (and confirm it with a code) before anything else.
		s.signedIn(w, r, se.key, id, true)
		return
	}
	newID, _, err := s.sessions.rotate(r.Context(), se.key, now, func(n *session) {
		n.codeFor, n.codeTill = &id, now.Add(codeStepTTL)
	})
	if err != nil {
		s.fail(w, r, http.StatusServiceUnavailable, "The portal is busy. Try again in a minute.")
		return
	}
	setCookie(w, newID)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

func (s *Server) codeLogin(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	se, ok := s.sessions.lookup(r, now)
	if !s.checkPost(w, r, se, ok) {
		return
	}
	if se.codeFor == nil || !now.Before(se.codeTill) || s.cfg.MFA == nil {
		s.loginView(se, http.StatusUnauthorized, w, msgExpired, "")
		return
	}
	id := *se.codeFor
	if s.limited(w, r, id.Username) {
		return
	}
	code := strings.TrimSpace(r.PostForm.Get("code"))
	if len(code) > 16 {
		code = ""
	}
	if err := s.cfg.MFA.Verify(r.Context(), id.Username, code); err != nil {
		s.log.Warn("portal: second factor refused", "user", id.Username, "err", err)
		s.failed(r, id.Username, MethodDirectory, "wrong authenticator code")
		s.render(w, http.StatusUnauthorized, "code", view{Heading: "Second step", CSRF: se.csrf, Error: msgBadCode, Data: codeData{Username: id.Username}})
		return
	}
	s.signedIn(w, r, se.key, id, false)
}

func (s *Server) cancelLogin(w http.ResponseWriter, r *http.Request) {
	se, ok := s.sessions.lookup(r, s.now())
	if !s.checkPost(w, r, se, ok) {
		return
	}
	s.sessions.update(r.Context(), se.key, func(n *session) { n.codeFor = nil })
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// signedIn ends a successful login: a new session (id and CSRF token) for the identity, then
// the page the user came for (or enrolment first).
func (s *Server) signedIn(w http.ResponseWriter, r *http.Request, old sessionKey, id Identity, needsEnrol bool) {
	now := s.now()
	var returnTo string
	newID, _, err := s.sessions.rotate(r.Context(), old, now, func(n *session) {
		n.id, n.needsEnrol = &id, needsEnrol
		returnTo = n.returnTo
		if !needsEnrol {
			n.returnTo = ""
		}
	})
	if err != nil {
		s.fail(w, r, http.StatusServiceUnavailable, "The portal is busy. Try again in a minute.")
		return
	}
	s.users.forget(r.Context(), userKey(id.Username))
	setCookie(w, newID)
	s.audit(r, EventLogin, "user", id.Username, "method", id.Method, "mfa_enrolment_needed", needsEnrol)
	switch {
	case needsEnrol:
		http.Redirect(w, r, "/mfa", http.StatusSeeOther)
	case returnTo != "":
		http.Redirect(w, r, returnTo, http.StatusSeeOther)
	default:
		http.Redirect(w, r, "/", http.StatusSeeOther)
	}
}

// beginFederated sends the browser to the identity provider, remembering which session
// began the login.
func (s *Server) beginFederated(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	f := s.federated[r.PathValue("name")]
	if f == nil {
		s.notFound(w, r)
		return
	}
	se, ok := s.sessions.lookup(r, now)
	if !s.checkPost(w, r, se, ok) {
		return
	}
	if s.limited(w, r, "") {
		return
	}
	to, state, err := f.Begin(r.Context())
	var u *url.URL
	if err == nil {
		if u, err = url.Parse(to); err == nil && (u.Scheme != "https" && u.Scheme != "http" || u.Host == "") {
			err = errors.New("the redirect URL is not an absolute http(s) URL")
		}
	}
	if err == nil && state == "" {
		err = errors.New("the login has no state")
	}
	if err != nil {
		s.log.Error("portal: beginning a federated login failed", "provider", f.Name(), "err", err)
		s.fail(w, r, http.StatusBadGateway, "The identity provider cannot be reached now. Try again later.")
		return
	}
	if err := s.pending.begin(r.Context(), state, f.Name(), se.key.hash, now); err != nil {
		s.fail(w, r, http.StatusServiceUnavailable, "Too many sign-ins are in progress. Try again in a minute.")
		return
	}
	if idp := u.Scheme + "://" + strings.ToLower(u.Host); !s.idps[idp] {
		// Browsers would block a redirect there (CSP form-action): a link is not a form.
		s.log.Warn("portal: the identity provider's origin is not in IdPOrigins: the user is shown a link", "provider", f.Name(), "origin", idp)
		s.render(w, http.StatusOK, "message", view{Heading: "Sign in", Data: message{Link: to, LinkText: "Continue to the identity provider"}})
		return
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// callback completes a federated login from the provider's answer. The answer may come
// without the session cookie (the SAML ACS is posted cross-site), so the login is finished
// by /login/finish in the browser that began it.
func (s *Server) callback(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		now := s.now()
		f := s.federated[name]
		if f == nil {
			s.notFound(w, r)
			return
		}
		if s.limited(w, r, "") {
			return
		}
		state, id, err := f.Complete(r.Context(), r)
		var l federatedLogin
		found, live := false, false
		if state != "" {
			l, live = s.pending.take(r.Context(), state, now)
			found = l.Provider != ""
		}
		if err == nil {
			err = validIdentity(id)
		}
		switch {
		case err != nil:
			s.log.Warn("portal: federated login refused", "provider", name, "err", err)
			s.failed(r, "", name, "the identity provider's answer was refused")
			s.fail(w, r, http.StatusUnauthorized, msgFederated)
			return
		case !found || !live || l.Provider != name:
			s.log.Warn("portal: federated answer for no login in progress", "provider", name, "found", found, "live", live)
			s.failed(r, "", name, "no such login in progress")
			s.fail(w, r, http.StatusBadRequest, msgExpired)
			return
		}
		id.Method = name
		l.ID = &id
		tok, err := s.pending.answered(r.Context(), l, now)
		if err != nil {
			s.log.Error("portal: federated login not kept", "provider", name, "err", err)
			s.fail(w, r, http.StatusServiceUnavailable, "The portal is busy. Try again in a minute.")
			return
		}
		http.Redirect(w, r, "/login/finish?t="+url.QueryEscape(tok), http.StatusSeeOther)
	}
}

// finishFederated signs in the browser that began a federated login, and only it.
func (s *Server) finishFederated(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	l, live := s.pending.finish(r.Context(), r.URL.Query().Get("t"), now)
	se, ok := s.sessions.lookup(r, now)
	if !live || !ok || se.key.hash != l.Session || l.ID == nil {
		s.failed(r, "", l.Provider, "finished in another browser, or expired")
		s.fail(w, r, http.StatusForbidden, "This sign-in was started in another browser, or it has expired. Start again.")
		return
	}
	s.signedIn(w, r, se.key, *l.ID, false)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	se, ok := s.sessions.lookup(r, s.now())
	if !s.checkPost(w, r, se, ok) {
		return
	}
	s.sessions.drop(r.Context(), se.key, true)
	clearCookie(w)
	if se.id != nil {
		s.audit(r, EventLogout, "user", se.id.Username, "method", se.id.Method)
	}
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
