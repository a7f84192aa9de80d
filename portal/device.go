package portal

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/cvpn/cvpn/auth/sso"
)

// deviceData is the data of the device-login page.
type deviceData struct {
	Code, RawCode     string
	Remote            string
	Platform, Version string
	Hint              string
	Started           string
	// OtherAddress: the connection comes from another address than the browser (a hint of
	// a link someone else sent; NAT and mobile networks make it differ legitimately too).
	OtherAddress bool
}

// Device-login messages.
const (
	msgDeviceUnknown = "This sign-in link is unknown or has expired. Connect again with your VPN client to get a new one."
	msgDeviceDone    = "This connection was approved or denied already."
)

// deviceCode returns the normalised code of a path or form value, or "" if it cannot be one.
func deviceCode(raw string) string {
	c := sso.NormalizeCode(raw)
	if c == "" || len(c) > 16 {
		return ""
	}
	for i := 0; i < len(c); i++ {
		if (c[i] < 'A' || c[i] > 'Z') && (c[i] < '0' || c[i] > '9') {
			return ""
		}
	}
	return c
}

// deviceForm is where a user types the code their client showed: /d?code=X goes to /d/X.
func (s *Server) deviceForm(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Devices == nil {
		s.notFound(w, r)
		return
	}
	raw := r.URL.Query().Get("code")
	if c := deviceCode(raw); c != "" {
		http.Redirect(w, r, "/d/"+c, http.StatusSeeOther)
		return
	}
	v := view{Heading: "Approve a device"}
	if raw != "" {
		v.Error = "That is not a code from a VPN client: codes are letters and digits, like ABCD-EFGH."
	}
	if se, ok := s.sessions.lookup(r, s.now()); ok {
		v.User, v.CSRF = se.id, se.csrf
	}
	s.render(w, http.StatusOK, "devform", v)
}

// lookupDevice finds the login of the request's code, or answers: 429 over the address's
// failures, 404 unknown (counted as a failure, as guessing codes is how it is attacked), 410
// decided already.
func (s *Server) lookupDevice(w http.ResponseWriter, r *http.Request) (string, sso.Login, bool) {
	if s.cfg.Devices == nil {
		s.notFound(w, r)
		return "", sso.Login{}, false
	}
	if s.limited(w, r, "") {
		return "", sso.Login{}, false
	}
	code := deviceCode(r.PathValue("code"))
	var l sso.Login
	err := sso.ErrUnknown
	if code != "" {
		l, err = s.cfg.Devices.Lookup(r.Context(), code)
	}
	switch {
	case errors.Is(err, sso.ErrDone):
		s.fail(w, r, http.StatusGone, msgDeviceDone)
		return "", sso.Login{}, false
	case err != nil:
		s.addrs.fail(r.Context(), clientAddr(r), s.now())
		s.log.Warn("portal: unknown device-login code", "client_ip", clientAddr(r))
		s.fail(w, r, http.StatusNotFound, msgDeviceUnknown)
		return "", sso.Login{}, false
	}
	return code, l, true
}

// devicePage shows a device login to approve, after the user signed in.
func (s *Server) devicePage(w http.ResponseWriter, r *http.Request) {
	code, l, ok := s.lookupDevice(w, r)
	if !ok {
		return
	}
	se, ok := s.user(w, r, false)
	if !ok {
		return
	}
	a := l.Attempt
	remote := "unknown"
	if a.Remote.IsValid() {
		remote = a.Remote.String()
	}
	ago := s.now().Sub(l.Created).Round(time.Second)
	d := deviceData{
		Code: sso.FormatCode(code), RawCode: code, Remote: remote,
		Platform: shown(a.Platform), Version: shown(a.Version), Hint: shown(a.Hint),
		Started:      fmt.Sprintf("%s UTC (%v ago)", l.Created.UTC().Format("2006-01-02 15:04:05"), ago),
		OtherAddress: a.Remote.IsValid() && clientAddr(r) != addrKey(a.Remote),
	}
	s.render(w, http.StatusOK, "device", view{Heading: "Approve this connection?", CSRF: se.csrf, User: se.id, Data: d})
}

// shown bounds a value the client sent for display (html/template escapes it).
func shown(v string) string {
	if len(v) > 64 {
		v = v[:64] + "…"
	}
	if !printable(v) {
		return fmt.Sprintf("%.64q", v)
	}
	return v
}

// deviceDecide approves or denies a device login.
func (s *Server) deviceDecide(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Devices == nil {
		s.notFound(w, r)
		return
	}
	se, ok := s.userPost(w, r, false)
	if !ok {
		return
	}
	code, l, ok := s.lookupDevice(w, r)
	if !ok {
		return
	}
	var err error
	event, text := EventDeviceApprove, "The connection is approved. Go back to your VPN client: it connects now (the command-line client: press Enter)."
	switch r.PostForm.Get("decision") {
	case "approve":
		id := se.id
		err = s.cfg.Devices.Complete(r.Context(), code, sso.Identity{Username: id.Username, Groups: id.Groups, Subject: id.Subject, Issuer: id.Issuer})
	case "deny":
		event, text = EventDeviceDeny, "The connection is denied."
		err = s.cfg.Devices.Fail(r.Context(), code, errDenied)
	default:
		s.fail(w, r, http.StatusBadRequest, "Choose Approve or Deny.")
		return
	}
	switch {
	case errors.Is(err, sso.ErrDone):
		s.fail(w, r, http.StatusGone, msgDeviceDone)
		return
	case err != nil:
		s.fail(w, r, http.StatusNotFound, msgDeviceUnknown)
		return
	}
	s.audit(r, event, "user", se.id.Username, "method", se.id.Method, "connection", l.Attempt.ConnectionID, "remote", l.Attempt.Remote.String())
	s.render(w, http.StatusOK, "message", view{Heading: "Done", CSRF: se.csrf, User: se.id, Data: message{Text: text, Link: "/", LinkText: "Back to the portal"}})
}
