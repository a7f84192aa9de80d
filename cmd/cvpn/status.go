package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/cvpn/cvpn/endpoint/admin"
)

// cmdStatus prints one screen about the running endpoint: its id and state, listeners,
// sessions, the address pool, the traffic of the connected sessions and the drop counters
// (DescribeClientVpnEndpoints and DescribeClientVpnConnections).
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
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "endpoint\t%s (%s) %s, up since %s UTC\n", e.ClientVpnEndpointID, e.Description, e.Status.Code, e.CreationTime)
	fmt.Fprintf(tw, "listeners\t%s\n", strings.Join(listeners, ", "))
	fmt.Fprintf(tw, "sessions\t%d active (%d users), %d ended in the last 60 minutes\n", e.Cvpn.ActiveConnections, len(users), ended)
	fmt.Fprintf(tw, "pool\t%s: %d of %d addresses in use\n", e.ClientCidrBlock, e.Cvpn.Pool.InUse, e.Cvpn.Pool.Capacity)
	fmt.Fprintf(tw, "traffic\tingress %s (%s packets), egress %s (%s packets), of the active sessions\n",
		byteCount(e.Cvpn.Traffic.IngressBytes), e.Cvpn.Traffic.IngressPackets, byteCount(e.Cvpn.Traffic.EgressBytes), e.Cvpn.Traffic.EgressPackets)
	fmt.Fprintf(tw, "drops\t%s\n", drops)
	tw.Flush()
	return 0
}
