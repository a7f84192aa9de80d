package admin

import "context"

// Cluster is the rest of the endpoint when this node is one of a cluster's (package cluster
// implements it over etcd); nil on a single node. The API then lists and terminates
// connections cluster-wide: the other nodes' sessions come from what they published, and a
// terminate for a session another node holds is a request that node carries out and
// acknowledges.
type Cluster interface {
	// Node is this node's name (cluster.node_name).
	Node() string
	// Connections returns the connections the other live nodes published, each with
	// Cvpn.Node set; the counters are as of the owner's last publication.
	Connections(ctx context.Context) ([]Connection, error)
	// Terminate asks node to terminate the connections that in matches (its ConnectionId or
	// Username), waits for the node's answer and returns it; an error when the node did not
	// answer in time (the request stays queued for it).
	Terminate(ctx context.Context, node string, in TerminateClientVpnConnectionsInput) (TerminateClientVpnConnectionsOutput, error)
	// Nodes describes every node the cluster knows, live or not.
	Nodes(ctx context.Context) ([]ClusterNode, error)
}

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
