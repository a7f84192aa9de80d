// Package etcdlab runs a real etcd cluster for tests: N members, each a separate process of etcd's
// own server (internal/etcdlab/etcd, built from the go.etcd.io/etcd/server/v3 that go.mod names),
// with short raft timings, its data in a throwaway directory and its output in a log file whose
// tail a failing test prints. Members can be killed (SIGKILL), stopped (SIGTERM) and restarted on
// their data, so tests see what the client and cvpn do when a member or the quorum goes.
//
//	c := etcdlab.Start(t, etcdlab.Options{Members: 3})
//	cli := c.Client(t)             // all members' endpoints
//	c.Member(0).Kill()             // the cluster stays writable
//	c.Member(0).Start()            // rejoins with its data
//	c.WaitHealthy(ctx)
//
// In end-to-end tests a member can run in a network namespace (Options.NetNS, `ip netns exec`)
// listening on an address of that namespace (Options.Hosts); the client URLs then name that
// address, and only processes that can route to it reach the member. The lab's own clients
// (its health checks, Client) dial through Options.Dial, e.g. netlab.DialContextIn(adminNS).
//
// It does not fake anything and skips nothing: a failure to build or start etcd fails the test.
// Peer traffic is plain HTTP even when Options.TLS asks for TLS on the client side, which is the
// side cvpn speaks.
package etcdlab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Raft timings for tests: a leader is elected within about a second of losing one, instead of
// etcd's default of several. Heartbeats every 50 ms cost nothing on loopback.
const (
	HeartbeatInterval = 50 * time.Millisecond
	ElectionTimeout   = 500 * time.Millisecond
)

const (
	startTimeout    = 60 * time.Second // a whole cluster, on a loaded 2-core machine
	stopGracePeriod = 10 * time.Second // SIGTERM to SIGKILL
	startAttempts   = 3                // a port taken between probing and binding costs a retry
	logTailBytes    = 4096
)

// Options says what cluster Start runs.
type Options struct {
	// Members is the number of members; 0 means 1.
	Members int
	// Hosts is the address member i listens on (client and peer ports), one per member or none;
	// the default is 127.0.0.1 for every member, each with its own ports.
	Hosts []netip.Addr
	// NetNS is the network namespace member i runs in (`ip netns exec NS`; "" for the test's
	// own), one per member or none. Running in a namespace needs root.
	NetNS []string
	// TLS makes the client side HTTPS with a test CA, a server certificate for every host (and
	// 127.0.0.1, ::1, localhost) and a client certificate the members require
	// (--client-cert-auth). ClientTLS names the files.
	TLS bool
	// Dir holds the members' data directories (m0.data, ...), logs (m0.log, ...) and
	// certificates (tls/); default a t.TempDir. Start removes data and logs left there.
	Dir string
	// Dial, when set, makes the TCP connections of the lab's own clients (Client, and the
	// health checks Start and WaitHealthy make), for members the test's namespace cannot
	// route to: netlab.DialContextIn(ns) dials from namespace ns.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// Cluster is a running etcd cluster. Its methods and those of its members call t.Fatal on
// failure, so call them from the test's goroutine; WaitHealthy and Endpoints may be called
// from any.
type Cluster struct {
	t       testing.TB
	bin     string
	dir     string
	token   string
	tls     bool
	dial    func(ctx context.Context, addr string) (net.Conn, error)
	members []*Member

	caFile, certFile, keyFile     string // client-side files when tls
	serverCertFile, serverKeyFile string
	clientTLS                     *tls.Config // nil without TLS
}

// Member is one etcd process of a Cluster.
type Member struct {
	c       *Cluster
	name    string
	host    netip.Addr
	netns   string
	dataDir string
	logFile string
	client  string // client URL
	peer    string // peer URL

	mu      sync.Mutex // guards the fields below
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has exited
	waitErr error
	started bool // Start has run at least once: a later start joins as "existing"
	stopped bool // Kill or Stop ended it on purpose
	health  *clientv3.Client
}

// Start runs a cluster as o says and waits until every member serves linearizable reads.
// t.Cleanup kills every member and closes the clients Client made.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	n := o.Members
	if n == 0 {
		n = 1
	}
	if n < 0 || (len(o.Hosts) != 0 && len(o.Hosts) != n) || (len(o.NetNS) != 0 && len(o.NetNS) != n) {
		t.Fatalf("etcdlab: %d members with %d hosts and %d namespaces: give one per member or none", n, len(o.Hosts), len(o.NetNS))
	}
	built := time.Now()
	bin, err := binary()
	if d := time.Since(built); d > time.Second {
		t.Logf("etcdlab: built etcd in %v", d.Round(time.Millisecond))
	}
	if err != nil {
		t.Fatalf("etcdlab: %v", err)
	}
	dir := o.Dir
	if dir == "" {
		dir = t.TempDir()
	}
	c := &Cluster{t: t, bin: bin, dir: dir, tls: o.TLS, dial: o.Dial, token: "etcdlab-" + randomHex(6)}
	for i := range n {
		m := &Member{c: c, name: fmt.Sprintf("m%d", i), host: netip.AddrFrom4([4]byte{127, 0, 0, 1})}
		if len(o.Hosts) != 0 {
			m.host = o.Hosts[i]
		}
		if len(o.NetNS) != 0 {
			m.netns = o.NetNS[i]
		}
		m.dataDir = filepath.Join(dir, m.name+".data")
		m.logFile = filepath.Join(dir, m.name+".log")
		m.reset() // a Dir used before must not hand a new cluster old members' data
		c.members = append(c.members, m)
	}
	if o.TLS {
		if err := c.writeCertificates(); err != nil {
			t.Fatalf("etcdlab: %v", err)
		}
	}
	t.Cleanup(c.cleanup)

	began := time.Now()
	for attempt := 1; ; attempt++ {
		if err := c.assignPorts(); err != nil {
			t.Fatalf("etcdlab: %v", err)
		}
		for _, m := range c.members {
			if err := m.start(); err != nil {
				t.Fatalf("etcdlab: %v", err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		err := c.WaitHealthy(ctx)
		cancel()
		if err == nil {
			break
		}
		inUse := c.logsContain("address already in use")
		tails := c.logTails()
		c.killAll()
		if !inUse || attempt == startAttempts {
			t.Fatalf("etcdlab: starting %d members: %v\n%s", n, err, tails)
		}
		t.Logf("etcdlab: a port was taken before a member bound it; retrying with new ports")
		for _, m := range c.members {
			m.reset()
		}
	}
	t.Logf("etcdlab: %d-member cluster healthy in %v at %s", n, time.Since(began).Round(time.Millisecond), strings.Join(c.Endpoints(), ","))
	return c
}

// Endpoints returns the client URLs of every member, in member order.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.client
	}
	return eps
}

// Len returns the number of members.
func (c *Cluster) Len() int { return len(c.members) }

// Member returns member i (0-based).
func (c *Cluster) Member(i int) *Member { return c.members[i] }

// ClientTLS returns the files a client needs with Options.TLS: the CA that signed the members'
// certificates, and a client certificate and its key. Without TLS all three are "".
func (c *Cluster) ClientTLS() (caFile, certFile, keyFile string) {
	return c.caFile, c.certFile, c.keyFile
}

// TLSConfig returns the client TLS configuration (CA and client certificate), or nil without
// Options.TLS.
func (c *Cluster) TLSConfig() *tls.Config {
	if c.clientTLS == nil {
		return nil
	}
	return c.clientTLS.Clone()
}

// Client returns a client of the given endpoints (default: every member's), closed when the
// test ends. It dials through Options.Dial when set.
func (c *Cluster) Client(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	if len(endpoints) == 0 {
		endpoints = c.Endpoints()
	}
	cli, err := c.newClient(endpoints)
	if err != nil {
		t.Fatalf("etcdlab: client of %v: %v", endpoints, err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func (c *Cluster) newClient(endpoints []string) (*clientv3.Client, error) {
	var dialOpts []grpc.DialOption
	if c.dial != nil {
		dialOpts = append(dialOpts, grpc.WithContextDialer(c.dial))
	}
	return clientv3.New(clientv3.Config{
		DialOptions: dialOpts,
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		TLS:         c.TLSConfig(),
		// Quiet: the client logs every retry at warn level, and the lab's tests kill members
		// on purpose; failures reach the test as errors.
		Logger: zap.NewNop(),
	})
}

// WaitHealthy waits until every running member answers a linearizable read, which needs a
// leader and a quorum, or ctx ends. A member that exits without Kill or Stop ends the wait with
// an error that carries its log's tail.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	for _, m := range c.members {
		if !m.Running() && !m.exitedOnItsOwn() {
			continue
		}
		if err := m.waitHealthy(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (m *Member) waitHealthy(ctx context.Context) error {
	m.mu.Lock()
	cli, done := m.health, m.done
	m.mu.Unlock()
	if cli == nil {
		var err error
		if cli, err = m.c.newClient([]string{m.client}); err != nil {
			return fmt.Errorf("etcdlab: health client of %s: %w", m.name, err)
		}
		m.mu.Lock()
		m.health = cli
		m.mu.Unlock()
	}
	var lastErr error
	for {
		select {
		case <-done:
			if m.exitedOnItsOwn() {
				return fmt.Errorf("etcdlab: member %s exited: %v\n%s", m.name, m.exitErr(), m.LogTail())
			}
			return nil
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		go func() {
			// A member that exits ends its health check at once.
			select {
			case <-done:
				cancel()
			case <-rctx.Done():
			}
		}()
		_, err := cli.Get(rctx, "etcdlab/health")
		cancel()
		if err == nil {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcdlab: member %s not healthy: %w (last: %v)", m.name, ctx.Err(), lastErr)
		case <-done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Name returns the member's name (m0, m1, ...).
func (m *Member) Name() string { return m.name }

// Endpoint returns the member's client URL.
func (m *Member) Endpoint() string { return m.client }

// Host returns the address the member listens on.
func (m *Member) Host() netip.Addr { return m.host }

// LogFile returns the path of the member's log (all its runs, appended).
func (m *Member) LogFile() string { return m.logFile }

// Running reports whether the member's process is alive.
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// Kill ends the member with SIGKILL and waits for it: a crash, with nothing flushed.
func (m *Member) Kill() { m.signal(syscall.SIGKILL, 0) }

// Stop ends the member with SIGTERM and waits for it to exit (SIGKILL after 10 s).
func (m *Member) Stop() { m.signal(syscall.SIGTERM, stopGracePeriod) }

// Start restarts a killed or stopped member on its data directory
// (--initial-cluster-state existing). It returns once the process runs; use
// Cluster.WaitHealthy to wait until it serves.
func (m *Member) Start() {
	m.c.t.Helper()
	if m.Running() {
		m.c.t.Fatalf("etcdlab: member %s is already running", m.name)
	}
	if err := m.start(); err != nil {
		m.c.t.Fatalf("etcdlab: %v", err)
	}
}

// LogTail returns the last few KiB of the member's log.
func (m *Member) LogTail() string {
	b, err := os.ReadFile(m.logFile)
	if err != nil {
		return fmt.Sprintf("(%s: %v)", m.logFile, err)
	}
	if len(b) > logTailBytes {
		b = b[len(b)-logTailBytes:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

func (m *Member) signal(sig syscall.Signal, grace time.Duration) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	if cmd != nil {
		m.stopped = true
	}
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	// The member leads its own process group, so `ip netns exec` and etcd go together.
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	if grace == 0 {
		<-done
		return
	}
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

func (m *Member) exitedOnItsOwn() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done == nil || m.stopped {
		return false
	}
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

func (m *Member) exitErr() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.waitErr
}

// start launches the process: a new cluster on the first start, an existing one after.
func (m *Member) start() error {
	c := m.c
	m.mu.Lock()
	state := "new"
	if m.started {
		state = "existing"
	}
	m.mu.Unlock()
	var initial []string
	for _, o := range c.members {
		initial = append(initial, o.name+"="+o.peer)
	}
	args := []string{
		"--name", m.name,
		"--data-dir", m.dataDir,
		"--listen-client-urls", m.client,
		"--advertise-client-urls", m.client,
		"--listen-peer-urls", m.peer,
		"--initial-advertise-peer-urls", m.peer,
		"--initial-cluster", strings.Join(initial, ","),
		"--initial-cluster-state", state,
		"--initial-cluster-token", c.token,
		"--heartbeat-interval", strconv.Itoa(int(HeartbeatInterval / time.Millisecond)),
		"--election-timeout", strconv.Itoa(int(ElectionTimeout / time.Millisecond)),
		"--log-level", "warn",
		// A kill is a process crash, not a power loss: the page cache keeps what was written,
		// so fsync only costs the shared test machine time.
		"--unsafe-no-fsync",
	}
	if c.tls {
		args = append(args,
			"--cert-file", c.serverCertFile, "--key-file", c.serverKeyFile,
			"--trusted-ca-file", c.caFile, "--client-cert-auth")
	}
	var cmd *exec.Cmd
	if m.netns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", m.netns, c.bin}, args...)...)
	} else {
		cmd = exec.Command(c.bin, args...)
	}
	log, err := os.OpenFile(m.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("member %s log: %w", m.name, err)
	}
	fmt.Fprintf(log, "=== etcdlab: %s start (%s) %s\n", m.name, state, time.Now().Format(time.RFC3339Nano))
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, so a kill reaches every process of the member; and killed with
	// the test process, so a crashed test leaves no etcd behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start member %s: %w", m.name, err)
	}
	done := make(chan struct{})
	m.mu.Lock()
	m.cmd, m.done, m.started, m.stopped, m.waitErr = cmd, done, true, false, nil
	m.mu.Unlock()
	go func() {
		err := cmd.Wait()
		log.Close()
		m.mu.Lock()
		m.waitErr = err
		m.mu.Unlock()
		close(done)
	}()
	return nil
}

// reset forgets a failed first start: its data, log and process state.
func (m *Member) reset() {
	m.mu.Lock()
	m.cmd, m.done, m.started, m.stopped = nil, nil, false, false
	if m.health != nil {
		_ = m.health.Close()
		m.health = nil
	}
	m.mu.Unlock()
	_ = os.RemoveAll(m.dataDir)
	_ = os.Remove(m.logFile)
}

func (c *Cluster) killAll() {
	var wg sync.WaitGroup
	for _, m := range c.members {
		wg.Go(m.Kill)
	}
	wg.Wait()
}

func (c *Cluster) cleanup() {
	if c.t.Failed() {
		c.t.Logf("etcdlab: member logs:\n%s", c.logTails())
	}
	c.killAll()
	for _, m := range c.members {
		m.mu.Lock()
		if m.health != nil {
			_ = m.health.Close()
			m.health = nil
		}
		m.mu.Unlock()
	}
	for _, m := range c.members {
		_ = os.RemoveAll(m.dataDir)
	}
}

func (c *Cluster) logTails() string {
	var b strings.Builder
	for _, m := range c.members {
		fmt.Fprintf(&b, "--- %s (%s) log tail:\n%s\n", m.name, m.logFile, m.LogTail())
	}
	return b.String()
}

func (c *Cluster) logsContain(s string) bool {
	for _, m := range c.members {
		if b, err := os.ReadFile(m.logFile); err == nil && bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

// assignPorts gives every member a client and a peer port no other member of any cluster in
// this process has. A port is probed on the member's own address in the test's namespace; for
// a member in another namespace the test namespace's loopback stands in (those namespaces are
// the test's own and nearly empty). A port taken between probing and binding shows as
// "address already in use" in the member's log, and Start retries with new ports.
func (c *Cluster) assignPorts() error {
	for _, m := range c.members {
		probe := m.host
		if m.netns != "" {
			probe = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
		cp, err := freePort(probe)
		if err != nil {
			return err
		}
		pp, err := freePort(probe)
		if err != nil {
			return err
		}
		scheme := "http"
		if c.tls {
			scheme = "https"
		}
		m.client = scheme + "://" + net.JoinHostPort(m.host.String(), strconv.Itoa(cp))
		m.peer = "http://" + net.JoinHostPort(m.host.String(), strconv.Itoa(pp))
	}
	return nil
}

var (
	portsMu sync.Mutex
	ports   = map[int]bool{} // every port handed out in this process
)

func freePort(addr netip.Addr) (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", net.JoinHostPort(addr.String(), "0"))
		if err != nil {
			return 0, fmt.Errorf("finding a free port on %s: %w", addr, err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !ports[p] {
			ports[p] = true
			return p, nil
		}
	}
	return 0, errors.New("no free port after 100 tries")
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// binary builds internal/etcdlab/etcd once per test process. Each process builds into a file of
// its own and renames it into place, so parallel test processes never run a half-written
// binary; the Go build cache makes every build after the first a link.
func binary() (string, error) {
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			// `go test` puts its GOROOT/bin first in the test's PATH; a test binary run by
			// hand needs go on PATH.
			buildErr = fmt.Errorf("the go command is not on PATH (needed to build etcd): %w", err)
			return
		}
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("cvpn-etcdlab-%d", os.Getuid()))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			buildErr = err
			return
		}
		tmp := filepath.Join(dir, fmt.Sprintf("etcd.%d.tmp", os.Getpid()))
		cmd := exec.Command(goTool, "build", "-o", tmp, "github.com/cvpn/cvpn/internal/etcdlab/etcd")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build of etcd: %v\n%s", err, out)
			return
		}
		buildPath = filepath.Join(dir, "etcd")
		buildErr = os.Rename(tmp, buildPath)
	})
	return buildPath, buildErr
}

// clientTLSConfig builds the client side configuration from PEM.
func clientTLSConfig(caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("client TLS: no CA certificate")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("client TLS: %w", err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
