package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/endpoint/admin"
	"github.com/cvpn/cvpn/tunnel"
	"github.com/cvpn/cvpn/tunnel/session"
)

var (
	_ admin.Cluster = (*Node)(nil)
	_ tunnel.Events = (*Publisher)(nil)
)

// Bounds of publishing and listing.
const (
	// publishQueue is how many session events wait for the writer; beyond it they are dropped
	// (counted) and the next resync repairs what they would have written.
	publishQueue = 4096
	// txnOps is the most operations one transaction carries: etcd refuses more than
	// --max-txn-ops (128 by default).
	txnOps = 64
	// resyncEvery is how often the whole list is written again (the counters in it are as of
	// then); resyncCheck is how often the writer looks whether it must resync sooner (after a
	// drop or a failed write).
	resyncEvery = time.Minute
	resyncCheck = 10 * time.Second
	// maxListed bounds what Connections returns, whatever the other nodes published.
	maxListed = 200_000
	// listPage is how many sessions one range of Connections reads.
	listPage = 1000
)

// UserSession is one entry of the per-user index, users/<user hash>/<connid>: enough to find the
// user's oldest sessions cluster-wide and to ask their nodes to end them.
type UserSession struct {
	Node         string `json:"node"`
	ConnectionID string `json:"connection_id"`
	// Established is when the session was admitted (RFC 3339 with nanoseconds, UTC).
	Established string `json:"established"`
}

// userKey names a user in the index: the SHA-256 of the identity in hex, so that any identity
// (a common name may hold "/" or be long) is one bounded path segment.
func userKey(identity string) string {
	h := sha256.Sum256([]byte(identity))
	return hex.EncodeToString(h[:])
}

// identityOf is the name a session's user goes by for terminate and the connection limit: the
// username, or for a certificate alone the common name (as the admin API's identity).
func identityOf(info *tunnel.Info) string {
	if info.User != "" {
		return info.User
	}
	return info.CommonName
}

func (k keys) session(node, connID string) string {
	return path.Join(k.prefix, "sessions", node, connID)
}
func (k keys) usersOf(user string) string { return path.Join(k.prefix, "users", user) + "/" }
func (k keys) userSession(user, connID string) string {
	return path.Join(k.prefix, "users", user, connID)
}

// Node is the node's name (admin.Cluster).
func (n *Node) Node() string { return n.cfg.Node }

// ext is what the publishing, terminate and user-limit parts keep per node.
type ext struct {
	// terminator and replacer carry out requests on this node (SetTerminator, SetReplacer).
	terminator atomic.Pointer[TerminateFunc]
	replacer   atomic.Pointer[ReplaceFunc]
	watchOnce  sync.Once
	// malformed counts published sessions Connections skipped as undecodable; badRequests
	// terminate requests the watcher deleted as undecodable or without a lease.
	malformed   atomic.Uint64
	badRequests atomic.Uint64
	// limitCalls bounds the terminate requests in flight for the connection limit.
	limitCalls chan struct{}
}

// exts holds each node's ext until its context ends. (A field of Node would do the same; this
// keeps the parts in their own files.)
var exts sync.Map // *Node → *ext

func (n *Node) ext() *ext {
	if e, ok := exts.Load(n); ok {
		return e.(*ext)
	}
	e, loaded := exts.LoadOrStore(n, &ext{limitCalls: make(chan struct{}, 16)})
	if !loaded {
		context.AfterFunc(n.ctx, func() { exts.Delete(n) })
	}
	return e.(*ext)
}

// Publisher publishes this node's sessions in etcd, under the node's lease, for the other
// nodes' lists and the cluster-wide connection limit. It is a tunnel.Events listener: its
// calls only queue the event, and one writer goroutine writes batches of them.
//
// What is in etcd may lag what the engine holds: by the queue's latency, and after a dropped
// event or a failed write until the next resync (at most resyncCheck later); a full resync
// runs on every new lease and every resyncEvery.
type Publisher struct {
	n       *Node
	toConn  func(tunnel.Status) admin.Connection
	clients func() []tunnel.Status
	limit   func() int

	queue  chan publishEvent
	resync chan struct{} // a nudge: resync now
	checks chan string   // identities whose connection limit to check
	// dropped counts events the full queue refused and limit checks the full check queue did;
	// failed counts transactions etcd refused; dirty says a resync is due.
	dropped, droppedChecks, failed atomic.Uint64
	dirty                          atomic.Bool

	// every and check are resyncEvery and resyncCheck (shorter in tests).
	every, check time.Duration

	// The writer's own state (only the writer goroutine touches it).
	lease clientv3.LeaseID
	// published maps each connection this node published under lease to its user key.
	published map[string]string
	// unchecked are sessions (id → identity) whose limit check waits for a publication that
	// succeeds: a failed write leaves it to the resync.
	unchecked  map[string]string
	lastResync time.Time
}

type publishEvent struct {
	st        tunnel.Status
	connected bool
}

// Publisher returns the node's session publisher; add it to the engine's Events. toConn maps
// a session to what the admin API lists (admin.Source.Published); clients returns the
// sessions the engine holds now (the resync's truth); limit returns max_connections_per_user
// now (0: unlimited; nil: no cluster-wide limit). Create it before Start so that the first
// lease publishes; one per node.
func (n *Node) Publisher(toConn func(tunnel.Status) admin.Connection, clients func() []tunnel.Status, limit func() int) *Publisher {
	p := &Publisher{n: n, toConn: toConn, clients: clients, limit: limit,
		queue: make(chan publishEvent, publishQueue), resync: make(chan struct{}, 1),
		checks: make(chan string, limitChecks), every: resyncEvery, check: resyncCheck}
	n.OnLease(func(context.Context, clientv3.LeaseID) { p.nudge() })
	p.nudge()
	go p.write()
	go p.enforce()
	return p
}

// Connected queues the session's publication.
func (p *Publisher) Connected(st tunnel.Status) { p.enqueue(publishEvent{st: st, connected: true}) }

// Refused: refused attempts are not published.
func (p *Publisher) Refused(session.Attempt) {}

// Disconnected queues the removal of the session's publication.
func (p *Publisher) Disconnected(st tunnel.Status, _ session.End) {
	p.enqueue(publishEvent{st: st})
}

func (p *Publisher) enqueue(ev publishEvent) {
	if ev.st.Info == nil {
		return
	}
	select {
	case p.queue <- ev:
	default:
		p.dropped.Add(1)
		p.dirty.Store(true)
	}
}

// nudge asks the writer to resync soon.
func (p *Publisher) nudge() {
	p.dirty.Store(true)
	select {
	case p.resync <- struct{}{}:
	default:
	}
}

// PublisherStats counts what the publisher could not do at once.
type PublisherStats struct {
	// Dropped are session events the full queue refused (a resync repaired each);
	// DroppedChecks connection-limit checks the full check queue refused; Failed transactions
	// etcd refused (a resync retried them).
	Dropped, DroppedChecks, Failed uint64
}

// Stats returns the publisher's counters (for metrics).
func (p *Publisher) Stats() PublisherStats {
	return PublisherStats{Dropped: p.dropped.Load(), DroppedChecks: p.droppedChecks.Load(), Failed: p.failed.Load()}
}

// write is the writer goroutine: batches of events, resyncs, until the node closes.
func (p *Publisher) write() {
	tick := time.NewTicker(p.check)
	defer tick.Stop()
	for {
		select {
		case <-p.n.ctx.Done():
			return
		case ev := <-p.queue:
			p.writeEvents(ev)
		case <-p.resync:
			p.resyncNow()
		case <-tick.C:
			if p.dirty.Load() || time.Since(p.lastResync) >= p.every {
				p.resyncNow()
			}
		}
	}
}

// writeEvents writes first and whatever else is queued, up to txnOps operations a transaction.
func (p *Publisher) writeEvents(first publishEvent) {
	batch := []publishEvent{first}
	for len(batch) < txnOps/2 {
		select {
		case ev := <-p.queue:
			batch = append(batch, ev)
			continue
		default:
		}
		break
	}
	if !p.current() {
		// A new lease: the old one's keys are gone with it; the resync writes them all.
		p.resyncNow()
		return
	}
	if p.lease == 0 {
		p.dirty.Store(true)
		return
	}
	var b opBatch
	connected := make(map[string]string)
	for _, ev := range batch {
		id, user := ev.st.ConnectionID, userKey(identityOf(ev.st.Info))
		if ev.connected {
			p.putOps(&b, ev.st)
			connected[id] = identityOf(ev.st.Info)
		} else {
			b.add(p.n.keys.session(p.n.cfg.Node, id), clientv3.OpDelete(p.n.keys.session(p.n.cfg.Node, id)))
			b.add(p.n.keys.userSession(user, id), clientv3.OpDelete(p.n.keys.userSession(user, id)))
		}
	}
	if !p.commit(b.ops()) {
		maps.Copy(p.unchecked, connected)
		return
	}
	for _, ev := range batch {
		if !ev.connected {
			delete(p.published, ev.st.ConnectionID)
		}
	}
	for id, who := range connected {
		if p.published[id] != "" { // not disconnected in the same batch
			p.checkLimit(who)
		}
	}
}

// current reports whether the writer's lease is the node's; when not, it takes the node's and
// forgets what it published under the old one.
func (p *Publisher) current() bool {
	id := p.n.leaseID()
	if id == p.lease && p.published != nil {
		return true
	}
	p.lease, p.published, p.unchecked = id, make(map[string]string), make(map[string]string)
	return false
}

// putOps adds the puts of st's two keys under the writer's lease.
func (p *Publisher) putOps(b *opBatch, st tunnel.Status) {
	id, user := st.ConnectionID, userKey(identityOf(st.Info))
	c := p.toConn(st)
	cb, _ := json.Marshal(c)
	ub, _ := json.Marshal(UserSession{Node: p.n.cfg.Node, ConnectionID: id,
		Established: st.Established.UTC().Format(time.RFC3339Nano)})
	k := p.n.keys.session(p.n.cfg.Node, id)
	b.add(k, clientv3.OpPut(k, string(cb), clientv3.WithLease(p.lease)))
	uk := p.n.keys.userSession(user, id)
	b.add(uk, clientv3.OpPut(uk, string(ub), clientv3.WithLease(p.lease)))
	// Recorded before the write: a failed write leaves it to the next resync to delete.
	p.published[id] = user
}

// resyncNow writes the engine's whole list: every live session's keys, and the removal of
// those this node published that are no longer live.
func (p *Publisher) resyncNow() {
	p.current()
	p.lastResync = time.Now()
	if p.lease == 0 {
		p.dirty.Store(true)
		return
	}
	p.dirty.Store(false)
	live := p.clients()
	seen := make(map[string]bool, len(live))
	var b opBatch
	fresh := make(map[string]string)
	ok := true
	flush := func() {
		if !p.commit(b.ops()) {
			ok = false
		}
		b = opBatch{}
	}
	for _, st := range live {
		if st.Info == nil {
			continue
		}
		seen[st.ConnectionID] = true
		if _, was := p.published[st.ConnectionID]; !was || p.unchecked[st.ConnectionID] != "" {
			fresh[st.ConnectionID] = identityOf(st.Info)
		}
		p.putOps(&b, st)
		if b.len() >= txnOps-1 {
			flush()
		}
	}
	for id, user := range p.published {
		if seen[id] {
			continue
		}
		b.add(p.n.keys.session(p.n.cfg.Node, id), clientv3.OpDelete(p.n.keys.session(p.n.cfg.Node, id)))
		b.add(p.n.keys.userSession(user, id), clientv3.OpDelete(p.n.keys.userSession(user, id)))
		delete(p.published, id)
		if b.len() >= txnOps-1 {
			flush()
		}
	}
	if b.len() > 0 {
		flush()
	}
	// Sessions this node had not published yet (their event was dropped or their write
	// failed) may put their user over the limit.
	p.unchecked = make(map[string]string)
	if !ok {
		p.dirty.Store(true)
		p.unchecked = fresh
		return
	}
	for _, who := range fresh {
		p.checkLimit(who)
	}
}

// commit runs ops as one transaction under the request timeout.
func (p *Publisher) commit(ops []clientv3.Op) bool {
	if len(ops) == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(p.n.ctx, requestTimeout)
	defer cancel()
	if _, err := p.n.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		if p.failed.Add(1)%100 == 1 && p.n.ctx.Err() == nil {
			p.n.log.Warn("cannot publish sessions; a resync will retry", "err", err, "failures", p.failed.Load())
		}
		p.dirty.Store(true)
		return false
	}
	return true
}

// opBatch is one transaction's operations, at most one per key (etcd refuses a transaction
// that writes a key twice): a later operation on a key replaces the earlier one.
type opBatch struct {
	keys []string
	op   []clientv3.Op
	at   map[string]int
}

func (b *opBatch) add(key string, op clientv3.Op) {
	if b.at == nil {
		b.at = make(map[string]int)
	}
	if i, ok := b.at[key]; ok {
		b.op[i] = op
		return
	}
	b.at[key] = len(b.op)
	b.keys = append(b.keys, key)
	b.op = append(b.op, op)
}

func (b *opBatch) len() int           { return len(b.op) }
func (b *opBatch) ops() []clientv3.Op { return b.op }

// Connections returns the sessions the other live nodes published, each with Cvpn.Node set
// (admin.Cluster). A session whose node died is gone with the node's lease.
func (n *Node) Connections(ctx context.Context) ([]admin.Connection, error) {
	all, self := n.keys.sessions(), n.keys.sessionsOf(n.cfg.Node)
	var out []admin.Connection
	// Two ranges around this node's own sessions, which the caller lists from its engine.
	ranges := [][2]string{{all, self}, {clientv3.GetPrefixRangeEnd(self), clientv3.GetPrefixRangeEnd(all)}}
	var rev int64
	for _, r := range ranges {
		from := r[0]
		for len(out) < maxListed {
			opts := []clientv3.OpOption{clientv3.WithRange(r[1]), clientv3.WithLimit(listPage)}
			if rev != 0 {
				// One consistent view across pages.
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := n.cli.Get(ctx, from, opts...)
			if err != nil {
				return nil, fmt.Errorf("cluster: list the other nodes' sessions: %w", err)
			}
			if rev == 0 {
				rev = resp.Header.Revision
			}
			for _, kv := range resp.Kvs {
				var c admin.Connection
				node := nodeOfSession(string(kv.Key), all)
				if err := json.Unmarshal(kv.Value, &c); err != nil || node == "" {
					n.ext().malformed.Add(1)
					continue
				}
				c.Cvpn.Node = node
				out = append(out, c)
				if len(out) == maxListed {
					n.log.Warn("the cluster's session list is cut short", "max", maxListed)
					break
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	return out, nil
}

// nodeOfSession returns <node> of <prefix><node>/<connid>, "" when key is not of that form.
func nodeOfSession(key, prefix string) string {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return ""
	}
	node, id, ok := strings.Cut(rest, "/")
	if !ok || node == "" || id == "" || strings.Contains(id, "/") {
		return ""
	}
	return node
}

// MalformedSessions returns how many published sessions Connections skipped as undecodable.
func (n *Node) MalformedSessions() uint64 { return n.ext().malformed.Load() }

// maxNodes bounds the nodes Nodes describes.
const maxNodes = 1000

// Nodes describes every node that ever joined, live or not, by name (admin.Cluster).
func (n *Node) Nodes(ctx context.Context) ([]admin.ClusterNode, error) {
	members, err := n.cli.Get(ctx, n.keys.members(), clientv3.WithPrefix(), clientv3.WithLimit(maxNodes))
	if err != nil {
		return nil, fmt.Errorf("cluster: list nodes: %w", err)
	}
	alive, err := n.cli.Get(ctx, n.keys.alives(), clientv3.WithPrefix(), clientv3.WithLimit(maxNodes), clientv3.WithRev(members.Header.Revision))
	if err != nil {
		return nil, fmt.Errorf("cluster: list live nodes: %w", err)
	}
	live := make(map[string]Alive, len(alive.Kvs))
	for _, kv := range alive.Kvs {
		var a Alive
		if json.Unmarshal(kv.Value, &a) == nil {
			live[path.Base(string(kv.Key))] = a
		}
	}
	out := make([]admin.ClusterNode, 0, len(members.Kvs))
	for _, kv := range members.Kvs {
		var m Member
		if json.Unmarshal(kv.Value, &m) != nil || m.Name == "" || strings.Contains(m.Name, "/") {
			continue
		}
		cn := admin.ClusterNode{Name: m.Name, PublicAddress: m.PublicAddress, SNATAddress: m.SNAT}
		if a, ok := live[m.Name]; ok {
			cn.Alive, cn.ConfigRevision, cn.ConfigError, cn.Blocks, cn.Started = true, a.ConfigRevision, a.ConfigError, a.Blocks, a.Started
			count, err := n.cli.Get(ctx, n.keys.sessionsOf(m.Name), clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(members.Header.Revision))
			if err != nil {
				return nil, fmt.Errorf("cluster: count node %s's sessions: %w", m.Name, err)
			}
			cn.Connections = int(count.Count)
		}
		out = append(out, cn)
	}
	slices.SortFunc(out, func(a, b admin.ClusterNode) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
