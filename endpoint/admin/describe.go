package admin

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/tunnel"
)

// Engine is what the API reads and acts on; *tunnel.Server is one.
type Engine interface {
	Clients() []tunnel.Status
	Terminate(match func(*tunnel.Info) bool) []tunnel.Status
	Addrs() []netip.AddrPort
	TCPAddrs() []netip.AddrPort
	Drops() map[string]uint64
}

// Pool is the client address pool's use; *ippool.Pool is one.
type Pool interface {
	Capacity() int
	InUse() int
}

// Source is the running endpoint as the API sees it.
type Source struct {
	// EndpointID is ClientVpnEndpointId.
	EndpointID string
	Engine     Engine
	Pool       Pool
	// Endpoint returns the endpoint file in force (routes, rules, settings).
	Endpoint func() *config.Endpoint
	// History is the record of ended connections; it must be among the engine's Events.
	History *History
	// Started is the endpoint's CreationTime.
	Started time.Time
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// MFA returns the running endpoint's TOTP enrolments, or why it has none; nil: none.
	MFA func() (Enrolments, error)
	// Cluster is the rest of the endpoint when this node is one of a cluster's; nil on a single
	// node. Set it before the handler serves: the API lists and terminates through it.
	Cluster Cluster

	// remote remembers the terminations asked of other nodes, until their sessions are gone.
	remote remoteTerminations
	// maxRemote bounds the other nodes' connections one answer lists; 0 means
	// maxClusterConnections (tests lower it).
	maxRemote int

	// tokenOnce draws tokenKey, the key NextTokens are signed with (tokenSecret).
	tokenOnce sync.Once
	tokenKey  []byte
}

// This file is the one place that maps the engine's state to the wire names.

func stamp(t time.Time) string { return t.UTC().Format(TimeFormat) }

func count(n uint64) string { return strconv.FormatUint(n, 10) }

// identity is the name TerminateClientVpnConnections' Username and the username filter match:
// the username, for certificate-only sessions the common name.
func identity(info *tunnel.Info) string {
	if info.User != "" {
		return info.User
	}
	return info.CommonName
}

// commonName is the certificate's common name, or, for a directory user without a
// certificate, the username, as AWS fills CommonName ("the name of the client certificate, or
// the Active Directory user name").
func commonName(info *tunnel.Info) string {
	if info.CommonName == "" {
		return info.Username
	}
	return info.CommonName
}

// transport names the engine's transport ("UDPv4", "TCPv4_SERVER") as AWS names its transport
// protocols: "udp" or "tcp".
func transport(t string) string {
	t = strings.ToLower(t)
	switch {
	case strings.HasPrefix(t, "udp"):
		return "udp"
	case strings.HasPrefix(t, "tcp"):
		return "tcp"
	}
	return t
}

// connection maps a session to a Connection.
func (s *Source) connection(st tunnel.Status, now time.Time, status Status, end string) Connection {
	info := st.Info
	c := Connection{
		ClientVpnEndpointID:       s.EndpointID,
		Timestamp:                 stamp(now),
		ConnectionID:              info.ConnectionID,
		Username:                  identity(info),
		ConnectionEstablishedTime: stamp(info.Established),
		IngressBytes:              count(st.Traffic.RxBytes),
		EgressBytes:               count(st.Traffic.TxBytes),
		IngressPackets:            count(st.Traffic.RxPackets),
		EgressPackets:             count(st.Traffic.TxPackets),
		CommonName:                commonName(info),
		Status:                    status,
		ConnectionEndTime:         end,
		PostureComplianceStatuses: append([]string{}, info.Posture...),
		Cvpn: ConnectionExtensions{
			TransportProtocol: transport(info.Transport),
			Cipher:            info.Cipher,
			ClientVersion:     info.Version,
			Platform:          info.Platform,
		},
	}
	if info.Address.IsValid() {
		c.ClientIP = info.Address.String()
	}
	if info.Address6.IsValid() {
		c.ClientIPv6Address = info.Address6.String()
	}
	if st.Remote.IsValid() {
		c.Cvpn.DeviceIP = st.Remote.Addr().Unmap().String()
		c.Cvpn.DevicePort = int(st.Remote.Port())
	}
	if s.Cluster != nil {
		c.Cvpn.Node = s.Cluster.Node()
	}
	return c
}

// Published maps a live session of this node to the Connection the cluster publishes for the
// other nodes' DescribeClientVpnConnections: exactly what this node's own Describe lists for
// it (status active, or terminating once told HALT), with Cvpn.Node set. Cluster must be set.
func (s *Source) Published(st tunnel.Status) Connection {
	status := Status{Code: StatusActive}
	if s.History.isTerminating(st.ConnectionID) {
		status = Status{Code: StatusTerminating, Message: terminatedByAdmin}
	}
	return s.connection(st, s.now(), status, notEnded)
}

func (s *Source) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

// connectionFilter is a DescribeClientVpnConnections filter set; an empty one matches all.
type connectionFilter struct{ ids, users []string }

func newConnectionFilter(fs []Filter) (connectionFilter, error) {
	var f connectionFilter
	for _, x := range fs {
		switch x.Name {
		case "connection-id":
			f.ids = append(f.ids, x.Values...)
		case "username":
			f.users = append(f.users, x.Values...)
		default:
			return f, &Error{Code: "InvalidParameterValue", Message: fmt.Sprintf("unknown filter %q (filters: connection-id, username)", x.Name)}
		}
	}
	return f, nil
}

func (f connectionFilter) match(info *tunnel.Info) bool {
	return f.matches(info.ConnectionID, identity(info))
}

// matches is match for a connection known by its id and Username (another node's).
func (f connectionFilter) matches(id, user string) bool {
	return (len(f.ids) == 0 || slices.Contains(f.ids, id)) && (len(f.users) == 0 || slices.Contains(f.users, user))
}

// listedConnection is a connection with its sort key.
type listedConnection struct {
	key string
	c   Connection
}

// connectionKey is a connection's sort key: its establishment time to the second, then its id.
// The time is fixed-width hex of the Unix seconds with the sign bit flipped, so that the keys
// sort as the times do. It is to the second, as ConnectionEstablishedTime is written, so that
// another node's connection (known by what it published) sorts by the same key as the node's
// own, and every node lists the cluster in one order.
func connectionKey(info *tunnel.Info) string { return sortKey(info.Established, info.ConnectionID) }

func sortKey(established time.Time, id string) string {
	return fmt.Sprintf("%016x.%s", uint64(established.Unix())^1<<63, id)
}

// validConnectionKey reports whether k has connectionKey's shape (a NextToken's key).
func validConnectionKey(k string) bool {
	t, id, ok := strings.Cut(k, ".")
	if !ok || len(t) != 16 || !isHex(t) || id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// terminatedByAdmin is the Status message of a connection told HALT by the API.
const terminatedByAdmin = "terminated by the administrator"

// describeConnections lists the active connections, those being terminated and those ended
// within the last 60 minutes, oldest established first (ties by connection id), one page of
// them. On a cluster the other nodes' published connections are listed with this node's; when
// they cannot be had the answer is this node's alone, flagged Partial.
func (s *Source) describeConnections(ctx context.Context, in DescribeClientVpnConnectionsInput) (DescribeClientVpnConnectionsOutput, error) {
	if err := s.checkEndpoint(in.ClientVpnEndpointID); err != nil {
		return DescribeClientVpnConnectionsOutput{}, err
	}
	f, err := newConnectionFilter(in.Filters)
	if err != nil {
		return DescribeClientVpnConnectionsOutput{}, err
	}
	p, err := s.pager("DescribeClientVpnConnections", in.MaxResults, in.NextToken, validConnectionKey)
	if err != nil {
		return DescribeClientVpnConnectionsOutput{}, err
	}
	now := s.now()
	var all []listedConnection
	add := func(st tunnel.Status, status Status, end string) {
		all = append(all, listedConnection{key: connectionKey(st.Info), c: s.connection(st, now, status, end)})
	}
	// live holds the ids listed as active or terminating; local every id this node knows,
	// whether the filters keep it or not (another node's publication of one is stale).
	live := make(map[string]bool)
	local := make(map[string]bool)
	for _, st := range s.Engine.Clients() {
		live[st.ConnectionID], local[st.ConnectionID] = true, true
		if !f.match(st.Info) {
			continue
		}
		status := Status{Code: StatusActive}
		if s.History.isTerminating(st.ConnectionID) {
			status = Status{Code: StatusTerminating, Message: terminatedByAdmin}
		}
		add(st, status, notEnded)
	}
	// Those saying goodbye: the engine lists them no more, and they have not ended yet.
	for _, st := range s.History.terminatingConnections() {
		local[st.ConnectionID] = true
		if live[st.ConnectionID] || !f.match(st.Info) {
			continue
		}
		live[st.ConnectionID] = true
		add(st, Status{Code: StatusTerminating, Message: terminatedByAdmin}, notEnded)
	}
	for _, e := range s.History.endedConnections() {
		local[e.status.ConnectionID] = true
		if live[e.status.ConnectionID] || !f.match(e.status.Info) {
			continue
		}
		add(e.status, Status{Code: StatusTerminated, Message: e.end.Reason}, stamp(e.end.Time))
		all[len(all)-1].c.Cvpn.EndReason = e.end.Reason
	}
	var partial *PartialAnswer
	if s.Cluster != nil {
		var remote []listedConnection
		remote, partial = s.clusterConnections(ctx, local)
		for _, r := range remote {
			if f.matches(r.c.ConnectionID, r.c.Username) {
				all = append(all, r)
			}
		}
	}
	slices.SortFunc(all, func(a, b listedConnection) int { return strings.Compare(a.key, b.key) })
	pg, next := page(p, all, func(l listedConnection) string { return l.key })
	out := DescribeClientVpnConnectionsOutput{Connections: make([]Connection, 0, len(pg)), NextToken: next, Cvpn: partial}
	for _, l := range pg {
		out.Connections = append(out.Connections, l.c)
	}
	return out, nil
}

// checkTerminate refuses a request for another endpoint, or one that gives not exactly one of
// ConnectionId and Username.
func (s *Source) checkTerminate(in TerminateClientVpnConnectionsInput) error {
	if err := s.checkEndpoint(in.ClientVpnEndpointID); err != nil {
		return err
	}
	if (in.ConnectionID == "") == (in.Username == "") {
		return &Error{Code: "MissingParameter", Message: "give exactly one of ConnectionId and Username"}
	}
	return nil
}

// TerminateLocal halts this node's connection with the id, or the user's connections on this
// node, and records them as terminating; a connection id this node does not know is
// InvalidClientVpnConnection.IdNotFound. On a cluster, the node that holds a session runs it for
// a terminate request another node forwarded (Cluster.Terminate).
func (s *Source) TerminateLocal(in TerminateClientVpnConnectionsInput) (TerminateClientVpnConnectionsOutput, error) {
	if err := s.checkTerminate(in); err != nil {
		return TerminateClientVpnConnectionsOutput{}, err
	}
	match := func(info *tunnel.Info) bool {
		if in.ConnectionID != "" {
			return info.ConnectionID == in.ConnectionID
		}
		return identity(info) == in.Username
	}
	out := TerminateClientVpnConnectionsOutput{ClientVpnEndpointID: s.EndpointID, Username: in.Username, ConnectionStatuses: []TerminateConnectionStatus{}}
	for _, st := range s.Engine.Terminate(match) {
		s.History.markTerminating(st)
		out.ConnectionStatuses = append(out.ConnectionStatuses, TerminateConnectionStatus{
			ConnectionID:   st.ConnectionID,
			PreviousStatus: Status{Code: StatusActive},
			CurrentStatus:  Status{Code: StatusTerminating},
		})
	}
	if in.ConnectionID != "" && len(out.ConnectionStatuses) == 0 && s.History.isTerminating(in.ConnectionID) {
		out.ConnectionStatuses = append(out.ConnectionStatuses, TerminateConnectionStatus{
			ConnectionID:   in.ConnectionID,
			PreviousStatus: Status{Code: StatusTerminating},
			CurrentStatus:  Status{Code: StatusTerminating},
		})
		return out, nil
	}
	if in.ConnectionID != "" && len(out.ConnectionStatuses) == 0 {
		for _, e := range s.History.endedConnections() {
			if e.status.ConnectionID == in.ConnectionID {
				out.ConnectionStatuses = append(out.ConnectionStatuses, TerminateConnectionStatus{
					ConnectionID:   in.ConnectionID,
					PreviousStatus: Status{Code: StatusTerminated},
					CurrentStatus:  Status{Code: StatusTerminated},
				})
				return out, nil
			}
		}
		return out, &Error{Code: codeConnectionNotFound, Message: fmt.Sprintf("no connection %s", in.ConnectionID)}
	}
	return out, nil
}

// checkEndpoint refuses a request for another endpoint; "" means this one.
func (s *Source) checkEndpoint(id string) error {
	if id != "" && id != s.EndpointID {
		return &Error{Code: "InvalidClientVpnEndpointId.NotFound", Message: fmt.Sprintf("this is %s, not %s", s.EndpointID, id)}
	}
	return nil
}

// describeEndpoints describes the endpoint. On a cluster ActiveConnections and Traffic count
// every node's sessions (the others' as they last published them); Pool and Drops are this
// node's.
func (s *Source) describeEndpoints(ctx context.Context, in DescribeClientVpnEndpointsInput) (DescribeClientVpnEndpointsOutput, error) {
	for _, id := range in.ClientVpnEndpointIDs {
		if err := s.checkEndpoint(id); err != nil {
			return DescribeClientVpnEndpointsOutput{}, err
		}
	}
	// The one endpoint always fits one page, so no token is issued; one of another action's is
	// refused all the same.
	p, err := s.pager("DescribeClientVpnEndpoints", in.MaxResults, in.NextToken, func(k string) bool { return k == s.EndpointID })
	if err != nil {
		return DescribeClientVpnEndpointsOutput{}, err
	}
	if p.after >= s.EndpointID {
		return DescribeClientVpnEndpointsOutput{ClientVpnEndpoints: []ClientVpnEndpoint{}}, nil
	}
	cfg := s.Endpoint()
	clients := s.Engine.Clients()
	var rx, tx, rxp, txp uint64
	local := make(map[string]bool, len(clients))
	for _, c := range clients {
		local[c.ConnectionID] = true
		rx, tx, rxp, txp = rx+c.Traffic.RxBytes, tx+c.Traffic.TxBytes, rxp+c.Traffic.RxPackets, txp+c.Traffic.TxPackets
	}
	active := len(clients)
	var ext EndpointExtensions
	if s.Cluster != nil {
		remote, partial := s.clusterConnections(ctx, local)
		for _, r := range remote {
			// clusterConnections checked that the counters parse.
			active++
			rx, tx = rx+parseCount(r.c.IngressBytes), tx+parseCount(r.c.EgressBytes)
			rxp, txp = rxp+parseCount(r.c.IngressPackets), txp+parseCount(r.c.EgressPackets)
		}
		ext.Node = s.Cluster.Node()
		if partial != nil {
			ext.PartialReason = partial.Reason
		}
	}
	e := ClientVpnEndpoint{
		ClientVpnEndpointID:   s.EndpointID,
		Description:           cfg.Description,
		Status:                Status{Code: "available"},
		CreationTime:          stamp(s.Started),
		DNSName:               cfg.RemoteHostname,
		EndpointIPAddressType: cfg.EndpointIPAddressType,
		TrafficIPAddressType:  cfg.TrafficIPAddressType,
		DNSServers:            []string{},
		SplitTunnel:           cfg.SplitTunnel,
		VpnProtocol:           "openvpn",
		SessionTimeoutHours:   int(cfg.SessionTimeout / time.Hour),
		ConnectionLogOptions:  ConnectionLogOptions{Enabled: cfg.ConnectionLog.Enabled},
		Cvpn: EndpointExtensions{
			Listeners:         []Listener{},
			ActiveConnections: active,
			Pool:              PoolUsage{Capacity: s.Pool.Capacity(), InUse: s.Pool.InUse()},
			Traffic:           Traffic{IngressBytes: count(rx), EgressBytes: count(tx), IngressPackets: count(rxp), EgressPackets: count(txp)},
			Drops:             s.Engine.Drops(),
			Node:              ext.Node,
			PartialReason:     ext.PartialReason,
		},
	}
	if cfg.ClientCIDRBlock.IsValid() {
		e.ClientCidrBlock = cfg.ClientCIDRBlock.String()
	}
	if cfg.ClientIPv6CIDRBlock.IsValid() {
		e.Cvpn.ClientIPv6CidrBlock = cfg.ClientIPv6CIDRBlock.String()
	}
	for _, d := range cfg.DNSServers {
		e.DNSServers = append(e.DNSServers, d.String())
	}
	if len(cfg.Transport) > 0 {
		e.TransportProtocol, e.VpnPort = cfg.Transport[0].Protocol, int(cfg.Transport[0].Port)
	}
	for _, a := range s.Engine.Addrs() {
		e.Cvpn.Listeners = append(e.Cvpn.Listeners, Listener{Protocol: "udp", Address: a.String()})
	}
	for _, a := range s.Engine.TCPAddrs() {
		e.Cvpn.Listeners = append(e.Cvpn.Listeners, Listener{Protocol: "tcp", Address: a.String()})
	}
	return DescribeClientVpnEndpointsOutput{ClientVpnEndpoints: []ClientVpnEndpoint{e}}, nil
}

// describeRoutes lists the file's routes.
func (s *Source) describeRoutes(_ context.Context, in DescribeClientVpnRoutesInput) (DescribeClientVpnRoutesOutput, error) {
	if err := s.checkEndpoint(in.ClientVpnEndpointID); err != nil {
		return DescribeClientVpnRoutesOutput{}, err
	}
	p, err := s.pager("DescribeClientVpnRoutes", in.MaxResults, in.NextToken, validIndexKey)
	if err != nil {
		return DescribeClientVpnRoutesOutput{}, err
	}
	cfg := s.Endpoint()
	routes := make([]Route, 0, len(cfg.Routes))
	for _, r := range cfg.Routes {
		route := Route{ClientVpnEndpointID: s.EndpointID, DestinationCidr: r.DestinationCIDRBlock.String(),
			TargetSubnet: cfg.TargetNetwork.Interface, Type: "Nat", Origin: "add-route", Status: Status{Code: "active"}, Description: r.Description}
		if r.Local {
			route.TargetSubnet, route.Type = config.RouteTargetLocal, "local"
		}
		routes = append(routes, route)
	}
	pg, next := pageIndexed(p, routes)
	return DescribeClientVpnRoutesOutput{Routes: pg, NextToken: next}, nil
}

// pageIndexed pages a list kept in the endpoint file's order, keyed by index. A reload between
// two requests that adds or removes an item before the token's can shift the rest by one.
func pageIndexed[T any](p pager, items []T) ([]T, string) {
	type indexed struct {
		key  string
		item T
	}
	keyed := make([]indexed, len(items))
	for i, x := range items {
		keyed[i] = indexed{indexKey(i), x}
	}
	pg, next := page(p, keyed, func(x indexed) string { return x.key })
	out := make([]T, 0, len(pg))
	for _, x := range pg {
		out = append(out, x.item)
	}
	return out, next
}

// describeAuthorizationRules lists the file's authorization rules.
func (s *Source) describeAuthorizationRules(_ context.Context, in DescribeClientVpnAuthorizationRulesInput) (DescribeClientVpnAuthorizationRulesOutput, error) {
	if err := s.checkEndpoint(in.ClientVpnEndpointID); err != nil {
		return DescribeClientVpnAuthorizationRulesOutput{}, err
	}
	p, err := s.pager("DescribeClientVpnAuthorizationRules", in.MaxResults, in.NextToken, validIndexKey)
	if err != nil {
		return DescribeClientVpnAuthorizationRulesOutput{}, err
	}
	var rules []AuthorizationRule
	for _, r := range s.Endpoint().AuthorizationRules {
		rules = append(rules, AuthorizationRule{ClientVpnEndpointID: s.EndpointID, Description: r.Description,
			GroupID: r.AccessGroupID, AccessAll: r.AuthorizeAllGroups, DestinationCidr: r.TargetNetworkCIDR.String(), Status: Status{Code: "active"}})
	}
	pg, next := pageIndexed(p, rules)
	return DescribeClientVpnAuthorizationRulesOutput{AuthorizationRules: pg, NextToken: next}, nil
}
