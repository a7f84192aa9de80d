package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// dirBase is a valid endpoint with directory authentication only. Lines:
//
//	1 client_cidr_block    7   interface
//	2 vpc_cidr_blocks      8   snat_address
//	3 server_certificate   9 authentication
//	4   cert_file         10   directory
//	5   key_file          11     url
//	6 target_network      12     user_base_dn
//
// Appended lines start at 13; four spaces of indentation put a key under
// directory, two under authentication.
const dirBase = `client_cidr_block: 10.2.0.0/22
vpc_cidr_blocks: [10.0.0.0/16]
server_certificate:
  cert_file: pki/server.crt
  key_file: pki/server.key
target_network:
  interface: eth1
  snat_address: 10.0.1.2
authentication:
  directory:
    url: ldaps://dc1.example.com
    user_base_dn: "ou=people,dc=example,dc=com"
`

// userFiles makes, in a temporary directory, a password file of mode 0600
// (secret), one of mode 0644 (public), an executable (prog) and a file that
// is not executable (plain).
type userFiles struct{ secret, public, prog, plain string }

func newUserFiles(t *testing.T) userFiles {
	t.Helper()
	dir := t.TempDir()
	f := userFiles{
		secret: filepath.Join(dir, "secret"), public: filepath.Join(dir, "public"),
		prog: filepath.Join(dir, "prog"), plain: filepath.Join(dir, "plain"),
	}
	for name, mode := range map[string]os.FileMode{f.secret: 0o600, f.public: 0o644, f.prog: 0o755, f.plain: 0o644} {
		if err := os.WriteFile(name, []byte("x\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(name, mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	return f
}

func TestDirectoryDefaults(t *testing.T) {
	ep, err := Parse([]byte(dirBase+"  mfa: {}\nclient_connect_handler: {url: \"https://127.0.0.1:8443/connect\"}\n"), "testdata")
	if err != nil {
		t.Fatal(err)
	}
	if ep.Authentication.Certificate != nil {
		t.Errorf("Certificate = %+v, want nil: the file has no certificate authentication", ep.Authentication.Certificate)
	}
	wantDir := &DirectoryAuthentication{
		URLs: []string{"ldaps://dc1.example.com"}, UserBaseDN: "ou=people,dc=example,dc=com",
		UserFilter: "(uid={username})", GroupAttribute: "memberOf", Timeout: 10 * time.Second,
	}
	if !reflect.DeepEqual(ep.Authentication.Directory, wantDir) {
		t.Errorf("Directory = %+v, want %+v", ep.Authentication.Directory, wantDir)
	}
	wantMFA := &MFA{TOTPIssuer: "cvpn", Challenge: ChallengeStatic, ChallengeText: "Enter your authenticator code"}
	if !reflect.DeepEqual(ep.Authentication.MFA, wantMFA) {
		t.Errorf("MFA = %+v, want %+v", ep.Authentication.MFA, wantMFA)
	}
	wantHandler := &ClientConnectHandler{URL: "https://127.0.0.1:8443/connect", Timeout: 30 * time.Second}
	if !reflect.DeepEqual(ep.ClientConnectHandler, wantHandler) {
		t.Errorf("ClientConnectHandler = %+v, want %+v", ep.ClientConnectHandler, wantHandler)
	}
}

// TestDirectoryAccepts: forms the rules must not refuse.
func TestDirectoryAccepts(t *testing.T) {
	f := newUserFiles(t)
	for _, tc := range []struct {
		name   string
		edit   [2]string // replace [0] with [1] in dirBase
		append string
		check  func(t *testing.T, ep *Endpoint)
	}{
		{name: "ldap to loopback without StartTLS", edit: [2]string{"ldaps://dc1.example.com", "ldap://127.0.0.1:3389"}},
		{name: "ldap to localhost", edit: [2]string{"ldaps://dc1.example.com", "ldap://localhost"}},
		{name: "ldap to ::1", edit: [2]string{"ldaps://dc1.example.com", "ldap://[::1]:389"}},
		{name: "ldap with StartTLS", edit: [2]string{"ldaps://dc1.example.com", "ldap://dc1.example.com"}, append: "    start_tls: true\n"},
		{name: "url list", edit: [2]string{"url: ldaps://dc1.example.com", "url: [ldaps://dc1.example.com, ldaps://dc2.example.com:636/]"},
			check: func(t *testing.T, ep *Endpoint) {
				if got := ep.Authentication.Directory.URLs; len(got) != 2 || got[1] != "ldaps://dc2.example.com:636/" {
					t.Errorf("URLs = %q", got)
				}
			}},
		{name: "bind with a private password file", append: "    bind_dn: cn=cvpn,dc=example,dc=com\n    bind_password_file: " + f.secret + "\n"},
		{name: "group search", append: "    group_base_dn: ou=groups,dc=example,dc=com\n",
			check: func(t *testing.T, ep *Endpoint) {
				d := ep.Authentication.Directory
				if d.GroupAttribute != "" || d.GroupFilter != "(member={dn})" || d.GroupBaseDN != "ou=groups,dc=example,dc=com" {
					t.Errorf("group search = attribute %q filter %q base %q, want no attribute and the default filter", d.GroupAttribute, d.GroupFilter, d.GroupBaseDN)
				}
			}},
		{name: "group search with an empty attribute", append: "    group_attribute: \"\"\n    group_base_dn: ou=groups,dc=example,dc=com\n    group_filter: \"(memberUid={username})\"\n"},
		{name: "AD filter", append: "    user_filter: \"(&(objectCategory=person)(objectClass=user)(sAMAccountName={username})(!(userAccountControl:1.2.840.113556.1.4.803:=2)))\"\n"},
		{name: "challenge text with comma and colon", append: "  mfa: {challenge: DYNAMIC, challenge_text: \"Code, please: \\\"6 digits\\\"\"}\n",
			check: func(t *testing.T, ep *Endpoint) {
				if m := ep.Authentication.MFA; m.Challenge != ChallengeDynamic || m.ChallengeText != `Code, please: "6 digits"` {
					t.Errorf("MFA = %+v", m)
				}
			}},
		{name: "handler command", append: "client_connect_handler: {command: [" + f.prog + ", --flag], timeout_seconds: 1}\n"},
		{name: "handler url with roots", append: "client_connect_handler: {url: \"https://h.example.com/c\", ca_file: pki/ca.crt}\n"},
		{name: "state dir absent is fine", append: "state_dir: /nonexistent/cvpn\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := dirBase
			if tc.edit[0] != "" {
				doc = edit(t, doc, tc.edit[0], tc.edit[1])
			}
			ep := parseDoc(t, doc+tc.append)
			if tc.check != nil {
				tc.check(t, ep)
			}
		})
	}
}

func TestDirectoryRules(t *testing.T) {
	f := newUserFiles(t)
	const dirLine, mfaLine = 10, 13
	tests := []struct {
		name   string
		edit   [2]string
		append string
		path   string
		line   int
		msg    string
	}{
		// authentication
		{name: "no method", edit: [2]string{"  directory:\n    url: ldaps://dc1.example.com\n    user_base_dn: \"ou=people,dc=example,dc=com\"\n", "  {}\n"},
			path: "authentication.certificate", line: 9, msg: "required unless directory or federated is set"},
		{name: "unknown directory key", append: "    bind_pasword_file: x\n",
			path: "authentication.directory.bind_pasword_file", line: 13, msg: `unknown key "bind_pasword_file" (did you mean "bind_password_file"?)`},

		// url
		{name: "url missing", edit: [2]string{"    url: ldaps://dc1.example.com\n", ""},
			path: "authentication.directory.url", line: dirLine, msg: "required"},
		{name: "url not ldap", edit: [2]string{"ldaps://dc1.example.com", "https://dc1.example.com"},
			path: "authentication.directory.url", line: 11, msg: "is not an ldaps:// or ldap:// URL"},
		{name: "url in clear", edit: [2]string{"ldaps://dc1.example.com", "ldap://dc1.example.com"},
			path: "authentication.directory.url", line: 11, msg: "would send passwords in clear"},
		{name: "url in clear to a private address", edit: [2]string{"ldaps://dc1.example.com", "ldap://10.0.0.5"},
			path: "authentication.directory.url", line: 11, msg: "would send passwords in clear"},
		{name: "url without host", edit: [2]string{"ldaps://dc1.example.com", "ldaps://"},
			path: "authentication.directory.url", line: 11, msg: "names no host"},
		{name: "url with a DN", edit: [2]string{"ldaps://dc1.example.com", "ldaps://dc1.example.com/dc=example,dc=com"},
			path: "authentication.directory.url", line: 11, msg: "has a DN, query or fragment"},
		{name: "url with a password", edit: [2]string{"ldaps://dc1.example.com", "ldaps://cvpn:secret@dc1.example.com"},
			path: "authentication.directory.url", line: 11, msg: "holds user information"},
		{name: "url port", edit: [2]string{"ldaps://dc1.example.com", "ldaps://dc1.example.com:70000"},
			path: "authentication.directory.url", line: 11, msg: "outside 1..65535"},
		{name: "url list empty", edit: [2]string{"url: ldaps://dc1.example.com", "url: []"},
			path: "authentication.directory.url", line: 11, msg: "at least one"},
		{name: "url duplicate", edit: [2]string{"url: ldaps://dc1.example.com", "url: [ldaps://dc1.example.com, LDAPS://DC1.example.com]"},
			path: "authentication.directory.url[1]", line: 11, msg: "already listed at authentication.directory.url[0]"},
		{name: "start_tls with ldaps", append: "    start_tls: true\n",
			path: "authentication.directory.start_tls", line: 13, msg: "applies only to ldap:// URLs"},
		{name: "start_tls not a bool", append: "    start_tls: yes please\n",
			path: "authentication.directory.start_tls", line: 13, msg: "must be true or false"},

		// bind
		{name: "bind_dn without password", append: "    bind_dn: cn=cvpn,dc=example,dc=com\n",
			path: "authentication.directory.bind_password_file", line: dirLine, msg: "required with bind_dn"},
		{name: "password without bind_dn", append: "    bind_password_file: " + f.secret + "\n",
			path: "authentication.directory.bind_dn", line: dirLine, msg: "required with bind_password_file"},
		{name: "password file world-readable", append: "    bind_dn: cn=cvpn,dc=example,dc=com\n    bind_password_file: " + f.public + "\n",
			path: "authentication.directory.bind_password_file", line: 14, msg: "is readable by every user of the host (mode 0644)"},
		{name: "password file missing", append: "    bind_dn: cn=cvpn,dc=example,dc=com\n    bind_password_file: nope\n",
			path: "authentication.directory.bind_password_file", line: 14, msg: "no such file or directory"},
		{name: "bind_dn not a DN", append: "    bind_dn: cvpn\n    bind_password_file: " + f.secret + "\n",
			path: "authentication.directory.bind_dn", line: 13, msg: `"cvpn" is not a DN`},
		{name: "ca_file missing", append: "    ca_file: pki/nope.crt\n",
			path: "authentication.directory.ca_file", line: 13, msg: "no such file or directory"},

		// users
		{name: "user_base_dn missing", edit: [2]string{"    user_base_dn: \"ou=people,dc=example,dc=com\"\n", ""},
			path: "authentication.directory.user_base_dn", line: dirLine, msg: "required"},
		{name: "user_filter without username", append: "    user_filter: \"(uid=alice)\"\n",
			path: "authentication.directory.user_filter", line: 13, msg: "must contain {username}"},
		{name: "user_filter unclosed", append: "    user_filter: \"(&(uid={username})\"\n",
			path: "authentication.directory.user_filter", line: 13, msg: "1 '(' not closed"},
		{name: "user_filter bare", append: "    user_filter: \"uid={username}\"\n",
			path: "authentication.directory.user_filter", line: 13, msg: "enclosed in parentheses"},
		{name: "user_filter two filters", append: "    user_filter: \"(uid={username})(cn=x)\"\n",
			path: "authentication.directory.user_filter", line: 13, msg: "text after the filter's closing ')'"},
		{name: "user_filter empty parens", append: "    user_filter: \"(&(uid={username})())\"\n",
			path: "authentication.directory.user_filter", line: 13, msg: "empty ()"},
		{name: "user_filter unknown placeholder", append: "    user_filter: \"(uid={user})\"\n",
			path: "authentication.directory.user_filter", line: 13, msg: "unknown placeholder {user}"},
		{name: "user_filter dn placeholder", append: "    user_filter: \"(&(uid={username})(x={dn}))\"\n",
			path: "authentication.directory.user_filter", line: 13, msg: "unknown placeholder {dn}"},
		{name: "user_filter no operator", append: "    user_filter: \"(&(uid={username})(objectClass))\"\n",
			path: "authentication.directory.user_filter", line: 13, msg: "is not an LDAP filter (RFC 4515)"},
		{name: "user_filter bad escape", append: "    user_filter: \"(uid={username}\\\\zz)\"\n",
			path: "authentication.directory.user_filter", line: 13, msg: "is not an LDAP filter (RFC 4515)"},
		{name: "user_filter not with two", append: "    user_filter: \"(&(uid={username})(!(a=b)(c=d)))\"\n",
			path: "authentication.directory.user_filter", line: 13, msg: "is not an LDAP filter (RFC 4515)"},
		{name: "user_filter stray brace", append: "    user_filter: \"(uid={username}})\"\n",
			path: "authentication.directory.user_filter", line: 13, msg: "'}' without '{'"},

		// groups
		{name: "attribute and search", append: "    group_attribute: memberOf\n    group_base_dn: ou=groups,dc=example,dc=com\n",
			path: "authentication.directory.group_base_dn", line: 14, msg: "set group_attribute or group_base_dn with group_filter, not both"},
		{name: "empty attribute without search", append: "    group_attribute: \"\"\n",
			path: "authentication.directory.group_base_dn", line: 13, msg: "required when group_attribute is \"\""},
		{name: "group_filter without base", append: "    group_filter: \"(member={dn})\"\n",
			path: "authentication.directory.group_filter", line: 13, msg: "applies only with group_base_dn"},
		{name: "group_filter without placeholder", append: "    group_base_dn: ou=groups,dc=example,dc=com\n    group_filter: \"(objectClass=groupOfNames)\"\n",
			path: "authentication.directory.group_filter", line: 14, msg: "must contain {dn} or {username}"},
		{name: "group_attribute not a name", append: "    group_attribute: member of\n",
			path: "authentication.directory.group_attribute", line: 13, msg: "is not an LDAP attribute name"},
		{name: "nested_groups not a bool", append: "    nested_groups: 1\n",
			path: "authentication.directory.nested_groups", line: 13, msg: "must be true or false"},

		// timeout
		{name: "timeout zero", append: "    timeout_seconds: 0\n",
			path: "authentication.directory.timeout_seconds", line: 13, msg: "0 is outside 1..120"},
		{name: "timeout too long", append: "    timeout_seconds: 121\n",
			path: "authentication.directory.timeout_seconds", line: 13, msg: "121 is outside 1..120"},

		// mfa
		{name: "mfa without directory", edit: [2]string{"  directory:\n    url: ldaps://dc1.example.com\n    user_base_dn: \"ou=people,dc=example,dc=com\"\n",
			"  certificate: {client_root_ca_file: pki/ca.crt}\n"}, append: "  mfa: {}\n",
			path: "authentication.mfa", line: 11, msg: "applies only with directory"},
		{name: "mfa challenge", append: "  mfa:\n    challenge: push\n",
			path: "authentication.mfa.challenge", line: mfaLine + 1, msg: `"push" is not static`},
		{name: "mfa challenge text too long", append: "  mfa:\n    challenge_text: " + strings.Repeat("x", 201) + "\n",
			path: "authentication.mfa.challenge_text", line: mfaLine + 1, msg: "is 201 bytes long; at most 200"},
		{name: "mfa challenge text control", append: "  mfa:\n    challenge_text: \"Code\\tplease\"\n",
			path: "authentication.mfa.challenge_text", line: mfaLine + 1, msg: "holds U+0009 at byte 4"},
		{name: "mfa challenge text escape", append: "  mfa:\n    challenge_text: \"\\e[2Jgotcha\"\n",
			path: "authentication.mfa.challenge_text", line: mfaLine + 1, msg: "holds U+001B"},
		{name: "mfa issuer colon", append: "  mfa:\n    totp: {issuer: \"Example:VPN\"}\n",
			path: "authentication.mfa.totp.issuer", line: mfaLine + 1, msg: "holds ':'"},
		{name: "mfa issuer too long", append: "  mfa:\n    totp: {issuer: " + strings.Repeat("x", 65) + "}\n",
			path: "authentication.mfa.totp.issuer", line: mfaLine + 1, msg: "at most 64"},
		{name: "mfa unknown key", append: "  mfa:\n    totp: {isuser: x}\n",
			path: "authentication.mfa.totp.isuser", line: mfaLine + 1, msg: `did you mean "issuer"?`},

		// client_connect_handler
		{name: "handler both", append: "client_connect_handler:\n  command: [" + f.prog + "]\n  url: https://h.example.com/\n",
			path: "client_connect_handler.url", line: 15, msg: "set command or url, not both"},
		{name: "handler neither", append: "client_connect_handler:\n  timeout_seconds: 5\n",
			path: "client_connect_handler.command", line: 13, msg: "required unless url is set"},
		{name: "handler http", append: "client_connect_handler: {url: \"http://h.example.com/\"}\n",
			path: "client_connect_handler.url", line: 13, msg: "is not an https:// URL"},
		{name: "handler url with user", append: "client_connect_handler: {url: \"https://u:p@h.example.com/\"}\n",
			path: "client_connect_handler.url", line: 13, msg: "holds user information"},
		{name: "handler url without host", append: "client_connect_handler: {url: \"https:///connect\"}\n",
			path: "client_connect_handler.url", line: 13, msg: "names no host"},
		{name: "handler command relative", append: "client_connect_handler: {command: [check, --x]}\n",
			path: "client_connect_handler.command[0]", line: 13, msg: `"check" is not an absolute path`},
		{name: "handler command not executable", append: "client_connect_handler: {command: [" + f.plain + "]}\n",
			path: "client_connect_handler.command[0]", line: 13, msg: "is not executable (mode 0644)"},
		{name: "handler command missing", append: "client_connect_handler: {command: [/nonexistent/check]}\n",
			path: "client_connect_handler.command[0]", line: 13, msg: "no such file or directory"},
		{name: "handler command a directory", append: "client_connect_handler: {command: [/]}\n",
			path: "client_connect_handler.command[0]", line: 13, msg: "is not a regular file"},
		{name: "handler command empty", append: "client_connect_handler: {command: []}\n",
			path: "client_connect_handler.command", line: 13, msg: "at least one"},
		{name: "handler ca_file with command", append: "client_connect_handler:\n  command: [" + f.prog + "]\n  ca_file: pki/ca.crt\n",
			path: "client_connect_handler.ca_file", line: 15, msg: "applies only with url"},
		{name: "handler timeout", append: "client_connect_handler: {url: \"https://h.example.com/\", timeout_seconds: 31}\n",
			path: "client_connect_handler.timeout_seconds", line: 13, msg: "31 is outside 1..30"},

		// state_dir
		{name: "state_dir a file", append: "state_dir: pki/ca.crt\n",
			path: "state_dir", line: 13, msg: "exists and is not a directory"},
		{name: "state_dir empty", append: "state_dir: \"\"\n",
			path: "state_dir", line: 13, msg: "must not be empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := dirBase
			if tc.edit[0] != "" {
				doc = edit(t, doc, tc.edit[0], tc.edit[1])
			}
			doc += tc.append
			ep, err := Parse([]byte(doc), "testdata")
			if err == nil {
				t.Fatalf("Parse succeeded: %+v\n%s", ep, doc)
			}
			errs := validationErrors(t, err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1:\n%v", len(errs), err)
			}
			got := errs[0]
			if got.Path != tc.path || got.Line != tc.line || !strings.Contains(got.Msg, tc.msg) {
				t.Errorf("got  path %q line %d msg %q\nwant path %q line %d msg containing %q", got.Path, got.Line, got.Msg, tc.path, tc.line, tc.msg)
			}
		})
	}
}

func TestCheckChallengeText(t *testing.T) {
	// The longest quoted line is 255 bytes: "static-challenge " (17) + quotes (2) + text + " 1" (2).
	for _, tc := range []struct {
		text string
		ok   bool
	}{
		{"Enter your authenticator code", true},
		{"Code: (6 digits), then Enter", true},
		{"Code für VPN", true},
		{strings.Repeat("x", 200), true},
		{strings.Repeat("x", 201), false},
		{strings.Repeat(`"`, 117), true},  // 17+2+234+2 = 255
		{strings.Repeat(`\`, 118), false}, // 17+2+236+2 = 257
		{"", false},
		{"a\nb", false},
		{"\x7f", false},
		{"\xff", false},
	} {
		if err := CheckChallengeText(tc.text); (err == nil) != tc.ok {
			t.Errorf("CheckChallengeText(%.20q) = %v, want ok %v", tc.text, err, tc.ok)
		}
	}
}

// FuzzCheckFilter: a filter template checkFilter accepts is one parenthesised filter that
// holds {username}, no other brace, and compiles once it is substituted; nothing panics.
func FuzzCheckFilter(f *testing.F) {
	for _, s := range []string{"(uid={username})", "(&(objectClass=user)(sAMAccountName={username}))", "(uid={username}",
		"(uid={user})", "((uid={username}))", "(uid=\\7b{username}\\7d)", "(|(a={username})(b=*))", "(a={username})(b=c)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if checkFilter(s, []string{placeholderUsername}, []string{placeholderUsername}) != nil {
			return
		}
		if !strings.HasPrefix(s, "(") || !strings.HasSuffix(s, ")") || !strings.Contains(s, placeholderUsername) {
			t.Fatalf("accepted %q", s)
		}
		if rest := strings.ReplaceAll(s, placeholderUsername, ""); strings.ContainsAny(rest, "{}") {
			t.Fatalf("accepted %q, which holds a brace that is not {username}", s)
		}
	})
}
