package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/cluster"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint"
)

// cmdCluster runs `cvpn cluster push|forget`: the commands that act on the cluster's state in
// etcd rather than on one node's admin API.
func cmdCluster(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "cvpn cluster: missing subcommand (push or forget)")
		return exitInvalid
	}
	switch args[0] {
	case "push":
		return clusterPush(args[1:], stdout, stderr)
	case "forget":
		return clusterForget(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "cvpn cluster: unknown subcommand %q%s (want push or forget)\n", args[0], suggest(args[0], []string{"push", "forget"}))
	return exitInvalid
}

// dialCluster loads the node file at path (it must have a cluster section) and dials etcd.
func dialCluster(path string) (*config.Endpoint, *clientv3.Client, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	if cfg.Cluster == nil {
		return nil, nil, fmt.Errorf("%s has no cluster section: it is a single node's file", path)
	}
	ccfg, err := endpoint.ClusterConfig(cfg, endpoint.Options{})
	if err != nil {
		return nil, nil, err
	}
	cli, err := cluster.Dial(ccfg)
	if err != nil {
		return nil, nil, err
	}
	return cfg, cli, nil
}

// clusterPush runs `cvpn cluster push`: the file is checked here (with every file it names),
// proposed to every live node, which check it against what they run, and stored only when all
// accept it; then each applies it.
func clusterPush(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("cluster push", stderr)
	path := configFileFlag(fs)
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the nodes in each phase (check, apply)")
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "cvpn cluster push: unexpected arguments:", fs.Args())
		return exitInvalid
	}
	file, err := resolveConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn cluster push:", err)
		return exitInvalid
	}
	if _, err := loadEndpoint(file); err != nil {
		printConfigError(stderr, err)
		return exitInvalid
	}
	data, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn cluster push:", err)
		return exitRuntime
	}
	cfg, cli, err := dialCluster(file)
	if err != nil {
		printConfigError(stderr, err)
		return exitInvalid
	}
	defer cli.Close()
	abs, _ := filepath.Abs(file)
	by := "unknown"
	if u, err := user.Current(); err == nil {
		by = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		by += "@" + h
	}
	pc := cluster.PushedConfig{Data: data, File: abs, Dir: filepath.Dir(abs), By: by, Time: timeNow().UTC().Format(time.RFC3339)}
	rev, outcomes, err := cluster.Push(context.Background(), cli, cfg.Cluster.Etcd.Prefix, pc, *timeout)
	for _, o := range outcomes {
		switch {
		case o.Applied && rev != 0:
			fmt.Fprintf(stdout, "%s: applied revision %d\n", o.Node, rev)
		case o.Applied:
			fmt.Fprintf(stdout, "%s: accepted\n", o.Node)
		default:
			fmt.Fprintf(stdout, "%s: refused: %s\n", o.Node, flatten(o.Err))
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "cvpn cluster push:", err)
		return exitRuntime
	}
	if rev == 0 {
		fmt.Fprintln(stderr, "cvpn cluster push: refused: nothing was stored; every node keeps the file it runs")
		return exitRuntime
	}
	for _, o := range outcomes {
		if !o.Applied {
			fmt.Fprintf(stderr, "cvpn cluster push: revision %d is stored, but not every node runs it\n", rev)
			return exitRuntime
		}
	}
	return 0
}

// clusterForget runs `cvpn cluster forget NODE`: a node that will not come back is removed
// from the member list (which profiles are made from). A live node cannot be forgotten.
func clusterForget(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("cluster forget", stderr)
	path := configFileFlag(fs)
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "cvpn cluster forget: name one node")
		return exitInvalid
	}
	file, err := resolveConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn cluster forget:", err)
		return exitInvalid
	}
	cfg, cli, err := dialCluster(file)
	if err != nil {
		printConfigError(stderr, err)
		return exitInvalid
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cluster.Forget(ctx, cli, cfg.Cluster.Etcd.Prefix, fs.Arg(0)); err != nil {
		fmt.Fprintln(stderr, "cvpn cluster forget:", err)
		if errors.Is(err, cluster.ErrNameInUse) {
			return exitInvalid
		}
		return exitRuntime
	}
	fmt.Fprintf(stdout, "forgot node %s\n", fs.Arg(0))
	return 0
}

// flatten joins a multi-line error into one line.
func flatten(s string) string { return strings.Join(strings.Fields(s), " ") }
