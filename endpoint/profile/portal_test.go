package profile

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/endpoint/clientstore"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/portal"
)

func TestClientName(t *testing.T) {
	for _, c := range []struct{ user, want string }{
		{"alice", "alice"},
		{"alice@example.com", "alice@example.com"},
	} {
		if got := ClientName(c.user); got != c.want {
			t.Errorf("ClientName(%q) = %q, want %q", c.user, got, c.want)
		}
	}
	seen := map[string]string{}
	for _, u := range []string{"Alice Smith", "alice_smith", "../etc/passwd", "CN=x,OU=y", strings.Repeat("a", 300), "élodie", "-x"} {
		n := ClientName(u)
		if err := clientstore.CheckName(n); err != nil {
			t.Errorf("ClientName(%q) = %q: %v", u, n, err)
		}
		if prev, ok := seen[n]; ok {
			t.Errorf("%q and %q share the name %q", prev, u, n)
		}
		seen[n] = u
	}
}

// TestPortalProfilesDirectoryOnly: a directory-only endpoint's portal profile asks for the
// login and carries no certificate; a protocol without a listener is refused.
func TestPortalProfilesDirectoryOnly(t *testing.T) {
	tp := newPKI(t)
	ep := tp.directoryEndpoint(false, nil)
	ep.Config.Transport = []config.Listener{{Protocol: config.ProtocolUDP, Port: 443}}
	pp := ForPortal(func() *endpoint.Endpoint { return ep }, time.Now)
	name, body, err := pp.Profile(context.Background(), portal.Identity{Username: "alice"}, "udp")
	if err != nil {
		t.Fatal(err)
	}
	if name != "vpn.example.com-udp.ovpn" || !strings.Contains(string(body), "auth-user-pass") || strings.Contains(string(body), "<cert>") {
		t.Errorf("profile %s:\n%s", name, body)
	}
	if _, _, err := pp.Profile(context.Background(), portal.Identity{Username: "alice"}, "tcp"); err == nil {
		t.Error("a tcp profile of an endpoint without a tcp listener")
	}
}

// TestPortalProfilesIssueCertificate: on an endpoint that also wants certificates, the first
// download issues the user a personal certificate, and the next reuses it.
func TestPortalProfilesIssueCertificate(t *testing.T) {
	tp := newPKI(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := pki.WriteIdentity(tp.ca, caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	ep := tp.directoryEndpoint(true, nil)
	ep.Config.Authentication.Certificate.ClientRootCAFile = caFile
	ep.Config.Transport = []config.Listener{{Protocol: config.ProtocolTCP, Port: 443}}
	pp := ForPortal(func() *endpoint.Endpoint { return ep }, time.Now)
	_, first, err := pp.Profile(context.Background(), portal.Identity{Username: "carol@example.com"}, "tcp")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(first), "<cert>") || !strings.Contains(string(first), "auth-user-pass") {
		t.Fatalf("profile without the personal certificate:\n%s", first)
	}
	if _, err := os.Stat(filepath.Join(dir, "clients", "carol@example.com.crt")); err != nil {
		t.Errorf("the issued certificate is not in the client store: %v", err)
	}
	_, second, err := pp.Profile(context.Background(), portal.Identity{Username: "carol@example.com"}, "tcp")
	if err != nil {
		t.Fatal(err)
	}
	if cert := func(b []byte) string {
		s := string(b)
		return s[strings.Index(s, "<cert>"):strings.Index(s, "</cert>")]
	}; cert(first) != cert(second) {
		t.Error("a second download issued another certificate")
	}
}
