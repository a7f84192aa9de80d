package oidc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
)

// maxResponseBytes bounds every response body read from the provider (discovery, JWKS, token).
// It is below x/oauth2's own silent 1 MiB truncation, so an oversized token response is
// reported as ErrTooLarge rather than as a JSON syntax error.
const maxResponseBytes = 512 << 10

// overflowKey carries an *atomic.Bool in a request's context that boundedTransport sets when the
// response body exceeded maxResponseBytes, for callers (x/oauth2) that flatten the read error
// into a string.
type overflowKey struct{}

func withOverflowFlag(ctx context.Context) (context.Context, *atomic.Bool) {
	var f atomic.Bool
	return context.WithValue(ctx, overflowKey{}, &f), &f
}

// boundedTransport caps every response body at maxResponseBytes: reading past it fails with
// ErrTooLarge.
type boundedTransport struct{ base http.RoundTripper }

func (t boundedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	flag, _ := req.Context().Value(overflowKey{}).(*atomic.Bool)
	resp.Body = &boundedBody{rc: resp.Body, left: maxResponseBytes, flag: flag}
	return resp, nil
}

type boundedBody struct {
	rc   io.ReadCloser
	left int64
	flag *atomic.Bool
}

var errBodyTooLarge = fmt.Errorf("%w: more than %d bytes", ErrTooLarge, maxResponseBytes)

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One more byte tells a body of exactly the limit from a longer one.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			if b.flag != nil {
				b.flag.Store(true)
			}
			return 0, errBodyTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *boundedBody) Close() error { return b.rc.Close() }

// providerClient returns the http.Client used for every request to the provider: base's
// transport (TLS roots, proxy) behind boundedTransport, a timeout, and no redirects followed (a
// provider endpoint that redirects is refused rather than followed to wherever it points).
func providerClient(base *http.Client) *http.Client {
	c := &http.Client{}
	if base != nil {
		*c = *base
	}
	rt := c.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	c.Transport = boundedTransport{base: rt}
	if c.Timeout == 0 {
		c.Timeout = defaultHTTPTimeout
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error {
		return errors.New("oidc: provider endpoints must not redirect")
	}
	c.Jar = nil
	return c
}
