package credential

import (
	"encoding/base64"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/cvpn/cvpn/auth/token"
)

func TestParse(t *testing.T) {
	tok := token.Prefix + strings.Repeat("A", 86)
	cases := []struct {
		name, user, pass string
		want             Credential
	}{
		{"plain", "alice", "s3cret pass", Credential{Kind: Plain, Username: "alice", Password: "s3cret pass"}},
		{"plain unicode", "jos\u00e9", "p\u00e4ss\u2603", Credential{Kind: Plain, Username: "jos\u00e9", Password: "p\u00e4ss\u2603"}},
		{"plain empty", "alice", "", Credential{Kind: Plain, Username: "alice"}},
		{"plain with colons", "alice", "a:b::c", Credential{Kind: Plain, Username: "alice", Password: "a:b::c"}},
		{"plain like CRV1 without colons", "alice", "CRV1", Credential{Kind: Plain, Username: "alice", Password: "CRV1"}},
		// doc/management-notes.txt: user "foo", password "bar", PIN 8675309.
		{"static (management-notes example)", "foo", "SCRV1:YmFy:ODY3NTMwOQ==", Credential{Kind: Static, Username: "foo", Password: "bar", Response: "8675309"}},
		{"static empty fields", "foo", "SCRV1::", Credential{Kind: Static, Username: "foo"}},
		{"static unpadded", "foo", "SCRV1:YmFyeg:ODY3NTMwOQ", Credential{Kind: Static, Username: "foo", Password: "barz", Response: "8675309"}},
		{"static password with colon", "foo", "SCRV1:" + b64("a:b") + ":" + b64("123456"), Credential{Kind: Static, Username: "foo", Password: "a:b", Response: "123456"}},
		// doc/management-notes.txt: the response to CRV1:R,E:Om01u7...:Y3Ix:...
		{"dynamic (management-notes example)", "cr1", "CRV1::Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l::8675309", Credential{Kind: Dynamic, Username: "cr1", State: "Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l", Response: "8675309"}},
		{"dynamic empty response", "cr1", "CRV1::st::", Credential{Kind: Dynamic, Username: "cr1", State: "st"}},
		{"dynamic response with colons", "cr1", "CRV1::st:::a::b", Credential{Kind: Dynamic, Username: "cr1", State: "st", Response: ":a::b"}},
		{"token", "alice", tok, Credential{Kind: Token, Username: "alice", Token: tok}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(c.user, c.pass)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got != c.want {
				t.Fatalf("Parse = %#v, want %#v", got, c.want)
			}
			if enc := got.Encode(); c.name != "static unpadded" && enc != c.pass {
				t.Fatalf("Encode = %q, want %q", enc, c.pass)
			}
		})
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestParseRefuses(t *testing.T) {
	cases := []struct {
		name, user, pass, want string
	}{
		{"empty username", "", "x", "empty username"},
		{"long username", strings.Repeat("u", MaxUsername+1), "x", "username is 257 bytes"},
		{"NUL in username", "al\x00ice", "x", "control character"},
		{"newline in username", "alice\n", "x", "control character"},
		{"C1 in username", "al\u0085ice", "x", "control character"},
		{"invalid UTF-8 username", "al\xffice", "x", "not valid UTF-8"},
		{"NUL in password", "alice", "pa\x00ss", "control character"},
		{"DEL in password", "alice", "pa\x7fss", "control character"},
		{"invalid UTF-8 password", "alice", "\xc3", "not valid UTF-8"},
		{"long password", "alice", strings.Repeat("p", MaxPassword+1), "password is 1025 bytes"},
		{"64 KiB field", "alice", strings.Repeat("p", 64<<10), "password field is 65536 bytes"},
		{"static one field", "alice", "SCRV1:YmFy", "not SCRV1:<base64>:<base64>"},
		{"static three fields", "alice", "SCRV1:YmFy:YmFy:YmFy", "not SCRV1:<base64>:<base64>"},
		{"static bad base64", "alice", "SCRV1:Ym$y:YmFy", "static-challenge password is not valid base64"},
		{"static bad padding bits", "alice", "SCRV1:YmFz:YmF=", "static-challenge response is not valid base64"},
		{"static NUL in password", "alice", "SCRV1:" + b64("a\x00b") + ":" + b64("1"), "control character"},
		{"static newline in response", "alice", "SCRV1:" + b64("a") + ":" + b64("1\n"), "control character"},
		{"static long password", "alice", "SCRV1:" + b64(strings.Repeat("p", MaxPassword+1)) + ":", "static-challenge password is 1025 bytes"},
		{"static huge base64", "alice", "SCRV1:" + strings.Repeat("A", 2000) + ":", "static-challenge password is longer than 1024 bytes"},
		{"static long response", "alice", "SCRV1::" + b64(strings.Repeat("1", MaxResponse+1)), "static-challenge response is"},
		{"static invalid UTF-8", "alice", "SCRV1:" + b64("\xff") + ":", "not valid UTF-8"},
		{"dynamic no separator", "alice", "CRV1::state", "not CRV1::<state>::<response>"},
		{"dynamic single colon", "alice", "CRV1::state:123", "not CRV1::<state>::<response>"},
		{"dynamic empty state", "alice", "CRV1::::123", "empty dynamic-challenge state id"},
		{"dynamic state with space", "alice", "CRV1::st ate::123", "state id has character ' '"},
		{"dynamic long state", "alice", "CRV1::" + strings.Repeat("s", MaxState+1) + "::1", "state id is 65 bytes"},
		{"dynamic long response", "alice", "CRV1::s::" + strings.Repeat("1", MaxResponse+1), "response is 257 bytes"},
		{"dynamic control in response", "alice", "CRV1::s::12\r", "control character"},
		{"token with control", "alice", token.Prefix + "\x01", "control character"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(c.user, c.pass)
			if err == nil {
				t.Fatalf("Parse accepted: %#v", got)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %q, want it to mention %q", err, c.want)
			}
			if len(c.pass) > 2 && strings.Contains(err.Error(), c.pass) {
				t.Fatalf("error quotes the password field: %q", err)
			}
		})
	}
}

func TestCredentialLogsNoSecret(t *testing.T) {
	for _, c := range []Credential{
		{Kind: Plain, Username: "alice", Password: "hunter2secret"},
		{Kind: Static, Username: "alice", Password: "hunter2secret", Response: "987654"},
		{Kind: Dynamic, Username: "alice", State: "st", Response: "987654"},
		{Kind: Token, Username: "alice", Token: token.Prefix + "tokensecret"},
	} {
		var sb strings.Builder
		slog.New(slog.NewTextHandler(&sb, nil)).Info("login", "cred", c)
		for _, out := range []string{sb.String(), c.String()} {
			if !strings.Contains(out, "alice") {
				t.Errorf("%v: log %q lacks the username", c.Kind, out)
			}
			for _, secret := range []string{"hunter2secret", "987654", "tokensecret"} {
				if strings.Contains(out, secret) {
					t.Errorf("%v: log %q contains a secret", c.Kind, out)
				}
			}
		}
	}
}

// clientChallenge parses a dynamic challenge the way the OpenVPN 2.6 client
// does (src/openvpn/misc.c parse_auth_challenge after push.c
// receive_auth_failed strips "AUTH_FAILED,"): fields split at the first four
// colons, flags scanned for E and R, the username base64-decoded.
type clientChallenge struct {
	echo, response    bool
	state, user, text string
}

func parseLikeClient(t *testing.T, msg string) clientChallenge {
	t.Helper()
	payload, ok := strings.CutPrefix(msg, "AUTH_FAILED,")
	if !ok || !strings.HasPrefix(payload, "CRV1:") {
		t.Fatalf("client would not see a dynamic challenge in %q", msg)
	}
	f := strings.SplitN(payload, ":", 5)
	if len(f) != 5 || f[0] != "CRV1" {
		t.Fatalf("client rejects challenge %q as malformed", payload)
	}
	user, err := base64.StdEncoding.DecodeString(f[3])
	if err != nil {
		t.Fatalf("username field %q is not base64: %v", f[3], err)
	}
	return clientChallenge{
		echo: strings.Contains(f[1], "E"), response: strings.Contains(f[1], "R"),
		state: f[2], user: string(user), text: f[4],
	}
}

func TestChallenge(t *testing.T) {
	state := NewState()
	if len(state) != 43 || checkState(state) != nil {
		t.Fatalf("NewState = %q: not a valid 43-character state", state)
	}
	if NewState() == state {
		t.Fatal("two NewState calls returned the same id")
	}
	for _, echo := range []bool{false, true} {
		p, err := Challenge(echo, state, "jos\u00e9@example.com", "Enter code: 6 digits")
		if err != nil {
			t.Fatal(err)
		}
		got := parseLikeClient(t, "AUTH_FAILED,"+p)
		want := clientChallenge{echo: echo, response: true, state: state, user: "jos\u00e9@example.com", text: "Enter code: 6 digits"}
		if got != want {
			t.Fatalf("client reads %+v, want %+v", got, want)
		}
		// The client answers with the decoded user and CRV1::state::response.
		c, err := Parse(got.user, "CRV1::"+got.state+"::123456")
		if err != nil || c.Kind != Dynamic || c.State != state || c.Response != "123456" || c.Username != "jos\u00e9@example.com" {
			t.Fatalf("the client's answer parses as %#v, %v", c, err)
		}
	}
	// The management-notes example.
	p, err := Challenge(true, "Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l", "cr1", "Please enter token PIN")
	if want := "CRV1:R,E:Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l:Y3Ix:Please enter token PIN"; err != nil || p != want {
		t.Fatalf("Challenge = %q, %v; want %q", p, err, want)
	}
}

func TestChallengeLimit(t *testing.T) {
	state := "abc"
	fixed := len("AUTH_FAILED,CRV1:R:abc:") + len(b64("u")) + 1
	text := strings.Repeat("x", MaxAuthFailed-fixed)
	p, err := Challenge(false, state, "u", text)
	if err != nil {
		t.Fatalf("challenge of exactly %d bytes refused: %v", MaxAuthFailed, err)
	}
	if n := len("AUTH_FAILED," + p); n != MaxAuthFailed {
		t.Fatalf("message is %d bytes, test expected %d", n, MaxAuthFailed)
	}
	if _, err := Challenge(false, state, "u", text+"x"); err == nil || !strings.Contains(err.Error(), "shorten the challenge text") {
		t.Fatalf("challenge over the limit: err = %v", err)
	}
	bad := []struct {
		name, state, user, text string
	}{
		{"state with colon", "a:b", "u", "t"},
		{"empty state", "", "u", "t"},
		{"long state", strings.Repeat("s", MaxState+1), "u", "t"},
		{"empty user", "s", "", "t"},
		{"user with newline", "s", "u\n", "t"},
		{"empty text", "s", "u", ""},
		{"text with newline", "s", "u", "line1\nline2"},
		{"text with NUL", "s", "u", "a\x00"},
	}
	for _, c := range bad {
		if p, err := Challenge(false, c.state, c.user, c.text); err == nil {
			t.Errorf("%s: Challenge = %q, want an error", c.name, p)
		}
	}
}

// checkParsed asserts the invariants every successful Parse guarantees.
func checkParsed(t *testing.T, c Credential) {
	t.Helper()
	fields := map[string]string{"username": c.Username, "password": c.Password, "response": c.Response, "state": c.State, "token": c.Token}
	for name, v := range fields {
		if !utf8.ValidString(v) {
			t.Fatalf("%s %q is not UTF-8", name, v)
		}
		if strings.IndexFunc(v, unicode.IsControl) >= 0 {
			t.Fatalf("%s %q has a control character", name, v)
		}
	}
	if c.Username == "" || len(c.Username) > MaxUsername || len(c.Password) > MaxPassword || len(c.Response) > MaxResponse || len(c.State) > MaxState || len(c.Token) > MaxPasswordField {
		t.Fatalf("a field is out of bounds: %#v", c)
	}
	switch c.Kind {
	case Plain, Static:
		if c.State != "" || c.Token != "" || (c.Kind == Plain && c.Response != "") {
			t.Fatalf("%v with stray fields: %#v", c.Kind, c)
		}
	case Dynamic:
		if c.State == "" || c.Password != "" || c.Token != "" {
			t.Fatalf("dynamic with stray fields: %#v", c)
		}
	case Token:
		if !strings.HasPrefix(c.Token, token.Prefix) || c.Password != "" || c.Response != "" || c.State != "" {
			t.Fatalf("token with stray fields: %#v", c)
		}
	default:
		t.Fatalf("kind %v", c.Kind)
	}
}

func FuzzParse(f *testing.F) {
	// More seeds are in testdata/fuzz/FuzzParse.
	f.Add("alice", "password")
	f.Add("foo", "SCRV1:YmFy:ODY3NTMwOQ==")
	f.Add("cr1", "CRV1::Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l::8675309")
	f.Add("alice", token.Prefix+"AAAA")
	f.Fuzz(func(t *testing.T, user, pass string) {
		c, err := Parse(user, pass)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		checkParsed(t, c)
		if c.Username != user {
			t.Fatalf("username %q changed to %q", user, c.Username)
		}
		// Encoding what was parsed gives the field back (canonically padded
		// for SCRV1), and that parses to the same credential.
		enc := c.Encode()
		if c.Kind != Static && enc != pass {
			t.Fatalf("Encode = %q, want %q", enc, pass)
		}
		again, err := Parse(user, enc)
		if err != nil || again != c {
			t.Fatalf("round trip: Parse(Encode) = %#v, %v; want %#v", again, err, c)
		}
	})
}

// FuzzChallenge checks that every challenge Challenge accepts fits the
// limit, reads back as built through the client's parsing, and that the
// client's answer parses.
func FuzzChallenge(f *testing.F) {
	f.Add(true, "Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l", "cr1", "Please enter token PIN", "8675309")
	f.Add(false, "s", "a:b", "a:b:c", "")
	f.Fuzz(func(t *testing.T, echo bool, state, user, text, resp string) {
		p, err := Challenge(echo, state, user, text)
		if err != nil {
			return
		}
		msg := "AUTH_FAILED," + p
		if len(msg) > MaxAuthFailed {
			t.Fatalf("message of %d bytes", len(msg))
		}
		got := parseLikeClient(t, msg)
		if want := (clientChallenge{echo: echo, response: true, state: state, user: user, text: text}); got != want {
			t.Fatalf("client reads %+v, want %+v", got, want)
		}
		c, err := Parse(got.user, "CRV1::"+got.state+"::"+resp)
		if err != nil {
			if checkText("", resp) == nil && len(resp) <= MaxResponse && len(got.state)+len(resp)+8 <= MaxPasswordField {
				t.Fatalf("the client's answer %q was refused: %v", resp, err)
			}
			return
		}
		if c.Kind != Dynamic || c.State != state || c.Response != resp {
			t.Fatalf("answer parsed as %#v", c)
		}
	})
}

func TestNotice(t *testing.T) {
	msg, err := Notice("st4te", "alice", "Open https://vpn.example.com/d/ABCD-EFGH in a browser, sign in, then press Enter")
	if err != nil {
		t.Fatal(err)
	}
	if want := "CRV1:E:st4te:YWxpY2U=:Open https://vpn.example.com/d/ABCD-EFGH in a browser, sign in, then press Enter"; msg != want {
		t.Errorf("Notice = %q, want %q", msg, want)
	}
	if _, err := Notice("st4te", "alice", strings.Repeat("x", MaxAuthFailed)); err == nil {
		t.Error("an overlong notice was built")
	}
	c, err := Parse("alice", "CRV1::st4te::")
	if err != nil || c.Kind != Dynamic || c.State != "st4te" || c.Response != "" {
		t.Errorf("the answer to a notice: %+v %v", c, err)
	}
}
