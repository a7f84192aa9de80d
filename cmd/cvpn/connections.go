package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint/admin"
)

// apiTimeout bounds one call of the admin API from the CLI.
const apiTimeout = 30 * time.Second

// adminFlagSet is the flag set of an admin API command: --config names the endpoint file whose
// admin.socket the command calls.
func adminFlagSet(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := newFlagSet(name, stderr)
	return fs, configFileFlag(fs)
}

// parseAdminFlags parses args into fs; ok is false with the exit status when the command
// should stop (0 for -h).
func parseAdminFlags(name string, fs *flag.FlagSet, args []string, stderr io.Writer) (int, bool) {
	if err := fs.Parse(args); err != nil {
		return flagExit(err), false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cvpn %s: unexpected arguments: %v\n", name, fs.Args())
		return exitInvalid, false
	}
	return 0, true
}

// adminClient returns a client of the admin API of the endpoint file given (resolveConfig
// finds it when none is).
func adminClient(given string) (*admin.Client, error) {
	path, err := resolveConfig(given)
	if err != nil {
		return nil, err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	return admin.NewClient(cfg.Admin.Socket), nil
}

// cmdConnections runs cvpn connections list|terminate.
func cmdConnections(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: cvpn connections list|terminate --config FILE [flags]")
		return exitInvalid
	}
	switch args[0] {
	case "list":
		return cmdConnectionsList(args[1:], stdout, stderr)
	case "terminate":
		return cmdConnectionsTerminate(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, "usage: cvpn connections list|terminate --config FILE [flags]")
		return 0
	default:
		fmt.Fprintf(stderr, "cvpn connections: unknown subcommand %q (list, terminate)\n", args[0])
		return exitInvalid
	}
}

// cmdConnectionsList prints the connections (DescribeClientVpnConnections, every page of it):
// a table, or with --json the API's response as AWS shapes it, all pages in one. On a cluster
// the table has a NODE column, and an answer that lacks some nodes' connections is said so on
// stderr (the exit status stays 0: what is listed is true).
func cmdConnectionsList(args []string, stdout, stderr io.Writer) int {
	const name = "connections list"
	fs, path := adminFlagSet(name, stderr)
	user := fs.String("username", "", "only the connections of this user (for certificate-only sessions the common name)")
	id := fs.String("connection-id", "", "only this connection")
	asJSON := fs.Bool("json", false, `print the API's response, {"Connections": [...]}`)
	if code, ok := parseAdminFlags(name, fs, args, stderr); !ok {
		return code
	}
	c, err := adminClient(*path)
	if err != nil {
		fmt.Fprintf(stderr, "cvpn %s: %v\n", name, err)
		return exitInvalid
	}
	in := admin.DescribeClientVpnConnectionsInput{}
	if *user != "" {
		in.Filters = append(in.Filters, admin.Filter{Name: "username", Values: []string{*user}})
	}
	if *id != "" {
		in.Filters = append(in.Filters, admin.Filter{Name: "connection-id", Values: []string{*id}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	out, err := c.DescribeAllClientVpnConnections(ctx, in) // every page
	if err != nil {
		fmt.Fprintf(stderr, "cvpn %s: %v\n", name, err)
		return exitRuntime
	}
	if out.Cvpn != nil && out.Cvpn.Partial {
		fmt.Fprintf(stderr, "cvpn %s: partial list: %s\n", name, out.Cvpn.Reason)
	}
	if *asJSON {
		return printJSON(stdout, stderr, name, out)
	}
	if len(out.Connections) == 0 {
		fmt.Fprintln(stdout, "no connections")
		return 0
	}
	clustered := slices.ContainsFunc(out.Connections, func(x admin.Connection) bool { return x.Cvpn.Node != "" })
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if clustered {
		fmt.Fprint(tw, "NODE\t")
	}
	fmt.Fprintln(tw, "CONNECTION ID\tUSERNAME\tCLIENT IP\tDEVICE\tTRANSPORT\tSTATUS\tESTABLISHED (UTC)\tENDED (UTC)\tINGRESS\tEGRESS")
	for _, x := range out.Connections {
		if clustered {
			fmt.Fprintf(tw, "%s\t", x.Cvpn.Node)
		}
		device := x.Cvpn.DeviceIP
		if device != "" {
			device = net.JoinHostPort(device, strconv.Itoa(x.Cvpn.DevicePort))
		}
		client := x.ClientIP
		switch {
		case client == "":
			client = x.ClientIPv6Address
		case x.ClientIPv6Address != "":
			client += "," + x.ClientIPv6Address
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", x.ConnectionID, x.Username, client, device, x.Cvpn.TransportProtocol,
			x.Status.Code, x.ConnectionEstablishedTime, x.ConnectionEndTime, byteCount(x.IngressBytes), byteCount(x.EgressBytes))
	}
	tw.Flush()
	return 0
}

// cmdConnectionsTerminate halts a connection or a user's connections
// (TerminateClientVpnConnections), on a cluster on whichever nodes hold them, and prints how
// each went: a line per connection, with the status's message when there is one (a request
// queued for a node that did not answer says so); it fails when one could not be asked at all
// (failed-to-terminate).
func cmdConnectionsTerminate(args []string, stdout, stderr io.Writer) int {
	const name = "connections terminate"
	fs, path := adminFlagSet(name, stderr)
	user := fs.String("username", "", "terminate this user's connections (for certificate-only sessions the common name)")
	id := fs.String("connection-id", "", "terminate this connection")
	asJSON := fs.Bool("json", false, "print the API's response, {\"ConnectionStatuses\": [...]}")
	if code, ok := parseAdminFlags(name, fs, args, stderr); !ok {
		return code
	}
	if (*user == "") == (*id == "") {
		fmt.Fprintf(stderr, "cvpn %s: give one of --connection-id and --username\n", name)
		return exitInvalid
	}
	c, err := adminClient(*path)
	if err != nil {
		fmt.Fprintf(stderr, "cvpn %s: %v\n", name, err)
		return exitInvalid
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	out, err := c.TerminateClientVpnConnections(ctx, admin.TerminateClientVpnConnectionsInput{ConnectionID: *id, Username: *user})
	if err != nil {
		fmt.Fprintf(stderr, "cvpn %s: %v\n", name, err)
		return exitRuntime
	}
	if out.Cvpn != nil && out.Cvpn.Partial {
		fmt.Fprintf(stderr, "cvpn %s: partial: %s\n", name, out.Cvpn.Reason)
	}
	if *asJSON {
		return printJSON(stdout, stderr, name, out)
	}
	if len(out.ConnectionStatuses) == 0 {
		fmt.Fprintf(stderr, "cvpn %s: user %s has no active connection\n", name, *user)
		return exitRuntime
	}
	failed := false
	for _, s := range out.ConnectionStatuses {
		line := fmt.Sprintf("%s: %s -> %s", s.ConnectionID, s.PreviousStatus.Code, s.CurrentStatus.Code)
		if s.CurrentStatus.Message != "" {
			line += " (" + s.CurrentStatus.Message + ")"
		}
		fmt.Fprintln(stdout, line)
		failed = failed || s.CurrentStatus.Code == admin.StatusFailedToTerminate
	}
	if failed {
		return exitRuntime
	}
	return 0
}

// printJSON prints v indented.
func printJSON(stdout, stderr io.Writer, name string, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "cvpn %s: %v\n", name, err)
		return exitRuntime
	}
	return 0
}

// byteCount shows a decimal byte count (a string, as the API sends counters) in binary units.
func byteCount(s string) string {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return s
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
