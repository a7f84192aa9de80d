// Package slapdlab runs a real OpenLDAP server (Debian's slapd) for tests: a throwaway directory
// with the memberof overlay (groupOfNames groups, memberOf on users), ldap:// and ldaps:// (a test
// CA) on a free port of a loopback (or given) address, a service account for bind_dn, and helpers
// to add, change and delete users and groups as the root DN. Admin writes go over an ldapi://
// unix socket, so they work even when slapd runs in another network namespace.
//
// In end-to-end tests the directory can sit in the lab's VPC namespace, where the VPN server
// reaches it over the VPC link:
//
//	l := slapdlab.StartIn(t, lab.VPC, netlab.VPCHost.String()) // URLs name 10.0.1.10
//	l.AddUser("alice", "pw"); l.AddGroup("eng", "alice")
//
// The certificate covers the address given; the test process itself keeps writing over ldapi.
//
// It does not fake anything: tests that need an in-process server use gldap instead
// (see auth/directory). Nothing is skipped: a missing slapd fails the test, saying `make deps`.
package slapdlab

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Where Debian's slapd package puts things.
const (
	SlapdPath  = "/usr/sbin/slapd"
	ModulePath = "/usr/lib/ldap"
	SchemaDir  = "/etc/ldap/schema"
)

// Names in every lab.
const (
	BaseDN          = "dc=cvpn,dc=test"
	AdminDN         = "cn=admin," + BaseDN
	PeopleDN        = "ou=people," + BaseDN
	GroupsDN        = "ou=groups," + BaseDN
	ServiceDN       = "cn=cvpn,ou=services," + BaseDN
	placeholderDN   = "cn=nobody," + BaseDN // keeps groupOfNames (MUST member) never empty
	startTimeout    = 15 * time.Second
	stopGracePeriod = 10 * time.Second
)

// Lab is one running slapd. Its methods call t.Fatal on failure, so call them from the test's
// goroutine.
type Lab struct {
	URL      string // ldap://ADDR:PORT (StartTLS works on it too)
	LDAPSURL string // ldaps://ADDR:PORT, certificate for ADDR, 127.0.0.1, ::1 and localhost
	CAPEM    []byte // the test CA that signed the server certificate

	BaseDN, AdminDN, AdminPassword string
	PeopleDN, GroupsDN             string
	// ServiceDN and ServicePassword are the account for bind_dn: it may read every entry
	// (userPassword excepted).
	ServiceDN, ServicePassword string

	t      testing.TB
	dir    string
	netns  string
	listen string // the -h argument
	ldapi  string // unix socket path

	mu   sync.Mutex // guards cmd, done, out
	cmd  *exec.Cmd
	done chan struct{}
	out  *bytes.Buffer
}

type options struct {
	addr  string
	netns string
}

// Option configures Start.
type Option func(*options)

// WithAddr makes slapd listen on addr (an IP address; 0.0.0.0 for every address) instead of
// 127.0.0.1. The URLs name addr, or 127.0.0.1 when addr is unspecified.
func WithAddr(addr string) Option { return func(o *options) { o.addr = addr } }

// WithNetns runs slapd inside the named network namespace (`ip netns exec NAME`), for
// end-to-end tests whose VPN server reaches the directory through a namespace's network.
func WithNetns(name string) Option { return func(o *options) { o.netns = name } }

// StartIn starts a lab whose slapd runs in network namespace netns, listening on addr.
func StartIn(t testing.TB, netns, addr string) *Lab {
	t.Helper()
	return Start(t, WithNetns(netns), WithAddr(addr))
}

// Start starts slapd with an empty directory (base, ou=people, ou=groups, the service account)
// and stops it when the test ends.
func Start(t testing.TB, opts ...Option) *Lab {
	t.Helper()
	o := options{addr: "127.0.0.1"}
	for _, f := range opts {
		f(&o)
	}
	if _, err := os.Stat(SlapdPath); err != nil {
		t.Fatalf("slapdlab: %s not found (%v): `make deps` installs the slapd and ldap-utils packages", SlapdPath, err)
	}
	ip := net.ParseIP(o.addr)
	if ip == nil {
		t.Fatalf("slapdlab: listen address %q is not an IP address", o.addr)
	}
	// A short path: the ldapi socket path must fit in sun_path (108 bytes).
	dir, err := os.MkdirTemp("", "slapdlab")
	if err != nil {
		t.Fatalf("slapdlab: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	l := &Lab{
		t: t, dir: dir, netns: o.netns,
		BaseDN: BaseDN, AdminDN: AdminDN, AdminPassword: randomSecret(),
		PeopleDN: PeopleDN, GroupsDN: GroupsDN,
		ServiceDN: ServiceDN, ServicePassword: randomSecret(),
		ldapi: filepath.Join(dir, "ldapi"),
	}
	ldapPort, ldapsPort := freePort(t, o.addr, o.netns), freePort(t, o.addr, o.netns)
	urlHost := o.addr
	if ip.IsUnspecified() {
		urlHost = "127.0.0.1"
	}
	l.URL = "ldap://" + net.JoinHostPort(urlHost, strconv.Itoa(ldapPort))
	l.LDAPSURL = "ldaps://" + net.JoinHostPort(urlHost, strconv.Itoa(ldapsPort))
	l.listen = strings.Join([]string{
		"ldap://" + net.JoinHostPort(o.addr, strconv.Itoa(ldapPort)) + "/",
		"ldaps://" + net.JoinHostPort(o.addr, strconv.Itoa(ldapsPort)) + "/",
		"ldapi://" + url.PathEscape(l.ldapi) + "/",
	}, " ")
	if err := l.writeFiles(ip); err != nil {
		t.Fatalf("slapdlab: %v", err)
	}
	t.Cleanup(l.Stop)
	l.start()
	l.seed()
	return l
}

// freePort picks a TCP port free on addr now. In another namespace the root namespace's loopback
// stands in (the namespace is the test's own and nearly empty).
func freePort(t testing.TB, addr, netns string) int {
	t.Helper()
	if netns != "" {
		addr = "127.0.0.1"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatalf("slapdlab: finding a free port on %s: %v", addr, err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func randomSecret() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%x", b)
}

var confTemplate = template.Must(template.New("slapd.conf").Parse(`# slapdlab: a throwaway test directory.
include {{.Schema}}/core.schema
include {{.Schema}}/cosine.schema
include {{.Schema}}/inetorgperson.schema
include {{.Schema}}/nis.schema
modulepath {{.Modules}}
moduleload back_mdb
moduleload memberof
moduleload ppolicy
pidfile {{.Dir}}/slapd.pid
argsfile {{.Dir}}/slapd.args
TLSCACertificateFile {{.Dir}}/ca.pem
TLSCertificateFile {{.Dir}}/server.pem
TLSCertificateKeyFile {{.Dir}}/server.key
sizelimit 5000

database mdb
maxsize 67108864
suffix "{{.Base}}"
rootdn "{{.Admin}}"
rootpw "{{.AdminPassword}}"
directory {{.Dir}}/data
index objectClass eq
index uid eq
index member eq

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE

overlay ppolicy

access to attrs=userPassword
	by self write
	by anonymous auth
	by * none
access to *
	by dn.exact="{{.Service}}" read
	by self read
	by * none
`))

func (l *Lab) writeFiles(ip net.IP) error {
	if err := os.Mkdir(filepath.Join(l.dir, "data"), 0o700); err != nil {
		return err
	}
	caPEM, certPEM, keyPEM, err := testCertificates(ip)
	if err != nil {
		return err
	}
	l.CAPEM = caPEM
	for name, b := range map[string][]byte{"ca.pem": caPEM, "server.pem": certPEM, "server.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(l.dir, name), b, 0o600); err != nil {
			return err
		}
	}
	var conf bytes.Buffer
	err = confTemplate.Execute(&conf, map[string]string{
		"Schema": SchemaDir, "Modules": ModulePath, "Dir": l.dir, "Base": BaseDN,
		"Admin": AdminDN, "AdminPassword": l.AdminPassword, "Service": ServiceDN,
	})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(l.dir, "slapd.conf"), conf.Bytes(), 0o600)
}

// testCertificates makes a CA and a server certificate it signs, for ip, loopback and localhost.
func testCertificates(ip net.IP) (caPEM, certPEM, keyPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "slapdlab test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if !ip.IsUnspecified() && !ip.IsLoopback() {
		ips = append(ips, ip)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "slapdlab"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: ips,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// start runs slapd in the foreground (-d 0) and waits until its ldapi socket answers.
func (l *Lab) start() {
	l.t.Helper()
	args := []string{SlapdPath, "-d", "0", "-f", filepath.Join(l.dir, "slapd.conf"), "-h", l.listen}
	if l.netns != "" {
		args = append([]string{"ip", "netns", "exec", l.netns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	out := &bytes.Buffer{}
	w := &lockedWriter{mu: &l.mu, b: out}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("slapdlab: starting slapd: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	l.mu.Lock()
	l.cmd, l.done, l.out = cmd, done, out
	l.mu.Unlock()

	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.Dial("unix", l.ldapi)
		if err == nil {
			_ = c.Close()
			return
		}
		select {
		case <-done:
			l.t.Fatalf("slapdlab: slapd exited at start (%v): %s", cmd.ProcessState, l.Output())
		default:
		}
		if time.Now().After(deadline) {
			l.Stop()
			l.t.Fatalf("slapdlab: slapd did not open %s within %v: %s", l.ldapi, startTimeout, l.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.b.Len() > 1<<20 {
		return len(p), nil
	}
	return w.b.Write(p)
}

// Output returns what slapd wrote to stderr so far (for failure messages).
func (l *Lab) Output() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.out == nil {
		return ""
	}
	return l.out.String()
}

// Running reports whether slapd is running.
func (l *Lab) Running() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done == nil {
		return false
	}
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// Stop stops slapd (SIGTERM, then SIGKILL after a grace period), keeping its data. The test's
// cleanup calls it; calling it twice is harmless.
func (l *Lab) Stop() {
	l.mu.Lock()
	cmd, done := l.cmd, l.done
	l.cmd = nil
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(stopGracePeriod):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart stops slapd if it runs and starts it again on the same ports with the same data.
func (l *Lab) Restart() {
	l.t.Helper()
	l.Stop()
	l.start()
}

// admin runs f on a fresh connection bound as the root DN over the ldapi socket.
func (l *Lab) admin(f func(c *ldap.Conn) error) error {
	nc, err := net.DialTimeout("unix", l.ldapi, 5*time.Second)
	if err != nil {
		return fmt.Errorf("slapdlab: ldapi: %w", err)
	}
	c := ldap.NewConn(nc, false)
	c.Start()
	defer c.Close()
	c.SetTimeout(10 * time.Second)
	if err := c.Bind(AdminDN, l.AdminPassword); err != nil {
		return fmt.Errorf("slapdlab: bind as %s: %w", AdminDN, err)
	}
	return f(c)
}

func (l *Lab) must(what string, f func(c *ldap.Conn) error) {
	l.t.Helper()
	if err := l.admin(f); err != nil {
		l.t.Fatalf("slapdlab: %s: %v", what, err)
	}
}

func add(c *ldap.Conn, dn string, attrs map[string][]string) error {
	req := ldap.NewAddRequest(dn, nil)
	for k, v := range attrs {
		req.Attribute(k, v)
	}
	if err := c.Add(req); err != nil {
		return fmt.Errorf("add %s: %w", dn, err)
	}
	return nil
}

func (l *Lab) seed() {
	l.t.Helper()
	l.must("seeding the directory", func(c *ldap.Conn) error {
		for _, e := range []struct {
			dn    string
			attrs map[string][]string
		}{
			{BaseDN, map[string][]string{"objectClass": {"dcObject", "organization"}, "dc": {"cvpn"}, "o": {"cvpn test"}}},
			{PeopleDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"people"}}},
			{GroupsDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"groups"}}},
			{"ou=services," + BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"services"}}},
			{ServiceDN, map[string][]string{"objectClass": {"organizationalRole", "simpleSecurityObject"},
				"cn": {"cvpn"}, "userPassword": {l.ServicePassword}}},
		} {
			if err := add(c, e.dn, e.attrs); err != nil {
				return err
			}
		}
		return nil
	})
}

// UserDN is the DN AddUser gives name.
func (l *Lab) UserDN(name string) string { return "uid=" + ldap.EscapeDN(name) + "," + PeopleDN }

// GroupDN is the DN AddGroup gives cn.
func (l *Lab) GroupDN(cn string) string { return "cn=" + ldap.EscapeDN(cn) + "," + GroupsDN }

// AddUser adds an inetOrgPerson uid=name under ou=people with the password.
func (l *Lab) AddUser(name, password string) {
	l.t.Helper()
	l.must("add user "+name, func(c *ldap.Conn) error {
		return add(c, l.UserDN(name), map[string][]string{
			"objectClass": {"inetOrgPerson"}, "uid": {name}, "cn": {name}, "sn": {name},
			"userPassword": {password},
		})
	})
}

// SetPassword changes a user's password.
func (l *Lab) SetPassword(name, password string) {
	l.t.Helper()
	l.modify("set the password of "+name, l.UserDN(name), func(m *ldap.ModifyRequest) {
		m.Replace("userPassword", []string{password})
	})
}

// LockUser locks the account the OpenLDAP way (ppolicy pwdAccountLockedTime); UnlockUser undoes it.
func (l *Lab) LockUser(name string) {
	l.t.Helper()
	l.modify("lock "+name, l.UserDN(name), func(m *ldap.ModifyRequest) {
		m.Replace("pwdAccountLockedTime", []string{"000001010000Z"})
	})
}

// UnlockUser removes the lock LockUser set.
func (l *Lab) UnlockUser(name string) {
	l.t.Helper()
	l.modify("unlock "+name, l.UserDN(name), func(m *ldap.ModifyRequest) {
		m.Delete("pwdAccountLockedTime", nil)
	})
}

// DeleteUser deletes a user; the memberof overlay removes it from its groups.
func (l *Lab) DeleteUser(name string) {
	l.t.Helper()
	l.must("delete user "+name, func(c *ldap.Conn) error {
		return c.Del(ldap.NewDelRequest(l.UserDN(name), nil))
	})
}

// AddGroup adds a groupOfNames cn under ou=groups with the given users (names, not DNs) as
// members. Groups also hold a placeholder member, so removing the last user keeps them valid.
func (l *Lab) AddGroup(cn string, members ...string) {
	l.t.Helper()
	dns := []string{placeholderDN}
	for _, m := range members {
		dns = append(dns, l.UserDN(m))
	}
	l.must("add group "+cn, func(c *ldap.Conn) error {
		return add(c, l.GroupDN(cn), map[string][]string{"objectClass": {"groupOfNames"}, "cn": {cn}, "member": dns})
	})
}

// AddGroupMemberDN adds any DN (a nested group, say) as a member of group.
func (l *Lab) AddGroupMemberDN(group, dn string) {
	l.t.Helper()
	l.modify("add "+dn+" to "+group, l.GroupDN(group), func(m *ldap.ModifyRequest) { m.Add("member", []string{dn}) })
}

// AddMember adds user to group.
func (l *Lab) AddMember(group, user string) {
	l.t.Helper()
	l.AddGroupMemberDN(group, l.UserDN(user))
}

// RemoveMember removes user from group.
func (l *Lab) RemoveMember(group, user string) {
	l.t.Helper()
	l.modify("remove "+user+" from "+group, l.GroupDN(group), func(m *ldap.ModifyRequest) {
		m.Delete("member", []string{l.UserDN(user)})
	})
}

func (l *Lab) modify(what, dn string, f func(*ldap.ModifyRequest)) {
	l.t.Helper()
	l.must(what, func(c *ldap.Conn) error {
		m := ldap.NewModifyRequest(dn, nil)
		f(m)
		return c.Modify(m)
	})
}

// MemberOf returns the memberOf values slapd keeps on a user (read as the root DN).
func (l *Lab) MemberOf(user string) []string {
	l.t.Helper()
	var out []string
	l.must("read memberOf of "+user, func(c *ldap.Conn) error {
		res, err := c.Search(ldap.NewSearchRequest(l.UserDN(user), ldap.ScopeBaseObject, ldap.NeverDerefAliases,
			1, 10, false, "(objectClass=*)", []string{"memberOf"}, nil))
		if err != nil {
			return err
		}
		if len(res.Entries) != 1 {
			return errors.New("no entry")
		}
		out = res.Entries[0].GetAttributeValues("memberOf")
		return nil
	})
	return out
}
