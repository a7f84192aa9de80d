package oidclab

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/cvpn/cvpn/internal/netlab"
)

const redirect = "https://rp.test/callback"

// authURL builds an authorization request of client "rp" at lab, with PKCE.
func authURL(lab *Lab, verifier string, scopes ...string) (string, *oauth2.Config) {
	cfg := &oauth2.Config{
		ClientID: "rp", ClientSecret: "rp-secret", RedirectURL: redirect,
		Scopes:   append([]string{"openid"}, scopes...),
		Endpoint: oauth2.Endpoint{AuthURL: lab.Issuer + "/authorize", TokenURL: lab.Issuer + "/oauth/token", AuthStyle: oauth2.AuthStyleInHeader},
	}
	return cfg.AuthCodeURL("st4te", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("nonce", "n0nce")), cfg
}

func TestLoginAndTokens(t *testing.T) {
	lab := Start(t)
	lab.AddClient("rp", "rp-secret", redirect)
	lab.AddUser("carol", "carol-pw", "ops")

	// The login page is a plain form a browser can fill in.
	verifier := oauth2.GenerateVerifier()
	u, cfg := authURL(lab, verifier, "profile")
	c := lab.HTTPClient()
	c.CheckRedirect = nil
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`name="username"`, `name="password"`, `type="submit"`, `<form method="post"`} {
		if !strings.Contains(string(page), want) {
			t.Errorf("login page lacks %s:\n%s", want, page)
		}
	}

	if _, err := lab.TryLogin(u, "carol", "wrong"); err == nil || !strings.Contains(err.Error(), errInvalidLogin) {
		t.Errorf("wrong password: %v, want %q", err, errInvalidLogin)
	}
	cb, err := url.Parse(lab.Login(t, u, "carol", "carol-pw"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(cb.String(), redirect+"?") || cb.Query().Get("state") != "st4te" || cb.Query().Get("code") == "" {
		t.Fatalf("callback %s: want %s with state and code", cb, redirect)
	}
	info := lab.AuthRequests()
	if len(info) != 3 || info[2].CodeChallengeMethod != "S256" || info[2].Nonce != "n0nce" {
		t.Errorf("recorded requests %+v", info)
	}

	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, lab.HTTPClient())
	code := cb.Query().Get("code")
	if _, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(oauth2.GenerateVerifier())); err == nil {
		t.Error("the code was redeemed with the wrong PKCE verifier")
	}
	tok, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	idt, _ := tok.Extra("id_token").(string)
	claims := payload(t, idt)
	if claims["iss"] != lab.Issuer || claims["nonce"] != "n0nce" || claims["preferred_username"] != "carol" || claims["sub"] != lab.Subject("carol") {
		t.Errorf("ID token claims %v", claims)
	}
	if g, _ := claims["groups"].([]any); len(g) != 1 || g[0] != "ops" {
		t.Errorf("groups claim %v, want [ops]", claims["groups"])
	}
	if _, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier)); err == nil {
		t.Error("the code was redeemed twice")
	}
}

func TestRefusedRequests(t *testing.T) {
	lab := Start(t)
	lab.AddClient("rp", "rp-secret", redirect)
	lab.AddUser("carol", "carol-pw")
	u, _ := authURL(lab, oauth2.GenerateVerifier())
	bad := strings.Replace(u, url.QueryEscape(redirect), url.QueryEscape("https://evil.test/cb"), 1)
	if bad == u {
		t.Fatal("redirect_uri not found in the authorization URL")
	}
	if cb, err := lab.TryLogin(bad, "carol", "carol-pw"); err == nil {
		t.Errorf("an unregistered redirect URI got a login, to %s", cb)
	}
	if _, err := lab.TryLogin("https://elsewhere.test/authorize", "carol", "carol-pw"); err == nil {
		t.Error("TryLogin followed a URL off the provider")
	}
}

func TestRotateKeys(t *testing.T) {
	lab := Start(t, WithES256())
	first := lab.SigningKeyID()
	lab.RotateKeys()
	second := lab.SigningKeyID()
	if first == second {
		t.Fatal("RotateKeys kept the key ID")
	}
	kids := jwksKIDs(t, lab)
	if len(kids) != 2 || kids[0] != first || kids[1] != second {
		t.Errorf("JWKS key IDs %q, want [%s %s]", kids, first, second)
	}
	lab.DropOldKeys()
	if kids := jwksKIDs(t, lab); len(kids) != 1 || kids[0] != second {
		t.Errorf("JWKS after DropOldKeys %q, want [%s]", kids, second)
	}
}

// TestInNamespace serves the provider from a listener opened in a network namespace of the
// test's own and reaches it from inside that namespace only.
func TestInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root (make test runs as root)")
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	ns := "oidclab" + hex.EncodeToString(b[:])
	for _, args := range [][]string{{"netns", "add", ns}, {"-n", ns, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	ln, err := netlab.ListenTCPIn(ns, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	lab := Start(t, WithListener(ln))
	c := lab.HTTPClient()
	c.Transport.(*http.Transport).DialContext = func(_ context.Context, _, addr string) (net.Conn, error) {
		return netlab.DialTCPIn(ns, netip.MustParseAddrPort(addr))
	}
	resp, err := c.Get(lab.Issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatalf("discovery from inside %s: %v", ns, err)
	}
	var disco struct {
		Issuer string `json:"issuer"`
	}
	err = json.NewDecoder(resp.Body).Decode(&disco)
	resp.Body.Close()
	if err != nil || disco.Issuer != lab.Issuer {
		t.Errorf("discovery issuer %q (%v), want %q", disco.Issuer, err, lab.Issuer)
	}
	// The root namespace's 127.0.0.1 is another host.
	if resp, err := lab.HTTPClient().Get(lab.Issuer + "/.well-known/openid-configuration"); err == nil {
		resp.Body.Close()
		t.Errorf("the provider in %s answered from the root namespace", ns)
	}
}

func jwksKIDs(t *testing.T, lab *Lab) []string {
	t.Helper()
	resp, err := lab.HTTPClient().Get(lab.Issuer + "/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.Kid)
	}
	return kids
}

func payload(t *testing.T, jwt string) map[string]any {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("ID token %.40q... is not a JWS", jwt)
	}
	var m map[string]any
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil {
		t.Fatalf("ID token payload: %v", err)
	}
	return m
}
