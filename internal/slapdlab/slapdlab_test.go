package slapdlab

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"
)

func TestLab(t *testing.T) {
	l := Start(t)
	l.AddUser("alice", "alice-pw")
	l.AddUser("bob", "bob-pw")
	l.AddGroup("eng", "alice")
	if got := l.MemberOf("alice"); len(got) != 1 || !strings.EqualFold(got[0], l.GroupDN("eng")) {
		t.Fatalf("memberOf(alice) = %q, want eng (the memberof overlay)", got)
	}
	l.AddMember("eng", "bob")
	l.RemoveMember("eng", "alice")
	if got := l.MemberOf("alice"); len(got) != 0 {
		t.Fatalf("memberOf(alice) after removal = %q", got)
	}

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(l.CAPEM) {
		t.Fatal("CAPEM holds no certificate")
	}
	c, err := ldap.DialURL(l.LDAPSURL, ldap.DialWithTLSConfig(&tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}))
	if err != nil {
		t.Fatalf("ldaps: %v", err)
	}
	defer c.Close()
	if err := c.Bind(l.UserDN("bob"), "bob-pw"); err != nil {
		t.Fatalf("bind as bob over ldaps: %v", err)
	}
	if err := c.Bind(l.UserDN("bob"), "wrong"); !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
		t.Fatalf("wrong password: %v", err)
	}

	l.Restart()
	c2, err := ldap.DialURL(l.URL)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	defer c2.Close()
	if err := c2.Bind(l.ServiceDN, l.ServicePassword); err != nil {
		t.Fatalf("service bind after restart: %v", err)
	}
	res, err := c2.Search(ldap.NewSearchRequest(l.PeopleDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		"(uid=bob)", []string{"memberOf", "userPassword"}, nil))
	if err != nil || len(res.Entries) != 1 {
		t.Fatalf("service search after restart: %v %v", res, err)
	}
	if got := res.Entries[0].GetAttributeValues("memberOf"); len(got) != 1 {
		t.Errorf("bob's memberOf as the service account = %q, want eng (data kept over the restart)", got)
	}
	if pw := res.Entries[0].GetAttributeValues("userPassword"); len(pw) != 0 {
		t.Errorf("the service account can read userPassword: %q", pw)
	}
	l.Stop()
	if l.Running() {
		t.Error("slapd still running after Stop")
	}
}
