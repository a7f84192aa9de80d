package portal

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static/portal.css
var stylesheet []byte

// pages are the portal's templates, each page parsed with the layout.
type pages struct {
	t map[string]*template.Template
}

var pageNames = []string{"login", "code", "home", "enrol", "device", "devform", "message"}

func parsePages() (*pages, error) {
	p := &pages{t: map[string]*template.Template{}}
	for _, n := range pageNames {
		t, err := template.ParseFS(templateFS, "templates/layout.html", "templates/"+n+".html")
		if err != nil {
			return nil, fmt.Errorf("portal: template %s: %w", n, err)
		}
		p.t[n] = t
	}
	return p, nil
}

// view is what every page gets; Data is the page's own.
type view struct {
	Title, Heading string
	CSRF           string
	User           *Identity
	Error, Flash   string
	Data           any
}

// render writes a page. It renders into a buffer first, so a template error is a clean 500.
func (s *Server) render(w http.ResponseWriter, status int, name string, v view) {
	v.Title = s.cfg.Title
	var buf bytes.Buffer
	if err := s.pages.t[name].ExecuteTemplate(&buf, "layout", v); err != nil {
		s.log.Error("portal: rendering a page failed", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// message is the data of the message page.
type message struct {
	Text, Link, LinkText string
}

// fail answers with a message page and status. text is shown as is: never put a secret or
// an error of a lower layer in it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, status int, text string) {
	heading := http.StatusText(status)
	if status == http.StatusTooManyRequests {
		heading = "Too many attempts"
	}
	s.render(w, status, "message", view{Heading: heading, Data: message{Text: text, Link: "/", LinkText: "Back to the portal"}})
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	s.fail(w, r, http.StatusNotFound, "There is no such page.")
}

func (s *Server) stylesheet(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Header().Set("Cache-Control", "public, max-age=3600")
	_, _ = w.Write(stylesheet)
}
