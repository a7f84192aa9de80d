package oidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
)

// maxKeys bounds how many keys of a JWKS are kept.
const maxKeys = 64

// keySet is the provider's published signing keys (its jwks_uri), fetched lazily on the first
// verification and again when a token names a key ID not in the cache (the provider rotated its
// keys). Refetches are rate-limited to one per minRefetch, measured on the injected clock, so a
// stream of tokens with made-up key IDs cannot make cvpn hammer the provider. It implements
// zitadel's oidc.KeySet.
//
// Unlike zitadel's rp.NewRemoteKeySet it rate-limits refetches, bounds the response, keeps only
// asymmetric signature keys (a symmetric "oct" key in the JWKS would let anyone who read the
// JWKS forge HS256 tokens), and fetches with the caller's context on the caller's goroutine.
type keySet struct {
	url        string
	client     *http.Client
	now        func() time.Time
	minRefetch time.Duration

	fetchMu sync.Mutex // serialises fetches; taken before mu

	mu      sync.Mutex // guards the fields below
	keys    []jose.JSONWebKey
	fetched time.Time // last fetch attempt, on now(); zero before the first
	fetches int       // successful or not, for tests
}

var errUnknownKey = errors.New("no published key matches the token's key ID and algorithm")

// VerifySignature implements zitadel's oidc.KeySet.
func (k *keySet) VerifySignature(ctx context.Context, jws *jose.JSONWebSignature) ([]byte, error) {
	kid, alg := zoidc.GetKeyIDAndAlg(jws)
	k.mu.Lock()
	keys, gen := k.keys, k.fetches
	k.mu.Unlock()
	if payload, found, err := verifyWith(jws, kid, alg, keys); found {
		// A known key that does not verify the signature is a forgery, not a rotation.
		return payload, err
	}
	keys, err := k.refetch(ctx, gen)
	if err != nil {
		return nil, err
	}
	payload, found, err := verifyWith(jws, kid, alg, keys)
	if !found {
		return nil, fmt.Errorf("%w (kid %.64q, alg %.16q)", errUnknownKey, kid, alg)
	}
	return payload, err
}

// verifyWith verifies jws with the key named kid, or, for a token without a kid, with each key
// of a matching type in turn (a provider may publish several keys and name none). found reports
// whether the key named kid is in keys, or for no kid whether a key verified.
func verifyWith(jws *jose.JSONWebSignature, kid, alg string, keys []jose.JSONWebKey) (payload []byte, found bool, err error) {
	if kid != "" {
		key, ferr := zoidc.FindMatchingKey(kid, zoidc.KeyUseSignature, alg, keys...)
		if ferr != nil {
			return nil, false, nil
		}
		payload, err = jws.Verify(&key)
		return payload, true, err
	}
	// Without a kid only a key that verifies counts as found, so that a rotation (no cached key
	// verifies) still triggers a refetch.
	for _, key := range keys {
		if _, ferr := zoidc.FindMatchingKey("", zoidc.KeyUseSignature, alg, key); ferr != nil {
			continue
		}
		if payload, err := jws.Verify(&key); err == nil {
			return payload, true, nil
		}
	}
	return nil, false, nil
}

// refetch fetches the key set unless another goroutine did since generation gen, or the last
// fetch was less than minRefetch ago (then the cached keys are returned as they are).
func (k *keySet) refetch(ctx context.Context, gen int) ([]jose.JSONWebKey, error) {
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	k.mu.Lock()
	if k.fetches != gen || (!k.fetched.IsZero() && k.now().Sub(k.fetched) < k.minRefetch) {
		keys := k.keys
		k.mu.Unlock()
		return keys, nil
	}
	k.fetched = k.now()
	k.fetches++
	k.mu.Unlock()

	keys, err := k.fetch(ctx)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	k.keys = keys
	k.mu.Unlock()
	return keys, nil
}

func (k *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, fmt.Errorf("oidc: keys: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("oidc: fetching keys: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("oidc: reading keys from %s: %w", k.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("oidc: fetching keys from %s: %s", k.url, resp.Status)
	}
	return parseJWKS(body)
}

// parseJWKS keeps the public signature keys of a JWKS (RFC 7517 §5), skipping key types go-jose
// does not know, symmetric keys, private keys and encryption keys.
func parseJWKS(body []byte) ([]jose.JSONWebKey, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("oidc: keys: not a JWKS: %w", err)
	}
	var keys []jose.JSONWebKey
	for _, r := range raw.Keys {
		var key jose.JSONWebKey
		if err := key.UnmarshalJSON(r); err != nil {
			continue // unknown kty or a malformed entry: unusable, but not fatal for the rest
		}
		if !key.Valid() || !key.IsPublic() || (key.Use != "" && key.Use != zoidc.KeyUseSignature) {
			continue
		}
		if _, sym := key.Key.([]byte); sym {
			continue
		}
		keys = append(keys, key)
		if len(keys) == maxKeys {
			break
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("oidc: keys: the JWKS has no usable public signature key")
	}
	return keys, nil
}
