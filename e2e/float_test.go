package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

// pingTallyRE is the summary line ping prints when it ends.
var pingTallyRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// pingTally returns how many echo requests ping sent and how many replies it got.
func pingTally(out string) (sent, received int, ok bool) {
	m := pingTallyRE.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, false
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received, true
}

// clientRemote is the address the server saw a client connect from, from its "client connected"
// log line.
func (s *setup) clientRemote(user string) netip.AddrPort {
	s.t.Helper()
	re := regexp.MustCompile(`msg="client connected" user=` + regexp.QuoteMeta(user) + ` [^\n]*? remote=(\S+)`)
	m := re.FindStringSubmatch(s.srv.Output())
	if m == nil {
		s.t.Fatalf("no \"client connected\" line for %s in the server log", user)
	}
	ap, err := netip.ParseAddrPort(m[1])
	if err != nil {
		s.t.Fatalf("client connected: remote %q: %v", m[1], err)
	}
	return ap
}

// clientRestartMarks are what the stock client logs when its session ends or starts over.
var clientRestartMarks = []string{"SIGUSR1", "SIGHUP", "Restart pause", "Inactivity timeout", "connection-reset", "AUTH_FAILED", "SIGTERM"}

// checkSessionKept fails the test if the stock client's log shows its session ending or being
// built again.
func checkSessionKept(t *testing.T, name string, c *vpnClient) {
	t.Helper()
	out := c.proc.Output()
	for _, m := range clientRestartMarks {
		if strings.Contains(out, m) {
			t.Errorf("openvpn %s logged %q: its session was disturbed", name, m)
		}
	}
	if n := strings.Count(out, "Initialization Sequence Completed"); n != 1 {
		t.Errorf("openvpn %s completed initialization %d times, want once", name, n)
	}
	if c.proc.Exited() {
		t.Errorf("openvpn %s exited", name)
	}
}

// TestFloatOntoAnotherClientRefused re-sources one stock client's packets to another client's
// address and port, as a NAT that rebinds badly (or an attacker holding a profile) would. The
// client whose address it is must not notice: its session, address and pings go on, and the
// server refuses the other client's packets as a float_conflict instead of moving the session
// (the stock server refuses such a float too, multi.c). Once the re-sourcing stops, the other
// client's session, which never moved, passes traffic again.
func TestFloatOntoAnotherClientRefused(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true})
	a := s.connect("alice", netlab.ProfileOptions{})
	b := s.connect("bob", netlab.ProfileOptions{})
	aTun, bTun := s.tunAddress(a), s.tunAddress(b)
	s.ping(a, netlab.VPCHost.String())
	s.ping(b, netlab.VPCHost.String())
	aRemote, bRemote := s.clientRemote("alice"), s.clientRemote("bob")
	if aRemote.Addr() == bRemote.Addr() {
		t.Fatalf("alice and bob both connect from %s; the lab gives each client its own namespace", aRemote.Addr())
	}
	bServer := bRemote.Addr().As4()
	bServer[3] = 1 // the server's end of bob's link (netlab: 172.31.N.1)
	ctx := context.Background()

	// bob's packets will arrive on his own link carrying alice's source address: the server's
	// reverse-path filter must not drop them before cvpn sees them.
	if _, err := s.lab.Output(ctx, s.lab.Server, "sh", "-c",
		"for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done"); err != nil {
		t.Fatal(err)
	}

	// alice pings all along: before, during and after the re-sourcing (80 × 0.2 s = 16 s).
	const aPings = 80
	aPing, err := s.lab.Start("ping alice", a.ns, "ping", "-c", fmt.Sprint(aPings), "-i", "0.2", "-W", "2", netlab.VPCHost.String())
	if err != nil {
		t.Fatal(err)
	}
	// bob sends into his tunnel all along too; while re-sourced, each of his packets is a refused
	// float.
	bPing, err := s.lab.Start("ping bob", b.ns, "ping", "-i", "0.1", "-W", "1", netlab.VPCHost.String())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)

	// In bob's namespace, source-NAT his datagrams to the server to alice's exact address and
	// port. NAT is decided when conntrack first sees a flow, so the table is flushed after the
	// rule is in place, and datagrams from the server are not tracked: otherwise one arriving
	// first would create an un-NATed entry that bob's next datagram matches.
	snat := []string{"POSTROUTING", "-o", "eth0", "-p", "udp", "-d", netip.AddrFrom4(bServer).String(), "--dport", "443",
		"-j", "SNAT", "--to-source", aRemote.String()}
	notrack := []string{"PREROUTING", "-i", "eth0", "-p", "udp", "--sport", "443", "-j", "CT", "--notrack"}
	iptables := func(table, op string, rule []string) {
		t.Helper()
		args := append([]string{"iptables", "-w", "-t", table, op}, rule...)
		if _, err := s.lab.Output(ctx, b.ns, args...); err != nil {
			t.Fatal(err)
		}
	}
	iptables("raw", "-A", notrack)
	iptables("nat", "-A", snat)
	if err := netlab.FlushConntrack(b.ns); err != nil {
		t.Fatal(err)
	}
	resourced := time.Now()

	conflict := "reason=float_conflict"
	if err := s.srv.WaitFor(conflict, 5*time.Second); err != nil {
		out, _ := s.lab.Output(ctx, b.ns, "iptables", "-w", "-t", "nat", "-L", "POSTROUTING", "-v", "-n")
		// Go on: what happened to alice instead says more than this line.
		t.Errorf("bob's re-sourced packets were not refused as float_conflict: %v\nbob's NAT rule:\n%s", err, out)
	}
	// Keep bob re-sourced for 10 s: long enough for alice's pings to show any disturbance and for
	// keepalives (10 s) to pass both ways, far short of bob's ping-restart (60 s).
	time.Sleep(time.Until(resourced.Add(10 * time.Second)))
	out, err := s.lab.Output(ctx, b.ns, "iptables", "-w", "-t", "nat", "-L", "POSTROUTING", "-v", "-n", "-x")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "to:"+aRemote.String()) {
		t.Fatalf("bob's SNAT rule to %s is gone:\n%s", aRemote, out)
	}

	// Stop the re-sourcing: bob's datagrams leave with his own address again.
	iptables("nat", "-D", snat)
	if err := netlab.FlushConntrack(b.ns); err != nil {
		t.Fatal(err)
	}
	iptables("raw", "-D", notrack)

	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_ = aPing.Wait(waitCtx) // ping exits non-zero when replies are missing; the counts say how many
	sent, received, ok := pingTally(aPing.Output())
	if !ok || sent != aPings {
		t.Fatalf("alice's ping did not run to the end:\n%s", aPing.Output())
	}
	// No loss is expected; two replies of grace keep a slow machine from failing the test.
	if lost := sent - received; lost > 2 {
		t.Errorf("alice lost %d of %d pings while bob's packets came from her address", lost, sent)
	}

	srvLog := s.srv.Output()
	conflicts := regexp.MustCompile(`msg="packets dropped" reason=float_conflict [^\n]*`).FindAllString(srvLog, -1)
	if len(conflicts) == 0 {
		t.Errorf("no float_conflict drops logged:\n%s", srvLog)
	} else if !strings.Contains(conflicts[0], "from="+aRemote.String()) {
		t.Errorf("float_conflict drop not from alice's address %s: %s", aRemote, conflicts[0])
	}
	if strings.Contains(srvLog, "client floated") {
		t.Errorf("a session floated; bob's packets from alice's address must be refused:\n%s", srvLog)
	}
	for _, user := range []string{"alice", "bob"} {
		if strings.Contains(srvLog, `msg="client disconnected" user=`+user+" ") ||
			strings.Contains(srvLog, `msg="ending session" user=`+user+" ") {
			t.Errorf("the server ended %s's session:\n%s", user, srvLog)
		}
		if n := strings.Count(srvLog, `msg="client connected" user=`+user+" "); n != 1 {
			t.Errorf("%s connected %d times, want once", user, n)
		}
	}
	checkSessionKept(t, "alice", a)
	if got := s.tunAddress(a); got != aTun {
		t.Errorf("alice's tunnel address changed from %s to %s", aTun, got)
	}

	// bob's session never moved, so his traffic passes again as soon as it comes from his own
	// address.
	_ = bPing.Stop()
	pingCtx, cancelPing := context.WithTimeout(ctx, 20*time.Second)
	defer cancelPing()
	out, _ = s.lab.Output(pingCtx, b.ns, "ping", "-c", "5", "-i", "0.2", "-W", "2", netlab.VPCHost.String())
	if sent, received, ok := pingTally(out); !ok || sent != 5 || received < 4 {
		t.Errorf("bob's tunnel does not pass traffic after the re-sourcing stopped:\n%s", out)
	}
	checkSessionKept(t, "bob", b)
	if got := s.tunAddress(b); got != bTun {
		t.Errorf("bob's tunnel address changed from %s to %s", bTun, got)
	}
	if strings.Contains(s.srv.Output(), "client floated") {
		t.Errorf("bob floated after the re-sourcing stopped:\n%s", s.srv.Output())
	}
	t.Logf("alice: %d/%d pings answered; %s", received, sent, strings.Join(conflicts, "; "))
}
