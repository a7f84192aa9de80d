package e2e

// End-to-end tests of the client-connect handler (client_connect_handler, AWS's
// ClientConnectOptions): the stock openvpn client with a certificate profile against cvpn whose
// handler is a small shell script the test writes. They check what the handler is sent (AWS's
// schema v2 request), what the client is told (AUTH_FAILED,<message>), and what the connection
// log records (posture-compliance-statuses, or AWS's failure reason), for an allowing, a
// denying, a hanging, a crashing and a babbling handler; and that a handshake waiting for its
// handler holds up neither other clients' handshakes nor their traffic.

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

// handlerFailureMessage is what a client is told when the handler fails rather than denies
// (connecthandler.DefaultFailureMessage, AWS's wording).
const handlerFailureMessage = "Error establishing connection. Please contact your administrator."

// handlerLab is a cvpn endpoint with a command client-connect handler and a connection log.
type handlerLab struct {
	*setup
	dir     string // the handler's directory: the script, the requests it got, its markers
	logPath string // the connection log
}

// newHandlerLab writes a handler script that appends the request line it reads on its standard
// input to dir/requests and then runs body (a POSIX shell fragment; $req holds the request and
// $DIR the directory), and starts cvpn with it as client_connect_handler.
func newHandlerLab(t *testing.T, body string, timeoutSeconds int) *handlerLab {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "connect-handler.sh")
	text := fmt.Sprintf("#!/bin/sh\nDIR=%s\nIFS= read -r req\nprintf '%%s\\n' \"$req\" >> \"$DIR/requests\"\n%s\n", dir, body)
	if err := os.WriteFile(script, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	s := newSetup(t, netlab.EndpointOptions{TLSCrypt: true, Extra: fmt.Sprintf(
		"connection_log: {enabled: true, file: connections.log}\n"+handlerMetricsConfig+
			"client_connect_handler: {command: [%s, --from-cvpn], timeout_seconds: %d}\n", script, timeoutSeconds)})
	noRaces(t, s)
	if err := s.srv.WaitFor("metrics listening", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return &handlerLab{setup: s, dir: dir, logPath: filepath.Join(filepath.Dir(s.ep.Config), "connections.log")}
}

// handlerMetricsConfig has cvpn serve /metrics in its namespace, at metricsAddr.
var handlerMetricsConfig = "metrics: {listen_address: \"" + metricsAddr.String() + "\"}\n"

// checkMetrics scrapes cvpn's /metrics and checks the client-connect handler's series:
// cvpn_client_connect_handler_calls_total by outcome is calls (every outcome of
// connecthandler.Outcomes exported, those not in calls at 0), the duration histogram counted
// every call, and cvpn_authentication_failures_total counted each refusal under the handler's
// reason.
func (h *handlerLab) checkMetrics(calls map[string]int) {
	h.t.Helper()
	resp, err := httpIn(h.lab.Server).Get("http://" + metricsAddr.String() + "/metrics")
	if err != nil {
		h.t.Fatalf("scraping cvpn's metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	samples := map[string]string{}
	for _, line := range strings.Split(string(body), "\n") {
		if name, value, ok := strings.Cut(line, " "); ok && !strings.HasPrefix(line, "#") {
			samples[name] = value
		}
	}
	outcomes := []string{"allowed", "denied", "client-connect-handler-timed-out", "client-connect-handler-other-execution-error",
		"client-connect-handler-throttled", "client-connect-handler-invalid-response", "client-connect-handler-service-error"}
	total := 0
	for _, o := range outcomes {
		total += calls[o]
		series := fmt.Sprintf(`cvpn_client_connect_handler_calls_total{outcome=%q}`, o)
		if got, ok := samples[series]; !ok || got != strconv.Itoa(calls[o]) {
			h.t.Errorf("%s = %q (exported: %v), want %d", series, got, ok, calls[o])
		}
		if o == "allowed" {
			continue
		}
		reason := o
		if o == "denied" {
			reason = "client-connect-failed"
		}
		series = fmt.Sprintf(`cvpn_authentication_failures_total{reason=%q}`, reason)
		if got, want := samples[series], strconv.Itoa(calls[o]); calls[o] > 0 && got != want {
			h.t.Errorf("%s = %q, want %s", series, got, want)
		}
	}
	if got := samples["cvpn_client_connect_handler_duration_seconds_count"]; got != strconv.Itoa(total) {
		h.t.Errorf("cvpn_client_connect_handler_duration_seconds_count = %q, want %d calls", got, total)
	}
}

// noRaces fails the test if cvpn, built with CVPN_E2E_RACE=1, reported a data race by the time
// the test ends.
func noRaces(t *testing.T, s *setup) {
	t.Cleanup(func() {
		if out := s.srv.Output(); strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("cvpn reported a data race:\n%s", out)
		}
	})
}

// requests returns the requests the handler has been sent so far, decoded; a request that is
// not a JSON object of strings fails the test.
func (h *handlerLab) requests() []map[string]string {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.dir, "requests"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		h.t.Fatal(err)
	}
	var out []map[string]string
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		var raw map[string]any
		if err := json.Unmarshal([]byte(line), &raw); err != nil {
			h.t.Fatalf("the handler got a request that is not a JSON object (%v): %q", err, line)
		}
		req := map[string]string{}
		for k, v := range raw {
			s, ok := v.(string)
			if !ok {
				h.t.Errorf("request field %s is %T %v, want a string (AWS's schema v2): %s", k, v, v, line)
			}
			req[k] = s
		}
		out = append(out, req)
	}
	return out
}

// requestOf returns the one request the handler got for common name cn.
func (h *handlerLab) requestOf(cn string) map[string]string {
	h.t.Helper()
	var found []map[string]string
	for _, r := range h.requests() {
		if r["common-name"] == cn {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		h.t.Fatalf("the handler got %d requests for %s, want 1: %v", len(found), cn, h.requests())
	}
	return found[0]
}

// waitRecord waits up to 15 s for a connection-log record for cn that match accepts, and
// returns it. Only whole lines are read, so a record being written is picked up on a later
// look; the record found must carry AWS's keys.
func (h *handlerLab) waitRecord(cn string, what string, match func(map[string]string) bool) map[string]string {
	h.t.Helper()
	var recs []map[string]string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(h.logPath)
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			b = b[:i]
		} else {
			continue
		}
		recs = recs[:0]
		for _, line := range bytes.Split(b, []byte("\n")) {
			var rec map[string]string
			if err := json.Unmarshal(line, &rec); err != nil {
				h.t.Fatalf("connection log line is not a record of strings (%v): %q", err, line)
			}
			recs = append(recs, rec)
			if rec["common-name"] == cn && match(rec) {
				for _, k := range connLogKeys {
					if _, ok := rec[k]; !ok {
						h.t.Errorf("connection log record lacks %s: %v", k, rec)
					}
				}
				return rec
			}
		}
	}
	h.t.Fatalf("no connection log record for %s %s within 15 s; the log has %v", cn, what, recs)
	return nil
}

// failedRecord waits for the record of cn's refused attempt.
func (h *handlerLab) failedRecord(cn string) map[string]string {
	h.t.Helper()
	return h.waitRecord(cn, "of a failed attempt", func(r map[string]string) bool {
		return r["connection-attempt-status"] == "failed"
	})
}

// refused starts a client named cn, which must be told AUTH_FAILED,message and exit without
// connecting. It returns the client's output.
func (h *handlerLab) refused(cn, message string) string {
	h.t.Helper()
	c := h.start(cn, netlab.ProfileOptions{})
	return h.expectRefused(c, cn, message)
}

// expectRefused waits for client c (named cn) to be told AUTH_FAILED,message and to exit
// without connecting.
func (h *handlerLab) expectRefused(c *vpnClient, cn, message string) string {
	h.t.Helper()
	want := "AUTH: Received control message: AUTH_FAILED," + message
	if err := c.proc.WaitFor(want, 40*time.Second); err != nil {
		h.t.Fatalf("%s: %v", cn, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.proc.Wait(ctx); err != nil && ctx.Err() != nil {
		h.t.Errorf("%s did not exit after AUTH_FAILED (no auth-retry in its profile): %v", cn, err)
	}
	out := c.proc.Output()
	if strings.Contains(out, "Initialization Sequence Completed") {
		h.t.Errorf("%s completed its initialization although the handler refused it", cn)
	}
	// The message arrives whole on one line: nothing the handler wrote can forge a log line.
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "AUTH_FAILED,") && !strings.HasSuffix(strings.TrimRight(line, "\r"), "AUTH_FAILED,"+message) {
			h.t.Errorf("%s's AUTH_FAILED line %q does not end in the message %q", cn, line, message)
		}
	}
	return out
}

// checkFailureReason checks the connection log record of cn's refused attempt: AWS's failure
// reason and the message the client was told (cvpn writes "reason: message").
func (h *handlerLab) checkFailureReason(cn, reason, message string) map[string]string {
	h.t.Helper()
	rec := h.failedRecord(cn)
	if got, want := rec["connection-attempt-failure-reason"], reason+": "+message; got != want {
		h.t.Errorf("%s: connection-attempt-failure-reason %q, want %q", cn, got, want)
	}
	return rec
}

// checkFailure is checkFailureReason for a command handler that refuses every client: the
// record also names the connection id the handler was sent, and no connection is logged as
// successful.
func (h *handlerLab) checkFailure(cn, reason, message string) {
	h.t.Helper()
	rec := h.checkFailureReason(cn, reason, message)
	if req := h.requestOf(cn); rec["connection-id"] != req["connection-id"] {
		h.t.Errorf("%s: the failed record's connection-id %q is not the one the handler was sent, %q",
			cn, rec["connection-id"], req["connection-id"])
	}
	if log := mustRead(h.t, h.logPath); bytes.Contains(log, []byte(`"connection-attempt-status":"successful"`)) {
		h.t.Errorf("the connection log records a successful connection; the handler refused every one:\n%s", log)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// openvpnVersion is the stock client's version, as its IV_VER announces it ("2.6.14").
func openvpnVersion(t *testing.T) string {
	t.Helper()
	out, _ := exec.Command("openvpn", "--version").Output() // exits 1 after printing
	m := regexp.MustCompile(`^OpenVPN (\d+\.\d+\.\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("openvpn --version: no version in %q", out)
	}
	return string(m[1])
}

// TestConnectHandlerAllows: the handler allows a client, which connects and passes traffic.
// The handler got AWS's schema v2 request describing that very connection (its connection id
// as cvpn lists and logs it, common name, address, platform, version, groups) with the
// arguments of its command line, and the posture-compliance statuses it answered are in the
// connection log record.
func TestConnectHandlerAllows(t *testing.T) {
	t.Parallel()
	h := newHandlerLab(t, `printf '%s\n' "$*" > "$DIR/args"
cat <<'EOF'
{"allow": true, "error-msg-on-denied-connection": "", "posture-compliance-statuses": ["compliant", "disk-encrypted"], "schema-version": "v2", "handler-note": "unknown keys are ignored"}
EOF`, 5)
	// push-peer-info adds IV_PLAT_VER (the kernel release) to what the client announces;
	// reneg-sec 2 has it renegotiate soon.
	c := h.connect("alice", netlab.ProfileOptions{Groups: []string{"engineering", "ops"}, Extra: "push-peer-info\nreneg-sec 2\n"})
	h.ping(c, netlab.VPCHost.String())
	// A renegotiation is not a new connection: the handler is not asked again (requestOf
	// below wants exactly one request for alice).
	if err := waitCount(c.proc, "Control Channel: TLS", 2, 20*time.Second); err != nil {
		t.Fatalf("alice did not renegotiate: %v", err)
	}
	h.ping(c, netlab.VPCHost.String())

	req := h.requestOf("alice")
	schema := []string{"connection-id", "endpoint-id", "common-name", "username", "platform", "platform-version",
		"public-ip", "client-openvpn-version", "groups", "schema-version"}
	for _, k := range schema {
		if _, ok := req[k]; !ok {
			t.Errorf("the request lacks %s: %v", k, req)
		}
	}
	if len(req) != len(schema) {
		t.Errorf("the request has %d fields, want AWS's schema v2's %d: %v", len(req), len(schema), req)
	}
	var listed string
	for _, conn := range h.listConnections() {
		if conn["CommonName"] == "alice" {
			listed, _ = conn["ConnectionId"].(string)
		}
	}
	rec := h.waitRecord("alice", "of the connection", func(r map[string]string) bool {
		return r["connection-attempt-status"] == "successful"
	})
	want := map[string]string{
		"connection-id":          listed,
		"endpoint-id":            rec["client-vpn-endpoint-id"],
		"common-name":            "alice",
		"username":               "", // certificate authentication: no directory user (AWS sends "")
		"platform":               "linux",
		"platform-version":       kernelRelease(t),
		"public-ip":              rec["device-ip"],
		"client-openvpn-version": openvpnVersion(t),
		"groups":                 "engineering,ops",
		"schema-version":         "v2",
	}
	for k, v := range want {
		if req[k] != v {
			t.Errorf("request %s = %q, want %q", k, req[k], v)
		}
	}
	if listed == "" || rec["connection-id"] != listed {
		t.Errorf("connections list says %q, the connection log %q: want the same connection id", listed, rec["connection-id"])
	}
	if !strings.HasPrefix(req["public-ip"], "172.31.") {
		t.Errorf("public-ip %q is not the client's address on the lab's link", req["public-ip"])
	}
	if got := rec["posture-compliance-statuses"]; got != "compliant,disk-encrypted" {
		t.Errorf("posture-compliance-statuses %q in the connection log, want the handler's compliant,disk-encrypted", got)
	}
	if args := strings.TrimSpace(string(mustRead(t, filepath.Join(h.dir, "args")))); args != "--from-cvpn" {
		t.Errorf("the handler's arguments are %q, want the configured --from-cvpn", args)
	}

	// A common name full of JSON and shell metacharacters reaches the handler intact, as one
	// line of JSON: the handler's `read` got all of it, and it decodes to the certificate's CN.
	const odd = `o'brien "ob" \ <&> $(id) {"allow":true}`
	other := h.connect(odd, netlab.ProfileOptions{})
	h.ping(other, netlab.VPCHost.String())
	if req := h.requestOf(odd); req["common-name"] != odd {
		t.Errorf("request common-name %q, want %q", req["common-name"], odd)
	}
	h.checkMetrics(map[string]int{"allowed": 2})
}

// TestConnectHandlerDenies: a handler that says no refuses the client with its message, which
// the stock client prints after AUTH_FAILED (line breaks in it turned into spaces, so it cannot
// forge a line of the client's log), and the attempt is logged as client-connect-failed.
func TestConnectHandlerDenies(t *testing.T) {
	t.Parallel()
	h := newHandlerLab(t, `cat <<'EOF'
{"allow": false, "error-msg-on-denied-connection": "Your device is not compliant:\nupdate the OS, then reconnect", "posture-compliance-statuses": ["non-compliant"], "schema-version": "v2"}
EOF`, 5)
	const message = "Your device is not compliant: update the OS, then reconnect"
	h.refused("mallory", message)
	h.checkFailure("mallory", "client-connect-failed", message)
	h.checkMetrics(map[string]int{"denied": 1})
}

// TestConnectHandlerTimesOut: a handler that does not answer within timeout_seconds refuses
// the client with AWS's failure message and client-connect-handler-timed-out, and what it left
// running is killed.
func TestConnectHandlerTimesOut(t *testing.T) {
	t.Parallel()
	h := newHandlerLab(t, `sleep 60 &
echo $! > "$DIR/sleep.pid"
wait`, 1)
	h.refused("slowpoke", handlerFailureMessage)
	h.checkFailure("slowpoke", "client-connect-handler-timed-out", handlerFailureMessage)
	h.checkMetrics(map[string]int{"client-connect-handler-timed-out": 1})

	// The handler's background sleep went with it (cvpn kills the handler's process group).
	pid, err := strconv.Atoi(strings.TrimSpace(string(mustRead(t, filepath.Join(h.dir, "sleep.pid")))))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || !strings.Contains(string(stat), "(sleep)") {
			break // gone (or the pid now names another process)
		}
		if time.Now().After(deadline) {
			t.Errorf("the timed-out handler's child (sleep, pid %d) is still running: %s", pid, stat)
			break
		}
	}
}

// TestConnectHandlerHangDoesNotBlockOthers: while one client's handshake waits for a handler
// that hangs, a client already connected keeps passing traffic, and another client connects
// and passes traffic; the held client is neither connected nor refused meanwhile, and
// connects once its handler answers.
func TestConnectHandlerHangDoesNotBlockOthers(t *testing.T) {
	t.Parallel()
	h := newHandlerLab(t, `case "$req" in
*'"common-name":"held"'*)
	: > "$DIR/held"
	# Wait for the test's go (or for its directory to go, should the test end first).
	while [ -e "$DIR/held" ] && [ ! -e "$DIR/release" ]; do sleep 0.05; done ;;
esac
echo '{"allow": true, "schema-version": "v2"}'`, 30)
	early := h.connect("early", netlab.ProfileOptions{})
	h.ping(early, netlab.VPCHost.String())

	held := h.start("held", netlab.ProfileOptions{})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(h.dir, "held")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the handler was not called for the held client within 30 s")
		}
	}

	late := h.connect("late", netlab.ProfileOptions{})
	h.ping(late, netlab.VPCHost.String())
	h.ping(early, netlab.VPCHost.String())
	if _, err := os.Stat(filepath.Join(h.dir, "release")); err == nil {
		t.Fatal("internal: released too early")
	}
	out := held.proc.Output()
	if strings.Contains(out, "Initialization Sequence Completed") || strings.Contains(out, "AUTH_FAILED") {
		t.Fatalf("the held client's handshake ended before the late client connected: a hung handler held up another handshake\n%s", out)
	}
	if len(h.requests()) != 3 {
		t.Errorf("the handler got %d requests, want 3 (early, held, late)", len(h.requests()))
	}

	if err := os.WriteFile(filepath.Join(h.dir, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := held.proc.WaitFor("Initialization Sequence Completed", 30*time.Second); err != nil {
		t.Fatalf("held client after its handler answered: %v", err)
	}
	h.ping(held, netlab.VPCHost.String())
	h.checkMetrics(map[string]int{"allowed": 3})
}

// TestConnectHandlerCrashes: a handler killed by a signal, or exiting with a non-zero status,
// refuses the client with AWS's failure message and
// client-connect-handler-other-execution-error; the handler's own words (its standard error)
// stay in the server's log and never reach the client.
func TestConnectHandlerCrashes(t *testing.T) {
	t.Parallel()
	h := newHandlerLab(t, `case "$req" in
*'"common-name":"segv"'*) kill -SEGV $$ ;;
*) echo 'secret backend at 10.9.8.7 is down' >&2; exit 3 ;;
esac`, 5)
	names := []string{"segv", "exit3"}
	clients := map[string]*vpnClient{}
	for _, cn := range names {
		clients[cn] = h.start(cn, netlab.ProfileOptions{})
	}
	for _, cn := range names {
		out := h.expectRefused(clients[cn], cn, handlerFailureMessage)
		h.checkFailure(cn, "client-connect-handler-other-execution-error", handlerFailureMessage)
		if strings.Contains(out, "10.9.8.7") {
			t.Errorf("%s: the handler's standard error reached the client:\n%s", cn, out)
		}
	}
	h.checkMetrics(map[string]int{"client-connect-handler-other-execution-error": 2})
	srv := h.srv.Output()
	for _, want := range []string{"was killed by signal segmentation fault", "exited with status 3", "secret backend at 10.9.8.7 is down"} {
		if !strings.Contains(srv, want) {
			t.Errorf("cvpn's log does not say %q about the failed handler", want)
		}
	}
}

// TestConnectHandlerInvalidResponse: a handler that answers anything but a valid schema v1 or
// v2 response refuses the client with AWS's failure message and
// client-connect-handler-invalid-response: not JSON, nothing at all, a string for the boolean,
// an unknown schema version, a message over AWS's 255 characters, more than 10 statuses.
func TestConnectHandlerInvalidResponse(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 256)
	cases := map[string]string{
		"notjson":   `allow: true`,
		"empty":     ``,
		"stringy":   `{"allow": "true", "schema-version": "v2"}`,
		"v3":        `{"allow": true, "schema-version": "v3"}`,
		"longmsg":   `{"allow": false, "error-msg-on-denied-connection": "` + long + `", "schema-version": "v2"}`,
		"manystats": `{"allow": true, "posture-compliance-statuses": ["1","2","3","4","5","6","7","8","9","10","11"], "schema-version": "v2"}`,
	}
	var body strings.Builder
	body.WriteString("case \"$req\" in\n")
	for cn, resp := range cases {
		fmt.Fprintf(&body, "*'\"common-name\":\"%s\"'*) cat <<'EOF'\n%s\nEOF\n;;\n", cn, resp)
	}
	body.WriteString("esac")
	h := newHandlerLab(t, body.String(), 5)
	clients := map[string]*vpnClient{}
	for cn := range cases {
		clients[cn] = h.start(cn, netlab.ProfileOptions{})
	}
	for cn, c := range clients {
		h.expectRefused(c, cn, handlerFailureMessage)
		h.checkFailure(cn, "client-connect-handler-invalid-response", handlerFailureMessage)
	}
	h.checkMetrics(map[string]int{"client-connect-handler-invalid-response": len(cases)})
}

// TestConnectHandlerHTTPS: the handler is an https:// URL (a Go TLS server in cvpn's namespace,
// trusted through ca_file). It is POSTed the schema v2 request as JSON; it allows one client,
// whose posture statuses reach the connection log, and denies another with a message the stock
// client prints.
func TestConnectHandlerHTTPS(t *testing.T) {
	t.Parallel()
	type call struct {
		method, contentType string
		req                 map[string]string
	}
	calls := make(chan call, 10)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req map[string]string
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case calls <- call{r.Method, r.Header.Get("Content-Type"), req}:
		default: // more calls than clients: counted below as missing ones
		}
		w.Header().Set("Content-Type", "application/json")
		if req["common-name"] == "bob" {
			io.WriteString(w, `{"allow": false, "error-msg-on-denied-connection": "bob is on leave", "schema-version": "v2"}`)
			return
		}
		io.WriteString(w, `{"allow": true, "posture-compliance-statuses": ["checked-over-https"], "schema-version": "v2"}`)
	}))
	t.Cleanup(srv.Close)

	lab, err := netlab.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	// The server's socket lives in the lab's server namespace, where cvpn will run.
	if srv.Listener, err = netlab.ListenTCPIn(lab.Server, netip.MustParseAddrPort("127.0.0.1:8443")); err != nil {
		t.Fatal(err)
	}
	srv.StartTLS()
	caFile := filepath.Join(t.TempDir(), "handler-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	s := newSetupInLab(t, lab, netlab.EndpointOptions{TLSCrypt: true, Extra: fmt.Sprintf(
		"connection_log: {enabled: true, file: connections.log}\n"+handlerMetricsConfig+
			"client_connect_handler: {url: \"https://127.0.0.1:8443/connect\", ca_file: %s, timeout_seconds: 5}\n", caFile)})
	noRaces(t, s)
	if err := s.srv.WaitFor("metrics listening", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	h := &handlerLab{setup: s, dir: t.TempDir(), logPath: filepath.Join(filepath.Dir(s.ep.Config), "connections.log")}

	carol := h.connect("carol", netlab.ProfileOptions{Groups: []string{"finance"}})
	h.ping(carol, netlab.VPCHost.String())
	rec := h.waitRecord("carol", "of the connection", func(r map[string]string) bool {
		return r["connection-attempt-status"] == "successful"
	})
	if got := rec["posture-compliance-statuses"]; got != "checked-over-https" {
		t.Errorf("posture-compliance-statuses %q, want the HTTPS handler's checked-over-https", got)
	}
	h.refused("bob", "bob is on leave")
	h.checkFailureReason("bob", "client-connect-failed", "bob is on leave")

	close(calls)
	got := map[string]call{}
	for c := range calls {
		got[c.req["common-name"]] = c
	}
	if len(got) != 2 {
		t.Fatalf("the HTTPS handler was called for %v, want carol and bob once each", got)
	}
	for cn, c := range got {
		if c.method != http.MethodPost || c.contentType != "application/json" || c.req["schema-version"] != "v2" {
			t.Errorf("%s: %s with Content-Type %q and schema-version %q, want a POST of application/json, v2",
				cn, c.method, c.contentType, c.req["schema-version"])
		}
	}
	if got["carol"].req["connection-id"] != rec["connection-id"] || got["carol"].req["groups"] != "finance" {
		t.Errorf("carol's request %v does not describe the logged connection %s with group finance", got["carol"].req, rec["connection-id"])
	}
	h.checkMetrics(map[string]int{"allowed": 1, "denied": 1})
}

// newSetupInLab is newSetup in a lab the caller made (and closes).
func newSetupInLab(t *testing.T, lab *netlab.Lab, o netlab.EndpointOptions) *setup {
	t.Helper()
	s := &setup{t: t, lab: lab}
	var err error
	if s.ep, err = netlab.WriteEndpoint(t.TempDir(), o); err != nil {
		t.Fatal(err)
	}
	if s.srv, err = lab.Start("cvpn", lab.Server, cvpnBin, "serve", "--config", s.ep.Config); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cvpn output:\n%s", s.srv.Output())
		}
	})
	if err := s.srv.WaitFor("cvpn listening", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return s
}

// kernelRelease is `uname -r`: what the stock client sends as IV_PLAT_VER with push-peer-info
// (push_peer_info, src/openvpn/ssl.c), the kernel the lab's namespaces share.
func kernelRelease(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("uname", "-r").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
