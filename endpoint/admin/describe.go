package admin

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
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
		CommonName:                info.CommonName,
		Status:                    status,
		ConnectionEndTime:         end,
		PostureComplianceStatuses: []string{},
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
	if st.Remote.IsValid() {
		c.Cvpn.DeviceIP = st.Remote.Addr().Unmap().String()
		c.Cvpn.DevicePort = int(st.Remote.Port())
	}
	return c
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
	return (len(f.ids) == 0 || slices.Contains(f.ids, info.ConnectionID)) &&
		(len(f.users) == 0 || slices.Contains(f.users, identity(info)))
}

// describeConnections lists the active connections, oldest first, then those ended within the
// last 60 minutes, oldest first.
func (s *Source) describeConnections(in DescribeClientVpnConnectionsInput) (DescribeClientVpnConnectionsOutput, error) {
	if err := s.checkEndpoint(in.ClientVpnEndpointID); err != nil {
		return DescribeClientVpnConnectionsOutput{}, err
	}
	f, err := newConnectionFilter(in.Filters)
	if err != nil {
		return DescribeClientVpnConnectionsOutput{}, err
	}
	now := s.now()
	out := DescribeClientVpnConnectionsOutput{Connections: []Connection{}}
	live := make(map[string]bool)
	for _, st := range s.Engine.Clients() {
		live[st.ConnectionID] = true
		if !f.match(st.Info) {
			continue
		}
		status := Status{Code: StatusActive}
		if s.History.isTerminating(st.ConnectionID) {
			status = Status{Code: StatusTerminating, Message: "terminated by the administrator"}
		}
		out.Connections = append(out.Connections, s.connection(st, now, status, notEnded))
	}
	// Those saying goodbye: the engine lists them no more, and they have not ended yet.
	terminating := s.History.terminatingConnections()
	slices.SortFunc(terminating, func(a, b tunnel.Status) int { return strings.Compare(a.ConnectionID, b.ConnectionID) })
	for _, st := range terminating {
		if live[st.ConnectionID] || !f.match(st.Info) {
			continue
		}
		live[st.ConnectionID] = true
		out.Connections = append(out.Connections, s.connection(st, now, Status{Code: StatusTerminating, Message: "terminated by the administrator"}, notEnded))
	}
	for _, e := range s.History.endedConnections() {
		if live[e.status.ConnectionID] || !f.match(e.status.Info) {
			continue
		}
		c := s.connection(e.status, now, Status{Code: StatusTerminated, Message: e.end.Reason}, stamp(e.end.Time))
		c.Cvpn.EndReason = e.end.Reason
		out.Connections = append(out.Connections, c)
	}
	return out, nil
}

// terminateConnections halts the connection with the id, or the user's connections.
func (s *Source) terminateConnections(in TerminateClientVpnConnectionsInput) (TerminateClientVpnConnectionsOutput, error) {
	if err := s.checkEndpoint(in.ClientVpnEndpointID); err != nil {
		return TerminateClientVpnConnectionsOutput{}, err
	}
	if (in.ConnectionID == "") == (in.Username == "") {
		return TerminateClientVpnConnectionsOutput{}, &Error{Code: "MissingParameter", Message: "give exactly one of ConnectionId and Username"}
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
		return out, &Error{Code: "InvalidClientVpnConnection.IdNotFound", Message: fmt.Sprintf("no connection %s", in.ConnectionID)}
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

// describeEndpoints describes the endpoint.
func (s *Source) describeEndpoints(in DescribeClientVpnEndpointsInput) (DescribeClientVpnEndpointsOutput, error) {
	for _, id := range in.ClientVpnEndpointIDs {
		if err := s.checkEndpoint(id); err != nil {
			return DescribeClientVpnEndpointsOutput{}, err
		}
	}
	cfg := s.Endpoint()
	clients := s.Engine.Clients()
	var rx, tx, rxp, txp uint64
	for _, c := range clients {
		rx, tx, rxp, txp = rx+c.Traffic.RxBytes, tx+c.Traffic.TxBytes, rxp+c.Traffic.RxPackets, txp+c.Traffic.TxPackets
	}
	e := ClientVpnEndpoint{
		ClientVpnEndpointID:  s.EndpointID,
		Description:          cfg.Description,
		Status:               Status{Code: "available"},
		CreationTime:         stamp(s.Started),
		DNSName:              cfg.RemoteHostname,
		ClientCidrBlock:      cfg.ClientCIDRBlock.String(),
		DNSServers:           []string{},
		SplitTunnel:          cfg.SplitTunnel,
		VpnProtocol:          "openvpn",
		SessionTimeoutHours:  int(cfg.SessionTimeout / time.Hour),
		ConnectionLogOptions: ConnectionLogOptions{Enabled: cfg.ConnectionLog.Enabled},
		Cvpn: EndpointExtensions{
			Listeners:         []Listener{},
			ActiveConnections: len(clients),
			Pool:              PoolUsage{Capacity: s.Pool.Capacity(), InUse: s.Pool.InUse()},
			Traffic:           Traffic{IngressBytes: count(rx), EgressBytes: count(tx), IngressPackets: count(rxp), EgressPackets: count(txp)},
			Drops:             s.Engine.Drops(),
		},
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
func (s *Source) describeRoutes(in DescribeClientVpnRoutesInput) (DescribeClientVpnRoutesOutput, error) {
	if err := s.checkEndpoint(in.ClientVpnEndpointID); err != nil {
		return DescribeClientVpnRoutesOutput{}, err
	}
	cfg := s.Endpoint()
	out := DescribeClientVpnRoutesOutput{Routes: []Route{}}
	for _, r := range cfg.Routes {
		route := Route{ClientVpnEndpointID: s.EndpointID, DestinationCidr: r.DestinationCIDRBlock.String(),
			TargetSubnet: cfg.TargetNetwork.Interface, Type: "Nat", Origin: "add-route", Status: Status{Code: "active"}, Description: r.Description}
		if r.Local {
			route.TargetSubnet, route.Type = config.RouteTargetLocal, "local"
		}
		out.Routes = append(out.Routes, route)
	}
	return out, nil
}

// describeAuthorizationRules lists the file's authorization rules.
func (s *Source) describeAuthorizationRules(in DescribeClientVpnAuthorizationRulesInput) (DescribeClientVpnAuthorizationRulesOutput, error) {
	if err := s.checkEndpoint(in.ClientVpnEndpointID); err != nil {
		return DescribeClientVpnAuthorizationRulesOutput{}, err
	}
	out := DescribeClientVpnAuthorizationRulesOutput{AuthorizationRules: []AuthorizationRule{}}
	for _, r := range s.Endpoint().AuthorizationRules {
		out.AuthorizationRules = append(out.AuthorizationRules, AuthorizationRule{ClientVpnEndpointID: s.EndpointID, Description: r.Description,
			GroupID: r.AccessGroupID, AccessAll: r.AuthorizeAllGroups, DestinationCidr: r.TargetNetworkCIDR.String(), Status: Status{Code: "active"}})
	}
	return out, nil
}
