package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/cvpn/cvpn/endpoint/admin"
)

// cmdStatus prints one screen about the running endpoint: its id and state, listeners,
// sessions, the address pool, the traffic of the connected sessions and the drop counters
// (DescribeClientVpnEndpoints and DescribeClientVpnConnections); on a cluster also the node
// that answered and a table of the nodes (DescribeCvpnCluster): each one's public address,
// whether it is alive, the config revision it runs (and why it refused a newer one), its
// connections and address blocks. Sessions and traffic are then the cluster's, the pool and
// drops the answering node's.
func cmdStatus(args []string, stdout, stderr io.Writer) int {
	const name = "status"
	fs, path := adminFlagSet(name, stderr)
	if code, ok := parseAdminFlags(name, fs, args, stderr); !ok {
		return code
	}
	c, err := adminClient(*path)
	if err != nil {
		fmt.Fprintf(stderr, "cvpn %s: %v\n", name, err)
		return exitInvalid
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	eps, err := c.DescribeClientVpnEndpoints(ctx, admin.DescribeClientVpnEndpointsInput{})
	if err != nil {
		fmt.Fprintf(stderr, "cvpn %s: %v\n", name, err)
		return exitRuntime
	}
	conns, err := c.DescribeClientVpnConnections(ctx, admin.DescribeClientVpnConnectionsInput{})
	if err != nil {
		fmt.Fprintf(stderr, "cvpn %s: %v\n", name, err)
		return exitRuntime
	}
	e := eps.ClientVpnEndpoints[0]
	ended := 0
	users := map[string]bool{}
	for _, x := range conns.Connections {
		if x.Status.Code == admin.StatusTerminated {
			ended++
		} else {
			users[x.Username] = true
		}
	}
	var listeners []string
	for _, l := range e.Cvpn.Listeners {
		listeners = append(listeners, l.Protocol+" "+l.Address)
	}
	drops := "none"
	if len(e.Cvpn.Drops) > 0 {
		var ds []string
		for _, k := range slices.Sorted(maps.Keys(e.Cvpn.Drops)) {
			ds = append(ds, fmt.Sprintf("%s %d", k, e.Cvpn.Drops[k]))
		}
		drops = strings.Join(ds, ", ")
	}
	var cluster *admin.DescribeCvpnClusterOutput
	var clusterErr error
	if e.Cvpn.Node != "" {
		cluster, clusterErr = c.DescribeCvpnCluster(ctx, admin.DescribeCvpnClusterInput{})
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "endpoint\t%s (%s) %s, up since %s UTC\n", e.ClientVpnEndpointID, e.Description, e.Status.Code, e.CreationTime)
	if e.Cvpn.Node != "" {
		fmt.Fprintf(tw, "node\t%s, one of a cluster: sessions and traffic are the cluster's, pool and drops this node's\n", e.Cvpn.Node)
	}
	fmt.Fprintf(tw, "listeners\t%s\n", strings.Join(listeners, ", "))
	fmt.Fprintf(tw, "sessions\t%d active (%d users), %d ended in the last 60 minutes\n", e.Cvpn.ActiveConnections, len(users), ended)
	if e.Cvpn.PartialReason != "" {
		fmt.Fprintf(tw, "\tpartial: %s\n", e.Cvpn.PartialReason)
	}
	fmt.Fprintf(tw, "pool\t%s: %d of %d addresses in use\n", e.ClientCidrBlock, e.Cvpn.Pool.InUse, e.Cvpn.Pool.Capacity)
	fmt.Fprintf(tw, "traffic\tingress %s (%s packets), egress %s (%s packets), of the active sessions\n",
		byteCount(e.Cvpn.Traffic.IngressBytes), e.Cvpn.Traffic.IngressPackets, byteCount(e.Cvpn.Traffic.EgressBytes), e.Cvpn.Traffic.EgressPackets)
	fmt.Fprintf(tw, "drops\t%s\n", drops)
	tw.Flush()
	switch {
	case clusterErr != nil:
		fmt.Fprintf(stdout, "\nnodes: %v\n", clusterErr)
	case cluster != nil:
		printNodes(stdout, cluster)
	}
	return 0
}

// printNodes prints the cluster's nodes, one row each, the answering node marked with "*".
func printNodes(w io.Writer, cl *admin.DescribeCvpnClusterOutput) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPUBLIC ADDRESS\tALIVE\tCONFIG REVISION\tCONNECTIONS\tBLOCKS")
	for _, n := range cl.Nodes {
		name := n.Name
		if name == cl.Node {
			name += " *"
		}
		alive := "no"
		if n.Alive {
			alive = "yes"
		}
		rev := "own file"
		if n.ConfigRevision != 0 {
			rev = strconv.FormatInt(n.ConfigRevision, 10)
		}
		if n.ConfigError != "" {
			rev += " (refused a newer one: " + n.ConfigError + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\n", name, n.PublicAddress, alive, rev, n.Connections, n.Blocks)
	}
	tw.Flush()
}
