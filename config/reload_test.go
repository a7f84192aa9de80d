package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// goodFile is testdata/good.yaml, which sets every key.
func goodFile(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// edit applies old, new, ... replacements (each once) to doc; each old must be in it.
func edit(t *testing.T, doc string, oldnew ...string) string {
	t.Helper()
	for i := 0; i < len(oldnew); i += 2 {
		if !strings.Contains(doc, oldnew[i]) {
			t.Fatalf("the file lacks %q", oldnew[i])
		}
		doc = strings.Replace(doc, oldnew[i], oldnew[i+1], 1)
	}
	return doc
}

// goodDirectory is the directory and MFA part of good.yaml, which federated authentication
// replaces (the two exclude each other).
const goodDirectory = `  directory:
    url: [ldaps://dc1.example.com, "ldaps://dc2.example.com:3269"]
    ca_file: pki/ca.crt
    bind_dn: "cn=cvpn,ou=services,dc=example,dc=com"
    bind_password_file: bind-password
    user_base_dn: "ou=people,dc=example,dc=com"
    user_filter: "(&(objectClass=person)(sAMAccountName={username}))"
    nested_groups: true
    timeout_seconds: 5
  mfa:
    totp:
      issuer: Example VPN
    challenge: dynamic
    challenge_text: "Code from your app:"
`

// goodOIDC and goodSAML set every key of the two federated logins.
const (
	goodOIDC = `  federated:
    oidc:
      issuer: https://idp.example.com/realms/corp
      client_id: cvpn
      client_secret_file: oidc-client-secret
      ca_file: pki/ca.crt
      scopes: [openid, profile, groups]
      username_claim: email
      groups_claim: roles
`
	goodSAML = `  federated:
    saml:
      idp_metadata_file: idp-metadata.xml
      groups_attribute: groups
`
)

func parseDoc(t *testing.T, doc string) *Endpoint {
	t.Helper()
	ep, err := Parse([]byte(doc), "testdata")
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	return ep
}

// TestDiff covers every key class: each key that a reload applies, the keys that need a restart,
// lists compared in order and the listener set compared as a set.
func TestDiff(t *testing.T) {
	const tlsAuth = "  tls_crypt_key_file: pki/tc.key\n"
	for _, tc := range []struct {
		name    string
		running []string // edits of good.yaml for the running file
		next    []string // edits of the running file for the next one
		changed []string
		refused []string
	}{
		{name: "same file"},
		{name: "description", next: []string{`description: "dev VPN"`, `description: "ops VPN"`}, changed: []string{"description"}},
		{name: "remote_hostname", next: []string{"remote_hostname: vpn.example.com", "remote_hostname: vpn2.example.com"}, changed: []string{"remote_hostname"}},
		{name: "vpc_cidr_blocks", next: []string{"[10.0.0.0/16, 172.16.0.0/12]", "[10.0.0.0/16, 172.16.0.0/12, 192.168.0.0/16]"}, changed: []string{"vpc_cidr_blocks"}},
		{name: "listen_address", next: []string{"listen_address: 192.0.2.1", "listen_address: 192.0.2.2"}, changed: []string{"listen_address"}},
		{name: "transport added", next: []string{"  - {protocol: tcp, port: 443}\n", "  - {protocol: tcp, port: 443}\n  - {protocol: udp, port: 443}\n"},
			changed: []string{"transport"}},
		{name: "transport removed", next: []string{"  - {protocol: tcp, port: 443}\n", ""}, changed: []string{"transport"}},
		{name: "transport port", next: []string{"{protocol: tcp, port: 443}", "{protocol: tcp, port: 8443}"}, changed: []string{"transport"}},
		{name: "transport reordered is no change", next: []string{
			"  - {protocol: udp, port: 1194}\n  - {protocol: tcp, port: 443}\n", "  - {protocol: tcp, port: 443}\n  - {protocol: udp, port: 1194}\n"}},
		{name: "server certificate", next: []string{"cert_file: pki/server.crt", "cert_file: pki/ca.crt"}, changed: []string{"server_certificate.cert_file"}},
		{name: "server key", next: []string{"key_file: pki/server.key", "key_file: pki/tc.key"}, changed: []string{"server_certificate.key_file"}},
		{name: "tls-crypt key", next: []string{"tls_crypt_key_file: pki/tc.key", "tls_crypt_key_file: pki/ta.key"}, changed: []string{"control_channel.tls_crypt_key_file"}},
		{name: "tls-crypt to tls-auth", next: []string{tlsAuth, "  tls_auth_key_file: pki/ta.key\n"},
			changed: []string{"control_channel.tls_crypt_key_file", "control_channel.tls_auth_key_file"}},
		{name: "tls-auth direction", running: []string{tlsAuth, "  tls_auth_key_file: pki/ta.key\n"},
			next:    []string{"  tls_auth_key_file: pki/ta.key\n", "  tls_auth_key_file: pki/ta.key\n  tls_auth_key_direction: 1\n"},
			changed: []string{"control_channel.tls_auth_key_direction"}},
		{name: "tls-auth digest", running: []string{tlsAuth, "  tls_auth_key_file: pki/ta.key\n"},
			next:    []string{"  tls_auth_key_file: pki/ta.key\n", "  tls_auth_key_file: pki/ta.key\n  tls_auth_digest: sha256\n"},
			changed: []string{"control_channel.tls_auth_digest"}},
		{name: "tls-crypt-v2 server key", next: []string{"tls_crypt_v2_server_key_file: pki/tc-v2.key", "tls_crypt_v2_server_key_file: pki/ta.key"},
			changed: []string{"control_channel.tls_crypt_v2_server_key_file"}},
		{name: "client root CA", next: []string{"client_root_ca_file: pki/ca.crt", "client_root_ca_file: pki/server.crt"},
			changed: []string{"authentication.certificate.client_root_ca_file"}},
		{name: "CRL removed", next: []string{"    crl_file: pki/crl.pem\n", ""}, changed: []string{"authentication.certificate.crl_file"}},
		{name: "data_ciphers order", next: []string{"[CHACHA20-POLY1305, aes-256-gcm]", "[AES-256-GCM, CHACHA20-POLY1305]"}, changed: []string{"data_ciphers"}},
		{name: "data_ciphers spelling is no change", next: []string{"[CHACHA20-POLY1305, aes-256-gcm]", "[chacha20-poly1305, AES-256-GCM]"}},
		{name: "data_ciphers one", next: []string{"[CHACHA20-POLY1305, aes-256-gcm]", "[CHACHA20-POLY1305]"}, changed: []string{"data_ciphers"}},
		{name: "target interface", next: []string{"interface: eth1", "interface: eth2"}, refused: []string{"target_network.interface"}},
		{name: "SNAT address", next: []string{"snat_address: 10.0.1.2", "snat_address: 10.0.1.3"}, refused: []string{"target_network.snat_address"}},
		{name: "tun name", next: []string{"name: vpn0", "name: vpn1"}, refused: []string{"tun.name"}},
		{name: "tun mtu", next: []string{"mtu: 1400", "mtu: 1500"}, refused: []string{"tun.mtu"}},
		{name: "client CIDR", next: []string{"client_cidr_block: 10.2.0.0/22", "client_cidr_block: 10.4.0.0/22"}, refused: []string{"client_cidr_block"}},
		{name: "nat table", next: []string{"max_mappings: 262144", "max_mappings: 131072"}, refused: []string{"nat.max_mappings"}},
		{name: "nat quota", next: []string{"max_mappings_per_client: 1000", "max_mappings_per_client: 500"}, refused: []string{"nat.max_mappings_per_client"}},
		{name: "nat table with the default quota", running: []string{"  max_mappings_per_client: 1000\n", ""},
			next: []string{"max_mappings: 262144", "max_mappings: 131072"}, refused: []string{"nat.max_mappings", "nat.max_mappings_per_client"}},
		{name: "nat quota made explicit at its default", running: []string{"  max_mappings_per_client: 1000\n", ""},
			next: []string{"max_mappings: 262144\n", "max_mappings: 262144\n  max_mappings_per_client: 256\n"}},
		{name: "routes", next: []string{"description: app subnet", "description: the app subnet"}, changed: []string{"routes"}},
		{name: "authorization_rules", next: []string{"    access_group_id: dev\n", "    access_group_id: ops\n"}, changed: []string{"authorization_rules"}},
		{name: "split_tunnel", next: []string{"split_tunnel: false", "split_tunnel: true"}, changed: []string{"split_tunnel"}},
		{name: "allow_host_access", next: []string{"split_tunnel: false", "split_tunnel: false\nallow_host_access: true"}, changed: []string{"allow_host_access"}},
		{name: "allow_host_access false is the default", next: []string{"split_tunnel: false", "split_tunnel: false\nallow_host_access: false"}},
		{name: "dns_servers", next: []string{"[10.0.0.2, 10.0.0.3]", "[10.0.0.2]"}, changed: []string{"dns_servers"}},
		{name: "session_timeout_hours", next: []string{"session_timeout_hours: 12", "session_timeout_hours: 8"}, changed: []string{"session_timeout_hours"}},
		{name: "client_login_banner", next: []string{"Sessions are logged.", "Sessions are recorded."}, changed: []string{"client_login_banner"}},
		{name: "bandwidth_limit_mbps", next: []string{"bandwidth_limit_mbps: 25.5", "bandwidth_limit_mbps: 30"}, changed: []string{"bandwidth_limit_mbps"}},
		{name: "bandwidth_limits", next: []string{"mbps: 100", "mbps: 50"}, changed: []string{"bandwidth_limits"}},
		{name: "reneg_seconds", next: []string{"reneg_seconds: 0", "reneg_seconds: 60"}, changed: []string{"reneg_seconds"}},
		{name: "keepalive ping", next: []string{"ping_seconds: 5", "ping_seconds: 6"}, changed: []string{"keepalive.ping_seconds"}},
		{name: "keepalive ping restart", next: []string{"ping_restart_seconds: 30", "ping_restart_seconds: 40"}, changed: []string{"keepalive.ping_restart_seconds"}},
		{name: "connection_log", next: []string{"enabled: true", "enabled: false", "file: connections.log", "file: other.log"},
			changed: []string{"connection_log.enabled", "connection_log.file"}},
		{name: "admin socket", next: []string{"socket: admin.sock", "socket: other.sock"}, refused: []string{"admin.socket"}},
		{name: "directory url", next: []string{"ldaps://dc2.example.com:3269", "ldaps://dc3.example.com"}, changed: []string{"authentication.directory.url"}},
		{name: "directory user filter", next: []string{"(sAMAccountName={username})", "(userPrincipalName={username})"},
			changed: []string{"authentication.directory.user_filter"}},
		{name: "directory group search", next: []string{"    nested_groups: true\n", "    group_base_dn: ou=groups,dc=example,dc=com\n"},
			changed: []string{"authentication.directory.group_attribute", "authentication.directory.nested_groups",
				"authentication.directory.group_base_dn", "authentication.directory.group_filter"}},
		{name: "mfa challenge", next: []string{"challenge: dynamic", "challenge: static"}, changed: []string{"authentication.mfa.challenge"}},
		{name: "mfa removed", next: []string{"  mfa:\n    totp:\n      issuer: Example VPN\n    challenge: dynamic\n    challenge_text: \"Code from your app:\"\n", ""},
			changed: []string{"authentication.mfa.totp.issuer", "authentication.mfa.challenge", "authentication.mfa.challenge_text"}},
		{name: "handler timeout", next: []string{"\n  timeout_seconds: 5\n", "\n  timeout_seconds: 6\n"}, changed: []string{"client_connect_handler.timeout_seconds"}},
		{name: "handler to url", next: []string{"command: [/bin/sh, -c, \"exit 0\"]", "url: https://127.0.0.1:8443/connect"},
			changed: []string{"client_connect_handler.command", "client_connect_handler.url"}},
		{name: "state_dir", next: []string{"state_dir: state", "state_dir: other-state"}, refused: []string{"state_dir"}},
		{name: "directory to oidc", next: []string{goodDirectory, goodOIDC},
			changed: []string{"authentication.directory.url", "authentication.directory.ca_file", "authentication.directory.bind_dn",
				"authentication.directory.bind_password_file", "authentication.directory.user_base_dn", "authentication.directory.user_filter",
				"authentication.directory.group_attribute", "authentication.directory.nested_groups", "authentication.directory.timeout_seconds",
				"authentication.mfa.totp.issuer", "authentication.mfa.challenge", "authentication.mfa.challenge_text",
				"authentication.federated.oidc.issuer", "authentication.federated.oidc.client_id", "authentication.federated.oidc.client_secret_file",
				"authentication.federated.oidc.ca_file", "authentication.federated.oidc.scopes", "authentication.federated.oidc.username_claim",
				"authentication.federated.oidc.groups_claim"}},
		{name: "oidc issuer", running: []string{goodDirectory, goodOIDC}, next: []string{"realms/corp", "realms/ops"},
			changed: []string{"authentication.federated.oidc.issuer"}},
		{name: "oidc scopes order", running: []string{goodDirectory, goodOIDC}, next: []string{"[openid, profile, groups]", "[openid, groups, profile]"},
			changed: []string{"authentication.federated.oidc.scopes"}},
		{name: "oidc default claims", running: []string{goodDirectory, goodOIDC},
			next:    []string{"      username_claim: email\n      groups_claim: roles\n", ""},
			changed: []string{"authentication.federated.oidc.username_claim", "authentication.federated.oidc.groups_claim"}},
		{name: "oidc to saml", running: []string{goodDirectory, goodOIDC}, next: []string{goodOIDC, goodSAML},
			changed: []string{"authentication.federated.oidc.issuer", "authentication.federated.oidc.client_id", "authentication.federated.oidc.client_secret_file",
				"authentication.federated.oidc.ca_file", "authentication.federated.oidc.scopes", "authentication.federated.oidc.username_claim",
				"authentication.federated.oidc.groups_claim", "authentication.federated.saml.idp_metadata_file", "authentication.federated.saml.groups_attribute"}},
		{name: "saml groups attribute", running: []string{goodDirectory, goodSAML}, next: []string{"groups_attribute: groups", "groups_attribute: memberOf"},
			changed: []string{"authentication.federated.saml.groups_attribute"}},
		{name: "portal public_url", next: []string{"https://vpn.example.com:9443/", "https://vpn.example.com:9443"}, refused: []string{"portal.public_url"}},
		{name: "portal listen_address", next: []string{"192.0.2.1:9443", "192.0.2.1:10443"}, refused: []string{"portal.listen_address"}},
		{name: "portal certificate", next: []string{":9443/\n  cert_file: pki/server.crt\n  key_file: pki/server.key\n", ":9443/\n"},
			refused: []string{"portal.cert_file", "portal.key_file"}},
		{name: "portal removed", next: []string{"portal:\n  listen_address: 192.0.2.1:9443\n  public_url: https://vpn.example.com:9443/\n  cert_file: pki/server.crt\n  key_file: pki/server.key\n", ""},
			refused: []string{"portal.listen_address", "portal.public_url", "portal.cert_file", "portal.key_file"}},
		{name: "live and refused at once", next: []string{"cert_file: pki/server.crt", "cert_file: pki/ca.crt", "name: vpn0", "name: vpn1",
			"[CHACHA20-POLY1305, aes-256-gcm]", "[CHACHA20-POLY1305]"},
			changed: []string{"server_certificate.cert_file", "data_ciphers"}, refused: []string{"tun.name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runningDoc := edit(t, goodFile(t), tc.running...)
			running, next := parseDoc(t, runningDoc), parseDoc(t, edit(t, runningDoc, tc.next...))
			changed, refused := Diff(running, next, nil)
			if !slices.Equal(changed, tc.changed) || !slices.Equal(refused, tc.refused) {
				t.Errorf("Diff = changed %q refused %q, want changed %q refused %q", changed, refused, tc.changed, tc.refused)
			}
			err := CheckReload(running, next)
			if (err != nil) != (len(tc.refused) > 0) {
				t.Errorf("CheckReload = %v, want an error exactly when a key is refused (%q)", err, tc.refused)
			}
		})
	}
}

// TestDiffFileContent: a file renewed in place (same path) is a change of its key; Diff asks
// only about file keys whose path stayed.
func TestDiffFileContent(t *testing.T) {
	doc := goodFile(t)
	running := parseDoc(t, doc)
	next := parseDoc(t, edit(t, doc, "tls_crypt_key_file: pki/tc.key", "tls_crypt_key_file: pki/ta.key"))
	var asked []string
	changed, refused := Diff(running, next, func(key string) bool {
		asked = append(asked, key)
		return key == "server_certificate.cert_file" || key == "authentication.certificate.crl_file"
	})
	// Not the keys whose file is absent from both (tls_auth_key_file, the federated files,
	// client_connect_handler.ca_file): there is no content to compare.
	wantAsked := []string{"server_certificate.cert_file", "server_certificate.key_file",
		"control_channel.tls_crypt_v2_server_key_file", "authentication.certificate.client_root_ca_file", "authentication.certificate.crl_file",
		"authentication.directory.ca_file", "authentication.directory.bind_password_file"}
	if !slices.Equal(asked, wantAsked) {
		t.Errorf("asked about %q, want %q", asked, wantAsked)
	}
	want := []string{"server_certificate.cert_file", "control_channel.tls_crypt_key_file", "authentication.certificate.crl_file"}
	if !slices.Equal(changed, want) || refused != nil {
		t.Errorf("Diff = changed %q refused %q, want changed %q and nothing refused", changed, refused, want)
	}

	// The federated files are asked about when they are named.
	for _, block := range []string{goodOIDC, goodSAML} {
		doc := edit(t, goodFile(t), goodDirectory, block)
		asked = nil
		changed, _ := Diff(parseDoc(t, doc), parseDoc(t, doc), func(key string) bool {
			asked = append(asked, key)
			return strings.HasPrefix(key, "authentication.federated.")
		})
		var fed []string
		for _, k := range asked {
			if strings.HasPrefix(k, "authentication.federated.") {
				fed = append(fed, k)
			}
		}
		want := []string{"authentication.federated.oidc.client_secret_file", "authentication.federated.oidc.ca_file"}
		if block == goodSAML {
			want = []string{"authentication.federated.saml.idp_metadata_file"}
		}
		if !slices.Equal(fed, want) || !slices.Equal(changed, want) {
			t.Errorf("federated files asked about %q and changed %q, want %q", fed, changed, want)
		}
	}
}

// TestDiffCoversEveryField changes each field of Endpoint in turn and checks that Diff reports
// exactly one key for it, and a key of its own: a field added to Endpoint without a reload rule
// fails here.
func TestDiffCoversEveryField(t *testing.T) {
	running := parseDoc(t, goodFile(t))
	// good.yaml has directory users; the federated keys, which exclude them, come from its
	// federated variants. No file has both OIDC and SAML, but the walk needs every field set.
	running.Authentication.Federated = &FederatedAuthentication{
		OIDC: parseDoc(t, edit(t, goodFile(t), goodDirectory, goodOIDC)).Authentication.Federated.OIDC,
		SAML: parseDoc(t, edit(t, goodFile(t), goodDirectory, goodSAML)).Authentication.Federated.SAML,
	}
	// A cluster section, with its own SNAT address, is in cluster_test.go's node file.
	running.Cluster = parseDoc(t, base+nodeA).Cluster
	running.Cluster.SNATIPv6Address = netip.MustParseAddr("fd00::11")
	leaf := func(ty reflect.Type) bool {
		switch ty {
		case reflect.TypeFor[netip.Addr](), reflect.TypeFor[netip.Prefix](), reflect.TypeFor[netip.AddrPort](), reflect.TypeFor[time.Duration]():
			return true
		}
		return ty.Kind() != reflect.Struct && ty.Kind() != reflect.Pointer
	}
	// walk calls set with a copy of v in which the leaf field name (and only it) has changed.
	var walk func(v reflect.Value, name string, set func(name string, nv reflect.Value))
	walk = func(v reflect.Value, name string, set func(name string, nv reflect.Value)) {
		switch {
		case leaf(v.Type()):
			set(name, changedValue(t, v))
		case v.Kind() == reflect.Pointer:
			walk(v.Elem(), name, func(name string, nv reflect.Value) {
				p := reflect.New(v.Type().Elem())
				p.Elem().Set(nv)
				set(name, p)
			})
		default:
			for i := range v.NumField() {
				f := v.Type().Field(i)
				if !f.IsExported() {
					continue
				}
				walk(v.Field(i), name+"."+f.Name, func(name string, nv reflect.Value) {
					cp := reflect.New(v.Type()).Elem()
					cp.Set(v)
					cp.Field(i).Set(nv)
					set(name, cp)
				})
			}
		}
	}
	owner := map[string]string{} // key -> the field that changed it
	walk(reflect.ValueOf(*running), "Endpoint", func(field string, nv reflect.Value) {
		next := nv.Interface().(Endpoint)
		changed, refused := Diff(running, &next, nil)
		keys := append(changed, refused...)
		if len(keys) != 1 {
			t.Errorf("%s changed: Diff reports %q, want exactly one key", field, keys)
			return
		}
		if prev, ok := owner[keys[0]]; ok {
			t.Errorf("%s and %s both change key %s", prev, field, keys[0])
		}
		owner[keys[0]] = field
	})
	if len(owner) != len(reloadKeys) {
		t.Errorf("the fields of Endpoint change %d keys, reloadKeys has %d rules", len(owner), len(reloadKeys))
	}
}

// changedValue returns a value of v's type that differs from v.
func changedValue(t *testing.T, v reflect.Value) reflect.Value {
	t.Helper()
	nv := reflect.New(v.Type()).Elem()
	switch x := v.Interface().(type) {
	case netip.Addr:
		nv.Set(reflect.ValueOf(netip.MustParseAddr("198.51.100.77")))
		if x == nv.Interface() {
			t.Fatal("changedValue: same address")
		}
		return nv
	case netip.Prefix:
		nv.Set(reflect.ValueOf(netip.MustParsePrefix("198.51.100.0/24")))
		return nv
	case netip.AddrPort:
		nv.Set(reflect.ValueOf(netip.AddrPortFrom(x.Addr(), x.Port()+1)))
		return nv
	}
	switch v.Kind() {
	case reflect.String:
		nv.SetString(v.String() + "x")
	case reflect.Bool:
		nv.SetBool(!v.Bool())
	case reflect.Int, reflect.Int64:
		nv.SetInt(v.Int() + 1)
	case reflect.Uint16:
		nv.SetUint(v.Uint() + 1)
	case reflect.Float64:
		nv.SetFloat(v.Float() + 1)
	case reflect.Slice:
		// One element more (a zero one) than v has.
		nv.Set(reflect.AppendSlice(reflect.MakeSlice(v.Type(), 0, v.Len()+1), v))
		nv.Set(reflect.Append(nv, reflect.New(v.Type().Elem()).Elem()))
	default:
		t.Fatalf("changedValue: no rule for %s", v.Type())
	}
	return nv
}

// TestCheckReload: every refused key is named with its line, both values, and that a restart is
// needed; a file that changes only live keys passes.
func TestCheckReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "endpoint.yaml")
	write := func(doc string) *Endpoint {
		t.Helper()
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		ep, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		return ep
	}
	for _, f := range []string{"server.crt", "server.key", "ca.crt"} {
		if err := os.MkdirAll(filepath.Join(dir, "pki"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "pki", f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	running := write(base)

	// Routes, DNS and the split tunnel may change.
	next := write(strings.Replace(base, "10.0.1.0/24", "10.0.2.0/24", 1) + "split_tunnel: false\ndns_servers: [10.0.0.2]\n")
	if err := CheckReload(running, next); err != nil {
		t.Errorf("CheckReload with new routes and DNS: %v", err)
	}

	next = write("description: moved\n" + strings.Replace(strings.Replace(base, "10.2.0.0/22", "10.3.0.0/22", 1),
		"snat_address: 10.0.1.2", "snat_address: 10.0.1.3", 1) + "tun:\n  name: vpn1\n  mtu: 1400\n")
	err := CheckReload(running, next)
	var got []*ValidationError
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var ve *ValidationError
		if !errors.As(e, &ve) {
			t.Fatalf("CheckReload error %v is not a *ValidationError", e)
		}
		got = append(got, ve)
	}
	want := []struct {
		path   string
		line   int
		values string
	}{
		{"client_cidr_block", 2, "(running 10.2.0.0/22, file 10.3.0.0/22)"},
		{"target_network.snat_address", 12, "(running 10.0.1.2, file 10.0.1.3)"},
		{"tun.name", 19, `(running "cvpn0", file "vpn1")`},
		{"tun.mtu", 20, "(running 1500, file 1400)"},
	}
	if len(got) != len(want) {
		t.Fatalf("CheckReload = %v, want %d problems", err, len(want))
	}
	for i, w := range want {
		ve := got[i]
		if ve.Path != w.path || ve.Line != w.line || ve.File != path {
			t.Errorf("problem %d: path %q line %d file %q, want %q line %d in %s", i, ve.Path, ve.Line, ve.File, w.path, w.line, path)
		}
		prefix := path + ":" + strconv.Itoa(w.line) + ": " + w.path + ": cannot change on a running endpoint " + w.values
		if !strings.HasPrefix(ve.Error(), prefix) || !strings.Contains(ve.Error(), "restart the endpoint to change it") {
			t.Errorf("problem %d = %q, want it to start with %q and say a restart is needed", i, ve, prefix)
		}
	}
}

func TestReloadKeys(t *testing.T) {
	live, restart := ReloadKeys()
	wantRestart := []string{"endpoint_ip_address_type", "traffic_ip_address_type", "client_cidr_block", "client_ipv6_cidr_block",
		"target_network.interface", "target_network.snat_address", "target_network.snat_ipv6_address", "tun.name", "tun.mtu",
		"nat.max_mappings", "nat.max_mappings_per_client", "admin.socket", "state_dir",
		"portal.listen_address", "portal.public_url", "portal.cert_file", "portal.key_file",
		"cluster.node_name", "cluster.public_address", "cluster.snat_address", "cluster.snat_ipv6_address",
		"cluster.lease_ttl_seconds", "cluster.address_block_size", "cluster.etcd.endpoints", "cluster.etcd.ca_file",
		"cluster.etcd.cert_file", "cluster.etcd.key_file", "cluster.etcd.prefix"}
	if !slices.Equal(restart, wantRestart) {
		t.Errorf("restart keys %q, want %q", restart, wantRestart)
	}
	if len(live)+len(restart) != len(reloadKeys) || !slices.Contains(live, "server_certificate.cert_file") || slices.Contains(live, "tun.name") {
		t.Errorf("live keys %q", live)
	}
}
