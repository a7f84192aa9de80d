package portal

import (
	"context"
	"html/template"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"rsc.io/qr"
)

// maxOTPAuthURI bounds the enrolment URI drawn as a QR code (a version-40 code at level M
// holds about 2300 bytes; real URIs are about 120).
const maxOTPAuthURI = 2048

// user returns the signed-in session of a GET, or sends the browser to sign in (or to enrol
// an authenticator first, unless enrolling is what it asks for).
func (s *Server) user(w http.ResponseWriter, r *http.Request, enrolling bool) (session, bool) {
	se, ok := s.sessions.lookup(r, s.now())
	if !ok || se.id == nil {
		http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		return session{}, false
	}
	if se.needsEnrol && !enrolling {
		http.Redirect(w, r, "/mfa", http.StatusSeeOther)
		return session{}, false
	}
	return se, true
}

// userPost returns the signed-in session of a POST that passed the CSRF checks.
func (s *Server) userPost(w http.ResponseWriter, r *http.Request, enrolling bool) (session, bool) {
	se, ok := s.sessions.lookup(r, s.now())
	if !s.checkPost(w, r, se, ok) {
		return session{}, false
	}
	if se.id == nil {
		s.fail(w, r, http.StatusForbidden, "Sign in first.")
		return session{}, false
	}
	if se.needsEnrol && !enrolling {
		s.fail(w, r, http.StatusForbidden, "Enrol an authenticator first.")
		return session{}, false
	}
	return se, true
}

// takeFlash returns and clears the session's one-shot message.
func (s *Server) takeFlash(ctx context.Context, se session) string {
	if se.flash != "" {
		s.sessions.update(ctx, se.key, func(n *session) { n.flash = "" })
	}
	return se.flash
}

func (s *Server) setFlash(ctx context.Context, se session, msg string) {
	s.sessions.update(ctx, se.key, func(n *session) { n.flash = msg })
}

// homeData is the data of the home page.
type homeData struct {
	Download     bool
	UDP, TCP     bool // the profiles offered (Config.Protocols)
	MFA          bool
	Enrolled     bool
	ShowSessions bool
	Sessions     []SessionView
	Devices      bool
}

func (s *Server) mfaFor(id *Identity) bool {
	return s.cfg.MFA != nil && id.Method == MethodDirectory
}

func (s *Server) home(w http.ResponseWriter, r *http.Request) {
	se, ok := s.user(w, r, false)
	if !ok {
		return
	}
	d := homeData{MFA: s.mfaFor(se.id), ShowSessions: s.cfg.Sessions != nil, Devices: s.cfg.Devices != nil}
	if s.cfg.Profiles != nil {
		d.UDP, d.TCP = s.offers("udp"), s.offers("tcp")
		d.Download = d.UDP || d.TCP
	}
	if d.MFA {
		enrolled, err := s.cfg.MFA.Enrolled(r.Context(), se.id.Username)
		if err != nil {
			s.log.Error("portal: reading the second factor's enrolment failed", "user", se.id.Username, "err", err)
		}
		d.Enrolled = enrolled
	}
	if d.ShowSessions {
		d.Sessions = s.cfg.Sessions.List(se.id.Username)
	}
	s.render(w, http.StatusOK, "home", view{Heading: "Your VPN", CSRF: se.csrf, User: se.id, Flash: s.takeFlash(r.Context(), se), Data: d})
}

// download sends the user's profile. It is a POST: for certificate endpoints it issues a
// certificate, which no cross-site link may make a browser do.
func (s *Server) download(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Profiles == nil {
		s.notFound(w, r)
		return
	}
	se, ok := s.userPost(w, r, false)
	if !ok {
		return
	}
	proto := r.PostForm.Get("proto")
	if proto != "udp" && proto != "tcp" {
		s.fail(w, r, http.StatusBadRequest, "Choose UDP or TCP.")
		return
	}
	if !s.offers(proto) {
		s.fail(w, r, http.StatusNotFound, "This VPN has no "+strings.ToUpper(proto)+" profile: it does not listen on "+strings.ToUpper(proto)+".")
		return
	}
	name, body, err := s.cfg.Profiles.Profile(r.Context(), *se.id, proto)
	if err != nil {
		s.log.Error("portal: making a profile failed", "user", se.id.Username, "proto", proto, "err", err)
		s.fail(w, r, http.StatusBadGateway, "The profile could not be made. Try again later.")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/x-openvpn-profile")
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": profileName(name, proto)}))
	h.Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
	if s.cfg.OnDownload != nil {
		s.cfg.OnDownload(proto)
	}
	s.audit(r, EventDownload, "user", se.id.Username, "method", se.id.Method, "proto", proto)
}

// offers reports whether the endpoint listens on proto (Config.Protocols), so that its
// profile can be downloaded.
func (s *Server) offers(proto string) bool {
	if s.cfg.Protocols == nil {
		return true
	}
	return slices.Contains(s.cfg.Protocols(), proto)
}

// profileName is a file name safe in a Content-Disposition header and on any file system.
func profileName(name, proto string) string {
	var b strings.Builder
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
			b.WriteRune(c)
		default:
			b.WriteByte('_')
		}
		if b.Len() >= 96 {
			break
		}
	}
	n := strings.TrimLeft(b.String(), ".")
	if n == "" {
		n = "cvpn-" + proto
	}
	if !strings.HasSuffix(n, ".ovpn") {
		n += ".ovpn"
	}
	return n
}

// enrolData is the data of the enrolment page.
type enrolData struct {
	Required bool
	URI      template.URL // an otpauth:// URI checked by mfaEnrol
	Secret   string
}

func (s *Server) mfaPage(w http.ResponseWriter, r *http.Request) {
	se, ok := s.user(w, r, true)
	if !ok {
		return
	}
	if !s.mfaFor(se.id) {
		s.notFound(w, r)
		return
	}
	s.enrolView(w, r, se, http.StatusOK, "")
}

func (s *Server) enrolView(w http.ResponseWriter, r *http.Request, se session, status int, errText string) {
	d := enrolData{Required: se.needsEnrol}
	if se.enrolURI != "" {
		d.URI = template.URL(se.enrolURI)
		if u, err := url.Parse(se.enrolURI); err == nil {
			d.Secret = u.Query().Get("secret")
		}
	}
	s.render(w, status, "enrol", view{Heading: "Authenticator", CSRF: se.csrf, User: se.id, Error: errText, Flash: s.takeFlash(r.Context(), se), Data: d})
}

func (s *Server) mfaEnrol(w http.ResponseWriter, r *http.Request) {
	se, ok := s.userPost(w, r, true)
	if !ok {
		return
	}
	if !s.mfaFor(se.id) {
		s.notFound(w, r)
		return
	}
	uri, err := s.cfg.MFA.Enroll(r.Context(), se.id.Username)
	if err == nil && (!strings.HasPrefix(uri, "otpauth://") || len(uri) > maxOTPAuthURI) {
		err = errBadURI
	}
	if err != nil {
		s.log.Error("portal: enrolling an authenticator failed", "user", se.id.Username, "err", err)
		s.fail(w, r, http.StatusBadGateway, "The authenticator could not be enrolled. Try again later.")
		return
	}
	s.sessions.update(r.Context(), se.key, func(n *session) { n.enrolURI = uri })
	s.audit(r, EventMFAEnrol, "user", se.id.Username)
	http.Redirect(w, r, "/mfa", http.StatusSeeOther)
}

// mfaQR draws the enrolment's otpauth URI as a PNG QR code. The URI holds the secret: it
// is drawn only for the session that enrolled, and never cached.
func (s *Server) mfaQR(w http.ResponseWriter, r *http.Request) {
	se, ok := s.user(w, r, true)
	if !ok {
		return
	}
	if se.enrolURI == "" {
		s.notFound(w, r)
		return
	}
	code, err := qr.Encode(se.enrolURI, qr.M)
	if err != nil {
		s.log.Error("portal: drawing the QR code failed", "err", err)
		s.fail(w, r, http.StatusInternalServerError, "The QR code could not be drawn.")
		return
	}
	png := code.PNG()
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Content-Length", strconv.Itoa(len(png)))
	_, _ = w.Write(png)
}

// mfaConfirm checks the first code of a new authenticator; a user who had to enrol is then
// signed in fully, in a new session.
func (s *Server) mfaConfirm(w http.ResponseWriter, r *http.Request) {
	se, ok := s.userPost(w, r, true)
	if !ok {
		return
	}
	if !s.mfaFor(se.id) || se.enrolURI == "" {
		s.fail(w, r, http.StatusBadRequest, "There is no enrolment to confirm. Enrol an authenticator first.")
		return
	}
	if s.limited(w, r, se.id.Username) {
		return
	}
	code := strings.TrimSpace(r.PostForm.Get("code"))
	if len(code) > 16 {
		code = ""
	}
	if err := s.cfg.MFA.Verify(r.Context(), se.id.Username, code); err != nil {
		s.log.Warn("portal: confirming an authenticator refused", "user", se.id.Username, "err", err)
		s.failed(r, se.id.Username, MethodDirectory, "wrong code confirming an authenticator")
		s.enrolView(w, r, se, http.StatusUnauthorized, msgBadCode)
		return
	}
	s.audit(r, EventMFAConfirm, "user", se.id.Username)
	if !se.needsEnrol {
		s.sessions.update(r.Context(), se.key, func(n *session) { n.enrolURI, n.flash = "", "Your authenticator is enrolled." })
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	id := *se.id
	var returnTo string
	newID, _, err := s.sessions.rotate(r.Context(), se.key, s.now(), func(n *session) {
		n.id, returnTo, n.returnTo = &id, n.returnTo, ""
		n.flash = "Your authenticator is enrolled."
	})
	if err != nil {
		s.fail(w, r, http.StatusServiceUnavailable, "The portal is busy. Try again in a minute.")
		return
	}
	setCookie(w, newID)
	if returnTo == "" {
		returnTo = "/"
	}
	http.Redirect(w, r, returnTo, http.StatusSeeOther)
}

func (s *Server) mfaReset(w http.ResponseWriter, r *http.Request) {
	se, ok := s.userPost(w, r, false)
	if !ok {
		return
	}
	if !s.mfaFor(se.id) {
		s.notFound(w, r)
		return
	}
	if err := s.cfg.MFA.Reset(r.Context(), se.id.Username); err != nil {
		s.log.Error("portal: removing an authenticator failed", "user", se.id.Username, "err", err)
		s.fail(w, r, http.StatusBadGateway, "The authenticator could not be removed. Try again later.")
		return
	}
	s.sessions.update(r.Context(), se.key, func(n *session) { n.enrolURI, n.flash = "", "Your authenticator was removed." })
	s.audit(r, EventMFAReset, "user", se.id.Username)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// endSession ends one of the user's own VPN connections. The connection must be among the
// user's as Sessions lists them, and Sessions.End is told the user too.
func (s *Server) endSession(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Sessions == nil {
		s.notFound(w, r)
		return
	}
	se, ok := s.userPost(w, r, false)
	if !ok {
		return
	}
	conn := r.PostForm.Get("connection")
	own := slices.ContainsFunc(s.cfg.Sessions.List(se.id.Username), func(v SessionView) bool { return v.ConnectionID == conn })
	err := errNotOwn
	if own && conn != "" {
		err = s.cfg.Sessions.End(se.id.Username, conn)
	}
	if err != nil {
		s.log.Warn("portal: ending a connection refused", "user", se.id.Username, "connection", logName(conn), "err", err)
		s.fail(w, r, http.StatusNotFound, "That connection is not one of yours, or it has ended already.")
		return
	}
	s.setFlash(r.Context(), se, "The connection was ended.")
	s.audit(r, EventSessionEnded, "user", se.id.Username, "connection", conn)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}
