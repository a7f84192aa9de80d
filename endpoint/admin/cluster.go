package admin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Cluster is the rest of the endpoint when this node is one of a cluster's (package cluster
// implements it over etcd); nil on a single node. The API then lists and terminates
// connections cluster-wide: the other nodes' sessions come from what they published
// (Source.Published), and a terminate for a session another node holds is a request that node
// carries out (Source.TerminateLocal) and acknowledges.
type Cluster interface {
	// Node is this node's name (cluster.node_name).
	Node() string
	// Connections returns the connections the other live nodes published, each with
	// Cvpn.Node set; the counters are as of the owner's last publication.
	Connections(ctx context.Context) ([]Connection, error)
	// Terminate asks node to terminate the connections that in matches (its ConnectionId or
	// Username), waits for the node's answer and returns it. The node's own refusal comes back
	// as an *Error; any other error means the node did not answer in time and the request stays
	// queued for it, unless the error wraps ErrNotQueued.
	Terminate(ctx context.Context, node string, in TerminateClientVpnConnectionsInput) (TerminateClientVpnConnectionsOutput, error)
	// Nodes describes every node the cluster knows, live or not.
	Nodes(ctx context.Context) ([]ClusterNode, error)
}

// ErrNotQueued is wrapped by a Cluster.Terminate error when the request was never stored for
// the node (etcd refused or did not answer the write): unlike a node that did not answer, no
// one will carry it out, so the API reports those connections failed-to-terminate. Without
// this distinction the API would tell the operator "queued" for a request that is lost.
var ErrNotQueued = errors.New("the terminate request could not be queued")

// ClusterNode is one node of a cluster as DescribeCvpnCluster reports it.
type ClusterNode struct {
	Name          string `json:"Name"`
	PublicAddress string `json:"PublicAddress"`
	// Alive says the node holds its lease in etcd now.
	Alive bool `json:"Alive"`
	// ConfigRevision is the etcd revision of the pushed endpoint file the node runs (0: its
	// own file, nothing pushed yet); ConfigError, when set, is why it refused a newer one.
	ConfigRevision int64  `json:"ConfigRevision"`
	ConfigError    string `json:"ConfigError,omitempty"`
	// Connections is how many sessions the node published; Blocks how many address blocks
	// it leases.
	Connections int    `json:"Connections"`
	Blocks      int    `json:"Blocks"`
	SNATAddress string `json:"SnatAddress,omitempty"`
	Started     string `json:"Started,omitempty"`
}

// DescribeCvpnClusterInput is the request of DescribeCvpnCluster, a cvpn extension (AWS runs
// its endpoints' nodes itself and shows none).
type DescribeCvpnClusterInput struct {
	ClientVpnEndpointID string `json:"ClientVpnEndpointId,omitempty"`
}

// DescribeCvpnClusterOutput is its response: the name of the node that answered, and every
// node the cluster knows, by name.
type DescribeCvpnClusterOutput struct {
	ClientVpnEndpointID string        `json:"ClientVpnEndpointId"`
	Node                string        `json:"Node"`
	Nodes               []ClusterNode `json:"Nodes"`
}

// Error codes of the cluster-wide answers. codeNotClustered is EC2's code for an action the
// resource does not support; codeUnavailable is its code for a dependency that did not answer
// (served as 503).
const (
	codeConnectionNotFound = "InvalidClientVpnConnection.IdNotFound"
	codeNotClustered       = "UnsupportedOperation"
	codeUnavailable        = "ServiceUnavailable"
)

// Bounds on what the other nodes published. Only cvpn nodes write under the cluster's prefix in
// etcd, but a node with a bug, or whoever holds a node's etcd credentials, must not make one
// Describe sort millions of connections or print control characters into an operator's
// terminal: a connection that is not well formed is skipped, those over the cap are left out,
// and either way the answer is flagged Partial.
const (
	// remoteTimeout bounds one call to the cluster: the list of the other nodes' connections,
	// one node's answer to a terminate request, the list of nodes.
	remoteTimeout = 5 * time.Second
	// maxClusterConnections is above AWS's 126,000 connections of one endpoint.
	maxClusterConnections = 1 << 17
	// maxClusterNodes bounds DescribeCvpnCluster's list and the nodes one terminate asks.
	maxClusterNodes = 1024
	// maxRemoteField bounds each string of another node's connection; maxRemotePosture its
	// PostureComplianceStatuses.
	maxRemoteField   = 256
	maxRemotePosture = 16
)

// queuedMessage is the Status message of a connection whose terminate request waits for its
// node.
func queuedMessage(node string) string {
	return fmt.Sprintf("the request is queued for node %s, which carries it out when it sees it", node)
}

// remoteTerminations remembers the connections of other nodes this node asked to terminate, so
// that Describe lists them as terminating while the owner's publication still says active (or
// while the owner has not seen a queued request). An entry goes when the connection is no longer
// published, after historyWindow, or the oldest when historyCap are held.
type remoteTerminations struct {
	// mu guards byID; a leaf lock.
	mu   sync.Mutex
	byID map[string]remoteTermination
}

type remoteTermination struct {
	status Status
	since  time.Time
}

func (r *remoteTerminations) mark(id string, st Status, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byID == nil {
		r.byID = make(map[string]remoteTermination)
	}
	for k, v := range r.byID {
		if now.Sub(v.since) > historyWindow {
			delete(r.byID, k)
		}
	}
	if _, ok := r.byID[id]; !ok && len(r.byID) >= historyCap {
		oldest := ""
		for k, v := range r.byID {
			if oldest == "" || v.since.Before(r.byID[oldest].since) {
				oldest = k
			}
		}
		delete(r.byID, oldest)
	}
	r.byID[id] = remoteTermination{status: st, since: now}
}

// snapshot returns the statuses recorded, by connection id, and forgets the entries whose ids
// are not in published (those sessions ended).
func (r *remoteTerminations) snapshot(published map[string]bool) map[string]Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]Status, len(r.byID))
	for id, v := range r.byID {
		if !published[id] {
			delete(r.byID, id)
			continue
		}
		out[id] = v.status
	}
	return out
}

// clean reports whether s is short and holds no control characters: what another node's
// string must be to be shown.
func clean(s string) bool {
	if len(s) > maxRemoteField {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// validConnectionID reports whether id is in the form tunnel/session gives ("cvpn-connection-"
// and 17 lowercase hex digits).
func validConnectionID(id string) bool {
	const prefix = "cvpn-connection-"
	rest, ok := strings.CutPrefix(id, prefix)
	return ok && len(rest) == 17 && isHex(rest)
}

// validNodeName reports whether n can be a node's name as shown: printable ASCII, no slash
// (it is a key segment in etcd), at most 253 bytes.
func validNodeName(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c <= ' ' || c > '~' || c == '/' {
			return false
		}
	}
	return true
}

func validAddr(s string, empty bool) bool {
	if s == "" {
		return empty
	}
	_, err := netip.ParseAddr(s)
	return err == nil
}

func parseCount(s string) uint64 {
	n, _ := strconv.ParseUint(s, 10, 64)
	return n
}

// remoteKey checks a connection another node published and returns its sort key; ok is false
// when it is malformed: then it is not listed.
func (s *Source) remoteKey(c *Connection) (key string, ok bool) {
	if !validConnectionID(c.ConnectionID) || !validNodeName(c.Cvpn.Node) || c.Cvpn.Node == s.Cluster.Node() {
		return "", false
	}
	if c.Status.Code != StatusActive && c.Status.Code != StatusTerminating {
		return "", false
	}
	for _, f := range []string{c.Timestamp, c.Username, c.CommonName, c.Status.Message, c.ConnectionEndTime, c.Cvpn.TransportProtocol,
		c.Cvpn.Cipher, c.Cvpn.ClientVersion, c.Cvpn.Platform, c.Cvpn.EndReason} {
		if !clean(f) {
			return "", false
		}
	}
	for _, n := range []string{c.IngressBytes, c.EgressBytes, c.IngressPackets, c.EgressPackets} {
		if _, err := strconv.ParseUint(n, 10, 64); err != nil {
			return "", false
		}
	}
	if !validAddr(c.ClientIP, true) || !validAddr(c.ClientIPv6Address, true) || !validAddr(c.Cvpn.DeviceIP, true) ||
		c.Cvpn.DevicePort < 0 || c.Cvpn.DevicePort > 65535 || len(c.PostureComplianceStatuses) > maxRemotePosture {
		return "", false
	}
	for _, p := range c.PostureComplianceStatuses {
		if !clean(p) {
			return "", false
		}
	}
	est, err := time.ParseInLocation(TimeFormat, c.ConnectionEstablishedTime, time.UTC)
	if err != nil {
		return "", false
	}
	return sortKey(est, c.ConnectionID), true
}

// clusterConnections returns the other nodes' connections, checked, each with its sort key,
// but those whose ids are in local (this node's; a publication of one is stale) or listed
// already; and, when it lacks some, why. The connections are this endpoint's: their
// ClientVpnEndpointId is set to this node's, which the request was checked against.
func (s *Source) clusterConnections(ctx context.Context, local map[string]bool) ([]listedConnection, *PartialAnswer) {
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	conns, err := s.Cluster.Connections(ctx)
	if err != nil {
		return nil, &PartialAnswer{Partial: true, Reason: fmt.Sprintf("only node %s's connections: the other nodes' could not be read from the cluster: %v", s.Cluster.Node(), err)}
	}
	bound := s.maxRemote
	if bound == 0 {
		bound = maxClusterConnections
	}
	out := make([]listedConnection, 0, min(len(conns), bound))
	seen := make(map[string]bool, cap(out))
	published := make(map[string]bool, cap(out))
	malformed, over := 0, 0
	for i := range conns {
		c := conns[i]
		if c.Cvpn.Node == s.Cluster.Node() {
			// This node's own, published before it restarted under the same name and not yet
			// expired: stale, not malformed.
			continue
		}
		key, ok := s.remoteKey(&c)
		switch {
		case !ok:
			malformed++
			continue
		case local[c.ConnectionID] || seen[c.ConnectionID]:
			continue
		case len(out) == bound:
			over++
			continue
		}
		seen[c.ConnectionID], published[c.ConnectionID] = true, true
		c.ClientVpnEndpointID = s.EndpointID
		c.PostureComplianceStatuses = append([]string{}, c.PostureComplianceStatuses...)
		out = append(out, listedConnection{key: key, c: c})
	}
	asked := s.remote.snapshot(published)
	for i := range out {
		if st, ok := asked[out[i].c.ConnectionID]; ok && out[i].c.Status.Code == StatusActive {
			out[i].c.Status = st
		}
	}
	var why []string
	if malformed > 0 {
		why = append(why, fmt.Sprintf("%d malformed connections published by other nodes were skipped", malformed))
	}
	if over > 0 {
		why = append(why, fmt.Sprintf("%d connections over the bound of %d from other nodes were left out", over, bound))
	}
	if len(why) == 0 {
		return out, nil
	}
	return out, &PartialAnswer{Partial: true, Reason: strings.Join(why, "; ")}
}

// terminateConnections halts the connection with the id, or the user's connections: on a
// single node TerminateLocal; on a cluster this node's, and through Cluster.Terminate those of
// the other nodes that published them, each node asked in parallel and given remoteTimeout.
// A node that did not answer has its connections reported terminating, queued for it.
func (s *Source) terminateConnections(ctx context.Context, in TerminateClientVpnConnectionsInput) (TerminateClientVpnConnectionsOutput, error) {
	if err := s.checkTerminate(in); err != nil {
		return TerminateClientVpnConnectionsOutput{}, err
	}
	if s.Cluster == nil {
		return s.TerminateLocal(in)
	}
	// Checked here: the other nodes answer for this endpoint whatever id they give it.
	in.ClientVpnEndpointID = ""
	out, err := s.TerminateLocal(in)
	var e *Error
	notHere := in.ConnectionID != "" && errors.As(err, &e) && e.Code == codeConnectionNotFound
	if err != nil && !notHere {
		return out, err
	}
	if in.ConnectionID != "" && !notHere {
		return out, nil // this node's own
	}
	cctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	published, lerr := s.Cluster.Connections(cctx)
	cancel()
	if lerr != nil {
		if notHere {
			return TerminateClientVpnConnectionsOutput{}, &Error{Code: codeUnavailable, Message: fmt.Sprintf(
				"no connection %s on node %s, and the other nodes' could not be read from the cluster: %v", in.ConnectionID, s.Cluster.Node(), lerr)}
		}
		out.Cvpn = &PartialAnswer{Partial: true, Reason: fmt.Sprintf(
			"only node %s's connections were terminated: the other nodes' could not be read from the cluster: %v", s.Cluster.Node(), lerr)}
		return out, nil
	}
	// The nodes to ask, and the connections each published that the request matches.
	byNode := map[string][]Connection{}
	for i := range published {
		c := published[i]
		if _, ok := s.remoteKey(&c); !ok {
			continue
		}
		if (in.ConnectionID != "" && c.ConnectionID == in.ConnectionID) || (in.Username != "" && c.Username == in.Username) {
			byNode[c.Cvpn.Node] = append(byNode[c.Cvpn.Node], c)
		}
	}
	if notHere && len(byNode) == 0 {
		return out, err // unknown anywhere
	}
	nodes := slices.Sorted(maps.Keys(byNode))
	if len(nodes) > maxClusterNodes {
		// One goroutine per node asked: the published data names the nodes, so bound them.
		out.Cvpn = &PartialAnswer{Partial: true, Reason: fmt.Sprintf("%d nodes published matching connections; the first %d by name were asked", len(nodes), maxClusterNodes)}
		nodes = nodes[:maxClusterNodes]
	}
	type answer struct {
		statuses []TerminateConnectionStatus
		refused  *Error
	}
	answers := make([]answer, len(nodes))
	var wg sync.WaitGroup
	for i, node := range nodes {
		wg.Go(func() {
			answers[i].statuses, answers[i].refused = s.terminateOn(ctx, node, in, byNode[node])
		})
	}
	wg.Wait()
	for i, a := range answers {
		if a.refused != nil && notHere {
			return TerminateClientVpnConnectionsOutput{}, a.refused // the owner's word on its connection
		}
		if a.refused != nil {
			// One node's refusal fails its own connections, not the user's others.
			failed := Status{Code: StatusFailedToTerminate, Message: fmt.Sprintf("node %s refused: %s: %s", nodes[i], a.refused.Code, a.refused.Message)}
			for _, c := range byNode[nodes[i]] {
				out.ConnectionStatuses = append(out.ConnectionStatuses, TerminateConnectionStatus{ConnectionID: c.ConnectionID,
					PreviousStatus: Status{Code: c.Status.Code}, CurrentStatus: failed})
			}
			continue
		}
		out.ConnectionStatuses = append(out.ConnectionStatuses, a.statuses...)
	}
	return out, nil
}

// terminateOn asks node to terminate what in matches, of which it published conns, and
// returns the statuses to report: the node's answer, checked; conns as queued for it when it
// did not answer; conns as failed when the request could not be queued; or the node's refusal.
func (s *Source) terminateOn(ctx context.Context, node string, in TerminateClientVpnConnectionsInput, conns []Connection) ([]TerminateConnectionStatus, *Error) {
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	ans, err := s.Cluster.Terminate(ctx, node, in)
	var refused *Error
	if errors.As(err, &refused) {
		if !clean(refused.Code) || !clean(refused.Message) {
			return nil, &Error{Code: "InternalError", Message: fmt.Sprintf("node %s refused with a malformed error", node)}
		}
		return nil, refused
	}
	now := s.now()
	if err != nil {
		current := Status{Code: StatusTerminating, Message: queuedMessage(node)}
		if errors.Is(err, ErrNotQueued) {
			current = Status{Code: StatusFailedToTerminate, Message: fmt.Sprintf("node %s was not asked: %v", node, err)}
		}
		out := make([]TerminateConnectionStatus, 0, len(conns))
		for _, c := range conns {
			out = append(out, TerminateConnectionStatus{ConnectionID: c.ConnectionID, PreviousStatus: Status{Code: c.Status.Code}, CurrentStatus: current})
			if current.Code == StatusTerminating {
				s.remote.mark(c.ConnectionID, current, now)
			}
		}
		return out, nil
	}
	// The node's answer: only well-formed statuses of known codes, at most as many as the
	// bound on its connections.
	out := make([]TerminateConnectionStatus, 0, min(len(ans.ConnectionStatuses), maxClusterConnections))
	known := []string{StatusActive, StatusTerminating, StatusTerminated, StatusFailedToTerminate}
	for _, st := range ans.ConnectionStatuses {
		if len(out) == maxClusterConnections || !validConnectionID(st.ConnectionID) ||
			!slices.Contains(known, st.PreviousStatus.Code) || !slices.Contains(known, st.CurrentStatus.Code) ||
			!clean(st.PreviousStatus.Message) || !clean(st.CurrentStatus.Message) {
			continue
		}
		if st.CurrentStatus.Code == StatusTerminating {
			s.remote.mark(st.ConnectionID, Status{Code: StatusTerminating, Message: terminatedByAdmin}, now)
		}
		out = append(out, st)
	}
	return out, nil
}

// describeCluster answers DescribeCvpnCluster: this node's name and every node the cluster
// knows, by name.
func (s *Source) describeCluster(ctx context.Context, in DescribeCvpnClusterInput) (DescribeCvpnClusterOutput, error) {
	if err := s.checkEndpoint(in.ClientVpnEndpointID); err != nil {
		return DescribeCvpnClusterOutput{}, err
	}
	if s.Cluster == nil {
		return DescribeCvpnClusterOutput{}, &Error{Code: codeNotClustered, Message: "this endpoint is not clustered: its endpoint file has no cluster section"}
	}
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	nodes, err := s.Cluster.Nodes(ctx)
	if err != nil {
		return DescribeCvpnClusterOutput{}, &Error{Code: codeUnavailable, Message: fmt.Sprintf("the cluster's nodes could not be read: %v", err)}
	}
	// What the nodes wrote into etcd is shown to an operator: a node without a proper name is
	// left out, and a string with control characters is replaced.
	out := DescribeCvpnClusterOutput{ClientVpnEndpointID: s.EndpointID, Node: s.Cluster.Node(), Nodes: []ClusterNode{}}
	for _, n := range nodes {
		if !validNodeName(n.Name) {
			continue
		}
		for _, f := range []*string{&n.PublicAddress, &n.ConfigError, &n.SNATAddress, &n.Started} {
			if !clean(*f) {
				*f = "(malformed)"
			}
		}
		out.Nodes = append(out.Nodes, n)
	}
	slices.SortFunc(out.Nodes, func(a, b ClusterNode) int { return strings.Compare(a.Name, b.Name) })
	if len(out.Nodes) > maxClusterNodes {
		out.Nodes = out.Nodes[:maxClusterNodes]
	}
	return out, nil
}
