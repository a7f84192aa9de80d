package browser

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"html"
	"image/png"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"rsc.io/qr"

	"github.com/cvpn/cvpn/internal/qrtest"
)

// portalLike is a small site shaped like the portal: a login form that
// posts to /login, which redirects to /enrol, a page with two QR codes, one
// served from /qr.png (a new code on each request, as a one-time secret
// would be) and one inline as a data: URL.
type portalLike struct {
	mu       sync.Mutex
	logins   []string // "user:password" as posted
	qrServed []string // the text of each code that /qr.png served
	qrInline string
}

func (p *portalLike) handler(t *testing.T) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<!doctype html><html><head><meta name="viewport" content="width=device-width">
<title>Sign in</title><style>body{font-family:sans-serif;margin:2em} input{display:block;margin:.5em 0}</style></head>
<body><h1>Sign in</h1>
<form method="post" action="/login">
<label>User <input id="username" name="username" autocomplete="username"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button type="submit" id="signin">Sign in</button>
</form></body></html>`)
	})
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		user, pass := r.PostFormValue("username"), r.PostFormValue("password")
		p.mu.Lock()
		p.logins = append(p.logins, user+":"+pass)
		p.mu.Unlock()
		http.SetCookie(w, &http.Cookie{Name: "user", Value: user, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
		http.Redirect(w, r, "/enrol", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /enrol", func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie("user")
		if err != nil {
			http.Error(w, "not signed in", http.StatusUnauthorized)
			return
		}
		p.mu.Lock()
		inline := p.qrInline
		p.mu.Unlock()
		code, err := qr.Encode(inline, qr.M)
		if err != nil {
			t.Errorf("qr: %v", err)
			return
		}
		fmt.Fprintf(w, `<!doctype html><html><head><meta name="viewport" content="width=device-width"><title>Enrol</title></head>
<body><h1 id="hello">Hello, %s</h1><p>Scan this code:</p>
<img id="qr" src="/qr.png" alt="QR code">
<img id="qrinline" src="data:image/png;base64,%s" alt="QR code">
<p id="notimg">not an image</p>
<p><a id="profile" href="/profile">Download your profile</a></p>
<form method="post" action="/profile"><button id="profile-post" name="proto" value="tcp">Download for TCP</button></form>
</body></html>`, html.EscapeString(c.Value), base64.StdEncoding.EncodeToString(code.PNG()))
	})
	mux.HandleFunc("/profile", func(w http.ResponseWriter, r *http.Request) {
		proto := "udp"
		if r.Method == http.MethodPost {
			proto = r.PostFormValue("proto")
		}
		w.Header().Set("Content-Type", "application/x-openvpn-profile")
		w.Header().Set("Content-Disposition", `attachment; filename="cvpn-`+proto+`.ovpn"`)
		fmt.Fprint(w, strings.Replace(profileText, "udp", proto, 1))
	})
	mux.HandleFunc("GET /qr.png", func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		text := fmt.Sprintf("otpauth://totp/cvpn:alice?secret=JBSWY3DPEHPK3PXP%d&issuer=cvpn", len(p.qrServed))
		p.qrServed = append(p.qrServed, text)
		p.mu.Unlock()
		code, err := qr.Encode(text, qr.M)
		if err != nil {
			t.Errorf("qr: %v", err)
			return
		}
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(code.PNG())
	})
	return mux
}

// profileText is what /profile sends.
const profileText = "client\ndev tun\nproto udp\nremote 127.0.0.1 1194\n"

// checkPNG fails unless path is a PNG of the given width.
func checkPNG(t *testing.T, path string, width int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("screenshot %s is not a PNG: %v", path, err)
	}
	if cfg.Width != width || cfg.Height < 100 {
		t.Fatalf("screenshot %s is %dx%d, want %d wide", path, cfg.Width, cfg.Height, width)
	}
}

// TestSignInAndScanQR walks a login flow over TLS on a phone-sized
// window: fill the form, submit, land on the next page, read its QR codes,
// and keep screenshots of each step.
func TestSignInAndScanQR(t *testing.T) {
	pki := newTestPKI(t, false)
	site := &portalLike{qrInline: "otpauth://totp/cvpn:alice?secret=INLINESECRET&issuer=cvpn"}
	srv := startTLS(t, pki, site.handler(t))

	b := Start(t, TrustCA(pki.leafPEM))
	b.Navigate(srv.URL + "/")
	if got := b.Text("h1"); got != "Sign in" {
		t.Fatalf("login page heading %q", got)
	}
	shot1 := b.Screenshot("sign-in")
	b.Fill("#username", "alice")
	b.Fill("#password", "correct horse <battery> & \"staple\"")
	b.Submit("#signin")

	if got, want := b.Location(), srv.URL+"/enrol"; got != want {
		t.Fatalf("after sign-in at %s, want %s", got, want)
	}
	if got := b.Text("#hello"); got != "Hello, alice" {
		t.Fatalf("enrol page says %q", got)
	}
	site.mu.Lock()
	logins := append([]string{}, site.logins...)
	site.mu.Unlock()
	if want := []string{`alice:correct horse <battery> & "staple"`}; fmt.Sprint(logins) != fmt.Sprint(want) {
		t.Fatalf("server saw logins %q, want %q", logins, want)
	}
	shot2 := b.Screenshot("enrol")

	// The served code: ImageBytes must return what the page shows, not
	// fetch a new one.
	text, err := qrtest.DecodeQR(b.ImageBytes("#qr"))
	if err != nil {
		t.Fatalf("decode the QR code: %v", err)
	}
	site.mu.Lock()
	served := append([]string{}, site.qrServed...)
	site.mu.Unlock()
	if len(served) != 1 || text != served[0] {
		t.Fatalf("decoded %q; the server served %q", text, served)
	}
	// The inline code.
	text, err = qrtest.DecodeQR(b.ImageBytes("#qrinline"))
	if err != nil {
		t.Fatalf("decode the inline QR code: %v", err)
	}
	if text != site.qrInline {
		t.Fatalf("decoded %q, want %q", text, site.qrInline)
	}

	name, data := b.Download("#profile")
	if name != "cvpn-udp.ovpn" || string(data) != profileText {
		t.Fatalf("downloaded %q: %q; want cvpn-udp.ovpn: %q", name, data, profileText)
	}
	// A form's button that posts and gets a file, as the portal's profile
	// downloads do.
	name, data = b.Download("#profile-post")
	if want := strings.Replace(profileText, "udp", "tcp", 1); name != "cvpn-tcp.ovpn" || string(data) != want {
		t.Fatalf("downloaded %q: %q; want cvpn-tcp.ovpn: %q", name, data, want)
	}
	if got, want := b.Location(), srv.URL+"/enrol"; got != want {
		t.Fatalf("after the downloads at %s, want %s", got, want)
	}

	dir := filepath.Dir(shot1)
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, OutputDirName, t.Name()); dir != want {
		t.Fatalf("screenshots in %s, want %s", dir, want)
	}
	if filepath.Base(shot1) != "01-sign-in.png" || filepath.Base(shot2) != "02-enrol.png" {
		t.Fatalf("screenshots named %s and %s", filepath.Base(shot1), filepath.Base(shot2))
	}
	checkPNG(t, shot1, PhoneWidth)
	checkPNG(t, shot2, PhoneWidth)
}

// TestDesktopWindow: the Desktop option gives a desktop-wide viewport and
// screenshots.
func TestDesktopWindow(t *testing.T) {
	pki := newTestPKI(t, false)
	site := &portalLike{}
	srv := startTLS(t, pki, site.handler(t))
	b := Start(t, TrustCA(pki.leafPEM), Desktop())
	b.Navigate(srv.URL + "/")
	ctx, cancel := context.WithTimeout(b.Context(), 5*time.Second)
	defer cancel()
	w, err := chromedp.Run(ctx, chromedp.Evaluate[int]("window.innerWidth"))
	if err != nil || w != DesktopWidth {
		t.Fatalf("innerWidth = %d, %v; want %d", w, err, DesktopWidth)
	}
	checkPNG(t, b.Screenshot("desktop"), DesktopWidth)
}

// TestTrustCA: the browser accepts a server whose chain holds a trusted
// key, by its CA or by its own certificate, and still refuses every other
// server: there is no blanket --ignore-certificate-errors.
func TestTrustCA(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<h1 id="ok">trusted</h1>`)
	})
	sendsCA := newTestPKI(t, true)
	leafOnly := newTestPKI(t, false)
	stranger := newTestPKI(t, true)
	srvCA := startTLS(t, sendsCA, ok)
	srvLeaf := startTLS(t, leafOnly, ok)
	srvStranger := startTLS(t, stranger, ok)

	b := Start(t, TrustCA(sendsCA.caPEM), TrustCA(leafOnly.leafPEM))
	b.Navigate(srvCA.URL)
	if got := b.Text("#ok"); got != "trusted" {
		t.Fatalf("server with a trusted CA: page says %q", got)
	}
	b.Navigate(srvLeaf.URL)
	if got := b.Text("#ok"); got != "trusted" {
		t.Fatalf("server with a trusted certificate: page says %q", got)
	}
	err := b.TryNavigate(srvStranger.URL)
	if err == nil || !strings.Contains(err.Error(), "ERR_CERT_AUTHORITY_INVALID") {
		t.Fatalf("server of another CA: navigate err = %v, want ERR_CERT_AUTHORITY_INVALID", err)
	}

	plain := Start(t)
	if err := plain.TryNavigate(srvCA.URL); err == nil || !strings.Contains(err.Error(), "ERR_CERT_AUTHORITY_INVALID") {
		t.Fatalf("without TrustCA: navigate err = %v, want ERR_CERT_AUTHORITY_INVALID", err)
	}
}

// TestTrustCARefusesGarbage: TrustCA with no certificate fails the test
// rather than silently trusting nothing.
func TestTrustCARefusesGarbage(t *testing.T) {
	if _, err := spkiHashes([]byte("not a PEM")); err == nil {
		t.Fatal("spkiHashes accepted text without a certificate")
	}
	if _, err := spkiHashes(pem64("CERTIFICATE", []byte("junk"))); err == nil {
		t.Fatal("spkiHashes accepted a CERTIFICATE block that is no certificate")
	}
	msg := failureOf(t, func(tb testing.TB) { Start(tb, TrustCA([]byte("nope"))) })
	if !strings.Contains(msg, "TrustCA") {
		t.Fatalf("Start with a bad TrustCA failed with %q", msg)
	}
}

// pem64 is a PEM block of arbitrary bytes.
func pem64(typ string, b []byte) []byte {
	return []byte("-----BEGIN " + typ + "-----\n" + base64.StdEncoding.EncodeToString(b) + "\n-----END " + typ + "-----\n")
}

// TestResolve: a mapped name reaches the test's server; any other name
// does not resolve, so the browser looks nothing up outside the test.
func TestResolve(t *testing.T) {
	pki := newTestPKI(t, false)
	srv := startTLS(t, pki, (&portalLike{}).handler(t))
	port := strconv.Itoa(srv.Listener.Addr().(*net.TCPAddr).Port)

	b := Start(t, TrustCA(pki.leafPEM), Resolve("portal.test", "127.0.0.1"))
	b.Navigate("https://portal.test:" + port + "/")
	if got := b.Text("h1"); got != "Sign in" {
		t.Fatalf("page by name: heading %q", got)
	}
	b.Navigate("https://localhost:" + port + "/")
	if got := b.Text("h1"); got != "Sign in" {
		t.Fatalf("page at localhost: heading %q", got)
	}
	// Unmapped names go to the closed proxy port: no lookup, no traffic.
	for _, u := range []string{"https://elsewhere.test:" + port + "/", "https://example.com/", "http://example.com/"} {
		if err := b.TryNavigate(u); err == nil || !strings.Contains(err.Error(), "ERR_PROXY_CONNECTION_FAILED") {
			t.Fatalf("navigate to %s: err = %v, want ERR_PROXY_CONNECTION_FAILED", u, err)
		}
	}
	for _, bad := range [][2]string{{"a b", "127.0.0.1"}, {"x.test,MAP *", "127.0.0.1"}, {"x.test", "not-an-ip"}, {"", "::1"}} {
		if _, err := resolveRule(bad[0], bad[1]); err == nil {
			t.Errorf("Resolve(%q, %q) accepted", bad[0], bad[1])
		}
	}
}

// TestNoLeftoverProcesses: after a test's Cleanup, no process of its
// browser runs, including the crash handlers that detach from it.
func TestNoLeftoverProcesses(t *testing.T) {
	pki := newTestPKI(t, false)
	srv := startTLS(t, pki, (&portalLike{}).handler(t))
	var root string
	var pids []int
	t.Run("browser", func(t *testing.T) {
		b := Start(t, TrustCA(pki.leafPEM))
		b.Navigate(srv.URL + "/")
		b.WaitVisible("#signin")
		root = b.root
		pids = browserProcesses(root)
		// The browser, its zygotes, a renderer, the GPU and network
		// services: a lone process would mean the lookup misses children.
		if len(pids) < 3 {
			t.Fatalf("found %d processes of the browser (%v), want its whole tree", len(pids), pids)
		}
	})
	if left := browserProcesses(root); len(left) > 0 {
		t.Fatalf("processes %v of the browser outlived its test", left)
	}
	for _, pid := range pids {
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			// A zombie waits for its reaper (init); it runs no more.
			if f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:])); len(f) > 0 && f[0] != "Z" {
				t.Errorf("process %d of the browser is still in state %s", pid, f[0])
			}
		}
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Errorf("the browser's folder %s is still there: %v", root, err)
	}
}

// TestActionFailure: an action that cannot be done fails the test in the
// allotted time, naming the action, the page, and a screenshot of it.
func TestActionFailure(t *testing.T) {
	pki := newTestPKI(t, false)
	srv := startTLS(t, pki, (&portalLike{qrInline: "x"}).handler(t))

	var b *Browser
	msg := failureOf(t, func(tb testing.TB) {
		b = Start(tb, TrustCA(pki.leafPEM), Timeout(700*time.Millisecond))
		b.Navigate(srv.URL + "/")
		start := time.Now()
		defer func() {
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("failing took %v with a 700ms timeout", d)
			}
		}()
		b.WaitVisible("#never-there")
	})
	for _, want := range []string{`"#never-there"`, "timed out after 700ms", "page: " + srv.URL + "/", "screenshot: "} {
		if !strings.Contains(msg, want) {
			t.Fatalf("failure %q does not say %q", msg, want)
		}
	}
	shot := strings.TrimSpace(msg[strings.Index(msg, "screenshot: ")+len("screenshot: "):])
	if !strings.HasSuffix(shot, "-failure.png") {
		t.Fatalf("failure screenshot %q", shot)
	}
	checkPNG(t, shot, PhoneWidth)

	// ImageBytes on an element that is no image says so.
	msg = failureOf(t, func(tb testing.TB) {
		b := Start(tb, TrustCA(pki.leafPEM))
		b.Navigate(srv.URL + "/")
		b.Fill("#username", "bob")
		b.Submit("#signin")
		b.ImageBytes("#notimg")
	})
	if !strings.Contains(msg, "not <img>") {
		t.Fatalf("ImageBytes of a <p> failed with %q", msg)
	}

	// Download of a click that loads a page and sends no file.
	msg = failureOf(t, func(tb testing.TB) {
		b := Start(tb, TrustCA(pki.leafPEM), Timeout(time.Second))
		b.Navigate(srv.URL + "/")
		b.Download("#signin")
	})
	if !strings.Contains(msg, `download with "#signin"`) || !strings.Contains(msg, "timed out after 1s: no download finished") {
		t.Fatalf("Download without a file failed with %q", msg)
	}
}

// failureOf runs f with a testing.TB whose Fatalf records the message and
// ends f, as it ends a test, and returns the message; it fails t if f did
// not fail.
func failureOf(t *testing.T, f func(tb testing.TB)) string {
	t.Helper()
	rec := &recordingTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(rec)
	}()
	<-done
	if rec.msg == "" {
		t.Fatal("the action did not fail the test")
	}
	return rec.msg
}

// recordingTB is a testing.TB whose Fatalf records instead of failing.
type recordingTB struct {
	testing.TB
	msg string
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recordingTB) Helper() {}
