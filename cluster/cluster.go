// Package cluster runs one cvpn node of an endpoint served by several (issue 18): the node's
// membership and lease in etcd, the client-address blocks it leases under that lease, the
// pushed endpoint file it applies, the sessions it publishes for the cluster-wide list, the
// terminate requests it carries out for other nodes, and the per-user connection limit over
// the whole cluster.
//
// Everything a node holds in etcd that must not outlive it (its blocks, its published
// sessions, its liveness) is put under one lease that the node keeps alive. When the node
// cannot renew it, it stops admitting at once, and before the lease can have expired in etcd
// it gives up its blocks and ends the sessions in them, so that no address is ever held by
// two live sessions, even across a partition: etcd only hands a block to another node after
// the lease expired, and the node's own deadline (the send time of its last confirmed renewal
// plus the TTL, on its monotonic clock) comes before etcd's.
//
// It does not own the engine, the pool's allocator (package ippool), the admin API's wire
// shapes (endpoint/admin) or the endpoint file's schema (config); it reaches etcd through the
// official client (go.etcd.io/etcd/client/v3). Cluster-wide state that is not a node's (MFA
// secrets, used codes, auth-token keys, single sign-on logins) goes through state.Store, whose
// etcd implementation (package state/etcdstate) lives under the same prefix.
package cluster

import (
	"crypto/tls"
	"log/slog"
	"net/netip"
	"path"
	"time"
)

// Config is what a node needs to join its cluster.
type Config struct {
	// Endpoints are the etcd client URLs; TLS, when set, is used to reach them (client
	// certificate and CA).
	Endpoints []string
	TLS       *tls.Config
	// Prefix is the root of the cluster's keys in etcd ("/cvpn" by default).
	Prefix string
	// Node is this node's name, unique among the live nodes; PublicAddress is the host
	// clients dial to reach it (profiles list every node's).
	Node          string
	PublicAddress string
	// SNAT and SNAT6 are this node's own source-NAT addresses (for status only).
	SNAT, SNAT6 netip.Addr
	// TTL is the node lease's time to live: how long etcd keeps a silent node's blocks and
	// sessions, and so how long a dead node's addresses stay unused.
	TTL time.Duration
	// BlockSize is how many pool indexes one address block holds.
	BlockSize int
	Log       *slog.Logger
	// Now is the wall clock for published times; lease deadlines use the monotonic clock.
	Now func() time.Time
}

// Key layout under Prefix. Values are JSON unless said otherwise.
//
//	members/<node>             Member: every node that ever joined (no lease; `cvpn cluster forget`)
//	alive/<node>               Alive: the node's liveness and what it runs (under its lease)
//	blocks/<n>                 the owner's node name (under its lease); n is decimal
//	sessions/<node>/<connid>   admin.Connection as the owner published it (under its lease)
//	users/<user hash>/<connid> UserSession: the per-user index of sessions (under the owner's lease)
//	terminate/<node>/<req>     TerminateRequest for node (under a short lease of its own)
//	terminated/<req>           the owner's answer (admin.TerminateClientVpnConnectionsOutput, same lease)
//	config                     PushedConfig; its ModRevision is the config revision
//	config-candidate           PushedConfig proposed by `cvpn cluster push`, checked by every node first
//	seal-check                 a value sealed with the cluster's sealing key (CheckSealer)
//	crl                        the client CRL in PEM, as `cvpn client revoke` or a node whose CRL file got a newer list last stored it
//	state/...                  state.Store buckets (state/etcdstate)
type keys struct{ prefix string }

func (k keys) member(node string) string       { return path.Join(k.prefix, "members", node) }
func (k keys) members() string                 { return path.Join(k.prefix, "members") + "/" }
func (k keys) alive(node string) string        { return path.Join(k.prefix, "alive", node) }
func (k keys) alives() string                  { return path.Join(k.prefix, "alive") + "/" }
func (k keys) blocks() string                  { return path.Join(k.prefix, "blocks") + "/" }
func (k keys) sessions() string                { return path.Join(k.prefix, "sessions") + "/" }
func (k keys) sessionsOf(node string) string   { return path.Join(k.prefix, "sessions", node) + "/" }
func (k keys) users() string                   { return path.Join(k.prefix, "users") + "/" }
func (k keys) terminateFor(node string) string { return path.Join(k.prefix, "terminate", node) + "/" }
func (k keys) terminated(req string) string    { return path.Join(k.prefix, "terminated", req) }
func (k keys) config() string                  { return path.Join(k.prefix, "config") }
func (k keys) candidate() string               { return path.Join(k.prefix, "config-candidate") }
func (k keys) crl() string                     { return path.Join(k.prefix, "crl") }
func (k keys) state() string                   { return path.Join(k.prefix, "state") + "/" }
