// Package credential parses the username and password a client sends in its
// key-method 2 block (docs/protocol.md; OpenVPN src/openvpn/ssl.c
// key_method_2_write) into what the user actually typed: a plain password, a
// password with a static-challenge response, the response to a dynamic
// challenge, or an auth-token echoed back. It also builds the dynamic
// challenge the server sends in AUTH_FAILED.
//
// It owns the wire formats and their bounds only: it checks no password, no
// code and no token (the directory, mfa and token packages do).
//
// The formats, as the OpenVPN 2.6 client writes them (src/openvpn/misc.c
// get_user_pass_cr; doc/management-notes.txt "Challenge/response protocol"):
//
//	static challenge:   SCRV1:<base64 password>:<base64 response>
//	dynamic response:   CRV1::<state id>::<response>
//	dynamic challenge:  CRV1:<flags>:<state id>:<base64 username>:<text>
//	                    (sent by the server after "AUTH_FAILED,")
//
// base64 is the standard alphabet with padding (src/openvpn/base64.c).
//
// The static challenge's other format, password and response concatenated
// (static-challenge flag 2 in doc/management-notes.txt), cannot be told
// from a plain password and is not recognised: cvpn's profiles use SCRV1.
package credential

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/cvpn/cvpn/auth/token"
)

// Kind is the form of the password field.
type Kind int

// The kinds of credentials. The zero Kind is none of them.
const (
	Plain   Kind = iota + 1 // the password as typed
	Static                  // SCRV1: password and static-challenge response
	Dynamic                 // CRV1: response to a dynamic challenge
	Token                   // an auth-token the server pushed earlier
)

// String returns the kind's name for logs.
func (k Kind) String() string {
	switch k {
	case Plain:
		return "plain"
	case Static:
		return "static-challenge"
	case Dynamic:
		return "dynamic-challenge"
	case Token:
		return "auth-token"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Bounds on what a client may send. A key-method 2 string can be up to 64 KiB;
// the stock client's own buffers are USER_PASS_LEN = 4096 bytes with PKCS#11
// and 128 without (src/openvpn/misc.h), so anything longer than
// MaxPasswordField did not come from a stock client.
const (
	MaxPasswordField = 4095 // the raw password field, before decoding
	MaxUsername      = 256  // bytes of user name
	MaxPassword      = 1024 // bytes of decoded password
	MaxResponse      = 256  // bytes of challenge response
	// MaxState bounds a dynamic challenge's state id. The client packs
	// "CRV1::<state>::<response>" into its password buffer, 127 bytes on
	// builds without PKCS#11, so the state must leave room for a response.
	MaxState = 64
	// MaxAuthFailed bounds the whole "AUTH_FAILED,<payload>" message: an
	// OpenVPN server builds it in PUSH_BUNDLE_SIZE = 1024 bytes including the
	// terminating NUL (src/openvpn/push.c send_auth_failed, common.h), so
	// 1023 characters are what a client is known to handle.
	MaxAuthFailed = 1023
)

const (
	staticPrefix  = "SCRV1:"
	dynamicPrefix = "CRV1::"
	authFailed    = "AUTH_FAILED,"
)

// Credential is a parsed password field. Which fields are set depends on Kind:
//
//	Plain:   Username, Password
//	Static:  Username, Password, Response
//	Dynamic: Username, State, Response
//	Token:   Username, Token
type Credential struct {
	Kind     Kind
	Username string
	Password string
	Response string
	State    string
	Token    string
}

// Parse parses the key-method 2 username and password. Every field of the
// result is valid UTF-8 without control characters and within the bounds
// above. Errors wrap ErrMalformed and never quote the password.
//
// A password may legitimately be empty (so may a static-challenge password);
// a caller that binds to LDAP with it must refuse that, since an empty
// simple bind is an unauthenticated bind that succeeds (RFC 4513 §5.1.2).
func Parse(username, password string) (Credential, error) {
	if len(username) > MaxUsername {
		return Credential{}, fmt.Errorf("%w: username is %d bytes, more than %d", ErrMalformed, len(username), MaxUsername)
	}
	if len(password) > MaxPasswordField {
		return Credential{}, fmt.Errorf("%w: password field is %d bytes, more than %d", ErrMalformed, len(password), MaxPasswordField)
	}
	if username == "" {
		return Credential{}, fmt.Errorf("%w: empty username", ErrMalformed)
	}
	if err := checkText("username", username); err != nil {
		return Credential{}, malformed(err)
	}
	c := Credential{Username: username}
	switch {
	case strings.HasPrefix(password, token.Prefix):
		if err := checkText("auth-token", password); err != nil {
			return Credential{}, malformed(err)
		}
		c.Kind, c.Token = Token, password
	case strings.HasPrefix(password, staticPrefix):
		pw, resp, ok := strings.Cut(password[len(staticPrefix):], ":")
		if !ok || strings.Contains(resp, ":") {
			return Credential{}, fmt.Errorf("%w: static-challenge password is not SCRV1:<base64>:<base64>", ErrMalformed)
		}
		var err error
		if c.Password, err = decode("static-challenge password", pw, MaxPassword); err != nil {
			return Credential{}, malformed(err)
		}
		if c.Response, err = decode("static-challenge response", resp, MaxResponse); err != nil {
			return Credential{}, malformed(err)
		}
		c.Kind = Static
	case strings.HasPrefix(password, dynamicPrefix):
		// The state id has no colon (management-notes.txt), so the first
		// colon after it starts the "::" separator; the response may hold any.
		rest := password[len(dynamicPrefix):]
		i := strings.IndexByte(rest, ':')
		if i < 0 || !strings.HasPrefix(rest[i:], "::") {
			return Credential{}, fmt.Errorf("%w: dynamic-challenge response is not CRV1::<state>::<response>", ErrMalformed)
		}
		if err := checkState(rest[:i]); err != nil {
			return Credential{}, malformed(err)
		}
		c.State = rest[:i]
		c.Response = rest[i+2:]
		if len(c.Response) > MaxResponse {
			return Credential{}, fmt.Errorf("%w: dynamic-challenge response is %d bytes, more than %d", ErrMalformed, len(c.Response), MaxResponse)
		}
		if err := checkText("dynamic-challenge response", c.Response); err != nil {
			return Credential{}, malformed(err)
		}
		c.Kind = Dynamic
	default:
		if len(password) > MaxPassword {
			return Credential{}, fmt.Errorf("%w: password is %d bytes, more than %d", ErrMalformed, len(password), MaxPassword)
		}
		if err := checkText("password", password); err != nil {
			return Credential{}, malformed(err)
		}
		c.Kind, c.Password = Plain, password
	}
	return c, nil
}

func malformed(err error) error {
	return fmt.Errorf("%w: %v", ErrMalformed, err)
}

// decode decodes one base64 field of SCRV1 and checks the text it holds. The
// stock client pads; unpadded input is accepted from other clients. Only the
// canonical encoding is accepted, so each value has one spelling.
func decode(what, s string, max int) (string, error) {
	if len(s) > base64.StdEncoding.EncodedLen(max) {
		return "", fmt.Errorf("%s is longer than %d bytes", what, max)
	}
	enc := base64.StdEncoding
	if len(s)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	b, err := enc.Strict().DecodeString(s)
	if err != nil {
		return "", fmt.Errorf("%s is not valid base64", what)
	}
	if len(b) > max {
		return "", fmt.Errorf("%s is %d bytes, more than %d", what, len(b), max)
	}
	v := string(b)
	if err := checkText(what, v); err != nil {
		return "", err
	}
	return v, nil
}

// checkText refuses invalid UTF-8 and control characters (C0, DEL, C1): none
// is typed at a prompt, and they would corrupt logs, LDAP filters and the
// control channel's text commands.
func checkText(what, s string) error {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
				return fmt.Errorf("%s is not valid UTF-8 (byte %d)", what, i)
			}
		}
		if unicode.IsControl(r) {
			return fmt.Errorf("%s contains control character %U at byte %d", what, r, i)
		}
	}
	return nil
}

// checkState accepts a state id of 1 to MaxState characters from the base64
// and base64url alphabets (what NewState makes, and what is safe to echo).
func checkState(s string) error {
	if s == "" {
		return fmt.Errorf("empty dynamic-challenge state id")
	}
	if len(s) > MaxState {
		return fmt.Errorf("dynamic-challenge state id is %d bytes, more than %d", len(s), MaxState)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("+/=-_.", c) >= 0) {
			return fmt.Errorf("dynamic-challenge state id has character %q at byte %d (allowed: A-Z a-z 0-9 + / = - _ .)", c, i)
		}
	}
	return nil
}

// Encode returns the password field a client sends for c: the inverse of
// Parse for a well-formed Credential.
func (c Credential) Encode() string {
	switch c.Kind {
	case Static:
		return staticPrefix + base64.StdEncoding.EncodeToString([]byte(c.Password)) + ":" + base64.StdEncoding.EncodeToString([]byte(c.Response))
	case Dynamic:
		return dynamicPrefix + c.State + "::" + c.Response
	case Token:
		return c.Token
	default:
		return c.Password
	}
}

// String describes c for logs without its password, response or token.
func (c Credential) String() string {
	s := fmt.Sprintf("%s credential for %q", c.Kind, c.Username)
	if c.Kind == Dynamic {
		s += " (state " + c.State + ")"
	}
	return s
}

// LogValue implements slog.LogValuer, so logging a Credential never logs a secret.
func (c Credential) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("kind", c.Kind.String()), slog.String("username", c.Username)}
	if c.Kind == Dynamic {
		attrs = append(attrs, slog.String("state", c.State))
	}
	return slog.GroupValue(attrs...)
}

// NewState returns a fresh random state id for a dynamic challenge: 32 random
// bytes, unpadded base64url (43 characters).
func NewState() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails on supported platforms (crypto/rand, Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Challenge builds the payload of the AUTH_FAILED message that asks the
// client for a dynamic-challenge response:
//
//	CRV1:R:<state>:<base64 username>:<text>     (echo false)
//	CRV1:R,E:<state>:<base64 username>:<text>   (echo true)
//
// R asks for a response, E echoes it as it is typed (src/openvpn/misc.c
// parse_auth_challenge). The client answers with username decoded from the
// challenge and password "CRV1::<state>::<response>". state must pass the
// rules Parse applies to it; text may contain colons but no control
// characters; and "AUTH_FAILED,"+payload must fit in MaxAuthFailed.
func Challenge(echo bool, state, username, text string) (string, error) {
	flags := "R"
	if echo {
		flags = "R,E"
	}
	return challenge(flags, state, username, text)
}

// Notice builds a dynamic challenge that asks for no response, only for Enter once the user
// did what text says (a browser login): "CRV1:E:<state>:<base64 username>:<text>". The client
// prompts all the same (src/openvpn/misc.c get_user_pass_cr) and answers
// "CRV1::<state>::" with whatever was typed.
func Notice(state, username, text string) (string, error) {
	return challenge("E", state, username, text)
}

func challenge(flags, state, username, text string) (string, error) {
	if err := checkState(state); err != nil {
		return "", fmt.Errorf("credential: challenge: %w", err)
	}
	if username == "" || len(username) > MaxUsername {
		return "", fmt.Errorf("credential: challenge: username of %d bytes (want 1 to %d)", len(username), MaxUsername)
	}
	if err := checkText("username", username); err != nil {
		return "", fmt.Errorf("credential: challenge: %w", err)
	}
	if text == "" {
		return "", fmt.Errorf("credential: challenge: empty challenge text")
	}
	if err := checkText("challenge text", text); err != nil {
		return "", fmt.Errorf("credential: challenge: %w", err)
	}
	payload := "CRV1:" + flags + ":" + state + ":" + base64.StdEncoding.EncodeToString([]byte(username)) + ":" + text
	if n := len(authFailed) + len(payload); n > MaxAuthFailed {
		return "", fmt.Errorf("credential: challenge: AUTH_FAILED message would be %d bytes, more than %d; shorten the challenge text", n, MaxAuthFailed)
	}
	return payload, nil
}
