package connecthandler

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits of AWS's response schema ("Connection authorization", "Lambda
// interface"): the denial message and each posture status are up to 255
// characters, and there are up to 10 statuses.
const (
	MaxMessageChars = 255
	MaxPostureCount = 10
	MaxPostureChars = 255
)

// MaxResponseSize caps what is read from a handler (a command's standard
// output, an HTTPS response body). A valid response is far smaller: 255
// characters of message and 10 x 255 of statuses. More is
// client-connect-handler-invalid-response.
const MaxResponseSize = 64 << 10

// maxMessageBytes keeps "AUTH_FAILED,"+message within OpenVPN's 1024-byte
// control message (PUSH_BUNDLE_SIZE, common.h; send_auth_failed in push.c
// truncates beyond it) with its terminating NUL: 255 characters of up to 4
// bytes would not fit.
const maxMessageBytes = 1024 - len("AUTH_FAILED,") - 1

// Schema versions. cvpn sends v2; it accepts a v2 or a v1 response, v1
// naming the message error-msg-on-failed-posture-compliance (the field's
// name in the first version of AWS's schema, still what some handlers
// written for AWS return).
const (
	SchemaV1 = "v1"
	SchemaV2 = "v2"
)

// wireRequest is AWS's schema v2 request, field for field and in its order.
type wireRequest struct {
	ConnectionID         string `json:"connection-id"`
	EndpointID           string `json:"endpoint-id"`
	CommonName           string `json:"common-name"`
	Username             string `json:"username"`
	Platform             string `json:"platform"`
	PlatformVersion      string `json:"platform-version"`
	PublicIP             string `json:"public-ip"`
	ClientOpenVPNVersion string `json:"client-openvpn-version"`
	Groups               string `json:"groups"`
	SchemaVersion        string `json:"schema-version"`
}

// Encode returns the schema v2 JSON document sent to the handler, with a
// trailing newline (so a shell handler's `read` sees a whole line). Every
// field is present; schema-version is "v2".
//
// groups is one JSON string, not a list: AWS's guide says the field holds
// "a list of Active Directory groups" but its schema shows a single
// "<group identifier>" value, and handlers written against the real
// service decode it as a string, which a JSON list would break. cvpn joins
// the identifiers with commas ("" when there are none, as for certificate
// authentication in AWS). An identifier that contains a comma (a DN) is
// sent as it is, so a handler cannot split it back; the caller should pass
// names without commas, such as cn.
func (r Request) Encode() ([]byte, error) {
	w := wireRequest{
		ConnectionID:         r.ConnectionID,
		EndpointID:           r.EndpointID,
		CommonName:           r.CommonName,
		Username:             r.Username,
		Platform:             r.Platform,
		PlatformVersion:      r.PlatformVersion,
		PublicIP:             r.PublicIP,
		ClientOpenVPNVersion: r.ClientOpenVPNVersion,
		Groups:               strings.Join(r.Groups, ","),
		SchemaVersion:        SchemaV2,
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// The request goes to a program or a JSON API, not a web page: keep
	// '<', '>' and '&' as they are.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(w); err != nil {
		return nil, fmt.Errorf("connecthandler: encode request: %w", err)
	}
	return buf.Bytes(), nil
}

// ParseResponse validates a handler's response and returns its decision,
// with the message and statuses sanitized (see SanitizeMessage).
//
// The response must be one JSON object. Keys match exactly (encoding/json
// would also take "ALLOW" for "allow"); unknown keys are ignored, as
// handlers often add their own. Required: "allow" (a boolean) and
// "schema-version" ("v1" or "v2"). The message
// ("error-msg-on-denied-connection" in v2) and "posture-compliance-statuses"
// may be absent or null, meaning empty: AWS lists them as required, but
// their absence has one obvious meaning. Any other type, a message over
// 255 characters, more than 10 statuses or a status over 255 characters is
// an error.
func ParseResponse(body []byte) (Decision, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return Decision{}, fmt.Errorf("not a JSON object: %w", err)
	}
	if fields == nil {
		return Decision{}, errors.New("not a JSON object: null")
	}

	var version string
	if err := field(fields, "schema-version", true, &version); err != nil {
		return Decision{}, err
	}
	messageKey := "error-msg-on-denied-connection"
	switch version {
	case SchemaV2:
	case SchemaV1:
		messageKey = "error-msg-on-failed-posture-compliance"
	default:
		return Decision{}, fmt.Errorf("unknown schema-version %.40q (want %q or %q)", version, SchemaV2, SchemaV1)
	}

	var d Decision
	if err := field(fields, "allow", true, &d.Allow); err != nil {
		return Decision{}, err
	}
	var msg string
	if err := field(fields, messageKey, false, &msg); err != nil {
		return Decision{}, err
	}
	if n := utf8.RuneCountInString(msg); n > MaxMessageChars {
		return Decision{}, fmt.Errorf("%s has %d characters, more than %d", messageKey, n, MaxMessageChars)
	}
	var posture []string
	if err := field(fields, "posture-compliance-statuses", false, &posture); err != nil {
		return Decision{}, err
	}
	if len(posture) > MaxPostureCount {
		return Decision{}, fmt.Errorf("posture-compliance-statuses has %d statuses, more than %d", len(posture), MaxPostureCount)
	}
	for i, s := range posture {
		if n := utf8.RuneCountInString(s); n > MaxPostureChars {
			return Decision{}, fmt.Errorf("posture-compliance-statuses[%d] has %d characters, more than %d", i, n, MaxPostureChars)
		}
	}

	d.Message = SanitizeMessage(msg)
	if len(posture) > 0 {
		d.Posture = make([]string, len(posture))
		for i, s := range posture {
			d.Posture[i] = sanitizeText(s, MaxPostureChars, maxMessageBytes)
		}
	}
	return d, nil
}

// field decodes fields[key] into dst, whose type is the only one accepted.
// A null or absent optional field leaves dst at its zero value.
func field(fields map[string]json.RawMessage, key string, required bool, dst any) error {
	raw, ok := fields[key]
	if !ok || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		if required {
			return fmt.Errorf("%q is missing", key)
		}
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%q is a JSON %s, want %s", key, te.Value, jsonType(dst))
		}
		return fmt.Errorf("%q: %w", key, err)
	}
	return nil
}

func jsonType(dst any) string {
	switch dst.(type) {
	case *bool:
		return "a boolean"
	case *string:
		return "a string"
	case *[]string:
		return "a list of strings"
	}
	return fmt.Sprintf("%T", dst)
}

// SanitizeMessage makes a handler's denial message safe to send to the
// client as AUTH_FAILED,<message>, where the client prints it:
//   - line breaks and tabs become spaces, other control and format
//     characters (C0, DEL, C1, bidirectional overrides, zero-width
//     characters) are removed, runs of spaces collapse, and the ends are
//     trimmed, so the text cannot forge log lines or reorder a terminal;
//   - it is cut to 255 characters and to what fits in OpenVPN's 1024-byte
//     control message, at a character boundary;
//   - a message the client would take for a keyword rather than text gets
//     a "Denied: " prefix: "CRV1:" starts a dynamic challenge
//     (receive_auth_failed, src/openvpn/push.c) and "TEMP" asks for a
//     retry (parse_auth_failed_temp, src/openvpn/options_util.c).
//
// Invalid UTF-8 becomes U+FFFD.
func SanitizeMessage(s string) string {
	s = sanitizeText(s, MaxMessageChars, maxMessageBytes)
	if strings.HasPrefix(s, "CRV1:") || strings.HasPrefix(s, "TEMP") {
		s = sanitizeText("Denied: "+s, MaxMessageChars, maxMessageBytes)
	}
	return s
}

// sanitizeText applies the character rules of SanitizeMessage and cuts the
// result to maxChars characters and maxBytes bytes.
func sanitizeText(s string, maxChars, maxBytes int) string {
	var b strings.Builder
	b.Grow(min(len(s), maxBytes))
	chars := 0
	// space: a space is pending, written only before a later character.
	space := false
	// Ranging over s yields U+FFFD for each invalid byte.
	for _, r := range s {
		switch {
		case r == '\n' || r == '\r' || r == '\t' || r == '\v' || r == '\f' ||
			r == '\u0085' || r == '\u2028' || r == '\u2029' || unicode.IsSpace(r):
			space = b.Len() > 0
			continue
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			continue
		}
		need := utf8.RuneLen(r)
		if space {
			need++
		}
		if chars+1+boolInt(space) > maxChars || b.Len()+need > maxBytes {
			break
		}
		if space {
			b.WriteByte(' ')
			chars++
			space = false
		}
		b.WriteRune(r)
		chars++
	}
	return b.String()
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
