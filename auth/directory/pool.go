package directory

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// server is one parsed directory URL.
type server struct {
	url      string // as configured, for logs
	hostport string
	host     string
	ldaps    bool
}

func parseServer(raw string) (server, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return server{}, fmt.Errorf("directory: url %q: %w", raw, err)
	}
	s := server{url: raw, host: u.Hostname()}
	port := u.Port()
	switch strings.ToLower(u.Scheme) {
	case "ldap":
		if port == "" {
			port = "389"
		}
	case "ldaps":
		s.ldaps = true
		if port == "" {
			port = "636"
		}
	default:
		return server{}, fmt.Errorf("directory: url %q: scheme must be ldap or ldaps", raw)
	}
	if s.host == "" {
		return server{}, fmt.Errorf("directory: url %q: no host", raw)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return server{}, fmt.Errorf("directory: url %q: only scheme://host[:port] is supported", raw)
	}
	s.hostport = net.JoinHostPort(s.host, port)
	return s, nil
}

// meteredConn bounds how many bytes one operation may read from a server, so a hostile or broken
// server cannot make us buffer an unbounded response (go-ldap reads whole messages into memory).
// The budget is reset before each operation; when it runs out, Read fails and go-ldap closes the
// connection.
type meteredConn struct {
	net.Conn
	budget   atomic.Int64
	exceeded atomic.Bool
}

var errResponseTooLarge = errors.New("directory: response exceeds the size limit")

func (c *meteredConn) Read(p []byte) (int, error) {
	left := c.budget.Load()
	if left <= 0 {
		c.exceeded.Store(true)
		return 0, errResponseTooLarge
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.Conn.Read(p)
	c.budget.Add(-int64(n))
	return n, err
}

// pconn is one pooled connection.
type pconn struct {
	c        *ldap.Conn
	m        *meteredConn
	srv      server
	uses     int       // operations run on it; 0 means freshly dialled
	lastUsed time.Time // by the injected clock
}

func (pc *pconn) close() { _ = pc.c.Close() }

// pool is a bounded set of connections of one kind: bound as the service account (service), or
// used only for user binds (their identity changes with every bind, so they never search).
// sem holds one token per connection in use or being dialled; idle ones sit in idle.
type pool struct {
	d       *Directory
	service bool
	sem     chan struct{}

	mu     sync.Mutex // guards the fields below
	idle   []*pconn
	closed bool
}

func newPool(d *Directory, service bool, size int) *pool {
	return &pool{d: d, service: service, sem: make(chan struct{}, size)}
}

// get returns an idle connection, or a new one dialled with failover.
func (p *pool) get(ctx context.Context) (*pconn, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for a pooled connection: %w", ErrUnavailable, ctx.Err())
	}
	now := p.d.now()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.sem
		return nil, ErrClosed
	}
	for len(p.idle) > 0 {
		pc := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if pc.c.IsClosing() || now.Sub(pc.lastUsed) > p.d.cfg.IdleTimeout {
			p.mu.Unlock()
			pc.close()
			p.mu.Lock()
			continue
		}
		p.mu.Unlock()
		return pc, nil
	}
	p.mu.Unlock()
	pc, err := p.d.dialAny(ctx, p.service)
	if err != nil {
		<-p.sem
		return nil, err
	}
	return pc, nil
}

// put returns pc to the pool (reuse) or closes it.
func (p *pool) put(pc *pconn, reuse bool) {
	defer func() { <-p.sem }()
	pc.uses++
	pc.lastUsed = p.d.now()
	if reuse && !pc.c.IsClosing() {
		p.mu.Lock()
		if !p.closed {
			p.idle = append(p.idle, pc)
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
	pc.close()
}

// dropIdle closes the idle connections to url.
func (p *pool) dropIdle(url string) {
	p.mu.Lock()
	var drop []*pconn
	keep := p.idle[:0]
	for _, pc := range p.idle {
		if pc.srv.url == url {
			drop = append(drop, pc)
		} else {
			keep = append(keep, pc)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	p.mu.Unlock()
	for _, pc := range drop {
		pc.close()
	}
}

func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, pc := range idle {
		pc.close()
	}
}

// errServiceBind marks a failed bind of the service account: a configuration problem, not a
// server outage, so it does not put the server in back-off.
var errServiceBind = errors.New("service account bind failed")

// dialAny dials the configured URLs in order, skipping those in back-off after a recent failure,
// and returns the first that answers (bound as the service account when service is set).
func (d *Directory) dialAny(ctx context.Context, service bool) (*pconn, error) {
	var last error
	tried := 0
	for _, srv := range d.servers {
		if until, failed := d.backoffUntil(srv.url); failed && d.now().Before(until) {
			continue
		}
		tried++
		pc, err := d.dial(ctx, srv, service)
		if err == nil {
			d.clearFailure(srv.url)
			return pc, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: dialling %s: %w", ErrUnavailable, srv.url, ctx.Err())
		}
		if errors.Is(err, errServiceBind) {
			d.log.Error("directory: the service account cannot bind; check bind_dn and bind_password_file",
				"url", srv.url, "bind_dn", d.cfg.BindDN, "err", err)
			return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, srv.url, err)
		}
		d.markFailed(srv.url, err)
		last = err
	}
	if tried == 0 {
		// Every server is in back-off. One caller at a time tries the one whose back-off ends
		// first, so a server that came back serves at once while a dead one costs one dial,
		// not one per login.
		if srv, ok := d.startProbe(); ok {
			pc, err := d.dial(ctx, srv, service)
			d.endProbe()
			if err == nil {
				d.clearFailure(srv.url)
				return pc, nil
			}
			if ctx.Err() == nil && !errors.Is(err, errServiceBind) {
				d.markFailed(srv.url, err)
			}
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		last = d.lastFailure()
		return nil, fmt.Errorf("%w: every server failed in the last %v: %w", ErrUnavailable, d.cfg.Backoff, last)
	}
	return nil, fmt.Errorf("%w: %w", ErrUnavailable, last)
}

// dial opens one connection: TCP, TLS (ldaps) or StartTLS, and the service bind.
func (d *Directory) dial(ctx context.Context, srv server, service bool) (*pconn, error) {
	dctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	var nd net.Dialer
	raw, err := nd.DialContext(dctx, "tcp", srv.hostport)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", srv.url, err)
	}
	m := &meteredConn{Conn: raw}
	m.budget.Store(d.cfg.MaxResponseBytes)
	var nc net.Conn = m
	tlsConf := &tls.Config{RootCAs: d.cfg.RootCAs, ServerName: srv.host, MinVersion: tls.VersionTLS12}
	if srv.ldaps {
		tc := tls.Client(m, tlsConf)
		if err := tc.HandshakeContext(dctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("%s: TLS handshake: %w", srv.url, err)
		}
		nc = tc
	}
	lc := ldap.NewConn(nc, srv.ldaps)
	lc.Start()
	pc := &pconn{c: lc, m: m, srv: srv, lastUsed: d.now()}
	if d.cfg.StartTLS && !srv.ldaps {
		// StartTLS has no timeout of its own for the TLS handshake; a deadline on the socket does.
		if dl, ok := dctx.Deadline(); ok {
			_ = raw.SetDeadline(dl)
		}
		err := d.run(ctx, pc, func(c *ldap.Conn) error { return c.StartTLS(tlsConf) })
		_ = raw.SetDeadline(time.Time{})
		if err != nil {
			pc.close()
			return nil, fmt.Errorf("%s: StartTLS: %w", srv.url, err)
		}
	}
	if service && d.cfg.BindDN != "" {
		err := d.run(ctx, pc, func(c *ldap.Conn) error { return c.Bind(d.cfg.BindDN, d.cfg.BindPassword) })
		if err != nil {
			pc.close()
			if isConnFailure(err) {
				return nil, fmt.Errorf("%s: service bind: %w", srv.url, err)
			}
			return nil, fmt.Errorf("%w: %w", errServiceBind, err)
		}
	}
	return pc, nil
}

// run runs one operation on pc bounded by Config.Timeout and ctx: go-ldap's message timeout covers
// a server that stops answering, and ctx cancellation closes the connection under the operation.
func (d *Directory) run(ctx context.Context, pc *pconn, op func(*ldap.Conn) error) error {
	timeout, callerDeadline := d.cfg.Timeout, time.Time{}
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < timeout {
			timeout, callerDeadline = left, dl
		}
	}
	if timeout <= 0 || ctx.Err() != nil {
		pc.close()
		return ldap.NewError(ldap.ErrorNetwork, context.DeadlineExceeded)
	}
	pc.c.SetTimeout(timeout)
	pc.m.budget.Store(d.cfg.MaxResponseBytes)
	stop := context.AfterFunc(ctx, pc.close)
	err := op(pc.c)
	if !stop() {
		return ldap.NewError(ldap.ErrorNetwork, ctx.Err())
	}
	if err != nil && pc.m.exceeded.Load() {
		return fmt.Errorf("%w (%d bytes) from %s", errResponseTooLarge, d.cfg.MaxResponseBytes, pc.srv.url)
	}
	if !callerDeadline.IsZero() && !time.Now().Before(callerDeadline) && isConnFailure(err) {
		// The message timeout was the caller's deadline, which may fire just before ctx is
		// done: the caller ran out of time, the server is not to blame.
		return ldap.NewError(ldap.ErrorNetwork, fmt.Errorf("%w: %w", context.DeadlineExceeded, err))
	}
	return err
}

// isConnFailure reports whether err means the connection (or the server) is unusable, as opposed
// to an LDAP result about the request itself.
func isConnFailure(err error) bool {
	if err == nil || errors.Is(err, errResponseTooLarge) {
		return false
	}
	var le *ldap.Error
	if !errors.As(err, &le) {
		return true
	}
	switch le.ResultCode {
	case ldap.ErrorNetwork, ldap.ErrorUnexpectedMessage, ldap.ErrorUnexpectedResponse,
		ldap.LDAPResultBusy, ldap.LDAPResultUnavailable, ldap.LDAPResultServerDown:
		return true
	}
	return false
}

// do runs op on a connection from p. When the connection turns out broken (a pooled one the
// server dropped, or a server that died mid-operation) it retries on another connection, which
// failover may take to the next URL. op must be safe to repeat (searches and binds are).
func (d *Directory) do(ctx context.Context, p *pool, op func(*ldap.Conn) error) error {
	var last error
	for attempt := 0; attempt <= len(d.servers); attempt++ {
		pc, err := p.get(ctx)
		if err != nil {
			return err
		}
		err = d.run(ctx, pc, op)
		if !isConnFailure(err) {
			p.put(pc, true)
			return err
		}
		p.put(pc, false)
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %s: %w", ErrUnavailable, pc.srv.url, ctx.Err())
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w: %s: %w", ErrUnavailable, pc.srv.url, err)
		}
		if pc.uses == 1 { // freshly dialled: the server itself failed
			d.markFailed(pc.srv.url, err)
		} else {
			// Whatever broke this one (a server restart, an idle timeout in a firewall) likely
			// broke its idle siblings too: redial rather than find out one timeout at a time.
			d.log.Debug("directory: pooled connection broken; redialling", "url", pc.srv.url, "err", err)
			p.dropIdle(pc.srv.url)
		}
		last = fmt.Errorf("%s: %w", pc.srv.url, err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, last)
}

// startProbe picks the server whose back-off ends first for a probe, unless one is under way.
func (d *Directory) startProbe() (server, bool) {
	d.failMu.Lock()
	defer d.failMu.Unlock()
	if d.probing || len(d.servers) == 0 {
		return server{}, false
	}
	best := d.servers[0]
	for _, srv := range d.servers[1:] {
		if d.failedUntil[srv.url].Before(d.failedUntil[best.url]) {
			best = srv
		}
	}
	d.probing = true
	return best, true
}

func (d *Directory) endProbe() {
	d.failMu.Lock()
	d.probing = false
	d.failMu.Unlock()
}

func (d *Directory) backoffUntil(u string) (time.Time, bool) {
	d.failMu.Lock()
	defer d.failMu.Unlock()
	t, ok := d.failedUntil[u]
	return t, ok
}

func (d *Directory) markFailed(u string, err error) {
	d.failMu.Lock()
	d.failedUntil[u] = d.now().Add(d.cfg.Backoff)
	d.lastErr = fmt.Errorf("%s: %w", u, err)
	d.failMu.Unlock()
	d.log.Warn("directory: server failed; skipping it for the back-off", "url", u, "backoff", d.cfg.Backoff, "err", err)
}

func (d *Directory) clearFailure(u string) {
	d.failMu.Lock()
	_, was := d.failedUntil[u]
	delete(d.failedUntil, u)
	d.failMu.Unlock()
	if was {
		d.log.Info("directory: server answers again", "url", u)
	}
}

func (d *Directory) lastFailure() error {
	d.failMu.Lock()
	defer d.failMu.Unlock()
	if d.lastErr == nil {
		return errors.New("no server tried")
	}
	return d.lastErr
}
