package oidc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// jwksServer publishes the public halves of keys (swappable) and counts fetches.
type jwksServer struct {
	mu      sync.Mutex
	keys    []jose.JSONWebKey
	fetches atomic.Int32
}

func (s *jwksServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.fetches.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: s.keys})
}

func (s *jwksServer) publish(keys ...jose.JSONWebKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = nil
	for _, k := range keys {
		s.keys = append(s.keys, k.Public())
	}
}

func ecKey(t *testing.T, kid string) jose.JSONWebKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return jose.JSONWebKey{Key: k, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"}
}

// sign returns a JWS of payload by key, with header kid (none if kid is "").
func sign(t *testing.T, key jose.JSONWebKey, kid string) *jose.JSONWebSignature {
	t.Helper()
	opts := &jose.SignerOptions{}
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key.Key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := s.Sign([]byte(`{"sub":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	compact, _ := obj.CompactSerialize()
	jws, err := jose.ParseSignedCompact(compact, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	return jws
}

func TestKeySet(t *testing.T) {
	srv := &jwksServer{}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	clk := &clock{}
	ks := &keySet{url: hs.URL, client: providerClient(hs.Client()), now: clk.Now, minRefetch: KeyRefetchInterval}
	ctx := context.Background()
	k1, k2, k3 := ecKey(t, "k1"), ecKey(t, "k2"), ecKey(t, "k3")
	srv.publish(k1, k2)

	if _, err := ks.VerifySignature(ctx, sign(t, k1, "k1")); err != nil {
		t.Fatalf("k1: %v", err)
	}
	// No kid: each published key is tried.
	if _, err := ks.VerifySignature(ctx, sign(t, k2, "")); err != nil {
		t.Errorf("k2 without kid: %v", err)
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1 (lazy, then cached)", n)
	}
	// Signed by k2 but claiming k1: a forgery, refused without a refetch.
	if _, err := ks.VerifySignature(ctx, sign(t, k2, "k1")); err == nil {
		t.Error("a token claiming kid k1 but signed by k2 verified")
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Errorf("%d fetches after a forged kid, want 1", n)
	}
	// An unknown kid: one refetch, then rate-limited.
	srv.publish(k3)
	clk.Advance(KeyRefetchInterval)
	if _, err := ks.VerifySignature(ctx, sign(t, k3, "k3")); err != nil {
		t.Errorf("k3 after rotation: %v", err)
	}
	for range 5 {
		if _, err := ks.VerifySignature(ctx, sign(t, ecKey(t, "made-up"), "made-up")); err == nil {
			t.Error("a token signed by an unpublished key verified")
		}
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Errorf("%d fetches after 5 unknown kids within the interval, want 2", n)
	}
	// Without a kid, a rotation is found by a refetch too.
	srv.publish(k1)
	clk.Advance(KeyRefetchInterval + time.Second)
	if _, err := ks.VerifySignature(ctx, sign(t, k1, "")); err != nil {
		t.Errorf("k1 without kid after rotation back: %v", err)
	}
	if n := srv.fetches.Load(); n != 3 {
		t.Errorf("%d fetches, want 3", n)
	}
}
