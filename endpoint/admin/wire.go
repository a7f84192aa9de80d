// Package admin is cvpn's administration API: HTTP and JSON on a unix socket, one operation per
// AWS Client VPN action (DescribeClientVpnConnections, TerminateClientVpnConnections,
// DescribeClientVpnEndpoints, DescribeClientVpnRoutes, DescribeClientVpnAuthorizationRules),
// with the request and response field names of the EC2 API reference, and cvpn's own actions
// (CvpnEnrollUserMfa, CvpnResetUserMfa, DescribeCvpnCluster). On a cluster (Source.Cluster) it
// lists and terminates connections across the nodes (cluster.go). It owns the wire shapes
// (this file), the one mapping from the engine's state to them (describe.go), the server that
// refuses callers other than root and the service's own user (server.go), the record of ended
// connections (History) and the typed client the CLI uses (client.go). It does not own the
// engine, the pool or the endpoint file: it reads them through Source.
//
// Fields that AWS does not have are cvpn extensions and sit under a "CvpnExtensions" object, so
// that a reader of the AWS shape never mistakes them for AWS fields.
package admin

// TimeFormat is how times are written, as AWS writes them in these responses: UTC, to the
// second.
const TimeFormat = "2006-01-02 15:04:05"

// notEnded is ConnectionEndTime of a connection that has not ended, as AWS sends it.
const notEnded = "-"

// Connection status codes (AWS ClientVpnConnectionStatusCode).
const (
	StatusActive      = "active"
	StatusTerminating = "terminating"
	StatusTerminated  = "terminated"
	// StatusFailedToTerminate is never returned for this node's sessions: tunnel/session's
	// goodbye tears a halted session down unconditionally (3 s at most, HALT acknowledged or
	// not), so none can fail. On a cluster it is a session of another node to which the
	// request could not even be queued (ErrNotQueued), or whose node refused it.
	StatusFailedToTerminate = "failed-to-terminate"
)

// Filter is one filter of a Describe request (AWS Filter).
type Filter struct {
	Name   string   `json:"Name"`
	Values []string `json:"Values"`
}

// Status is a code and message (AWS ClientVpnConnectionStatus, ClientVpnEndpointStatus,
// ClientVpnRouteStatus, ClientVpnAuthorizationRuleStatus).
type Status struct {
	Code    string `json:"Code"`
	Message string `json:"Message,omitempty"`
}

// DescribeClientVpnConnectionsInput is the request of DescribeClientVpnConnections. Filters:
// connection-id, username. MaxResults (5 to 1000; nil: all in one page) and NextToken page the
// connections, oldest established first.
type DescribeClientVpnConnectionsInput struct {
	ClientVpnEndpointID string   `json:"ClientVpnEndpointId,omitempty"`
	Filters             []Filter `json:"Filters,omitempty"`
	MaxResults          *int     `json:"MaxResults,omitempty"`
	NextToken           string   `json:"NextToken,omitempty"`
}

// DescribeClientVpnConnectionsOutput is its response. NextToken, when set, asks for the next
// page. Cvpn is set only when the answer lacks part of a cluster.
type DescribeClientVpnConnectionsOutput struct {
	Connections []Connection   `json:"Connections"`
	NextToken   string         `json:"NextToken,omitempty"`
	Cvpn        *PartialAnswer `json:"CvpnExtensions,omitempty"`
}

// PartialAnswer flags an answer of a cluster's node that lacks what some other nodes hold,
// and says why (etcd did not answer; some published connections were malformed or over the
// bound), so that a missing connection is never mistaken for one that does not exist.
type PartialAnswer struct {
	Partial bool   `json:"Partial"`
	Reason  string `json:"Reason"`
}

// Connection is one client connection (AWS ClientVpnConnection). The counters are decimal
// strings, as AWS sends them.
type Connection struct {
	ClientVpnEndpointID       string `json:"ClientVpnEndpointId"`
	Timestamp                 string `json:"Timestamp"`
	ConnectionID              string `json:"ConnectionId"`
	Username                  string `json:"Username"`
	ConnectionEstablishedTime string `json:"ConnectionEstablishedTime"`
	IngressBytes              string `json:"IngressBytes"`
	EgressBytes               string `json:"EgressBytes"`
	IngressPackets            string `json:"IngressPackets"`
	EgressPackets             string `json:"EgressPackets"`
	ClientIP                  string `json:"ClientIp"`
	// ClientIPv6Address is the client's IPv6 tunnel address, absent when the tunnel carries no
	// IPv6 (traffic_ip_address_type ipv4), as AWS leaves it out.
	ClientIPv6Address         string   `json:"ClientIpv6Address,omitempty"`
	CommonName                string   `json:"CommonName"`
	Status                    Status   `json:"Status"`
	ConnectionEndTime         string   `json:"ConnectionEndTime"`
	PostureComplianceStatuses []string `json:"PostureComplianceStatuses"`
	// Cvpn holds what AWS does not report.
	Cvpn ConnectionExtensions `json:"CvpnExtensions"`
}

// ConnectionExtensions are a connection's cvpn extensions: the device's address and port as
// the endpoint sees them, the transport, the data cipher, and the client's version and platform
// (IV_VER, IV_PLAT).
type ConnectionExtensions struct {
	DeviceIP          string `json:"DeviceIp"`
	DevicePort        int    `json:"DevicePort"`
	TransportProtocol string `json:"TransportProtocol"`
	Cipher            string `json:"Cipher"`
	ClientVersion     string `json:"ClientVersion"`
	Platform          string `json:"Platform"`
	// EndReason says why an ended connection ended.
	EndReason string `json:"EndReason,omitempty"`
	// Node is the cluster node that holds the connection; absent on a single node.
	Node string `json:"Node,omitempty"`
}

// TerminateClientVpnConnectionsInput is the request of TerminateClientVpnConnections: exactly
// one of ConnectionId and Username (for certificate-only sessions the common name).
type TerminateClientVpnConnectionsInput struct {
	ClientVpnEndpointID string `json:"ClientVpnEndpointId,omitempty"`
	ConnectionID        string `json:"ConnectionId,omitempty"`
	Username            string `json:"Username,omitempty"`
}

// TerminateClientVpnConnectionsOutput is its response. Cvpn is set only when, on a cluster,
// the other nodes' sessions of the user could not be found (etcd did not answer).
type TerminateClientVpnConnectionsOutput struct {
	ClientVpnEndpointID string                      `json:"ClientVpnEndpointId"`
	Username            string                      `json:"Username,omitempty"`
	ConnectionStatuses  []TerminateConnectionStatus `json:"ConnectionStatuses"`
	Cvpn                *PartialAnswer              `json:"CvpnExtensions,omitempty"`
}

// TerminateConnectionStatus is one terminated connection (AWS TerminateConnectionStatus). On
// a cluster, CurrentStatus terminating with a Message naming a node is a request queued for
// that node, which it carries out when it sees it.
type TerminateConnectionStatus struct {
	ConnectionID   string `json:"ConnectionId"`
	PreviousStatus Status `json:"PreviousStatus"`
	CurrentStatus  Status `json:"CurrentStatus"`
}

// DescribeClientVpnEndpointsInput is the request of DescribeClientVpnEndpoints. MaxResults (5
// to 1000) and NextToken are accepted as AWS's; the one endpoint always fits one page.
type DescribeClientVpnEndpointsInput struct {
	ClientVpnEndpointIDs []string `json:"ClientVpnEndpointIds,omitempty"`
	MaxResults           *int     `json:"MaxResults,omitempty"`
	NextToken            string   `json:"NextToken,omitempty"`
}

// DescribeClientVpnEndpointsOutput is its response: the one endpoint this process serves.
type DescribeClientVpnEndpointsOutput struct {
	ClientVpnEndpoints []ClientVpnEndpoint `json:"ClientVpnEndpoints"`
	NextToken          string              `json:"NextToken,omitempty"`
}

// ClientVpnEndpoint is the endpoint (AWS ClientVpnEndpoint, the fields that apply).
type ClientVpnEndpoint struct {
	ClientVpnEndpointID string `json:"ClientVpnEndpointId"`
	Description         string `json:"Description"`
	Status              Status `json:"Status"`
	CreationTime        string `json:"CreationTime"`
	DNSName             string `json:"DnsName"`
	ClientCidrBlock     string `json:"ClientCidrBlock"`
	// EndpointIPAddressType and TrafficIPAddressType are ipv4, ipv6 or dual-stack.
	EndpointIPAddressType string               `json:"EndpointIpAddressType"`
	TrafficIPAddressType  string               `json:"TrafficIpAddressType"`
	DNSServers            []string             `json:"DnsServers"`
	SplitTunnel           bool                 `json:"SplitTunnel"`
	VpnProtocol           string               `json:"VpnProtocol"`
	TransportProtocol     string               `json:"TransportProtocol"`
	VpnPort               int                  `json:"VpnPort"`
	SessionTimeoutHours   int                  `json:"SessionTimeoutHours"`
	ConnectionLogOptions  ConnectionLogOptions `json:"ConnectionLogOptions"`
	Cvpn                  EndpointExtensions   `json:"CvpnExtensions"`
}

// ConnectionLogOptions says whether the connection log is on (AWS ConnectionLogResponseOptions).
type ConnectionLogOptions struct {
	Enabled bool `json:"Enabled"`
}

// EndpointExtensions are the endpoint's cvpn extensions: its listeners as bound, the client
// address pool, the sessions and their traffic, and the drop counters by reason.
type EndpointExtensions struct {
	// ClientIPv6CidrBlock is client_ipv6_cidr_block, absent without IPv6 traffic (AWS takes
	// IPv6 client addresses from the subnet and names no block).
	ClientIPv6CidrBlock string            `json:"ClientIpv6CidrBlock,omitempty"`
	Listeners           []Listener        `json:"Listeners"`
	ActiveConnections   int               `json:"ActiveConnections"`
	Pool                PoolUsage         `json:"Pool"`
	Traffic             Traffic           `json:"Traffic"`
	Drops               map[string]uint64 `json:"Drops"`
	// Node is this node's name on a cluster, where ActiveConnections and Traffic count every
	// node's sessions and Pool and Drops this node's; PartialReason, when set, says why the
	// counts are this node's alone.
	Node          string `json:"Node,omitempty"`
	PartialReason string `json:"PartialReason,omitempty"`
}

// Listener is a socket the endpoint listens on.
type Listener struct {
	Protocol string `json:"Protocol"`
	Address  string `json:"Address"`
}

// PoolUsage is the client address pool's use.
type PoolUsage struct {
	Capacity int `json:"Capacity"`
	InUse    int `json:"InUse"`
}

// Traffic sums the counters of the active connections; strings, as the connections' are.
type Traffic struct {
	IngressBytes   string `json:"IngressBytes"`
	EgressBytes    string `json:"EgressBytes"`
	IngressPackets string `json:"IngressPackets"`
	EgressPackets  string `json:"EgressPackets"`
}

// DescribeClientVpnRoutesInput is the request of DescribeClientVpnRoutes. MaxResults (5 to
// 1000; nil: all in one page) and NextToken page the routes, in the endpoint file's order.
type DescribeClientVpnRoutesInput struct {
	ClientVpnEndpointID string `json:"ClientVpnEndpointId,omitempty"`
	MaxResults          *int   `json:"MaxResults,omitempty"`
	NextToken           string `json:"NextToken,omitempty"`
}

// DescribeClientVpnRoutesOutput is its response. NextToken, when set, asks for the next page.
type DescribeClientVpnRoutesOutput struct {
	Routes    []Route `json:"Routes"`
	NextToken string  `json:"NextToken,omitempty"`
}

// Route is one route of the endpoint (AWS ClientVpnRoute). TargetSubnet is "local" for the
// route to the client CIDR, else the target network's interface.
type Route struct {
	ClientVpnEndpointID string `json:"ClientVpnEndpointId"`
	DestinationCidr     string `json:"DestinationCidr"`
	TargetSubnet        string `json:"TargetSubnet"`
	Type                string `json:"Type"`
	Origin              string `json:"Origin"`
	Status              Status `json:"Status"`
	Description         string `json:"Description"`
}

// DescribeClientVpnAuthorizationRulesInput is the request of DescribeClientVpnAuthorizationRules.
// MaxResults (5 to 1000; nil: all in one page) and NextToken page the rules, in the endpoint
// file's order.
type DescribeClientVpnAuthorizationRulesInput struct {
	ClientVpnEndpointID string `json:"ClientVpnEndpointId,omitempty"`
	MaxResults          *int   `json:"MaxResults,omitempty"`
	NextToken           string `json:"NextToken,omitempty"`
}

// DescribeClientVpnAuthorizationRulesOutput is its response. NextToken, when set, asks for the
// next page.
type DescribeClientVpnAuthorizationRulesOutput struct {
	AuthorizationRules []AuthorizationRule `json:"AuthorizationRules"`
	NextToken          string              `json:"NextToken,omitempty"`
}

// AuthorizationRule is one rule (AWS AuthorizationRule).
type AuthorizationRule struct {
	ClientVpnEndpointID string `json:"ClientVpnEndpointId"`
	Description         string `json:"Description"`
	GroupID             string `json:"GroupId"`
	AccessAll           bool   `json:"AccessAll"`
	DestinationCidr     string `json:"DestinationCidr"`
	Status              Status `json:"Status"`
}

// Error is an error response, as AWS's error shape carries it: {"Error": {"Code", "Message"}}.
type Error struct {
	Code    string `json:"Code"`
	Message string `json:"Message"`
}

// errorResponse wraps Error on the wire.
type errorResponse struct {
	Error Error `json:"Error"`
}

func (e *Error) Error() string { return "admin: " + e.Code + ": " + e.Message }
