package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/xml"
	"math/big"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	crewsaml "github.com/crewjam/saml"
)

// fedBase is a valid endpoint with federated (OIDC) authentication only and a portal. Lines:
//
//	1 client_cidr_block    6 target_network     11 authentication
//	2 vpc_cidr_blocks      7   interface        12   federated
//	3 server_certificate   8   snat_address     13     oidc
//	4   cert_file          9 portal             14       issuer
//	5   key_file          10   public_url       15       client_id
//
// Appended lines start at 16; six spaces of indentation put a key under oidc, four under
// federated, two under authentication.
const fedBase = `client_cidr_block: 10.2.0.0/22
vpc_cidr_blocks: [10.0.0.0/16]
server_certificate:
  cert_file: pki/server.crt
  key_file: pki/server.key
target_network:
  interface: eth1
  snat_address: 10.0.1.2
portal:
  public_url: https://vpn.example.com
authentication:
  federated:
    oidc:
      issuer: https://idp.example.com/realms/corp
      client_id: cvpn
`

// samlBlock replaces the oidc block of fedBase: lines 13 saml, 14 idp_metadata_file, 15
// groups_attribute.
const (
	oidcBlock = "    oidc:\n      issuer: https://idp.example.com/realms/corp\n      client_id: cvpn\n"
	samlBlock = "    saml:\n      idp_metadata_file: idp-metadata.xml\n      groups_attribute: groups\n"
)

func TestFederatedDefaults(t *testing.T) {
	ep := parseDoc(t, fedBase)
	a := ep.Authentication
	if a.Certificate != nil || a.Directory != nil || a.MFA != nil || a.Federated == nil || a.Federated.SAML != nil {
		t.Fatalf("Authentication = %+v, want federated OIDC only", a)
	}
	wantOIDC := &OIDCAuthentication{
		Issuer: "https://idp.example.com/realms/corp", ClientID: "cvpn",
		Scopes: []string{"openid", "profile", "email"}, UsernameClaim: "preferred_username", GroupsClaim: "groups",
	}
	if !reflect.DeepEqual(a.Federated.OIDC, wantOIDC) {
		t.Errorf("OIDC = %+v, want %+v", a.Federated.OIDC, wantOIDC)
	}
	wantPortal := &Portal{ListenAddress: netip.MustParseAddrPort("0.0.0.0:443"), PublicURL: "https://vpn.example.com"}
	if !reflect.DeepEqual(ep.Portal, wantPortal) {
		t.Errorf("Portal = %+v, want %+v", ep.Portal, wantPortal)
	}
	// The default scopes are not shared between endpoints.
	a.Federated.OIDC.Scopes[0] = "x"
	if again := parseDoc(t, fedBase); again.Authentication.Federated.OIDC.Scopes[0] != "openid" {
		t.Error("default scopes slice is shared between loads")
	}

	ep = parseDoc(t, edit(t, fedBase, oidcBlock, "    saml: {idp_metadata_file: idp-metadata.xml}\n"))
	want := &SAMLAuthentication{IdPMetadataFile: abs(t, "testdata/idp-metadata.xml"), GroupsAttribute: "memberOf"}
	if f := ep.Authentication.Federated; f.OIDC != nil || !reflect.DeepEqual(f.SAML, want) {
		t.Errorf("Federated = OIDC %+v SAML %+v, want SAML %+v", f.OIDC, f.SAML, want)
	}
}

// TestFederatedAccepts: forms the rules must not refuse.
func TestFederatedAccepts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   []string // old, new pairs applied to fedBase
		append string
		check  func(t *testing.T, ep *Endpoint)
	}{
		{name: "every oidc key", append: "      client_secret_file: oidc-client-secret\n      ca_file: pki/ca.crt\n" +
			"      scopes: [openid, groups, \"api://cvpn/.default\"]\n      username_claim: email\n      groups_claim: \"https://example.com/claims/groups\"\n",
			check: func(t *testing.T, ep *Endpoint) {
				want := &OIDCAuthentication{
					Issuer: "https://idp.example.com/realms/corp", ClientID: "cvpn",
					ClientSecretFile: abs(t, "testdata/oidc-client-secret"), CAFile: abs(t, "testdata/pki/ca.crt"),
					Scopes: []string{"openid", "groups", "api://cvpn/.default"}, UsernameClaim: "email",
					GroupsClaim: "https://example.com/claims/groups",
				}
				if got := ep.Authentication.Federated.OIDC; !reflect.DeepEqual(got, want) {
					t.Errorf("OIDC = %+v, want %+v", got, want)
				}
			}},
		{name: "issuer with port and trailing slash", edit: []string{"https://idp.example.com/realms/corp", "https://idp.example.com:8443/"}},
		{name: "saml", edit: []string{oidcBlock, samlBlock},
			check: func(t *testing.T, ep *Endpoint) {
				if s := ep.Authentication.Federated.SAML; s.GroupsAttribute != "groups" || s.IdPMetadataFile != abs(t, "testdata/idp-metadata.xml") {
					t.Errorf("SAML = %+v", s)
				}
			}},
		{name: "with certificate", append: "  certificate: {client_root_ca_file: pki/ca.crt}\n",
			check: func(t *testing.T, ep *Endpoint) {
				if ep.Authentication.Certificate == nil || ep.Authentication.Federated == nil {
					t.Errorf("Authentication = %+v, want certificate and federated", ep.Authentication)
				}
			}},
		{name: "portal every key", edit: []string{"  public_url: https://vpn.example.com\n",
			"  listen_address: \"[::]:8443\"\n  public_url: https://vpn.example.com:8443/\n  cert_file: pki/server.crt\n  key_file: pki/server.key\n"},
			check: func(t *testing.T, ep *Endpoint) {
				want := &Portal{ListenAddress: netip.MustParseAddrPort("[::]:8443"), PublicURL: "https://vpn.example.com:8443/",
					CertFile: abs(t, "testdata/pki/server.crt"), KeyFile: abs(t, "testdata/pki/server.key")}
				if !reflect.DeepEqual(ep.Portal, want) {
					t.Errorf("Portal = %+v, want %+v", ep.Portal, want)
				}
			}},
		{name: "portal by IP address", edit: []string{"https://vpn.example.com", "https://192.0.2.10"}},
		{name: "portal beside a udp listener on its port", append: "transport: [{protocol: udp, port: 443}, {protocol: tcp, port: 1194}]\n"},
		{name: "portal on another address than a tcp listener", edit: []string{"  public_url:", "  listen_address: 192.0.2.1:443\n  public_url:"},
			append: "listen_address: 192.0.2.2\ntransport: [{protocol: tcp, port: 443}]\n"},
		{name: "portal beside metrics", append: "metrics: {listen_address: 127.0.0.1:9464}\n"},
		{name: "portal without federated", edit: []string{"  federated:\n" + oidcBlock, "  certificate: {client_root_ca_file: pki/ca.crt}\n"},
			check: func(t *testing.T, ep *Endpoint) {
				if ep.Portal == nil || ep.Authentication.Federated != nil {
					t.Errorf("Portal %+v Federated %+v, want a portal and no federated login", ep.Portal, ep.Authentication.Federated)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := parseDoc(t, edit(t, fedBase, tc.edit...)+tc.append)
			if tc.check != nil {
				tc.check(t, ep)
			}
		})
	}
}

func TestFederatedRules(t *testing.T) {
	f := newUserFiles(t)
	const fedLine, oidcLine = 12, 13
	tests := []struct {
		name   string
		edit   []string
		append string
		path   string
		line   int
		msg    string
	}{
		// authentication
		{name: "federated and directory", append: "  directory: {url: ldaps://dc1.example.com, user_base_dn: \"dc=example,dc=com\"}\n",
			path: "authentication.federated", line: fedLine, msg: "set directory or federated, not both"},
		{name: "federated and mfa", append: "  mfa: {}\n",
			path: "authentication.mfa", line: 16, msg: "does not apply with federated"},
		{name: "federated null", edit: []string{oidcBlock, ""},
			path: "authentication.certificate", line: 11, msg: "required unless directory or federated is set"},
		{name: "neither oidc nor saml", edit: []string{"  federated:\n" + oidcBlock, "  federated: {}\n"},
			path: "authentication.federated.oidc", line: fedLine, msg: "required unless saml is set"},
		{name: "oidc and saml", append: samlBlock,
			path: "authentication.federated.saml", line: 16, msg: "set oidc or saml, not both"},
		{name: "unknown federated key", append: "    odic: {}\n",
			path: "authentication.federated.odic", line: 16, msg: `unknown key "odic" (did you mean "oidc"?)`},

		// portal requirement
		{name: "no portal", edit: []string{"portal:\n  public_url: https://vpn.example.com\n", ""},
			path: "portal", line: fedLine - 2, msg: "required when authentication.federated is set"},

		// oidc
		{name: "issuer missing", edit: []string{"      issuer: https://idp.example.com/realms/corp\n", ""},
			path: "authentication.federated.oidc.issuer", line: oidcLine, msg: "required"},
		{name: "issuer http", edit: []string{"https://idp.example.com/realms/corp", "http://idp.example.com"},
			path: "authentication.federated.oidc.issuer", line: 14, msg: "is not an https:// URL"},
		{name: "issuer upper-case scheme", edit: []string{"https://idp.example.com/realms/corp", "HTTPS://idp.example.com"},
			path: "authentication.federated.oidc.issuer", line: 14, msg: "is not an https:// URL"},
		{name: "issuer query", edit: []string{"https://idp.example.com/realms/corp", "https://idp.example.com/?tenant=x"},
			path: "authentication.federated.oidc.issuer", line: 14, msg: "has a query or fragment"},
		{name: "issuer empty query", edit: []string{"https://idp.example.com/realms/corp", "https://idp.example.com/?"},
			path: "authentication.federated.oidc.issuer", line: 14, msg: "has a query or fragment"},
		{name: "issuer fragment", edit: []string{"https://idp.example.com/realms/corp", "\"https://idp.example.com/#x\""},
			path: "authentication.federated.oidc.issuer", line: 14, msg: "has a query or fragment"},
		{name: "issuer userinfo", edit: []string{"https://idp.example.com/realms/corp", "https://cvpn:secret@idp.example.com"},
			path: "authentication.federated.oidc.issuer", line: 14, msg: "holds user information"},
		{name: "issuer no host", edit: []string{"https://idp.example.com/realms/corp", "https:///realms/corp"},
			path: "authentication.federated.oidc.issuer", line: 14, msg: "names no host"},
		{name: "issuer port", edit: []string{"https://idp.example.com/realms/corp", "https://idp.example.com:0/"},
			path: "authentication.federated.oidc.issuer", line: 14, msg: "outside 1..65535"},
		{name: "issuer space", edit: []string{"https://idp.example.com/realms/corp", "\"https://idp.example.com/realms/my corp\""},
			path: "authentication.federated.oidc.issuer", line: 14, msg: "holds U+0020"},
		{name: "issuer too long", edit: []string{"https://idp.example.com/realms/corp", "https://idp.example.com/" + strings.Repeat("a", 2048)},
			path: "authentication.federated.oidc.issuer", line: 14, msg: "at most 2048"},
		{name: "client_id missing", edit: []string{"      client_id: cvpn\n", ""},
			path: "authentication.federated.oidc.client_id", line: oidcLine, msg: "required"},
		{name: "client_id control", edit: []string{"client_id: cvpn", "client_id: \"cv\\npn\""},
			path: "authentication.federated.oidc.client_id", line: 15, msg: "other than printable ASCII"},
		{name: "client secret world-readable", append: "      client_secret_file: " + f.public + "\n",
			path: "authentication.federated.oidc.client_secret_file", line: 16, msg: "readable by every user of the host (mode 0644); it holds the OIDC client secret"},
		{name: "client secret missing", append: "      client_secret_file: nope\n",
			path: "authentication.federated.oidc.client_secret_file", line: 16, msg: "no such file or directory"},
		{name: "ca_file missing", append: "      ca_file: pki/nope.crt\n",
			path: "authentication.federated.oidc.ca_file", line: 16, msg: "no such file or directory"},
		{name: "scopes without openid", append: "      scopes: [profile, email]\n",
			path: "authentication.federated.oidc.scopes", line: 16, msg: "must contain openid"},
		{name: "scopes empty", append: "      scopes: []\n",
			path: "authentication.federated.oidc.scopes", line: 16, msg: "at least one"},
		{name: "scopes in one string", append: "      scopes: [\"openid profile\"]\n",
			path: "authentication.federated.oidc.scopes[0]", line: 16, msg: "is not a scope token"},
		{name: "scope with a quote", append: "      scopes: [openid, 'a\"b']\n",
			path: "authentication.federated.oidc.scopes[1]", line: 16, msg: "is not a scope token"},
		{name: "scope duplicate", append: "      scopes: [openid, email, openid]\n",
			path: "authentication.federated.oidc.scopes[2]", line: 16, msg: "already listed at authentication.federated.oidc.scopes[0]"},
		{name: "scopes too many", append: "      scopes: [openid" + strings.Repeat(", s", 32) + "]\n",
			path: "authentication.federated.oidc.scopes", line: 16, msg: "at most 32"},
		{name: "scopes not a list", append: "      scopes: openid\n",
			path: "authentication.federated.oidc.scopes", line: 16, msg: "must be a list"},
		{name: "username claim empty", append: "      username_claim: \"\"\n",
			path: "authentication.federated.oidc.username_claim", line: 16, msg: "must not be empty"},
		{name: "groups claim with space", append: "      groups_claim: my groups\n",
			path: "authentication.federated.oidc.groups_claim", line: 16, msg: "holds white space"},
		{name: "oidc unknown key", append: "      client-secret-file: x\n",
			path: "authentication.federated.oidc.client-secret-file", line: 16, msg: `did you mean "client_secret_file"?`},

		// saml
		{name: "saml metadata missing key", edit: []string{oidcBlock, "    saml: {groups_attribute: memberOf}\n"},
			path: "authentication.federated.saml.idp_metadata_file", line: oidcLine, msg: "required"},
		{name: "saml metadata no file", edit: []string{oidcBlock, "    saml: {idp_metadata_file: nope.xml}\n"},
			path: "authentication.federated.saml.idp_metadata_file", line: oidcLine, msg: "no such file or directory"},
		{name: "saml metadata not XML", edit: []string{oidcBlock, "    saml: {idp_metadata_file: pki/ca.crt}\n"},
			path: "authentication.federated.saml.idp_metadata_file", line: oidcLine, msg: "is not XML"},
		{name: "saml metadata a directory", edit: []string{oidcBlock, "    saml: {idp_metadata_file: pki}\n"},
			path: "authentication.federated.saml.idp_metadata_file", line: oidcLine, msg: "is not a regular file"},
		{name: "saml groups attribute", edit: []string{oidcBlock, "    saml: {idp_metadata_file: idp-metadata.xml, groups_attribute: \"a\\tb\"}\n"},
			path: "authentication.federated.saml.groups_attribute", line: oidcLine, msg: "holds white space"},

		// portal
		{name: "portal public_url missing", edit: []string{"  public_url: https://vpn.example.com\n", "  listen_address: 0.0.0.0:8443\n"},
			path: "portal.public_url", line: 9, msg: "required"},
		{name: "portal null", edit: []string{"portal:\n  public_url: https://vpn.example.com\n", "portal:\n"},
			path: "portal", line: fedLine - 1, msg: "required when authentication.federated is set"},
		{name: "portal http", edit: []string{"https://vpn.example.com", "http://vpn.example.com"},
			path: "portal.public_url", line: 10, msg: "is not an https:// URL"},
		{name: "portal path", edit: []string{"https://vpn.example.com", "https://vpn.example.com/vpn"},
			path: "portal.public_url", line: 10, msg: "has a path, query or fragment"},
		{name: "portal query", edit: []string{"https://vpn.example.com", "https://vpn.example.com/?a=b"},
			path: "portal.public_url", line: 10, msg: "has a path, query or fragment"},
		{name: "portal user", edit: []string{"https://vpn.example.com", "https://admin@vpn.example.com"},
			path: "portal.public_url", line: 10, msg: "holds user information"},
		{name: "portal bad host", edit: []string{"https://vpn.example.com", "https://vpn_example.com"},
			path: "portal.public_url", line: 10, msg: "is not an IP address or DNS name"},
		{name: "portal unspecified host", edit: []string{"https://vpn.example.com", "https://0.0.0.0"},
			path: "portal.public_url", line: 10, msg: "is not an address clients can dial"},
		{name: "portal port", edit: []string{"https://vpn.example.com", "https://vpn.example.com:65536"},
			path: "portal.public_url", line: 10, msg: "outside 1..65535"},
		{name: "portal listen without port", edit: []string{"  public_url:", "  listen_address: 0.0.0.0\n  public_url:"},
			path: "portal.listen_address", line: 10, msg: `"0.0.0.0" is not an IP:port like 0.0.0.0:8443`},
		{name: "portal listen port zero", edit: []string{"  public_url:", "  listen_address: 0.0.0.0:0\n  public_url:"},
			path: "portal.listen_address", line: 10, msg: "port 0 is outside 1..65535"},
		{name: "portal cert without key", edit: []string{"  public_url:", "  cert_file: pki/server.crt\n  public_url:"},
			path: "portal.key_file", line: 9, msg: "required with cert_file"},
		{name: "portal key without cert", edit: []string{"  public_url:", "  key_file: pki/server.key\n  public_url:"},
			path: "portal.cert_file", line: 9, msg: "required with key_file"},
		{name: "portal cert missing", edit: []string{"  public_url:", "  cert_file: pki/nope.crt\n  key_file: pki/server.key\n  public_url:"},
			path: "portal.cert_file", line: 10, msg: "no such file or directory"},
		{name: "portal on the tcp listener (default)", append: "transport: [{protocol: tcp, port: 443}]\n",
			path: "portal", line: 9, msg: "0.0.0.0:443 is also the tcp/443 listener's socket (0.0.0.0:443)"},
		{name: "portal on the tcp listener, explicit", edit: []string{"  public_url:", "  listen_address: 192.0.2.1:1194\n  public_url:"},
			append: "transport: [{protocol: udp, port: 443}, {protocol: tcp, port: 1194}]\n",
			path:   "portal.listen_address", line: 10, msg: "192.0.2.1:1194 is also the tcp/1194 listener's socket (0.0.0.0:1194)"},
		{name: "portal on metrics", edit: []string{"  public_url:", "  listen_address: \"[::]:9464\"\n  public_url:"},
			append: "metrics: {}\n",
			path:   "portal.listen_address", line: 10, msg: "[::]:9464 is also metrics.listen_address (127.0.0.1:9464)"},
		{name: "portal unknown key", edit: []string{"  public_url:", "  url: https://x.example.com\n  public_url:"},
			path: "portal.url", line: 10, msg: `unknown key "url"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := edit(t, fedBase, tc.edit...) + tc.append
			ep, err := Parse([]byte(doc), "testdata")
			if err == nil {
				t.Fatalf("Parse succeeded: %+v\n%s", ep, doc)
			}
			errs := validationErrors(t, err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1:\n%v\n%s", len(errs), err, doc)
			}
			got := errs[0]
			if got.Path != tc.path || got.Line != tc.line || !strings.Contains(got.Msg, tc.msg) {
				t.Errorf("got  path %q line %d msg %q\nwant path %q line %d msg containing %q", got.Path, got.Line, got.Msg, tc.path, tc.line, tc.msg)
			}
		})
	}
}

// idpMetadata is what a real SAML IdP (crewjam/saml's IdentityProvider, as samlidp serves it)
// publishes, for a fresh key.
func idpMetadata(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "idp.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	idp := crewsaml.IdentityProvider{Key: key, Certificate: cert,
		MetadataURL: url.URL{Scheme: "https", Host: "idp.test", Path: "/metadata"},
		SSOURL:      url.URL{Scheme: "https", Host: "idp.test", Path: "/sso"}}
	b, err := xml.Marshal(idp.Metadata())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCheckIdPMetadata: a real IdP's metadata passes, as it is and wrapped in an
// EntitiesDescriptor; what auth/saml could not use is refused with the reason.
func TestCheckIdPMetadata(t *testing.T) {
	md := string(idpMetadata(t))
	example, err := os.ReadFile("testdata/idp-metadata.xml")
	if err != nil {
		t.Fatal(err)
	}
	// An SP's metadata, from the same library.
	sp := crewsaml.ServiceProvider{EntityID: "https://vpn.test/saml/metadata",
		AcsURL: url.URL{Scheme: "https", Host: "vpn.test", Path: "/saml/acs"}}
	spMD, err := xml.Marshal(sp.Metadata())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		doc  string
		msg  string // "" when the document passes
	}{
		{name: "real IdP", doc: md},
		{name: "the example", doc: string(example)},
		{name: "entities", doc: `<EntitiesDescriptor xmlns="urn:oasis:names:tc:SAML:2.0:metadata">` + string(spMD) + md + `</EntitiesDescriptor>`},
		{name: "entities without an IdP", doc: `<EntitiesDescriptor xmlns="urn:oasis:names:tc:SAML:2.0:metadata">` + string(spMD) + `</EntitiesDescriptor>`,
			msg: "holds no EntityDescriptor with an IDPSSODescriptor"},
		{name: "SP metadata", doc: string(spMD), msg: "has no IDPSSODescriptor"},
		{name: "not XML", doc: "-----BEGIN CERTIFICATE-----", msg: "is not XML"},
		{name: "truncated", doc: md[:len(md)/2], msg: "is not XML"},
		{name: "empty", doc: "", msg: "is not XML"},
		{name: "other root", doc: `<html><body>login</body></html>`, msg: "its root element is <html>"},
		{name: "no namespace", doc: strings.Replace(md, `xmlns="urn:oasis:names:tc:SAML:2.0:metadata"`, "", 1), msg: "not a SAML metadata EntityDescriptor"},
		{name: "no entityID", doc: strings.Replace(md, `entityID="https://idp.test/metadata"`, "", 1), msg: "has no entityID"},
		{name: "encryption keys only", doc: strings.ReplaceAll(md, `use="signing"`, `use="encryption"`), msg: "has no signing certificate"},
		{name: "no certificates", doc: strings.ReplaceAll(md, "X509Certificate", "X509Certificat"), msg: "has no signing certificate"},
		{name: "certificate not base64", doc: strings.Replace(md, `<X509Certificate xmlns="http://www.w3.org/2000/09/xmldsig#">`,
			`<X509Certificate xmlns="http://www.w3.org/2000/09/xmldsig#">!!`, 1), msg: "is not base64"},
		{name: "certificate not a certificate", doc: strings.Replace(md, `<X509Certificate xmlns="http://www.w3.org/2000/09/xmldsig#">`,
			`<X509Certificate xmlns="http://www.w3.org/2000/09/xmldsig#">AAAA`, 1), msg: "is not a certificate"},
		{name: "no redirect binding", doc: strings.ReplaceAll(md, "HTTP-Redirect", "HTTP-Nothing"), msg: "no SingleSignOnService with the HTTP-Redirect binding"},
		{name: "signing certificate outside the IDPSSODescriptor", doc: `<EntityDescriptor xmlns="urn:oasis:names:tc:SAML:2.0:metadata" entityID="x">` +
			`<IDPSSODescriptor><SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://x/sso"/></IDPSSODescriptor>` +
			md[strings.Index(md, "<KeyDescriptor"):strings.Index(md, "</KeyDescriptor>")] + `</KeyDescriptor></EntityDescriptor>`,
			msg: "has no signing certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckIdPMetadata([]byte(tc.doc))
			switch {
			case tc.msg == "" && err != nil:
				t.Errorf("CheckIdPMetadata = %v, want it to pass", err)
			case tc.msg != "" && (err == nil || !strings.Contains(err.Error(), tc.msg)):
				t.Errorf("CheckIdPMetadata = %v, want an error containing %q", err, tc.msg)
			}
		})
	}
}

// TestIdPMetadataFileSize: a metadata file over 4 MiB is refused before it is parsed.
func TestIdPMetadataFileSize(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.xml")
	// Valid metadata, padded past the limit with white space inside the root element.
	md := idpMetadata(t)
	i := strings.LastIndex(string(md), "</")
	padded := string(md[:i]) + strings.Repeat(" ", maxMetadataBytes) + string(md[i:])
	if err := os.WriteFile(big, []byte(padded), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckIdPMetadata([]byte(padded)); err != nil {
		t.Fatalf("the padded document itself: %v", err)
	}
	if err := checkIdPMetadataFile(big); err == nil || !strings.Contains(err.Error(), "larger than 4194304 bytes") {
		t.Errorf("checkIdPMetadataFile(%d bytes) = %v, want refused for its size", len(padded), err)
	}
}

// FuzzCheckIdPMetadata: nothing panics, and a document that passes holds an IDPSSODescriptor
// and a certificate.
func FuzzCheckIdPMetadata(f *testing.F) {
	example, err := os.ReadFile("testdata/idp-metadata.xml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte(`<EntitiesDescriptor xmlns="urn:oasis:names:tc:SAML:2.0:metadata"><EntityDescriptor/></EntitiesDescriptor>`))
	f.Add([]byte(`<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><EntityDescriptor>&a;</EntityDescriptor>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if CheckIdPMetadata(data) != nil {
			return
		}
		if s := string(data); !strings.Contains(s, "IDPSSODescriptor") || !strings.Contains(s, "X509Certificate") {
			t.Fatalf("accepted %q", data)
		}
	})
}

// TestReloadPortal: adding a portal to a running endpoint needs a restart, and the refusal
// says so with both values; a change of the OIDC provider applies live.
func TestReloadPortal(t *testing.T) {
	running := parseDoc(t, base)
	next := parseDoc(t, base+"portal: {public_url: \"https://vpn.example.com\"}\n")
	err := CheckReload(running, next)
	if err == nil {
		t.Fatal("CheckReload passed a new portal")
	}
	errs := validationErrors(t, err)
	// listen_address is the default, on no line of the file.
	if len(errs) != 2 || errs[0].Path != "portal.listen_address" || errs[0].Line != 0 || errs[1].Path != "portal.public_url" || errs[1].Line != 17 ||
		!strings.Contains(errs[0].Msg, "(running no portal, file 0.0.0.0:443): the portal listens on it from start; restart the endpoint") {
		t.Errorf("CheckReload = %v, want portal.listen_address and portal.public_url (line 17) refused, with the restart reason", err)
	}

	running = parseDoc(t, fedBase)
	next = parseDoc(t, edit(t, fedBase, "client_id: cvpn", "client_id: cvpn-2"))
	changed, refused := Diff(running, next, nil)
	if err := CheckReload(running, next); err != nil || refused != nil || len(changed) != 1 || changed[0] != "authentication.federated.oidc.client_id" {
		t.Errorf("Diff = changed %q refused %q, CheckReload = %v; want client_id changed live", changed, refused, err)
	}
}
