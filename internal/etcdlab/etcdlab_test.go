package etcdlab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestQuorum runs three members: a write is readable through each, the cluster stays writable
// with one member killed, refuses writes with two killed, and serves again, with the old data,
// once they are restarted.
func TestQuorum(t *testing.T) {
	c := Start(t, Options{Members: 3})
	if c.Len() != 3 || len(c.Endpoints()) != 3 {
		t.Fatalf("Len = %d, Endpoints = %v", c.Len(), c.Endpoints())
	}
	cli := c.Client(t)
	put(t, cli, "k", "v1")
	for i := range c.Len() {
		m := c.Member(i)
		if !m.Running() {
			t.Fatalf("member %s not running", m.Name())
		}
		if got := get(t, c.Client(t, m.Endpoint()), "k"); got != "v1" {
			t.Fatalf("through %s: k = %q, want v1", m.Name(), got)
		}
	}

	c.Member(0).Kill()
	if c.Member(0).Running() {
		t.Fatal("member m0 runs after Kill")
	}
	waitHealthy(t, c)
	put(t, cli, "k", "v2")
	if got := get(t, c.Client(t, c.Member(2).Endpoint()), "k"); got != "v2" {
		t.Fatalf("with m0 down: k = %q, want v2", got)
	}

	c.Member(1).Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, err := cli.Put(ctx, "k", "lost")
	cancel()
	if err == nil {
		t.Fatal("Put with two of three members down succeeded")
	}
	t.Logf("Put without quorum: %v", err)

	c.Member(0).Start()
	c.Member(1).Start()
	waitHealthy(t, c)
	put(t, cli, "k2", "after")
	for i := range c.Len() {
		m := c.Member(i)
		mc := c.Client(t, m.Endpoint())
		if got := get(t, mc, "k2"); got != "after" {
			t.Fatalf("after restart through %s: k2 = %q, want after", m.Name(), got)
		}
		// m0 was down when v2 was written: it caught up from the leader.
		if got := get(t, mc, "k"); got != "v2" && got != "lost" {
			t.Fatalf("after restart through %s: k = %q, want v2 (or the write that timed out)", m.Name(), got)
		}
	}
}

// TestTLS runs a member that requires a client certificate: the lab's client gets through, a
// client without a certificate does not.
func TestTLS(t *testing.T) {
	c := Start(t, Options{TLS: true})
	caFile, certFile, keyFile := c.ClientTLS()
	for _, f := range []string{caFile, certFile, keyFile} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("ClientTLS file: %v", err)
		}
	}
	put(t, c.Client(t), "k", "v")

	// Built from the files, as cvpn's endpoint file names them.
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	fromFiles, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second,
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	defer fromFiles.Close()
	if got := get(t, fromFiles, "k"); got != "v" {
		t.Fatalf("k = %q, want v", got)
	}

	anon, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second,
		TLS: &tls.Config{RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := anon.Get(ctx, "k"); err == nil {
		t.Fatal("a client without a certificate read from a member that requires one")
	}
}

func waitHealthy(t *testing.T, c *Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
}

func put(t *testing.T, cli *clientv3.Client, k, v string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, k, v); err != nil {
		t.Fatalf("Put %s: %v", k, err)
	}
}

func get(t *testing.T, cli *clientv3.Client, k string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, k)
	if err != nil {
		t.Fatalf("Get %s: %v", k, err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("Get %s: %d keys", k, len(resp.Kvs))
	}
	return string(resp.Kvs[0].Value)
}

// TestMemberExitReported: a member that exits on its own (here its data directory became a
// file) ends WaitHealthy at once with an error carrying its log, instead of a wait until the
// deadline.
func TestMemberExitReported(t *testing.T) {
	c := Start(t, Options{})
	m := c.Member(0)
	m.Kill()
	if err := os.RemoveAll(m.dataDir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.dataDir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.Start()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := c.WaitHealthy(ctx)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitHealthy = %v, want the member's exit", err)
	}
	if !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "=== etcdlab: m0 start (existing)") {
		t.Fatalf("WaitHealthy error does not say the member exited or carry its log:\n%v", err)
	}
	if m.Running() {
		t.Fatal("Running after the member exited")
	}
}
