package portal

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// FuzzLocalPath checks that whatever a next= parameter holds, what localPath accepts stays
// on the portal after http.Redirect (which cleans the path) and in a browser's reading
// (which strips tabs and newlines and takes "\" for "/").
func FuzzLocalPath(f *testing.F) {
	for _, s := range []string{"/", "/d/ABCD", "//evil.test", "/\\evil.test", "/\t/evil.test", "https://evil.test", "/a/../..//evil.test", "/%2F%2Fevil.test", "/?next=//x", "/#//x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got := localPath(p)
		if got == "" {
			return
		}
		if got != p {
			t.Fatalf("localPath(%q) = %q: it must accept or refuse, not rewrite", p, got)
		}
		rec := httptest.NewRecorder()
		http.Redirect(rec, httptest.NewRequest("GET", "https://portal.test/login", nil), got, http.StatusSeeOther)
		loc := rec.Header().Get("Location")
		browser := strings.NewReplacer("\t", "", "\n", "", "\r", "", "\\", "/").Replace(loc)
		if !strings.HasPrefix(browser, "/") || strings.HasPrefix(browser, "//") {
			t.Fatalf("localPath accepted %q; the browser goes to %q", p, browser)
		}
		u, err := url.Parse(browser)
		if err != nil || u.Host != "" || u.Scheme != "" {
			t.Fatalf("localPath accepted %q; Location %q leaves the portal", p, loc)
		}
	})
}

// FuzzDeviceCode checks that a code taken from a path is letters and digits or nothing.
func FuzzDeviceCode(f *testing.F) {
	for _, s := range []string{"ABCD-EFGH", "abcd efgh", "../x", "<script>", "ÄBCD", strings.Repeat("A", 40)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c := deviceCode(raw)
		if len(c) > 16 {
			t.Fatalf("deviceCode(%q) = %q, longer than 16", raw, c)
		}
		for i := 0; i < len(c); i++ {
			if (c[i] < 'A' || c[i] > 'Z') && (c[i] < '0' || c[i] > '9') {
				t.Fatalf("deviceCode(%q) = %q", raw, c)
			}
		}
	})
}
