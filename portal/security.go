package portal

import (
	"crypto/subtle"
	"net/http"
	"net/url"
	"strings"
)

// headers sets the security headers on every response, before the handler runs (so errors
// and 404s carry them too), and bounds request bodies.
func (s *Server) headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", s.csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		// same-origin, not no-referrer: under no-referrer browsers send "Origin: null" on
		// every POST, same-origin ones included, which would blind sameOrigin. same-origin
		// still sends no Referer to any other site (the identity providers included).
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Strict-Transport-Security", "max-age=63072000")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		limit := int64(maxFormBytes)
		if r.URL.Path == "/saml/acs" {
			limit = maxACSBytes
		}
		if r.ContentLength > limit {
			s.fail(w, r, http.StatusRequestEntityTooLarge, "The request is too large.")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		next.ServeHTTP(w, r)
	})
}

// sameOrigin reports whether a POST comes from the portal's own pages: Origin, when sent,
// must be PublicURL's ("null", what browsers send for opaque or hidden origins, is not);
// else Referer, when sent, must be on it. Browsers send Origin on every form POST; a request
// with neither header (not a browser) still needs the CSRF token.
func (s *Server) sameOrigin(r *http.Request) bool {
	if o := r.Header.Get("Origin"); o != "" {
		return strings.EqualFold(o, s.origin)
	}
	if ref := r.Header.Get("Referer"); ref != "" {
		u, err := url.Parse(ref)
		if err != nil {
			return false
		}
		return strings.EqualFold(u.Scheme+"://"+u.Host, s.origin)
	}
	return true
}

// checkPost checks a POST's origin and CSRF token against the session; the form is parsed
// here (bounded by headers). On false it has answered.
func (s *Server) checkPost(w http.ResponseWriter, r *http.Request, se session, ok bool) bool {
	if !s.sameOrigin(r) {
		s.log.Warn("portal: POST from another origin refused", "path", r.URL.Path, "origin", r.Header.Get("Origin"), "client_ip", clientAddr(r))
		s.fail(w, r, http.StatusForbidden, "This form did not come from the portal.")
		return false
	}
	if err := r.ParseForm(); err != nil {
		s.fail(w, r, http.StatusBadRequest, "The form could not be read.")
		return false
	}
	tok := r.PostForm.Get("csrf")
	if !ok || tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(se.csrf)) != 1 {
		s.log.Warn("portal: POST without its session's CSRF token refused", "path", r.URL.Path, "session", ok, "client_ip", clientAddr(r))
		s.fail(w, r, http.StatusForbidden, "This form has expired. Go back, reload the page and try again.")
		return false
	}
	return true
}

// localPath returns p if it is a path on this portal to return to after login, else "".
// Browsers read "//host", "/\host" and paths with tabs or newlines stripped as other hosts.
func localPath(p string) string {
	if len(p) == 0 || len(p) > 512 || p[0] != '/' {
		return ""
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x21 || c == 0x7f || c == '\\' {
			return ""
		}
	}
	if strings.HasPrefix(p, "//") {
		return ""
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		return ""
	}
	return p
}
