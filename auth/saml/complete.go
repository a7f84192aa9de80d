package saml

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	crewsaml "github.com/crewjam/saml"
)

// formOverhead is what a form may hold besides the SAMLResponse value (RelayState, field
// names, separators).
const formOverhead = 8 << 10

// Complete verifies the IdP's response posted to the ACS (HTTP-POST binding) and returns the
// identity it proves. The request body is read here, bounded; if the caller already parsed
// the form (r.PostForm set), the SAMLResponse value is still bounded before decoding.
//
// The order of checks is the order of cost: method and size, base64, the login state (taken
// and so spent whatever follows), then the library's XML and signature verification, then the
// timing, NameID and groups checks of this package.
func (s *SP) Complete(r *http.Request) (Identity, error) {
	form, err := s.readForm(r)
	if err != nil {
		return Identity{}, err
	}
	raw, state, err := s.decodeForm(form)
	if err != nil {
		return Identity{}, err
	}
	now := s.cfg.Now()
	p, err := s.take(r.Context(), state, now)
	if err != nil {
		return Identity{}, err
	}
	s.xmlParses.Add(1)
	sp := s.at(now)
	sp.ReplayCache = &replayCache{ctx: r.Context(), st: s.cfg.Store, max: s.cfg.MaxPendingLogins, now: s.cfg.Now}
	a, err := sp.ParseXMLResponse(raw, []string{p.requestID}, s.acs)
	if err != nil {
		return Identity{}, classify(err)
	}
	if err := s.checkTimes(a, now); err != nil {
		return Identity{}, err
	}
	id, err := s.identity(a)
	if err != nil {
		return Identity{}, err
	}
	id.State = state
	return id, nil
}

// readForm returns the POSTed form, reading at most what MaxResponseBytes allows.
func (s *SP) readForm(r *http.Request) (url.Values, error) {
	if r.Method != http.MethodPost {
		return nil, fmt.Errorf("%w: method %s, want POST", ErrRequest, r.Method)
	}
	if r.PostForm != nil {
		return r.PostForm, nil
	}
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, fmt.Errorf("%w: content type %.64q, want application/x-www-form-urlencoded", ErrRequest, ct)
	}
	if r.Body == nil {
		return nil, fmt.Errorf("%w: no body", ErrRequest)
	}
	// Percent-encoding can triple base64 ('+', '/', '=' become %2B, %2F, %3D).
	limit := int64(3*s.cfg.MaxResponseBytes + formOverhead)
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading body: %v", ErrRequest, err)
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("%w: form body over %d bytes", ErrResponseTooLarge, limit)
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, fmt.Errorf("%w: form encoding: %v", ErrMalformedResponse, err)
	}
	return form, nil
}

// decodeForm takes the SAMLResponse and RelayState out of an ACS form and base64-decodes the
// response. Nothing here parses XML.
func (s *SP) decodeForm(form url.Values) (raw []byte, state string, err error) {
	if _, ok := form["SAMLart"]; ok {
		return nil, "", fmt.Errorf("%w: HTTP-Artifact binding (SAMLart) is not accepted", ErrMalformedResponse)
	}
	resp := form["SAMLResponse"]
	switch {
	case len(resp) == 0:
		return nil, "", fmt.Errorf("%w: no SAMLResponse field", ErrMalformedResponse)
	case len(resp) > 1:
		return nil, "", fmt.Errorf("%w: %d SAMLResponse fields", ErrMalformedResponse, len(resp))
	}
	if n := len(resp[0]); n > s.cfg.MaxResponseBytes {
		return nil, "", fmt.Errorf("%w: SAMLResponse is %d bytes of base64, limit %d", ErrResponseTooLarge, n, s.cfg.MaxResponseBytes)
	}
	// StdEncoding skips \r and \n, which some IdPs put every 76 characters.
	raw, err = base64.StdEncoding.DecodeString(resp[0])
	if err != nil {
		return nil, "", fmt.Errorf("%w: SAMLResponse is not base64: %v", ErrMalformedResponse, err)
	}
	if len(raw) == 0 {
		return nil, "", fmt.Errorf("%w: empty SAMLResponse", ErrMalformedResponse)
	}
	rs := form["RelayState"]
	switch {
	case len(rs) == 0 || rs[0] == "":
		return nil, "", fmt.Errorf("%w: no RelayState (IdP-initiated logins are refused)", ErrUnknownLogin)
	case len(rs) > 1:
		return nil, "", fmt.Errorf("%w: %d RelayState fields", ErrMalformedResponse, len(rs))
	}
	return raw, rs[0], nil
}

// classify maps the library's refusal to this package's sentinels, keeping its reason. The
// library's *InvalidResponseError carries the whole response; only its PrivateErr is kept.
func classify(err error) error {
	cause := err
	var ire *crewsaml.InvalidResponseError
	if errors.As(err, &ire) && ire.PrivateErr != nil {
		cause = ire.PrivateErr
	}
	var bad crewsaml.ErrBadStatus
	if errors.As(cause, &bad) {
		return fmt.Errorf("%w: status %.200q", ErrStatus, bad.Status)
	}
	kinds := []struct{ lib, ours error }{
		{crewsaml.ErrInvalidSignature, ErrSignature},
		{crewsaml.ErrAssertionReplayed, ErrReplayed},
		{crewsaml.ErrRequestIDMismatch, ErrRequestID},
		{crewsaml.ErrAudienceMismatch, ErrAudience},
		{crewsaml.ErrDestinationMismatch, ErrDestination},
		{crewsaml.ErrIssuerMismatch, ErrIssuer},
		{crewsaml.ErrExpired, ErrExpired},
		{crewsaml.ErrNotYetValid, ErrNotYetValid},
		{crewsaml.ErrMalformedMessage, ErrMalformedResponse},
		{crewsaml.ErrMissingElement, ErrMalformedResponse},
		{crewsaml.ErrDecryptionFailed, ErrMalformedResponse},
	}
	for _, k := range kinds {
		if errors.Is(cause, k.lib) {
			return fmt.Errorf("%w: %v", k.ours, cause)
		}
	}
	// The library reports an absent signature with an unexported, unclassified error.
	if strings.Contains(cause.Error(), "signature element not present") {
		return fmt.Errorf("%w: neither the Response nor the Assertion is signed", ErrSignature)
	}
	return fmt.Errorf("%w: %v", ErrRefused, cause)
}

// checkTimes applies Config.ClockSkew, tighter than the library's 180 s, to the assertion's
// validity window and issue instant.
func (s *SP) checkTimes(a *crewsaml.Assertion, now time.Time) error {
	skew := s.cfg.ClockSkew
	if a.IssueInstant.After(now.Add(skew)) {
		return fmt.Errorf("%w: assertion IssueInstant %s is ahead of %s by more than %s",
			ErrNotYetValid, a.IssueInstant.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	}
	if c := a.Conditions; c != nil {
		if !c.NotBefore.IsZero() && c.NotBefore.After(now.Add(skew)) {
			return fmt.Errorf("%w: Conditions NotBefore %s", ErrNotYetValid, c.NotBefore.UTC().Format(time.RFC3339))
		}
		if !c.NotOnOrAfter.IsZero() && !now.Before(c.NotOnOrAfter.Add(skew)) {
			return fmt.Errorf("%w: Conditions NotOnOrAfter %s", ErrExpired, c.NotOnOrAfter.UTC().Format(time.RFC3339))
		}
	}
	if a.Subject != nil {
		for _, sc := range a.Subject.SubjectConfirmations {
			if d := sc.SubjectConfirmationData; d != nil && !d.NotOnOrAfter.IsZero() && !now.Before(d.NotOnOrAfter.Add(skew)) {
				return fmt.Errorf("%w: SubjectConfirmationData NotOnOrAfter %s", ErrExpired, d.NotOnOrAfter.UTC().Format(time.RFC3339))
			}
		}
	}
	return nil
}

// identity reads the username from the NameID and the groups from the groups attribute.
func (s *SP) identity(a *crewsaml.Assertion) (Identity, error) {
	if a.Subject == nil || a.Subject.NameID == nil {
		return Identity{}, fmt.Errorf("%w: assertion has no NameID", ErrIdentity)
	}
	name := a.Subject.NameID.Value
	if err := checkName(name); err != nil {
		return Identity{}, fmt.Errorf("%w: NameID %v", ErrIdentity, err)
	}
	var groups []string
	seen := make(map[string]bool)
	for _, st := range a.AttributeStatements {
		for _, attr := range st.Attributes {
			if attr.Name != s.cfg.GroupsAttribute {
				continue
			}
			for _, v := range attr.Values {
				if err := checkName(v.Value); err != nil {
					return Identity{}, fmt.Errorf("%w: a %s value %v", ErrIdentity, s.cfg.GroupsAttribute, err)
				}
				if seen[v.Value] {
					continue
				}
				if len(groups) == s.cfg.MaxGroups {
					return Identity{}, fmt.Errorf("%w: more than %d %s values", ErrIdentity, s.cfg.MaxGroups, s.cfg.GroupsAttribute)
				}
				seen[v.Value] = true
				groups = append(groups, v.Value)
			}
		}
	}
	return Identity{Username: name, Groups: groups, Subject: name, Issuer: a.Issuer.Value}, nil
}

// checkName accepts a username or group name: 1 to MaxNameLength bytes of UTF-8 without
// control characters (they would reach logs, the CRV1 prompt and the client-connect handler).
func checkName(v string) error {
	switch {
	case v == "":
		return errors.New("is empty")
	case len(v) > MaxNameLength:
		return fmt.Errorf("is %d bytes, limit %d", len(v), MaxNameLength)
	case !utf8.ValidString(v):
		return errors.New("is not UTF-8")
	case strings.IndexFunc(v, unicode.IsControl) >= 0:
		return errors.New("holds a control character")
	case strings.TrimSpace(v) != v:
		return errors.New("has leading or trailing space")
	}
	return nil
}
