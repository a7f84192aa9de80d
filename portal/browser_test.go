package portal

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromiumPath is Debian's chromium (make deps installs it).
const chromiumPath = "/usr/bin/chromium"

// TestBrowser drives the portal in headless Chromium, for what only a browser decides: that
// the SAML answer, posted cross-site without the SameSite=Lax cookie, still signs in the
// browser that began the login through /login/finish; that CSP form-action lets the sign-in
// forms redirect to the identity provider; that the QR image loads under img-src; and that
// a user without an authenticator who opened a device link enrols, confirms and comes back
// to approve it. The identity provider is a stand-in on another site (localhost, the portal
// being 127.0.0.1); the real providers' browser tests are the e2e suite's.
func TestBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("no %s (make deps): %v", chromiumPath, err)
	}
	e := newEnv(t, nil)
	var srv atomic.Pointer[Server]
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { srv.Load().Handler().ServeHTTP(w, r) }))
	portalURL := "https://" + ts.Listener.Addr().String()
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := html.EscapeString(r.URL.Query().Get("state"))
		if strings.HasPrefix(st, "saml") {
			fmt.Fprintf(w, `<!doctype html><form method="post" action="%s/saml/acs"><input type="hidden" name="RelayState" value="%s"><input type="hidden" name="user" value="erin"><button id="go">Continue</button></form>`, portalURL, st)
			return
		}
		fmt.Fprintf(w, `<!doctype html><a id="go" href="%s/oidc/callback?state=%s&amp;user=carol">Continue</a>`, portalURL, st)
	}))
	t.Cleanup(idp.Close)
	idpURL := strings.Replace(idp.URL, "127.0.0.1", "localhost", 1)
	e.oidc.base, e.saml.base = idpURL, idpURL
	cfg := e.srv.cfg
	cfg.PublicURL, cfg.IdPOrigins = portalURL, []string{idpURL}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Store(s)
	ts.StartTLS()
	t.Cleanup(ts.Close)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath), chromedp.NoSandbox, chromedp.Headless,
		chromedp.DisableGPU, chromedp.IgnoreCertErrors, chromedp.Flag("no-proxy-server", true), chromedp.WindowSize(400, 860))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	dir := t.ArtifactDir()
	newTab := func() context.Context {
		ctx, cancel := chromedp.NewContext(actx)
		t.Cleanup(cancel)
		ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
		t.Cleanup(cancelTimeout)
		return ctx
	}
	shot := func(ctx context.Context, name string) {
		t.Helper()
		b, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "portal-"+name+".png"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	for method, user := range map[string]string{MethodSAML: "erin", MethodOIDC: "carol"} {
		ctx := newTab()
		err := chromedp.Do(ctx, chromedp.Navigate(portalURL+"/login"), chromedp.WaitVisible("#login-"+method))
		if err != nil {
			t.Fatalf("%s: login page: %v", method, err)
		}
		if method == MethodOIDC {
			shot(ctx, "login")
		}
		err = chromedp.Do(ctx, chromedp.Click("#login-"+method), chromedp.WaitVisible("#go"), chromedp.Click("#go"), chromedp.WaitVisible("#download-udp"))
		if err != nil {
			loc, _ := chromedp.Run(ctx, chromedp.Location())
			t.Fatalf("%s: signing in through the provider ended at %s: %v", method, loc, err)
		}
		who, err := chromedp.Run(ctx, chromedp.Text(".who"))
		if err != nil || who != user {
			t.Fatalf("%s: signed in as %q (%v), want %s", method, who, err, user)
		}
	}

	ctx := newTab()
	l := startDevice(t, e)
	err = chromedp.Do(ctx, chromedp.Navigate(portalURL+"/d/"+l.Code), chromedp.WaitVisible("#username"),
		chromedp.SendKeys("#username", "bob"), chromedp.SendKeys("#password", "battery staple"), chromedp.Submit("#password"),
		chromedp.WaitVisible("#mfa-enrol"), chromedp.Click("#mfa-enrol"), chromedp.WaitVisible("#mfa-qr"))
	if err != nil {
		t.Fatalf("enrolment after a device link: %v", err)
	}
	width, err := chromedp.Run(ctx, chromedp.EvaluateAsDevTools[int](`document.getElementById("mfa-qr").naturalWidth`))
	if err != nil || width == 0 {
		t.Fatalf("the QR image did not load: width %d, %v", width, err)
	}
	shot(ctx, "enrol")
	err = chromedp.Do(ctx, chromedp.SendKeys("#code", e.mfa.code("bob")), chromedp.Submit("#code"), chromedp.WaitVisible("#device-approve"))
	if err != nil {
		t.Fatalf("back to the device link after enrolment: %v", err)
	}
	shot(ctx, "device")
	if err := chromedp.Do(ctx, chromedp.Click("#device-approve"), chromedp.WaitVisible("#message")); err != nil {
		t.Fatalf("approving: %v", err)
	}
	if id, err := e.broker.Take(context.Background(), l.State); err != nil || id.Username != "bob" {
		t.Fatalf("the broker's login: %+v, %v", id, err)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(portalURL+"/"), chromedp.WaitVisible("#download-udp")); err != nil {
		t.Fatal(err)
	}
	shot(ctx, "home")
}
