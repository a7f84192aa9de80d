package admin

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
)

// get fetches path from the lab's socket and returns the status and body.
func (l *apiLab) get(ctx context.Context, path string) (int, []byte) {
	l.t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", l.path)
	}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://cvpn"+path, nil)
	if err != nil {
		l.t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		l.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestProfile: a one-second profile comes back in pprof's format (a gzipped protocol buffer).
func TestProfile(t *testing.T) {
	l := newAPILab(t)
	code, b := l.get(context.Background(), ProfilePath+"?seconds=1")
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, b)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("profile is not gzipped: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil || len(raw) == 0 {
		t.Fatalf("profile body: %d bytes, %v", len(raw), err)
	}
	// The profile names its sample type: CPU samples in nanoseconds.
	if !bytes.Contains(raw, []byte("cpu")) || !bytes.Contains(raw, []byte("nanoseconds")) {
		t.Errorf("profile does not name cpu/nanoseconds samples")
	}
}

// TestProfileBounds: seconds outside 1..60 or not a number are refused, and so is a second
// profile while one runs.
func TestProfileBounds(t *testing.T) {
	l := newAPILab(t)
	for _, q := range []string{"0", "61", "-1", "1.5", "x", "1000000000000"} {
		if code, b := l.get(context.Background(), ProfilePath+"?seconds="+q); code != http.StatusBadRequest {
			t.Errorf("seconds=%s: status %d (%s), want 400", q, code, b)
		}
	}
	if code, _ := l.raw("debug/pprof/profile", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("POST: status %d, want 405", code)
	}

	// Hold the token as a profile in progress does; a request meanwhile is refused at once.
	l.handler.profiling <- struct{}{}
	code, b := l.get(context.Background(), ProfilePath+"?seconds=1")
	<-l.handler.profiling
	if code != http.StatusConflict {
		t.Errorf("second profile: status %d (%s), want 409", code, b)
	}

	// Two at once: exactly one gets the profile.
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range codes {
		wg.Go(func() { codes[i], _ = l.get(context.Background(), ProfilePath+"?seconds=1") })
	}
	wg.Wait()
	if !(codes[0] == http.StatusOK && codes[1] == http.StatusConflict) && !(codes[0] == http.StatusConflict && codes[1] == http.StatusOK) {
		t.Errorf("two profiles at once: statuses %v, want one 200 and one 409", codes)
	}
}

// TestProfileRefusesOthers: the peer check covers the profile too.
func TestProfileRefusesOthers(t *testing.T) {
	l := newAPILab(t)
	l.handler.allowed = func(uid uint32) bool { return uid != uint32(os.Getuid()) }
	if code, _ := l.get(context.Background(), ProfilePath+"?seconds=1"); code != http.StatusForbidden {
		t.Errorf("status %d, want 403", code)
	}
}

// TestProfileCallerGone: a caller that goes away stops the profile, and the next one runs.
func TestProfileCallerGone(t *testing.T) {
	l := newAPILab(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", l.path)
		}}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://cvpn"+ProfilePath+"?seconds=60", nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	// Wait until the first request holds the token, then hang up.
	for len(l.handler.profiling) == 0 {
		select {
		case <-done:
			t.Fatal("the 60 s profile request ended before it started")
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	<-done
	// The handler sees the hang-up when its connection closes, then gives the token back.
	for len(l.handler.profiling) != 0 {
		time.Sleep(time.Millisecond)
	}
	if code, b := l.get(context.Background(), ProfilePath+"?seconds=1"); code != http.StatusOK {
		t.Fatalf("profile after a caller went away: status %d (%s)", code, b)
	}
}
