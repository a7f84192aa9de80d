package samllab

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	cvpnsaml "github.com/cvpn/cvpn/auth/saml"
)

// chromiumPath is Debian's chromium (make deps installs it).
const chromiumPath = "/usr/bin/chromium"

// TestBrowserLogin signs in through the lab's login page in headless Chromium: a stand-in
// portal on loopback begins the login and serves the ACS with cvpn's service provider, the
// browser fills the IdP's form, and samlidp's answer page posts the response to the ACS by
// itself. The screenshots land in the test's artifact directory (go test -artifacts).
func TestBrowserLogin(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("no %s (make deps): %v", chromiumPath, err)
	}
	l := Start(t)
	l.AddUser("alice", "alice-pw", "eng", "vpn-admins")

	portal := httptest.NewUnstartedServer(nil)
	acsURL := "https://" + portal.Listener.Addr().String() + "/saml/acs"
	sp, err := cvpnsaml.New(cvpnsaml.Config{IdPMetadata: l.Metadata, EntityID: "https://portal.test/saml/metadata", ACSURL: acsURL})
	if err != nil {
		t.Fatal(err)
	}
	md, _ := sp.Metadata()
	l.AddServiceProvider("portal", md)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /start", func(w http.ResponseWriter, r *http.Request) {
		u, _, err := sp.Begin()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		http.Redirect(w, r, u, http.StatusFound)
	})
	mux.HandleFunc("POST /saml/acs", func(w http.ResponseWriter, r *http.Request) {
		id, err := sp.Complete(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		fmt.Fprintf(w, `<!doctype html><p id="who">%s in %s</p>`, html.EscapeString(id.Username), html.EscapeString(strings.Join(id.Groups, ",")))
	})
	portal.Config.Handler = mux
	portal.StartTLS()
	t.Cleanup(portal.Close)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.NoSandbox,
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.IgnoreCertErrors, // the lab's and the portal's certificates are self-signed
		chromedp.Flag("no-proxy-server", true),
		chromedp.WindowSize(480, 800),
	)
	ctx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancelCtx := chromedp.NewContext(ctx)
	t.Cleanup(cancelCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancelTimeout)

	err = chromedp.Do(ctx,
		chromedp.Navigate(portal.URL+"/start"),
		chromedp.WaitVisible("#user"),
		chromedp.SendKeys("#user", "alice"),
		chromedp.SendKeys("#password", "alice-pw"),
	)
	if err != nil {
		t.Fatalf("browser at the IdP's login page: %v", err)
	}
	loginShot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := chromedp.Do(ctx, chromedp.Click("#login"), chromedp.WaitVisible("#who")); err != nil {
		t.Fatalf("browser after signing in: %v", err)
	}
	who, err := chromedp.Run(ctx, chromedp.Text("#who"))
	if err != nil {
		t.Fatalf("ACS page: %v", err)
	}
	doneShot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if who != "alice in eng,vpn-admins" {
		t.Errorf("the ACS says %q, want alice in eng,vpn-admins", who)
	}
	dir := t.ArtifactDir()
	for name, b := range map[string][]byte{"samllab-login.png": loginShot, "samllab-acs.png": doneShot} {
		if len(b) == 0 {
			t.Errorf("no screenshot %s", name)
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Error(err)
		}
	}
	if sp.Pending() != 0 {
		t.Errorf("%d logins pending after the browser's", sp.Pending())
	}
}
