package config

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// This file is the schema of single sign-on and the self-service portal:
// authentication.federated (OIDC or SAML) and portal.

// Limits of the federated and portal keys.
const (
	maxURLBytes      = 2048 // far above any real issuer or portal URL; bounds log lines
	maxClientIDBytes = 1024
	maxScopes        = 32
	maxScopeBytes    = 128
	maxClaimBytes    = 256 // claim and attribute names (URIs in some providers)
	// maxMetadataBytes bounds the SAML IdP metadata file, as package
	// auth/saml does when it loads it.
	maxMetadataBytes = 4 << 20
)

// SAML metadata names (SAML 2.0 metadata, saml-metadata-2.0-os section 2;
// XML Signature for KeyInfo).
const (
	samlMetadataNS          = "urn:oasis:names:tc:SAML:2.0:metadata"
	xmlDSigNS               = "http://www.w3.org/2000/09/xmldsig#"
	samlHTTPRedirectBinding = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
)

// federated walks authentication.federated: exactly one of oidc and saml.
// It returns nil when anything in it is wrong.
func (d *decoder) federated(n *yaml.Node, path string, line int) *FederatedAuthentication {
	m, ok := d.mapping(n, path, line, "oidc", "saml")
	if !ok {
		return nil
	}
	_, _, hasOIDC := m.get("oidc")
	_, _, hasSAML := m.get("saml")
	switch {
	case hasOIDC && hasSAML:
		d.errorf(join(path, "saml"), m.keyLine("saml"), "set oidc or saml, not both (one identity provider per endpoint)")
		return nil
	case !hasOIDC && !hasSAML:
		d.errorf(join(path, "oidc"), m.keyLine("oidc"), "required unless saml is set (the identity provider: an OpenID Connect issuer or a SAML IdP)")
		return nil
	}
	f := &FederatedAuthentication{}
	if n, p, ok := m.get("oidc"); ok {
		if f.OIDC = d.oidc(n, p, m.keyLine("oidc")); f.OIDC == nil {
			return nil
		}
	}
	if n, p, ok := m.get("saml"); ok {
		if f.SAML = d.saml(n, p, m.keyLine("saml")); f.SAML == nil {
			return nil
		}
	}
	return f
}

func (d *decoder) oidc(n *yaml.Node, path string, line int) *OIDCAuthentication {
	m, ok := d.mapping(n, path, line, "issuer", "client_id", "client_secret_file", "ca_file", "scopes",
		"username_claim", "groups_claim")
	if !ok {
		return nil
	}
	o := &OIDCAuthentication{
		Scopes:        slices.Clone(defaultOIDCScopes),
		UsernameClaim: DefaultOIDCUsernameClaim,
		GroupsClaim:   DefaultOIDCGroupsClaim,
	}
	good := true
	check := func(ok bool) { good = good && ok }
	if n, p, ok := d.required(m, "issuer", " (the provider's issuer URL, such as https://idp.example.com/realms/corp)"); ok {
		s, ok := d.nonEmpty(n, p)
		if ok {
			if err := checkIssuer(s); err != nil {
				d.errorf(p, n.Line, "%v", err)
				ok = false
			}
		}
		o.Issuer = s
		check(ok)
	} else {
		good = false
	}
	if n, p, ok := d.required(m, "client_id", " (cvpn's client ID at the provider)"); ok {
		s, ok := d.nonEmpty(n, p)
		switch {
		case !ok:
		case len(s) > maxClientIDBytes:
			d.errorf(p, n.Line, "is %d bytes long; at most %d are allowed", len(s), maxClientIDBytes)
			ok = false
		case strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r > '~' }):
			// RFC 6749 appendix A.1: client_id = *VSCHAR (%x20-7E).
			d.errorf(p, n.Line, "%q holds characters other than printable ASCII, which a client ID cannot (RFC 6749 appendix A.1)", s)
			ok = false
		}
		o.ClientID = s
		check(ok)
	} else {
		good = false
	}
	if n, p, ok := m.get("client_secret_file"); ok {
		o.ClientSecretFile, ok = d.secretFile(n, p, "the OIDC client secret")
		check(ok)
	}
	if n, p, ok := m.get("ca_file"); ok {
		o.CAFile, ok = d.fileRef(n, p)
		check(ok)
	}
	if n, p, ok := m.get("scopes"); ok {
		o.Scopes, ok = d.scopes(n, p)
		check(ok)
	}
	if n, p, ok := m.get("username_claim"); ok {
		o.UsernameClaim, ok = d.claimName(n, p)
		check(ok)
	}
	if n, p, ok := m.get("groups_claim"); ok {
		o.GroupsClaim, ok = d.claimName(n, p)
		check(ok)
	}
	if !good {
		return nil
	}
	return o
}

// checkIssuer allows an https:// URL with a host, no user information,
// query or fragment (OpenID Connect Discovery 1.0 section 2: the issuer is
// "a case-sensitive URL using the https scheme that contains scheme, host,
// and optionally, port number and path components and no query or fragment
// components"), written in printable ASCII.
func checkIssuer(s string) error {
	if err := checkURLText(s); err != nil {
		return err
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL like https://idp.example.com/realms/corp", s)
	}
	switch {
	case !strings.HasPrefix(s, "https://"):
		return fmt.Errorf("%q is not an https:// URL (an OpenID Connect issuer is https, written in lower case as the provider's ID tokens name it)", s)
	case u.Opaque != "" || u.Hostname() == "":
		return fmt.Errorf("%q names no host", s)
	case u.User != nil:
		return fmt.Errorf("%q holds user information; put the client's credentials in client_id and client_secret_file", s)
	case strings.ContainsAny(s, "?#"):
		return fmt.Errorf("%q has a query or fragment, which an issuer cannot have (OpenID Connect Discovery section 2)", s)
	}
	return checkURLPort(s, u)
}

// checkURLText refuses a URL longer than maxURLBytes or holding anything
// but printable ASCII (no spaces, no control characters).
func checkURLText(s string) error {
	if len(s) > maxURLBytes {
		return fmt.Errorf("is %d bytes long; at most %d are allowed", len(s), maxURLBytes)
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r > '~' }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		return fmt.Errorf("%q holds %U at byte %d; a URL here is printable ASCII without spaces (percent-encode the rest)", s, r, i)
	}
	return nil
}

func checkURLPort(s string, u *url.URL) error {
	if p := u.Port(); p != "" {
		if port, err := strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
			return fmt.Errorf("%q: port %s is outside 1..65535", s, p)
		}
	}
	return nil
}

// scopes reads authentication.federated.oidc.scopes: scope tokens (RFC
// 6749 section 3.3), no duplicates, openid among them.
func (d *decoder) scopes(n *yaml.Node, path string) ([]string, bool) {
	items, ok := d.nonEmptyList(n, path)
	if !ok {
		return nil, false
	}
	if len(items) > maxScopes {
		d.errorf(path, n.Line, "lists %d scopes; at most %d are allowed", len(items), maxScopes)
		return nil, false
	}
	var out []string
	first := map[string]string{}
	good := true
	for i, item := range items {
		ipath := index(path, i)
		s, ok := d.nonEmpty(item, ipath)
		switch {
		case !ok:
		case len(s) > maxScopeBytes:
			d.errorf(ipath, item.Line, "is %d bytes long; at most %d are allowed", len(s), maxScopeBytes)
			ok = false
		case strings.ContainsFunc(s, func(r rune) bool { return r < '!' || r > '~' || r == '"' || r == '\\' }):
			// scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
			d.errorf(ipath, item.Line, "%q is not a scope token: printable ASCII without spaces, '\"' or '\\' (RFC 6749 section 3.3); list each scope on its own", s)
			ok = false
		case first[s] != "":
			d.errorf(ipath, item.Line, "%q is already listed at %s", s, first[s])
			ok = false
		default:
			first[s] = ipath
			out = append(out, s)
		}
		good = good && ok
	}
	if !good {
		return nil, false
	}
	if !slices.Contains(out, OIDCScopeOpenID) {
		d.errorf(path, n.Line, "must contain %s: without it the provider sends no ID token, and the login is not OpenID Connect", OIDCScopeOpenID)
		return nil, false
	}
	return out, true
}

// claimName checks the name of an ID token claim or a SAML attribute: up to
// 256 bytes of UTF-8 without white space or control characters. Names may
// be URIs (http://schemas.xmlsoap.org/claims/Group).
func (d *decoder) claimName(n *yaml.Node, path string) (string, bool) {
	s, ok := d.nonEmpty(n, path)
	switch {
	case !ok:
		return "", false
	case len(s) > maxClaimBytes:
		d.errorf(path, n.Line, "is %d bytes long; at most %d are allowed", len(s), maxClaimBytes)
		return "", false
	case !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		d.errorf(path, n.Line, "%q holds white space, control characters or invalid UTF-8", s)
		return "", false
	}
	return s, true
}

func (d *decoder) saml(n *yaml.Node, path string, line int) *SAMLAuthentication {
	m, ok := d.mapping(n, path, line, "idp_metadata_file", "groups_attribute")
	if !ok {
		return nil
	}
	s := &SAMLAuthentication{GroupsAttribute: DefaultSAMLGroupsAttribute}
	good := true
	if n, p, ok := d.required(m, "idp_metadata_file", " (the identity provider's SAML metadata, an XML file it publishes)"); ok {
		if f, ok := d.fileRef(n, p); ok {
			if err := checkIdPMetadataFile(f); err != nil {
				d.errorf(p, n.Line, "%s: %v", f, err)
				good = false
			} else {
				s.IdPMetadataFile = f
			}
		} else {
			good = false
		}
	} else {
		good = false
	}
	if n, p, ok := m.get("groups_attribute"); ok {
		s.GroupsAttribute, ok = d.claimName(n, p)
		good = good && ok
	}
	if !good {
		return nil
	}
	return s
}

// The few elements of SAML metadata that checkIdPMetadata looks at. Names
// are namespace-qualified, as package auth/saml (crewjam/saml) reads them.
type (
	mdRoot struct {
		XMLName  xml.Name
		EntityID string     `xml:"entityID,attr"`
		IDPSSO   []mdIDPSSO `xml:"urn:oasis:names:tc:SAML:2.0:metadata IDPSSODescriptor"`
		// Entities are the entities of an EntitiesDescriptor.
		Entities []mdRoot `xml:"urn:oasis:names:tc:SAML:2.0:metadata EntityDescriptor"`
	}
	mdIDPSSO struct {
		Keys []mdKeyDescriptor `xml:"urn:oasis:names:tc:SAML:2.0:metadata KeyDescriptor"`
		SSO  []mdEndpoint      `xml:"urn:oasis:names:tc:SAML:2.0:metadata SingleSignOnService"`
	}
	mdEndpoint struct {
		Binding  string `xml:"Binding,attr"`
		Location string `xml:"Location,attr"`
	}
	mdKeyDescriptor struct {
		Use     string `xml:"use,attr"`
		KeyInfo struct {
			X509Data []struct {
				Certificates []string `xml:"http://www.w3.org/2000/09/xmldsig# X509Certificate"`
			} `xml:"http://www.w3.org/2000/09/xmldsig# X509Data"`
		} `xml:"http://www.w3.org/2000/09/xmldsig# KeyInfo"`
	}
)

// checkIdPMetadataFile reads at most maxMetadataBytes of the file and
// checks it with CheckIdPMetadata.
func checkIdPMetadataFile(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return unwrapPathError(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMetadataBytes+1))
	if err != nil {
		return unwrapPathError(err)
	}
	if len(data) > maxMetadataBytes {
		return fmt.Errorf("is larger than %d bytes, which no IdP's metadata is", maxMetadataBytes)
	}
	return CheckIdPMetadata(data)
}

// CheckIdPMetadata applies the rule of
// authentication.federated.saml.idp_metadata_file to a metadata document:
// XML whose root is a SAML metadata EntityDescriptor (or an
// EntitiesDescriptor holding one) with an entityID and an
// IDPSSODescriptor that has at least one signing certificate (a
// KeyDescriptor of use "signing" or of no use, whose X509Certificate is a
// base64 DER certificate) and a SingleSignOnService with the HTTP-Redirect
// binding, where cvpn sends its requests. It is a structural check: package
// auth/saml verifies signatures with these certificates.
func CheckIdPMetadata(data []byte) error {
	var root mdRoot
	if err := xml.Unmarshal(data, &root); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("is not XML: it holds no element (the IdP's metadata is an XML document, not a certificate)")
		}
		return fmt.Errorf("is not XML: %v", err)
	}
	ent := &root
	switch root.XMLName {
	case xml.Name{Space: samlMetadataNS, Local: "EntityDescriptor"}:
	case xml.Name{Space: samlMetadataNS, Local: "EntitiesDescriptor"}:
		ent = nil
		for i := range root.Entities {
			if len(root.Entities[i].IDPSSO) > 0 {
				ent = &root.Entities[i]
				break
			}
		}
		if ent == nil {
			return errors.New("the EntitiesDescriptor holds no EntityDescriptor with an IDPSSODescriptor: no identity provider is described")
		}
	default:
		return fmt.Errorf("its root element is <%s> (namespace %q), not a SAML metadata EntityDescriptor (namespace %q)",
			root.XMLName.Local, root.XMLName.Space, samlMetadataNS)
	}
	if strings.TrimSpace(ent.EntityID) == "" {
		return errors.New("the EntityDescriptor has no entityID")
	}
	if len(ent.IDPSSO) == 0 {
		return fmt.Errorf("the EntityDescriptor of %q has no IDPSSODescriptor: it does not describe an identity provider (a service provider's metadata?)", ent.EntityID)
	}
	var signing, redirect int
	for _, sso := range ent.IDPSSO {
		for _, kd := range sso.Keys {
			if kd.Use != "" && kd.Use != "signing" {
				continue
			}
			for _, xd := range kd.KeyInfo.X509Data {
				for _, c := range xd.Certificates {
					der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(c), ""))
					if err != nil {
						return fmt.Errorf("a signing certificate of %q is not base64: %v", ent.EntityID, err)
					}
					if _, err := x509.ParseCertificate(der); err != nil {
						return fmt.Errorf("a signing certificate of %q is not a certificate: %v", ent.EntityID, err)
					}
					signing++
				}
			}
		}
		for _, ep := range sso.SSO {
			if ep.Binding == samlHTTPRedirectBinding && ep.Location != "" {
				redirect++
			}
		}
	}
	if signing == 0 {
		return fmt.Errorf("the IDPSSODescriptor of %q has no signing certificate (a KeyDescriptor use=\"signing\" with an X509Certificate): cvpn could not check the provider's signatures", ent.EntityID)
	}
	if redirect == 0 {
		return fmt.Errorf("the IDPSSODescriptor of %q has no SingleSignOnService with the HTTP-Redirect binding (%s), where cvpn sends its login requests", ent.EntityID, samlHTTPRedirectBinding)
	}
	return nil
}

// portal walks portal and returns where its listen address came from (the
// key, or portal itself for the default), for the rules against other
// sockets; placed{} when the portal is not valid.
func (d *decoder) portal(n *yaml.Node, path string, line int, ep *Endpoint) placed {
	m, ok := d.mapping(n, path, line, "listen_address", "public_url", "cert_file", "key_file")
	if !ok {
		return placed{}
	}
	p := &Portal{ListenAddress: DefaultPortalListenAddress}
	listen := placed{path, line}
	good := true
	if n, kp, ok := m.get("listen_address"); ok {
		if a, ok := d.addrPort(n, kp, "0.0.0.0:8443"); ok {
			p.ListenAddress, listen = a, placed{kp, n.Line}
		} else {
			good = false
		}
	}
	if n, kp, ok := d.required(m, "public_url", " (the portal's https:// address as users reach it, such as https://vpn.example.com)"); ok {
		s, ok := d.nonEmpty(n, kp)
		if ok {
			if err := checkPortalURL(s); err != nil {
				d.errorf(kp, n.Line, "%v", err)
				ok = false
			}
		}
		p.PublicURL = s
		good = good && ok
	} else {
		good = false
	}
	_, certPath, hasCert := m.get("cert_file")
	_, keyPath, hasKey := m.get("key_file")
	switch {
	case hasCert && !hasKey:
		d.errorf(keyPath, m.keyLine("key_file"), "required with cert_file (the portal certificate's private key)")
		good = false
	case hasKey && !hasCert:
		d.errorf(certPath, m.keyLine("cert_file"), "required with key_file (leave both out to serve the server certificate)")
		good = false
	}
	if n, kp, ok := m.get("cert_file"); ok {
		p.CertFile, ok = d.fileRef(n, kp)
		good = good && ok
	}
	if n, kp, ok := m.get("key_file"); ok {
		p.KeyFile, ok = d.fileRef(n, kp)
		good = good && ok
	}
	if !good {
		return placed{}
	}
	ep.Portal = p
	return listen
}

// checkPortalURL allows https://host[:port] with nothing after but "/": the
// portal makes its links (login codes, the OIDC redirect, the SAML service
// provider's URLs) by appending paths to it.
func checkPortalURL(s string) error {
	if err := checkURLText(s); err != nil {
		return err
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL like https://vpn.example.com", s)
	}
	switch {
	case u.Scheme != "https":
		return fmt.Errorf("%q is not an https:// URL (the portal takes passwords and hands out profiles)", s)
	case u.Opaque != "" || u.Hostname() == "":
		return fmt.Errorf("%q names no host", s)
	case u.User != nil:
		return fmt.Errorf("%q holds user information", s)
	case (u.Path != "" && u.Path != "/") || strings.ContainsAny(s, "?#"):
		return fmt.Errorf("%q has a path, query or fragment; give only https://host[:port] (the portal serves from its root)", s)
	}
	if err := CheckRemoteHostname(u.Hostname()); err != nil {
		return fmt.Errorf("%q: %v", s, err)
	}
	return checkURLPort(s, u)
}

// addrPort reads an IP:port with a port in 1..65535; example shows the
// form in the message.
func (d *decoder) addrPort(n *yaml.Node, path, example string) (netip.AddrPort, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return netip.AddrPort{}, false
	}
	a, err := netip.ParseAddrPort(s)
	if err != nil {
		d.errorf(path, n.Line, "%q is not an IP:port like %s", s, example)
		return netip.AddrPort{}, false
	}
	if a.Port() == 0 {
		d.errorf(path, n.Line, "port 0 is outside 1..65535")
		return netip.AddrPort{}, false
	}
	return a, true
}

// sameSocket reports whether two TCP sockets would collide: the same port
// on the same address, or on any address when either is unspecified.
func sameSocket(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && (a.Addr() == b.Addr() || a.Addr().IsUnspecified() || b.Addr().IsUnspecified())
}
