package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/endpoint/admin"
	"github.com/cvpn/cvpn/internal/etcdlab"
	"github.com/cvpn/cvpn/internal/netlab"
	"github.com/cvpn/cvpn/internal/slapdlab"
)

// clusterLab is issue 18's test bed: three cvpn nodes, each source-NATing to its own address
// into one VPC, a real three-member etcd cluster (etcd's own server, over TLS with client
// certificates) on a management network, and stock clients on the client-facing network.
type clusterLab struct {
	t    *testing.T
	lab  *netlab.Cluster
	etcd *etcdlab.Cluster
	// kv is the test's own etcd client, dialled from the lab's admin host.
	kv     *clientv3.Client
	ep     *netlab.Endpoint
	prefix string
	ttl    time.Duration
	nodes  []*clusterNode
	// clients are the stock clients started so far.
	clients []*clusterClient
}

// clusterNode is one cvpn node: its own file (the shared endpoint with its cluster section,
// admin socket and connection log), its process, and its lab host.
type clusterNode struct {
	name, file, admin, connLog string
	host                       netlab.ClusterNode
	proc                       *netlab.Proc
}

// clusterClient is one stock client and the namespace it runs in.
type clusterClient struct {
	name string
	ns   string
	proc *netlab.Proc
}

type clusterOptions struct {
	// TTL is cluster.lease_ttl_seconds; BlockSize cluster.address_block_size.
	TTL, BlockSize int
	// Clients is how many client namespaces the lab has.
	Clients int
	// Endpoint shapes the shared endpoint file.
	Endpoint netlab.EndpointOptions
	// IPv6: a dual-stack lab and tunnel, each node source-NATing IPv6 to its own address too.
	IPv6 bool
}

// newClusterLab builds the lab, starts etcd and writes the node files; startNodes runs them.
func newClusterLab(t *testing.T, o clusterOptions) *clusterLab {
	t.Helper()
	if o.TTL == 0 {
		o.TTL = 10 // the product default: short enough for the tests, long enough for a loaded machine
	}
	if o.BlockSize == 0 {
		// The least: nodes lease many blocks and take over expired ones, so addresses change
		// hands between nodes and the connection logs' check has handovers to check.
		o.BlockSize = 4
	}
	lab := netlab.NewCluster(t, netlab.ClusterOptions{Nodes: 3, Clients: o.Clients, Etcd: 3, IPv6: o.IPv6})
	etcd := etcdlab.Start(t, etcdlab.Options{Members: 3, Hosts: lab.EtcdHosts(), NetNS: lab.EtcdNetNS(), TLS: true,
		Dial: netlab.DialContextIn(lab.Admin)})
	c := &clusterLab{t: t, lab: lab, etcd: etcd, kv: etcd.Client(t), prefix: "/cvpn-e2e", ttl: time.Duration(o.TTL) * time.Second}
	dir := t.TempDir()
	eo := o.Endpoint
	eo.TLSCrypt = true
	if o.IPv6 {
		eo.TrafficIPAddressType, eo.SNATIPv6 = "dual-stack", true
	}
	if eo.Keepalive == "" {
		eo.Keepalive = "{ping_seconds: 1, ping_restart_seconds: 5}"
	}
	eo.Extra += "state_dir: " + filepath.Join(dir, "state") + "\n"
	var err error
	if c.ep, err = netlab.WriteEndpoint(dir, eo); err != nil {
		t.Fatal(err)
	}
	base, err := os.ReadFile(c.ep.Config)
	if err != nil {
		t.Fatal(err)
	}
	ca, cert, key := etcd.ClientTLS()
	for i, h := range lab.Nodes {
		n := &clusterNode{name: h.Name, host: h, file: filepath.Join(dir, h.Name+".yaml"),
			admin: filepath.Join(dir, h.Name+".sock"), connLog: filepath.Join(dir, h.Name+"-connections.log")}
		// The admin socket and the connection log are the node's own (keys a push does not
		// replace); everything else is the shared endpoint file.
		text := strings.Replace(string(base), "admin: {socket: admin.sock}\n", "", 1)
		text += fmt.Sprintf("admin: {socket: %s}\nconnection_log: {enabled: true, file: %s}\n", n.admin, n.connLog)
		snat6 := ""
		if o.IPv6 {
			snat6 = "  snat_ipv6_address: " + h.SNATIPv6.String() + "\n"
		}
		text += fmt.Sprintf(`cluster:
  node_name: %s
  public_address: %s
  snat_address: %s
%s  lease_ttl_seconds: %d
  address_block_size: %d
  etcd:
    endpoints: [%s]
    ca_file: %s
    cert_file: %s
    key_file: %s
    prefix: %s
`, h.Name, h.Public, h.SNAT, snat6, o.TTL, o.BlockSize, strings.Join(etcd.Endpoints(), ", "), ca, cert, key, c.prefix)
		if err := os.WriteFile(n.file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		_ = i
		c.nodes = append(c.nodes, n)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.nodes {
				if n.proc != nil {
					t.Logf("cvpn %s output:\n%s", n.name, netlab.Tail(n.proc.Output(), 80))
				}
			}
			for _, cl := range c.clients {
				t.Logf("openvpn %s output:\n%s", cl.name, netlab.Tail(cl.proc.Output(), 30))
			}
		}
	})
	return c
}

// start runs node i (from 0) and waits until it serves.
func (c *clusterLab) start(i int) {
	c.t.Helper()
	n := c.nodes[i]
	p, err := c.lab.Start("cvpn "+n.name, n.host.NS, cvpnBin, "serve", "--config", n.file)
	if err != nil {
		c.t.Fatal(err)
	}
	n.proc = p
	if err := p.WaitFor("cvpn listening", 30*time.Second); err != nil {
		c.t.Fatalf("%s: %v\n%s", n.name, err, p.Output())
	}
}

// startAll runs every node.
func (c *clusterLab) startAll() {
	c.t.Helper()
	for i := range c.nodes {
		c.start(i)
	}
}

// connect starts a stock client in client namespace j whose profile lists every node, node
// first first (then the others in order), and waits until it is up.
func (c *clusterLab) connect(name string, j, first int, o netlab.ProfileOptions) *clusterClient {
	c.t.Helper()
	cl := c.startClient(name, j, first, o)
	if err := cl.proc.WaitFor("Initialization Sequence Completed", 60*time.Second); err != nil {
		c.t.Fatalf("%s: %v\n%s", name, err, cl.proc.Output())
	}
	return cl
}

// startClient starts a stock client without waiting.
func (c *clusterLab) startClient(name string, j, first int, o netlab.ProfileOptions) *clusterClient {
	c.t.Helper()
	remotes := c.lab.NodePublic()
	o.Remotes = append(remotes[first:len(remotes):len(remotes)], remotes[:first]...)
	if o.PollTimeout == 0 {
		o.PollTimeout = 5
	}
	profile, err := c.ep.ClientProfile(name, netip.Addr{}, o)
	if err != nil {
		c.t.Fatal(err)
	}
	ns := c.lab.Clients[j].NS
	p, err := c.lab.Start("openvpn "+name, ns, "openvpn", "--config", profile)
	if err != nil {
		c.t.Fatal(err)
	}
	cl := &clusterClient{name: name, ns: ns, proc: p}
	c.clients = append(c.clients, cl)
	return cl
}

// ping pings the VPC host from cl's namespace through the tunnel.
func (c *clusterLab) ping(cl *clusterClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := c.lab.Command(ctx, cl.ns, "ping", "-c", "2", "-i", "0.2", "-W", "3", c.lab.VPCHost.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v\n%s", c.lab.VPCHost, cl.name, err, out)
	}
	return nil
}

// adminOf is node i's admin API.
func (c *clusterLab) adminOf(i int) *admin.Client { return admin.NewClient(c.nodes[i].admin) }

// connections lists every active connection of the cluster through node i's admin API.
func (c *clusterLab) connections(i int) []admin.Connection {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := c.adminOf(i).DescribeAllClientVpnConnections(ctx, admin.DescribeClientVpnConnectionsInput{})
	if err != nil {
		c.t.Fatalf("DescribeClientVpnConnections on %s: %v", c.nodes[i].name, err)
	}
	var live []admin.Connection
	for _, conn := range out.Connections {
		if conn.Status.Code == admin.StatusActive {
			live = append(live, conn)
		}
	}
	return live
}

// waitFor polls cond until it holds or timeout passes, then fails the test saying what.
func (c *clusterLab) waitFor(what string, timeout time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// blocks returns the address blocks each node leases now, from etcd.
func (c *clusterLab) blocks() map[string][]int {
	c.t.Helper()
	out, err := c.readBlocks()
	if err != nil {
		c.t.Fatalf("etcd: %v", err)
	}
	return out
}

// readBlocks is blocks for any goroutine.
func (c *clusterLab) readBlocks() (map[string][]int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.kv.Get(ctx, c.prefix+"/blocks/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := map[string][]int{}
	for _, kv := range resp.Kvs {
		b, _ := strconv.Atoi(strings.TrimPrefix(string(kv.Key), c.prefix+"/blocks/"))
		out[string(kv.Value)] = append(out[string(kv.Value)], b)
	}
	return out, nil
}

// leaseLeft is how long the lease of node's liveness key has left in etcd (to the second, as
// etcd reports it).
func (c *clusterLab) leaseLeft(node string) time.Duration {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.kv.Get(ctx, c.prefix+"/alive/"+node)
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		c.t.Fatalf("etcd: %s's liveness key: %v %v", node, err, resp)
	}
	ttl, err := c.kv.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil {
		c.t.Fatalf("etcd: %s's lease: %v", node, err)
	}
	return time.Duration(ttl.TTL) * time.Second
}

// push runs `cvpn cluster push` with file from the admin host (on the management network),
// returning its output and exit error.
func (c *clusterLab) push(file string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := c.lab.Command(ctx, c.lab.Admin, cvpnBin, "cluster", "push", "--config", file, "--timeout", "20s").CombinedOutput()
	return string(out), err
}

// logRecord is one record of a connection log, as far as the checks here read it.
type logRecord struct {
	node, id, ip, status string
	start, end           time.Time
}

// connectionLogs reads every node's connection log.
func (c *clusterLab) connectionLogs() []logRecord {
	c.t.Helper()
	var out []logRecord
	for _, n := range c.nodes {
		f, err := os.Open(n.connLog)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			c.t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]string
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			r := logRecord{node: m["node-name"], id: m["connection-id"], ip: m["client-ip"], status: m["connection-status"]}
			r.start, _ = time.Parse("2006-01-02 15:04:05", m["connection-start-time"])
			r.end, _ = time.Parse("2006-01-02 15:04:05", m["connection-end-time"])
			if r.node == "" {
				c.t.Errorf("%s: a record without node-name: %s", n.connLog, sc.Text())
			}
			out = append(out, r)
		}
		f.Close()
	}
	return out
}

// checkNoAddressTwice checks from every node's connection log that no client address was held
// by two sessions at once: each connection's time from its first record to its end (or now,
// or, on a node that died, the node's death) must not overlap another connection's with the
// same address. Times in the log are to the second, so a handover within the same second is
// allowed.
func (c *clusterLab) checkNoAddressTwice(died map[string]time.Time) {
	c.t.Helper()
	type span struct {
		node, id   string
		start, end time.Time
	}
	conns := map[string]*span{}
	for _, r := range c.connectionLogs() {
		if r.ip == "" || r.ip == "NA" {
			continue
		}
		s := conns[r.id]
		if s == nil {
			s = &span{node: r.node, id: r.id, start: r.start, end: time.Now().UTC().Add(time.Hour)}
			if d, ok := died[r.node]; ok && !r.start.After(d) {
				s.end = d // a session of the node's life before it was killed
			}
			conns[r.id] = s
		}
		if !r.end.IsZero() {
			s.end = r.end
		}
	}
	byIP := map[string][]*span{}
	for _, r := range c.connectionLogs() {
		if s := conns[r.id]; s != nil && r.ip != "" && r.ip != "NA" && !slices.Contains(byIP[r.ip], s) {
			byIP[r.ip] = append(byIP[r.ip], s)
		}
	}
	checked := 0
	for ip, spans := range byIP {
		sort.Slice(spans, func(i, j int) bool { return spans[i].start.Before(spans[j].start) })
		for i := 1; i < len(spans); i++ {
			checked++
			if a, b := spans[i-1], spans[i]; b.start.Before(a.end) {
				c.t.Errorf("address %s held twice: %s on %s from %v to %v, and %s on %s from %v",
					ip, a.id, a.node, a.start, a.end, b.id, b.node, b.start)
			}
		}
	}
	c.t.Logf("connection logs: %d addresses, %d handovers checked", len(byIP), checked)
}

// TestClusterSpreadListTerminatePush: twelve stock clients spread over three nodes all reach
// the VPC through their node's own SNAT address; one cluster-wide list from any node shows all
// of them; a terminate by username from a node that does not hold the session ends it; a
// config push reaches every node, and a bad one is refused by all with the running file kept;
// a node cut off from etcd stops admitting and ends its sessions, whose clients go to the
// other nodes; no address is ever held twice.
func TestClusterSpreadListTerminatePush(t *testing.T) {
	t.Parallel()
	c := newClusterLab(t, clusterOptions{Clients: 13})
	c.startAll()

	// An exported profile lists every node.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	profile, err := c.lab.Command(ctx, c.lab.Admin, cvpnBin, "export-client-config", "--config", c.nodes[0].file).Output()
	cancel()
	if err != nil {
		t.Fatalf("export-client-config: %v", err)
	}
	for _, n := range c.nodes {
		if !regexpMatch(`(?m)^remote `+regexp.QuoteMeta(n.host.Public.String())+` 443`, string(profile)) {
			t.Errorf("the exported profile has no remote line for %s (%s):\n%s", n.name, n.host.Public, profile)
		}
	}
	if !regexpMatch(`(?m)^remote-random$`, string(profile)) || !regexpMatch(`(?m)^server-poll-timeout \d+$`, string(profile)) {
		t.Errorf("the exported profile lacks remote-random or server-poll-timeout:\n%s", profile)
	}

	// Twelve clients, four first on each node.
	for j := 0; j < 12; j++ {
		c.connect(fmt.Sprintf("user%02d", j), j, j%3, netlab.ProfileOptions{})
	}
	for _, cl := range c.clients {
		if err := c.ping(cl); err != nil {
			t.Fatal(err)
		}
	}
	var conns []admin.Connection
	c.waitFor("the cluster-wide list to show all twelve", 15*time.Second, func() bool {
		conns = c.connections(0)
		return len(conns) == 12
	})
	perNode := map[string]int{}
	addrs := map[string]string{}
	for _, conn := range conns {
		perNode[conn.Cvpn.Node]++
		if other, ok := addrs[conn.ClientIP]; ok {
			t.Errorf("address %s listed for %s and %s", conn.ClientIP, other, conn.Username)
		}
		addrs[conn.ClientIP] = conn.Username
	}
	for _, n := range c.nodes {
		if perNode[n.name] != 4 {
			t.Errorf("%s holds %d sessions, want 4 (%v)", n.name, perNode[n.name], perNode)
		}
	}
	// Every node lists the same twelve.
	for i := 1; i < 3; i++ {
		if got := len(c.connections(i)); got != 12 {
			t.Errorf("%s lists %d connections, want 12", c.nodes[i].name, got)
		}
	}
	// The VPC host saw each node's own SNAT address.
	for _, n := range c.nodes {
		out, err := c.lab.Exec(c.lab.VPC, "ip", "neigh", "show", n.host.SNAT.String())
		if err != nil || !strings.Contains(out, "lladdr") {
			t.Errorf("the VPC host has no neighbour entry for %s's SNAT address %s: %v %s", n.name, n.host.SNAT, err, out)
		}
	}

	// Terminate, from node1, a user whose session node2 holds.
	victim := ""
	for _, conn := range conns {
		if conn.Cvpn.Node == c.nodes[1].name {
			victim = conn.Username
			break
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	out, err := c.adminOf(0).TerminateClientVpnConnections(ctx, admin.TerminateClientVpnConnectionsInput{Username: victim})
	cancel()
	if err != nil {
		t.Fatalf("terminate %s from node1: %v", victim, err)
	}
	if len(out.ConnectionStatuses) != 1 || out.ConnectionStatuses[0].CurrentStatus.Code != admin.StatusTerminating {
		t.Fatalf("terminate %s from node1 answered %+v", victim, out)
	}
	var victimClient *clusterClient
	for _, cl := range c.clients {
		if cl.name == victim {
			victimClient = cl
		}
	}
	if err := victimClient.proc.WaitFor("server-pushed-halt", 15*time.Second); err != nil {
		t.Fatalf("%s was not halted: %v", victim, err)
	}
	c.waitFor("the terminated session to leave the list", 15*time.Second, func() bool { return len(c.connections(2)) == 11 })

	// A push that every node accepts: a banner.
	text, err := os.ReadFile(c.nodes[0].file)
	if err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(filepath.Dir(c.nodes[0].file), "pushed.yaml")
	if err := os.WriteFile(good, append(text, "client_login_banner: pushed to every node\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	pout, err := c.push(good)
	if err != nil {
		t.Fatalf("push: %v\n%s", err, pout)
	}
	var rev int64
	for _, n := range c.nodes {
		m := regexpFind(`(?m)^`+n.name+`: applied revision (\d+)$`, pout)
		if m == "" {
			t.Fatalf("push output has no applied line for %s:\n%s", n.name, pout)
		}
		rev, _ = strconv.ParseInt(m, 10, 64)
		if err := n.proc.WaitFor("client_login_banner", 10*time.Second); err != nil {
			t.Errorf("%s did not log the banner change: %v", n.name, err)
		}
	}
	// cvpn status on any node shows every node's revision.
	st := cli(t, "status", "--config", c.nodes[1].file)
	for _, n := range c.nodes {
		if !regexpMatch(`(?m)^`+n.name+`( \*)?\s+`+n.host.Public.String()+`\s+yes\s+`+strconv.FormatInt(rev, 10)+`\b`, st) {
			t.Errorf("cvpn status does not show %s alive at revision %d:\n%s", n.name, rev, st)
		}
	}

	// A push every node refuses: the client block cannot change on a running endpoint.
	bad := filepath.Join(filepath.Dir(c.nodes[0].file), "bad.yaml")
	badText := strings.Replace(string(text), "client_cidr_block: 10.2.0.0/22", "client_cidr_block: 10.3.0.0/22", 1)
	if badText == string(text) {
		t.Fatal("the node file has no client_cidr_block line to change")
	}
	if err := os.WriteFile(bad, []byte(badText), 0o600); err != nil {
		t.Fatal(err)
	}
	pout, err = c.push(bad)
	if err == nil {
		t.Fatalf("a push changing client_cidr_block was accepted:\n%s", pout)
	}
	for _, n := range c.nodes {
		if !regexpMatch(`(?m)^`+n.name+`: refused: .*client_cidr_block`, pout) {
			t.Errorf("push output does not say %s refused client_cidr_block:\n%s", n.name, pout)
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	cl, err := c.adminOf(2).DescribeCvpnCluster(ctx, admin.DescribeCvpnClusterInput{})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range cl.Nodes {
		if !n.Alive || n.ConfigRevision != rev {
			t.Errorf("after the refused push %s runs revision %d (alive %v), want %d", n.Name, n.ConfigRevision, n.Alive, rev)
		}
	}

	// Cut node3 off etcd: it stops admitting at once, and ends its sessions before its lease
	// can expire; their clients reconnect to the other nodes.
	on3 := 0
	for _, conn := range c.connections(0) {
		if conn.Cvpn.Node == c.nodes[2].name {
			on3++
		}
	}
	cutAt := time.Now()
	if err := c.lab.CutEtcd(3); err != nil {
		t.Fatal(err)
	}
	cutDone := time.Since(cutAt)
	if err := c.nodes[2].proc.WaitFor("not admitting new sessions", 15*time.Second); err != nil {
		t.Fatal(err)
	}
	late := c.startClient("late", 12, 2, netlab.ProfileOptions{})
	if err := late.proc.WaitFor("Initialization Sequence Completed", 60*time.Second); err != nil {
		t.Fatalf("a client whose first node is cut off from etcd did not get in elsewhere: %v", err)
	}
	if !strings.Contains(late.proc.Output(), "cluster state unavailable") {
		t.Errorf("the client was not told why node3 turned it away:\n%s", late.proc.Output())
	}
	if err := c.nodes[2].proc.WaitFor("lost the cluster lease", c.ttl+5*time.Second); err != nil {
		t.Fatal(err)
	}
	lostAfter := time.Since(cutAt)
	c.waitFor("node3's clients to reconnect to node1 and node2", 60*time.Second, func() bool {
		n := 0
		for _, conn := range c.connections(0) {
			if conn.Cvpn.Node == c.nodes[2].name {
				return false
			}
			n++
		}
		return n == 12 // eleven, and the late one
	})
	t.Logf("node3 held %d sessions; it gave them up %v after the cut began (the cut took %v; lease TTL %v)",
		on3, lostAfter.Round(time.Millisecond), cutDone.Round(time.Millisecond), c.ttl)
	for _, cl := range c.clients {
		if cl == victimClient {
			continue
		}
		if err := c.ping(cl); err != nil {
			t.Error(err)
		}
	}
	if err := c.lab.RestoreEtcd(3); err != nil {
		t.Fatal(err)
	}
	if err := c.nodes[2].proc.WaitFor("rejoined the cluster", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	c.checkNoAddressTwice(nil)
}

// regexpFind returns the first submatch of re in s, or "".
func regexpFind(re, s string) string {
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if len(m) < 2 {
		return ""
	}
	return m[1]
}

// regexpMatch reports whether re matches s.
func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

// count is how many times s appears in p's output so far.
func count(p *netlab.Proc, s string) int { return strings.Count(p.Output(), s) }

// waitCount waits until s appears at least n times in p's output.
func (c *clusterLab) waitCount(p *netlab.Proc, s string, n int, timeout time.Duration) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%q %d times in %s's output", s, n, p.Name), timeout, func() bool { return count(p, s) >= n })
}

// TestClusterFailover: directory users with auth-tokens on three nodes. A node killed with
// SIGKILL: its clients reconnect to the other nodes within the ping-restart interval (and the
// profile's poll timeout), where their auth-tokens are honoured; nobody else is disturbed; its
// address blocks return to etcd after the lease TTL and not before. One etcd member down:
// everything keeps working. Every member down: sessions keep flowing, new logins are refused
// with the reason, and service resumes when etcd returns. No address is held twice.
func TestClusterFailover(t *testing.T) {
	t.Parallel()
	const ttl = 15
	// The directory runs on the admin host, which every node reaches over the management
	// network.
	c := newClusterLab(t, clusterOptions{TTL: ttl, Clients: 10})
	ldap := slapdlab.StartIn(t, c.lab.Admin, c.lab.AdminAddr.String())
	dir := filepath.Dir(c.nodes[0].file)
	if err := os.WriteFile(filepath.Join(dir, "ldap-ca.pem"), ldap.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ldap-bind-password"), []byte(ldap.ServicePassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	directory := fmt.Sprintf(`authentication:
  directory:
    url: %s
    ca_file: %s
    bind_dn: "%s"
    bind_password_file: %s
    user_base_dn: "%s"
    user_filter: "(&(objectClass=inetOrgPerson)(uid={username}))"
    group_attribute: memberOf
    timeout_seconds: 3
`, ldap.LDAPSURL, filepath.Join(dir, "ldap-ca.pem"), ldap.ServiceDN, filepath.Join(dir, "ldap-bind-password"), ldap.PeopleDN)
	for _, n := range c.nodes {
		text, err := os.ReadFile(n.file)
		if err != nil {
			t.Fatal(err)
		}
		// Directory users instead of client certificates.
		s := strings.Replace(string(text), "authentication:\n  certificate: {client_root_ca_file: ca.crt}\n", directory, 1)
		if s == string(text) {
			t.Fatalf("%s has no certificate authentication to replace:\n%s", n.file, text)
		}
		if err := os.WriteFile(n.file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.startAll()

	login := func(j, first int) *clusterClient {
		name := fmt.Sprintf("dir%02d", j)
		pw := "pw-" + name
		ldap.AddUser(name, pw)
		creds := filepath.Join(dir, name+".pass")
		if err := os.WriteFile(creds, []byte(name+"\n"+pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return c.startClient(name, j, first, netlab.ProfileOptions{Extra: "auth-user-pass " + creds + "\n"})
	}
	for j := 0; j < 6; j++ {
		login(j, j%3)
	}
	for _, cl := range c.clients {
		c.waitCount(cl.proc, "Initialization Sequence Completed", 1, 60*time.Second)
		if err := c.ping(cl); err != nil {
			t.Fatal(err)
		}
	}
	var on2, others []*clusterClient
	c.waitFor("six sessions listed", 15*time.Second, func() bool { return len(c.connections(0)) == 6 })
	for _, conn := range c.connections(0) {
		for _, cl := range c.clients {
			if cl.name == conn.Username {
				if conn.Cvpn.Node == c.nodes[1].name {
					on2 = append(on2, cl)
				} else {
					others = append(others, cl)
				}
			}
		}
	}
	if len(on2) != 2 {
		t.Fatalf("node2 holds %d sessions, want 2", len(on2))
	}
	blocks2 := c.blocks()[c.nodes[1].name]
	if len(blocks2) == 0 {
		t.Fatalf("node2 leases no address block: %v", c.blocks())
	}

	// kill -9 node2, reading first how long its lease has left in etcd.
	left2 := c.leaseLeft(c.nodes[1].name)
	killedAt := time.Now()
	c.nodes[1].proc.Kill()
	// Watch node2's blocks from the kill on: the last time they were all there, and the first
	// time none was.
	type blockWatch struct{ held, gone time.Time }
	watched := make(chan blockWatch, 1)
	go func() {
		var w blockWatch
		for time.Since(killedAt) < ttl*time.Second+20*time.Second {
			got, err := c.readBlocks()
			now := time.Now()
			if err == nil && len(got[c.nodes[1].name]) == len(blocks2) {
				w.held = now
			}
			if err == nil && len(got[c.nodes[1].name]) == 0 {
				w.gone = now
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		watched <- w
	}()
	for _, cl := range on2 {
		c.waitCount(cl.proc, "Initialization Sequence Completed", 2, 5*time.Second+2*5*time.Second+30*time.Second)
		t.Logf("%s reconnected %v after the kill", cl.name, time.Since(killedAt).Round(100*time.Millisecond))
		if err := c.ping(cl); err != nil {
			t.Error(err)
		}
		accepted := false
		for _, n := range []*clusterNode{c.nodes[0], c.nodes[2]} {
			if regexpMatch(`auth-token accepted.*user=`+cl.name+`\b|user=`+cl.name+`\b.*auth-token accepted`, n.proc.Output()) {
				accepted = true
			}
		}
		if !accepted {
			t.Errorf("%s reconnected without its auth-token being honoured by node1 or node3", cl.name)
		}
	}
	for _, cl := range others {
		if n := count(cl.proc, "Initialization Sequence Completed"); n != 1 || strings.Contains(cl.proc.Output(), "SIGUSR1") {
			t.Errorf("%s, on a node that stayed up, was disturbed: %d connects\n%s", cl.name, n, netlab.Tail(cl.proc.Output(), 10))
		}
	}
	// node2's blocks stay its own until its lease expires (what it had left at the kill: the
	// TTL since its last renewal, to the second), then return.
	w := <-watched
	if w.gone.IsZero() {
		t.Fatalf("node2's blocks %v never returned", blocks2)
	}
	held, returned := w.held.Sub(killedAt), w.gone.Sub(killedAt)
	if returned < left2-time.Second || held < left2-2*time.Second {
		t.Errorf("node2's blocks were held until %v and gone at %v after the kill, but its lease had %v left",
			held.Round(100*time.Millisecond), returned.Round(100*time.Millisecond), left2)
	}
	t.Logf("node2's blocks: held until %v, returned %v after the kill; its lease had %v left (TTL %ds)",
		held.Round(100*time.Millisecond), returned.Round(100*time.Millisecond), left2, ttl)

	// node2 comes back, and takes clients again.
	c.start(1)
	back := login(8, 1)
	c.waitCount(back.proc, "Initialization Sequence Completed", 1, 60*time.Second)
	if !regexpMatch(`Peer Connection Initiated with \[AF_INET\]`+regexp.QuoteMeta(c.nodes[1].host.Public.String())+`:`, back.proc.Output()) {
		t.Errorf("a client whose first node is the restarted node2 did not connect to it:\n%s", netlab.Tail(back.proc.Output(), 20))
	}

	// One etcd member down: a new login works, sessions flow.
	c.etcd.Member(0).Kill()
	late := login(6, 0)
	c.waitCount(late.proc, "Initialization Sequence Completed", 1, 60*time.Second)
	if err := c.ping(late); err != nil {
		t.Error(err)
	}
	c.etcd.Member(0).Start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	if err := c.etcd.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()

	// Every member down: sessions keep flowing; a new login is refused with the reason.
	before := count(c.nodes[0].proc, "not admitting new sessions")
	downAt := time.Now()
	for i := 0; i < c.etcd.Len(); i++ {
		c.etcd.Member(i).Kill()
	}
	c.waitCount(c.nodes[0].proc, "not admitting new sessions", before+1, 10*time.Second)
	refused := login(7, 0)
	c.waitCount(refused.proc, "cluster state unavailable", 1, 20*time.Second)
	for _, cl := range others {
		if err := c.ping(cl); err != nil {
			t.Errorf("with etcd down: %v", err)
		}
	}
	down := time.Since(downAt)
	for i := 0; i < c.etcd.Len(); i++ {
		c.etcd.Member(i).Start()
	}
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	if err := c.etcd.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	t.Logf("etcd was down for %v", down.Round(100*time.Millisecond))
	c.waitCount(refused.proc, "Initialization Sequence Completed", 1, 60*time.Second)
	for _, cl := range others {
		if n := count(cl.proc, "Initialization Sequence Completed"); n != 1 {
			t.Errorf("%s reconnected %d times across the etcd outage", cl.name, n-1)
		}
	}
	c.checkNoAddressTwice(map[string]time.Time{c.nodes[1].name: killedAt.UTC()})
}

// TestClusterDualStack: a dual-stack tunnel on three nodes: each client gets an IPv4 and an IPv6
// address from its node's block (one index, both families), reaches the VPC host over both, and
// the VPC host sees each node's own IPv6 SNAT address.
func TestClusterDualStack(t *testing.T) {
	t.Parallel()
	c := newClusterLab(t, clusterOptions{Clients: 3, IPv6: true})
	c.startAll()
	for j := 0; j < 3; j++ {
		cl := c.connect(fmt.Sprintf("dual%d", j), j, j, netlab.ProfileOptions{})
		if err := c.ping(cl); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		out, err := c.lab.Command(ctx, cl.ns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "3", c.lab.VPCHostIPv6.String()).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("ping -6 %s from %s: %v\n%s", c.lab.VPCHostIPv6, cl.name, err, out)
		}
	}
	var conns []admin.Connection
	c.waitFor("three dual-stack sessions listed", 15*time.Second, func() bool { conns = c.connections(1); return len(conns) == 3 })
	seen := map[string]bool{}
	for _, conn := range conns {
		a4, err4 := netip.ParseAddr(conn.ClientIP)
		a6, err6 := netip.ParseAddr(conn.ClientIPv6Address)
		if err4 != nil || err6 != nil || seen[conn.ClientIPv6Address] {
			t.Fatalf("connection %s on %s: addresses %q and %q", conn.ConnectionID, conn.Cvpn.Node, conn.ClientIP, conn.ClientIPv6Address)
		}
		seen[conn.ClientIPv6Address] = true
		// One pool index: the IPv6 address's low bits are the IPv4 address's offset in the /22.
		b4, b6 := a4.As4(), a6.As16()
		if idx4, idx6 := int(b4[2]&3)<<8|int(b4[3]), int(b6[14])<<8|int(b6[15]); idx4 != idx6 {
			t.Errorf("%s has index %d in IPv4 (%s) but %d in IPv6 (%s)", conn.Username, idx4, a4, idx6, a6)
		}
	}
	for _, n := range c.nodes {
		out, err := c.lab.Exec(c.lab.VPC, "ip", "-6", "neigh", "show", n.host.SNATIPv6.String())
		if err != nil || !strings.Contains(out, "lladdr") {
			t.Errorf("the VPC host has no neighbour entry for %s's SNAT6 address %s: %v %s", n.name, n.host.SNATIPv6, err, out)
		}
	}

	// A node stopped cleanly tells its clients to go to the next node at once (RESTART,[N]),
	// without waiting for ping-restart, and frees its blocks at once.
	first := c.clients[0]
	stopAt := time.Now()
	if err := c.nodes[0].proc.Stop(); err != nil {
		t.Fatalf("stopping node1: %v", err)
	}
	if got := c.blocks()[c.nodes[0].name]; len(got) != 0 {
		t.Errorf("node1 stopped, but its blocks %v are still leased", got)
	}
	c.waitCount(first.proc, "Initialization Sequence Completed", 2, 30*time.Second)
	t.Logf("%s reconnected %v after node1 was stopped", first.name, time.Since(stopAt).Round(100*time.Millisecond))
	if !strings.Contains(first.proc.Output(), "server-pushed-connection-reset") {
		t.Errorf("%s was not told to reconnect:\n%s", first.name, netlab.Tail(first.proc.Output(), 20))
	}
	if err := c.ping(first); err != nil {
		t.Error(err)
	}
}
