package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/endpoint/admin"
)

// Terminate requests between nodes.
//
// The requester puts terminate/<node>/<req> under a short lease of its own and watches
// terminated/<req>; the owner watches terminate/<itself>/, carries the request out, puts the
// answer under the request's lease and deletes the request in one transaction. A request
// nobody answers (its node is down) goes with its lease; one the owner finds past its deadline
// (the end of that lease: the owner was away longer than terminateTTL) is deleted without
// running, so a terminate that Terminate reported as unanswered takes effect within
// terminateTTL or never.
const (
	// TerminateTimeout is how long Terminate waits for an answer when ctx has no deadline.
	TerminateTimeout = 5 * time.Second
	// terminateTTL is the lease of a request and of its answer.
	terminateTTL = 30 * time.Second
	// maxPending bounds the requests the watcher reads at its (re)start.
	maxPending = 10_000
	// seenFor is how long the watcher remembers a request it handled (well past terminateTTL).
	seenFor = 2 * terminateTTL
)

// TerminateFunc carries out a terminate request on this node (admin.Source.TerminateLocal).
type TerminateFunc func(in admin.TerminateClientVpnConnectionsInput) (admin.TerminateClientVpnConnectionsOutput, error)

// ReplaceFunc ends this node's session connectionID with reason (the engine's
// TerminateBecause); it reports whether one ended.
type ReplaceFunc func(connectionID, reason string) bool

// TerminateRequest is what terminate/<node>/<req> holds.
type TerminateRequest struct {
	Input admin.TerminateClientVpnConnectionsInput `json:"input"`
	// Reason, when set, is why the session ends if not at the administrator's request (the
	// connection limit); the client is told it.
	Reason    string `json:"reason,omitempty"`
	Requester string `json:"requester"`
	// Deadline (RFC 3339, UTC) is when the request lapses (its lease's end, by the requester's
	// clock); the owner deletes it unrun after that, by its own clock.
	Deadline string `json:"deadline"`
}

// TerminateAnswer is what terminated/<req> holds: the output, or the owner's error.
type TerminateAnswer struct {
	Output admin.TerminateClientVpnConnectionsOutput `json:"output"`
	// Error is the owner's refusal as the admin API words it (e.g. no such connection);
	// Failure any other error.
	Error   *admin.Error `json:"error,omitempty"`
	Failure string       `json:"failure,omitempty"`
}

// SetTerminator sets how this node carries out terminate requests and starts watching for
// them (once; later calls only replace f). Until it is called the node answers none.
func (n *Node) SetTerminator(f TerminateFunc) {
	e := n.ext()
	e.terminator.Store(&f)
	e.watchOnce.Do(func() { go n.watchTerminate() })
}

// SetReplacer sets how this node ends a session for the cluster-wide connection limit, so the
// client is told that reason; without it the terminator ends them.
func (n *Node) SetReplacer(f ReplaceFunc) { n.ext().replacer.Store(&f) }

// Terminate asks node to terminate the connections in matches and returns its answer
// (admin.Cluster). It waits until ctx ends, TerminateTimeout when ctx has no deadline; then the
// request stays queued until its lease expires.
func (n *Node) Terminate(ctx context.Context, node string, in admin.TerminateClientVpnConnectionsInput) (admin.TerminateClientVpnConnectionsOutput, error) {
	return n.terminate(ctx, node, in, "")
}

func (n *Node) terminate(ctx context.Context, node string, in admin.TerminateClientVpnConnectionsInput, reason string) (admin.TerminateClientVpnConnectionsOutput, error) {
	var none admin.TerminateClientVpnConnectionsOutput
	if node == n.cfg.Node {
		return n.runTerminate(in, reason)
	}
	if node == "" || strings.Contains(node, "/") {
		return none, fmt.Errorf("cluster: terminate: bad node name %q", node)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, TerminateTimeout)
		defer cancel()
	}
	id := newRequestID()
	g, err := n.cli.Grant(ctx, int64(terminateTTL/time.Second))
	if err != nil {
		return none, fmt.Errorf("cluster: terminate on %s: grant a lease: %w: %w", node, admin.ErrNotQueued, err)
	}
	deadline := n.cfg.Now().Add(terminateTTL).UTC()
	b, _ := json.Marshal(TerminateRequest{Input: in, Reason: reason, Requester: n.cfg.Node, Deadline: deadline.Format(time.RFC3339Nano)})
	put, err := n.cli.Put(ctx, n.keys.terminateFor(node)+id, string(b), clientv3.WithLease(g.ID))
	if err != nil {
		return none, fmt.Errorf("cluster: terminate on %s: queue request %s: %w: %w", node, id, admin.ErrNotQueued, err)
	}
	ans, err := n.awaitAnswer(ctx, id, put.Header.Revision+1)
	if err != nil {
		return none, fmt.Errorf("cluster: node %s did not answer terminate request %s: %w (it stays queued until %s)",
			node, id, err, deadline.Format(time.RFC3339))
	}
	// The answer is read: free it now rather than with the lease.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
	_, _ = n.cli.Delete(dctx, n.keys.terminated(id))
	cancel()
	switch {
	case ans.Error != nil:
		return ans.Output, ans.Error
	case ans.Failure != "":
		// The node answered: its failure is its refusal, not a request still queued.
		return ans.Output, &admin.Error{Code: "InternalError", Message: fmt.Sprintf("node %s: %s", node, ans.Failure)}
	}
	return ans.Output, nil
}

// awaitAnswer watches terminated/<id> from rev until the answer or ctx's end; after a watch
// error it reads the key and watches again.
func (n *Node) awaitAnswer(ctx context.Context, id string, rev int64) (TerminateAnswer, error) {
	key := n.keys.terminated(id)
	for {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for resp := range n.cli.Watch(wctx, key, clientv3.WithRev(rev), clientv3.WithFilterDelete()) {
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				cancel()
				return decodeAnswer(ev.Kv.Value)
			}
		}
		cancel()
		if ctx.Err() != nil {
			return TerminateAnswer{}, ctx.Err()
		}
		got, err := n.cli.Get(ctx, key)
		if err != nil {
			return TerminateAnswer{}, err
		}
		if len(got.Kvs) > 0 {
			return decodeAnswer(got.Kvs[0].Value)
		}
		rev = got.Header.Revision + 1
	}
}

func decodeAnswer(b []byte) (TerminateAnswer, error) {
	var a TerminateAnswer
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("malformed answer: %w", err)
	}
	return a, nil
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// runTerminate carries a request out on this node.
func (n *Node) runTerminate(in admin.TerminateClientVpnConnectionsInput, reason string) (admin.TerminateClientVpnConnectionsOutput, error) {
	e := n.ext()
	if r := e.replacer.Load(); reason != "" && in.ConnectionID != "" && r != nil {
		out := admin.TerminateClientVpnConnectionsOutput{ConnectionStatuses: []admin.TerminateConnectionStatus{}}
		if (*r)(in.ConnectionID, reason) {
			out.ConnectionStatuses = append(out.ConnectionStatuses, admin.TerminateConnectionStatus{ConnectionID: in.ConnectionID,
				PreviousStatus: admin.Status{Code: admin.StatusActive}, CurrentStatus: admin.Status{Code: admin.StatusTerminating}})
		}
		return out, nil
	}
	f := e.terminator.Load()
	if f == nil {
		return admin.TerminateClientVpnConnectionsOutput{}, fmt.Errorf("cluster: node %s carries out no terminate requests yet", n.cfg.Node)
	}
	return (*f)(in)
}

// watchTerminate carries out the requests for this node until it closes: at each (re)start
// it reads those pending, then watches from the revision after that read, so none is missed
// across a watch error or a compaction.
func (n *Node) watchTerminate() {
	prefix := n.keys.terminateFor(n.cfg.Node)
	seen := make(map[string]time.Time)
	backoff := 100 * time.Millisecond
	for n.ctx.Err() == nil {
		rev, err := n.pendingTerminates(prefix, seen)
		if err == nil {
			backoff = 100 * time.Millisecond
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(n.ctx))
			for resp := range n.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithFilterDelete()) {
				if err = resp.Err(); err != nil {
					break
				}
				for _, ev := range resp.Events {
					n.handleTerminate(ev.Kv, seen)
				}
			}
			cancel()
		}
		if n.ctx.Err() != nil {
			return
		}
		if err != nil {
			n.log.Warn("watching terminate requests again", "err", err)
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// pendingTerminates handles the requests queued now and returns the revision they were read at.
func (n *Node) pendingTerminates(prefix string, seen map[string]time.Time) (int64, error) {
	ctx, cancel := context.WithTimeout(n.ctx, requestTimeout)
	defer cancel()
	resp, err := n.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithLimit(maxPending))
	if err != nil {
		return 0, fmt.Errorf("cluster: read pending terminate requests: %w", err)
	}
	for _, kv := range resp.Kvs {
		n.handleTerminate(kv, seen)
	}
	return resp.Header.Revision, nil
}

// handleTerminate carries out one request, once, and answers it.
func (n *Node) handleTerminate(kv *mvccpb.KeyValue, seen map[string]time.Time) {
	key := string(kv.Key)
	id := path.Base(key)
	now := time.Now()
	if _, ok := seen[id]; ok {
		return
	}
	if len(seen) >= 1024 {
		for k, t := range seen {
			if now.Sub(t) > seenFor {
				delete(seen, k)
			}
		}
	}
	seen[id] = now
	ctx, cancel := context.WithTimeout(n.ctx, requestTimeout)
	defer cancel()
	// Only this request's revision: a request written again under the same key is another.
	drop := func() {
		_, _ = n.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(key)).Commit()
	}
	var req TerminateRequest
	if err := json.Unmarshal(kv.Value, &req); err != nil || kv.Lease == 0 {
		// Without a lease its answer would never go: every requester here takes one.
		n.ext().badRequests.Add(1)
		n.log.Warn("deleting a malformed terminate request", "request", id)
		drop()
		return
	}
	deadline, err := time.Parse(time.RFC3339Nano, req.Deadline)
	if err != nil || n.cfg.Now().After(deadline) {
		n.log.Info("deleting a terminate request past its deadline", "request", id, "requester", req.Requester, "deadline", req.Deadline)
		drop()
		return
	}
	out, err := n.runTerminate(req.Input, req.Reason)
	ans := TerminateAnswer{Output: out}
	if err != nil {
		var ae *admin.Error
		if errors.As(err, &ae) {
			ans.Error = ae
		} else {
			ans.Failure = err.Error()
		}
	}
	n.log.Info("carried out a terminate request", "request", id, "requester", req.Requester,
		"connection_id", req.Input.ConnectionID, "username", req.Input.Username, "reason", req.Reason,
		"terminated", len(out.ConnectionStatuses), "err", err)
	b, _ := json.Marshal(ans)
	if _, err := n.cli.Txn(ctx).Then(
		clientv3.OpPut(n.keys.terminated(id), string(b), clientv3.WithLease(clientv3.LeaseID(kv.Lease))),
		clientv3.OpDelete(key)).Commit(); err != nil {
		// Most likely the request's lease expired: nobody waits for the answer any more.
		n.log.Warn("cannot answer a terminate request", "request", id, "err", err)
		drop()
	}
}

// BadTerminateRequests returns how many terminate requests this node deleted as malformed.
func (n *Node) BadTerminateRequests() uint64 { return n.ext().badRequests.Load() }
