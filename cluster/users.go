package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/endpoint/admin"
)

// The cluster-wide max_connections_per_user.
//
// Each node's engine keeps its own sessions within the limit. Across nodes, the node where a
// session was established reads the user's index (users/<hash>/) after publishing it, orders
// every node's sessions of the user by establishment time (then connection id), and ends all
// but the newest limit: its own at once, another node's by a terminate request to that node.
// Every node orders the same way, so two nodes admitting the same user at once end the same
// older sessions, never each other's newest.
//
// The window: a user may hold more than the limit cluster-wide from a session's establishment
// until the older one ends, that is the publisher's queue (normally milliseconds), one read,
// and the terminate request's round trip to the owner (bounded by TerminateTimeout); longer
// when etcd is unreachable (the check waits for the publication, which waits for a lease) or
// when the session's event was dropped from a full queue (until the resync, at most
// resyncCheck later, publishes it and checks again). The order uses each node's wall clock, so
// clocks out of step by more than the time between two logins may end the later one instead.
const (
	// LimitReason is what a session ended for the cluster-wide limit is told.
	LimitReason = "replaced by a newer session of the same user (max_connections_per_user)"
	// maxUserSessions bounds the index entries one check reads.
	maxUserSessions = 10_000
	// limitChecks is how many checks wait; beyond it they are dropped (counted).
	limitChecks = 1024
)

// checkLimit queues a check of who's sessions cluster-wide (never blocks the writer).
func (p *Publisher) checkLimit(who string) {
	if p.limit == nil || p.limit() <= 0 {
		return
	}
	select {
	case p.checks <- who:
	default:
		p.droppedChecks.Add(1)
	}
}

// enforce runs the checks, one at a time, until the node closes.
func (p *Publisher) enforce() {
	var inflight sync.Map // connection id → struct{}: a terminate request for it is out
	for {
		select {
		case <-p.n.ctx.Done():
			return
		case who := <-p.checks:
			limit := 0
			if p.limit != nil {
				limit = p.limit()
			}
			if limit > 0 {
				p.n.enforceLimit(who, limit, &inflight)
			}
		}
	}
}

// enforceLimit ends who's oldest sessions beyond limit, on whichever node holds them.
func (n *Node) enforceLimit(who string, limit int, inflight *sync.Map) {
	ctx, cancel := context.WithTimeout(n.ctx, requestTimeout)
	resp, err := n.cli.Get(ctx, n.keys.usersOf(userKey(who)), clientv3.WithPrefix(), clientv3.WithLimit(maxUserSessions))
	cancel()
	if err != nil {
		n.log.Warn("cannot check the user's connections across the cluster", "user", who, "err", err)
		return
	}
	if len(resp.Kvs) <= limit {
		return
	}
	type entry struct {
		UserSession
		at time.Time
	}
	all := make([]entry, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var e entry
		if json.Unmarshal(kv.Value, &e.UserSession) != nil || e.Node == "" || e.ConnectionID == "" {
			continue
		}
		e.at, _ = time.Parse(time.RFC3339Nano, e.Established)
		all = append(all, e)
	}
	if len(all) <= limit {
		return
	}
	slices.SortFunc(all, func(a, b entry) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return cmp.Compare(a.ConnectionID, b.ConnectionID)
	})
	for _, v := range all[:len(all)-limit] {
		if v.Node == n.cfg.Node {
			// Most are ended already by the engine's own limit; ending again is a no-op.
			_, _ = n.runTerminate(admin.TerminateClientVpnConnectionsInput{ConnectionID: v.ConnectionID}, LimitReason)
			continue
		}
		if _, busy := inflight.LoadOrStore(v.ConnectionID, struct{}{}); busy {
			continue
		}
		e := n.ext()
		select {
		case e.limitCalls <- struct{}{}:
		default:
			inflight.Delete(v.ConnectionID)
			n.log.Warn("too many connection-limit terminations in flight; the user's next login retries", "user", who)
			return
		}
		go func(node, id string) {
			defer func() { <-e.limitCalls; inflight.Delete(id) }()
			_, err := n.terminate(n.ctx, node, admin.TerminateClientVpnConnectionsInput{ConnectionID: id}, LimitReason)
			if err != nil && n.ctx.Err() == nil {
				n.log.Warn("cannot end a session beyond the user's connection limit", "user", who, "node", node, "connection_id", id, "err", err)
				return
			}
			n.log.Info("ended a session beyond the user's connection limit", "user", who, "node", node, "connection_id", id)
		}(v.Node, v.ConnectionID)
	}
}
