package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Client calls the API on a unix socket; the CLI uses it.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client of the API at the unix socket path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns: 1,
	}
	return &Client{socket: path, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// DescribeClientVpnConnections lists the active connections and those ended within the last 60
// minutes.
func (c *Client) DescribeClientVpnConnections(ctx context.Context, in DescribeClientVpnConnectionsInput) (*DescribeClientVpnConnectionsOutput, error) {
	var out DescribeClientVpnConnectionsOutput
	return &out, c.call(ctx, "DescribeClientVpnConnections", in, &out)
}

// DescribeAllClientVpnConnections is DescribeClientVpnConnections following NextToken until
// the last page: every connection, in pages of in.MaxResults (nil: the most, 1000), starting
// at in.NextToken. The output has no NextToken; its Cvpn is set when any page was partial. A
// server that repeats a token is an error rather than a loop.
func (c *Client) DescribeAllClientVpnConnections(ctx context.Context, in DescribeClientVpnConnectionsInput) (*DescribeClientVpnConnectionsOutput, error) {
	if in.MaxResults == nil {
		n := maxResults
		in.MaxResults = &n
	}
	all := &DescribeClientVpnConnectionsOutput{Connections: []Connection{}}
	seen := map[string]bool{}
	for {
		out, err := c.DescribeClientVpnConnections(ctx, in)
		if err != nil {
			return nil, err
		}
		all.Connections = append(all.Connections, out.Connections...)
		if out.Cvpn != nil {
			all.Cvpn = out.Cvpn // a partial page makes the whole partial
		}
		if out.NextToken == "" {
			return all, nil
		}
		if seen[out.NextToken] {
			return nil, fmt.Errorf("admin: DescribeClientVpnConnections: the server repeated NextToken %q", out.NextToken)
		}
		seen[out.NextToken] = true
		in.NextToken = out.NextToken
	}
}

// TerminateClientVpnConnections halts a connection, or a user's connections.
func (c *Client) TerminateClientVpnConnections(ctx context.Context, in TerminateClientVpnConnectionsInput) (*TerminateClientVpnConnectionsOutput, error) {
	var out TerminateClientVpnConnectionsOutput
	return &out, c.call(ctx, "TerminateClientVpnConnections", in, &out)
}

// DescribeClientVpnEndpoints describes the endpoint.
func (c *Client) DescribeClientVpnEndpoints(ctx context.Context, in DescribeClientVpnEndpointsInput) (*DescribeClientVpnEndpointsOutput, error) {
	var out DescribeClientVpnEndpointsOutput
	return &out, c.call(ctx, "DescribeClientVpnEndpoints", in, &out)
}

// DescribeClientVpnRoutes lists the routes.
func (c *Client) DescribeClientVpnRoutes(ctx context.Context, in DescribeClientVpnRoutesInput) (*DescribeClientVpnRoutesOutput, error) {
	var out DescribeClientVpnRoutesOutput
	return &out, c.call(ctx, "DescribeClientVpnRoutes", in, &out)
}

// DescribeClientVpnAuthorizationRules lists the authorization rules.
func (c *Client) DescribeClientVpnAuthorizationRules(ctx context.Context, in DescribeClientVpnAuthorizationRulesInput) (*DescribeClientVpnAuthorizationRulesOutput, error) {
	var out DescribeClientVpnAuthorizationRulesOutput
	return &out, c.call(ctx, "DescribeClientVpnAuthorizationRules", in, &out)
}

// DescribeCvpnCluster describes the cluster this endpoint's node is one of: the node's name and
// every node's; a single node answers UnsupportedOperation.
func (c *Client) DescribeCvpnCluster(ctx context.Context, in DescribeCvpnClusterInput) (*DescribeCvpnClusterOutput, error) {
	var out DescribeCvpnClusterOutput
	return &out, c.call(ctx, "DescribeCvpnCluster", in, &out)
}

// call posts in to the action and decodes the answer into out; an error answer comes back as
// an *Error.
func (c *Client) call(ctx context.Context, action string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("admin: %s: %w", action, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://cvpn/"+action, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("admin: %s: %w", action, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin: %s: %w (is cvpn serving with admin.socket %s?)", action, err, c.socket)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin: %s: %w", action, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorResponse
		if json.Unmarshal(data, &e) == nil && e.Error.Code != "" {
			return &e.Error
		}
		return fmt.Errorf("admin: %s: %s", action, resp.Status)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("admin: %s: %w", action, err)
	}
	return nil
}
