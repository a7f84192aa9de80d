package connecthandler

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// userAgent names cvpn to an HTTPS handler.
const userAgent = "cvpn-client-connect-handler/1"

type httpsRunner struct {
	url       string // validated, without credentials
	name      string // url without its query, for messages: a query may hold a key
	client    *http.Client
	transport *http.Transport
}

func newHTTPSRunner(rawURL string, roots *x509.CertPool, maxConns int) (*httpsRunner, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	switch {
	case u.Scheme != "https":
		return nil, fmt.Errorf("%w: %q is not an https:// URL", ErrBadURL, rawURL)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("%w: %q has no host", ErrBadURL, rawURL)
	case u.User != nil:
		// It would end up in logs; the handler authenticates by TLS.
		return nil, fmt.Errorf("%w: the URL carries credentials", ErrBadURL)
	case u.Fragment != "":
		return nil, fmt.Errorf("%w: %q has a fragment", ErrBadURL, rawURL)
	}
	t := &http.Transport{
		// No Proxy: nothing below cmd/ reads the environment, and the
		// request must go where the operator said.
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   MaxTimeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig: &tls.Config{
			RootCAs:    roots,
			MinVersion: tls.VersionTLS12,
		},
		ForceAttemptHTTP2:      true,
		MaxIdleConnsPerHost:    maxConns,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: 16 << 10,
		DisableCompression:     true, // a bounded body is bounded on the wire too
	}
	return &httpsRunner{
		url:       u.String(),
		name:      (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String(),
		transport: t,
		client: &http.Client{
			Transport: t,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}, nil
}

func (r *httpsRunner) close() { r.transport.CloseIdleConnections() }

func (r *httpsRunner) run(ctx context.Context, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return nil, fail(ReasonServiceError, "build request: %v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)

	resp, err := r.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, interrupted(ctx)
		}
		return nil, fail(ReasonOtherExecutionError, "POST %s: %v", r.name, unwrapURLError(err))
	}
	defer resp.Body.Close()

	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseSize+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, interrupted(ctx)
		}
		return nil, fail(ReasonOtherExecutionError, "read the response of %s: %v", r.name, err)
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return nil, fail(ReasonThrottled, "%s answered %s", r.name, resp.Status)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return nil, fail(ReasonOtherExecutionError, "%s answered %s%s", r.name, resp.Status, bodySnippet(data, resp))
	case len(data) > MaxResponseSize:
		return nil, fail(ReasonInvalidResponse, "%s sent more than %d bytes", r.name, MaxResponseSize)
	}
	return data, nil
}

// unwrapURLError drops *url.Error's "Post \"URL\": " prefix, which the
// message already has.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// bodySnippet quotes the start of an error response's first line, or
// names the redirect target.
func bodySnippet(data []byte, resp *http.Response) string {
	if loc := resp.Header.Get("Location"); loc != "" && resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return fmt.Sprintf(" (a redirect to %.100q, not followed)", loc)
	}
	s := string(data)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	if len(s) > maxDetail {
		s = strings.ToValidUTF8(s[:maxDetail], "") + "..."
	}
	return fmt.Sprintf("; body: %q", s)
}
