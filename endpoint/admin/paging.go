package admin

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"sort"
	"strings"
)

// Paging of the Describe actions. The EC2 API reference gives MaxResults of
// DescribeClientVpnConnections, DescribeClientVpnEndpoints, DescribeClientVpnRoutes and
// DescribeClientVpnAuthorizationRules the range 5 to 1000; a request without it gets every item
// in one page, as before paging existed (so a plain curl or `cvpn status` sees all).
//
// A NextToken is opaque to the caller. It holds the action it was issued by and the sort key
// of the last item of its page; the next page starts after that key (keyset paging), so that
// items that come or go between two requests never shift the pages: none is listed twice, and
// none that lives through the paging is skipped. It is signed with a key the process drew at
// random, so that a token this process did not issue (cut, edited, or from before a restart) is
// refused rather than resumed somewhere. On the wire it is base64url of
//
//	+---------------------------------------+----------------------------------------+
//	| "cvpn1" 0x00 action 0x00 key          | HMAC-SHA256(secret, the left), 16 bytes |
//	+---------------------------------------+----------------------------------------+
const (
	minResults   = 5
	maxResults   = 1000
	tokenVersion = "cvpn1"
	tokenMACSize = 16
	// maxToken bounds a NextToken before it is decoded; the longest one issued is well under.
	maxToken = 512
)

// pager is one request's paging: at most limit items (0: all) whose key is after after.
type pager struct {
	action string
	secret []byte
	limit  int
	after  string // "": from the first item
}

// newPager checks a request's MaxResults and NextToken for action; validKey says whether a
// token's key is one action issues, secret is the key tokens are signed with. Errors are
// InvalidParameterValue naming the field.
func newPager(action string, secret []byte, max *int, token string, validKey func(string) bool) (pager, error) {
	p := pager{action: action, secret: secret}
	if max != nil {
		if *max < minResults || *max > maxResults {
			return p, &Error{Code: "InvalidParameterValue", Message: fmt.Sprintf("MaxResults %d is out of range: give %d to %d", *max, minResults, maxResults)}
		}
		p.limit = *max
	}
	if token == "" {
		return p, nil
	}
	bad := &Error{Code: "InvalidParameterValue", Message: "NextToken is not one this endpoint's " + action +
		" issued (cut, edited, of another action, or from before cvpn restarted): give the NextToken of its last response, or none"}
	if len(token) > maxToken {
		return p, bad
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(raw) < tokenMACSize {
		return p, bad
	}
	payload, mac := raw[:len(raw)-tokenMACSize], raw[len(raw)-tokenMACSize:]
	if !hmac.Equal(mac, sign(secret, payload)) {
		return p, bad
	}
	parts := strings.SplitN(string(payload), "\x00", 3)
	if len(parts) != 3 || parts[0] != tokenVersion || parts[1] != action || !validKey(parts[2]) {
		return p, bad
	}
	p.after = parts[2]
	return p, nil
}

// sign is the MAC of a token's payload.
func sign(secret, payload []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write(payload)
	return h.Sum(nil)[:tokenMACSize]
}

// token is the NextToken that resumes after key.
func (p pager) token(key string) string {
	payload := []byte(tokenVersion + "\x00" + p.action + "\x00" + key)
	return base64.RawURLEncoding.EncodeToString(append(payload, sign(p.secret, payload)...))
}

// page returns the items of this page, of items sorted by key ascending, and the NextToken of
// the next page ("" when none remain).
func page[T any](p pager, items []T, key func(T) string) ([]T, string) {
	items = items[sort.Search(len(items), func(i int) bool { return key(items[i]) > p.after }):]
	if p.limit == 0 || len(items) <= p.limit {
		return items, ""
	}
	return items[:p.limit], p.token(key(items[p.limit-1]))
}

// indexKey is the sort key of the item at index i of a list kept in the endpoint file's order
// (routes, authorization rules): fixed-width hex, so that keys sort as the indices do.
func indexKey(i int) string { return fmt.Sprintf("%08x", i) }

// validIndexKey reports whether k is an indexKey.
func validIndexKey(k string) bool { return len(k) == 8 && isHex(k) }

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// tokenSecret is the key the Source's NextTokens are signed with, drawn at random on first use.
func (s *Source) tokenSecret() []byte {
	s.tokenOnce.Do(func() {
		s.tokenKey = make([]byte, 32)
		rand.Read(s.tokenKey) // never fails (crypto/rand)
	})
	return s.tokenKey
}

// pager is newPager with the Source's signing key.
func (s *Source) pager(action string, max *int, token string, validKey func(string) bool) (pager, error) {
	return newPager(action, s.tokenSecret(), max, token, validKey)
}
