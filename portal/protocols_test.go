package portal

import (
	"net/http"
	"net/url"
	"testing"
)

// TestDownloadOffersListenedProtocols: on an endpoint that listens on UDP only, the home page
// offers the UDP profile alone, and a TCP download is refused with a message that says why
// (not "try again later"), without asking Profiles; with both, both are offered.
func TestDownloadOffersListenedProtocols(t *testing.T) {
	protos := []string{"udp"}
	e := newEnv(t, func(c *Config) { c.Protocols = func() []string { return protos } })
	b := e.browser(clientAddrA)
	home := b.loginPassword("alice", "correct horse")
	wantCode(t, home, http.StatusOK)
	wantBody(t, home, `id="download-udp"`)
	wantNotBody(t, home, `id="download-tcp"`, "Use UDP unless")

	r := b.post("/download", url.Values{"proto": {"tcp"}}, nil)
	wantCode(t, r, http.StatusNotFound)
	wantBody(t, r, "does not listen on TCP")
	if len(e.downloads) != 0 || len(e.audited(EventDownload)) != 0 {
		t.Fatalf("a refused TCP download was counted: %v", e.downloads)
	}
	wantCode(t, b.post("/download", url.Values{"proto": {"udp"}}, nil), http.StatusOK)

	// A reload adds a TCP listener: the next page offers it.
	protos = []string{"udp", "tcp"}
	home = b.get("/")
	wantBody(t, home, `id="download-udp"`, `id="download-tcp"`, "Use UDP unless")
	wantCode(t, b.post("/download", url.Values{"proto": {"tcp"}}, nil), http.StatusOK)

	// TCP only: the TCP button is the main one.
	protos = []string{"tcp"}
	home = b.get("/")
	wantNotBody(t, home, `id="download-udp"`)
	wantBody(t, home, `<button type="submit" id="download-tcp">`)
}
