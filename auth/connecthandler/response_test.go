package connecthandler

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestRequestEncode(t *testing.T) {
	req := Request{
		ConnectionID:         "cvpn-connection-0123",
		EndpointID:           "cvpn-endpoint-abc",
		CommonName:           "laptop<1>",
		Username:             "alice",
		Platform:             "linux",
		PlatformVersion:      "6.1",
		PublicIP:             "198.51.100.7",
		ClientOpenVPNVersion: "2.6.14",
		Groups:               []string{"engineering", "vpn-users"},
	}
	b, err := req.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(b), "}\n") || strings.Count(string(b), "\n") != 1 {
		t.Errorf("want one line of JSON ending in a newline, got %q", b)
	}
	if strings.Contains(string(b), `\u003c`) {
		t.Errorf("HTML escaping applied: %s", b)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"connection-id":          "cvpn-connection-0123",
		"endpoint-id":            "cvpn-endpoint-abc",
		"common-name":            "laptop<1>",
		"username":               "alice",
		"platform":               "linux",
		"platform-version":       "6.1",
		"public-ip":              "198.51.100.7",
		"client-openvpn-version": "2.6.14",
		"groups":                 "engineering,vpn-users",
		"schema-version":         "v2",
	}
	if len(got) != len(want) {
		t.Errorf("keys: got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}

	// Certificate-only: every field present, groups "".
	b, err = Request{CommonName: "dev1"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 10 || got["groups"] != "" || got["username"] != "" || got["schema-version"] != "v2" {
		t.Errorf("certificate-only request: %s", b)
	}
}

func TestParseResponse(t *testing.T) {
	long := func(n int) string { return strings.Repeat("é", n) } // 2 bytes, 1 character
	statuses := func(n int) string {
		s := make([]string, n)
		for i := range s {
			s[i] = `"s"`
		}
		return "[" + strings.Join(s, ",") + "]"
	}
	for _, tc := range []struct {
		name    string
		body    string
		want    Decision
		wantErr string // substring; "" for success
	}{
		{name: "allow", body: `{"allow":true,"error-msg-on-denied-connection":"","posture-compliance-statuses":[],"schema-version":"v2"}`,
			want: Decision{Allow: true}},
		{name: "deny with message", body: `{"allow":false,"error-msg-on-denied-connection":"Update your OS","posture-compliance-statuses":["quarantined"],"schema-version":"v2"}`,
			want: Decision{Message: "Update your OS", Posture: []string{"quarantined"}}},
		{name: "v1 message key", body: `{"allow":false,"error-msg-on-failed-posture-compliance":"old","posture-compliance-statuses":[],"schema-version":"v1"}`,
			want: Decision{Message: "old"}},
		{name: "v2 ignores the v1 key", body: `{"allow":false,"error-msg-on-failed-posture-compliance":"old","schema-version":"v2"}`,
			want: Decision{}},
		{name: "optional fields absent or null", body: `{"allow":true,"schema-version":"v2","error-msg-on-denied-connection":null}`,
			want: Decision{Allow: true}},
		{name: "unknown keys ignored", body: ` {"allow":true,"schema-version":"v2","message":"hi","extra":{"a":[1]}} ` + "\n",
			want: Decision{Allow: true}},
		{name: "255 characters", body: `{"allow":false,"schema-version":"v2","error-msg-on-denied-connection":"` + long(255) + `"}`,
			want: Decision{Message: long(255)}},
		{name: "10 statuses", body: `{"allow":true,"schema-version":"v2","posture-compliance-statuses":` + statuses(10) + `}`,
			want: Decision{Allow: true, Posture: strings.Split(strings.Repeat("s", 10), "")}},

		{name: "not JSON", body: `allow`, wantErr: "not a JSON object"},
		{name: "empty", body: ``, wantErr: "not a JSON object"},
		{name: "null", body: `null`, wantErr: "not a JSON object"},
		{name: "array", body: `[{"allow":true,"schema-version":"v2"}]`, wantErr: "not a JSON object"},
		{name: "trailing data", body: `{"allow":true,"schema-version":"v2"}{}`, wantErr: "not a JSON object"},
		{name: "allow missing", body: `{"schema-version":"v2"}`, wantErr: `"allow" is missing`},
		{name: "allow null", body: `{"allow":null,"schema-version":"v2"}`, wantErr: `"allow" is missing`},
		{name: "allow as a string", body: `{"allow":"true","schema-version":"v2"}`, wantErr: `"allow" is a JSON string, want a boolean`},
		{name: "key case matters", body: `{"Allow":true,"schema-version":"v2"}`, wantErr: `"allow" is missing`},
		{name: "schema missing", body: `{"allow":true}`, wantErr: `"schema-version" is missing`},
		{name: "schema unknown", body: `{"allow":true,"schema-version":"v3"}`, wantErr: `unknown schema-version "v3"`},
		{name: "schema a number", body: `{"allow":true,"schema-version":2}`, wantErr: `"schema-version" is a JSON number`},
		{name: "message too long", body: `{"allow":false,"schema-version":"v2","error-msg-on-denied-connection":"` + long(256) + `"}`,
			wantErr: "256 characters, more than 255"},
		{name: "message a list", body: `{"allow":false,"schema-version":"v2","error-msg-on-denied-connection":["x"]}`,
			wantErr: "is a JSON array, want a string"},
		{name: "too many statuses", body: `{"allow":true,"schema-version":"v2","posture-compliance-statuses":` + statuses(11) + `}`,
			wantErr: "11 statuses, more than 10"},
		{name: "status too long", body: `{"allow":true,"schema-version":"v2","posture-compliance-statuses":["ok","` + long(256) + `"]}`,
			wantErr: "posture-compliance-statuses[1] has 256 characters"},
		{name: "statuses a string", body: `{"allow":true,"schema-version":"v2","posture-compliance-statuses":"compliant"}`,
			wantErr: "want a list of strings"},
		{name: "status a number", body: `{"allow":true,"schema-version":"v2","posture-compliance-statuses":[1]}`,
			wantErr: "want a list of strings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseResponse([]byte(tc.body))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				if got.Allow {
					t.Error("a rejected response allows")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Allow != tc.want.Allow || got.Message != tc.want.Message || strings.Join(got.Posture, "|") != strings.Join(tc.want.Posture, "|") {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSanitizeMessage(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Update your OS", "Update your OS"},
		{"line one\nline two\r\n", "line one line two"},
		{"  tabs\tand   spaces  ", "tabs and spaces"},
		{"bell\a esc\x1b[31mred\x1b[0m del\x7f", "bell esc[31mred[0m del"},
		{"c1\u0085next\u009bx", "c1 nextx"},
		{"bidi \u202eevil\u202c zero\u200bwidth", "bidi evil zerowidth"},
		{"sep\u2028line", "sep line"},
		{"bad utf8 \xff\xfe", "bad utf8 \uFFFD\uFFFD"},
		{"CRV1:R,E:state:dXNlcg==:code?", "Denied: CRV1:R,E:state:dXNlcg==:code?"},
		{"TEMP[backoff 10]", "Denied: TEMP[backoff 10]"},
		{"\n\tCRV1:x", "Denied: CRV1:x"},
		{"Temporary problem", "Temporary problem"},
		{"", ""},
		{"\x00\x01\n", ""},
	} {
		if got := SanitizeMessage(tc.in); got != tc.want {
			t.Errorf("SanitizeMessage(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}

	// Cut at 255 characters, and at the byte budget of the control message.
	if got := SanitizeMessage(strings.Repeat("a", 300)); got != strings.Repeat("a", 255) {
		t.Errorf("300 ASCII characters: got %d", len(got))
	}
	got := SanitizeMessage(strings.Repeat("😀", 255)) // 4 bytes each
	if len("AUTH_FAILED,"+got) >= 1024 || !utf8.ValidString(got) {
		t.Errorf("255 emoji: %d bytes, valid %v", len(got), utf8.ValidString(got))
	}
	if n := utf8.RuneCountInString(got); n != maxMessageBytes/4 {
		t.Errorf("255 emoji: kept %d, want %d", n, maxMessageBytes/4)
	}
	// A prefix added to a full-length message still fits.
	got = SanitizeMessage("TEMP" + strings.Repeat("x", 251))
	if utf8.RuneCountInString(got) != 255 || !strings.HasPrefix(got, "Denied: TEMP") {
		t.Errorf("prefixed full message: %q", got)
	}
}

// checkMessage asserts the invariants of a sanitized message.
func checkMessage(t *testing.T, what, s string) {
	t.Helper()
	if !utf8.ValidString(s) {
		t.Fatalf("%s: invalid UTF-8 %q", what, s)
	}
	if n := utf8.RuneCountInString(s); n > MaxMessageChars {
		t.Fatalf("%s: %d characters", what, n)
	}
	if len("AUTH_FAILED,"+s) >= 1024 {
		t.Fatalf("%s: %d bytes", what, len(s))
	}
	if s != strings.TrimSpace(s) || strings.Contains(s, "  ") {
		t.Fatalf("%s: untrimmed or doubled spaces %q", what, s)
	}
	for _, r := range s {
		if r != ' ' && (unicode.IsControl(r) || unicode.IsSpace(r) || unicode.Is(unicode.Cf, r)) {
			t.Fatalf("%s: control character %U in %q", what, r, s)
		}
	}
}

func FuzzSanitizeMessage(f *testing.F) {
	for _, s := range []string{"", "ok", "a\nb", "CRV1:x", "TEMP", " TEMP", "\u202e", strings.Repeat("😀", 300), "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := SanitizeMessage(s)
		checkMessage(t, "message", got)
		if strings.HasPrefix(got, "CRV1:") || strings.HasPrefix(got, "TEMP") {
			t.Fatalf("keyword prefix kept: %q", got)
		}
		if SanitizeMessage(got) != got && !strings.HasPrefix(got, "Denied: ") {
			t.Fatalf("not idempotent: %q -> %q", got, SanitizeMessage(got))
		}
	})
}

func FuzzParseResponse(f *testing.F) {
	for _, s := range []string{
		`{"allow":true,"error-msg-on-denied-connection":"","posture-compliance-statuses":[],"schema-version":"v2"}`,
		`{"allow":false,"error-msg-on-denied-connection":"no\nway","posture-compliance-statuses":["a","b"],"schema-version":"v2"}`,
		`{"allow":false,"error-msg-on-failed-posture-compliance":"CRV1:x","schema-version":"v1"}`,
		`{"allow":true}`, `null`, `[]`, `{"allow":"yes","schema-version":"v2"}`, `{"allow":true,"schema-version":"v2","allow":false}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := ParseResponse(body)
		if err != nil {
			if d.Allow || d.Message != "" || d.Posture != nil {
				t.Fatalf("error %v with a non-zero decision %+v", err, d)
			}
			return
		}
		// Only a JSON object with a boolean "allow" can succeed, and the
		// decision is what it says.
		var obj map[string]json.RawMessage
		if json.Unmarshal(body, &obj) != nil {
			t.Fatalf("accepted a non-object %q", body)
		}
		var allow bool
		if json.Unmarshal(obj["allow"], &allow) != nil || allow != d.Allow {
			t.Fatalf("allow: decision %v from %q", d.Allow, body)
		}
		checkMessage(t, "message", d.Message)
		if len(d.Posture) > MaxPostureCount {
			t.Fatalf("%d statuses", len(d.Posture))
		}
		for _, s := range d.Posture {
			checkMessage(t, "status", s)
		}
	})
}
