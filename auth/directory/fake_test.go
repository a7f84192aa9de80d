package directory

import (
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/hashicorp/go-hclog"
	"github.com/jimlambrt/gldap"
)

// fakeEntry is one entry of the in-process directory.
type fakeEntry struct {
	dn       string
	password string
	attrs    map[string][]string
}

// fakeDir is an in-process LDAP server (gldap) with a tiny filter evaluator, including AD's
// in-chain matching rule. Searches require a bind as the service account. It sits behind a
// proxy so tests can drop its connections or take it down and up again on the same address.
type fakeDir struct {
	t       *testing.T
	service string // DN allowed to search

	mu      sync.Mutex // guards the fields below
	entries []*fakeEntry
	bound   map[int]string // connection id -> bound DN
	filters []string       // every search filter received
	binds   []string       // every bind DN received
	hang    bool           // searches never answer

	proxy *proxy
}

func newFakeDir(t *testing.T, service string, entries ...*fakeEntry) *fakeDir {
	t.Helper()
	f := &fakeDir{t: t, service: service, entries: entries, bound: map[int]string{}}
	// gldap's Stop races (WaitGroup.Wait against Add) with connections still being served, so
	// the cleanup waits until every connection made to it has closed before calling Stop.
	closed := make(chan struct{}, 1024)
	srv, err := gldap.NewServer(gldap.WithLogger(hclog.NewNullLogger()),
		gldap.WithOnClose(func(int) { closed <- struct{}{} }))
	if err != nil {
		t.Fatal(err)
	}
	mux, err := gldap.NewMux()
	if err != nil {
		t.Fatal(err)
	}
	if err := mux.Bind(f.bind); err != nil {
		t.Fatal(err)
	}
	if err := mux.Search(f.search); err != nil {
		t.Fatal(err)
	}
	if err := srv.Router(mux); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	go func() { _ = srv.Run(addr) }()
	waitDial(t, addr)
	f.proxy = startProxy(t, addr)
	t.Cleanup(func() {
		f.proxy.down()
		f.mu.Lock()
		f.hang = false
		f.mu.Unlock()
		opened := 1 + int(f.proxy.dials.Load()) // waitDial's connection and the proxied ones
		timeout := time.After(10 * time.Second)
		for i := 0; i < opened; i++ {
			select {
			case <-closed:
			case <-timeout:
				t.Errorf("fake LDAP server: %d of %d connections still open", opened-i, opened)
				return
			}
		}
		_ = srv.Stop()
	})
	return f
}

func (f *fakeDir) url() string { return "ldap://" + f.proxy.addr }

func (f *fakeDir) filtersSeen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.filters...)
}

func (f *fakeDir) bindsSeen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.binds...)
}

func (f *fakeDir) bind(w *gldap.ResponseWriter, r *gldap.Request) {
	resp := r.NewBindResponse(gldap.WithResponseCode(gldap.ResultInvalidCredentials))
	defer func() { _ = w.Write(resp) }()
	m, err := r.GetSimpleBindMessage()
	if err != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.binds = append(f.binds, m.UserName)
	delete(f.bound, r.ConnectionID())
	if m.Password == "" { // anonymous or unauthenticated bind: succeeds, as RFC 4513 allows
		resp.SetResultCode(gldap.ResultSuccess)
		return
	}
	if e := f.lookup(m.UserName); e != nil && e.password != "" && e.password == string(m.Password) {
		f.bound[r.ConnectionID()] = e.dn
		resp.SetResultCode(gldap.ResultSuccess)
	}
}

func (f *fakeDir) lookup(dn string) *fakeEntry {
	want, err := ldap.ParseDN(dn)
	if err != nil {
		return nil
	}
	for _, e := range f.entries {
		if have, _ := ldap.ParseDN(e.dn); have != nil && have.EqualFold(want) {
			return e
		}
	}
	return nil
}

func (f *fakeDir) search(w *gldap.ResponseWriter, r *gldap.Request) {
	done := r.NewSearchDoneResponse(gldap.WithResponseCode(gldap.ResultSuccess))
	m, err := r.GetSearchMessage()
	if err != nil {
		done.SetResultCode(gldap.ResultProtocolError)
		_ = w.Write(done)
		return
	}
	f.mu.Lock()
	f.filters = append(f.filters, m.Filter)
	if f.hang {
		f.mu.Unlock()
		return // never answers
	}
	if f.bound[r.ConnectionID()] != f.service {
		f.mu.Unlock()
		done.SetResultCode(gldap.ResultInsufficientAccessRights)
		_ = w.Write(done)
		return
	}
	filter, err := ldap.CompileFilter(m.Filter)
	if err != nil {
		f.mu.Unlock()
		done.SetResultCode(gldap.ResultProtocolError)
		_ = w.Write(done)
		return
	}
	base, _ := ldap.ParseDN(m.BaseDN)
	var out []*fakeEntry
	for _, e := range f.entries {
		dn, _ := ldap.ParseDN(e.dn)
		if base == nil || dn == nil || !(base.EqualFold(dn) || base.AncestorOfFold(dn)) {
			continue
		}
		if f.match(filter, e) {
			out = append(out, e)
		}
	}
	f.mu.Unlock()
	for i, e := range out {
		if m.SizeLimit > 0 && int64(i) >= m.SizeLimit {
			done.SetResultCode(gldap.ResultSizeLimitExceeded)
			break
		}
		attrs := map[string][]string{}
		for k, v := range e.attrs {
			if wanted(m.Attributes, k) {
				attrs[k] = v
			}
		}
		_ = w.Write(r.NewSearchResponseEntry(e.dn, gldap.WithAttributes(attrs)))
	}
	_ = w.Write(done)
}

func wanted(attrs []string, name string) bool {
	if len(attrs) == 0 {
		return true
	}
	for _, a := range attrs {
		if strings.EqualFold(a, name) {
			return true
		}
	}
	return false
}

func str(p *ber.Packet) string { return p.Data.String() }

// match evaluates a compiled filter (RFC 4511 4.5.1) against e; f.mu is held.
func (f *fakeDir) match(p *ber.Packet, e *fakeEntry) bool {
	switch p.Tag {
	case ldap.FilterAnd:
		for _, c := range p.Children {
			if !f.match(c, e) {
				return false
			}
		}
		return true
	case ldap.FilterOr:
		for _, c := range p.Children {
			if f.match(c, e) {
				return true
			}
		}
		return false
	case ldap.FilterNot:
		return !f.match(p.Children[0], e)
	case ldap.FilterPresent:
		return len(attrValues(e, str(p))) > 0
	case ldap.FilterEqualityMatch:
		attr, val := str(p.Children[0]), str(p.Children[1])
		for _, v := range attrValues(e, attr) {
			if valueEqual(attr, v, val) {
				return true
			}
		}
		return false
	case ldap.FilterExtensibleMatch:
		var rule, attr, val string
		for _, c := range p.Children {
			switch c.Tag {
			case ldap.MatchingRuleAssertionMatchingRule:
				rule = str(c)
			case ldap.MatchingRuleAssertionType:
				attr = str(c)
			case ldap.MatchingRuleAssertionMatchValue:
				val = str(c)
			}
		}
		if rule != inChainRule || !strings.EqualFold(attr, "member") {
			return false
		}
		return f.inChain(e, val, map[string]bool{})
	}
	return false // substrings, ordering, approx: unused here
}

// inChain reports whether dn is a member of e directly or through nested groups.
func (f *fakeDir) inChain(e *fakeEntry, dn string, seen map[string]bool) bool {
	if seen[strings.ToLower(e.dn)] {
		return false
	}
	seen[strings.ToLower(e.dn)] = true
	for _, m := range attrValues(e, "member") {
		if valueEqual("member", m, dn) {
			return true
		}
		if g := f.lookup(m); g != nil && f.inChain(g, dn, seen) {
			return true
		}
	}
	return false
}

func attrValues(e *fakeEntry, name string) []string {
	if strings.EqualFold(name, "objectClass") && len(e.attrs["objectClass"]) == 0 {
		return []string{"top"}
	}
	for k, v := range e.attrs {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return nil
}

func valueEqual(attr, a, b string) bool {
	if strings.Contains(strings.ToLower(attr), "member") {
		x, err1 := ldap.ParseDN(a)
		y, err2 := ldap.ParseDN(b)
		return err1 == nil && err2 == nil && x.EqualFold(y)
	}
	// caseIgnoreMatch: case and insignificant spaces do not count (RFC 4518 section 2.6.1).
	return strings.EqualFold(strings.Join(strings.Fields(a), " "), strings.Join(strings.Fields(b), " "))
}

// proxy forwards TCP connections to a backend; tests drop them or take the address down and up.
type proxy struct {
	addr, backend string
	dials         atomic.Int64 // connections made to the backend

	mu    sync.Mutex // guards the fields below
	ln    net.Listener
	conns map[net.Conn]struct{}
}

func startProxy(t *testing.T, backend string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: ln.Addr().String(), backend: backend, conns: map[net.Conn]struct{}{}}
	p.serve(ln)
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", p.backend)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.dials.Add(1)
			p.mu.Lock()
			p.conns[c], p.conns[b] = struct{}{}, struct{}{}
			p.mu.Unlock()
			go func() { _, _ = io.Copy(b, c); _ = b.Close(); _ = c.Close() }()
			go func() { _, _ = io.Copy(c, b); _ = b.Close(); _ = c.Close() }()
		}
	}()
}

// dropAll closes every proxied connection, as a server restart or an idle timeout would.
func (p *proxy) dropAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
}

// down stops listening (connections are refused) and drops every connection.
func (p *proxy) down() {
	p.mu.Lock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	p.mu.Unlock()
	p.dropAll()
}

// up listens again on the same address.
func (p *proxy) up(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	p.serve(ln)
}

// freeAddr returns a loopback address nothing listens on (now).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func waitDial(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_ = c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fake LDAP server on %s did not start: %v", addr, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// silentServer accepts connections and never answers: a hung directory server.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
	})
	return "ldap://" + ln.Addr().String()
}

// refusedURL returns an ldap:// URL on a port nothing listens on.
func refusedURL(t *testing.T) string { return "ldap://" + freeAddr(t) }
