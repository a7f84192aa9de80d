package endpoint

import (
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint/connlog"
)

// The connection log (connection_log) is open for the endpoint's whole run, and listens to the
// engine's events from the start; a disabled log records nothing. A reload that changes it
// switches files at once, SIGUSR1 (ReopenConnectionLog) reopens the same path for logrotate,
// and Run closes it once the last session has said goodbye, so that their final records are
// written and synced.

// openConnectionLog opens the connection log of ep.
func openConnectionLog(ep *Endpoint, opts Options) (*connlog.Log, error) {
	l, err := connlog.Open(connlog.Options{Path: connectionLogPath(ep.Config), EndpointID: endpointID(ep.Config),
		Node: nodeName(ep.Config), Log: opts.Log, Now: opts.Now})
	if err != nil {
		return nil, ep.Config.KeyError("connection_log.file", err)
	}
	return l, nil
}

// connectionLogPath is the file the connection log goes to; "" when it is disabled.
func connectionLogPath(cfg *config.Endpoint) string {
	if !cfg.ConnectionLog.Enabled {
		return ""
	}
	return cfg.ConnectionLog.File
}

// endpointID is the endpoint's client-vpn-endpoint-id, derived from its client CIDR and SNAT
// address, which cannot change while it runs; a cluster's, from its client CIDR and its
// prefix in etcd, the same on every node.
func endpointID(cfg *config.Endpoint) string {
	if c := cfg.Cluster; c != nil {
		return connlog.EndpointID("cluster " + c.Etcd.Prefix + " " + cfg.ClientCIDRBlock.String() + " " + cfg.ClientIPv6CIDRBlock.String())
	}
	return connlog.EndpointID(cfg.ClientCIDRBlock.String() + " " + cfg.TargetNetwork.SNATAddress.String())
}

// nodeName is the cluster node's name, "" on a single node.
func nodeName(cfg *config.Endpoint) string {
	if cfg.Cluster == nil {
		return ""
	}
	return cfg.Cluster.NodeName
}

// ReopenConnectionLog closes the connection log's file and opens its path again, after
// logrotate moved it (cvpn serve does it on SIGUSR1).
func (r *Running) ReopenConnectionLog() {
	if err := r.connLog.Reopen(); err != nil {
		r.log.Error("connection log: reopen", "err", err)
		return
	}
	r.log.Info("connection log reopened")
}
