package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/endpoint/connlog"
	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/pki"
)

// adminMetricsAddr is where the admin test's endpoint serves /metrics, inside its namespace.
const adminMetricsAddr = "127.0.0.1:9464"

// TestOperateConnections is the operator's path with stock clients: two connect and
// `cvpn connections list --json` shows both in AWS's shape with counters that grow with
// traffic; `cvpn connections terminate --username` halts one (its openvpn process exits instead
// of retrying) while the other keeps pinging; the terminated connection is listed as
// terminated; the connection log holds the attempts, a foreign CA's refused attempt with its
// reason and the terminated connection's final record; the metrics count one active connection.
func TestOperateConnections(t *testing.T) {
	t.Parallel()
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true,
		Extra: "connection_log: {enabled: true, file: connections.log}\nmetrics: {listen_address: \"" + adminMetricsAddr + "\"}\n"})
	alice := s.connect("alice", netlab.ProfileOptions{})
	bob := s.connect("bob", netlab.ProfileOptions{})
	s.ping(alice, netlab.VPCHost.String())
	s.ping(bob, netlab.VPCHost.String())

	first := s.listConnections()
	if len(first) != 2 {
		t.Fatalf("%d connections listed, want 2: %+v", len(first), first)
	}
	awsFields := []string{"ClientIp", "ClientVpnEndpointId", "CommonName", "ConnectionEndTime", "ConnectionEstablishedTime",
		"ConnectionId", "CvpnExtensions", "EgressBytes", "EgressPackets", "IngressBytes", "IngressPackets",
		"PostureComplianceStatuses", "Status", "Timestamp", "Username"}
	idRE := regexp.MustCompile(`^cvpn-connection-[0-9a-f]{17}$`)
	byUser := map[string]map[string]any{}
	for _, c := range first {
		if got := sortedKeys(c); strings.Join(got, ",") != strings.Join(awsFields, ",") {
			t.Errorf("fields %q, want %q", got, awsFields)
		}
		byUser[c["Username"].(string)] = c
		if !idRE.MatchString(c["ConnectionId"].(string)) || c["Status"].(map[string]any)["Code"] != "active" ||
			c["ConnectionEndTime"] != "-" || !strings.HasPrefix(c["ClientVpnEndpointId"].(string), "cvpn-endpoint-") {
			t.Errorf("connection %v", c)
		}
		for _, k := range []string{"IngressBytes", "EgressBytes", "IngressPackets", "EgressPackets"} {
			if n, err := strconv.ParseUint(c[k].(string), 10, 64); err != nil || n == 0 {
				t.Errorf("%s of %s = %#v, want a positive count in a string", k, c["Username"], c[k])
			}
		}
		ext := c["CvpnExtensions"].(map[string]any)
		if ext["TransportProtocol"] != "udp" || ext["DeviceIp"] == "" || ext["DevicePort"].(float64) == 0 || ext["Cipher"] == "" {
			t.Errorf("extensions %v", ext)
		}
	}
	if byUser["alice"] == nil || byUser["bob"] == nil {
		t.Fatalf("listed %v, want alice and bob", first)
	}
	// The API as the README's curl examples call it, with paging: both fit a page of 5, so no
	// NextToken; a MaxResults below AWS's 5 is refused naming the field.
	var page struct {
		Connections []map[string]any
		NextToken   *string
	}
	if err := json.Unmarshal([]byte(s.adminCurl("DescribeClientVpnConnections", `{"MaxResults": 5}`, "200")), &page); err != nil ||
		len(page.Connections) != 2 || page.NextToken != nil {
		t.Errorf("a page of 5: %v, %d connections, NextToken %v", err, len(page.Connections), page.NextToken)
	}
	if out := s.adminCurl("DescribeClientVpnConnections", `{"MaxResults": 4}`, "400"); !strings.Contains(out, "InvalidParameterValue") || !strings.Contains(out, "MaxResults") {
		t.Errorf("MaxResults 4: %s", out)
	}
	aliceAddr := strings.Split(s.tunAddress(alice), "/")[0]
	if byUser["alice"]["ClientIp"] != aliceAddr {
		t.Errorf("alice's ClientIp %v, her tun0 has %s", byUser["alice"]["ClientIp"], aliceAddr)
	}

	// Traffic grows the counters.
	s.ping(alice, netlab.VPCHost.String())
	s.ping(bob, netlab.VPCHost.String())
	for _, c := range s.listConnections() {
		before := byUser[c["Username"].(string)]
		for _, k := range []string{"IngressBytes", "EgressBytes", "IngressPackets", "EgressPackets"} {
			was, _ := strconv.ParseUint(before[k].(string), 10, 64)
			now, _ := strconv.ParseUint(c[k].(string), 10, 64)
			if now <= was {
				t.Errorf("%s of %s went from %d to %d after pings", k, c["Username"], was, now)
			}
		}
	}

	// A client of a foreign CA is refused (for the connection log).
	otherCA, err := pki.NewCA("someone else's CA", pki.ECDSAP256, 48*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	mallory := s.start("mallory", netlab.ProfileOptions{CA: otherCA})
	if err := s.srv.WaitFor(`msg="authentication refused"`, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	mallory.proc.Kill()

	// Terminate bob by username while alice pings on.
	pinging, err := s.lab.Start("ping alice", alice.ns, "ping", "-i", "0.2", "-W", "1", netlab.VPCHost.String())
	if err != nil {
		t.Fatal(err)
	}
	out := s.cvpn("connections", "terminate", "--config", s.ep.Config, "--username", "bob")
	bobID := byUser["bob"]["ConnectionId"].(string)
	if strings.TrimSpace(out) != bobID+": active -> terminating" {
		t.Errorf("terminate printed %q, want %q", out, bobID+": active -> terminating")
	}
	// At once bob is terminating (or already terminated), never missing from the list.
	listed := false
	for _, c := range s.listConnections() {
		if c["ConnectionId"] == bobID {
			code := c["Status"].(map[string]any)["Code"]
			listed = code == "terminating" || code == "terminated"
		}
	}
	if !listed {
		t.Errorf("right after terminate, bob is not listed as terminating or terminated")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = bob.proc.Wait(ctx)
	if ctx.Err() != nil {
		t.Fatalf("bob's openvpn still runs 30 s after HALT:\n%s", netlab.Tail(bob.proc.Output(), 2000))
	}
	// Alice still gets every answer.
	s.ping(alice, netlab.VPCHost.String())
	if pinging.Exited() {
		t.Errorf("alice's ping ended:\n%s", pinging.Output())
	}
	pinging.Stop()
	if out := pinging.Output(); !strings.Contains(out, "bytes from") {
		t.Errorf("alice's steady ping got no answer:\n%s", out)
	}

	// Bob is listed as terminated (the teardown ends within seconds), alice as active.
	var bobAfter, aliceAfter map[string]any
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		bobAfter, aliceAfter = nil, nil
		for _, c := range s.listConnections() {
			switch c["ConnectionId"] {
			case bobID:
				bobAfter = c
			case byUser["alice"]["ConnectionId"]:
				aliceAfter = c
			}
		}
		if bobAfter != nil && bobAfter["Status"].(map[string]any)["Code"] == "terminated" {
			break
		}
	}
	if bobAfter == nil || bobAfter["Status"].(map[string]any)["Code"] != "terminated" || bobAfter["ConnectionEndTime"] == "-" {
		t.Errorf("bob after terminate: %v", bobAfter)
	}
	if aliceAfter == nil || aliceAfter["Status"].(map[string]any)["Code"] != "active" {
		t.Errorf("alice after terminate: %v", aliceAfter)
	}
	// Bob does not come back by himself.
	time.Sleep(2 * time.Second)
	for _, c := range s.listConnections() {
		if c["Username"] == "bob" && c["ConnectionId"] != bobID {
			t.Errorf("bob reconnected: %v", c)
		}
	}

	// The connection log: alice's and bob's attempts, mallory's refusal with its reason, bob's
	// final record.
	logPath := filepath.Join(s.ep.Dir, "connections.log")
	var records []connlog.Record
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		records = readConnectionLog(t, logPath)
		if hasRecord(records, func(r connlog.Record) bool { return r.ConnectionID == bobID && r.Final() }) {
			break
		}
	}
	for _, want := range []struct {
		what string
		ok   func(connlog.Record) bool
	}{
		{"alice's attempt", func(r connlog.Record) bool {
			return r.CommonName == "alice" && r.AttemptStatus == connlog.StatusSuccess
		}},
		{"bob's attempt", func(r connlog.Record) bool {
			return r.ConnectionID == bobID && r.AttemptStatus == connlog.StatusSuccess && r.EndTime == connlog.NA
		}},
		{"mallory's refusal", func(r connlog.Record) bool {
			return r.AttemptStatus == connlog.StatusFailed && strings.HasPrefix(r.FailureReason, "unknown_ca")
		}},
		{"bob's final record", func(r connlog.Record) bool {
			n, _ := strconv.ParseUint(r.IngressBytes, 10, 64)
			return r.ConnectionID == bobID && r.Final() && n > 0 && r.DurationSeconds != connlog.NA
		}},
	} {
		if !hasRecord(records, want.ok) {
			t.Errorf("the connection log lacks %s:\n%s", want.what, mustReadFile(t, logPath))
		}
	}

	// The metrics: one active connection.
	var scrape string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		scrape, _ = s.lab.Output(context.Background(), s.lab.Server, "curl", "-sS", "http://"+adminMetricsAddr+"/metrics")
		if regexp.MustCompile(`(?m)^cvpn_active_connections 1$`).MatchString(scrape) {
			break
		}
	}
	if !regexp.MustCompile(`(?m)^cvpn_active_connections 1$`).MatchString(scrape) {
		t.Errorf("no cvpn_active_connections 1 in the scrape:\n%s", scrape)
	}

	// cvpn status sums it up.
	status := s.cvpn("status", "--config", s.ep.Config)
	for _, want := range []string{"available", "udp 0.0.0.0:443", "1 active (1 users)", "1 of 1021 addresses in use"} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %q:\n%s", want, status)
		}
	}
}

// listConnections runs `cvpn connections list --json` and returns its connections.
func (s *setup) listConnections() []map[string]any {
	s.t.Helper()
	out := s.cvpn("connections", "list", "--config", s.ep.Config, "--json")
	var resp struct{ Connections []map[string]any }
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&resp); err != nil {
		s.t.Fatalf("connections list --json: %v in\n%s", err, out)
	}
	return resp.Connections
}

// adminCurl posts body to the admin API's action with curl, as the README shows, and returns
// the response body; it fails the test unless curl succeeds with HTTP status code.
func (s *setup) adminCurl(action, body, code string) string {
	s.t.Helper()
	out, err := exec.Command("curl", "-sS", "-w", "\n%{http_code}", "--unix-socket", s.ep.AdminSocket, "-X", "POST",
		"http://cvpn/"+action, "-d", body).CombinedOutput()
	text := strings.TrimSpace(string(out))
	i := strings.LastIndexByte(text, '\n') // the status code is the last line
	resp, status := text[:max(i, 0)], text[i+1:]
	if err != nil || status != code {
		s.t.Fatalf("curl %s %s: %v, status %s, want %s\n%s", action, body, err, status, code, out)
	}
	return resp
}

// cvpn runs the cvpn binary with args and returns its stdout; it fails the test on a non-zero
// exit.
func (s *setup) cvpn(args ...string) string {
	s.t.Helper()
	cmd := exec.Command(cvpnBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		s.t.Fatalf("cvpn %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func sortedKeys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// readConnectionLog parses every line of the log; a line that is not a whole record fails.
func readConnectionLog(t *testing.T, path string) []connlog.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rs []connlog.Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r connlog.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("connection log line %q: %v", sc.Text(), err)
		}
		rs = append(rs, r)
	}
	return rs
}

func hasRecord(rs []connlog.Record, ok func(connlog.Record) bool) bool {
	for _, r := range rs {
		if ok(r) {
			return true
		}
	}
	return false
}

func mustReadFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
