package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cvpn/cvpn/bench"
	"github.com/cvpn/cvpn/bench/client"
	"github.com/cvpn/cvpn/endpoint/connlog"
	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// connLogKeys are AWS Client VPN's connection log keys, every one.
var connLogKeys = []string{
	"connection-log-type", "connection-attempt-status", "connection-reset-status",
	"connection-attempt-failure-reason", "connection-id", "client-vpn-endpoint-id",
	"transport-protocol", "connection-start-time", "connection-last-update-time", "client-ip",
	"common-name", "device-type", "device-ip", "port", "ingress-bytes", "egress-bytes",
	"ingress-packets", "egress-packets", "connection-end-time", "connection-duration-seconds",
	"posture-compliance-statuses", "username",
}

// readConnLog reads the log at path and fails on a line that is not a whole record: JSON with
// exactly AWS's keys, each a string, and a newline at the end of the file.
func readConnLog(t *testing.T, path string) []map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		t.Errorf("%s ends in a torn line: %q", path, b[max(0, len(b)-200):])
	}
	var out []map[string]string
	for i, line := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
		if len(line) == 0 && len(b) == 0 {
			break
		}
		var raw map[string]any
		if err := json.Unmarshal(line, &raw); err != nil {
			t.Errorf("%s line %d is torn or not JSON (%v): %q", path, i+1, err, line)
			continue
		}
		rec := map[string]string{}
		for k, v := range raw {
			s, ok := v.(string)
			if !ok {
				t.Errorf("%s line %d: %s is %v, not a string", path, i+1, k, v)
			}
			rec[k] = s
		}
		for _, k := range connLogKeys {
			if _, ok := rec[k]; !ok {
				t.Errorf("%s line %d lacks %s", path, i+1, k)
			}
		}
		if len(rec) != len(connLogKeys) {
			t.Errorf("%s line %d has %d keys, want AWS's %d", path, i+1, len(rec), len(connLogKeys))
		}
		out = append(out, rec)
	}
	return out
}

// churnConn is one Go client connection of the churn as the client saw it.
type churnConn struct {
	cn        string
	port      uint16
	connected time.Time // Connect returned
	done      time.Time // Close returned (zero: still up at the kill)
}

// TestConnectionLogSurvivesKill churns Go clients (connect, a datagram, leave) and a client of a
// foreign CA (refused) against cvpn writing its connection log, kills cvpn with SIGKILL in the
// middle, and checks the log: every line a whole record with AWS's keys; every connection that
// ended more than 100 ms before the kill has its connect record and its final record (end time,
// duration, counters); every connection up more than 100 ms before the kill has its connect
// record; the foreign client's attempts are there with their reason. cvpn report usage reads
// the log afterwards.
func TestConnectionLogSurvivesKill(t *testing.T) {
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true,
		Extra: "connection_log: {enabled: true, file: connections.log}\n"})
	logPath := filepath.Join(filepath.Dir(s.ep.Config), "connections.log")
	ns, server, err := s.lab.AddClient()
	if err != nil {
		t.Fatal(err)
	}
	const workers = 12
	certs, err := bench.Identities(s.ep.CA, workers)
	if err != nil {
		t.Fatal(err)
	}
	foreignCA, err := pki.NewCA("foreign CA", pki.ECDSAP256, 48*time.Hour, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	foreignID, err := pki.IssueClient(foreignCA, "foreigner", nil, pki.ECDSAP256, 24*time.Hour, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := foreignID.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	key, err := tlscrypt.ParseStaticKey(s.ep.TLSKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.ep.CA.CertPEM)
	serverAddr := netip.AddrPortFrom(server, 443)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu       sync.Mutex
		conns    []*churnConn
		failures []string
		refused  int
	)
	dial := func(c *churnConn, cert tls.Certificate) client.Config {
		return client.Config{Server: serverAddr, Certificate: cert, RootCAs: roots, TLSCrypt: key,
			Dial: func(context.Context) (net.PacketConn, error) {
				pc, err := netlab.ListenUDPIn(ns)
				if err == nil {
					c.port = uint16(pc.LocalAddr().(*net.UDPAddr).Port)
				}
				return pc, err
			}}
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			cn := fmt.Sprintf("bench-%d", w)
			for ctx.Err() == nil {
				c := &churnConn{cn: cn}
				cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
				sess, err := client.Connect(cctx, dial(c, certs[w]))
				ccancel()
				if err != nil {
					if ctx.Err() == nil {
						mu.Lock()
						failures = append(failures, fmt.Sprintf("%s: %v", cn, err))
						mu.Unlock()
					}
					return
				}
				c.connected = time.Now()
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				src := sess.Address().Addr()
				_ = sess.WritePacket(netlab.AppendUDP4(nil, netip.AddrPortFrom(src, 40000), netip.AddrPortFrom(netlab.VPCHost, 9), []byte("churn")))
				if w == 0 { // one connection stays up until the kill
					<-ctx.Done()
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Duration(rand.IntN(300)) * time.Millisecond):
				}
				if ctx.Err() != nil {
					return // cvpn is gone: no goodbye is answered
				}
				_ = sess.Close()
				mu.Lock()
				c.done = time.Now()
				mu.Unlock()
			}
		})
	}
	wg.Go(func() { // a client of another CA, refused again and again
		for ctx.Err() == nil {
			c := &churnConn{}
			cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := client.Connect(cctx, dial(c, foreign))
			ccancel()
			if err != nil && ctx.Err() == nil {
				mu.Lock()
				refused++
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	})

	// Churn until enough connections have come and gone (a loaded machine handshakes slower),
	// then kill cvpn in the middle of it.
	const wantEnded = 60
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		mu.Lock()
		n := 0
		for _, c := range conns {
			if !c.done.IsZero() {
				n++
			}
		}
		mu.Unlock()
		if n >= wantEnded+10 {
			break
		}
	}
	killAt := time.Now()
	s.srv.Kill()
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(failures) > 0 {
		t.Errorf("connections failed before the kill: %v", failures)
	}

	recs := readConnLog(t, logPath)
	type clientKey struct {
		cn   string
		port string
	}
	connects, finals := map[clientKey]int{}, map[clientKey]int{}
	connectIDs := map[string]bool{}
	var failed []map[string]string
	for _, r := range recs {
		k := clientKey{r["common-name"], r["port"]}
		switch {
		case r["connection-attempt-status"] == "failed":
			failed = append(failed, r)
		case r["connection-end-time"] == connlog.NA:
			connects[k]++
			connectIDs[r["connection-id"]] = true
		default:
			finals[k]++
			if !connectIDs[r["connection-id"]] {
				t.Errorf("final record of %s without its connect record: %v", r["connection-id"], r)
			}
			for _, f := range []string{"connection-duration-seconds", "ingress-bytes", "egress-bytes", "ingress-packets", "egress-packets"} {
				if r[f] == connlog.NA || r[f] == "" {
					t.Errorf("final record without %s: %v", f, r)
				}
			}
			if r["ingress-packets"] == "0" {
				t.Errorf("final record counts no packet from the client (it sent a datagram): %v", r)
			}
		}
	}
	cutoff := killAt.Add(-100 * time.Millisecond)
	var ended, up int
	for _, c := range conns {
		k := clientKey{c.cn, fmt.Sprint(c.port)}
		if !c.connected.IsZero() && c.connected.Before(cutoff) {
			up++
			if connects[k] == 0 {
				t.Errorf("%s from port %d, connected %v before the kill, has no connect record", c.cn, c.port, killAt.Sub(c.connected))
			} else {
				connects[k]--
			}
		}
		if !c.done.IsZero() && c.done.Before(cutoff) {
			ended++
			if finals[k] == 0 {
				t.Errorf("%s from port %d, ended %v before the kill, has no final record", c.cn, c.port, killAt.Sub(c.done))
			} else {
				finals[k]--
			}
		}
	}
	if ended < wantEnded {
		t.Errorf("only %d connections ended in the churn; the test wants many", ended)
	}
	if refused == 0 || len(failed) == 0 {
		t.Errorf("the foreign client was refused %d times; %d failed records", refused, len(failed))
	}
	for _, r := range failed {
		if r["common-name"] != "foreigner" || !strings.HasPrefix(r["connection-attempt-failure-reason"], "unknown_ca") {
			t.Errorf("failed record %v, want the foreigner refused for an unknown CA", r)
		}
	}
	t.Logf("%d records; %d connections up and %d ended more than 100 ms before the kill, all logged; %d refused attempts logged",
		len(recs), up, ended, len(failed))

	// The usage report reads the log the kill left.
	out, err := exec.Command(cvpnBin, "report", "usage", "--config", s.ep.Config, "--json").CombinedOutput()
	if err != nil {
		t.Fatalf("cvpn report usage: %v\n%s", err, out)
	}
	var rep connlog.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	sessions := 0
	for _, u := range rep.Users {
		if strings.HasPrefix(u.User, "bench-") {
			sessions += u.Sessions
		}
	}
	if sessions < up || rep.Skipped != 0 {
		t.Errorf("report: %d sessions of the churn (want at least %d), %d lines skipped", sessions, up, rep.Skipped)
	}
}

// TestConnectionLogRotateAndStop: logrotate moves the log and sends SIGUSR1; the connect record
// stays in the moved file, the records after go to a new file at the path, and SIGTERM writes
// the final records of the sessions it ends before cvpn exits.
func TestConnectionLogRotateAndStop(t *testing.T) {
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true,
		Extra: "connection_log: {enabled: true, file: connections.log}\n"})
	logPath := filepath.Join(filepath.Dir(s.ep.Config), "connections.log")
	c := s.connect("rotated", netlab.ProfileOptions{Proto: "udp"})
	if out, err := s.lab.Output(context.Background(), c.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", netlab.VPCHost.String()); err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	waitLines := func(path string, n int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if b, _ := os.ReadFile(path); bytes.Count(b, []byte("\n")) >= n {
				return
			}
		}
		b, _ := os.ReadFile(path)
		t.Fatalf("%s: want %d lines:\n%s", path, n, b)
	}
	waitLines(logPath, 1)
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := s.srv.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if err := s.srv.WaitFor("connection log reopened", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(logPath); err != nil {
		t.Fatalf("no new log after SIGUSR1: %v", err)
	}
	if err := s.srv.Stop(); err != nil { // SIGTERM
		t.Logf("cvpn exit: %v", err)
	}
	old, cur := readConnLog(t, logPath+".1"), readConnLog(t, logPath)
	if len(old) != 1 || old[0]["common-name"] != "rotated" || old[0]["connection-end-time"] != connlog.NA {
		t.Errorf("moved log: %v, want the connect record", old)
	}
	if len(cur) != 1 || cur[0]["connection-id"] != old[0]["connection-id"] || cur[0]["connection-end-time"] == connlog.NA ||
		cur[0]["ingress-packets"] == "0" || cur[0]["egress-packets"] == "0" {
		t.Errorf("new log: %v, want the final record of the same connection with its counters", cur)
	}
}
