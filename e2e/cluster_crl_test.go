package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/pki"
)

// TestClusterRevocation: `cvpn client revoke` on node1's host (with node1's file) reaches a
// session on node3 within seconds. Each node has its own CRL file, as on three hosts, so the
// revocation can only reach node3 through etcd: node3 writes the cluster's CRL to its own file,
// and its CRL watcher puts it in force and ends the revoked client's session; the other
// client on node3 keeps its own.
func TestClusterRevocation(t *testing.T) {
	t.Parallel()
	c := newClusterLab(t, clusterOptions{Clients: 2})
	dir := c.ep.Dir
	// The CA key where `cvpn client revoke` looks for it (beside client_root_ca_file).
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), c.ep.CA.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	empty, err := pki.NewCRL(c.ep.CA, time.Now(), 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	crlFiles := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		crlFiles[i] = filepath.Join(dir, n.name+"-crl.pem")
		if err := pki.WriteCRL(empty, crlFiles[i]); err != nil {
			t.Fatal(err)
		}
		text, err := os.ReadFile(n.file)
		if err != nil {
			t.Fatal(err)
		}
		const cert = "certificate: {client_root_ca_file: ca.crt}"
		if !strings.Contains(string(text), cert) {
			t.Fatalf("%s has no %q line:\n%s", n.file, cert, text)
		}
		text = []byte(strings.Replace(string(text), cert,
			fmt.Sprintf("certificate: {client_root_ca_file: ca.crt, crl_file: %s}", crlFiles[i]), 1))
		if err := os.WriteFile(n.file, text, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.startAll()

	// Two clients on node3; the victim's certificate is in the clients directory, where
	// `cvpn client revoke` finds it.
	victim, cert := connectKeepingCert(c, "victim", 0, 2, filepath.Join(dir, "clients"))
	bystander := c.connect("bystander", 1, 2, netlab.ProfileOptions{})
	for _, cl := range []*clusterClient{victim, bystander} {
		if err := c.ping(cl); err != nil {
			t.Fatal(err)
		}
	}
	c.waitFor("both sessions on node3 in the cluster-wide list", 15*time.Second, func() bool {
		on3 := 0
		for _, conn := range c.connections(0) {
			if conn.Cvpn.Node == c.nodes[2].name {
				on3++
			}
		}
		return on3 == 2
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	out, err := c.lab.Command(ctx, c.lab.Admin, cvpnBin, "client", "revoke", "--config", c.nodes[0].file, "victim").CombinedOutput()
	cancel()
	if err != nil {
		t.Fatalf("cvpn client revoke on node1's host: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`stored the CRL in the cluster \(etcd revision \d+\)`).Match(out) {
		t.Errorf("cvpn client revoke does not say it stored the CRL in the cluster:\n%s", out)
	}

	c.waitFor("the victim's session to leave the cluster-wide list", 10*time.Second, func() bool {
		for _, conn := range c.connections(1) {
			if conn.Username == "victim" {
				return false
			}
		}
		return true
	})
	// node3 learnt it through etcd: its own CRL file revokes the victim now (and so does
	// node2's).
	for i, f := range crlFiles {
		set, err := pki.LoadCRLSet(f, []*x509.Certificate{c.ep.CA.Cert}, time.Now())
		if err != nil {
			t.Fatalf("%s: %v", c.nodes[i].name, err)
		}
		if !set.IsRevoked(cert) {
			t.Errorf("%s's CRL file does not revoke the victim", c.nodes[i].name)
		}
	}
	if count(c.nodes[2].proc, "CRL from the cluster written to the CRL file") == 0 {
		t.Error("node3 does not say it wrote the cluster's CRL to its file")
	}
	// The other client on node3 is undisturbed.
	if err := c.ping(bystander); err != nil {
		t.Error(err)
	}
	live := false
	for _, conn := range c.connections(2) {
		live = live || conn.Username == "bystander"
	}
	if !live {
		t.Error("the bystander's session on node3 ended too")
	}
}

// connectKeepingCert connects a stock client as connect does, and keeps its certificate in
// clientsDir as cvpn client issue would, so that `cvpn client revoke` finds it.
func connectKeepingCert(c *clusterLab, name string, j, first int, clientsDir string) (*clusterClient, *x509.Certificate) {
	c.t.Helper()
	remotes := c.lab.NodePublic()
	o := netlab.ProfileOptions{Remotes: append(remotes[first:len(remotes):len(remotes)], remotes[:first]...), PollTimeout: 5}
	profile, err := c.ep.ClientProfile(name, netip.Addr{}, o)
	if err != nil {
		c.t.Fatal(err)
	}
	text, err := os.ReadFile(profile)
	if err != nil {
		c.t.Fatal(err)
	}
	certPEM := regexpFind(`(?s)<cert>\n(.*?)</cert>`, string(text))
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil {
		c.t.Fatalf("no certificate in the profile:\n%s", text)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := os.MkdirAll(clientsDir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(clientsDir, name+".crt"), []byte(certPEM), 0o644); err != nil {
		c.t.Fatal(err)
	}
	ns := c.lab.Clients[j].NS
	p, err := c.lab.Start("openvpn "+name, ns, "openvpn", "--config", profile)
	if err != nil {
		c.t.Fatal(err)
	}
	cl := &clusterClient{name: name, ns: ns, proc: p}
	c.clients = append(c.clients, cl)
	if err := p.WaitFor("Initialization Sequence Completed", 60*time.Second); err != nil {
		c.t.Fatalf("%s: %v\n%s", name, err, p.Output())
	}
	return cl, cert
}
