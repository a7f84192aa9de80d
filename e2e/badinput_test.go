package e2e

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/pki"
)

// TestBadInputLeavesClientsAlone refuses a client from another CA and a flood of garbage and
// forged datagrams while a connected client keeps passing traffic; every refusal is counted by
// reason and the log stays short.
func TestBadInputLeavesClientsAlone(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	alice := s.connect("alice", netlab.ProfileOptions{})
	s.ping(alice, netlab.VPCHost.String())

	// A client whose certificate comes from another CA is refused in the TLS handshake.
	otherCA, err := pki.NewCA("someone else's CA", pki.ECDSAP256, 48*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	mallory := s.start("mallory", netlab.ProfileOptions{CA: otherCA})
	if err := s.srv.WaitFor(`msg="authentication refused"`, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(mallory.proc.Output(), "Initialization Sequence Completed") {
		t.Fatal("a client with a certificate from another CA got connected")
	}
	mallory.proc.Kill()

	// A flood of bad datagrams from another host, while alice pings.
	ns, server, err := s.lab.AddClient()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := netlab.ListenUDPIn(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	to := &net.UDPAddr{IP: server.AsSlice(), Port: 443}
	pingDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := s.lab.Output(ctx, alice.ns, "ping", "-c", "20", "-i", "0.1", "-W", "2", netlab.VPCHost.String())
		if err == nil && !strings.Contains(out, " 0% packet loss") {
			err = &pingLoss{out}
		}
		pingDone <- err
	}()
	const perKind = 3000
	kinds := badDatagrams()
	sent := 0
	for i := 0; i < perKind; i++ {
		for _, gen := range kinds {
			if _, err := conn.WriteToUDP(gen(), to); err == nil {
				sent++
			}
		}
		if i%200 == 0 {
			time.Sleep(5 * time.Millisecond) // keep within the kernel's socket buffers
		}
	}
	if err := <-pingDone; err != nil {
		t.Fatalf("alice's traffic was disturbed by the flood: %v", err)
	}
	s.ping(alice, netlab.VPCHost.String())

	if err := s.srv.Stop(); err != nil {
		t.Fatalf("cvpn exited with %v", err)
	}
	out := s.srv.Output()
	drops := parseDrops(t, out)
	for _, reason := range []string{"malformed", "control_auth_failed", "key_method_1", "no_session", "tls_handshake_failed"} {
		if drops[reason] == 0 {
			t.Errorf("no drop counted for reason %s; drops = %v", reason, drops)
		}
	}
	var total int
	for _, n := range drops {
		total += n
	}
	if total < sent/2 {
		t.Errorf("counted %d drops for %d bad datagrams sent", total, sent)
	}
	if n := strings.Count(out, `msg="packets dropped"`); n > 40 {
		t.Errorf("%d 'packets dropped' log lines for %d bad datagrams: the log is not rate limited", n, sent)
	}
	t.Logf("sent %d bad datagrams; drops by reason: %v; %d log lines", sent, drops, strings.Count(out, `msg="packets dropped"`))
}

type pingLoss struct{ out string }

func (p *pingLoss) Error() string { return "ping lost packets:\n" + p.out }

// badDatagrams returns generators of the kinds of bad input a server on the internet gets.
func badDatagrams() []func() []byte {
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return b
	}
	return []func() []byte{
		// random bytes of random length
		func() []byte { return random(1 + int(random(1)[0])) },
		// truncated hard resets
		func() []byte { return append([]byte{0x38}, random(5)...) },
		// hard resets with a forged tls-crypt tag
		func() []byte {
			b := append([]byte{0x38}, random(8)...)
			b = binary.BigEndian.AppendUint32(b, 1)
			b = binary.BigEndian.AppendUint32(b, uint32(time.Now().Unix()))
			return append(b, random(32+14)...)
		},
		// key-method 1 resets
		func() []byte { return append([]byte{0x08}, random(13)...) },
		// data packets for random peer-ids
		func() []byte { return append([]byte{0x48}, random(60)...) },
		// control packets for sessions that do not exist
		func() []byte { return append([]byte{0x20}, random(80)...) },
	}
}

var dropsRE = regexp.MustCompile(`drops="?map\[([^\]]*)\]`)

// parseDrops reads the drop counters cvpn logs when it stops.
func parseDrops(t *testing.T, out string) map[string]int {
	t.Helper()
	m := dropsRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("cvpn did not log its drop counters at shutdown:\n%s", out)
	}
	drops := map[string]int{}
	for _, kv := range strings.Fields(m[1]) {
		k, v, _ := strings.Cut(kv, ":")
		n, _ := strconv.Atoi(v)
		drops[k] = n
	}
	return drops
}

// TestSilentClientIsReaped kills a client without a goodbye: after ping_restart_seconds the
// server drops the session and returns its address.
func TestSilentClientIsReaped(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true, Keepalive: "{ping_seconds: 1, ping_restart_seconds: 3}"})
	c := s.connect("alice", netlab.ProfileOptions{})
	s.ping(c, netlab.VPCHost.String())
	c.proc.Kill()
	if err := s.srv.WaitFor("reason=\"ping-restart", 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`client disconnected.*address=10\.2\.0\.\d+ reason="ping-restart`).MatchString(s.srv.Output()) {
		t.Fatalf("reap did not release the client's address:\n%s", s.srv.Output())
	}
}
