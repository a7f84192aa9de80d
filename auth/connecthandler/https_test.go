package connecthandler

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// tlsHandler starts an HTTPS server and returns a Config for it with its
// certificate as the only root.
func tlsHandler(t *testing.T, h http.HandlerFunc) (Config, *httptest.Server) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	return Config{URL: srv.URL + "/connect", RootCAs: roots}, srv
}

func TestHTTPSAllowAndRequest(t *testing.T) {
	var got map[string]string
	var method, ctype, path string
	cfg, _ := tlsHandler(t, func(w http.ResponseWriter, r *http.Request) {
		method, ctype, path = r.Method, r.Header.Get("Content-Type"), r.URL.Path
		if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"allow":true,"error-msg-on-denied-connection":"","posture-compliance-statuses":["compliant","managed"],"schema-version":"v2"}`)
	})
	var outcomes []string
	cfg.Observer = ObserverFunc(func(o string, _ time.Duration) { outcomes = append(outcomes, o) })
	h := mustNew(t, cfg)
	d, err := h.Call(context.Background(), Request{
		ConnectionID: "cvpn-connection-9", CommonName: "dev9", Username: "bob",
		Platform: "win", ClientOpenVPNVersion: "2.6.14", Groups: []string{"admins"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Allow || len(d.Posture) != 2 || d.Posture[1] != "managed" {
		t.Errorf("decision %+v", d)
	}
	if method != http.MethodPost || ctype != "application/json" || path != "/connect" {
		t.Errorf("request: %s %s, content type %q", method, path, ctype)
	}
	if got["username"] != "bob" || got["groups"] != "admins" || got["platform"] != "win" ||
		got["client-openvpn-version"] != "2.6.14" || got["schema-version"] != "v2" || len(got) != 10 {
		t.Errorf("request body %v", got)
	}
	if len(outcomes) != 1 || outcomes[0] != OutcomeAllowed {
		t.Errorf("outcomes %v", outcomes)
	}
}

func TestHTTPSDeny(t *testing.T) {
	cfg, _ := tlsHandler(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"allow":false,"error-msg-on-denied-connection":"Outside office hours\r\nTry 08:00-18:00","posture-compliance-statuses":[],"schema-version":"v2"}`)
	})
	h := mustNew(t, cfg)
	d, err := h.Call(context.Background(), Request{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Allow || d.Message != "Outside office hours Try 08:00-18:00" {
		t.Errorf("decision %+v", d)
	}
}

func TestHTTPSFailures(t *testing.T) {
	t.Parallel()
	var redirected atomic.Bool
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		reason  string
		parts   []string
	}{
		{"server error", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "database down\nstack trace", http.StatusInternalServerError)
		}, ReasonOtherExecutionError, []string{"500 Internal Server Error", `body: "database down"`}},
		{"throttled", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusTooManyRequests)
		}, ReasonThrottled, []string{"429"}},
		{"redirect not followed", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/elsewhere" {
				redirected.Store(true)
				io.WriteString(w, `{"allow":true,"schema-version":"v2"}`)
				return
			}
			http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
		}, ReasonOtherExecutionError, []string{"307", "not followed"}},
		{"invalid JSON", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `<html>hello</html>`)
		}, ReasonInvalidResponse, []string{"not a JSON object"}},
		{"oversized", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"allow":true,"schema-version":"v2","pad":"`+strings.Repeat("x", MaxResponseSize)+`"}`)
		}, ReasonInvalidResponse, []string{"more than 65536 bytes"}},
		{"message too long", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"allow":false,"schema-version":"v2","error-msg-on-denied-connection":"`+strings.Repeat("m", 256)+`"}`)
		}, ReasonInvalidResponse, []string{"256 characters"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, _ := tlsHandler(t, tc.handler)
			var outcomes []string
			cfg.Observer = ObserverFunc(func(o string, _ time.Duration) { outcomes = append(outcomes, o) })
			h := mustNew(t, cfg)
			d, err := h.Call(context.Background(), Request{})
			wantFailure(t, d, err, tc.reason, tc.parts...)
			if len(outcomes) != 1 || outcomes[0] != tc.reason {
				t.Errorf("outcomes %v", outcomes)
			}
		})
	}
	t.Cleanup(func() {
		if redirected.Load() {
			t.Error("the redirect was followed")
		}
	})
}

func TestHTTPSQueryNotInErrors(t *testing.T) {
	t.Parallel()
	var query string
	cfg, _ := tlsHandler(t, func(w http.ResponseWriter, r *http.Request) {
		query = r.URL.RawQuery
		w.WriteHeader(http.StatusBadGateway)
	})
	cfg.URL += "?key=s3cr3t"
	h := mustNew(t, cfg)
	d, err := h.Call(context.Background(), Request{})
	wantFailure(t, d, err, ReasonOtherExecutionError, "/connect answered 502")
	if query != "key=s3cr3t" {
		t.Errorf("the server got query %q", query)
	}
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("the error shows the URL's query: %v", err)
	}
}

func TestHTTPSTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	cfg, srv := tlsHandler(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release) // before srv.Close, which waits for the handler
	_ = srv
	cfg.Timeout = 200 * time.Millisecond
	h := mustNew(t, cfg)
	d, err := h.Call(context.Background(), Request{})
	wantFailure(t, d, err, ReasonTimedOut, "no answer within 200ms")
}

func TestHTTPSCancel(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	release := make(chan struct{})
	cfg, _ := tlsHandler(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	h := mustNew(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-arrived
		cancel()
	}()
	d, err := h.Call(ctx, Request{})
	wantFailure(t, d, err, ReasonServiceError)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err %v does not wrap context.Canceled", err)
	}
}

func TestCallDoneContext(t *testing.T) {
	t.Parallel()
	var called atomic.Bool
	cfg, _ := tlsHandler(t, func(w http.ResponseWriter, r *http.Request) {
		called.Store(true)
		io.WriteString(w, `{"allow":true,"schema-version":"v2"}`)
	})
	h := mustNew(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 20 { // the slot is free: a random select would sometimes run it
		d, err := h.Call(ctx, Request{})
		wantFailure(t, d, err, ReasonServiceError)
	}
	if called.Load() {
		t.Error("a call with a done context reached the handler")
	}
}

func TestHTTPSUntrustedCertificate(t *testing.T) {
	t.Parallel()
	var called atomic.Bool
	cfg, _ := tlsHandler(t, func(w http.ResponseWriter, r *http.Request) {
		called.Store(true)
		io.WriteString(w, `{"allow":true,"schema-version":"v2"}`)
	})
	cfg.RootCAs = x509.NewCertPool() // trusts nothing
	h := mustNew(t, cfg)
	d, err := h.Call(context.Background(), Request{})
	wantFailure(t, d, err, ReasonOtherExecutionError, "certificate")
	if called.Load() {
		t.Error("the request reached an unverified server")
	}
}

func TestHTTPSConnectionRefused(t *testing.T) {
	t.Parallel()
	cfg, srv := tlsHandler(t, func(w http.ResponseWriter, r *http.Request) {})
	srv.Close()
	h := mustNew(t, cfg)
	d, err := h.Call(context.Background(), Request{})
	wantFailure(t, d, err, ReasonOtherExecutionError, "POST https://127.0.0.1")
}

func TestNewURLChecks(t *testing.T) {
	for _, tc := range []struct{ url, part string }{
		{"http://127.0.0.1:8080/connect", "not an https:// URL"},
		{"http://handler.example/connect", "not an https:// URL"},
		{"HTTPS-ish", "not an https:// URL"},
		{"https:///connect", "no host"},
		{"https://user:secret@127.0.0.1/", "credentials"},
		{"https://127.0.0.1/#frag", "fragment"},
		{"https://[::1", ""},
	} {
		h, err := New(Config{URL: tc.url})
		if !errors.Is(err, ErrBadURL) || !strings.Contains(err.Error(), tc.part) || h != nil {
			t.Errorf("New(%q) = %v, want ErrBadURL mentioning %q", tc.url, err, tc.part)
		}
		if strings.Contains(tc.url, "secret") && strings.Contains(err.Error(), "secret") {
			t.Errorf("the error shows the password: %v", err)
		}
	}
	if _, err := New(Config{URL: "https://127.0.0.1:8443/connect"}); err != nil {
		t.Errorf("a valid URL: %v", err)
	}
}
